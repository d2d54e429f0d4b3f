//! Leg B when it goes wrong, driven like `tests`: an agent whose leg finds no media node, a
//! callee that answers after the caller left, a phone that rings and rings.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use pbxlab_balancer::Role;
use pbxlab_proto::builder::write_response;
use pbxlab_proto::sip::{HeaderName, Message, Method};
use pbxlab_scenario::Verb;

use super::tests::{
    CALLEE, MS, UA, UA_RTP, addr, cm, cm_with, offer, parse, register_out, request, sent,
};
use super::*;

type Out = Vec<(SocketAddr, Vec<u8>)>;

/// Runs the Call Manager's timers from `from` (the time of the last thing it was given) up to
/// `until`, every node answering its probes at once; returns everything else it sent.
fn run_until(cm: &mut CallManager, from: Nanos, until: Nanos) -> Out {
    let mut other = Vec::new();
    let mut now = from;
    for _ in 0..100_000 {
        // A timer that fell due while the test was sending runs now, not in the past.
        now = cm.next_deadline().clamp(now, until);
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
        let out = run_until(&mut cm, MS, 3 * NS);
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
        let out = run_until(&mut cm, 3 * NS, 5 * NS);
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

/// User 1004 calls user 1005 (registered at CALLEE), whose phone rings; returns the INVITE
/// the callee got.
fn ringing_call(cm: &mut CallManager) -> Vec<u8> {
    let out = register_out(cm, 0, 1005, CALLEE, "pw-1005", 600);
    assert_eq!(parse(&out[0].1).code(), Some(200));
    cm.handle(
        0,
        addr(UA),
        &request(
            "INVITE",
            "sip:1005@pbxlab.test",
            "1004",
            "c1",
            1,
            "Content-Type: application/sdp\r\n",
            &offer(UA_RTP, 7),
        ),
    );
    let (_, invite) = sent(cm)
        .into_iter()
        .find(|(to, b)| *to == addr(CALLEE) && b.starts_with(b"INVITE"))
        .expect("INVITE to the callee");
    let mut ringing = Vec::new();
    write_response(
        &mut ringing,
        &parse(&invite),
        180,
        "Ringing",
        Some("cal"),
        &[],
        b"",
    );
    cm.handle(MS, addr(CALLEE), &ringing);
    assert_eq!(parse(&sent(cm)[0].1).code(), Some(180));
    invite
}

/// The callee's 200 to `invite`, with its tag `cal`, its Contact and an SDP answer.
fn callee_ok(invite: &Message<'_>) -> Vec<u8> {
    let mut ok = Vec::new();
    write_response(
        &mut ok,
        invite,
        200,
        "OK",
        Some("cal"),
        &[
            ("Contact", "<sip:1005@127.0.0.1:7100>"),
            ("Content-Type", "application/sdp"),
        ],
        offer("127.0.0.1:7102", 9).as_bytes(),
    );
    ok
}

/// A final response to our INVITE from an address the INVITE did not go to (a forged 486
/// that names the right branch) ends nothing; the callee's own answer still connects.
#[test]
fn a_forged_answer_from_elsewhere_is_ignored() {
    let mut cm = cm();
    let invite = ringing_call(&mut cm);
    let mut busy = Vec::new();
    write_response(
        &mut busy,
        &parse(&invite),
        486,
        "Busy Here",
        Some("x"),
        &[],
        b"",
    );
    for _ in 0..10 {
        cm.handle(2 * MS, addr("192.0.2.66:5060"), &busy);
    }
    assert!(
        sent(&mut cm).is_empty(),
        "no answer to the caller, no ACK to anyone"
    );
    assert_eq!(cm.stats().responses_foreign, 10);
    assert_eq!(cm.stats().calls_active, 1);
    cm.handle(3 * MS, addr(CALLEE), &callee_ok(&parse(&invite)));
    let out = sent(&mut cm);
    assert!(
        out.iter()
            .any(|(to, b)| *to == addr(UA) && b.starts_with(b"SIP/2.0 200")),
        "the caller is connected"
    );
}

#[test]
fn a_200_that_crosses_the_callers_cancel_is_acked_and_the_callee_sent_a_bye() {
    let mut cm = cm();
    let invite = ringing_call(&mut cm);
    let invite = parse(&invite);
    cm.handle(
        2 * MS,
        addr(UA),
        &request("CANCEL", "sip:1005@pbxlab.test", "1004", "c1", 1, "", ""),
    );
    let out = firsts(&sent(&mut cm));
    assert_eq!(
        out[1],
        (addr(UA), "SIP/2.0 487 Request Terminated".to_owned())
    );
    assert_eq!(
        out[2],
        (
            addr(CALLEE),
            "CANCEL sip:1005@127.0.0.1:7100 SIP/2.0".to_owned()
        )
    );
    assert_eq!(cm.stats().calls_active, 0);

    // The callee had already answered: RFC 3261 13.2.2.4 wants the 200 ACKed, and the
    // dialog it made, which nobody wants now, ended with a BYE (15).
    let ok = callee_ok(&invite);
    cm.handle(3 * MS, addr(CALLEE), &ok);
    let out = sent(&mut cm);
    assert_eq!(
        firsts(&out),
        vec![
            (
                addr(CALLEE),
                "ACK sip:1005@127.0.0.1:7100 SIP/2.0".to_owned()
            ),
            (
                addr(CALLEE),
                "BYE sip:1005@127.0.0.1:7100 SIP/2.0".to_owned()
            ),
        ]
    );
    let (ack, bye) = (parse(&out[0].1), parse(&out[1].1));
    for (m, cseq) in [(&ack, (1, Method::Ack)), (&bye, (2, Method::Bye))] {
        assert_eq!(m.call_id(), invite.call_id());
        assert_eq!(m.header(HeaderName::From), invite.header(HeaderName::From));
        assert_eq!(m.to().and_then(|t| t.tag()), Some("cal"));
        let c = m.cseq().unwrap();
        assert_eq!((c.seq, c.method), cseq);
    }
    // The 200 again (our ACK was lost): it is ACKed again, and the BYE is not repeated.
    cm.handle(500 * MS, addr(CALLEE), &ok);
    let again = sent(&mut cm);
    assert_eq!(again.len(), 1, "{:?}", firsts(&again));
    assert_eq!(again[0], out[0]);
    // The callee accepts the BYE; nothing is left.
    let mut bye_ok = Vec::new();
    write_response(&mut bye_ok, &bye, 200, "OK", None, &[], b"");
    cm.handle(600 * MS, addr(CALLEE), &bye_ok);
    assert!(sent(&mut cm).is_empty());
    let st = cm.stats();
    assert_eq!((st.calls_active, st.calls_total), (0, 1));
    assert_eq!(cm.balancer().placed(), 0);
}

#[test]
fn the_callees_487_after_the_callers_cancel_is_acked_on_the_invites_branch() {
    let mut cm = cm();
    let invite = ringing_call(&mut cm);
    let invite = parse(&invite);
    cm.handle(
        2 * MS,
        addr(UA),
        &request("CANCEL", "sip:1005@pbxlab.test", "1004", "c1", 1, "", ""),
    );
    let _ = sent(&mut cm);
    let mut terminated = Vec::new();
    write_response(
        &mut terminated,
        &invite,
        487,
        "Request Terminated",
        Some("cal"),
        &[],
        b"",
    );
    cm.handle(3 * MS, addr(CALLEE), &terminated);
    let out = sent(&mut cm);
    assert_eq!(out.len(), 1, "{:?}", firsts(&out));
    let ack = parse(&out[0].1);
    assert_eq!((out[0].0, ack.method()), (addr(CALLEE), Some(Method::Ack)));
    assert_eq!(
        ack.top_via().and_then(|v| v.branch),
        invite.top_via().and_then(|v| v.branch)
    );
    assert_eq!(ack.call_id(), invite.call_id());
    assert_eq!(ack.to().and_then(|t| t.tag()), Some("cal"));
    assert_eq!(
        ack.cseq().map(|c| (c.seq, c.method)),
        Some((1, Method::Ack))
    );
}

#[test]
fn abandoned_leg_b_dialogs_are_kept_64_t1_and_at_most_1024_at_once() {
    let t1 = 500 * MS;
    let mut calls = calls::Calls::new(t1, 8 * t1);
    let dialog = calls::Dialog {
        call_id: "b".into(),
        remote_tag: String::new(),
        remote_uri: "sip:1005@127.0.0.1:7100".into(),
        remote_addr: addr(CALLEE),
        local_party: "<sip:cm@pbxlab.test>;tag=b".into(),
        remote_party: "<sip:1005@pbxlab.test>".into(),
        local_cseq: 1,
        sdp_id: 1,
        sdp_version: 1,
    };
    let tx = |i: u32| transactions::TxId::new(i, 1);
    for i in 0..=1024 {
        calls.abandon(0, tx(i), None, (i, 0), dialog.clone());
    }
    assert!(
        calls.abandoned_answer(0, tx(0), true).is_none(),
        "the oldest went"
    );
    assert!(calls.abandoned_answer(0, tx(1), false).is_some());
    // A 200 keeps its record 64*T1 from then; the others lapse 64*T1 after they were made.
    let (call, _, first) = calls.abandoned_answer(10 * t1, tx(1024), true).unwrap();
    assert_eq!((call, first), ((1024, 0), true));
    assert!(calls.abandoned_answer(64 * t1, tx(1), false).is_none());
    let again = calls.abandoned_answer(64 * t1, tx(1024), true).unwrap();
    assert!(!again.2, "the BYE went with the first 200");
    assert!(calls.abandoned_answer(127 * t1, tx(1024), false).is_some());
    assert!(calls.abandoned_answer(128 * t1, tx(1024), false).is_none());
}

/// Where the second agent's phone is.
const AGENT2: &str = "127.0.0.1:7200";

/// The 180 of a callee or agent at `at` to the INVITE `invite`. What it makes the Call
/// Manager send is not looked at.
fn ring(cm: &mut CallManager, now: Nanos, at: &str, invite: &[u8]) {
    let mut ringing = Vec::new();
    write_response(
        &mut ringing,
        &parse(invite),
        180,
        "Ringing",
        Some("r"),
        &[],
        b"",
    );
    cm.handle(now, addr(at), &ringing);
    let _ = sent(cm);
}

/// The first INVITE in `out` that opens a dialog, to `at`.
fn invite_to(out: &Out, at: &str) -> Vec<u8> {
    out.iter()
        .find(|(to, b)| {
            let m = parse(b);
            *to == addr(at)
                && m.method() == Some(Method::Invite)
                && m.to().is_some_and(|t| t.tag().is_none())
        })
        .map(|(_, b)| b.clone())
        .unwrap_or_else(|| panic!("no INVITE to {at}: {:?}", firsts(out)))
}

#[test]
fn a_callee_that_rings_for_180_s_is_cancelled_and_the_caller_gets_408() {
    let mut cm = cm();
    let _ = ringing_call(&mut cm);
    let out = run_until(&mut cm, MS, 180 * NS - MS);
    assert!(out.is_empty(), "{:?}", firsts(&out));
    assert_eq!(cm.stats().calls_active, 1);
    let out = run_until(&mut cm, 180 * NS - MS, 180 * NS);
    assert_eq!(
        firsts(&out),
        vec![
            (
                addr(CALLEE),
                "CANCEL sip:1005@127.0.0.1:7100 SIP/2.0".to_owned()
            ),
            (addr(UA), "SIP/2.0 408 Request Timeout".to_owned()),
        ]
    );
    let st = cm.stats();
    assert_eq!(st.failures.get("no answer"), Some(&1));
    assert_eq!(st.calls_active, 0);
    assert_eq!(cm.balancer().placed(), 0);
    cm.balancer().audit().unwrap();
}

#[test]
fn an_agent_that_rings_for_30_s_is_cancelled_and_the_caller_offered_to_the_next_agent() {
    let mut cm = cm();
    for (user, at) in [(1000, CALLEE), (1001, AGENT2)] {
        let out = register_out(&mut cm, 0, user, at, &format!("pw-{user}"), 600);
        assert_eq!(parse(&out[0].1).code(), Some(200));
    }
    let out = queue_caller(&mut cm, 0);
    let first = invite_to(&out, CALLEE);
    ring(&mut cm, MS, CALLEE, &first);
    let out = run_until(&mut cm, MS, 30 * NS - MS);
    assert!(out.is_empty(), "{:?}", firsts(&out));
    // Agent 1000's no-answer limit: it stops ringing and agent 1001 is offered the caller.
    let out = run_until(&mut cm, 30 * NS - MS, 30 * NS);
    assert_eq!(
        firsts(&out),
        vec![
            (
                addr(CALLEE),
                "CANCEL sip:1000@127.0.0.1:7100 SIP/2.0".to_owned()
            ),
            (
                addr(AGENT2),
                "INVITE sip:1001@127.0.0.1:7200 SIP/2.0".to_owned()
            ),
        ]
    );
    let st = cm.stats();
    assert_eq!((st.queue_waiting, st.calls_active), (0, 1));
    // 1000's phone stops: 200 to the CANCEL, 487 to the INVITE, which is ACKed.
    let cancel_bytes = out[0].1.clone();
    let cancel = parse(&cancel_bytes);
    let mut answer = Vec::new();
    write_response(&mut answer, &cancel, 200, "OK", Some("r"), &[], b"");
    cm.handle(30 * NS, addr(CALLEE), &answer);
    answer.clear();
    let terminated = "Request Terminated";
    write_response(
        &mut answer,
        &parse(&first),
        487,
        terminated,
        Some("r"),
        &[],
        b"",
    );
    cm.handle(30 * NS, addr(CALLEE), &answer);
    assert_eq!(
        firsts(&sent(&mut cm)),
        vec![(addr(CALLEE), "ACK sip:1000@pbxlab.test SIP/2.0".to_owned())]
    );
    // 1001 rings out too; 1000, skipped for a while only, is offered the caller again.
    let second = invite_to(&out, AGENT2);
    ring(&mut cm, 30 * NS + MS, AGENT2, &second);
    let out = run_until(&mut cm, 30 * NS + MS, 60 * NS);
    // The 200 to our CANCEL came on the INVITE's branch and still ended the CANCEL's own
    // transaction: it is not sent again.
    assert!(
        out.iter().all(|(_, b)| *b != cancel_bytes),
        "the CANCEL was repeated"
    );
    assert_eq!(
        firsts(&out),
        vec![
            (
                addr(AGENT2),
                "CANCEL sip:1001@127.0.0.1:7200 SIP/2.0".to_owned()
            ),
            (
                addr(CALLEE),
                "INVITE sip:1000@127.0.0.1:7100 SIP/2.0".to_owned()
            ),
        ]
    );
    // Nobody answered, but the caller still holds: it was never sent an error or a BYE.
    let st = cm.stats();
    assert_eq!((st.calls_active, st.queue_answered), (1, 0));
    assert!(st.failures.is_empty(), "{:?}", st.failures);
    cm.balancer().audit().unwrap();
}

#[test]
fn an_agent_whose_first_1xx_comes_after_the_no_answer_limit_is_cancelled_at_once() {
    let mut cm = cm();
    let out = register_out(&mut cm, 0, 1000, CALLEE, "pw-1000", 600);
    assert_eq!(parse(&out[0].1).code(), Some(200));
    let out = queue_caller(&mut cm, 0);
    let invite = invite_to(&out, CALLEE);
    // Silent until 31 s (the INVITE is retransmitted), then ringing: Timer B no longer
    // applies, and the 30 s limit has passed.
    let out = run_until(&mut cm, 0, 31 * NS);
    assert!(out.iter().all(|(_, b)| *b == invite), "{:?}", firsts(&out));
    ring(&mut cm, 31 * NS, CALLEE, &invite);
    let out = run_until(&mut cm, 31 * NS, 31 * NS + MS);
    assert_eq!(
        firsts(&out),
        vec![(
            addr(CALLEE),
            "CANCEL sip:1000@127.0.0.1:7100 SIP/2.0".to_owned()
        )]
    );
    assert_eq!(cm.stats().queue_waiting, 1, "the caller waits again");
}

/// A re-INVITE that each leg answers 100 and then forgets is given up after Timer B, like one
/// never answered at all: the call is hung up rather than its transactions held forever (the
/// dialog, which takes one INVITE at a time, could otherwise never be moved again).
#[test]
fn a_reinvite_answered_100_and_then_nothing_is_given_up_after_timer_b() {
    use super::failover_tests::{cluster, user_call};
    let ns: Nanos = 1_000_000_000;
    let mut cm = cluster(&[(Role::Media, 10), (Role::Media, 10)], &[]);
    let call = user_call(&mut cm, 0, 0);
    cm.admin(ns, call.server, Verb::Disable).expect("disabled");
    let reinvites: Out = sent(&mut cm)
        .into_iter()
        .filter(|(_, b)| {
            let m = parse(b);
            m.method() == Some(Method::Invite) && m.to().and_then(|t| t.tag()).is_some()
        })
        .collect();
    assert_eq!(reinvites.len(), 2, "one re-INVITE per leg");
    for (to, bytes) in &reinvites {
        let mut trying = Vec::new();
        write_response(&mut trying, &parse(bytes), 100, "Trying", None, &[], b"");
        cm.handle(ns + MS, *to, &trying);
    }
    let out = run_until(&mut cm, ns + MS, ns + 40 * ns);
    // Counted by dialog: an unanswered BYE is sent again on its own timer.
    let mut byes: Vec<String> = out
        .iter()
        .filter_map(|(_, b)| {
            let m = parse(b);
            (m.method() == Some(Method::Bye)).then(|| m.call_id().unwrap_or("").to_owned())
        })
        .collect();
    byes.sort();
    byes.dedup();
    assert_eq!(
        byes.len(),
        2,
        "a BYE to each leg once the re-INVITEs are given up"
    );
    assert_eq!(cm.stats().calls_active, 0);
}

/// Our INVITE's branch, `z9hG4bKc{slot}x{generation}x{mac}`, with its tail replaced: what a
/// forger who can guess the numbers (or replay an old answer) puts in its response.
fn with_branch(invite: &[u8], tail: impl Fn(&str) -> String) -> Vec<u8> {
    let text = String::from_utf8(invite.to_vec()).unwrap();
    let branch = parse(invite).top_via().unwrap().branch.unwrap().to_owned();
    let (numbers, mac) = branch.rsplit_once('x').unwrap();
    assert_eq!(mac.len(), 16, "{branch}");
    text.replace(&branch, &tail(numbers)).into_bytes()
}

/// A response from the callee's own address whose branch names the right transaction
/// (slot and generation) without its MAC, or with a made-up or altered one, ends nothing:
/// the branches used to be `z9hG4bKc{slot}x{generation}`, so anyone who could send from the
/// callee's address (or spoof it) could walk them and refuse our calls with a 486.
#[test]
fn an_answer_with_a_guessed_branch_is_ignored_even_from_the_callee() {
    let mut cm = cm();
    let invite = ringing_call(&mut cm);
    let real = parse(&invite).top_via().unwrap().branch.unwrap().to_owned();
    let mac = real.rsplit_once('x').unwrap().1.to_owned();
    let flipped = format!(
        "{}{}",
        &mac[..15],
        if mac.ends_with('0') { '1' } else { '0' }
    );
    let forgeries = [
        with_branch(&invite, |n| n.to_owned()),
        with_branch(&invite, |n| format!("{n}x0000000000000000")),
        with_branch(&invite, |n| format!("{n}x{flipped}")),
        with_branch(&invite, |n| format!("{n}x{mac}00")),
    ];
    for forged in &forgeries {
        let mut busy = Vec::new();
        write_response(
            &mut busy,
            &parse(forged),
            486,
            "Busy Here",
            Some("x"),
            &[],
            b"",
        );
        cm.handle(2 * MS, addr(CALLEE), &busy);
    }
    assert!(
        sent(&mut cm).is_empty(),
        "no answer to the caller, no ACK to anyone"
    );
    assert_eq!(cm.stats().responses_forged, 4);
    assert_eq!(cm.stats().calls_active, 1);
    cm.handle(3 * MS, addr(CALLEE), &callee_ok(&parse(&invite)));
    let out = sent(&mut cm);
    assert!(
        out.iter()
            .any(|(to, b)| *to == addr(UA) && b.starts_with(b"SIP/2.0 200")),
        "the caller is connected"
    );
}

/// Leg B's Call-ID and our tags on both legs carry a MAC: a dialog cannot be named by
/// counting slots (they were `b{slot}-{generation}-{seed mix}@cm` and `a{slot}x{generation}`).
#[test]
fn tags_and_call_ids_we_hand_out_carry_a_mac() {
    let mut cm = cm();
    let invite = ringing_call(&mut cm);
    let m = parse(&invite);
    let call_id = m.call_id().unwrap().to_owned();
    let tag = m.from().unwrap().tag().unwrap().to_owned();
    cm.handle(3 * MS, addr(CALLEE), &callee_ok(&m));
    let out = sent(&mut cm);
    let (_, ok) = out
        .iter()
        .find(|(to, b)| *to == addr(UA) && b.starts_with(b"SIP/2.0 200"))
        .unwrap();
    let a_tag = parse(ok).to().unwrap().tag().unwrap().to_owned();
    let keyed = |s: &str, prefix: &str| {
        let rest = s.strip_prefix(prefix).unwrap();
        let mac = rest
            .rsplit(['x', '-'])
            .next()
            .unwrap()
            .trim_end_matches("@cm");
        assert_eq!(mac.len(), 16, "{s}");
        assert!(mac.chars().all(|c| c.is_ascii_hexdigit()), "{s}");
    };
    keyed(&call_id, "b");
    keyed(&tag, "b");
    keyed(&a_tag, "a");
    // Another key, another set: nothing follows from the seed alone.
    let mut other = cm_with(|c| c.key = Key::from_seed(99));
    let invite2 = ringing_call(&mut other);
    let m2 = parse(&invite2);
    assert_ne!(m2.call_id().unwrap(), call_id);
    assert_ne!(m2.from().unwrap().tag().unwrap(), tag);
    assert_ne!(
        m2.top_via().unwrap().branch,
        m.top_via().unwrap().branch,
        "same slot and generation, another key"
    );
}

/// A call nobody hangs up is ended at the longest call (here 60 s): a BYE to each leg and
/// its media session ended on the node. Before, an INVITE whose SDP named a third party
/// held the node's stream (and the pools) for as long as the caller liked.
#[test]
fn a_call_older_than_the_longest_call_is_ended_with_byes_and_its_media_session() {
    let mut cm = cm_with(|c| c.max_call_s = 60);
    let invite = ringing_call(&mut cm);
    cm.handle(2 * MS, addr(CALLEE), &callee_ok(&parse(&invite)));
    let out = sent(&mut cm);
    let (_, ok) = out
        .iter()
        .find(|(to, b)| *to == addr(UA) && b.starts_with(b"SIP/2.0 200"))
        .unwrap();
    let ok = parse(ok);
    let ack = format!(
        "ACK sip:cm@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {UA};branch=z9hG4bKack1\r\n\
         From: {}\r\nTo: {}\r\nCall-ID: c1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        ok.header(HeaderName::From).unwrap(),
        ok.header(HeaderName::To).unwrap()
    );
    cm.handle(3 * MS, addr(UA), ack.as_bytes());
    let media = cm
        .node_commands()
        .find_map(|(_, c)| match c {
            NodeCommand::Relay { session, .. } => Some(session),
            _ => None,
        })
        .expect("the relay");
    // Probes are answered by nobody here; only the calls' own timers matter.
    let byes = |out: &[(SocketAddr, Vec<u8>)]| -> Vec<SocketAddr> {
        out.iter()
            .filter(|(_, b)| b.starts_with(b"BYE"))
            .map(|(to, _)| *to)
            .collect()
    };
    cm.advance(59 * NS);
    assert!(byes(&sent(&mut cm)).is_empty(), "not yet");
    assert_eq!(cm.stats().calls_active, 1);
    cm.advance(61 * NS);
    let mut to = byes(&sent(&mut cm));
    to.sort();
    assert_eq!(to, vec![addr(UA), addr(CALLEE)]);
    assert_eq!(cm.stats().calls_active, 0);
    assert_eq!(cm.stats().failures.get("longest call reached"), Some(&1));
    let ended: Vec<_> = cm.node_commands().map(|(_, c)| c).collect();
    assert!(
        ended.contains(&NodeCommand::End { session: media }),
        "{ended:?}"
    );
}

/// A delayed offer to a user: the callee is offered PCMU on the node as usual; the caller
/// gets the offer in our 200 once the callee answered, and its ACK's answer starts the relay.
#[test]
fn a_call_to_a_user_without_sdp_is_relayed_once_the_ack_answers() {
    let mut cm = cm();
    let out = register_out(&mut cm, 0, 1005, CALLEE, "pw-1005", 600);
    assert_eq!(parse(&out[0].1).code(), Some(200));
    let invite = request("INVITE", "sip:1005@pbxlab.test", "1004", "d1", 1, "", "");
    cm.handle(0, addr(UA), &invite);
    let (_, to_b) = sent(&mut cm)
        .into_iter()
        .find(|(to, b)| *to == addr(CALLEE) && b.starts_with(b"INVITE"))
        .expect("INVITE to the callee");
    let b_offer = pbxlab_proto::sdp::SessionDescription::parse(parse(&to_b).body()).unwrap();
    assert_eq!(b_offer.audio.unwrap().payload_types.as_slice()[0], 0);
    cm.handle(MS, addr(CALLEE), &callee_ok(&parse(&to_b)));
    let out = sent(&mut cm);
    let (_, ok) = out
        .iter()
        .find(|(to, b)| *to == addr(UA) && b.starts_with(b"SIP/2.0 200"))
        .expect("the caller's 200");
    let ok = parse(ok);
    let a_offer = pbxlab_proto::sdp::SessionDescription::parse(ok.body()).unwrap();
    assert_eq!(a_offer.audio_addr(), b_offer.audio_addr(), "one node");
    assert!(
        cm.node_commands()
            .all(|(_, c)| !matches!(c, NodeCommand::Relay { .. })),
        "no relay before the caller's answer"
    );
    let ack = format!(
        "ACK sip:cm@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {UA};branch=z9hG4bKack1\r\n\
         From: {}\r\nTo: {}\r\nCall-ID: d1\r\nCSeq: 1 ACK\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{}",
        ok.header(HeaderName::From).unwrap(),
        ok.header(HeaderName::To).unwrap(),
        offer(UA_RTP, 7).len(),
        offer(UA_RTP, 7)
    );
    cm.handle(2 * MS, addr(UA), ack.as_bytes());
    let relay = cm.node_commands().find_map(|(_, c)| match c {
        NodeCommand::Relay { a, b, .. } => Some((a, b)),
        _ => None,
    });
    let (a, b) = relay.expect("the relay");
    assert_eq!((a.remote, a.ssrc, a.codec_pt), (addr(UA_RTP), Some(7), 0));
    assert_eq!(b.remote, addr("127.0.0.1:7102"));
}

/// RFC 4028's session timer runs from the 2xx that set it up, not from the INVITE: a caller
/// that asked for 90 s and whose callee rang for a minute used to get 500 (`session timer
/// expired`) while it rang, 58 s after its INVITE. It is answered, and then has its whole
/// interval (less the margin) to refresh.
#[test]
fn a_session_timer_starts_with_the_answer_not_while_the_callee_rings() {
    let mut cm = cm();
    let out = register_out(&mut cm, 0, 1005, CALLEE, "pw-1005", 600);
    assert_eq!(parse(&out[0].1).code(), Some(200));
    let timer = "Content-Type: application/sdp\r\nSupported: timer\r\nSession-Expires: 90\r\n";
    cm.handle(
        0,
        addr(UA),
        &request(
            "INVITE",
            "sip:1005@pbxlab.test",
            "1004",
            "st1",
            1,
            timer,
            &offer(UA_RTP, 7),
        ),
    );
    let invite = invite_to(&sent(&mut cm), CALLEE);
    ring(&mut cm, MS, CALLEE, &invite);
    // A minute of ringing: past 90 - 30 s from the INVITE, and nothing is ended.
    let out = run_until(&mut cm, MS, 70 * NS);
    assert!(out.is_empty(), "{:?}", firsts(&out));
    assert_eq!(cm.stats().calls_active, 1);
    // Answered at 70 s: the caller gets the timer in its 200 and is ACKed.
    cm.handle(70 * NS, addr(CALLEE), &callee_ok(&parse(&invite)));
    let out = sent(&mut cm);
    let (_, ok) = out
        .iter()
        .find(|(to, b)| *to == addr(UA) && b.starts_with(b"SIP/2.0 200"))
        .expect("the caller's 200");
    let ok = parse(ok);
    assert!(ok.headers().iter().any(|h| h.raw_name == "Session-Expires"));
    ack_a(&mut cm, 70 * NS + MS, "1004", "st1", &ok);
    // Unrefreshed, it is due 60 s after the answer (90 - 30), not before.
    let out = run_until(&mut cm, 70 * NS + MS, 129 * NS);
    assert!(
        !out.iter().any(|(_, b)| b.starts_with(b"BYE")),
        "{:?}",
        firsts(&out)
    );
    assert_eq!(cm.stats().calls_active, 1);
    let out = run_until(&mut cm, 129 * NS, 132 * NS);
    assert!(
        out.iter()
            .any(|(to, b)| *to == addr(UA) && b.starts_with(b"BYE"))
    );
    assert_eq!(cm.stats().failures.get("session timer expired"), Some(&1));
}

/// A caller that offers `inactive` (RFC 3264 5.1), as `pbxlab drill` does when it calls each
/// user to check the registrations, sets up a call without audio: the callee is offered
/// `inactive` and the caller's answer says it too. Before, both were `sendrecv`, and the
/// callee rated a stream nobody sent.
#[test]
fn an_inactive_offer_reaches_the_callee_and_comes_back_in_the_answer() {
    use pbxlab_proto::sdp::{Direction, SessionDescription};
    let direction = |m: &Message<'_>| {
        SessionDescription::parse(m.body())
            .unwrap()
            .audio
            .unwrap()
            .direction
    };
    let mut cm = cm();
    let out = register_out(&mut cm, 0, 1005, CALLEE, "pw-1005", 600);
    assert_eq!(parse(&out[0].1).code(), Some(200));
    let body = format!("{}a=inactive\r\n", offer(UA_RTP, 7));
    cm.handle(
        0,
        addr(UA),
        &request(
            "INVITE",
            "sip:1005@pbxlab.test",
            "1004",
            "i1",
            1,
            "Content-Type: application/sdp\r\n",
            &body,
        ),
    );
    let (_, to_b) = sent(&mut cm)
        .into_iter()
        .find(|(to, b)| *to == addr(CALLEE) && b.starts_with(b"INVITE"))
        .expect("INVITE to the callee");
    assert_eq!(direction(&parse(&to_b)), Direction::Inactive);
    let mut answer = Vec::new();
    write_response(
        &mut answer,
        &parse(&to_b),
        200,
        "OK",
        Some("cal"),
        &[
            ("Contact", "<sip:1005@127.0.0.1:7100>"),
            ("Content-Type", "application/sdp"),
        ],
        format!("{}a=inactive\r\n", offer("127.0.0.1:7102", 9)).as_bytes(),
    );
    cm.handle(MS, addr(CALLEE), &answer);
    let out = sent(&mut cm);
    let (_, ok) = out
        .iter()
        .find(|(to, b)| *to == addr(UA) && b.starts_with(b"SIP/2.0 200"))
        .expect("the caller's 200");
    assert_eq!(direction(&parse(ok)), Direction::Inactive);
    // A plain offer still gets sendrecv both ways.
    cm.handle(
        2 * MS,
        addr(UA),
        &request(
            "INVITE",
            "sip:1005@pbxlab.test",
            "1004",
            "i2",
            1,
            "Content-Type: application/sdp\r\n",
            &offer(UA_RTP, 8),
        ),
    );
    let (_, to_b) = sent(&mut cm)
        .into_iter()
        .find(|(to, b)| *to == addr(CALLEE) && b.starts_with(b"INVITE"))
        .expect("INVITE to the callee");
    assert_eq!(direction(&parse(&to_b)), Direction::SendRecv);
}
