//! `pbxlab node` on loopback: nodes in their own processes join `pbxlab cluster`, carry its
//! calls, and rejoin after a crash; a node whose Call Manager never answers gives up. (Cutting
//! a node's network needs namespaces and root: tests/netns.rs.) Everything listens on
//! 127.0.0.1, and every run is bounded in calls and time.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::Proc;

const TOKEN: &str = "loopback-token";

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pbxlab-node-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir.join(name)
}

/// `pbxlab args`, its output into `log`.
fn spawn(args: &[&str], log: &Path) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pbxlab"));
    cmd.args(args);
    Proc::start(cmd, log)
}

fn scenario() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/netns/remote-media.toml")
        .to_string_lossy()
        .into_owned()
}

fn n(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// A node that reads the join token from a file.
fn node(name: &str, cm: &str, bind: Option<&str>, log: &str) -> Proc {
    let file = scratch("join-token");
    std::fs::write(&file, format!("{TOKEN}\n")).expect("token file");
    let file = file.to_str().expect("utf-8").to_owned();
    let mut args = vec![
        "node",
        "--role",
        "media",
        "--name",
        name,
        "--join",
        cm,
        "--join-token-file",
        &file,
    ];
    if let Some(b) = bind {
        args.extend(["--bind", b]);
    }
    spawn(&args, &scratch(log))
}

#[test]
fn remote_nodes_carry_calls_and_a_crashed_one_rejoins() {
    let cm_addr = format!("127.0.0.1:{}", free_port());
    let cm_json = scratch("cm.json");
    let mut cm = spawn(
        &[
            "cluster",
            &scenario(),
            "--sip",
            &cm_addr,
            "--join-token",
            TOKEN,
            "--status-every",
            "100ms",
            "--for",
            "60s",
            "--json",
            cm_json.to_str().expect("utf-8"),
        ],
        &scratch("cm.log"),
    );
    // media-1 keeps its address across its restart, as a rejoin requires.
    let media_1 = format!("127.0.0.1:{}", free_port());
    let mut n1 = node("media-1", &cm_addr, Some(&media_1), "media-1.log");
    let _n2 = node("media-2", &cm_addr, None, "media-2.log");
    let joined = format!("media-1 joined as media from {media_1}");
    cm.wait_for_log(&joined, Duration::from_secs(10));
    cm.wait_for_log("media-2 joined as media", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));

    let load_json = scratch("load.json");
    let mut load = spawn(
        &[
            "load",
            "--target",
            &cm_addr,
            "--domain",
            "pbxlab.test",
            "--service",
            "echo",
            "--rtp",
            "1",
            "--calls",
            "10",
            "--call-rate",
            "10/s",
            "--hold",
            "6s",
            "--json",
            load_json.to_str().expect("utf-8"),
        ],
        &scratch("load.log"),
    );
    std::thread::sleep(Duration::from_secs(2));
    // A crash: no goodbye, only the probes find out.
    let _ = n1.child.kill();
    let _ = n1.child.wait();
    cm.wait_for_log("media-1 down", Duration::from_secs(5));
    let _n1 = node("media-1", &cm_addr, Some(&media_1), "media-1-again.log");
    cm.wait_for_log(
        &format!("media-1 rejoined from {media_1} (restarted)"),
        Duration::from_secs(10),
    );
    cm.wait_for_log("media-1 up", Duration::from_secs(5));

    let status = load
        .wait_for(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the load did not finish:\n{}", load.log()));
    assert!(status.success(), "load: {status}\n{}", load.log());
    let status = cm.terminate();
    assert!(status.success(), "cluster: {status}\n{}", cm.log());

    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&load_json).expect("load report")).expect("JSON");
    assert_eq!(n(&v["calls"]["failed"]), 0, "{v}");
    assert_eq!(n(&v["calls"]["succeeded"]), 10, "{v}");
    let c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cm_json).expect("cluster report")).expect("JSON");
    assert!(n(&c["moved"]) >= 1, "{c}");
    assert_eq!(n(&c["dropped"]), 0, "{c}");
    let nodes = c["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2, "the restart is the same server: {c}");
    assert!(nodes.iter().all(|x| x["state"] == "online"), "{c}");
    // Every link datagram was sealed for its session: none was dropped as forged.
    let link = &c["link"];
    assert_eq!((n(&link["joins"]), n(&link["rejoins"])), (2, 1), "{c}");
    assert_eq!(n(&link["unauthenticated"]), 0, "{c}");
}

