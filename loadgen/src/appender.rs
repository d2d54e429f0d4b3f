//! A file a run appends to as each interval closes (`--hlog`, `--csv`): written and flushed at
//! once, as HdrHistogram's own `HistogramLogWriter` and SIPp's `-trace_stat` write straight to
//! their files, so a run that is killed leaves every interval it closed. A write that fails stops
//! the file (the run goes on); the first error is kept for the caller to report.

use std::io::{self, Write};

pub struct Appender {
    out: Box<dyn Write>,
    error: Option<io::Error>,
}

impl Appender {
    pub fn new(out: Box<dyn Write>) -> Appender {
        Appender { out, error: None }
    }

    /// Appends `bytes` and flushes them; nothing once a write has failed.
    pub fn append(&mut self, bytes: &[u8]) {
        if self.error.is_some() || bytes.is_empty() {
            return;
        }
        if let Err(e) = self.out.write_all(bytes).and_then(|()| self.out.flush()) {
            self.error = Some(e);
        }
    }

    /// The first write that failed, after which nothing more was written.
    pub fn error(&self) -> Option<&io::Error> {
        self.error.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A writer that fails after `ok` writes.
    struct Failing {
        ok: usize,
        seen: Rc<RefCell<Vec<u8>>>,
    }

    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.ok == 0 {
                return Err(io::Error::other("disk full"));
            }
            self.ok -= 1;
            self.seen.borrow_mut().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_write_stops_the_file_and_is_kept() {
        let seen = Rc::default();
        let mut out = Appender::new(Box::new(Failing {
            ok: 1,
            seen: Rc::clone(&seen),
        }));
        out.append(b"first\n");
        assert!(out.error().is_none());
        out.append(b"second\n");
        assert_eq!(out.error().map(|e| e.to_string()), Some("disk full".into()));
        out.append(b"third\n");
        assert_eq!(String::from_utf8_lossy(&seen.borrow()), "first\n");
    }
}
