//! `pbxlab ctl` against `pbxlab cluster --ctl` end to end on loopback: status, tokens, adding
//! servers, state changes, the whitelist, a rolling upgrade under load that drops no call, and
//! an IVR failure alerted to a file and a webhook. Every cluster listens on 127.0.0.0/8 with
//! ports the kernel picks, runs at most 120 s and is killed when its test ends.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pbxlab_cluster::http;

/// Two media and two IVR servers probed every 200 ms, so that actions finish quickly.
const OPS: &str = r#"name = "ops"
seed = 3
duration = "10m"
[[pool]]
role = "media"
servers = 2
capacity = 500
[[pool]]
role = "ivr"
servers = 2
capacity = 100
[health]
probe_interval = "200ms"
probe_timeout = "150ms"
down_after = 3
up_after = 2
[traffic.registrations]
users = 300
first_user = 1000
expires = "600s"
[traffic.calls]
rate = "5/s"
hold = "8s"
"#;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pbxlab-ctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

fn ops_scenario() -> String {
    let path = scratch("ops.toml");
    std::fs::write(&path, OPS).expect("write the scenario");
    path.to_string_lossy().into_owned()
}

fn services() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios/services.toml")
        .to_string_lossy()
        .into_owned()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

/// A running `pbxlab cluster --ctl 127.0.0.1:0`, killed when dropped.
struct Running {
    child: Child,
    sip_port: u16,
    /// The endpoint's address and the token the cluster made, from its first lines.
    ctl: String,
    token: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn start(scenario: &str, extra: &[&str]) -> Running {
        let sip_port = free_udp_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pbxlab"))
            .args([
                "cluster",
                scenario,
                "--sip",
                &format!("127.0.0.1:{sip_port}"),
            ])
            .args([
                "--ctl",
                "127.0.0.1:0",
                "--for",
                "120s",
                "--status-every",
                "1h",
            ])
            .args(extra)
            .env_remove("PBXLAB_TOKEN")
            .env_remove("PBXLAB_JOIN_TOKEN")
            .env_remove("PBXLAB_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pbxlab runs");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            // Read every line, so the child never blocks on a full pipe.
            let pipe = child.stderr.take().expect("stderr piped");
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if line.starts_with("control: ") {
                        let _ = tx.send(line.clone());
                    }
                    stderr.lock().expect("lock").push(line);
                }
            });
        }
        let mut running = Running {
            child,
            sip_port,
            ctl: String::new(),
            token: String::new(),
            stderr,
        };
        // control: http://127.0.0.1:PORT (token HEX), without the token if one was given
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no control line: {:?}", running.log()));
        let rest = line
            .strip_prefix("control: http://")
            .expect("the control line");
        match rest.split_once(" (token ") {
            Some((addr, token)) => {
                running.ctl = addr.to_owned();
                running.token = token.trim_end_matches(')').to_owned();
                assert_eq!(running.token.len(), 32, "{line}");
            }
            None => running.ctl = rest.to_owned(),
        }
        running
    }

    fn log(&self) -> Vec<String> {
        self.stderr.lock().expect("lock").clone()
    }

    /// `pbxlab ctl --ctl ADDR --admin-token T ARGS`, with no help from the environment.
    fn ctl(&self, args: &[&str]) -> Output {
        ctl_with(&["--ctl", &self.ctl, "--admin-token", &self.token], args)
    }

    /// Runs a ctl command that must succeed; returns its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "pbxlab ctl {args:?}: {}\n{}",
            text(&out.stderr),
            self.log().join("\n")
        );
        text(&out.stdout)
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["--json", "status"])).expect("JSON status")
    }

    /// The status table's line for `name`.
    fn line(&self, name: &str) -> String {
        let table = self.ok(&["status"]);
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no line for {name}:\n{table}"))
            .to_owned()
    }

    /// SIGTERM: the cluster stops cleanly and writes its report.
    fn terminate(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "the cluster exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the cluster did not stop on SIGTERM");
    }
}

