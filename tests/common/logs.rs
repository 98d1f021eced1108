//! What the crate logs during a test, through a `tracing` subscriber of the test's own.

use std::io;
use std::sync::{Arc, Mutex};

use tracing_subscriber::util::SubscriberInitExt as _;

/// Everything the subscriber wrote.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// The lines logged at WARN that contain `text`.
    pub fn warnings(&self, text: &str) -> Vec<String> {
        let log = self.text();
        log.lines()
            .filter(|l| l.contains("WARN") && l.contains(text))
            .map(str::to_owned)
            .collect()
    }
}

/// Sets a subscriber for this thread that writes into the returned capture. In a
/// current-thread runtime, the tasks the crate spawns run on this thread too.
pub fn capture() -> (Capture, tracing::subscriber::DefaultGuard) {
    let capture = Capture::default();
    let handle = capture.clone();
    let guard = tracing_subscriber::fmt()
        .with_writer(move || handle.clone())
        .with_ansi(false)
        .finish()
        .set_default();
    (capture, guard)
}

/// A process-wide subscriber at TRACE level writing into the returned capture, installed
/// once per test binary: it sees every thread, so every test of the binary logs into it.
/// For checks that nothing logged anywhere holds some text.
pub fn capture_global() -> Capture {
    static GLOBAL: std::sync::OnceLock<Capture> = std::sync::OnceLock::new();
    GLOBAL
        .get_or_init(|| {
            let capture = Capture::default();
            let handle = capture.clone();
            tracing_subscriber::fmt()
                .with_writer(move || handle.clone())
                .with_ansi(false)
                .with_max_level(tracing::Level::TRACE)
                .init();
            capture
        })
        .clone()
}
