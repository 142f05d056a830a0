//! Logging: `RUST_LOG` filters (default `info`), human or JSON lines, every
//! line passed through the process-wide redactor (`redact::global`).

use std::io::Write;
use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::{fmt, EnvFilter};

use crate::redact::Redactor;

pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tower_http=warn,sqlx=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(RedactingMakeWriter::new(std::io::stderr))
        .with_ansi(ansi);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Wraps a tracing-subscriber writer: each event is buffered whole, then
/// written redacted, so a secret is masked wherever it appears in the line.
#[derive(Clone)]
pub struct RedactingMakeWriter<M> {
    inner: M,
    /// `None`: the process-wide redactor at the time of each event.
    redactor: Option<Arc<Redactor>>,
}

impl<M> RedactingMakeWriter<M> {
    /// Redacts with `redact::global()`, read afresh for every event.
    pub fn new(inner: M) -> Self {
        RedactingMakeWriter {
            inner,
            redactor: None,
        }
    }

    /// Redacts with the given redactor.
    pub fn with_redactor(inner: M, redactor: Arc<Redactor>) -> Self {
        RedactingMakeWriter {
            inner,
            redactor: Some(redactor),
        }
    }

    fn redactor(&self) -> Arc<Redactor> {
        self.redactor.clone().unwrap_or_else(crate::redact::global)
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for RedactingMakeWriter<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter::new(self.inner.make_writer(), self.redactor())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        RedactingWriter::new(self.inner.make_writer_for(meta), self.redactor())
    }
}

/// Collects what one event writes; writes it redacted on flush or drop.
pub struct RedactingWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
    redactor: Arc<Redactor>,
}

impl<W: Write> RedactingWriter<W> {
    fn new(inner: W, redactor: Arc<Redactor>) -> Self {
        RedactingWriter {
            inner,
            buf: Vec::new(),
            redactor,
        }
    }

    fn write_out(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let out = self.redactor.redact_bytes(&self.buf);
        let result = self.inner.write_all(&out);
        drop(out);
        self.buf.clear();
        result
    }
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.write_out()?;
        self.inner.flush()
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        let _ = self.write_out();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use base64::Engine as _;

    use super::*;

    const SECRET: &str = "ghp_logsecret0123456789";

    /// A writer into a shared buffer, to read what was logged.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    impl Capture {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn redactor() -> Arc<Redactor> {
        let mut r = Redactor::default();
        r.add(SECRET);
        Arc::new(r)
    }

    #[test]
    fn a_secret_split_across_writes_is_masked() {
        let capture = Capture::default();
        let make = RedactingMakeWriter::with_redactor(capture.clone(), redactor());
        {
            let mut w = make.make_writer();
            w.write_all(b"token=ghp_logsec").unwrap();
            w.write_all(b"ret0123456789 done\n").unwrap();
            assert_eq!(
                capture.text(),
                "",
                "nothing is written before the event ends"
            );
        }
        assert_eq!(capture.text(), "token=*** done\n");
    }

    #[test]
    fn log_lines_with_secrets_and_their_encodings_are_masked() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("x:{SECRET}"));
        let hex = hex::encode(SECRET);
        for json in [false, true] {
            let capture = Capture::default();
            let make = RedactingMakeWriter::with_redactor(capture.clone(), redactor());
            let builder = fmt().with_writer(make).with_ansi(false);
            let subscriber: Box<dyn tracing::Subscriber + Send + Sync> = if json {
                Box::new(builder.json().flatten_event(true).finish())
            } else {
                Box::new(builder.finish())
            };
            tracing::subscriber::with_default(subscriber, || {
                tracing::info!(header = %b64, "pushing with {SECRET} and {hex}");
            });
            let text = capture.text();
            assert!(text.contains("pushing with *** and ***"), "{text}");
            assert!(!text.contains(SECRET), "{text}");
            assert!(!text.contains(&hex), "{text}");
            assert!(!text.contains(&b64[4..b64.len() - 4]), "{text}");
            assert_eq!(text.lines().count(), 1, "{text}");
        }
    }

    #[test]
    fn the_global_redactor_is_used_by_default() {
        // Only this test sets the global redactor in the unit tests, and it
        // adds a value no other test logs.
        let secret = "global-only-secret-42";
        let capture = Capture::default();
        let make = RedactingMakeWriter::new(capture.clone());
        let mut r = Redactor::default();
        r.add(secret);
        crate::redact::set_global(r);
        make.make_writer()
            .write_all(format!("v={secret}\n").as_bytes())
            .unwrap();
        assert_eq!(capture.text(), "v=***\n");
    }
}
