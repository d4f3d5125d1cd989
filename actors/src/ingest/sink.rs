//! Pluggable sinks. A [`Sink`] receives every committed batch, in order,
//! on its own thread ([`SinkActor`]) behind its own bounded mailbox, so a
//! slow sink holds back only itself until its mailbox fills, and then the
//! writer (and so ingestion) waits rather than dropping anything.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::Batch;

/// Somewhere committed events go.
pub trait Sink: Send + 'static {
    /// Short name for logs.
    fn name(&self) -> &'static str;
    /// Writes one committed batch.
    fn write(&mut self, batch: &Batch) -> std::io::Result<()>;
    /// Makes everything written so far durable; called at shutdown.
    fn flush(&mut self) -> std::io::Result<()>;
}

/// Appends each event as one JSON object per line.
pub struct JsonlSink {
    out: BufWriter<File>,
}

impl JsonlSink {
    /// Opens (creating or appending to) `path`.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            out: BufWriter::with_capacity(1 << 20, file),
        })
    }
}

impl Sink for JsonlSink {
    fn name(&self) -> &'static str {
        "jsonl"
    }

    fn write(&mut self, batch: &Batch) -> std::io::Result<()> {
        for event in &batch.events {
            serde_json::to_writer(&mut self.out, event)?;
            self.out.write_all(b"\n")?;
        }
        // One write(2) per batch: a crash loses at most the batch in flight.
        self.out.flush()
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_data()
    }
}

/// A sink on its own thread with a bounded mailbox of committed batches.
pub struct SinkActor {
    name: &'static str,
    tx: flume::Sender<Arc<Batch>>,
    thread: JoinHandle<()>,
}

impl SinkActor {
    /// Starts `sink` with room for `capacity` batches.
    pub fn spawn(mut sink: Box<dyn Sink>, capacity: usize) -> std::io::Result<Self> {
        let name = sink.name();
        let (tx, rx) = flume::bounded::<Arc<Batch>>(capacity);
        let thread = std::thread::Builder::new()
            .name(format!("sink-{name}"))
            .spawn(move || {
                for batch in rx.iter() {
                    if let Err(e) = sink.write(&batch) {
                        tracing::error!(sink = sink.name(), error = %e, events = batch.events.len(), "sink write failed");
                    }
                }
                if let Err(e) = sink.flush() {
                    tracing::error!(sink = sink.name(), error = %e, "sink flush failed");
                }
            })?;
        Ok(Self { name, tx, thread })
    }

    /// Hands over a committed batch, waiting while the mailbox is full.
    pub(super) fn send(&self, batch: Arc<Batch>) {
        if self.tx.send(batch).is_err() {
            tracing::error!(sink = self.name, "sink stopped; batch not delivered");
        }
    }

    /// Lets the sink finish its mailbox, flush and stop.
    pub(super) fn close(self) {
        drop(self.tx);
        if self.thread.join().is_err() {
            tracing::error!(sink = self.name, "sink panicked");
        }
    }
}
