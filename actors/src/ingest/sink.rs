//! Pluggable sinks. A [`Sink`] receives every committed event, in `seq`
//! order, at least once, on its own thread ([`SinkWorker`]) behind its own
//! bounded mailbox, so a slow sink holds back only itself until its
//! mailbox fills, and then the writer (and so ingestion) waits.
//!
//! Each sink keeps a cursor in the store (`sink_cursor/{name}` in
//! [`Cf::Meta`](crate::storage::Cf::Meta)): the last `seq` it wrote and
//! made durable. The cursor moves only after the sink's output is flushed
//! (fsynced), and every event with a larger `seq` is in RocksDB, so:
//!
//! - at start the sink first replays the stored events after its cursor
//!   (what a crash or a kill left unwritten or unflushed);
//! - on a write error it does not block ingestion: it drops the batches
//!   it is handed (they are in the store), tries again with a doubling
//!   back-off, and replays from its cursor once writing works.
//!
//! What was written after the cursor and before a crash or an error is
//! written again: duplicates, never a loss (de-duplicate on `event_id`).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::mailbox::Batch;
use crate::domain::Event;
use crate::storage::Store;

/// Events one replay step reads from the store.
const REPLAY_CHUNK: usize = 10_000;
/// Longest the cursor trails what was written while events flow: a crash
/// writes at most this much again.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// First wait before a failing sink is tried again; it doubles from there.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// Longest wait between tries of a failing sink (each try scans the
/// stored events' keys, so not too often).
const MAX_RETRY: Duration = Duration::from_secs(30);
/// How long an idle sink waits for a batch before looking around.
const IDLE: Duration = Duration::from_secs(3600);
/// Buffer of the JSON-lines sink.
const JSONL_BUFFER: usize = 1 << 20;

/// Somewhere committed events go.
pub trait Sink: Send + 'static {
    /// Short name for logs, metrics and the cursor's key; never changes.
    fn name(&self) -> &'static str;
    /// Writes committed events, in `seq` order.
    fn write(&mut self, events: &[Event]) -> std::io::Result<()>;
    /// Makes everything written so far durable (fsync); the cursor moves
    /// only after this succeeds.
    fn flush(&mut self) -> std::io::Result<()>;
    /// Forgets whatever is buffered after a failed write or flush, so the
    /// next write starts clean; the sink then replays from its cursor.
    fn reset(&mut self) -> std::io::Result<()>;
}

/// Appends each event as one JSON object per line.
pub struct JsonlSink {
    path: PathBuf,
    out: BufWriter<File>,
}

impl JsonlSink {
    /// Opens (creating or appending to) `path`, dropping an incomplete
    /// last line that a crash mid-write may have left.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        Ok(Self {
            path: path.to_owned(),
            out: BufWriter::with_capacity(JSONL_BUFFER, open_whole_lines(path)?),
        })
    }
}

/// Opens `path` for appending after truncating it to its last newline.
fn open_whole_lines(path: &Path) -> std::io::Result<File> {
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        // Empty, or not a regular file (a pipe, a device).
        return Ok(file);
    }
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..usize::try_from(end - start).unwrap_or(0)];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(part)?;
        if let Some(i) = part.iter().rposition(|&b| b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep < len {
                tracing::warn!(path = %path.display(), bytes = len - keep, "dropping an incomplete last line");
                file.set_len(keep)?;
            }
            return Ok(file);
        }
        end = start;
    }
    tracing::warn!(path = %path.display(), bytes = len, "dropping an incomplete only line");
    file.set_len(0)?;
    Ok(file)
}

