//! Where log lines go: standard error, a batch at a time.
//!
//! Every accepted delivery logs a line. Written one `write` each, those lines were about 5 %
//! of bb2tc's CPU per delivery while ingesting in a profile (a system call, and a wake-up of
//! whatever reads the pipe: journald, a container runtime; BENCHMARKS.md, issue 12). So lines are
//! gathered in memory and written together by a thread of their own every [`PERIOD`] —
//! a timer, not a wake-up per line — or at once when [`BATCH_BYTES`] gathered.
//!
//! Warnings and errors are written at once, with everything gathered before them (in
//! order): what goes wrong is on standard error before bb2tc does anything else. Lines
//! still gathered are written when bb2tc exits ([`flush`]) or panics. A `kill -9` loses at
//! most the last [`PERIOD`] of informational lines; nothing that is stored depends on them.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// How long an informational line waits at most.
pub const PERIOD: Duration = Duration::from_millis(10);

/// Gathered this much, a line is written at once (with the rest).
pub const BATCH_BYTES: usize = 64 * 1024;

/// Where batches are written.
type Sink = Box<dyn Fn(&[u8]) + Send + Sync>;

struct Gathered {
    /// Lines not written yet.
    lines: Mutex<Vec<u8>>,
    /// Held while writing, so that batches reach standard error in the order gathered.
    writing: Mutex<()>,
    /// Whether the writing thread runs (without it, every line is written at once).
    timer: std::sync::atomic::AtomicBool,
    sink: Sink,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Gathered {
    fn new(sink: Sink) -> Self {
        Self {
            lines: Mutex::default(),
            writing: Mutex::default(),
            timer: false.into(),
            sink,
        }
    }

    fn add(&self, bytes: &[u8], urgent: bool) {
        let full = {
            let mut lines = lock(&self.lines);
            lines.extend_from_slice(bytes);
            lines.len() >= BATCH_BYTES
        };
        if urgent || full || !self.timer.load(std::sync::atomic::Ordering::Relaxed) {
            self.write_out();
        }
    }

    /// Writes what was gathered. Taken under `writing`: a batch taken later is written later.
    fn write_out(&self) {
        let _writing = lock(&self.writing);
        let lines = std::mem::take(&mut *lock(&self.lines));
        if !lines.is_empty() {
            (self.sink)(&lines);
        }
    }
}

static GATHERED: OnceLock<Arc<Gathered>> = OnceLock::new();

fn gathered() -> &'static Arc<Gathered> {
    GATHERED.get_or_init(|| {
        let gathered = Arc::new(Gathered::new(Box::new(|lines| {
            // Nowhere left to report a failure to write to standard error.
            let _ = std::io::stderr().lock().write_all(lines);
        })));
        let timed = gathered.clone();
        let started = std::thread::Builder::new()
            .name("bb2tc-log".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(PERIOD);
                    timed.write_out();
                }
            })
            .is_ok();
        gathered
            .timer
            .store(started, std::sync::atomic::Ordering::Relaxed);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            flush();
            previous(info);
        }));
        gathered
    })
}

/// Writes every line gathered so far (at exit).
pub fn flush() {
    if let Some(gathered) = GATHERED.get() {
        gathered.write_out();
    }
}

/// The log's writer: standard error, in batches (see the module).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogOutput;

/// One line on its way.
pub struct Line {
    gathered: &'static Gathered,
    urgent: bool,
}

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.gathered.add(bytes, self.urgent);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogOutput {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            gathered: gathered(),
            urgent: true,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        Line {
            gathered: gathered(),
            // More verbose levels compare greater: WARN and ERROR are written at once.
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_kept_in_order_until_written_and_an_urgent_one_writes_them_all() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let sink = written.clone();
        let gathered = Gathered::new(Box::new(move |lines| {
            lock(&sink).extend_from_slice(lines);
        }));
        gathered
            .timer
            .store(true, std::sync::atomic::Ordering::Relaxed);
        gathered.add(b"one\n", false);
        gathered.add(b"two\n", false);
        assert!(lock(&written).is_empty(), "gathered, not written");
        gathered.add(b"warning\n", true);
        assert_eq!(lock(&written).as_slice(), b"one\ntwo\nwarning\n");
        // A full batch goes at once too.
        gathered.add(&vec![b'x'; BATCH_BYTES], false);
        assert_eq!(lock(&written).len(), 16 + BATCH_BYTES);
        // Without the timer thread, nothing waits.
        gathered
            .timer
            .store(false, std::sync::atomic::Ordering::Relaxed);
        gathered.add(b"three\n", false);
        assert!(lock(&written).ends_with(b"three\n"));
        assert!(lock(&gathered.lines).is_empty());
    }
}
