//! `pbxlab load` end to end against small in-process SIP peers on loopback: a UAS that stalls
//! (coordinated omission), one that answers garbage, and a target where nobody listens. Each
//! peer is a thread with a UDP socket; every run is bounded in calls and time.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How a fake UAS misbehaves.
#[derive(Clone, Copy)]
enum Quirk {
    /// Stops reading its socket for `pause` once `after` has passed since its first INVITE.
    Stall { after: Duration, pause: Duration },
    /// Answers every INVITE of every `every`-th call (retransmissions too) with bytes that are
    /// not SIP.
    Garbage { every: u32 },
}

struct FakeUas {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for FakeUas {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Copies the headers a response must repeat from a request (Via, From, To, Call-ID, CSeq).
fn response(req: &str, status: &str, to_tag: &str) -> String {
    let mut out = format!("SIP/2.0 {status}\r\n");
    for line in req.split("\r\n") {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("via:")
            || lower.starts_with("from:")
            || lower.starts_with("call-id:")
            || lower.starts_with("cseq:")
        {
            out.push_str(line);
            out.push_str("\r\n");
        } else if lower.starts_with("to:") {
            out.push_str(line);
            if !lower.contains("tag=") {
                out.push_str(";tag=");
                out.push_str(to_tag);
            }
            out.push_str("\r\n");
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

fn fake_uas(quirk: Quirk) -> FakeUas {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let addr = socket.local_addr().expect("addr");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 65_536];
        let mut first_invite: Option<Instant> = None;
        let mut stalled = false;
        let mut calls: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
        while !flag.load(Ordering::Relaxed) {
            if let (Quirk::Stall { after, pause }, Some(t0)) = (quirk, first_invite)
                && !stalled
                && t0.elapsed() >= after
            {
                stalled = true;
                std::thread::sleep(pause);
            }
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                continue;
            };
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            let tag = format!("uas{}", req.len());
            if req.starts_with("INVITE ") {
                first_invite.get_or_insert_with(Instant::now);
                let call_id = req
                    .lines()
                    .find(|l| l.to_ascii_lowercase().starts_with("call-id:"))
                    .unwrap_or_default()
                    .to_owned();
                let n = calls.len() as u32 + 1;
                let poisoned = *calls.entry(call_id).or_insert(
                    matches!(quirk, Quirk::Garbage { every } if n.is_multiple_of(every)),
                );
                if poisoned {
                    let _ = socket.send_to(b"SIP/2.0 200 OK\r\nthis is not a header\r\n\r\n", from);
                    continue;
                }
                let _ = socket.send_to(response(&req, "180 Ringing", &tag).as_bytes(), from);
                let ok = response(&req, "200 OK", &tag).replace(
                    "Content-Length: 0\r\n\r\n",
                    &format!("Contact: <sip:uas@{addr}>\r\nContent-Length: 0\r\n\r\n"),
                );
                let _ = socket.send_to(ok.as_bytes(), from);
            } else if req.starts_with("BYE ") {
                let _ = socket.send_to(response(&req, "200 OK", &tag).as_bytes(), from);
            }
        }
    });
    FakeUas {
        addr,
        stop,
        thread: Some(thread),
    }
}

fn load(args: &[&str]) -> (Output, serde_json::Value) {
    let dir = std::env::temp_dir().join(format!("pbxlab-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let json = dir.join(format!(
        "{}.json",
        args.join("_")
            .replace(['/', ':', '<', '>', '=', ' ', '.'], "-")
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_pbxlab"))
        .arg("load")
        .args(args)
        .args(["--json", json.to_str().expect("utf-8")])
        .output()
        .expect("pbxlab runs");
    let v = std::fs::read(&json)
        .map(|b| serde_json::from_slice(&b).expect("json"))
        .unwrap_or(serde_json::Value::Null);
    (out, v)
}

/// `pbxlab load` of `calls` calls at `rate` to the `echo` service at `target`, and more flags.
fn echo_calls(target: &str, calls: &str, rate: &str, more: &[&str]) -> (Output, serde_json::Value) {
    let mut args = vec![
        "--target",
        target,
        "--service",
        "echo",
        "--calls",
        calls,
        "--call-rate",
        rate,
    ];
    args.extend_from_slice(more);
    load(&args)
}

fn us(v: &serde_json::Value, metric: &str, stat: &str) -> u64 {
    v["metrics"][metric][stat]
        .as_u64()
        .unwrap_or_else(|| panic!("metrics.{metric}.{stat} in {v}"))
}

#[test]
fn a_stalled_target_shows_in_setup_but_not_in_the_uncorrected_figure() {
    let uas = fake_uas(Quirk::Stall {
        after: Duration::from_secs(2),
        pause: Duration::from_secs(2),
    });
    let target = uas.addr.to_string();
    // 100 calls/s for 8 s, at most 4 at once (SIPp's -l): during the 2 s stall the generator is
    // held back, so ~200 attempts leave late.
    let (out, v) = echo_calls(
        &target,
        "800",
        "100/s",
        &["--hold", "10ms", "--max-concurrent", "4"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v["calls"]["failed"], 0, "{v}");
    let setup = us(&v, "setup", "p99_us");
    let naive = us(&v, "setup_uncorrected", "p99_us");
    assert!(
        setup >= 1_000_000,
        "setup p99 {setup} us should include the 2 s stall"
    );
    assert!(
        naive < 200_000,
        "uncorrected p99 {naive} us: only 4 of 800 calls saw the stall from their send time"
    );
    assert!(
        us(&v, "setup", "p90_us") >= 500_000,
        "~25 % of attempts were due during the stall: {v}"
    );
}

#[test]
fn malformed_responses_are_counted_with_a_reason_and_nothing_panics() {
    let uas = fake_uas(Quirk::Garbage { every: 5 });
    let target = uas.addr.to_string();
    let (out, v) = echo_calls(&target, "50", "100/s", &["--hold", "10ms", "--t1", "50ms"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Each poisoned call gets garbage for its INVITE and every retransmission of it.
    let malformed = v["malformed"].as_u64().expect("number");
    assert!(malformed >= 10, "{v}");
    assert_eq!(v["failures"]["malformed message"], malformed, "{v}");
    // The 10 calls whose only answer was garbage time out; the others complete.
    assert_eq!(v["calls"]["succeeded"], 40, "{v}");
    assert_eq!(v["calls"]["failed"], 10, "{v}");
    assert_eq!(v["failures"]["INVITE timeout"], 10, "{v}");
}

#[test]
fn thresholds_set_the_exit_code() {
    let uas = fake_uas(Quirk::Garbage { every: 1_000_000 });
    let target = uas.addr.to_string();
    let (pass, v) = echo_calls(
        &target,
        "20",
        "200/s",
        &[
            "--hold",
            "10ms",
            "--threshold",
            "setup.p99<2s",
            "--threshold",
            "calls.failed==0",
        ],
    );
    assert_eq!(pass.status.code(), Some(0), "{v}");
    assert_eq!(v["thresholds"][0]["pass"], true, "{v}");
    let (fail, v) = echo_calls(
        &target,
        "20",
        "200/s",
        &["--hold", "10ms", "--threshold", "setup.p99<1us"],
    );
    assert_eq!(fail.status.code(), Some(99), "{v}");
    assert_eq!(v["thresholds"][0]["pass"], false, "{v}");
    let (bad, _) = load(&["--target", &target, "--threshold", "setup.p99"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no comparison"));
}

#[test]
fn an_unreachable_target_gets_a_clear_error() {
    // A port nobody listens on: bind, learn the port, close.
    let port = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("port")
        .port();
    let target = format!("127.0.0.1:{port}");
    let (out, v) = echo_calls(&target, "3", "100/s", &["--t1", "20ms"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!("no answer from {target}")),
        "{stderr}"
    );
    // The socket connected to the target hears the ICMP port unreachable.
    assert!(stderr.contains("nothing listens on that port"), "{stderr}");
    assert!(
        v["failures"]["receive: connection refused"].as_u64() > Some(0),
        "{v}"
    );
    assert_eq!(v["calls"]["failed"], 3, "the report is still written: {v}");
    // With the default timers, 50 calls at 10/s would take 5 s to start and 32 s (Timer B) to
    // give up: the refusals end the run at once instead.
    let (out, v) = echo_calls(&target, "50", "10/s", &[]);
    assert_eq!(out.status.code(), Some(3), "{v}");
    let took = v["duration_s"].as_f64().expect("duration");
    assert!(took < 5.0, "ran {took} s against a refusing host: {v}");
    assert!(
        v["failures"]["refused by the target's host: nothing listens there"].as_u64() > Some(0),
        "{v}"
    );
}

#[test]
fn ctrl_c_hangs_up_and_still_writes_the_report() {
    let uas = fake_uas(Quirk::Garbage { every: 1_000_000 });
    let target = uas.addr.to_string();
    let dir = std::env::temp_dir().join(format!("pbxlab-load-int-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (json, hlog) = (dir.join("r.json"), dir.join("r.hlog"));
    let child = Command::new(env!("CARGO_BIN_EXE_pbxlab"))
        .args([
            "load",
            "--target",
            &target,
            "--service",
            "echo",
            "--calls",
            "100000",
            "--call-rate",
            "200/s",
            "--hold",
            "5s",
        ])
        .args([
            "--json",
            json.to_str().expect("utf-8"),
            "--hlog",
            hlog.to_str().expect("utf-8"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .expect("kill")
            .success()
    );
    let out = child.wait_with_output().expect("exits");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("report written")).expect("json");
    assert_eq!(v["interrupted"], true);
    let attempted = v["calls"]["attempted"].as_u64().expect("number");
    assert!(
        (300..=700).contains(&attempted),
        "stopped after ~2.5 s at 200/s: {v}"
    );
    assert_eq!(
        v["calls"]["succeeded"], attempted,
        "every established call was hung up: {v}"
    );
    let log = std::fs::read_to_string(&hlog).expect("interval log written");
    assert!(log.lines().any(|l| l.starts_with("Tag=setup,")), "{log}");
}

#[test]
fn shards_split_the_calls() {
    let uas = fake_uas(Quirk::Garbage { every: 1_000_000 });
    let target = uas.addr.to_string();
    let mut total = 0;
    for shard in ["0/3", "1/3", "2/3"] {
        let (out, v) = echo_calls(
            &target,
            "100",
            "300/s",
            &["--hold", "10ms", "--shard", shard],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(v["calls"]["failed"], 0, "{v}");
        // 100 calls a second in each: the automatic tick's longest.
        assert_eq!(v["tick"]["auto"], true, "{v}");
        assert_eq!(v["tick"]["calls_us"], 2000, "{v}");
        total += v["calls"]["attempted"].as_u64().expect("number");
    }
    assert_eq!(total, 100, "34 + 33 + 33");
    let (bad, _) = load(&["--target", &target, "--shard", "3/3"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn a_coarse_tick_starts_calls_on_its_grid_without_charging_them_the_wait() {
    let uas = fake_uas(Quirk::Garbage { every: 1_000_000 });
    let target = uas.addr.to_string();
    // 1,000 calls/s on a 20 ms tick: 20 calls start on each tick. Charged the wait from k / rate
    // to the tick, their setup would be 10 ms at the median; from the tick, it is the reply's.
    let (out, v) = echo_calls(
        &target,
        "200",
        "1000/s",
        &["--hold", "10ms", "--tick", "20ms"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v["calls"]["succeeded"], 200, "{v}");
    assert!(us(&v, "setup", "p50_us") < 5_000, "{v}");
    assert_eq!(v["tick"]["auto"], false, "{v}");
    assert_eq!(v["tick"]["calls_us"], 20_000, "{v}");
    assert!(
        v["tick"]["registrations_us"].is_null(),
        "no registrations: {v}"
    );
    let (bad, _) = load(&["--target", &target, "--tick", "0"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--tick"));
}

#[test]
fn the_report_gives_the_seed_that_repeats_the_run() {
    let uas = fake_uas(Quirk::Garbage { every: 1_000_000 });
    let target = uas.addr.to_string();
    let (out, v) = echo_calls(&target, "5", "100/s", &["--hold", "10ms", "--seed", "42"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(v["seed"], 42, "{v}");
    assert!(text.contains("--seed 42 repeats"), "{text}");
    // Without --seed the run picks one, and says which.
    let (out, v) = echo_calls(&target, "5", "100/s", &["--hold", "10ms"]);
    let seed = v["seed"].as_u64().expect("a seed picked for the run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("--seed {seed} repeats")), "{text}");
}

/// Ctrl-C while millions of users are being made stops the run there (exit 105, nothing sent),
/// rather than after the setup.
#[test]
fn ctrl_c_during_the_setup_of_many_users_stops_at_once() {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_pbxlab"))
        .args(["load", "--target", "127.0.0.1:9", "--users", "20000000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(sent);
    let stopped = std::time::Instant::now();
    let out = child.wait_with_output().expect("ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(105), "{stderr}");
    assert!(stderr.contains("nothing was sent"), "{stderr}");
    assert!(
        stopped.elapsed() < std::time::Duration::from_secs(2),
        "took {:?} after Ctrl-C",
        stopped.elapsed()
    );
}