impl Sink for JsonlSink {
    fn name(&self) -> &'static str {
        "jsonl"
    }

    fn write(&mut self, events: &[Event]) -> std::io::Result<()> {
        for event in events {
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

    fn reset(&mut self) -> std::io::Result<()> {
        let file = open_whole_lines(&self.path)?;
        let old = std::mem::replace(&mut self.out, BufWriter::with_capacity(JSONL_BUFFER, file));
        // Discard what is buffered without writing it: it is replayed.
        drop(old.into_parts());
        Ok(())
    }
}

/// A sink on its own thread with a bounded mailbox of committed batches.
pub struct SinkWorker {
    name: &'static str,
    tx: flume::Sender<Arc<Batch>>,
    thread: JoinHandle<()>,
}

impl SinkWorker {
    /// Starts `sink` with room for `capacity` batches; it first replays
    /// from `store` what it has not made durable yet.
    pub fn spawn(sink: Box<dyn Sink>, store: Store, capacity: usize) -> std::io::Result<Self> {
        let name = sink.name();
        let (tx, rx) = flume::bounded::<Arc<Batch>>(capacity);
        let follower = Follower::new(sink, store, rx);
        let thread = std::thread::Builder::new()
            .name(format!("sink-{name}"))
            .spawn(move || follower.run())?;
        Ok(Self { name, tx, thread })
    }

    /// Hands over a committed batch, waiting while the mailbox is full.
    pub(super) fn send(&self, batch: Arc<Batch>) {
        if self.tx.send(batch).is_err() {
            tracing::error!(
                sink = self.name,
                "sink stopped; its cursor replays the batch at the next start"
            );
        }
    }

    /// Lets the sink finish its mailbox, flush and stop. Bounded: a sink
    /// that still fails is tried once more and left to replay at the next
    /// start.
    pub(super) fn close(self) {
        drop(self.tx);
        if self.thread.join().is_err() {
            tracing::error!(sink = self.name, "sink panicked");
        }
    }
}

/// The state of one sink's thread: what it has written, what is durable,
/// and what it knows has been committed.
struct Follower {
    sink: Box<dyn Sink>,
    name: &'static str,
    store: Store,
    rx: flume::Receiver<Arc<Batch>>,
    /// Last `seq` made durable and recorded in the store.
    cursor: u64,
    /// Last `seq` written, durable or not.
    written: u64,
    /// Highest `seq` known to be committed; the sink replays from the store
    /// while it has written less.
    known: u64,
    last_checkpoint: Instant,
    /// Set by a failed write or flush until a replay succeeds.
    failing: bool,
    retry_wait: Duration,
    retry_at: Instant,
    first_retry: Duration,
    max_retry: Duration,
}

impl Follower {
    fn new(sink: Box<dyn Sink>, store: Store, rx: flume::Receiver<Arc<Batch>>) -> Self {
        let now = Instant::now();
        Self {
            name: sink.name(),
            sink,
            store,
            rx,
            cursor: 0,
            written: 0,
            known: 0,
            last_checkpoint: now,
            failing: false,
            retry_wait: FIRST_RETRY,
            retry_at: now,
            first_retry: FIRST_RETRY,
            max_retry: MAX_RETRY,
        }
    }

    /// Replays, then follows the mailbox until the writer lets go.
    fn run(mut self) {
        self.start();
        loop {
            match self.rx.recv_timeout(self.wait()) {
                Ok(batch) => self.receive(&batch),
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => break,
            }
            self.tick();
        }
        self.finish();
    }

    /// Reads the cursor and what is committed, and replays the difference.
    fn start(&mut self) {
        match self.store.sink_cursor(self.name) {
            Ok(cursor) => self.cursor = cursor,
            // Replaying everything duplicates; guessing could lose.
            Err(e) => {
                tracing::error!(sink = self.name, error = %e, "cannot read the sink's cursor; replaying every stored event")
            }
        }
        match self.store.next_seq() {
            Ok(next) => {
                self.known = next.saturating_sub(1);
                // Never ahead of the store (it is in the same database, so
                // this only guards against a damaged record).
                self.cursor = self.cursor.min(self.known);
            }
            // The first batch tells, and the replay runs then.
            Err(e) => {
                tracing::error!(sink = self.name, error = %e, "cannot read the last committed seq")
            }
        }
        self.written = self.cursor;
        tracing::info!(
            sink = self.name,
            cursor = self.cursor,
            committed = self.known,
            "sink started"
        );
        self.catch_up();
    }

    /// How long to wait for the next batch.
    fn wait(&self) -> Duration {
        if self.failing {
            self.retry_at.saturating_duration_since(Instant::now())
        } else if self.written > self.cursor {
            CHECKPOINT_EVERY.saturating_sub(self.last_checkpoint.elapsed())
        } else {
            IDLE
        }
    }

    /// Writes the part of `batch` after what is written. While failing, or
    /// when an earlier batch is missing, only notes that it is committed:
    /// [`Follower::tick`] replays it from the store.
    fn receive(&mut self, batch: &Batch) {
        let (Some(first), Some(last)) = (batch.events.first(), batch.events.last()) else {
            return;
        };
        self.known = self.known.max(last.seq);
        if self.failing || first.seq > self.written + 1 {
            return;
        }
        let fresh = batch.events.partition_point(|e| e.seq <= self.written);
        if fresh == batch.events.len() {
            return;
        }
        match self.sink.write(&batch.events[fresh..]) {
            Ok(()) => self.written = last.seq,
            Err(e) => self.failed(&e),
        }
    }

    /// Retries, replays or checkpoints, whichever is due.
    fn tick(&mut self) {
        if self.failing {
            if Instant::now() >= self.retry_at {
                self.catch_up();
            }
        } else if self.written < self.known {
            self.catch_up();
        } else if self.written > self.cursor && self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            self.checkpoint();
        }
    }

    /// Writes every committed event after `written` from the store, then
    /// checkpoints. Between chunks it takes the batches waiting in the
    /// mailbox and drops them (they are in the store and the replay goes
    /// on through them), so a long replay does not hold up the writer.
    fn catch_up(&mut self) {
        let mut replayed = 0usize;
        while self.written < self.known {
            while let Ok(batch) = self.rx.try_recv() {
                if let Some(last) = batch.events.last() {
                    self.known = self.known.max(last.seq);
                }
            }
            let events = match self.store.events_after(self.written, REPLAY_CHUNK) {
                Ok(events) => events,
                Err(e) => {
                    tracing::error!(sink = self.name, error = %e, "reading events to replay failed");
                    self.schedule_retry();
                    return;
                }
            };
            let Some(last) = events.last().map(|e| e.seq) else {
                // Nothing stored up to `known` any more (retention).
                self.written = self.known;
                break;
            };
            if let Err(e) = self.sink.write(&events) {
                self.failed(&e);
                return;
            }
            replayed += events.len();
            self.written = last;
        }
        if !self.checkpoint() {
            return;
        }
        if replayed > 0 {
            metrics::counter!(crate::metrics::SINK_REPLAYED, "sink" => self.name)
                .increment(replayed as u64);
            tracing::info!(
                sink = self.name,
                events = replayed,
                cursor = self.cursor,
                "replayed stored events"
            );
        }
        if self.failing {
            self.failing = false;
            self.retry_wait = self.first_retry;
            metrics::gauge!(crate::metrics::SINK_FAILING, "sink" => self.name).set(0.0);
            tracing::info!(sink = self.name, cursor = self.cursor, "sink writes again");
        }
    }

    /// Makes what is written durable, then moves the cursor to it. False
    /// when the sink failed to flush.
    fn checkpoint(&mut self) -> bool {
        self.last_checkpoint = Instant::now();
        if self.written > self.cursor {
            if let Err(e) = self.sink.flush() {
                self.failed(&e);
                return false;
            }
            match self.store.set_sink_cursor(self.name, self.written) {
                Ok(()) => self.cursor = self.written,
                // The output is durable; the cursor moves at the next
                // checkpoint, and a crash before then only duplicates.
                Err(e) => {
                    tracing::error!(sink = self.name, error = %e, "moving the sink's cursor failed")
                }
            }
        }
        metrics::gauge!(crate::metrics::SINK_LAG, "sink" => self.name)
            .set(self.known.saturating_sub(self.cursor) as f64);
        true
    }

    /// After a failed write or flush: forget what is not durable, drop
    /// batches until the next try, and try again later.
    fn failed(&mut self, error: &std::io::Error) {
        metrics::counter!(crate::metrics::SINK_WRITE_FAILURES, "sink" => self.name).increment(1);
        if self.failing {
            tracing::warn!(sink = self.name, error = %error, retry_in_ms = u64::try_from(self.retry_wait.as_millis()).unwrap_or(u64::MAX), "sink still failing");
        } else {
            tracing::error!(
                sink = self.name,
                error = %error,
                cursor = self.cursor,
                "sink write failed: ingestion goes on; the events are in RocksDB and are \
                 written from the sink's cursor once writing works again"
            );
            self.failing = true;
            metrics::gauge!(crate::metrics::SINK_FAILING, "sink" => self.name).set(1.0);
        }
        if let Err(e) = self.sink.reset() {
            tracing::warn!(sink = self.name, error = %e, "resetting the sink failed");
        }
        self.written = self.cursor;
        self.schedule_retry();
    }

    /// Sets the next try after the current wait, and doubles the wait.
    fn schedule_retry(&mut self) {
        self.retry_at = Instant::now() + self.retry_wait;
        self.retry_wait = (self.retry_wait * 2).min(self.max_retry);
    }

    /// At close: writes what is missing (one try even if failing) and
    /// checkpoints; what stays unwritten is replayed at the next start.
    fn finish(mut self) {
        if self.written < self.known || self.failing {
            self.catch_up();
        } else {
            self.checkpoint();
        }
        tracing::info!(sink = self.name, cursor = self.cursor, "sink stopped");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::*;
    use crate::storage::{Commit, StoreOptions};

    fn store(dir: &Path) -> Store {
        let options = StoreOptions {
            dedup_window_ms: 1000,
            retention_ms: None,
            cache_bytes: 8 << 20,
            audit_retention_ms: 365 * 24 * 3600 * 1000,
        };
        Store::open(dir, options).expect("store")
    }

    /// Commits events `from..=to` the way the writer does; returns them.
    fn commit(store: &Store, from: u64, to: u64) -> Batch {
        let events: Vec<Event> = (from..=to)
            .map(|seq| Event {
                seq,
                event_id: format!("e{seq}").into(),
                timestamp_ms: 1000 + (seq as i64 % 7),
                received_ms: 1000,
                ..Event::sample("conversion", "u")
            })
            .collect();
        store
            .commit(&Commit {
                events: &events,
                next_seq: to + 1,
                ..Commit::default()
            })
            .expect("commit");
        Batch {
            events,
            sticky: Vec::new(),
        }
    }

    fn seqs_in(path: &Path) -> Vec<u64> {
        std::fs::read_to_string(path)
            .expect("read")
            .lines()
            .map(|line| {
                let event: serde_json::Value = serde_json::from_str(line).expect("whole line");
                event["seq"].as_u64().expect("seq")
            })
            .collect()
    }

    #[test]
    fn a_kill_between_write_and_cursor_move_duplicates_but_loses_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store(&dir.path().join("db"));
        let path = dir.path().join("events.jsonl");
        commit(&store, 1, 10);
        let (tx, rx) = flume::bounded(8);
        let mut follower = Follower::new(
            Box::new(JsonlSink::open(&path).expect("open")),
            store.clone(),
            rx,
        );
        follower.start();
        assert_eq!(
            (follower.written, follower.cursor),
            (10, 10),
            "replayed at start"
        );
        let batch = commit(&store, 11, 20);
        tx.send(Arc::new(batch)).expect("send");
        let batch = follower.rx.recv().expect("batch");
        follower.receive(&batch);
        assert_eq!((follower.written, follower.cursor), (20, 10));
        // Killed here: written, not checkpointed. A torn line too.
        drop(follower);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"{\"seq\": 2"))
            .expect("torn write");
        assert_eq!(store.sink_cursor("jsonl").expect("cursor"), 10);

        let (_tx, rx) = flume::bounded(8);
        let mut restarted = Follower::new(
            Box::new(JsonlSink::open(&path).expect("reopen")),
            store.clone(),
            rx,
        );
        restarted.start();
        assert_eq!(store.sink_cursor("jsonl").expect("cursor"), 20);
        let seqs = seqs_in(&path);
        let expected: Vec<u64> = (1..=20).chain(11..=20).collect();
        assert_eq!(seqs, expected, "11..=20 twice, every event at least once");
    }

    /// Writes to memory; fails while `failures` is above zero, counting down.
    struct Flaky {
        written: Arc<Mutex<Vec<u64>>>,
        failures: Arc<AtomicUsize>,
    }

    impl Sink for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }

        fn write(&mut self, events: &[Event]) -> std::io::Result<()> {
            let failing = self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                return Err(std::io::Error::other("no space left"));
            }
            self.written
                .lock()
                .expect("lock")
                .extend(events.iter().map(|e| e.seq));
            Ok(())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }

        fn reset(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_sink_drops_batches_without_blocking_and_replays_them_later() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store(dir.path());
        let written = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(AtomicUsize::new(3));
        let sink = Flaky {
            written: Arc::clone(&written),
            failures: Arc::clone(&failures),
        };
        let (tx, rx) = flume::bounded(2);
        let mut follower = Follower::new(Box::new(sink), store.clone(), rx);
        follower.first_retry = Duration::ZERO;
        follower.retry_wait = Duration::ZERO;
        follower.start();
        for b in 0..10 {
            let batch = commit(&store, b * 5 + 1, b * 5 + 5);
            tx.send(Arc::new(batch)).expect("send");
            let batch = follower.rx.recv().expect("batch");
            follower.receive(&batch);
            if b < 2 {
                follower.tick();
            }
        }
        assert_eq!(failures.load(Ordering::SeqCst), 0, "every failure used");
        follower.tick();
        assert!(!follower.failing);
        assert_eq!((follower.written, follower.cursor), (50, 50));
        let mut seqs = written.lock().expect("lock").clone();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(
            seqs,
            (1..=50).collect::<Vec<_>>(),
            "all written at least once"
        );
        assert_eq!(store.sink_cursor("flaky").expect("cursor"), 50);
    }

    #[test]
    fn close_returns_while_the_sink_still_fails() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store(dir.path());
        let sink = Flaky {
            written: Arc::default(),
            failures: Arc::new(AtomicUsize::new(usize::MAX)),
        };
        let actor = SinkWorker::spawn(Box::new(sink), store.clone(), 2).expect("spawn");
        for b in 0..20 {
            actor.send(Arc::new(commit(&store, b * 5 + 1, b * 5 + 5)));
        }
        let started = Instant::now();
        actor.close();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(store.sink_cursor("flaky").expect("cursor"), 0);
    }
}
