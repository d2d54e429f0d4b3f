//! `pbxlab cluster` end to end on loopback: the generator drives every service of the live
//! cluster, and a flooding source is throttled while everyone else carries on. Everything
//! listens on 127.0.0.0/8; each run is bounded in calls and time and stops by itself.

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Each test runs a live cluster and a load whose exit code it checks; two at once on a
/// two-core machine can put pbxlab behind its own schedule, which turns a failed run into an
/// invalid one (exit 4): they run one at a time.
fn alone() -> MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The cluster as a child process, killed when dropped.
struct ClusterProcess(Child);

impl Drop for ClusterProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

fn scenario(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

impl ClusterProcess {
    /// SIGTERM, as an operator's `kill` would: the cluster stops cleanly and writes its report.
    fn terminate(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                assert!(status.success(), "the cluster exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the cluster did not stop on SIGTERM");
    }
}

/// Starts `pbxlab cluster` on a free port and waits until it answers OPTIONS.
fn start_cluster(scenario: &str) -> (ClusterProcess, u16) {
    start_cluster_with(scenario, &[])
}

fn start_cluster_with(scenario: &str, extra: &[&str]) -> (ClusterProcess, u16) {
    start_cluster_for(scenario, "120s", extra)
}

/// Starts `pbxlab cluster` for `run_for` ("120s"), after which it exits by itself.
fn start_cluster_for(scenario: &str, run_for: &str, extra: &[&str]) -> (ClusterProcess, u16) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_pbxlab"))
        .args(["cluster", scenario, "--sip", &format!("127.0.0.1:{port}")])
        .args(["--for", run_for, "--status-every", "1h"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pbxlab runs");
    let cluster = ClusterProcess(child);
    let probe = UdpSocket::bind("127.0.0.1:0").expect("socket");
    probe
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let options = format!(
            "OPTIONS sip:cm@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKw\r\n\
             From: <sip:t@x>;tag=1\r\nTo: <sip:cm@x>\r\nCall-ID: wait\r\nCSeq: 1 OPTIONS\r\n\
             Content-Length: 0\r\n\r\n",
            probe.local_addr().expect("addr")
        );
        let _ = probe.send_to(options.as_bytes(), ("127.0.0.1", port));
        let mut buf = [0u8; 2048];
        if probe.recv_from(&mut buf).is_ok() {
            return (cluster, port);
        }
    }
    panic!("the cluster never answered on port {port}");
}

fn load(port: u16, args: &[&str]) -> (Output, serde_json::Value) {
    let json = std::env::temp_dir().join(format!(
        "pbxlab-cluster-test-{}-{port}.json",
        std::process::id()
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_pbxlab"))
        .args(["load", "--target", &format!("127.0.0.1:{port}")])
        .args(["--domain", "pbxlab.test"])
        .args(args)
        .args(["--json", json.to_str().expect("utf-8")])
        .output()
        .expect("pbxlab runs");
    let text = std::fs::read(&json).unwrap_or_else(|_| {
        panic!("no report: {}", String::from_utf8_lossy(&out.stderr));
    });
    (out, serde_json::from_slice(&text).expect("JSON"))
}

fn n(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn every_service_works_end_to_end_under_load() {
    let _alone = alone();
    let services = scenario("services.toml");
    let cluster_json =
        std::env::temp_dir().join(format!("pbxlab-cluster-status-{}.json", std::process::id()));
    let (cluster, port) = start_cluster_with(
        &services,
        &["--json", cluster_json.to_str().expect("utf-8")],
    );
    let (out, v) = load(port, &[&services, "--duration", "8s", "--rtp", "1"]);
    cluster.terminate();
    let c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cluster_json).expect("the cluster's report"))
            .expect("JSON");
    // Every participant of every room was placed on the room's one node.
    assert!(n(&c["meetings"]["rooms"]) > 0, "{c}");
    assert_eq!(n(&c["meetings"]["split_joins"]), 0, "{c}");
    assert!(n(&c["meetings"]["largest"]) >= 2, "{c}");
    assert!(n(&c["ivr"]["routed"]) > 0, "{c}");
    assert!(n(&c["queue"]["answered"]) > 0, "{c}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{v}");
    assert_eq!(n(&v["registrations"]["failed"]), 0, "{v}");
    assert_eq!(n(&v["calls"]["failed"]), 0, "{v}");
    // Calls between users went through the B2BUA with media relayed both ways.
    let users = v["workloads"]
        .as_array()
        .and_then(|w| w.iter().find(|w| w["name"] == "users"))
        .expect("a users workload");
    assert!(n(&users["succeeded"]) > 10, "{v}");
    // IVR digits routed callers into queues, and agents answered them.
    assert!(n(&v["ivr"]["routed"]) > 0, "{v}");
    assert!(n(&v["queue"]["answered"]) > 0, "{v}");
    assert!(n(&v["metrics"]["queue_wait"]["count"]) > 0, "{v}");
    // Every stream's audio came back: relayed, echoed by nobody, mixed or played.
    assert!(n(&v["rtp"]["packets_received"]) > 1000, "{v}");
    assert!(
        v["rtp"]["loss_fraction"].as_f64().expect("number") < 0.01,
        "{v}"
    );
}

/// The reported hang: a services.toml load whose cluster exited under it ran on for over ten
/// minutes, our users' answered legs waiting for BYEs that never came while registration
/// refreshes kept the drain limit from starting. It must end by itself once the target is
/// silent, every call counted. T1 is 100 ms, so a transaction times out in 6.4 s.
#[test]
fn a_load_whose_cluster_exits_under_it_ends_by_itself_with_every_call_counted() {
    let _alone = alone();
    let services = scenario("services.toml");
    // The cluster exits 6 s in, while the load (registrations, then 8 s of calls) goes on.
    let (cluster, port) = start_cluster_for(&services, "6s", &[]);
    let json = std::env::temp_dir().join(format!(
        "pbxlab-cluster-gone-{}-{port}.json",
        std::process::id()
    ));
    let mut child = Command::new(env!("CARGO_BIN_EXE_pbxlab"))
        .args(["load", "--target", &format!("127.0.0.1:{port}")])
        .args(["--domain", "pbxlab.test", &services])
        .args(["--duration", "8s", "--rtp", "1", "--t1", "100ms"])
        .args(["--json", json.to_str().expect("utf-8")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pbxlab runs");
    // Well past the schedule and a transaction's timeout: the run takes about 20 s.
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the load was still running 90 s after it started, its target gone");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(cluster);
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read as _;
        let _ = e.read_to_string(&mut stderr);
    }
    // Failed calls break the scenario's SLO (blocking 0): thresholds broke, exit 99.
    assert_eq!(status.code(), Some(99), "{stderr}");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the report")).expect("JSON");
    let calls = &v["calls"];
    assert_eq!(
        n(&calls["attempted"]),
        n(&calls["succeeded"]) + n(&calls["failed"]) + n(&calls["abandoned"]),
        "every call ended one way or another: {v}"
    );
    assert!(n(&calls["failed"]) > 0, "{v}");
    assert!(n(&v["failures"]["target silent"]) > 0, "{v}");
    assert!(
        stderr.contains("the target fell silent after the last attempt"),
        "{stderr}"
    );
    assert!(!v["interrupted"].as_bool().expect("bool"), "{v}");
}

#[test]
fn a_flooding_source_gets_503_while_the_others_keep_calling() {
    let _alone = alone();
    let (_cluster, port) = start_cluster(&scenario("services.toml"));
    // 127.0.0.2 is not whitelisted (127.0.0.1, where the generator runs, is).
    let flooder = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    flooder
        .set_read_timeout(Some(Duration::from_millis(5)))
        .expect("timeout");
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let flood = {
        let (stop, sent, refused) = (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&refused));
        std::thread::spawn(move || {
            let local = flooder.local_addr().expect("addr");
            let mut buf = [0u8; 2048];
            let started = Instant::now();
            // About 2,000 requests a second, for at most 30 s.
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(30) {
                for _ in 0..20 {
                    let i = sent.fetch_add(1, Ordering::Relaxed);
                    let req = format!(
                        "REGISTER sip:pbxlab.test SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKf{i}\r\n\
                         From: <sip:1001@pbxlab.test>;tag=f\r\nTo: <sip:1001@pbxlab.test>\r\n\
                         Call-ID: flood{i}\r\nCSeq: 1 REGISTER\r\nContact: <sip:1001@{local}>\r\n\
                         Content-Length: 0\r\n\r\n"
                    );
                    let _ = flooder.send_to(req.as_bytes(), ("127.0.0.1", port));
                }
                while let Ok(len) = flooder.recv(&mut buf) {
                    if buf[..len].starts_with(b"SIP/2.0 503") {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let (out, v) = load(
        port,
        &[
            "--users",
            "200",
            "--first-user",
            "1020",
            "--calls",
            "100",
            "--call-rate",
            "20/s",
            "--hold",
            "1s",
        ],
    );
    stop.store(true, Ordering::Relaxed);
    flood.join().expect("flood thread");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{v}");
    assert_eq!(n(&v["registrations"]["failed"]), 0, "{v}");
    assert_eq!(n(&v["calls"]["failed"]), 0, "{v}");
    let (sent, refused) = (
        sent.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    // The burst (400) passes; at ~2,000/s against 200/s nearly everything after it is refused.
    assert!(
        refused > sent / 2,
        "{refused} of {sent} flood requests refused"
    );
}

/// The first line of the answer to `request` sent from `socket` to the cluster on `port`.
fn status_line(socket: &UdpSocket, port: u16, request: &str) -> String {
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    socket
        .send_to(request.as_bytes(), ("127.0.0.1", port))
        .expect("send");
    let mut buf = [0u8; 4096];
    let len = socket.recv(&mut buf).expect("an answer");
    let text = String::from_utf8_lossy(&buf[..len]).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn a_call_to_a_user_needs_credentials_unless_it_comes_from_a_trusted_source() {
    let _alone = alone();
    let (_cluster, port) =
        start_cluster_with(&scenario("services.toml"), &["--trusted", "127.0.0.3"]);
    let invite = |socket: &UdpSocket, id: &str| {
        let local = socket.local_addr().expect("addr");
        format!(
            "INVITE sip:1000@pbxlab.test SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{id}\r\n\
             From: <sip:1001@pbxlab.test>;tag={id}\r\nTo: <sip:1000@pbxlab.test>\r\n\
             Call-ID: {id}\r\nCSeq: 1 INVITE\r\nContact: <sip:1001@{local}>\r\n\
             Content-Length: 0\r\n\r\n"
        )
    };
    let phone = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    assert_eq!(
        status_line(&phone, port, &invite(&phone, "t1")),
        "SIP/2.0 407 Proxy Authentication Required"
    );
    // From the trusted address the call is not challenged: it gets as far as the callee, who
    // has not registered.
    let trunk = UdpSocket::bind("127.0.0.3:0").expect("bind 127.0.0.3");
    assert_eq!(
        status_line(&trunk, port, &invite(&trunk, "t2")),
        "SIP/2.0 480 Temporarily Unavailable"
    );
}

#[test]
fn echoed_g711_on_loopback_rates_as_a_clean_call_and_mos_thresholds_decide_the_exit() {
    let _alone = alone();
    let (cluster, port) = start_cluster(&scenario("quickstart.toml"));
    let echo = [
        "--service",
        "echo",
        "--rtp",
        "1",
        "--calls",
        "4",
        "--call-rate",
        "4/s",
        "--hold",
        "2s",
    ];
    let (pass, v) = load(port, &[&echo[..], &["--threshold", "mos.p5>4.0"]].concat());
    assert_eq!(pass.status.code(), Some(0), "{v}");
    let mos = &v["rtp"]["mos"];
    assert_eq!(n(&mos["streams"]), 4, "{v}");
    assert_eq!(n(&mos["silent_streams"]), 0, "{v}");
    // No loss, nothing late, no delay past 100 ms: R 93.2, G.711's best.
    let p50 = mos["p50"].as_f64().expect("rtp.mos.p50");
    assert!((p50 - 4.41).abs() < 0.02, "{v}");
    let r = v["rtp"]["r_factor_mean"].as_f64().expect("r_factor_mean");
    assert!((r - 93.2).abs() < 0.5, "{v}");
    // 20 ms packetisation and 40 ms of buffer, plus the echo's round trip on loopback.
    let delay = mos["delay_ms_mean"].as_f64().expect("delay_ms_mean");
    assert!((60.0..100.0).contains(&delay), "{v}");
    assert_eq!(v["thresholds"][0]["pass"], true, "{v}");
    let text = String::from_utf8_lossy(&pass.stdout);
    assert!(text.contains("MOS p1 "), "{text}");
    let (fail, v) = load(port, &[&echo[..], &["--threshold", "mos.p5>4.45"]].concat());
    assert_eq!(fail.status.code(), Some(99), "{v}");
    assert_eq!(v["thresholds"][0]["pass"], false, "{v}");
    cluster.terminate();
}
