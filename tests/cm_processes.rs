//! Call Managers as separate processes on loopback (`pbxlab cluster --cm cm-N`): three
//! processes replicate over UDP, nodes in their own processes (`pbxlab node`) join the virtual
//! IP, and the active is killed under calls with RTP. The new active links again with the nodes,
//! the killed one started again with `--fresh` catches up as a standby, and `pbxlab ctl`
//! given every endpoint reaches whichever serves. (Behind keepalived, each in a network
//! namespace: tests/netns.rs.) Everything listens on 127.0.0.1, bounded in calls and time.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;
use common::Proc;

const JOIN: &str = "processes-join";
const ADMIN: &str = "processes-admin";

fn udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

fn tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free TCP port")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pbxlab-cm-processes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir.join(name)
}

fn spawn(args: &[&str], log: &str) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pbxlab"));
    cmd.args(args)
        .env_remove("PBXLAB_ADMIN_TOKEN")
        .env_remove("PBXLAB_JOIN_TOKEN")
        .env_remove("PBXLAB_CLUSTER_KEY");
    Proc::start(cmd, &scratch(log))
}

fn n(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// The group's processes share the scenario, the virtual IP, the peers, the key and the epoch.
struct Group {
    vip: String,
    peers: String,
    ctls: Vec<String>,
    epoch: String,
    key: String,
    join: String,
}

impl Group {
    fn new() -> Group {
        let key = scratch("cluster-key");
        std::fs::write(&key, "the-cluster-key-of-this-test\n").expect("key file");
        let join = scratch("join-token");
        std::fs::write(&join, format!("{JOIN}\n")).expect("token file");
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
            .saturating_sub(1);
        Group {
            vip: format!("127.0.0.1:{}", udp_port()),
            peers: (0..3)
                .map(|_| format!("127.0.0.1:{}", udp_port()))
                .collect::<Vec<_>>()
                .join(","),
            ctls: (0..3)
                .map(|_| format!("127.0.0.1:{}", tcp_port()))
                .collect(),
            epoch: epoch.to_string(),
            key: key.to_string_lossy().into_owned(),
            join: join.to_string_lossy().into_owned(),
        }
    }

    /// Call Manager `i` (1-based) in a process of its own.
    fn cm(&self, i: usize, fresh: bool, log: &str) -> Proc {
        let scenario = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/netns/remote-media-ha.toml")
            .to_string_lossy()
            .into_owned();
        let (name, json) = (format!("cm-{i}"), scratch(&format!("{log}.json")));
        let mut args = vec![
            "cluster",
            &scenario,
            "--sip",
            &self.vip,
            "--cm",
            &name,
            "--cm-peers",
            &self.peers,
            "--epoch",
            &self.epoch,
            "--cluster-key-file",
            &self.key,
            "--join-token-file",
            &self.join,
            "--ctl",
            &self.ctls[i - 1],
            "--admin-token",
            ADMIN,
            "--status-every",
            "100ms",
            "--for",
            "60s",
            "--json",
            json.to_str().expect("utf-8"),
        ];
        if fresh {
            args.push("--fresh");
        }
        spawn(&args, &format!("{log}.log"))
    }

    fn ctl(&self, ctl: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_pbxlab"))
            .args(["ctl", "--ctl", ctl, "--admin-token", ADMIN])
            .args(args)
            .env_remove("PBXLAB_CTL")
            .output()
            .expect("pbxlab ctl runs")
    }

    /// The status through every endpoint: the serving one's.
    fn status(&self) -> Option<serde_json::Value> {
        let out = self.ctl(&self.ctls.join(","), &["status", "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// Which Call Manager serves, as the serving one's status says.
    fn serving(&self) -> Option<String> {
        let v = self.status()?;
        v["callmanagers"]
            .as_array()?
            .iter()
            .find(|c| c["serving"] == true)
            .and_then(|c| c["name"].as_str().map(str::to_owned))
    }
}

#[test]
fn killing_the_active_process_moves_the_virtual_ip_and_nodes_follow_without_restarting() {
    let g = Group::new();
    let mut cms: Vec<Option<Proc>> = (1..=3)
        .map(|i| Some(g.cm(i, false, &format!("cm-{i}"))))
        .collect();
    let node = |name: &str| {
        spawn(
            &[
                "node",
                "--role",
                "media",
                "--name",
                name,
                "--join",
                &g.vip,
                "--join-token-file",
                &g.join,
            ],
            &format!("{name}.log"),
        )
    };
    // Every process starts as a standby: the first election makes the first active.
    let index = |name: &str| -> usize {
        name.strip_prefix("cm-")
            .and_then(|n| n.parse().ok())
            .expect("a Call Manager's name")
    };
    let started = Instant::now();
    let first = loop {
        if let Some(s) = g.serving() {
            break index(&s);
        }
        assert!(started.elapsed() < Duration::from_secs(10), "nobody serves");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (_n1, _n2) = (node("media-1"), node("media-2"));
    let active = cms[first - 1].as_mut().expect("the first active");
    active.wait_for_log("media-1 joined as media", Duration::from_secs(10));
    active.wait_for_log("media-2 joined as media", Duration::from_secs(10));
    // A standby refuses what only the serving one may do, and says why.
    let standby = first % 3 + 1;
    let refused = g.ctl(&g.ctls[standby - 1], &["whitelist", "list"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!("cm-{standby} does not serve the virtual IP")),
        "{stderr}"
    );

    let load_json = scratch("load.json");
    let mut load = spawn(
        &[
            "load",
            "--target",
            &g.vip,
            "--domain",
            "pbxlab.test",
            "--service",
            "echo",
            "--rtp",
            "1",
            "--calls",
            "30",
            "--call-rate",
            "3/s",
            "--hold",
            "4s",
            "--json",
            load_json.to_str().expect("utf-8"),
        ],
        "load.log",
    );
    std::thread::sleep(Duration::from_secs(4));
    // A crash: SIGKILL, no resignation; its state and its sessions with the nodes go with it.
    let mut killed = cms[first - 1].take().expect("the first active");
    let _ = killed.child.kill();
    let _ = killed.child.wait();
    let killed_at = Instant::now();
    let old = format!("cm-{first}");
    let mut active = None;
    while killed_at.elapsed() < Duration::from_secs(5) {
        active = g.serving().filter(|s| *s != old);
        if active.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let active = active.expect("another Call Manager serves within 5 s");
    eprintln!(
        "{active} served {:?} after {old}'s process died",
        killed_at.elapsed()
    );
    let new = cms[index(&active) - 1]
        .as_mut()
        .expect("the new active runs");
    new.wait_for_log("media-1 linked again", Duration::from_secs(5));
    new.wait_for_log("media-2 linked again", Duration::from_secs(5));
    // Started again, it has no state: it takes a snapshot and follows as a standby.
    cms[first - 1] = Some(g.cm(first, true, &format!("{old}-again")));
    let started = Instant::now();
    let mut role = String::new();
    while started.elapsed() < Duration::from_secs(10) && role != "standby" {
        std::thread::sleep(Duration::from_millis(50));
        let out = g.ctl(&g.ctls[first - 1], &["status", "--json"]);
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            role = v["callmanagers"][first - 1]["role"]
                .as_str()
                .unwrap_or("")
                .to_owned();
        }
    }
    let log = cms[first - 1].as_ref().map(Proc::log).unwrap_or_default();
    assert_eq!(role, "standby", "{log}");
    // Every endpoint given: the request reaches the new active.
    let listed = g.ctl(&g.ctls.join(","), &["whitelist", "list"]);
    assert!(listed.status.success(), "{listed:?}");

    let status = load
        .wait_for(Duration::from_secs(40))
        .unwrap_or_else(|| panic!("the load did not finish:\n{}", load.log()));
    assert!(status.success(), "load: {status}\n{}", load.log());
    // The nodes' next figures (every second) show what they still hold.
    std::thread::sleep(Duration::from_millis(1500));
    for cm in cms.iter_mut().flatten() {
        let status = cm.terminate();
        assert!(status.success(), "cluster: {status}\n{}", cm.log());
    }

    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&load_json).expect("load report")).expect("JSON");
    assert_eq!(n(&v["calls"]["failed"]), 0, "{v}");
    assert_eq!(n(&v["calls"]["succeeded"]), 30, "{v}");
    assert!(
        v["rtp"]["loss_fraction"].as_f64().expect("number") < 0.01,
        "{v}"
    );
    let report = scratch(&format!("{active}.json"));
    let c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("cluster report")).expect("JSON");
    assert_eq!((n(&c["moved"]), n(&c["dropped"])), (0, 0), "{c}");
    let nodes = c["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2, "{c}");
    assert!(nodes.iter().all(|x| x["state"] == "online"), "{c}");
    assert!(nodes.iter().all(|x| n(&x["node_sessions"]) == 0), "{c}");
    let link = &c["link"];
    assert_eq!((n(&link["relinks"]), n(&link["rejoins"])), (2, 0), "{c}");
    assert_eq!(n(&link["unauthenticated"]), 0, "{c}");
}
