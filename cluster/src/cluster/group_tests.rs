//! Three Call Manager threads behind one virtual IP on loopback: the serving one answers at the
//! address, a failed one is replaced, a cut-off one stops before its successor starts, and
//! what is not replicated is refused. The waits are bounded; nothing here times a figure.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use pbxlab_scenario::Scenario;

use crate::cluster::{Cluster, Filter, OpError, Options, Verb};

const THREE: &str = r#"name = "three call managers"
seed = 1
[health]
probe_interval = "100ms"
probe_timeout = "50ms"
down_after = 2
up_after = 1
[[pool]]
role = "media"
servers = 1
capacity = 10
[callmanager]
nodes = 3
heartbeat = "50ms"
misses = 3
"#;

fn start() -> Cluster {
    let sc = Scenario::from_toml("<three>", THREE).expect("valid");
    Cluster::start(&sc, &Options::new("127.0.0.1:0".parse().expect("addr")))
        .expect("starts on loopback")
}

/// Waits up to 5 s for `f` to hold.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < until, "not within 5 s: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// An OPTIONS to the virtual IP, sent until a 200 comes back from the virtual IP itself.
fn answered(client: &UdpSocket, vip: std::net::SocketAddr) -> bool {
    let msg = format!(
        "OPTIONS sip:{vip} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-{}\r\nMax-Forwards: 70\r\n\
         From: <sip:probe@pbxlab.test>;tag=t1\r\nTo: <sip:{vip}>\r\nCall-ID: ha-{}\r\n\
         CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        client.local_addr().expect("addr"),
        rand_tag(),
        rand_tag()
    );
    let _ = client.send_to(msg.as_bytes(), vip);
    let mut buf = [0u8; 4096];
    match client.recv_from(&mut buf) {
        Ok((n, from)) => from == vip && buf[..n].starts_with(b"SIP/2.0 200"),
        Err(_) => false,
    }
}

/// A caller's socket that waits 100 ms for an answer.
fn client() -> UdpSocket {
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
    client
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    client
}

fn rand_tag() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn cm(name: &str) -> Filter {
    Filter {
        server: Some(name.into()),
        ..Filter::default()
    }
}

#[test]
fn a_failed_active_is_replaced_at_the_virtual_ip_and_catches_up_when_it_returns() {
    let cluster = start();
    let control = cluster.control();
    let (vip, client) = (cluster.sip_addr(), client());
    eventually("cm-1 serves", || control.serving_cm() == Some(0));
    eventually("an answer from cm-1", || answered(&client, vip));
    eventually("every standby in step", || {
        control
            .callmanagers()
            .iter()
            .skip(1)
            .all(|c| c.role == "standby" && c.behind.is_some())
    });

    control.act(Verb::Fail, &cm("cm-1")).expect("cm-1 fails");
    eventually("another serves", || {
        control.serving_cm().is_some_and(|i| i != 0)
    });
    eventually("an answer from the new active", || answered(&client, vip));
    let rows = control.callmanagers();
    assert_eq!(rows[0].role, "stopped", "{rows:?}");
    assert!(rows.iter().filter(|c| c.serving).count() == 1, "{rows:?}");

    control
        .act(Verb::Recover, &cm("cm-1"))
        .expect("cm-1 catches up");
    let rows = control.callmanagers();
    assert_eq!(rows[0].role, "standby", "{rows:?}");
    assert!(rows[0].stats.snapshots_taken >= 1, "{rows:?}");
    let status = control.status();
    assert_eq!(status.callmanagers.len(), 3);
    assert!(
        status
            .events
            .iter()
            .any(|e| e.ends_with("cm-1 caught up: a standby")),
        "{:?}",
        status.events
    );

    // A node verb on a Call Manager is refused, naming what it can do.
    let refused = control.act(Verb::Drain, &cm("cm-2")).expect_err("refused");
    assert!(
        matches!(refused, OpError::NotForCallManager { .. }),
        "{refused}"
    );
    // An operator's restart of the active: it resigns, and a standby serves at once.
    let before = control.serving_cm().expect("one serves");
    let name = format!("cm-{}", before + 1);
    control.act(Verb::Restart, &cm(&name)).expect("restarted");
    eventually("another serves", || {
        control.serving_cm().is_some_and(|i| i != before)
    });
    assert_eq!(control.callmanagers()[before].role, "standby");
    cluster.stop().expect("stops");
}