/// `pbxlab load` against the cluster on `port`, with `args`, its report into `json`.
fn load_in_background(port: u16, args: &[&str], json: &Path) -> JoinHandle<Output> {
    let target = format!("127.0.0.1:{port}");
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let json = json.to_owned();
    std::thread::spawn(move || {
        Command::new(env!("CARGO_BIN_EXE_pbxlab"))
            .args(["load", "--target", &target, "--domain", "pbxlab.test"])
            .args(&args)
            .arg("--json")
            .arg(&json)
            .output()
            .expect("pbxlab load runs")
    })
}

/// The load's output and its JSON report, once it has finished.
fn finished(load: JoinHandle<Output>, json: &Path) -> (Output, serde_json::Value) {
    let out = load.join().expect("load thread");
    let report = serde_json::from_slice(
        &std::fs::read(json).unwrap_or_else(|_| panic!("no load report: {}", text(&out.stderr))),
    )
    .expect("JSON");
    (out, report)
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("the cluster's report")).expect("JSON")
}

/// `pbxlab ctl FLAGS ARGS`, with no help from the environment.
fn ctl_with(flags: &[&str], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pbxlab"))
        .arg("ctl")
        .args(flags)
        .args(args)
        .env_remove("PBXLAB_TOKEN")
        .env_remove("PBXLAB_ADMIN_TOKEN")
        .env_remove("PBXLAB_JOIN_TOKEN")
        .env_remove("PBXLAB_CTL")
        .output()
        .expect("pbxlab runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn n(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// Waits up to `limit` for `done`, checking every 50 ms.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

#[test]
fn status_lists_every_node_and_the_token_is_checked() {
    let c = Running::start(&services(), &[]);
    let table = c.ok(&["status"]);
    assert!(table.starts_with("name "), "{table}");
    assert!(table.contains("last probe"), "{table}");
    for name in [
        "media-1",
        "media-2",
        "meeting-1",
        "meeting-2",
        "ivr-1",
        "ivr-2",
        "queue-1",
        "queue-2",
    ] {
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{table}"));
        assert!(line.contains("127.0.0.1:"), "{line}");
        assert!(line.contains(" Online "), "{line}");
    }
    assert_eq!(c.status()["nodes"].as_array().map(Vec::len), Some(8));

    // The environment gives the address and the token too.
    let out = Command::new(env!("CARGO_BIN_EXE_pbxlab"))
        .args(["ctl", "status"])
        .env("PBXLAB_CTL", &c.ctl)
        .env("PBXLAB_ADMIN_TOKEN", &c.token)
        .env_remove("PBXLAB_TOKEN")
        .output()
        .expect("pbxlab runs");
    assert!(out.status.success(), "{}", text(&out.stderr));

    let wrong = ctl_with(
        &["--ctl", &c.ctl, "--admin-token", "not-the-token"],
        &["status"],
    );
    let stderr = text(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("401") && stderr.contains("refused the token"),
        "{stderr}"
    );

    let none = ctl_with(&["--ctl", &c.ctl], &["status"]);
    assert_eq!(none.status.code(), Some(2), "{}", text(&none.stderr));
    assert!(text(&none.stderr).contains("no token"));

    // Requests without the token, or that are not HTTP, get a JSON reason.
    let url = http::Url::parse(&format!("http://{}/v1/status", c.ctl)).expect("url");
    let r = http::call("GET", &url, &[], None, Duration::from_secs(10)).expect("an answer");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let mut s = TcpStream::connect(&c.ctl).expect("connect");
    s.write_all(b"HELLO there\r\n\r\n").expect("send");
    let mut answer = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = std::io::Read::read_to_end(&mut s, &mut answer);
    let (r, _) = http::parse_response(&answer, true).expect("an HTTP answer");
    assert_eq!(r.status, 400, "{}", text(&r.body));
    assert!(text(&r.body).contains("error"), "{}", text(&r.body));

    // Nobody listens on a port just freed.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let out = Command::new(env!("CARGO_BIN_EXE_pbxlab"))
        .args(["ctl", "--ctl", &addr, "--admin-token", "t", "status"])
        .output()
        .expect("pbxlab runs");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach") && stderr.contains(&addr),
        "{stderr}"
    );
}

#[test]
fn an_added_server_comes_online_and_duplicates_are_refused() {
    let c = Running::start(&ops_scenario(), &[]);
    let out = c.ok(&["add", "--role", "media", "--name", "media-3"]);
    assert!(out.contains("media-3") && out.contains("Online"), "{out}");
    // Its probes keep it online.
    std::thread::sleep(Duration::from_secs(1));
    let line = c.line("media-3");
    assert!(line.contains(" Online ") && line.contains(" ok "), "{line}");

    let again = c.ctl(&["add", "--role", "media", "--name", "media-3"]);
    let stderr = text(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("\"media-3\" already exists"), "{stderr}");

    let media_1 = c.status()["nodes"][0]["addr"]
        .as_str()
        .expect("an address")
        .to_owned();
    let taken = c.ctl(&[
        "add", "--role", "media", "--name", "media-4", "--addr", &media_1,
    ]);
    let stderr = text(&taken.stderr);
    assert_eq!(taken.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("media-1") && stderr.contains(&media_1),
        "{stderr}"
    );

    let bad = c.ctl(&["add", "--role", "pbx", "--name", "x"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
}

#[test]
fn disable_enable_drain_and_the_whitelist_show_in_the_status() {
    let c = Running::start(&ops_scenario(), &[]);
    for (verb, shown) in [
        ("disable", "Disabled"),
        ("enable", "Online"),
        ("drain", "Draining"),
        ("enable", "Online"),
    ] {
        let out = c.ok(&[verb, "--server", "media-2"]);
        assert!(
            out.starts_with("media-2 ") && out.contains(&format!("now {shown}")),
            "{verb}: {out}"
        );
        let line = c.line("media-2");
        assert!(line.contains(&format!(" {shown} ")), "{verb}: {line}");
        assert!(c.line("media-1").contains(" Online "));
    }
    // By role: every IVR server, one line each.
    let out = c.ok(&["drain", "--role", "ivr"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(c.line("ivr-2").contains(" Draining "));

    // Taking every server out of service takes saying so.
    let everyone = c.ctl(&["disable"]);
    assert_eq!(everyone.status.code(), Some(2));
    assert!(
        text(&everyone.stderr).contains("give --all"),
        "{}",
        text(&everyone.stderr)
    );
    assert!(
        c.line("media-1").contains(" Online "),
        "nothing was disabled"
    );

    let nobody = c.ctl(&["stop", "--server", "media-9"]);
    let stderr = text(&nobody.stderr);
    assert_eq!(nobody.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no server matches"), "{stderr}");

    let list = c.ok(&["whitelist", "add", "127.0.0.9"]);
    assert!(list.lines().any(|l| l == "127.0.0.9"), "{list}");
    let list = c.ok(&["whitelist", "list"]);
    assert!(list.lines().any(|l| l == "127.0.0.9"), "{list}");
    assert_eq!(
        c.status()["whitelist"],
        serde_json::json!(["127.0.0.1", "127.0.0.9"])
    );
    let list = c.ok(&["whitelist", "rm", "127.0.0.9"]);
    assert!(!list.contains("127.0.0.9"), "{list}");
    assert_eq!(c.ok(&["whitelist", "list"]).trim(), "127.0.0.1");
}

#[test]
fn a_rolling_upgrade_under_load_drops_no_call() {
    let cluster_json = scratch("upgrade-cluster.json");
    let load_json = scratch("upgrade-load.json");
    let _ = std::fs::remove_file(&load_json);
    let c = Running::start(
        &ops_scenario(),
        &["--json", cluster_json.to_str().expect("utf-8")],
    );
    let load = load_in_background(
        c.sip_port,
        &[
            "--users",
            "200",
            "--call-rate",
            "20/s",
            "--hold",
            "8s",
            "--duration",
            "12s",
            "--rtp",
            "0.2",
        ],
        &load_json,
    );
    // Upgrade once both media servers carry calls.
    let busy = wait_until(Duration::from_secs(30), || {
        let s = c.status();
        s["nodes"].as_array().is_some_and(|nodes| {
            nodes
                .iter()
                .filter(|n| n["role"] == "media" && n["load"].as_u64() >= Some(20))
                .count()
                == 2
        })
    });
    assert!(
        busy,
        "the calls never reached both media servers: {}",
        c.status()
    );
    let out = c.ok(&["upgrade", "--role", "media"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("media-1 ") && lines[1].starts_with("media-2 "),
        "{out}"
    );
    assert!(lines.iter().all(|l| l.ends_with("now Online")), "{out}");

    let (out, report) = finished(load, &load_json);
    let status = c.status();
    c.terminate();
    let cluster = read_json(&cluster_json);
    assert!(out.status.success(), "{}\n{report}", text(&out.stderr));
    assert_eq!(n(&report["registrations"]["failed"]), 0, "{report}");
    assert!(n(&report["calls"]["succeeded"]) > 100, "{report}");
    assert_eq!(n(&report["calls"]["failed"]), 0, "{report}\n{status}");
    assert!(n(&cluster["moved"]) > 0, "{cluster}");
    assert_eq!(n(&cluster["dropped"]), 0, "{cluster}");
}

/// A webhook receiver: accepts POSTs for `limit`, answers 200, hands their bodies over.
fn webhook(limit: Duration) -> (String, Receiver<serde_json::Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/alerts", listener.local_addr().expect("addr"));
    listener.set_nonblocking(true).expect("non-blocking");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            let Ok((mut s, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            s.set_nonblocking(false).expect("blocking");
            let Ok(r) = http::read_request(&mut s, Instant::now() + Duration::from_secs(5)) else {
                continue;
            };
            let _ = http::write_json_response(&mut s, 200, &[], &serde_json::json!({}));
            if r.method == "POST" && r.target == "/alerts" {
                let _ = tx.send(serde_json::from_slice(&r.body).unwrap_or_default());
            }
        }
    });
    (url, rx)
}

#[test]
fn a_stopped_ivr_server_is_alerted_to_the_file_and_the_webhook() {
    let alerts = scratch("alerts.jsonl");
    let _ = std::fs::remove_file(&alerts);
    let (url, posted) = webhook(Duration::from_secs(60));
    let c = Running::start(
        &ops_scenario(),
        &[
            "--alerts",
            alerts.to_str().expect("utf-8"),
            "--alert-webhook",
            &url,
        ],
    );
    // Media servers raise no alert: their sessions move by themselves.
    let out = c.ok(&["stop", "--server", "media-1"]);
    assert!(out.contains("now Offline"), "{out}");
    let out = c.ok(&["stop", "--server", "ivr-1"]);
    assert!(out.contains("now Offline"), "{out}");

    let alert = posted
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("no webhook POST: {:?}", c.log()));
    assert_eq!(alert["server"], "ivr-1", "{alert}");
    assert_eq!(alert["role"], "ivr", "{alert}");
    assert!(
        alert["alert"].as_str().is_some_and(|a| a.contains("ivr-1")),
        "{alert}"
    );
    assert!(alert["at_s"].as_f64().is_some(), "{alert}");
    let mut lines = Vec::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            lines = std::fs::read_to_string(&alerts)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect();
            !lines.is_empty()
        }),
        "nothing in {}",
        alerts.display()
    );
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line: serde_json::Value = serde_json::from_str(&lines[0]).expect("a JSON line");
    assert_eq!(line, alert);
    assert!(
        c.log()
            .iter()
            .any(|l| l.starts_with("alert: ") && l.contains("ivr-1")),
        "{:?}",
        c.log()
    );
    // Started again, it comes back online.
    let out = c.ok(&["start", "--server", "ivr-1"]);
    assert!(out.contains("now Online"), "{out}");
}

/// Two meeting servers carrying rooms of four; one is stopped mid-meeting. Its rooms move whole
/// to the other (no participant ever lands apart from the rest of the room), every participant
/// keeps the call, and the alert is raised.
const MEETINGS: &str = r#"name = "meetings"
seed = 4
duration = "10m"
[[pool]]
role = "meeting"
servers = 2
capacity = 400
policy = "affinity"
failover = "auto"
[health]
probe_interval = "200ms"
probe_timeout = "150ms"
down_after = 3
up_after = 2
[traffic.registrations]
users = 100
first_user = 1000
expires = "600s"
"#;

#[test]
fn a_stopped_meeting_server_moves_its_rooms_whole_and_no_participant_drops() {
    let scenario = scratch("meetings.toml");
    std::fs::write(&scenario, MEETINGS).expect("write the scenario");
    let cluster_json = scratch("meetings-cluster.json");
    let load_json = scratch("meetings-load.json");
    let _ = std::fs::remove_file(&load_json);
    let c = Running::start(
        scenario.to_str().expect("utf-8"),
        &["--json", cluster_json.to_str().expect("utf-8")],
    );
    let load = load_in_background(
        c.sip_port,
        &[
            "--users",
            "100",
            "--service",
            "meeting-4",
            "--calls",
            "64",
            "--call-rate",
            "8/s",
            "--hold",
            "10s",
        ],
        &load_json,
    );
    let both = wait_until(Duration::from_secs(30), || {
        c.status()["nodes"].as_array().is_some_and(|nodes| {
            nodes
                .iter()
                .filter(|n| n["role"] == "meeting" && n["load"].as_u64() >= Some(4))
                .count()
                == 2
        })
    });
    assert!(both, "rooms never reached both servers: {}", c.status());
    let out = c.ok(&["stop", "--server", "meeting-1"]);
    assert!(out.contains("now Offline"), "{out}");

    let (_, report) = finished(load, &load_json);
    let log = c.log();
    c.terminate();
    let cluster = read_json(&cluster_json);
    assert_eq!(n(&report["calls"]["failed"]), 0, "{report}");
    assert_eq!(n(&report["calls"]["succeeded"]), 64, "{report}");
    assert!(n(&cluster["moved"]) >= 4, "{cluster}");
    assert_eq!(n(&cluster["dropped"]), 0, "{cluster}");
    assert_eq!(n(&cluster["meetings"]["split_joins"]), 0, "{cluster}");
    assert_eq!(n(&cluster["meetings"]["rooms"]), 16, "{cluster}");
    assert!(
        log.iter()
            .any(|l| l.starts_with("alert: ") && l.contains("meeting-1")),
        "{log:?}"
    );
}

#[test]
fn the_join_token_does_not_operate_the_cluster() {
    let admin_file = scratch("admin-token");
    std::fs::write(&admin_file, "admin-secret\n").expect("token file");
    let admin_file = admin_file.to_str().expect("utf-8").to_owned();
    let mut c = Running::start(
        &services(),
        &[
            "--join-token",
            "join-secret",
            "--admin-token-file",
            &admin_file,
        ],
    );
    c.token = "admin-secret".into();
    assert!(c.status()["nodes"].is_array());
    // A node's secret is refused at the control endpoint.
    let join = ctl_with(
        &["--ctl", &c.ctl, "--admin-token", "join-secret"],
        &["status"],
    );
    let stderr = text(&join.stderr);
    assert_eq!(join.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    let url = http::Url::parse(&format!("http://{}/v1/status", c.ctl)).expect("url");
    let r = http::call(
        "GET",
        &url,
        &[("Authorization", "Bearer join-secret")],
        None,
        Duration::from_secs(10),
    )
    .expect("an answer");
    assert_eq!(r.status, 401);
    // The admin token from a file, and through the deprecated --token.
    let out = ctl_with(
        &["--ctl", &c.ctl, "--admin-token-file", &admin_file],
        &["status"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = ctl_with(&["--ctl", &c.ctl, "--token", "admin-secret"], &["status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("deprecated"),
        "{}",
        text(&out.stderr)
    );
    c.terminate();

    // The same secret for both, an empty token file, or an empty token: refused at start.
    let empty = scratch("empty-token");
    std::fs::write(&empty, "\n").expect("token file");
    let empty = empty.to_str().expect("utf-8").to_owned();
    for (flags, says) in [
        (
            vec!["--join-token", "same", "--admin-token", "same"],
            "must differ",
        ),
        (vec!["--admin-token-file", &empty], "admin token is empty"),
        (vec!["--join-token-file", &empty], "join token is empty"),
        (vec!["--join-token", ""], "join token is empty"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_pbxlab"))
            .args(["cluster", "--sip", "127.0.0.1:0", "--for", "1s"])
            .args(&flags)
            .env_remove("PBXLAB_TOKEN")
            .env_remove("PBXLAB_ADMIN_TOKEN")
            .env_remove("PBXLAB_JOIN_TOKEN")
            .output()
            .expect("pbxlab runs");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(says), "{flags:?}: {stderr}");
    }
    let out = ctl_with(
        &["--ctl", "127.0.0.1:1", "--admin-token-file", &empty],
        &["status"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("admin token is empty"));
}
