//! Alerts out of the cluster: every [`EventKind::Alert`] the balancer raises (an IVR, queue or
//! meeting server went down) becomes a line on stderr, a JSON line appended to a file
//! (`alerts.jsonl`) and a POST of the same JSON to a webhook:
//! `{"at_s": 12.3, "server": "ivr-1", "role": "ivr", "alert": "ivr server ivr-1 is down ..."}`.
//!
//! The sink follows a [`Control`]'s records ([`AlertSink::poll`]) or is handed events
//! ([`AlertSink::raise`]); either way it runs on its caller's thread, never the Call Manager's.
//! The webhook is posted from a thread of its own behind a bounded queue, so a slow or dead
//! receiver holds up nobody; its failures are logged, not fatal.

use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Duration;

use pbxlab_balancer::EventKind;
use serde_json::{Value, json};

use super::cluster::{ClusterEvent, Control};
use super::http::{self, Url};
use crate::Error;

/// Alerts waiting for the webhook; more are logged and left out.
const WEBHOOK_QUEUE: usize = 64;
/// How long one POST to the webhook may take.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// Where alerts go: stderr always, a file and a webhook if given.
pub struct AlertSink {
    file: Option<(PathBuf, File)>,
    webhook: Option<Webhook>,
    /// Events of the followed [`Control`] already looked at.
    seen: usize,
    raised: u64,
}

struct Webhook {
    url: Url,
    queue: SyncSender<Vec<u8>>,
    /// Signalled when the posting thread has emptied its queue and ended.
    done: Receiver<()>,
}

impl AlertSink {
    /// Opens `file` for appending (created if missing) and checks the webhook's URL
    /// (`http://HOST:PORT/PATH`), so that mistakes show before the cluster runs.
    pub fn new(file: Option<PathBuf>, webhook: Option<String>) -> Result<AlertSink, Error> {
        let file = file
            .map(|path| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map(|f| (path.clone(), f))
                    .map_err(|error| Error::AlertFile { path, error })
            })
            .transpose()?;
        let webhook = webhook
            .map(|url| {
                let url = Url::parse(&url).map_err(Error::Webhook)?;
                Webhook::spawn(url)
            })
            .transpose()?;
        Ok(AlertSink {
            file,
            webhook,
            seen: 0,
            raised: 0,
        })
    }

    /// Raises `event` if it is an alert, for a server of `role`; returns whether it was one.
    pub fn raise(&mut self, event: &ClusterEvent, role: &str) -> bool {
        let Some(alert) = alert_json(event, role) else {
            return false;
        };
        self.raised += 1;
        eprintln!(
            "alert: {:.3}s {} ({role}): {}",
            event.at.as_secs_f64(),
            event.server,
            alert["alert"].as_str().unwrap_or_default()
        );
        let line = alert.to_string();
        if let Some((path, f)) = &mut self.file
            && let Err(e) = f.write_all(format!("{line}\n").as_bytes())
        {
            eprintln!("pbxlab: cannot append the alert to {}: {e}", path.display());
        }
        if let Some(w) = &self.webhook {
            match w.queue.try_send(line.into_bytes()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => eprintln!(
                    "pbxlab: alert webhook {}: {WEBHOOK_QUEUE} alerts still unsent; this one is left out",
                    w.url
                ),
                Err(TrySendError::Disconnected(_)) => {
                    eprintln!(
                        "pbxlab: alert webhook {}: the posting thread has gone",
                        w.url
                    );
                }
            }
        }
        true
    }

    /// Raises the alerts `control` recorded since the last poll; returns how many.
    pub fn poll(&mut self, control: &Control) -> usize {
        let events = control.events_since(self.seen);
        if events.is_empty() {
            return 0;
        }
        self.seen += events.len();
        let nodes = control.status().nodes;
        let mut raised = 0;
        for e in &events {
            let role = nodes
                .iter()
                .find(|n| n.name == e.server)
                .map_or("?", |n| n.role);
            if self.raise(e, role) {
                raised += 1;
            }
        }
        raised
    }

    /// Alerts raised so far.
    pub fn raised(&self) -> u64 {
        self.raised
    }

    /// Waits up to `wait` for the webhook to receive what is queued, then lets go.
    pub fn close(self, wait: Duration) {
        if let Some(w) = self.webhook {
            let Webhook { queue, done, .. } = w;
            drop(queue);
            let _ = done.recv_timeout(wait);
        }
    }
}