#[test]
fn remote_nodes_follow_a_new_active_call_manager_without_restarting() {
    let cm_addr = format!("127.0.0.1:{}", free_port());
    let ctl_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free TCP port")
        .to_string();
    let cm_json = scratch("cm-ha.json");
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/netns/remote-media-ha.toml")
        .to_string_lossy()
        .into_owned();
    let mut cm = spawn(
        &[
            "cluster",
            &scenario,
            "--sip",
            &cm_addr,
            "--join-token",
            TOKEN,
            "--ctl",
            &ctl_addr,
            "--admin-token",
            "ha-admin",
            "--status-every",
            "100ms",
            "--for",
            "60s",
            "--json",
            cm_json.to_str().expect("utf-8"),
        ],
        &scratch("cm-ha.log"),
    );
    let _n1 = node("media-1", &cm_addr, None, "ha-media-1.log");
    let _n2 = node("media-2", &cm_addr, None, "ha-media-2.log");
    cm.wait_for_log("media-1 joined as media", Duration::from_secs(10));
    cm.wait_for_log("media-2 joined as media", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));

    let load_json = scratch("load-ha.json");
    let mut load = spawn(
        &[
            "load",
            "--target",
            &cm_addr,
            "--domain",
            "pbxlab.test",
            "--service",
            "echo",
            "--rtp",
            "1",
            "--calls",
            "24",
            "--call-rate",
            "3/s",
            "--hold",
            "3s",
            "--json",
            load_json.to_str().expect("utf-8"),
        ],
        &scratch("load-ha.log"),
    );
    std::thread::sleep(Duration::from_secs(3));
    // cm-1 resigns and restarts: cm-2 or cm-3 takes over with no session to either node.
    let out = Command::new(env!("CARGO_BIN_EXE_pbxlab"))
        .args(["ctl", "--ctl", &ctl_addr, "--admin-token", "ha-admin"])
        .args(["upgrade", "--server", "cm-1"])
        .output()
        .expect("pbxlab ctl runs");
    assert!(
        out.status.success(),
        "ctl: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cm.log()
    );
    cm.wait_for_log("media-1 linked again", Duration::from_secs(5));
    cm.wait_for_log("media-2 linked again", Duration::from_secs(5));

    let status = load
        .wait_for(Duration::from_secs(40))
        .unwrap_or_else(|| panic!("the load did not finish:\n{}", load.log()));
    assert!(status.success(), "load: {status}\n{}", load.log());
    // The nodes' next figures (every second) show what they still hold.
    std::thread::sleep(Duration::from_millis(1500));
    let status = cm.terminate();
    assert!(status.success(), "cluster: {status}\n{}", cm.log());

    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&load_json).expect("load report")).expect("JSON");
    assert_eq!(n(&v["calls"]["failed"]), 0, "{v}");
    assert_eq!(n(&v["calls"]["succeeded"]), 24, "{v}");
    // Calls set up after the takeover were echoed too: their commands went on the new links.
    assert!(
        v["rtp"]["loss_fraction"].as_f64().expect("number") < 0.01,
        "{v}"
    );
    let c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cm_json).expect("cluster report")).expect("JSON");
    // Nobody restarted and nothing moved: the same processes, linked again.
    assert_eq!((n(&c["moved"]), n(&c["dropped"])), (0, 0), "{c}");
    let nodes = c["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2, "{c}");
    assert!(nodes.iter().all(|x| x["state"] == "online"), "{c}");
    // Every call ended on the node that carried it, across the takeover.
    assert!(nodes.iter().all(|x| n(&x["node_sessions"]) == 0), "{c}");
    let link = &c["link"];
    assert_eq!((n(&link["relinks"]), n(&link["rejoins"])), (2, 0), "{c}");
    assert_eq!(n(&link["unauthenticated"]), 0, "{c}");
}

#[test]
fn a_node_gives_up_when_no_call_manager_answers() {
    let nobody = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_pbxlab"))
        .args([
            "node",
            "--role",
            "media",
            "--name",
            "m",
            "--join-token",
            "t",
        ])
        .args(["--join", &nobody, "--join-timeout", "1s"])
        .output()
        .expect("pbxlab runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the Call Manager at {nobody} did not answer within 1.0 s"
        )),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // Bad flags are bad input.
    let out = Command::new(env!("CARGO_BIN_EXE_pbxlab"))
        .args(["node", "--role", "wizard", "--name", "m", "--token", "t"])
        .args(["--join", &nobody])
        .output()
        .expect("pbxlab runs");
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(env!("CARGO_BIN_EXE_pbxlab"))
        .args([
            "node",
            "--role",
            "media",
            "--name",
            "m",
            "--join-token",
            "has space",
        ])
        .args(["--join", &nobody])
        .output()
        .expect("pbxlab runs");
    assert_eq!(out.status.code(), Some(2));
    // No token, an empty one, or an empty file: refused with a reason, before any JOIN.
    let empty = scratch("empty-token");
    std::fs::write(&empty, "").expect("token file");
    let empty = empty.to_str().expect("utf-8").to_owned();
    for (flags, says) in [
        (vec![], "no join token"),
        (vec!["--join-token-file", &empty], "join token is empty"),
        (vec!["--join-token", ""], "join token is empty"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_pbxlab"))
            .args(["node", "--role", "media", "--name", "m", "--join", &nobody])
            .args(&flags)
            .env_remove("PBXLAB_TOKEN")
            .env_remove("PBXLAB_JOIN_TOKEN")
            .output()
            .expect("pbxlab runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(says), "{flags:?}: {stderr}");
    }
    // $PBXLAB_JOIN_TOKEN and the deprecated --token are taken.
    let out = Command::new(env!("CARGO_BIN_EXE_pbxlab"))
        .args(["node", "--role", "media", "--name", "m", "--join", &nobody])
        .args(["--join-timeout", "1s"])
        .env("PBXLAB_JOIN_TOKEN", "t")
        .output()
        .expect("pbxlab runs");
    assert_eq!(out.status.code(), Some(1));
    let out = Command::new(env!("CARGO_BIN_EXE_pbxlab"))
        .args(["node", "--role", "media", "--name", "m", "--join", &nobody])
        .args(["--join-timeout", "1s", "--token", "t"])
        .env_remove("PBXLAB_JOIN_TOKEN")
        .output()
        .expect("pbxlab runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("deprecated"));
}
