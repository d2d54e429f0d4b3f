//! `pbxlab load`'s files interval by interval, end to end on loopback: the HdrHistogram interval
//! log (`--hlog`) and the CSV (`--csv`) against the JSON's `intervals`, and what a run killed
//! with SIGKILL leaves in them. The target is a small UAS thread in the test that answers every
//! INVITE and BYE with a 200 (for the RTP case with an SDP answer, and a thread that echoes the
//! RTP back); every run is bounded in calls and time.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

/// A child process killed (SIGKILL) when dropped, so a failing test leaves nothing running.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A UAS that answers INVITE and BYE with 200 OK, until dropped.
struct Uas {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Uas {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The 200 OK to `req`: its Via, From, To (with a tag), Call-ID and CSeq, and a Contact; with
/// `rtp`, an SDP answer of G.711 at that address.
fn ok(req: &str, contact: SocketAddr, rtp: Option<SocketAddr>) -> String {
    let mut out = String::from("SIP/2.0 200 OK\r\n");
    for line in req.split("\r\n") {
        let lower = line.to_ascii_lowercase();
        if ["via:", "from:", "call-id:", "cseq:"]
            .iter()
            .any(|h| lower.starts_with(h))
        {
            out.push_str(line);
            out.push_str("\r\n");
        } else if lower.starts_with("to:") {
            out.push_str(line);
            if !lower.contains("tag=") {
                out.push_str(";tag=uas");
            }
            out.push_str("\r\n");
        }
    }
    let body = match rtp {
        Some(at) if req.starts_with("INVITE ") => format!(
            "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
            ip = at.ip(),
            port = at.port()
        ),
        _ => String::new(),
    };
    if !body.is_empty() {
        out.push_str("Content-Type: application/sdp\r\n");
    }
    out.push_str(&format!(
        "Contact: <sip:uas@{contact}>\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    out
}

fn uas() -> Uas {
    uas_with(false)
}

/// A UAS; with `rtp` it answers with SDP and echoes every RTP packet back to its sender.
fn uas_with(rtp: bool) -> Uas {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let echo = rtp.then(|| {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let addr = socket.local_addr().expect("addr");
        let flag = Arc::clone(&stop);
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        }));
        addr
    });
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let addr = socket.local_addr().expect("addr");
    let flag = Arc::clone(&stop);
    threads.push(std::thread::spawn(move || {
        let mut buf = [0u8; 65_536];
        while !flag.load(Ordering::Relaxed) {
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                continue;
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            if req.starts_with("INVITE ") || req.starts_with("BYE ") {
                let _ = socket.send_to(ok(&req, addr, echo).as_bytes(), from);
            }
        }
    }));
    Uas {
        addr,
        stop,
        threads,
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pbxlab-intervals-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8")
}

/// The interval entries of an interval log: (tag, start, length), all parsed by the crate.
fn intervals(log: &[u8]) -> Vec<(String, Duration, Duration)> {
    IntervalLogIterator::new(log)
        .map(|e| e.expect("every line parses"))
        .filter_map(|e| match e {
            LogEntry::Interval(i) => Some((
                i.tag().map(|t| t.as_str().to_owned()).unwrap_or_default(),
                i.start_timestamp(),
                i.duration(),
            )),
            _ => None,
        })
        .collect()
}

/// Rows of a CSV as (column name, value) maps.
fn csv_rows(text: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    lines
        .map(|l| {
            let values: Vec<&str> = l.split(',').collect();
            assert_eq!(values.len(), header.len(), "{l}");
            header
                .iter()
                .zip(values)
                .map(|(h, v)| (h.to_string(), v.to_owned()))
                .collect()
        })
        .collect()
}

fn number(row: &std::collections::BTreeMap<String, String>, column: &str) -> f64 {
    row.get(column)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{column} in {row:?}"))
}

/// Runs `pbxlab load` of echo calls at `target` with `flags`, in 200 ms intervals, writing the
/// JSON, the CSV and the interval log into `dir`; returns the JSON and the other two's paths.
fn load_with_reports(
    target: &str,
    dir: &Path,
    flags: &[&str],
) -> (serde_json::Value, PathBuf, PathBuf) {
    let (json, csv, hlog) = (dir.join("r.json"), dir.join("r.csv"), dir.join("r.hlog"));
    let out = Command::new(env!("CARGO_BIN_EXE_pbxlab"))
        .args(["load", "--target", target, "--service", "echo"])
        .args(flags)
        .args(["--interval", "200ms"])
        .args([
            "--json",
            path(&json),
            "--csv",
            path(&csv),
            "--hlog",
            path(&hlog),
        ])
        .output()
        .expect("pbxlab runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("json");
    (v, csv, hlog)
}

#[test]
fn the_csv_rows_are_the_jsons_intervals_and_add_up_to_its_totals() {
    let uas = uas();
    let dir = scratch("csv");
    let (v, csv, hlog) = load_with_reports(
        &uas.addr.to_string(),
        &dir,
        &["--calls", "150", "--call-rate", "200/s", "--hold", "50ms"],
    );
    let rows = csv_rows(&std::fs::read_to_string(&csv).expect("csv written"));
    let intervals = v["intervals"].as_array().expect("intervals");
    assert!(
        intervals.len() >= 4,
        "0.75 s of calls in 200 ms intervals: {v}"
    );
    assert_eq!(rows.len(), intervals.len());
    let close = |a: f64, b: f64| (a - b).abs() <= 0.0005 + b.abs() * 1e-9;
    for (row, i) in rows.iter().zip(intervals) {
        for (column, value) in [
            ("start_s", &i["start_s"]),
            ("length_s", &i["length_s"]),
            ("calls_attempted", &i["calls"]["attempted"]),
            ("calls_succeeded", &i["calls"]["succeeded"]),
            ("calls_failed", &i["calls"]["failed"]),
            ("failed_timeout", &i["failure_classes"]["timeout"]),
            ("failed_4xx", &i["failure_classes"]["4xx"]),
            ("concurrent_calls", &i["concurrent_calls"]),
            ("registrations_attempted", &i["registrations"]["attempted"]),
            ("call_rate_per_s", &i["call_rate_per_s"]),
        ] {
            let value = value.as_f64().unwrap_or_else(|| panic!("{column}: {i}"));
            assert!(close(number(row, column), value), "{column}: {row:?} {i}");
        }
        for (name, m) in i["metrics"].as_object().expect("metrics") {
            let count = m["count"].as_f64().expect("count");
            assert_eq!(number(row, &format!("{name}_count")), count, "{row:?}");
            let p99 = m["p99_us"].as_f64().expect("p99") / 1000.0;
            assert!(
                close(number(row, &format!("{name}_p99_ms")), p99),
                "{row:?}"
            );
        }
    }
    let sum = |column: &str| rows.iter().map(|r| number(r, column)).sum::<f64>();
    assert_eq!(sum("calls_attempted"), 150.0);
    for outcome in ["attempted", "succeeded", "failed", "abandoned"] {
        assert_eq!(
            sum(&format!("calls_{outcome}")),
            v["calls"][outcome].as_f64().expect("count"),
            "{outcome}"
        );
    }
    let failures: f64 = v["failures"]
        .as_object()
        .expect("failures")
        .values()
        .filter_map(serde_json::Value::as_f64)
        .sum();
    assert_eq!(sum("failures"), failures, "{v}");
    for metric in ["setup", "pdd", "bye"] {
        assert_eq!(
            sum(&format!("{metric}_count")),
            v["metrics"][metric]["count"].as_f64().expect("count"),
            "{metric}"
        );
    }
    // Calls of 50 ms at 200/s: about 10 at once; counted as calls, never more than placed.
    let peak = rows
        .iter()
        .map(|r| number(r, "concurrent_calls"))
        .fold(0.0, f64::max);
    assert!(peak <= 150.0, "{peak}");
    // The summary: the peak over the run is at least any interval's end, the rate achieved is
    // the rate's order, and every message is counted.
    assert!(
        v["peak_concurrent_calls"].as_f64().expect("peak") >= peak,
        "{v}"
    );
    let rate = v["call_rate_per_s"].as_f64().expect("rate");
    assert!(rate > 20.0 && rate < 2000.0, "{v}");
    assert!(v["metrics"]["setup"]["min_us"].as_u64() > Some(0), "{v}");
    assert!(
        v["metrics"]["setup"]["p95_us"].as_u64() >= v["metrics"]["setup"]["p50_us"].as_u64(),
        "{v}"
    );
    assert!(v["messages"]["INVITE"]["sent"].as_u64() >= Some(150), "{v}");
    assert!(v["messages"]["BYE"]["sent"].as_u64() >= Some(150), "{v}");
    assert_eq!(
        v["messages"]["200"]["received"].as_u64(),
        Some(300),
        "one to each INVITE and each BYE: {v}"
    );
    assert_eq!(v["messages"]["unexpected"], 0, "{v}");
    assert_eq!(number(rows.last().expect("rows"), "concurrent_calls"), 0.0);
    // The interval log has the same intervals, with the same counts per tag.
    let log = std::fs::read(&hlog).expect("hlog written");
    let setups = intervals_of(&log, "setup");
    assert_eq!(
        setups.len(),
        intervals
            .iter()
            .filter(|i| !i["metrics"]["setup"].is_null())
            .count()
    );
}

fn intervals_of(log: &[u8], tag: &str) -> Vec<(Duration, Duration)> {
    intervals(log)
        .into_iter()
        .filter(|(t, _, _)| t == tag)
        .map(|(_, s, l)| (s, l))
        .collect()
}

#[test]
fn a_run_killed_hard_leaves_the_intervals_it_closed() {
    let uas = uas();
    let dir = scratch("kill");
    let (csv, hlog) = (dir.join("r.csv"), dir.join("r.hlog"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pbxlab"));
    cmd.args([
        "load",
        "--target",
        &uas.addr.to_string(),
        "--service",
        "echo",
    ])
    .args([
        "--calls",
        "100000",
        "--call-rate",
        "100/s",
        "--hold",
        "50ms",
    ])
    .args([
        "--interval",
        "200ms",
        "--csv",
        path(&csv),
        "--hlog",
        path(&hlog),
    ]);
    let mut load = Killed(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pbxlab runs"),
    );
    // Three intervals with calls set up, then SIGKILL: no chance to write anything more.
    let until = Instant::now() + Duration::from_secs(20);
    while intervals_of(&std::fs::read(&hlog).unwrap_or_default(), "setup").len() < 3 {
        assert!(Instant::now() < until, "no 3 intervals within 20 s");
        let exited = load.0.try_wait().ok().flatten();
        assert!(exited.is_none(), "exited early: {exited:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // std's kill is SIGKILL.
    load.0.kill().expect("SIGKILL");
    let status = load.0.wait().expect("killed");
    assert!(!status.success());
    let log = std::fs::read(&hlog).expect("hlog");
    let entries: Vec<LogEntry> = IntervalLogIterator::new(&log)
        .collect::<Result<_, _>>()
        .expect("the crate reads what the killed run left");
    assert!(matches!(entries[0], LogEntry::StartTime(_)), "{entries:?}");
    assert!(matches!(entries[1], LogEntry::BaseTime(_)), "{entries:?}");
    let setups = intervals_of(&log, "setup");
    assert!(setups.len() >= 3, "{setups:?}");
    // Relative to BaseTime: the run's own clock, one interval after another.
    for pair in setups.windows(2) {
        assert!(pair[0].0 < pair[1].0, "{setups:?}");
    }
    assert!(setups[0].0 < Duration::from_secs(5), "{setups:?}");
    let rows = csv_rows(&std::fs::read_to_string(&csv).expect("csv"));
    assert!(rows.len() >= 3, "{rows:?}");
    assert!(rows.iter().any(|r| number(r, "setup_count") > 0.0));
}

/// The counts of an interval log's histograms tagged `tag`, interval by interval.
fn counts_of(log: &[u8], tag: &str) -> Vec<u64> {
    IntervalLogIterator::new(log)
        .map(|e| e.expect("every line parses"))
        .filter_map(|e| match e {
            LogEntry::Interval(i) if i.tag().map(|t| t.as_str()) == Some(tag) => Some(
                pbxlab_loadgen::report::decode_histogram(i.encoded_histogram())
                    .expect("a histogram")
                    .len(),
            ),
            _ => None,
        })
        .collect()
}

#[test]
fn an_rtp_runs_intervals_add_up_to_its_rtp_totals_and_its_media_gaps() {
    let uas = uas_with(true);
    let dir = scratch("rtp");
    let (v, csv, hlog) = load_with_reports(
        &uas.addr.to_string(),
        &dir,
        &[
            "--rtp",
            "1",
            "--calls",
            "6",
            "--call-rate",
            "10/s",
            "--hold",
            "1s",
        ],
    );
    let intervals = v["intervals"].as_array().expect("intervals");
    assert!(intervals.len() >= 5, "1.5 s in 200 ms intervals: {v}");
    let total = |key: &str| {
        v["rtp"][key]
            .as_u64()
            .unwrap_or_else(|| panic!("rtp.{key}: {v}"))
    };
    assert_eq!(v["rtp"]["streams"], 6, "{v}");
    assert!(total("packets_sent") >= 6 * 40, "{v}");
    assert!(total("packets_received") > 0, "the echo came back: {v}");
    // The intervals' shares add up to the run's RTP.
    let sum = |key: &str| {
        intervals
            .iter()
            .map(|i| i["rtp"][key].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    for key in [
        "packets_sent",
        "packets_received",
        "packets_expected",
        "packets_lost",
    ] {
        assert_eq!(sum(key), total(key), "{key}: {v}");
    }
    // Streams heard, with their jitter, in the intervals the calls were up in.
    assert!(
        intervals
            .iter()
            .filter(|i| i["rtp"]["streams_received"].as_u64() > Some(0))
            .count()
            >= 3,
        "{v}"
    );
    let last = intervals.last().expect("rows");
    assert!(last["rtp"].is_object(), "{last}");
    // Each stream's longest gap, at the run's end: in the last interval, and the hlog's.
    let gaps = v["metrics"]["media_gap"]["count"]
        .as_u64()
        .expect("media_gap");
    assert_eq!(gaps, 6, "one per stream heard: {v}");
    let gaps_by_row: u64 = intervals
        .iter()
        .filter_map(|i| i["metrics"]["media_gap"]["count"].as_u64())
        .sum();
    assert_eq!(gaps_by_row, gaps, "{v}");
    let log = std::fs::read(&hlog).expect("hlog written");
    let logged = counts_of(&log, "media_gap");
    assert!(!logged.is_empty(), "{}", String::from_utf8_lossy(&log));
    assert_eq!(logged.iter().sum::<u64>(), gaps);
    // The CSV says the same, in its media_gap columns and the rtp ones at the end.
    let rows = csv_rows(&std::fs::read_to_string(&csv).expect("csv written"));
    assert_eq!(rows.len(), intervals.len());
    let column = |c: &str| {
        rows.iter()
            .map(|r| r[c].parse::<f64>().unwrap_or(0.0))
            .sum::<f64>()
    };
    assert_eq!(column("media_gap_count"), gaps as f64);
    assert_eq!(column("rtp_packets_sent"), total("packets_sent") as f64);
    assert_eq!(
        column("rtp_packets_received"),
        total("packets_received") as f64
    );
    let header = std::fs::read_to_string(&csv).expect("csv");
    let header = header.lines().next().expect("header");
    assert!(
        header.ends_with(
            "rtp_packets_sent,rtp_packets_received,rtp_loss_fraction,rtp_late_packets,rtp_jitter_p99_ms"
        ),
        "{header}"
    );
}