/// `ctl add` and a whitelist change are inputs like any other: answered once a standby holds
/// them, and still in force under the next active.
#[test]
fn an_added_server_and_a_whitelist_change_survive_a_takeover() {
    let cluster = start();
    let control = cluster.control();
    eventually("cm-1 serves", || control.serving_cm() == Some(0));
    let ip: std::net::IpAddr = "127.0.0.9".parse().expect("ip");
    let list = control.whitelist(Some((ip, true))).expect("whitelisted");
    assert!(list.contains(&ip), "{list:?}");
    let added = control
        .add(pbxlab_balancer::Role::Media, "media-9", None)
        .expect("added");
    assert_eq!(added.name, "media-9");

    control.act(Verb::Fail, &cm("cm-1")).expect("cm-1 fails");
    eventually("another serves", || {
        control.serving_cm().is_some_and(|i| i != 0)
    });
    let list = control.whitelist(None).expect("the list");
    assert!(
        list.contains(&ip),
        "the new active lost the whitelist change: {list:?}"
    );
    // The new active holds the server, probes it, and finds it up.
    eventually("media-9 online under the new active", || {
        control.rows().is_ok_and(|rows| {
            rows.iter()
                .any(|n| n.name == "media-9" && n.state == "online")
        })
    });
    cluster.stop().expect("stops");
}

/// Split brain: the active is cut off but alive. It keeps the virtual IP bound until its lease
/// runs out, and only then can the new active bind it: at no moment do two serve.
#[test]
fn a_cut_off_active_stops_serving_before_another_starts() {
    let cluster = start();
    let control = cluster.control();
    let (vip, client) = (cluster.sip_addr(), client());
    eventually("cm-1 serves", || control.serving_cm() == Some(0));
    let cut_at = control.now();
    control.act(Verb::Partition, &cm("cm-1")).expect("cut off");
    eventually("another serves", || {
        control.serving_cm().is_some_and(|i| i != 0)
    });
    eventually("an answer from the new active", || answered(&client, vip));
    let log = control.vip_log().serving;
    let at = u64::try_from(cut_at.as_nanos()).expect("fits");
    let stopped = log
        .iter()
        .find(|&&(t, i, s)| t >= at && i == 0 && !s)
        .map(|&(t, _, _)| t)
        .expect("cm-1 stopped serving");
    let began = log
        .iter()
        .find(|&&(t, i, s)| t >= at && i != 0 && s)
        .map(|&(t, _, _)| t)
        .expect("another began");
    assert!(stopped < began, "{log:?}");

    control.act(Verb::Heal, &cm("cm-1")).expect("reconnected");
    eventually("cm-1 follows the new active", || {
        control
            .callmanagers()
            .first()
            .is_some_and(|c| c.role == "standby" && !c.serving)
    });
    cluster.stop().expect("stops");
}

/// Without a majority nobody serves: an operator's action is answered `Unserved` after the
/// reply limit, not "no server matches" and not a hang.
#[test]
fn without_a_majority_an_action_is_answered_unserved() {
    let cluster = start();
    let control = cluster.control();
    eventually("cm-1 serves", || control.serving_cm() == Some(0));
    control.act(Verb::Fail, &cm("cm-2")).expect("cm-2 fails");
    control.act(Verb::Fail, &cm("cm-3")).expect("cm-3 fails");
    eventually("nobody serves", || control.serving_cm().is_none());
    let media = Filter {
        server: Some("media-1".into()),
        ..Filter::default()
    };
    match control.act(Verb::Disable, &media) {
        Err(OpError::Unserved(_)) => {}
        other => panic!("expected Unserved, got {other:?}"),
    }
    cluster.stop().expect("stops");
}
