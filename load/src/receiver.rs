//! A webhook receiver for the `webhooks` scenario: answers every POST with
//! 200 on a kept-alive connection and counts deliveries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// Deliveries seen so far.
#[derive(Debug, Default)]
pub struct Deliveries {
    /// Requests answered.
    pub count: AtomicU64,
    /// When the last one arrived.
    pub last: Mutex<Option<Instant>>,
}

/// Listens on 127.0.0.1; returns the URL to subscribe and the counters.
pub async fn start() -> anyhow::Result<(String, Arc<Deliveries>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let deliveries = Arc::new(Deliveries::default());
    let counter = Arc::clone(&deliveries);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut reader = BufReader::new(read);
                while let Ok(Some(length)) = read_request(&mut reader).await {
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).await.is_err() {
                        break;
                    }
                    counter.count.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut last) = counter.last.lock() {
                        *last = Some(Instant::now());
                    }
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if write.write_all(ok).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok((url, deliveries))
}

/// Reads a request head; returns its content length, `None` at EOF.
async fn read_request<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
) -> std::io::Result<Option<usize>> {
    let mut line = String::new();
    let mut length = 0;
    let mut first = true;
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        if line == "\r\n" && !first {
            return Ok(Some(length));
        }
        first = false;
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
}
