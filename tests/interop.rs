//! Interop with real SIP peers from Debian's packages: SIPp (`sip-tester`) and Kamailio; and with
//! HdrHistogram's Python reader (PyPI `hdrhistogram`) for `--hlog`.
//!
//! They need `sipp`, `kamailio` and python3's `hdrh` on the PATH, so they are ignored by a plain
//! `cargo test`; `.ci/run` installs them and runs `cargo test --test interop -- --ignored`. Everything listens
//! on 127.0.0.1, every run is bounded in calls and time, and every peer is stopped at the end.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A peer process, stopped (SIGTERM, then SIGKILL) when dropped.
struct Peer {
    name: &'static str,
    child: Child,
}

impl Drop for Peer {
    fn drop(&mut self) {
        // SIGTERM first: Kamailio's main process then stops its children too.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pbxlab-interop-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Waits until something answers SIP OPTIONS on the port (or panics after a few seconds).
fn wait_for_sip(port: u16, peer: &mut Peer) {
    let probe = UdpSocket::bind("127.0.0.1:0").expect("probe socket");
    probe
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let local = probe.local_addr().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = peer.child.try_wait() {
            panic!("{} exited during start-up: {status}", peer.name);
        }
        n += 1;
        let options = format!(
            "OPTIONS sip:ping@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKprobe{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:probe@{local}>;tag=p{n}\r\nTo: <sip:ping@127.0.0.1>\r\n\
             Call-ID: probe{n}@pbxlab\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        let _ = probe.send_to(options.as_bytes(), ("127.0.0.1", port));
        let mut buf = [0u8; 4096];
        if probe.recv_from(&mut buf).is_ok() {
            return;
        }
    }
    panic!("{} never answered on port {port}", peer.name);
}

/// SIPp as a UAS answering with RTP echo: its built-in `uas` scenario, or (`record_route`) the
/// repo's `tests/interop/uas.xml`, which returns Record-Route so a proxy in front stays on the
/// dialog's path. (The built-in one does not, and SIPp sends every message of a call to the
/// address the call came from; behind a proxy its 200 to a direct BYE would go astray.)
fn sipp_uas(port: u16, media_port: u16, record_route: bool) -> Peer {
    let dir = scratch_dir(&format!("sipp-{port}"));
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/uas.xml");
    let scenario_args: Vec<String> = if record_route {
        vec!["-sf".into(), scenario.to_str().expect("utf-8").into()]
    } else {
        vec!["-sn".into(), "uas".into()]
    };
    let child = Command::new("sipp")
        .args(&scenario_args)
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-mp",
            &media_port.to_string(),
            "-rtp_echo",
            "-nostdin",
            "-trace_err",
        ])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp is installed (apt-get install sip-tester)");
    let mut peer = Peer {
        name: "sipp uas",
        child,
    };
    // SIPp's uas answers OPTIONS only inside its scenario; give it a moment instead.
    std::thread::sleep(Duration::from_millis(500));
    if let Ok(Some(status)) = peer.child.try_wait() {
        panic!("sipp uas exited at start: {status}");
    }
    let _ = &mut peer;
    peer
}

/// The password rule of `tests/interop/kamailio.cfg`: "pw-" and the From user.
const PASSWORD_RULE: &str = "\"pw-$fU\"";

fn kamailio(port: u16, uas_port: u16) -> Peer {
    kamailio_with_passwords(port, uas_port, PASSWORD_RULE)
}

/// Kamailio from `tests/interop/kamailio.cfg` with `rule` (a quoted Kamailio string, which may
/// hold pseudo-variables) in place of its password rule: a literal is one password shared by
/// every user.
fn kamailio_with_passwords(port: u16, uas_port: u16, rule: &str) -> Peer {
    let dir = scratch_dir(&format!("kamailio-{port}"));
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/kamailio.cfg");
    let text = std::fs::read_to_string(&template).expect("tests/interop/kamailio.cfg");
    assert_eq!(
        text.matches(PASSWORD_RULE).count(),
        1,
        "kamailio.cfg states its password rule once"
    );
    let cfg = text
        .replace(PASSWORD_RULE, rule)
        .replace("LISTEN_ADDR", &format!("127.0.0.1:{port}"))
        .replace("UAS_ADDR", &format!("127.0.0.1:{uas_port}"));
    let cfg_path = dir.join("kamailio.cfg");
    std::fs::write(&cfg_path, cfg).expect("write config");
    let child = Command::new("kamailio")
        .args([
            "-f",
            cfg_path.to_str().expect("utf-8"),
            "-DD",
            "-E",
            "-m",
            "64",
            "-M",
            "8",
        ])
        .args([
            "-Y",
            dir.to_str().expect("utf-8"),
            "-P",
            dir.join("kamailio.pid").to_str().expect("utf-8"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("kamailio.log")).expect("log file"),
        ))
        .spawn()
        .expect("kamailio is installed (apt-get install kamailio)");
    let mut peer = Peer {
        name: "kamailio",
        child,
    };
    wait_for_sip(port, &mut peer);
    peer
}

