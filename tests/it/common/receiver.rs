//! A webhook receiver on 127.0.0.1 for tests: records every request and
//! answers as scripted (a status, a `Retry-After`, a delay, or a closed
//! connection). Plain HTTP/1.1 over std sockets, `Connection: close`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How to answer one request.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// This status, empty body.
    Status(u16),
    /// This status with `Retry-After: seconds`.
    RetryAfter(u16, u64),
    /// Wait, then answer 200.
    Delay(Duration),
    /// Close the connection without answering.
    Close,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl Received {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    /// The headers as an `http::HeaderMap`, for verifiers.
    pub fn header_map(&self) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (k, v) in &self.headers {
            map.insert(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        map
    }
}

type Script = Box<dyn FnMut(usize) -> Answer + Send>;

/// A running receiver; stops on drop.
pub struct Receiver {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<Script>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Answers request `n` (0-based) with `script(n)`.
    pub fn start(script: impl FnMut(usize) -> Answer + Send + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Mutex<Script>> = Arc::new(Mutex::new(Box::new(script)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, script, stop) = (
                Arc::clone(&received),
                Arc::clone(&script),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                let mut count = 0;
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let answer = (script.lock().unwrap())(count);
                            count += 1;
                            let received = Arc::clone(&received);
                            std::thread::spawn(move || serve(stream, answer, &received));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Self {
            port,
            received,
            script,
            stop,
            thread: Some(thread),
        }
    }

    /// Always answers `status`.
    pub fn answering(status: u16) -> Self {
        Self::start(move |_| Answer::Status(status))
    }

    /// Replaces the script (request numbering continues).
    pub fn set_script(&self, script: impl FnMut(usize) -> Answer + Send + 'static) {
        *self.script.lock().unwrap() = Box::new(script);
    }

    /// `http://127.0.0.1:port/hook`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits (polling, up to `within`) until `n` requests arrived; returns them.
    pub fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} requests arrived",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, answer: Answer, received: &Mutex<Vec<Received>>) {
    let _ = stream.set_nonblocking(false);
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut headers = HashMap::new();
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    received.lock().unwrap().push(Received { headers, body });
    let mut stream = stream;
    let (status, extra) = match answer {
        Answer::Close => {
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        Answer::Delay(d) => {
            std::thread::sleep(d);
            (200, String::new())
        }
        Answer::Status(s) => (s, String::new()),
        Answer::RetryAfter(s, secs) => (s, format!("retry-after: {secs}\r\n")),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-length: 0\r\n{extra}connection: close\r\n\r\n"
    );
    let _ = stream.flush();
}
