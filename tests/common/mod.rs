//! What the end-to-end tests that run pbxlab as child processes share: a child with its output
//! in a file, stopped (SIGTERM, then SIGKILL) when dropped, so a failing test leaves nothing
//! running.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A child process with its stdout and stderr in one file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with no stdin and its output into `log`.
    pub fn start(mut cmd: Command, log: &Path) -> Proc {
        let file = File::create(log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("the command runs");
        Proc {
            child,
            log: log.to_owned(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
    }

    /// Waits up to `limit` for the process to exit by itself.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGTERM, and its exit status once it stopped.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("-TERM");
        match self.wait_for(Duration::from_secs(10)) {
            Some(status) => status,
            None => panic!("did not stop on SIGTERM:\n{}", self.log()),
        }
    }

    /// Waits up to `limit` for `text` in the log; returns how long that took.
    pub fn wait_for_log(&mut self, text: &str, limit: Duration) -> Duration {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.log().contains(text) {
                return started.elapsed();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("exited ({status}) before logging {text:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no {text:?} within {limit:?}:\n{}", self.log());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal("-TERM");
            if self.wait_for(Duration::from_secs(3)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}
