//! Nodes in their own processes and their own network namespaces: the Call Manager and the load
//! generator in one namespace, each `pbxlab node` in another, joined by veth pairs on a bridge
//! (10.211.0.0/24). Cutting a node's link (`ip link set eth0 down` in its namespace) is a real
//! network failure: its probes time out, the Call Manager marks it down and moves its calls.
//!
//! The Call Manager test puts each of three Call Managers' threads in a namespace of its own
//! with keepalived, which moves the virtual IP to whichever one serves.
//!
//! They need root and iproute2's `ip` (and keepalived), so a plain `cargo test` skips them; `.ci/run` runs
//! `cargo test --test netns -- --ignored`. Every namespace carries the test's pid in its name
//! and is deleted, and every process stopped, when the test ends, however it ends. Every run is
//! bounded in calls and time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;
use common::Proc;

const CM_IP: &str = "10.211.0.1";
const TOKEN: &str = "netns-test-token";

fn pbxlab() -> &'static str {
    env!("CARGO_BIN_EXE_pbxlab")
}

/// Fails the test with a clear message unless it can create namespaces.
fn preflight() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0");
    assert!(
        root,
        "tests/netns.rs needs root (it creates network namespaces); run it as root, as .ci/run does"
    );
    let ip = Command::new("ip").arg("-V").output();
    assert!(
        ip.is_ok_and(|o| o.status.success()),
        "tests/netns.rs needs iproute2's `ip` on the PATH (apt-get install iproute2)"
    );
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test's namespaces: the Call Manager's (with the bridge) and one per node. Deleted on
/// drop, which also deletes every interface in them.
struct Net {
    prefix: String,
    names: Vec<String>,
}

