//! Leg B when it goes wrong, driven like `tests`: an agent whose leg finds no media node, a
//! callee that answers after the caller left, a phone that rings and rings.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use pbxlab_balancer::Role;
use pbxlab_proto::builder::write_response;
use pbxlab_proto::sip::{HeaderName, Message, Method};
use pbxlab_scenario::Verb;

use super::tests::{CALLEE, MS, UA, UA_RTP, addr, cm, offer, parse, register_out, request, sent};
use super::*;

type Out = Vec<(SocketAddr, Vec<u8>)>;

/// Runs the Call Manager's timers up to `until`, every node answering its probes at once;
/// returns everything else it sent.
fn run_until(cm: &mut CallManager, until: Nanos) -> Out {
    let mut other = Vec::new();
    for _ in 0..100_000 {
        let now = cm.next_deadline().min(until);
        cm.advance(now);
        for (to, bytes) in sent(cm) {
            let m = parse(&bytes);
            if m.method() == Some(Method::Options) && cm.nodes().iter().any(|n| n.addr == to) {
                let mut ok = Vec::new();
                write_response(&mut ok, &m, 200, "OK", Some("n"), &[], b"");
                cm.handle(now, to, &ok);
            } else {
                other.push((to, bytes));
            }
        }
        if now >= until {
            return other;
        }
    }
    panic!("the clock never reached {until}");
}

/// The first line of each datagram in `out`, with where it went.
fn firsts(out: &Out) -> Vec<(SocketAddr, String)> {
    out.iter()
        .map(|(to, b)| {
            let t = String::from_utf8_lossy(b);
            (*to, t.lines().next().unwrap_or("").to_owned())
        })
        .collect()
}

/// ACKs the Call Manager's 200 `ok` to caller `user`'s INVITE `call_id`.
fn ack_a(cm: &mut CallManager, now: Nanos, user: &str, call_id: &str, ok: &Message<'_>) {
    let to = ok.header(HeaderName::To).unwrap();
    let ack = String::from_utf8(request("ACK", "sip:cm@x", user, call_id, 1, "", ""))
        .unwrap()
        .replace("To: <sip:cm@x>", &format!("To: {to}"));
    cm.handle(now, addr(UA), ack.as_bytes());
}

/// Caller 1009 dials queue-1 at `now` and ACKs the 200; returns what else was sent.
fn queue_caller(cm: &mut CallManager, now: Nanos) -> Out {
    cm.handle(
        now,
        addr(UA),
        &request(
            "INVITE",
            "sip:queue-1@pbxlab.test",
            "1009",
            "q1",
            1,
            "Content-Type: application/sdp\r\n",
            &offer(UA_RTP, 5),
        ),
    );
    let mut out = sent(cm);
    let ok = out.remove(0);
    let ok = parse(&ok.1);
    assert_eq!(ok.code(), Some(200));
    ack_a(cm, now, "1009", "q1", &ok);
    out
}

/// The INVITEs in `out` that open a dialog, retransmissions left out: (to, Request-URI).
fn invites(out: &Out) -> Vec<(SocketAddr, String)> {
    out.iter()
        .enumerate()
        .filter(|&(i, sent)| !out[..i].contains(sent))
        .filter_map(|(_, (to, b))| {
            let m = parse(b);
            (m.method() == Some(Method::Invite) && m.to()?.tag().is_none())
                .then(|| (*to, m.request_uri().unwrap_or("").to_owned()))
        })
        .collect()
}

#[test]
fn a_queue_caller_whose_agent_finds_no_media_node_waits_and_is_served_once_one_is_back() {
    // Before the fix, dispatch put the caller back at the head and offered the same agent
    // again, for ever: run it where a hang is a failure rather than a stuck test.
    let (finished, done) = mpsc::channel();
    let test = std::thread::spawn(move || {
        let mut cm = cm();
        let media: Vec<ServerId> = cm
            .nodes()
            .iter()
            .filter(|n| n.role == Role::Media)
            .map(|n| n.id)
            .collect();
        for &m in &media {
            cm.admin(0, m, Verb::Disable).unwrap();
        }
        let out = register_out(&mut cm, 0, 1000, CALLEE, "pw-1000", 600);
        assert_eq!(parse(&out[0].1).code(), Some(200));
        let out = queue_caller(&mut cm, MS);
        assert!(invites(&out).is_empty(), "{:?}", firsts(&out));
        let out = run_until(&mut cm, 3 * NS);
        assert!(invites(&out).is_empty(), "{:?}", firsts(&out));
        let st = cm.stats();
        assert_eq!((st.queue_waiting, st.calls_active), (1, 1));
        assert!(
            st.failures
                .get("no media for agent")
                .is_some_and(|&n| n >= 1)
        );
        // A media node back in service: the next sweep offers the caller to the agent.
        cm.admin(3 * NS, media[0], Verb::Enable).unwrap();
        let out = run_until(&mut cm, 5 * NS);
        assert_eq!(
            invites(&out),
            vec![(addr(CALLEE), "sip:1000@127.0.0.1:7100".to_owned())]
        );
        assert_eq!(cm.stats().queue_waiting, 0);
        cm.balancer().audit().unwrap();
        finished.send(()).unwrap();
    });
    if done.recv_timeout(Duration::from_secs(30)) == Err(mpsc::RecvTimeoutError::Timeout) {
        panic!("the Call Manager never returned from dispatching the queue");
    }
    if let Err(panic) = test.join() {
        std::panic::resume_unwind(panic);
    }
}