impl Webhook {
    fn spawn(url: Url) -> Result<Webhook, Error> {
        let (queue, pending) = std::sync::mpsc::sync_channel::<Vec<u8>>(WEBHOOK_QUEUE);
        let (done_tx, done) = std::sync::mpsc::channel();
        let target = url.clone();
        std::thread::Builder::new()
            .name("pbxlab-alerts".into())
            .spawn(move || {
                for body in pending {
                    match http::call("POST", &target, &[], Some(&body), WEBHOOK_TIMEOUT) {
                        Ok(r) if (200..300).contains(&r.status) => {}
                        Ok(r) => eprintln!(
                            "pbxlab: alert webhook {target}: answered {} {}",
                            r.status,
                            String::from_utf8_lossy(&r.body[..r.body.len().min(200)]).trim()
                        ),
                        Err(e) => eprintln!("pbxlab: alert webhook {target}: {e}"),
                    }
                }
                let _ = done_tx.send(());
            })
            .map_err(|e| Error::Webhook(format!("cannot start its thread: {e}")))?;
        Ok(Webhook { url, queue, done })
    }
}

/// The JSON of an alert event (`None` for other events).
pub fn alert_json(event: &ClusterEvent, role: &str) -> Option<Value> {
    let EventKind::Alert(text) = &event.kind else {
        return None;
    };
    Some(json!({
        "at_s": event.at.as_secs_f64(),
        "server": event.server,
        "role": role,
        "alert": text,
    }))
}

#[cfg(test)]
mod tests {
    use std::io::BufRead as _;
    use std::net::TcpListener;
    use std::time::Instant;

    use super::*;

    fn event(kind: EventKind) -> ClusterEvent {
        ClusterEvent {
            at: Duration::from_millis(12_500),
            server: "ivr-1".into(),
            kind,
        }
    }

    #[test]
    fn alerts_go_to_the_file_and_the_webhook_and_other_events_do_not() {
        let path = std::env::temp_dir().join(format!("pbxlab-alerts-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let receiver = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("a POST");
            let r = http::read_request(&mut s, Instant::now() + Duration::from_secs(5))
                .expect("a request");
            http::write_json_response(&mut s, 200, &[], &json!({})).expect("answer");
            r
        });
        let mut sink = AlertSink::new(Some(path.clone()), Some(url)).expect("sink");
        assert!(!sink.raise(&event(EventKind::Down), "ivr"));
        let text = "ivr server ivr-1 is down with 2 sessions";
        assert!(sink.raise(&event(EventKind::Alert(text.into())), "ivr"));
        assert_eq!(sink.raised(), 1);
        let posted = receiver.join().expect("receiver");
        sink.close(Duration::from_secs(5));
        assert_eq!(posted.method, "POST");
        assert_eq!(posted.target, "/hook");
        let want = json!({"at_s": 12.5, "server": "ivr-1", "role": "ivr", "alert": text});
        let got: Value = serde_json::from_slice(&posted.body).expect("JSON");
        assert_eq!(got, want);
        let lines: Vec<String> = std::io::BufReader::new(File::open(&path).expect("file"))
            .lines()
            .map(|l| l.expect("a line"))
            .collect();
        assert_eq!(lines.len(), 1);
        assert_eq!(
            serde_json::from_str::<Value>(&lines[0]).expect("JSON"),
            want
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_dead_webhook_holds_up_nobody() {
        // Nothing listens on the port of a dropped listener.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a port")
            .port();
        let mut sink =
            AlertSink::new(None, Some(format!("http://127.0.0.1:{port}/"))).expect("sink");
        let started = Instant::now();
        for _ in 0..200 {
            sink.raise(&event(EventKind::Alert("down".into())), "queue");
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        sink.close(Duration::from_millis(100));
    }

    #[test]
    fn bad_outputs_are_refused_up_front() {
        assert!(matches!(
            AlertSink::new(None, Some("https://example.test/".into())),
            Err(Error::Webhook(_))
        ));
        assert!(matches!(
            AlertSink::new(Some("/nonexistent-dir/alerts.jsonl".into()), None),
            Err(Error::AlertFile { .. })
        ));
    }
}