impl Net {
    /// `nodes` namespaces for nodes, at 10.211.0.11, .12, ...
    fn new(test: &str, nodes: usize) -> Net {
        preflight();
        let prefix = format!("pbxl{}{test}", std::process::id());
        let mut net = Net {
            prefix,
            names: Vec::new(),
        };
        let cm = net.add("cm");
        ip(&["-n", &cm, "link", "set", "lo", "up"]);
        ip(&["-n", &cm, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &cm,
            "addr",
            "add",
            &format!("{CM_IP}/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &cm, "link", "set", "br0", "up"]);
        for i in 1..=nodes {
            let ns = net.add(&format!("n{i}"));
            let port = format!("v{i}");
            ip(&[
                "-n", &cm, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            ip(&["-n", &cm, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &cm, "link", "set", &port, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", node_ip(i)),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    fn add(&mut self, what: &str) -> String {
        let name = format!("{}-{what}", self.prefix);
        // A namespace of that name left by a killed run of the same pid would be ours anyway.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        self.names.push(name.clone());
        name
    }

    fn ns(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    /// `pbxlab args` in namespace `what` (`ip netns exec` execs it, so the pid is its own), its
    /// stderr (and stdout) into `log`.
    fn spawn(&self, what: &str, args: &[&str], log: &Path) -> Proc {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(what), pbxlab()])
            .args(args);
        Proc::start(cmd, log)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

fn node_ip(i: usize) -> String {
    format!("10.211.0.{}", 10 + i)
}

fn scratch(test: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pbxlab-netns-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir.join(name)
}

fn scenario() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/netns/remote-media.toml")
        .to_string_lossy()
        .into_owned()
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).expect("JSON")
}

fn n(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// The Call Manager in its namespace, with the remote-media scenario and the token.
fn call_manager(net: &Net, test: &str, json: &Path) -> Proc {
    let sip = format!("{CM_IP}:5060");
    net.spawn(
        "cm",
        &[
            "cluster",
            &scenario(),
            "--sip",
            &sip,
            "--join-token",
            TOKEN,
            "--whitelist",
            CM_IP,
            "--status-every",
            "100ms",
            "--for",
            "90s",
            "--json",
            json.to_str().expect("utf-8"),
        ],
        &scratch(test, "cm.log"),
    )
}

fn node(net: &Net, test: &str, i: usize, token: &str) -> Proc {
    let name = format!("media-{i}");
    let join = format!("{CM_IP}:5060");
    net.spawn(
        &format!("n{i}"),
        &[
            "node",
            "--role",
            "media",
            "--name",
            &name,
            "--join",
            &join,
            "--join-token",
            token,
            "--join-timeout",
            "10s",
            "--status-every",
            "1s",
        ],
        &scratch(test, &format!("{name}.log")),
    )
}

#[test]
#[ignore = "needs root and ip netns; run by .ci/run"]
fn a_cut_node_is_marked_down_and_its_calls_move() {
    let test = "cut";
    let net = Net::new(test, 2);
    let cm_json = scratch(test, "cm.json");
    let mut cm = call_manager(&net, test, &cm_json);
    let _n1 = node(&net, test, 1, TOKEN);
    let _n2 = node(&net, test, 2, TOKEN);
    cm.wait_for_log(
        "media-1 joined as media from 10.211.0.11:",
        Duration::from_secs(15),
    );
    cm.wait_for_log(
        "media-2 joined as media from 10.211.0.12:",
        Duration::from_secs(15),
    );
    // Up means probed: placement waits for nothing, but the test should not race the first
    // round of probes.
    std::thread::sleep(Duration::from_millis(500));

    // 20 echo calls with RTP, placed over 2 s and held 8 s: ten on each node.
    let load_json = scratch(test, "load.json");
    let target = format!("{CM_IP}:5060");
    let local = format!("{CM_IP}:0");
    let mut load = net.spawn(
        "cm",
        &[
            "load",
            "--target",
            &target,
            "--bind",
            &local,
            "--rtp-bind",
            &local,
            "--domain",
            "pbxlab.test",
            "--service",
            "echo",
            "--rtp",
            "1",
            "--calls",
            "20",
            "--call-rate",
            "10/s",
            "--hold",
            "8s",
            "--json",
            load_json.to_str().expect("utf-8"),
        ],
        &scratch(test, "load.log"),
    );
    std::thread::sleep(Duration::from_secs(3));
    // Cut media-1 off while every call is up.
    ip(&["-n", &net.ns("n1"), "link", "set", "eth0", "down"]);
    // Probes every 200 ms, timeout 100 ms, down after 2 misses: 0.5 s, plus the status line
    // (100 ms) and slack for a busy machine.
    let detected = cm.wait_for_log("media-1 down", Duration::from_secs(5));
    let bound = Duration::from_millis(200 * 2 + 100) + Duration::from_millis(1500);
    assert!(
        detected <= bound,
        "media-1 marked down {detected:?} after the cut (bound {bound:?})"
    );

    let status = load
        .wait_for(Duration::from_secs(40))
        .unwrap_or_else(|| panic!("the load did not finish:\n{}", load.log()));
    assert!(status.success(), "load: {status}\n{}", load.log());
    let status = cm.terminate();
    assert!(status.success(), "cluster: {status}\n{}", cm.log());

    let v = read_json(&load_json);
    assert_eq!(n(&v["calls"]["attempted"]), 20, "{v}");
    assert_eq!(n(&v["calls"]["failed"]), 0, "{v}");
    assert_eq!(n(&v["calls"]["succeeded"]), 20, "{v}");
    // Echoed audio kept coming back after the move: far more than the first 3 s worth.
    assert!(n(&v["rtp"]["packets_received"]) > 20 * 250, "{v}");

    let c = read_json(&cm_json);
    let state = |name: &str| {
        c["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|x| x["name"] == name))
            .map(|x| x["state"].clone())
            .unwrap_or_else(|| panic!("no {name} in {c}"))
    };
    assert_eq!(state("media-1"), "offline", "{c}");
    assert_eq!(state("media-2"), "online", "{c}");
    // media-1's calls moved to media-2; none was dropped.
    assert!(n(&c["moved"]) >= 5, "{c}");
    assert_eq!(n(&c["dropped"]), 0, "{c}");
    assert_eq!(n(&c["calls"]["completed"]), 20, "{c}");
}

#[test]
#[ignore = "needs root and ip netns; run by .ci/run"]
fn a_node_with_the_wrong_token_is_refused() {
    let test = "token";
    let net = Net::new(test, 1);
    let cm_json = scratch(test, "cm.json");
    let mut cm = call_manager(&net, test, &cm_json);
    let mut intruder = node(&net, test, 1, "not-the-token");
    let status = intruder
        .wait_for(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("the node did not give up:\n{}", intruder.log()));
    assert_eq!(status.code(), Some(2), "{}", intruder.log());
    assert!(
        intruder
            .log()
            .contains("refused by the Call Manager at 10.211.0.1:5060: wrong token"),
        "{}",
        intruder.log()
    );
    cm.wait_for_log("media-1 refused from 10.211.0.11:", Duration::from_secs(2));
    assert!(cm.log().contains(": wrong token"), "{}", cm.log());
    let status = cm.terminate();
    assert!(status.success(), "cluster: {status}\n{}", cm.log());
    let c = read_json(&cm_json);
    assert_eq!(c["nodes"].as_array().map(Vec::len), Some(0), "{c}");
}

/// The virtual IP of the Call Manager test.
const VIP: &str = "10.211.0.100";

/// Fails the test with a clear message unless keepalived is installed.
fn keepalived_preflight() {
    let out = Command::new("keepalived").arg("--version").output();
    assert!(
        out.is_ok(),
        "tests/netns.rs needs keepalived on the PATH (apt-get install keepalived), as .ci/run \
         installs it"
    );
}

/// keepalived in namespace `n{i}`: one VRRP instance on eth0 holding the virtual IP while its
/// Call Manager's track file says 0 (it serves), in FAULT otherwise (weight 0: a nonzero value
/// is a failure), at priority 1 plus the term it serves in (`cm-N.term`, weight 1): the newest
/// active preempts at once, even over a killed one whose files still say it serves. VRRPv3
/// with 100 ms advertisements.
fn keepalived(net: &Net, test: &str, i: usize, track: &Path) -> Proc {
    let conf = scratch(test, &format!("keepalived-{i}.conf"));
    let text = format!(
        "global_defs {{\n  router_id cm-{i}\n  vrrp_version 3\n  enable_script_security\n}}\n\
         track_file cm_serves {{\n  file {}\n  weight 0\n}}\n\
         track_file cm_term {{\n  file {}.term\n  weight 1\n}}\n\
         vrrp_instance pbxlab {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  \
         priority 1\n  advert_int 0.1\n  virtual_ipaddress {{\n    {VIP}/24\n  }}\n  \
         track_file {{\n    cm_serves\n    cm_term\n  }}\n}}\n",
        track.join(format!("cm-{i}")).display(),
        track.join(format!("cm-{i}")).display()
    );
    std::fs::write(&conf, text).expect("keepalived.conf");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &net.ns(&format!("n{i}")), "keepalived"])
        .args(["--dont-fork", "--log-console", "--log-detail", "--vrrp"])
        .arg("--use-file")
        .arg(&conf)
        .arg("--pid")
        .arg(scratch(test, &format!("keepalived-{i}.pid")))
        .arg("--vrrp_pid")
        .arg(scratch(test, &format!("keepalived-vrrp-{i}.pid")));
    Proc::start(cmd, &scratch(test, &format!("keepalived-{i}.log")))
}

/// Which Call Manager namespaces hold the virtual IP now.
fn vip_holders(net: &Net) -> Vec<usize> {
    (1..=3)
        .filter(|i| {
            let out = Command::new("ip")
                .args([
                    "-n",
                    &net.ns(&format!("n{i}")),
                    "-4",
                    "addr",
                    "show",
                    "dev",
                    "eth0",
                ])
                .output()
                .expect("ip runs");
            String::from_utf8_lossy(&out.stdout).contains(&format!("{VIP}/"))
        })
        .collect()
}

/// Waits up to `limit` for the virtual IP to be held by exactly one namespace satisfying
/// `want`; returns which and how long it took.
fn wait_vip(net: &Net, limit: Duration, want: impl Fn(usize) -> bool) -> (usize, Duration) {
    let started = std::time::Instant::now();
    loop {
        let held = vip_holders(net);
        if let [one] = held[..]
            && want(one)
        {
            return (one, started.elapsed());
        }
        assert!(
            started.elapsed() < limit,
            "the virtual IP is held by {held:?} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Three Call Managers in three namespaces, keepalived in each: the virtual IP sits in the
/// serving one's namespace. Its link is cut under calls with RTP (a real network failure of the
/// active's host): the other two elect a new active, its keepalived takes the address, and the
/// callers, who only know the virtual IP, keep calling; none fails. With the link back, the
/// old active follows the new one and its namespace does not take the address back.
#[test]
#[ignore = "needs root, ip netns and keepalived; run by .ci/run"]
fn keepalived_moves_the_virtual_ip_to_the_new_active_call_manager() {
    let test = "vrrp";
    keepalived_preflight();
    let net = Net::new(test, 3);
    let track = scratch(test, "track");
    std::fs::create_dir_all(&track).expect("track dir");
    // Nobody serves yet: every namespace starts in FAULT.
    for i in 1..=3 {
        std::fs::write(track.join(format!("cm-{i}")), "1\n").expect("track file");
        std::fs::write(track.join(format!("cm-{i}.term")), "0\n").expect("track file");
    }
    let _vrrp: Vec<Proc> = (1..=3).map(|i| keepalived(&net, test, i, &track)).collect();
    let cm_json = scratch(test, "cm.json");
    let sip = format!("{VIP}:5060");
    let netns: Vec<String> = (1..=3)
        .map(|i| format!("{}:{}", net.ns(&format!("n{i}")), node_ip(i)))
        .collect();
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/netns/cm-vrrp.toml")
        .to_string_lossy()
        .into_owned();
    let mut args = vec![
        "cluster",
        &scenario,
        "--sip",
        &sip,
        "--node-ip",
        CM_IP,
        "--whitelist",
        CM_IP,
        "--vrrp-track",
        track.to_str().expect("utf-8"),
        "--status-every",
        "100ms",
        "--for",
        "60s",
        "--json",
        cm_json.to_str().expect("utf-8"),
    ];
    for n in &netns {
        args.extend(["--cm-netns", n.as_str()]);
    }
    let mut cm = net.spawn("cm", &args, &scratch(test, "cm.log"));
    cm.wait_for_log("cm-1 serves the virtual IP", Duration::from_secs(10));
    let (first, _) = wait_vip(&net, Duration::from_secs(10), |_| true);
    assert_eq!(first, 1, "cm-1 serves, so its namespace holds the address");

    // 40 echo calls with RTP over 4 s, held 10 s, from 50 users who register first.
    let load_json = scratch(test, "load.json");
    let local = format!("{CM_IP}:0");
    let mut load = net.spawn(
        "cm",
        &[
            "load",
            "--target",
            &sip,
            "--bind",
            &local,
            "--rtp-bind",
            &local,
            "--users",
            "50",
            "--service",
            "echo",
            "--rtp",
            "1",
            "--calls",
            "40",
            "--call-rate",
            "10/s",
            "--hold",
            "10s",
            "--json",
            load_json.to_str().expect("utf-8"),
        ],
        &scratch(test, "load.log"),
    );
    std::thread::sleep(Duration::from_secs(3));
    // The active's host loses its network.
    ip(&["-n", &net.ns("n1"), "link", "set", "eth0", "down"]);
    let (next, moved) = wait_vip(&net, Duration::from_secs(5), |i| i != 1);
    // Three 100 ms heartbeats of silence and the election, then VRRP's own master-down time
    // (3 x 100 ms and its skew): well under VRRP's 3.6 s defaults, with slack for a busy
    // machine.
    assert!(
        moved < Duration::from_secs(3),
        "the virtual IP reached cm-{next}'s namespace {moved:?} after the cut"
    );
    eprintln!("the virtual IP reached cm-{next}'s namespace {moved:?} after the cut");
    std::thread::sleep(Duration::from_secs(2));
    ip(&["-n", &net.ns("n1"), "link", "set", "eth0", "up"]);
    std::thread::sleep(Duration::from_secs(2));
    let (still, _) = wait_vip(&net, Duration::from_secs(3), |_| true);
    assert_eq!(
        still, next,
        "the address stays with the serving Call Manager"
    );

    let status = load
        .wait_for(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the load did not finish:\n{}", load.log()));
    assert!(status.success(), "load: {status}\n{}", load.log());
    let status = cm.terminate();
    assert!(status.success(), "cluster: {status}\n{}", cm.log());

    let v = read_json(&load_json);
    assert_eq!(n(&v["calls"]["attempted"]), 40, "{v}");
    assert_eq!(n(&v["calls"]["failed"]), 0, "{v}");
    assert_eq!(n(&v["registrations"]["failed"]), 0, "{v}");
    let c = read_json(&cm_json);
    let cms = c["callmanagers"].as_array().expect("callmanagers");
    let role = |i: usize| cms[i - 1]["role"].as_str().unwrap_or("").to_owned();
    assert_eq!(role(next), "active", "{c}");
    assert_eq!(role(1), "standby", "cm-1 follows the new active: {c}");
    assert_eq!(n(&c["calls"]["completed"]), 40, "{c}");
}

/// Three Call Managers, each a process of its own (`pbxlab cluster --cm cm-N`) in a namespace
/// of its own with keepalived; two media nodes, each `pbxlab node` in a namespace of its own,
/// joined to the virtual IP. The active's process is killed (SIGKILL: no goodbye, and its track
/// files still say it serves) under calls with RTP: the others elect a new active, whose
/// keepalived preempts with its newer term, and the nodes link again with it without
/// restarting. Started again with `--fresh`, the killed one takes a snapshot and follows as a
/// standby, and its namespace does not take the address back. No call fails.
#[test]
#[ignore = "needs root, ip netns and keepalived; run by .ci/run"]
fn keepalived_moves_the_virtual_ip_when_the_active_call_manager_process_dies() {
    let test = "procs";
    keepalived_preflight();
    let net = Net::new(test, 5);
    let track = scratch(test, "track");
    std::fs::create_dir_all(&track).expect("track dir");
    for i in 1..=3 {
        std::fs::write(track.join(format!("cm-{i}")), "1\n").expect("track file");
        std::fs::write(track.join(format!("cm-{i}.term")), "0\n").expect("track file");
    }
    let _vrrp: Vec<Proc> = (1..=3).map(|i| keepalived(&net, test, i, &track)).collect();
    let key = scratch(test, "cluster-key");
    std::fs::write(&key, "netns-processes-cluster-key\n").expect("key file");
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        .saturating_sub(1)
        .to_string();
    let sip = format!("{VIP}:5060");
    let peers: Vec<String> = (1..=3).map(|i| format!("{}:19000", node_ip(i))).collect();
    let peers = peers.join(",");
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/netns/cm-processes.toml")
        .to_string_lossy()
        .into_owned();
    let ctl = |i: usize| format!("{}:5080", node_ip(i));
    let cm = |i: usize, fresh: bool, log: &str| {
        let (name, json, ctl) = (
            format!("cm-{i}"),
            scratch(test, &format!("{log}.json")),
            ctl(i),
        );
        let mut args = vec![
            "cluster",
            &scenario,
            "--sip",
            &sip,
            "--cm",
            &name,
            "--cm-peers",
            &peers,
            "--epoch",
            &epoch,
            "--cluster-key-file",
            key.to_str().expect("utf-8"),
            "--join-token",
            TOKEN,
            "--vrrp-track",
            track.to_str().expect("utf-8"),
            "--whitelist",
            CM_IP,
            "--ctl",
            &ctl,
            "--admin-token",
            "netns-admin",
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
        net.spawn(
            &format!("n{i}"),
            &args,
            &scratch(test, &format!("{log}.log")),
        )
    };
    let mut cms: Vec<Option<Proc>> = (1..=3)
        .map(|i| Some(cm(i, false, &format!("cm-{i}"))))
        .collect();
    // Every process starts as a standby: the first election makes the first active, and its
    // namespace gets the address.
    let (first, _) = wait_vip(&net, Duration::from_secs(10), |_| true);
    let active = cms[first - 1].as_mut().expect("the first active");
    active.wait_for_log(
        &format!("cm-{first} serves the virtual IP"),
        Duration::from_secs(5),
    );
    let node = |i: usize| {
        let name = format!("media-{i}");
        net.spawn(
            &format!("n{}", i + 3),
            &[
                "node",
                "--role",
                "media",
                "--name",
                &name,
                "--join",
                &sip,
                "--join-token",
                TOKEN,
                "--join-timeout",
                "10s",
                "--status-every",
                "1s",
            ],
            &scratch(test, &format!("{name}.log")),
        )
    };
    let (_n1, _n2) = (node(1), node(2));
    active.wait_for_log("media-1 joined as media", Duration::from_secs(10));
    active.wait_for_log("media-2 joined as media", Duration::from_secs(10));

    // 40 echo calls with RTP over 4 s, held 8 s, from 50 users who register first.
    let load_json = scratch(test, "load.json");
    let local = format!("{CM_IP}:0");
    let mut load = net.spawn(
        "cm",
        &[
            "load",
            "--target",
            &sip,
            "--bind",
            &local,
            "--rtp-bind",
            &local,
            "--users",
            "50",
            "--service",
            "echo",
            "--rtp",
            "1",
            "--calls",
            "40",
            "--call-rate",
            "10/s",
            "--hold",
            "8s",
            "--json",
            load_json.to_str().expect("utf-8"),
        ],
        &scratch(test, "load.log"),
    );
    std::thread::sleep(Duration::from_secs(3));
    let mut killed = cms[first - 1].take().expect("the first active");
    let _ = killed.child.kill();
    let _ = killed.child.wait();
    let (next, moved) = wait_vip(&net, Duration::from_secs(5), |i| i != first);
    eprintln!(
        "the virtual IP reached cm-{next}'s namespace {moved:?} after cm-{first}'s process died"
    );
    // Three 100 ms heartbeats of silence and the election, then one VRRP advertisement for the
    // preemption: well under VRRP's 3.6 s defaults, with slack for a busy machine.
    assert!(
        moved < Duration::from_secs(3),
        "the virtual IP reached cm-{next}'s namespace {moved:?} after the kill"
    );
    let new = cms[next - 1].as_mut().expect("the new active runs");
    new.wait_for_log("media-1 linked again", Duration::from_secs(5));
    new.wait_for_log("media-2 linked again", Duration::from_secs(5));
    let mut again = cm(first, true, &format!("cm-{first}-again"));
    again.wait_for_log(
        &format!("cm-{first} took a snapshot"),
        Duration::from_secs(10),
    );
    cms[first - 1] = Some(again);
    std::thread::sleep(Duration::from_secs(1));
    let (still, _) = wait_vip(&net, Duration::from_secs(3), |_| true);
    assert_eq!(
        still, next,
        "the address stays with the serving Call Manager"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &net.ns("cm"), pbxlab(), "ctl"])
        .args(["--ctl", &(1..=3).map(ctl).collect::<Vec<_>>().join(",")])
        .args(["--admin-token", "netns-admin", "status", "--json"])
        .output()
        .expect("pbxlab ctl runs");
    assert!(out.status.success(), "{out:?}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let serving = s["callmanagers"][next - 1]["serving"].clone();
    assert_eq!(
        serving, true,
        "ctl reaches the serving one through every endpoint: {s}"
    );
    assert!(
        s["callmanagers"][first - 1]["behind"].as_u64().is_some(),
        "the active sees cm-{first} again: {s}"
    );

    let status = load
        .wait_for(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the load did not finish:\n{}", load.log()));
    assert!(status.success(), "load: {status}\n{}", load.log());
    for cm in cms.iter_mut().flatten() {
        let status = cm.terminate();
        assert!(status.success(), "cluster: {status}\n{}", cm.log());
    }
    let v = read_json(&load_json);
    assert_eq!(n(&v["calls"]["attempted"]), 40, "{v}");
    assert_eq!(n(&v["calls"]["failed"]), 0, "{v}");
    assert_eq!(n(&v["registrations"]["failed"]), 0, "{v}");
    let c = read_json(&scratch(test, &format!("cm-{next}.json")));
    assert_eq!((n(&c["moved"]), n(&c["dropped"])), (0, 0), "{c}");
    assert_eq!(n(&c["calls"]["completed"]), 40, "{c}");
    let link = &c["link"];
    assert_eq!((n(&link["relinks"]), n(&link["rejoins"])), (2, 0), "{c}");
}