fn pbxlab_load(args: &[&str]) -> (Output, serde_json::Value) {
    pbxlab_load_with_env(args, None)
}

/// `pbxlab load` with `$PBXLAB_PASSWORD` set to `password` (and unset without one, whatever
/// the test's own environment holds).
fn pbxlab_load_with_env(args: &[&str], password: Option<&str>) -> (Output, serde_json::Value) {
    let dir = scratch_dir("load");
    let json = dir.join(format!("report-{}.json", free_port()));
    let mut command = Command::new(env!("CARGO_BIN_EXE_pbxlab"));
    match password {
        Some(p) => command.env("PBXLAB_PASSWORD", p),
        None => command.env_remove("PBXLAB_PASSWORD"),
    };
    let out = command
        .arg("load")
        .args(args)
        .args(["--json", json.to_str().expect("utf-8")])
        .output()
        .expect("pbxlab runs");
    let text = std::fs::read(&json).unwrap_or_else(|_| {
        panic!(
            "no report; stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, serde_json::from_slice(&text).expect("report is JSON"))
}

fn show(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
#[ignore = "needs sipp (apt-get install sip-tester); run by .ci/run"]
fn calls_against_sipp_uas_with_rtp_echo() {
    let (port, media) = (free_port(), free_port());
    let _uas = sipp_uas(port, media, false);
    let target = format!("127.0.0.1:{port}");
    let (out, v) = pbxlab_load(&[
        "--target",
        &target,
        "--service",
        "echo",
        "--calls",
        "200",
        "--call-rate",
        "100/s",
        "--hold",
        "2s",
        "--rtp",
        "1",
        "--threshold",
        "calls.failed==0",
        "--threshold",
        "rtp.loss_fraction<0.001",
    ]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(v["calls"]["attempted"], 200, "{v}");
    assert_eq!(v["calls"]["succeeded"], 200, "{v}");
    assert_eq!(v["calls"]["failed"], 0, "{v}");
    for m in ["pdd", "setup", "bye"] {
        assert_eq!(v["metrics"][m]["count"], 200, "{m}: {v}");
    }
    // ~100 frames per call each way over 2 s, echoed back.
    let received = v["rtp"]["packets_received"].as_u64().expect("number");
    assert!(received > 200 * 80, "echoed RTP received: {received}\n{v}");
    assert!(
        v["metrics"]["media_gap"]["count"].as_u64().expect("number") > 150,
        "{v}"
    );
}

#[test]
#[ignore = "needs kamailio; run by .ci/run"]
fn digest_registrations_at_kamailio() {
    let port = free_port();
    let _k = kamailio(port, free_port());
    let target = format!("127.0.0.1:{port}");
    let (out, v) = pbxlab_load(&[
        "--target",
        &target,
        "--users",
        "1200",
        "--register-rate",
        "1000/s",
        "--calls",
        "0",
        "--threshold",
        "registrations.failed==0",
    ]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(v["registrations"]["attempted"], 1200, "{v}");
    assert_eq!(v["registrations"]["succeeded"], 1200, "{v}");
    assert_eq!(v["metrics"]["register"]["count"], 1200, "{v}");
}

#[test]
#[ignore = "needs kamailio and sipp; run by .ci/run"]
fn calls_through_kamailio_as_a_record_routing_proxy() {
    let (uas_port, media, proxy_port) = (free_port(), free_port(), free_port());
    let _uas = sipp_uas(uas_port, media, true);
    let _k = kamailio(proxy_port, uas_port);
    let target = format!("127.0.0.1:{proxy_port}");
    let (out, v) = pbxlab_load(&[
        "--target",
        &target,
        "--service",
        "uas",
        "--calls",
        "100",
        "--call-rate",
        "50/s",
        "--hold",
        "1s",
        "--rtp",
        "1",
        "--threshold",
        "calls.failed==0",
    ]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(v["calls"]["succeeded"], 100, "{v}");
    // The BYE went along the recorded route: a BYE sent straight to the uas, or lost at the
    // proxy, would have failed or timed out.
    assert_eq!(v["metrics"]["bye"]["count"], 100, "{v}");
}

#[test]
#[ignore = "needs kamailio; run by .ci/run"]
fn our_users_call_each_other_through_kamailio() {
    let port = free_port();
    let _k = kamailio(port, free_port());
    let target = format!("127.0.0.1:{port}");
    // Register 200 users, then 100 calls between them: Kamailio looks the callee up and
    // forwards to our answering side, which rings for 200 ms.
    let (out, v) = pbxlab_load(&[
        "--target",
        &target,
        "--users",
        "200",
        "--calls",
        "100",
        "--call-rate",
        "50/s",
        "--hold",
        "1s",
        "--rtp",
        "1",
        "--ring-delay",
        "200ms",
        "--threshold",
        "calls.failed==0",
        "--threshold",
        "registrations.failed==0",
    ]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(v["calls"]["succeeded"], 100, "{v}");
    let setup_p50 = v["metrics"]["setup"]["p50_us"].as_u64().expect("number");
    assert!(
        (200_000..400_000).contains(&setup_p50),
        "setup includes the 200 ms ring: {v}"
    );
    assert_eq!(v["rtp"]["streams"], 200, "both legs send media: {v}");
}

/// One password for every user, as a registrar provisioned with a shared password has it.
const SHARED: &str = "Sh4red-secret";

#[test]
#[ignore = "needs kamailio; run by .ci/run"]
fn users_from_a_sipp_file_register_at_kamailio_with_one_password_and_call_each_other() {
    let port = free_port();
    let _k = kamailio_with_passwords(port, free_port(), &format!("\"{SHARED}\""));
    let target = format!("127.0.0.1:{port}");
    // SIPp's injection format: user parts that are not numbers, digest usernames of their
    // own, fields for a SIPp scenario, comments; some rows leave the password to --password.
    let mut text = String::from("RANDOM\n# user;[authentication];a field for SIPp\n");
    for i in 0..60 {
        let auth = if i % 3 == 0 {
            format!("[authentication username=auth.{i}]")
        } else {
            format!("[authentication username=auth.{i} password={SHARED}]")
        };
        text.push_str(&format!("ext-{i};{auth};sipphone{i}\n"));
    }
    text.push_str(
        "alice;[authentication password=\"Sh4red-secret\"]\n+4930123;x;[authentication]\n",
    );
    let file = scratch_dir("users-file").join("users.csv");
    std::fs::write(&file, text).expect("write users file");
    // 62 users register, then 60 calls between them: Kamailio looks each callee up by its
    // user part and forwards to our answering side.
    let (out, v) = pbxlab_load(&[
        "--target",
        &target,
        "--users-file",
        file.to_str().expect("utf-8"),
        "--password",
        SHARED,
        "--register-rate",
        "500/s",
        "--calls",
        "60",
        "--call-rate",
        "30/s",
        "--hold",
        "500ms",
        "--ring-delay",
        "100ms",
        "--seed",
        "7",
        "--threshold",
        "registrations.failed==0",
        "--threshold",
        "calls.failed==0",
    ]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(v["registrations"]["succeeded"], 62, "{v}");
    assert_eq!(v["calls"]["attempted"], 60, "{v}");
    assert_eq!(v["calls"]["succeeded"], 60, "{v}");
}

#[test]
#[ignore = "needs kamailio; run by .ci/run"]
fn one_password_for_numbered_users_at_kamailio() {
    let port = free_port();
    let _k = kamailio_with_passwords(port, free_port(), &format!("\"{SHARED}\""));
    let target = format!("127.0.0.1:{port}");
    let register = [
        "--target",
        &target,
        "--users",
        "200",
        "--register-rate",
        "1000/s",
        "--calls",
        "0",
    ];
    let with = |extra: &[&str], env: Option<&str>| {
        let mut args = register.to_vec();
        args.extend_from_slice(extra);
        pbxlab_load_with_env(&args, env)
    };
    for (how, (out, v)) in [
        ("--password", with(&["--password", SHARED], None)),
        ("$PBXLAB_PASSWORD", with(&[], Some(SHARED))),
    ] {
        assert!(out.status.success(), "{how}: {}", show(&out));
        assert_eq!(v["registrations"]["succeeded"], 200, "{how}: {v}");
    }
    // The registrar checks the password: the default rule (pw-N) is refused, and so is the
    // environment's password when a prefix is given.
    for (how, (out, v)) in [
        ("no password", with(&[], None)),
        (
            "--password-prefix",
            with(&["--password-prefix", "pw-"], Some(SHARED)),
        ),
    ] {
        assert!(out.status.success(), "{how}: {}", show(&out));
        assert_eq!(v["registrations"]["failed"], 200, "{how}: {v}");
        assert_eq!(v["failures"]["401 Unauthorized"], 200, "{how}: {v}");
    }
}

/// `pbxlab cluster` as a child process on `port`, stopping by itself after `run_for`.
fn pbxlab_cluster(port: u16, run_for: &str) -> Peer {
    let child = Command::new(env!("CARGO_BIN_EXE_pbxlab"))
        .args([
            "cluster",
            "--sip",
            &format!("127.0.0.1:{port}"),
            "--for",
            run_for,
            "--status-every",
            "1h",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pbxlab runs");
    let mut peer = Peer {
        name: "pbxlab cluster",
        child,
    };
    wait_for_sip(port, &mut peer);
    peer
}

#[test]
#[ignore = "needs sipp (apt-get install sip-tester); run by .ci/run"]
fn sipp_uac_calls_the_cluster_echo_at_1000_per_second() {
    let port = free_port();
    let _cluster = pbxlab_cluster(port, "60s");
    let (sipp_port, media) = (free_port(), free_port());
    let dir = scratch_dir("sipp-uac-echo");
    // 5,000 calls at 1,000/s, each held 2 s: about 2,000 at once through the Call Manager,
    // every one anchored on a media node that echoes.
    let out = Command::new("sipp")
        .args([
            "-sn",
            "uac",
            "-s",
            "echo",
            &format!("127.0.0.1:{port}"),
            "-i",
            "127.0.0.1",
            "-p",
            &sipp_port.to_string(),
            "-mp",
            &media.to_string(),
            "-r",
            "1000",
            "-m",
            "5000",
            "-d",
            "2000",
            "-timeout",
            "40s",
            "-nostdin",
            "-trace_err",
            "-trace_stat",
            "-fd",
            "1",
        ])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .expect("sipp is installed (apt-get install sip-tester)");
    let stat = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".csv"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .last()
        .unwrap_or_default();
    // SIPp exits 0 only when every call succeeded.
    assert!(
        out.status.success(),
        "sipp: {}\n{}\nstats:\n{stat}",
        out.status,
        show(&out)
    );
    let last = stat.lines().last().unwrap_or_default();
    let fields: Vec<&str> = stat.lines().next().unwrap_or_default().split(';').collect();
    let column = |name: &str| {
        fields
            .iter()
            .position(|f| *f == name)
            .and_then(|i| last.split(';').nth(i))
            .and_then(|v| v.parse::<u64>().ok())
    };
    assert_eq!(column("SuccessfulCall(C)"), Some(5000), "{stat}");
    assert_eq!(column("FailedCall(C)"), Some(0), "{stat}");
}

#[test]
#[ignore = "needs sipp (apt-get install sip-tester); run by .ci/run"]
fn sipp_answers_the_clusters_407_as_one_of_its_users() {
    let port = free_port();
    let _cluster = pbxlab_cluster(port, "60s");
    let (sipp_port, media) = (free_port(), free_port());
    let dir = scratch_dir("sipp-uac-auth");
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/uac-auth.xml");
    // User 1000 of the reference cluster calls the echo 200 times: every INVITE is challenged
    // (its From is one of the cluster's users) and SIPp's digest is accepted; a call placed
    // without the challenge would fail the scenario.
    let out = Command::new("sipp")
        .args(["-sf", scenario.to_str().expect("utf-8")])
        .args([
            "-s", "echo", "-key", "caller", "1000", "-au", "1000", "-ap", "pw-1000",
        ])
        // SIPp's digest covers `sip:REMOTE_IP:PORT` unless told otherwise; the Call Manager
        // takes only a digest of the request's own URI (RFC 3261 22.4).
        .args(["-auth_uri", &format!("echo@127.0.0.1:{port}")])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-i", "127.0.0.1", "-p", &sipp_port.to_string()])
        .args([
            "-mp",
            &media.to_string(),
            "-r",
            "50",
            "-m",
            "200",
            "-d",
            "1000",
        ])
        .args([
            "-timeout",
            "40s",
            "-nostdin",
            "-trace_err",
            "-trace_stat",
            "-fd",
            "1",
        ])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .expect("sipp is installed (apt-get install sip-tester)");
    let stat = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".csv"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .last()
        .unwrap_or_default();
    assert!(
        out.status.success(),
        "sipp: {}\n{}\nstats:\n{stat}",
        out.status,
        show(&out)
    );
    let last = stat.lines().last().unwrap_or_default();
    let fields: Vec<&str> = stat.lines().next().unwrap_or_default().split(';').collect();
    let column = |name: &str| {
        fields
            .iter()
            .position(|f| *f == name)
            .and_then(|i| last.split(';').nth(i))
            .and_then(|v| v.parse::<u64>().ok())
    };
    assert_eq!(column("SuccessfulCall(C)"), Some(200), "{stat}");
    assert_eq!(column("FailedCall(C)"), Some(0), "{stat}");
}

/// Counts per tag of an interval log as python's `hdrh` (PyPI `hdrhistogram`) reads it, with
/// its StartTime and BaseTime: "tag count" lines, then "start S base B".
const HDRH_COUNTS: &str = r#"
import sys
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader
reader = HistogramLogReader(sys.argv[1], HdrHistogram(1, 3600000000, 3))
counts = {}
while True:
    h = reader.get_next_interval_histogram()
    if h is None:
        break
    counts[h.get_tag()] = counts.get(h.get_tag(), 0) + h.get_total_count()
for tag, n in sorted(counts.items()):
    print(tag, n)
print("start", reader.start_time_sec, "base", reader.base_time_sec)
"#;

#[test]
#[ignore = "needs python3 with hdrh (pip install hdrhistogram); run by .ci/run"]
fn python_hdrh_reads_the_interval_log_and_its_counts_are_the_reports() {
    let port = free_port();
    let _cluster = pbxlab_cluster(port, "60s");
    let dir = scratch_dir("hlog-hdrh");
    let hlog = dir.join("run.hlog");
    let (out, v) = pbxlab_load(&[
        "--target",
        &format!("127.0.0.1:{port}"),
        "--domain",
        "pbxlab.test",
        "--users",
        "20",
        "--call-rate",
        "20/s",
        "--duration",
        "3s",
        "--hold",
        "200ms",
        "--interval",
        "500ms",
        "--hlog",
        hlog.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(v["calls"]["succeeded"].as_u64() > Some(0), "{v}");
    let read = Command::new("python3")
        .args(["-c", HDRH_COUNTS, hlog.to_str().expect("utf-8")])
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&read.stdout).into_owned();
    assert!(
        read.status.success(),
        "hdrh could not read it:\n{}",
        show(&read)
    );
    let mut counts = std::collections::BTreeMap::new();
    let mut times = None;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            ["start", start, "base", base] => times = Some((start.to_owned(), base.to_owned())),
            [tag, n] => {
                counts.insert(tag.to_owned(), n.parse::<u64>().expect("a count"));
            }
            _ => panic!("{text}"),
        }
    }
    // The header's StartTime and BaseTime: the run's start, a Unix time of this century.
    let (start, base) = times.expect("times");
    assert_eq!(start, base, "{text}");
    assert!(start.parse::<f64>().expect("seconds") > 1.7e9, "{text}");
    // Every metric the run measured, with the JSON's count; nothing else.
    let measured: std::collections::BTreeMap<String, u64> = v["metrics"]
        .as_object()
        .expect("metrics")
        .iter()
        .map(|(name, m)| (name.clone(), m["count"].as_u64().expect("count")))
        .filter(|&(_, n)| n > 0)
        .collect();
    assert!(measured.contains_key("register") && measured.contains_key("setup"));
    assert_eq!(counts, measured, "{text}\n{v}");
}
