//! The user-agent engine with a fake clock and a scripted peer: no sockets, no sleeping. Each
//! test jumps time and checks exactly what the engine sends.

use std::net::SocketAddr;
use std::time::Duration;

use pbxlab_loadgen::engine::{
    Arrivals, Callee, Config, DRAINED, Dtmf, Engine, Grid, Hold, InProgress, MediaCommand,
    NOT_HUNG_UP, Nanos, TARGET_SILENT, Workload, auto_grid, run_id,
};
use pbxlab_loadgen::messages::{MessageCount, MessageKind};
use pbxlab_loadgen::metrics::Metric;
use pbxlab_loadgen::users::{Password, User, UserOrder, Users};
use pbxlab_proto::digest;
use pbxlab_proto::sip::{self, HeaderName, Method};

const MS: Nanos = 1_000_000;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn config() -> Config {
    Config {
        target: addr(5060),
        local: addr(6000),
        rtp_local: addr(7000),
        domain: "127.0.0.1".into(),
        users: Users::new(),
        user_order: UserOrder::Sequential,
        register: false,
        register_rate: 100.0,
        expires_s: 3600,
        workloads: vec![Workload::new(
            "echo",
            Callee::Service("echo".into()),
            1,
            10.0,
            Hold::Fixed(Duration::from_millis(1000)),
        )],
        reserved: 0,
        shard: (0, 1),
        rtp_fraction: 0.0,
        max_concurrent: None,
        ring_delay: Duration::from_millis(300),
        service_level: Duration::from_secs(20),
        t1: Duration::from_millis(500),
        t2: Duration::from_secs(4),
        seed: 1,
        run_id: 77,
        arrival_grid: Grid::Exact,
        drain_limit: Duration::from_secs(3600),
        callers_password: Password::Prefix("pw-".into()),
    }
}

/// Users with these numbers and the password rule `pw-N`.
fn numbered(numbers: impl IntoIterator<Item = u32>) -> Users {
    Users::numbered(numbers, &Password::Prefix("pw-".into()))
}

/// Everything the engine sends now, as text.
fn sent(e: &mut Engine) -> Vec<(SocketAddr, String)> {
    let mut out = Vec::new();
    e.transmit_all(|datagrams| {
        out.extend(
            datagrams
                .iter()
                .map(|(to, bytes)| (*to, String::from_utf8_lossy(bytes).into_owned())),
        );
    });
    out
}

fn step(e: &mut Engine, now: Nanos) -> Vec<(SocketAddr, String)> {
    e.advance(now);
    sent(e)
}

fn methods(msgs: &[(SocketAddr, String)]) -> Vec<String> {
    msgs.iter()
        .map(|(_, m)| m.split(' ').next().unwrap_or_default().to_owned())
        .collect()
}

/// A response to `req` from the peer, with its To tag and extra header lines.
fn reply(req: &str, status: &str, extra: &str, body: &str) -> String {
    let msg = sip::parse_datagram(req.as_bytes()).expect("engine sends valid SIP");
    let mut out = format!("SIP/2.0 {status}\r\n");
    for v in msg.values(HeaderName::Via) {
        out.push_str(&format!("Via: {v}\r\n"));
    }
    let to = msg.header(HeaderName::To).expect("To");
    let tag = if to.contains("tag=") {
        String::new()
    } else {
        ";tag=peer".into()
    };
    out.push_str(&format!(
        "From: {}\r\nTo: {to}{tag}\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        msg.header(HeaderName::From).expect("From"),
        msg.call_id().expect("Call-ID"),
        msg.header(HeaderName::CSeq).expect("CSeq"),
        body.len()
    ));
    out
}

#[test]
fn invite_retransmits_with_timer_a_and_times_out_with_timer_b() {
    let mut e = Engine::new(config());
    let first = step(&mut e, 0);
    assert_eq!(methods(&first), ["INVITE"]);
    assert_eq!(first[0].0, addr(5060));
    // Timer A: 500 ms, then 1 s, 2 s, 4 s... after the previous send.
    let mut at = 0;
    let mut interval = 500 * MS;
    for _ in 0..5 {
        assert!(
            step(&mut e, at + interval - 1).is_empty(),
            "not before {interval}"
        );
        at += interval;
        let again = step(&mut e, at);
        assert_eq!(again.len(), 1, "retransmission due at {at}");
        assert_eq!(
            again[0].1, first[0].1,
            "a retransmission is the same message"
        );
        interval *= 2;
    }
    // Timer B: 64 * T1 = 32 s after the first send.
    assert_eq!(e.metrics.calls.failed, 0);
    step(&mut e, 32_000 * MS);
    assert_eq!(e.metrics.calls.failed, 1);
    assert_eq!(e.metrics.failures["INVITE timeout"], 1);
    assert!(e.finished());
    assert_eq!(
        e.messages.by_kind[&MessageKind::Request("INVITE")],
        MessageCount {
            sent: 6,
            retransmitted: 5,
            timeouts: 1,
            received: 0
        }
    );
}

#[test]
fn a_call_completes_and_measures_from_the_intended_start() {
    let mut e = Engine::new(config());
    let invite = step(&mut e, 0).remove(0).1;
    e.handle(
        2 * MS,
        addr(5060),
        reply(&invite, "100 Trying", "", "").as_bytes(),
    );
    e.handle(
        30 * MS,
        addr(5060),
        reply(&invite, "180 Ringing", "", "").as_bytes(),
    );
    assert!(
        step(&mut e, 600 * MS).is_empty(),
        "no retransmission after a provisional response"
    );
    let ok = reply(
        &invite,
        "200 OK",
        "Contact: <sip:echo@127.0.0.1:5070>\r\n",
        "",
    );
    e.handle(700 * MS, addr(5060), ok.as_bytes());
    let ack = sent(&mut e);
    assert_eq!(methods(&ack), ["ACK"]);
    assert!(
        ack[0].1.starts_with("ACK sip:echo@127.0.0.1:5070 SIP/2.0"),
        "ACK to the remote target: {}",
        ack[0].1
    );
    assert_eq!(
        ack[0].0,
        addr(5070),
        "no route set: straight to the Contact"
    );
    // A retransmitted 200 (our ACK was lost) is ACKed again.
    e.handle(800 * MS, addr(5060), ok.as_bytes());
    assert_eq!(methods(&sent(&mut e)), ["ACK"]);
    // BYE after the 1 s hold; Timer E retransmits it up to T2.
    assert!(step(&mut e, 1_699 * MS).is_empty());
    let bye = step(&mut e, 1_700 * MS);
    assert_eq!(methods(&bye), ["BYE"]);
    assert!(bye[0].1.contains("CSeq: 2 BYE"));
    assert_eq!(methods(&step(&mut e, 2_200 * MS)), ["BYE"]);
    e.handle(
        2_250 * MS,
        addr(5070),
        reply(&bye[0].1, "200 OK", "", "").as_bytes(),
    );
    assert!(e.finished());
    assert_eq!(e.metrics.calls.succeeded, 1);
    e.metrics.close_interval(Duration::from_secs(3));
    let setup = e.metrics.total(pbxlab_loadgen::metrics::Metric::Setup);
    assert_eq!(setup.len(), 1);
    assert!(
        setup.equivalent(setup.max(), 700_000),
        "700 ms from the intended start"
    );
    let pdd = e.metrics.total(pbxlab_loadgen::metrics::Metric::Pdd);
    assert!(pdd.equivalent(pdd.max(), 30_000));
    let bye_latency = e.metrics.total(pbxlab_loadgen::metrics::Metric::Bye);
    assert!(
        bye_latency.equivalent(bye_latency.max(), 550_000),
        "from the first BYE: {}",
        bye_latency.max()
    );
    // What SIPp's screen would show: every message both ways, retransmissions apart.
    let count = |kind| e.messages.by_kind.get(&kind).copied().unwrap_or_default();
    let invite = count(MessageKind::Request("INVITE"));
    let (acks, byes) = (
        count(MessageKind::Request("ACK")),
        count(MessageKind::Request("BYE")),
    );
    assert_eq!((invite.sent, invite.retransmitted), (1, 0));
    assert_eq!(
        (acks.sent, acks.retransmitted),
        (2, 1),
        "one for the repeated 200"
    );
    assert_eq!((byes.sent, byes.retransmitted), (2, 1));
    assert_eq!(count(MessageKind::Response(100)).received, 1);
    assert_eq!(count(MessageKind::Response(180)).received, 1);
    assert_eq!(
        count(MessageKind::Response(200)).received,
        3,
        "two to the INVITE, one to the BYE"
    );
    // A late 200 to the BYE finds no call: unexpected.
    e.handle(
        2_300 * MS,
        addr(5070),
        reply(&bye[0].1, "200 OK", "", "").as_bytes(),
    );
    assert_eq!((e.messages.unexpected, e.stray), (1, 1));
}

#[test]
fn new_attempts_leave_first_and_requests_of_one_length_queue_together() {
    let mut cfg = config();
    cfg.workloads[0].calls = 3;
    cfg.workloads[0].rate = 1000.0;
    cfg.workloads[0].hold = Hold::Fixed(Duration::from_micros(1500));
    let mut e = Engine::new(cfg);
    let a = step(&mut e, 0).remove(0).1;
    let ok = |invite: &str| {
        reply(
            invite,
            "200 OK",
            "Contact: <sip:echo@127.0.0.1:5060>\r\n",
            "",
        )
    };
    // Call A's ACK waits for the next round, which starts call B: B's INVITE goes first.
    e.handle(MS / 2, addr(5060), ok(&a).as_bytes());
    let round = step(&mut e, MS);
    assert_eq!(methods(&round), ["INVITE", "ACK"]);
    let b = &round[0].1;
    // At 2 ms: B's ACK, C's INVITE and A's BYE (1.5 ms after its answer). The INVITE leaves
    // first; the ACK and the BYE, of one length, are adjacent.
    e.handle(MS + MS / 2, addr(5060), ok(b).as_bytes());
    let round = step(&mut e, 2 * MS);
    assert_eq!(methods(&round), ["INVITE", "ACK", "BYE"]);
    assert_eq!(round[1].1.len(), round[2].1.len(), "{round:?}");
}

#[test]
fn the_invites_of_a_run_have_one_length_whatever_their_slot() {
    // Slots 0 to 11 (one and two digits), none answered: the numbers are fixed-width.
    let mut cfg = config();
    cfg.workloads[0].calls = 12;
    cfg.workloads[0].rate = 1000.0;
    let mut e = Engine::new(cfg);
    let lengths: Vec<usize> = (0..12)
        .flat_map(|ms| step(&mut e, ms * MS))
        .map(|(_, invite)| invite.len())
        .collect();
    assert_eq!(lengths.len(), 12);
    assert!(lengths.iter().all(|&l| l == lengths[0]), "{lengths:?}");
}

#[test]
fn intended_starts_are_rounded_up_to_the_arrival_grid() {
    let mut cfg = config();
    cfg.arrival_grid = Grid::Every(Duration::from_millis(1));
    cfg.workloads[0].calls = 8;
    cfg.workloads[0].rate = 4000.0;
    let mut e = Engine::new(cfg);
    assert_eq!(e.next_deadline(), Some(0));
    assert_eq!(methods(&step(&mut e, 0)), ["INVITE"]);
    // Due at 0.25, 0.5, 0.75 and 1 ms: all four on the 1 ms grid point, none before it.
    assert_eq!(e.next_deadline(), Some(MS));
    assert!(step(&mut e, MS - 1).is_empty());
    let round = step(&mut e, MS);
    assert_eq!(methods(&round), ["INVITE"; 4]);
    // The first of them (intended at 0.25 ms) answered 100 µs after it left: 100 µs of setup,
    // not 850.
    let ok = reply(
        &round[0].1,
        "200 OK",
        "Contact: <sip:echo@127.0.0.1:5060>\r\n",
        "",
    );
    e.handle(MS + 100_000, addr(5060), ok.as_bytes());
    assert_eq!(only_us(&mut e, Metric::Setup, 2 * MS), 100);
}

#[test]
fn the_automatic_grid_keeps_two_attempts_to_a_wake_within_one_to_two_ms() {
    let us = Duration::from_micros;
    for (rate, grid) in [
        (0.0, 2000),
        (100.0, 2000),
        (1000.0, 2000),
        (1600.0, 1250),
        (2000.0, 1000),
        (50_000.0, 1000),
    ] {
        assert_eq!(auto_grid(rate), us(grid), "{rate}/s");
    }
    // Each phase has its own: registrations at 10,000/s, then calls at 1,000/s.
    let mut cfg = config();
    cfg.arrival_grid = Grid::Auto;
    cfg.users = numbered([1000]);
    cfg.register = true;
    cfg.register_rate = 10_000.0;
    cfg.workloads[0].calls = 3;
    cfg.workloads[0].rate = 1000.0;
    let mut e = Engine::new(cfg);
    assert_eq!(e.grids(), (us(1000), us(2000)));
    assert_eq!(e.grid(), us(1000));
    let reg = step(&mut e, 0);
    assert_eq!(methods(&reg), ["REGISTER"]);
    let ok = reply(&reg[0].1, "200 OK", "", "");
    e.handle(300_000, addr(5060), ok.as_bytes());
    assert!(e.registered());
    assert_eq!(e.grid(), us(2000));
    // Calls intended at 0.3, 1.3 and 2.3 ms start on the 2 ms grid: two at 2 ms, one at 4.
    assert_eq!(e.next_deadline(), Some(2 * MS));
    assert!(step(&mut e, 2 * MS - 1).is_empty());
    assert_eq!(methods(&step(&mut e, 2 * MS)), ["INVITE"; 2]);
    assert_eq!(e.next_deadline(), Some(4 * MS));
    assert_eq!(methods(&step(&mut e, 4 * MS)), ["INVITE"]);
}

#[test]
fn bye_retransmissions_are_capped_at_t2() {
    let mut e = Engine::new(config());
    let invite = step(&mut e, 0).remove(0).1;
    e.handle(
        MS,
        addr(5060),
        reply(
            &invite,
            "200 OK",
            "Contact: <sip:echo@127.0.0.1:5070>\r\n",
            "",
        )
        .as_bytes(),
    );
    sent(&mut e);
    let start = 1_001 * MS;
    assert_eq!(methods(&step(&mut e, start)), ["BYE"]);
    // 0.5, 1, 2, 4, 4, 4 s: doubling stops at T2 = 4 s.
    let mut at = start;
    for gap in [500, 1000, 2000, 4000, 4000, 4000] {
        at += gap * MS;
        assert!(step(&mut e, at - 1).is_empty());
        assert_eq!(methods(&step(&mut e, at)), ["BYE"], "at +{gap} ms");
    }
    step(&mut e, start + 32_000 * MS);
    assert_eq!(e.metrics.failures["BYE timeout"], 1);
}

/// The engine's first INVITE, answered with a 407; returns the INVITE and what the engine sent
/// next, which must be the ACK and the INVITE again.
fn challenged(e: &mut Engine) -> (String, Vec<(SocketAddr, String)>) {
    let invite = step(e, 0).remove(0).1;
    let challenge =
        "Proxy-Authenticate: Digest realm=\"127.0.0.1\", nonce=\"abc123\", qop=\"auth\"\r\n";
    e.handle(
        MS,
        addr(5060),
        reply(&invite, "407 Proxy Authentication Required", challenge, "").as_bytes(),
    );
    let out = sent(e);
    assert_eq!(methods(&out), ["ACK", "INVITE"]);
    (invite, out)
}

#[test]
fn a_407_gets_an_ack_and_an_authenticated_invite_with_the_next_cseq() {
    let mut cfg = config();
    cfg.users = numbered([1000]);
    cfg.register = false;
    let mut e = Engine::new(cfg);
    let (invite, out) = challenged(&mut e);
    let ack = sip::parse_datagram(out[0].1.as_bytes()).expect("valid");
    let first = sip::parse_datagram(invite.as_bytes()).expect("valid");
    assert_eq!(
        ack.top_via().and_then(|v| v.branch),
        first.top_via().and_then(|v| v.branch),
        "ACK to a non-2xx shares the INVITE's branch"
    );
    assert!(ack.to().and_then(|t| t.tag()).is_some());
    let second = sip::parse_datagram(out[1].1.as_bytes()).expect("valid");
    assert_eq!(second.cseq().map(|c| c.seq), Some(2));
    assert_ne!(
        second.top_via().and_then(|v| v.branch),
        first.top_via().and_then(|v| v.branch)
    );
    let auth = second
        .header(HeaderName::ProxyAuthorization)
        .expect("Proxy-Authorization");
    assert!(
        auth.contains("username=\"1000\"")
            && auth.contains("nc=00000001")
            && auth.contains("nonce=\"abc123\""),
        "{auth}"
    );
    assert_eq!(second.call_id(), first.call_id());
}

#[test]
fn a_caller_of_a_run_without_users_answers_a_407_as_its_number_with_the_rules_password() {
    // `pbxlab load --service echo` at pbxlab's cluster: caller 1000 is one of its users, so the
    // INVITE is challenged, and the answer is user 1000's by the password rule.
    for (rule, password) in [
        (Password::Prefix("pw-".into()), "pw-1000"),
        (Password::Shared("s3cret".into()), "s3cret"),
    ] {
        let mut cfg = config();
        cfg.callers_password = rule;
        let mut e = Engine::new(cfg);
        let (invite, out) = challenged(&mut e);
        assert!(invite.contains("From: <sip:1000@"), "{invite}");
        let second = sip::parse_datagram(out[1].1.as_bytes()).expect("valid");
        let auth = second
            .header(HeaderName::ProxyAuthorization)
            .expect("Proxy-Authorization");
        let parsed = digest::parse_authorization(auth).expect("parses");
        assert_eq!(parsed.username, "1000");
        assert!(
            digest::verify(&parsed, "INVITE", password),
            "answered with {password}: {auth}"
        );
        assert!(!digest::verify(&parsed, "INVITE", "wrong"));
    }
}

#[test]
fn an_incoming_call_rings_then_is_answered_and_the_200_repeats_until_acked() {
    let mut cfg = config();
    cfg.users = numbered([1000, 1001]);
    cfg.workloads[0].calls = 0;
    cfg.rtp_fraction = 1.0;
    let mut e = Engine::new(cfg);
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9002 RTP/AVP 0\r\n";
    let invite = format!(
        "INVITE sip:1001@127.0.0.1:6000 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKproxy1\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:9000;branch=z9hG4bKcaller1\r\nRecord-Route: <sip:127.0.0.1:5060;lr>\r\n\
         From: <sip:1000@127.0.0.1>;tag=caller\r\nTo: <sip:1001@127.0.0.1>\r\nCall-ID: in-1@elsewhere\r\nCSeq: 7 INVITE\r\n\
         Contact: <sip:1000@127.0.0.1:9000>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    e.handle(0, addr(5060), invite.as_bytes());
    let ringing = sent(&mut e);
    assert_eq!(ringing.len(), 1);
    let r = sip::parse_datagram(ringing[0].1.as_bytes()).expect("valid 180");
    assert_eq!(r.code(), Some(180));
    assert_eq!(r.vias().count(), 2, "both Vias come back");
    assert_eq!(r.values(HeaderName::RecordRoute).count(), 1);
    let tag = r.to().and_then(|t| t.tag()).expect("to-tag").to_owned();
    // A retransmitted INVITE while ringing gets the 180 again.
    e.handle(100 * MS, addr(5060), invite.as_bytes());
    assert_eq!(sent(&mut e).len(), 1);
    assert!(step(&mut e, 299 * MS).is_empty());
    let ok = step(&mut e, 300 * MS);
    let ok = sip::parse_datagram(ok[0].1.as_bytes()).expect("valid 200");
    assert_eq!(ok.code(), Some(200));
    assert_eq!(
        ok.to().and_then(|t| t.tag()),
        Some(tag.as_str()),
        "one dialog, one tag"
    );
    assert!(!ok.body().is_empty(), "200 carries our SDP");
    // Timer G: the 200 repeats after T1 until the ACK comes.
    assert_eq!(step(&mut e, 800 * MS).len(), 1);
    let ack = format!(
        "ACK sip:1001@127.0.0.1:6000 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKproxy2\r\n\
         From: <sip:1000@127.0.0.1>;tag=caller\r\nTo: <sip:1001@127.0.0.1>;tag={tag}\r\nCall-ID: in-1@elsewhere\r\nCSeq: 7 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    e.handle(900 * MS, addr(5060), ack.as_bytes());
    let media: Vec<MediaCommand> = e.media_commands().collect();
    assert!(
        matches!(media.as_slice(), [MediaCommand::Start { dest, .. }] if *dest == addr(9002)),
        "{media:?}"
    );
    assert!(
        step(&mut e, 5_000 * MS).is_empty(),
        "no more 200s after the ACK"
    );
    // A re-INVITE moves the media.
    let reinvite = invite
        .replace(
            "To: <sip:1001@127.0.0.1>",
            &format!("To: <sip:1001@127.0.0.1>;tag={tag}"),
        )
        .replace("CSeq: 7", "CSeq: 8")
        .replace("9002", "9102")
        .replace("z9hG4bKproxy1", "z9hG4bKproxy3");
    e.handle(6_000 * MS, addr(5060), reinvite.as_bytes());
    let answer = sent(&mut e);
    assert_eq!(
        sip::parse_datagram(answer[0].1.as_bytes())
            .expect("valid")
            .code(),
        Some(200)
    );
    let media: Vec<MediaCommand> = e.media_commands().collect();
    assert!(
        matches!(media.as_slice(), [MediaCommand::Redirect { dest, .. }] if *dest == addr(9102)),
        "{media:?}"
    );
    // BYE from the caller ends it.
    let bye = ack.replace("ACK sip", "BYE sip").replace("7 ACK", "9 BYE");
    e.handle(7_000 * MS, addr(5060), bye.as_bytes());
    let out = sent(&mut e);
    assert_eq!(
        sip::parse_datagram(out[0].1.as_bytes())
            .expect("valid")
            .code(),
        Some(200)
    );
    assert_eq!(e.active_calls(), 0);
    assert_eq!(e.active_legs(), 0);
    // Our side of it, message by message: the 180 and the 200 repeated, and a 200 to each of
    // the re-INVITE and the BYE.
    let count = |kind| e.messages.by_kind.get(&kind).copied().unwrap_or_default();
    let ringing = count(MessageKind::Response(180));
    assert_eq!((ringing.sent, ringing.retransmitted), (2, 1));
    let ok = count(MessageKind::Response(200));
    assert_eq!((ok.sent, ok.retransmitted, ok.timeouts), (4, 1, 0));
    assert_eq!(count(MessageKind::Request("INVITE")).received, 3);
    assert_eq!(count(MessageKind::Request("ACK")).received, 1);
    assert_eq!(count(MessageKind::Request("BYE")).received, 1);
    assert_eq!(e.messages.unexpected, 0);
}

/// An `inactive` offer (RFC 3264 5.1) sets up a call without audio: the answers say
/// `inactive`, and no stream starts or moves, so nothing is rated as a silent leg.
#[test]
fn an_incoming_call_offered_inactive_is_answered_inactive_and_runs_no_media() {
    let mut cfg = config();
    cfg.users = numbered([1000, 1001]);
    cfg.workloads[0].calls = 0;
    cfg.rtp_fraction = 1.0;
    let mut e = Engine::new(cfg);
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9002 RTP/AVP 0\r\na=inactive\r\n";
    let invite = format!(
        "INVITE sip:1001@127.0.0.1:6000 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKin1\r\n\
         From: <sip:1000@127.0.0.1>;tag=caller\r\nTo: <sip:1001@127.0.0.1>\r\nCall-ID: quiet-1@elsewhere\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:1000@127.0.0.1:9000>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    e.handle(0, addr(5060), invite.as_bytes());
    assert_eq!(sent(&mut e).len(), 1, "180");
    let ok = step(&mut e, 300 * MS);
    let ok = sip::parse_datagram(ok[0].1.as_bytes()).expect("valid 200");
    assert_eq!(ok.code(), Some(200));
    let body = String::from_utf8_lossy(ok.body()).into_owned();
    assert!(body.contains("a=inactive\r\n"), "{body}");
    let tag = ok.to().and_then(|t| t.tag()).expect("to-tag").to_owned();
    let ack = format!(
        "ACK sip:1001@127.0.0.1:6000 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKin2\r\n\
         From: <sip:1000@127.0.0.1>;tag=caller\r\nTo: <sip:1001@127.0.0.1>;tag={tag}\r\nCall-ID: quiet-1@elsewhere\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    e.handle(400 * MS, addr(5060), ack.as_bytes());
    assert_eq!(e.media_commands().count(), 0, "no stream starts");
    // A re-INVITE (a failover moving the call) is answered inactive again and moves nothing.
    let reinvite = invite
        .replace(
            "To: <sip:1001@127.0.0.1>",
            &format!("To: <sip:1001@127.0.0.1>;tag={tag}"),
        )
        .replace("CSeq: 1", "CSeq: 2")
        .replace("9002", "9102")
        .replace("z9hG4bKin1", "z9hG4bKin3");
    e.handle(500 * MS, addr(5060), reinvite.as_bytes());
    let answer = sent(&mut e);
    let answer = sip::parse_datagram(answer[0].1.as_bytes()).expect("valid");
    assert_eq!(answer.code(), Some(200));
    assert!(String::from_utf8_lossy(answer.body()).contains("a=inactive\r\n"));
    assert_eq!(e.media_commands().count(), 0, "no stream moves");
    let bye = ack.replace("ACK sip", "BYE sip").replace("1 ACK", "3 BYE");
    e.handle(600 * MS, addr(5060), bye.as_bytes());
    assert_eq!(e.active_calls(), 0);
    assert_eq!(e.media_commands().count(), 0, "no stream to stop");
}

#[test]
fn registration_answers_the_challenge_and_measures_across_it() {
    let mut cfg = config();
    cfg.users = numbered([1000]);
    cfg.register = true;
    cfg.workloads[0].calls = 0;
    let mut e = Engine::new(cfg);
    let reg = step(&mut e, 0);
    assert_eq!(methods(&reg), ["REGISTER"]);
    let challenge = "WWW-Authenticate: Digest realm=\"127.0.0.1\", nonce=\"n1\", algorithm=MD5, qop=\"auth\"\r\n";
    e.handle(
        3 * MS,
        addr(5060),
        reply(&reg[0].1, "401 Unauthorized", challenge, "").as_bytes(),
    );
    let again = sent(&mut e);
    let msg = sip::parse_datagram(again[0].1.as_bytes()).expect("valid");
    assert_eq!(msg.method(), Some(Method::Register));
    assert_eq!(msg.cseq().map(|c| c.seq), Some(2));
    assert!(
        msg.header(HeaderName::Authorization)
            .is_some_and(|a| a.contains("response="))
    );
    e.handle(
        5 * MS,
        addr(5060),
        reply(&again[0].1, "200 OK", "", "").as_bytes(),
    );
    assert_eq!(e.metrics.registrations.succeeded, 1);
    assert!(e.registered());
    e.metrics.close_interval(Duration::from_secs(1));
    let h = e.metrics.total(pbxlab_loadgen::metrics::Metric::Register);
    assert!(
        h.equivalent(h.max(), 5_000),
        "from the first REGISTER across the 401: {}",
        h.max()
    );
}

/// Our users calling each other through a proxy: the callee's INVITE arrives with the caller's
/// own Call-ID and must start a new (ringing) dialog, not look like a re-INVITE.
#[test]
fn once_requests_are_challenged_the_driver_is_told_when_the_next_challenges_are_due() {
    let mut cfg = config();
    cfg.users = numbered([1000, 1001, 1002]);
    cfg.register = true;
    cfg.register_rate = 1000.0;
    cfg.workloads[0].calls = 0;
    let challenge = "WWW-Authenticate: Digest realm=\"127.0.0.1\", nonce=\"n1\", algorithm=MD5, qop=\"auth\"\r\n";
    let mut e = Engine::new(cfg);
    let first = step(&mut e, 0);
    assert_eq!(e.challenges_due(), None, "no challenge seen yet");
    // Challenged 300 µs after it left: the next REGISTER's challenge is expected 600 µs after
    // it (the smoothed round trip plus twice its variation, which starts at half of it).
    let reply_401 = |req: &str| reply(req, "401 Unauthorized", challenge, "");
    e.handle(300_000, addr(5060), reply_401(&first[0].1).as_bytes());
    assert_eq!(methods(&sent(&mut e)), ["REGISTER"]);
    assert_eq!(
        e.challenges_due(),
        None,
        "an answer with credentials is not challenged"
    );
    let second = step(&mut e, MS);
    assert_eq!(methods(&second), ["REGISTER"]);
    assert_eq!(e.challenges_due(), Some(MS + 600_000));
    // A second sample of 300 µs: srtt 300, rttvar (3 x 150 + 0) / 4 = 112.5 µs.
    e.handle(MS + 300_000, addr(5060), reply_401(&second[0].1).as_bytes());
    sent(&mut e);
    step(&mut e, 2 * MS);
    assert_eq!(e.challenges_due(), Some(2 * MS + 300_000 + 225_000));
}

#[test]
fn calls_between_our_own_users_through_a_proxy_ring_and_complete() {
    let mut cfg = config();
    cfg.users = numbered([1000, 1001]);
    cfg.workloads[0].callee = Callee::Users;
    let mut e = Engine::new(cfg);
    let proxy = addr(5060);
    // The proxy forwards a request back to us with its own Via on top.
    let forward = |m: &str| {
        m.replacen(
            "\r\nVia: ",
            "\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKpx\r\nVia: ",
            1,
        )
    };
    let invite = step(&mut e, 0).remove(0).1;
    e.handle(MS, proxy, forward(&invite).as_bytes());
    let ringing = sent(&mut e);
    let r = sip::parse_datagram(ringing[0].1.as_bytes()).expect("valid");
    assert_eq!(r.code(), Some(180), "the callee rings: {}", ringing[0].1);
    // We hold both legs of the call, ours and the one we answer: that is one call.
    assert_eq!((e.active_calls(), e.active_legs()), (1, 2));
    // The proxy strips its Via and hands the 180 to the caller.
    let strip = |m: &str| {
        m.replacen(
            "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKpx\r\n",
            "",
            1,
        )
    };
    e.handle(2 * MS, proxy, strip(&ringing[0].1).as_bytes());
    assert!(step(&mut e, 300 * MS).is_empty(), "still ringing");
    let ok = step(&mut e, 301 * MS);
    assert_eq!(
        sip::parse_datagram(ok[0].1.as_bytes())
            .expect("valid")
            .code(),
        Some(200)
    );
    e.handle(302 * MS, proxy, strip(&ok[0].1).as_bytes());
    let ack = sent(&mut e);
    assert_eq!(methods(&ack), ["ACK"]);
    e.handle(303 * MS, proxy, ack[0].1.as_bytes());
    let bye = step(&mut e, 1_302 * MS);
    assert_eq!(methods(&bye), ["BYE"]);
    e.handle(1_303 * MS, proxy, bye[0].1.as_bytes());
    let bye_ok = sent(&mut e);
    assert_eq!(
        sip::parse_datagram(bye_ok[0].1.as_bytes())
            .expect("valid")
            .code(),
        Some(200)
    );
    e.handle(1_304 * MS, proxy, bye_ok[0].1.as_bytes());
    assert_eq!(e.metrics.calls.succeeded, 1);
    assert_eq!(e.active_calls(), 0, "both legs ended");
    assert_eq!(e.active_legs(), 0, "both legs ended");
    assert_eq!(e.peak_calls(), 1);
    e.metrics.close_interval(Duration::from_secs(2));
    let setup = e.metrics.total(pbxlab_loadgen::metrics::Metric::Setup);
    assert!(
        setup.equivalent(setup.max(), 302_000),
        "rang for the ring delay: {}",
        setup.max()
    );
}

#[test]
fn the_concurrency_limit_counts_calls_not_the_legs_we_answer() {
    // Two calls between our own users, at most two at once: while the first rings we hold both
    // of its legs, and the second call must still start.
    let mut cfg = config();
    cfg.users = numbered([1000, 1001, 1002, 1003]);
    cfg.workloads[0].callee = Callee::Users;
    cfg.workloads[0].calls = 2;
    cfg.workloads[0].rate = 1000.0;
    cfg.max_concurrent = Some(2);
    let mut e = Engine::new(cfg);
    let invite = step(&mut e, 0).remove(0).1;
    e.handle(MS / 2, addr(5060), invite.as_bytes());
    assert_eq!(status(&sent(&mut e)[0].1), Some(180));
    assert_eq!((e.active_calls(), e.active_legs()), (1, 2));
    assert_eq!(
        methods(&step(&mut e, MS)),
        ["INVITE"],
        "the second call starts"
    );
    assert_eq!((e.active_calls(), e.peak_calls()), (2, 2));
}

// ---- services of pbxlab's cluster -------------------------------------------------------------

fn sdp(port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\n"
    )
}

/// A request from the peer inside the dialog that our INVITE `invite` started (the peer's
/// tag is `peer`, as `reply` gives it).
fn from_peer(invite: &str, method: &str, cseq: u32, body: &str) -> String {
    let msg = sip::parse_datagram(invite.as_bytes()).expect("engine sends valid SIP");
    let ctype = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    format!(
        "{method} sip:caller@127.0.0.1:6000 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKpeer{cseq}\r\n\
         From: {};tag=peer\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nContact: <sip:cm@127.0.0.1:5060>\r\n\
         {ctype}Content-Length: {}\r\n\r\n{body}",
        msg.header(HeaderName::To).expect("To"),
        msg.header(HeaderName::From).expect("From"),
        msg.call_id().expect("Call-ID"),
        body.len()
    )
}

fn status(msg: &str) -> Option<u16> {
    sip::parse_datagram(msg.as_bytes()).ok()?.code()
}

/// The single value a histogram holds, in µs.
fn only_us(e: &mut Engine, metric: Metric, now: Nanos) -> u64 {
    e.metrics.close_interval(Duration::from_nanos(now));
    let h = e.metrics.total(metric);
    assert_eq!(h.len(), 1, "one {metric:?} measurement");
    h.max()
}

/// `ok` answered with a 200 whose SDP points at port `port` of the peer: the ACK goes out.
fn answer(e: &mut Engine, now: Nanos, invite: &str, port: u16) {
    let ok = reply(
        invite,
        "200 OK",
        "Contact: <sip:cm@127.0.0.1:5060>\r\nContent-Type: application/sdp\r\n",
        &sdp(port),
    );
    e.handle(now, addr(5060), ok.as_bytes());
    assert_eq!(methods(&sent(e)), ["ACK"]);
}

fn queue_config(patience: Option<Duration>) -> Config {
    let mut cfg = config();
    let mut w = Workload::new(
        "queue-1",
        Callee::Service("queue-1".into()),
        1,
        10.0,
        Hold::Fixed(Duration::from_secs(1)),
    );
    w.patience = patience;
    cfg.workloads = vec![w];
    cfg
}

#[test]
fn a_queue_call_waits_for_the_agent_then_talks_for_the_hold_time() {
    let mut e = Engine::new(queue_config(Some(Duration::from_secs(3600))));
    let invite = step(&mut e, 0).remove(0).1;
    assert!(invite.starts_with("INVITE sip:queue-1@127.0.0.1 SIP/2.0"));
    answer(&mut e, 100 * MS, &invite, 9000);
    // On hold: the 1 s hold has not started, so no BYE.
    assert!(step(&mut e, 3_000 * MS).is_empty(), "waiting for an agent");
    // The Call Manager moves the caller to the relay once the agent answered.
    let reinvite = from_peer(&invite, "INVITE", 1, &sdp(9100));
    e.handle(3_100 * MS, addr(5060), reinvite.as_bytes());
    let answered = sent(&mut e);
    assert_eq!(status(&answered[0].1), Some(200));
    assert!(answered[0].1.contains("m=audio 7000"), "our SDP");
    // A retransmission of that re-INVITE is answered again but connects nothing twice.
    e.handle(3_600 * MS, addr(5060), reinvite.as_bytes());
    assert_eq!(status(&sent(&mut e)[0].1), Some(200));
    assert_eq!(e.metrics.queue.answered, 1);
    // Talk for the hold time from the connect, then BYE.
    assert!(step(&mut e, 4_099 * MS).is_empty());
    let bye = step(&mut e, 4_100 * MS);
    assert_eq!(methods(&bye), ["BYE"]);
    e.handle(
        4_110 * MS,
        addr(5060),
        reply(&bye[0].1, "200 OK", "", "").as_bytes(),
    );
    assert!(e.finished());
    let m = &e.metrics;
    assert_eq!(
        (m.calls.succeeded, m.calls.failed, m.calls.abandoned),
        (1, 0, 0)
    );
    assert_eq!(
        (m.queue.offered, m.queue.answered, m.queue.abandoned),
        (1, 1, 0)
    );
    assert_eq!(m.queue.answered_within_sl, 1, "3 s is within 20 s");
    assert_eq!(m.workloads[0].succeeded, 1);
    let wait = only_us(&mut e, Metric::QueueWait, 5_000 * MS);
    assert!(
        (2_990_000..=3_010_000).contains(&wait),
        "from the 200 to the re-INVITE: {wait} µs"
    );
}

#[test]
fn a_queue_caller_out_of_patience_hangs_up_and_is_abandoned_not_failed() {
    let mut e = Engine::new(queue_config(Some(Duration::from_secs(1))));
    let invite = step(&mut e, 0).remove(0).1;
    answer(&mut e, 100 * MS, &invite, 9000);
    let mut at = 100 * MS;
    let bye = loop {
        at += 10 * MS;
        assert!(at < 60_000 * MS, "patience (mean 1 s) never ran out");
        let out = step(&mut e, at);
        if !out.is_empty() {
            break out;
        }
    };
    assert_eq!(methods(&bye), ["BYE"], "the caller hangs up");
    assert_eq!(e.metrics.queue.abandoned, 1);
    e.handle(
        at + MS,
        addr(5060),
        reply(&bye[0].1, "200 OK", "", "").as_bytes(),
    );
    assert!(e.finished());
    let m = &e.metrics;
    assert_eq!(
        (
            m.calls.attempted,
            m.calls.succeeded,
            m.calls.failed,
            m.calls.abandoned
        ),
        (1, 0, 0, 1),
        "attempted = succeeded + failed + abandoned"
    );
    assert_eq!(m.workloads[0].abandoned, 1);
    assert_eq!((m.queue.offered, m.queue.answered), (1, 0));
    assert!(m.failures.is_empty(), "{:?}", m.failures);
    e.metrics.close_interval(Duration::from_nanos(at));
    assert!(e.metrics.total(Metric::QueueWait).is_empty());
}

#[test]
fn a_queue_caller_without_patience_waits_until_stopped_and_is_not_abandoned() {
    let mut e = Engine::new(queue_config(None));
    let invite = step(&mut e, 0).remove(0).1;
    answer(&mut e, 100 * MS, &invite, 9000);
    assert!(step(&mut e, 600_000 * MS).is_empty(), "waits for ever");
    e.stop(600_000 * MS);
    let bye = step(&mut e, 600_001 * MS);
    assert_eq!(methods(&bye), ["BYE"]);
    e.handle(
        600_002 * MS,
        addr(5060),
        reply(&bye[0].1, "200 OK", "", "").as_bytes(),
    );
    assert!(e.finished());
    assert_eq!(
        (e.metrics.calls.succeeded, e.metrics.calls.abandoned),
        (1, 0)
    );
    assert_eq!(e.metrics.queue.abandoned, 0);
}

fn ivr_config(digits: &str) -> Config {
    let mut cfg = config();
    let mut w = Workload::new(
        "ivr",
        Callee::Service("ivr-1".into()),
        1,
        10.0,
        Hold::Fixed(Duration::from_secs(60)),
    );
    w.dtmf = Dtmf::Digits(digits.into());
    w.agent_hold = Some(Hold::Fixed(Duration::from_secs(2)));
    cfg.workloads = vec![w];
    cfg
}

#[test]
fn an_ivr_call_sends_its_digits_is_routed_to_a_queue_and_connected_to_an_agent() {
    // No RTP by the fraction: a call that sends digits gets it anyway.
    let mut e = Engine::new(ivr_config("2"));
    let invite = step(&mut e, 0).remove(0).1;
    assert!(invite.starts_with("INVITE sip:ivr-1@"));
    answer(&mut e, 100 * MS, &invite, 9000);
    let media: Vec<MediaCommand> = e.media_commands().collect();
    assert!(
        matches!(
            media.as_slice(),
            [MediaCommand::Start { dest, .. }, MediaCommand::Dtmf { digits, .. }]
                if *dest == addr(9000) && digits == "2"
        ),
        "{media:?}"
    );
    // The IVR transfers the caller to queue 2: the hold node.
    e.handle(
        1_600 * MS,
        addr(5060),
        from_peer(&invite, "INVITE", 1, &sdp(9200)).as_bytes(),
    );
    assert_eq!(status(&sent(&mut e)[0].1), Some(200));
    assert!(matches!(e.media_commands().collect::<Vec<_>>().as_slice(),
            [MediaCommand::Redirect { dest, .. }] if *dest == addr(9200)));
    assert_eq!((e.metrics.ivr.calls, e.metrics.ivr.routed), (1, 1));
    assert_eq!(e.metrics.queue.offered, 1);
    // The agent answers: the caller moves to the relay.
    assert!(step(&mut e, 5_000 * MS).is_empty());
    e.handle(
        5_600 * MS,
        addr(5060),
        from_peer(&invite, "INVITE", 2, &sdp(9300)).as_bytes(),
    );
    assert_eq!(status(&sent(&mut e)[0].1), Some(200));
    assert_eq!(e.metrics.queue.answered, 1);
    // Talk with the agent for the queue's handle time.
    assert!(step(&mut e, 7_599 * MS).is_empty());
    let bye = step(&mut e, 7_600 * MS);
    assert_eq!(methods(&bye), ["BYE"]);
    e.handle(
        7_610 * MS,
        addr(5060),
        reply(&bye[0].1, "200 OK", "", "").as_bytes(),
    );
    assert_eq!(e.metrics.calls.succeeded, 1);
    e.metrics.close_interval(Duration::from_secs(8));
    let route = e.metrics.total(Metric::IvrRoute);
    assert!(
        route.len() == 1 && route.equivalent(route.max(), 1_500_000),
        "from the digits to the transfer: {}",
        route.max()
    );
    let wait = e.metrics.total(Metric::QueueWait);
    assert!(
        wait.len() == 1 && wait.equivalent(wait.max(), 4_000_000),
        "from the transfer to the agent: {}",
        wait.max()
    );
}

#[test]
fn an_ivr_that_hangs_up_after_the_hash_key_ends_the_call_as_succeeded() {
    let mut e = Engine::new(ivr_config("#"));
    let invite = step(&mut e, 0).remove(0).1;
    answer(&mut e, 100 * MS, &invite, 9000);
    assert!(
        e.media_commands()
            .any(|m| matches!(m, MediaCommand::Dtmf { ref digits, .. } if digits == "#"))
    );
    e.handle(
        1_500 * MS,
        addr(5060),
        from_peer(&invite, "BYE", 1, "").as_bytes(),
    );
    assert_eq!(status(&sent(&mut e)[0].1), Some(200));
    assert!(e.finished());
    let m = &e.metrics;
    assert_eq!((m.calls.succeeded, m.calls.failed), (1, 0));
    assert_eq!((m.ivr.calls, m.ivr.routed, m.queue.offered), (1, 0, 0));
}

#[test]
fn ivr_callers_asking_for_a_queue_press_one_of_its_digits() {
    let mut cfg = ivr_config("");
    cfg.workloads[0].dtmf = Dtmf::Queue {
        fraction: 0.5,
        queues: 3,
    };
    cfg.workloads[0].calls = 200;
    cfg.workloads[0].rate = 1000.0;
    let mut e = Engine::new(cfg);
    let invites = step(&mut e, 200 * MS);
    assert_eq!(invites.len(), 200);
    for (_, invite) in &invites {
        answer(&mut e, 201 * MS, invite, 9000);
    }
    let mut pressed = [0u32; 3];
    for m in e.media_commands() {
        if let MediaCommand::Dtmf { digits, .. } = m {
            let d = digits.parse::<usize>().expect("one digit");
            assert!((1..=3).contains(&d), "{digits}");
            pressed[d - 1] += 1;
        }
    }
    let total: u32 = pressed.iter().sum();
    assert!((70..=130).contains(&total), "about half: {pressed:?}");
    assert!(pressed.iter().all(|&n| n >= 10), "every queue: {pressed:?}");
}

fn rooms(shard: (u32, u32)) -> Vec<String> {
    let mut cfg = config();
    cfg.workloads = vec![Workload::new(
        "meetings",
        Callee::Service("meeting-3".into()),
        7,
        1000.0,
        Hold::Fixed(Duration::from_secs(1)),
    )];
    cfg.shard = shard;
    let mut e = Engine::new(cfg);
    step(&mut e, 100 * MS)
        .iter()
        .map(|(_, m)| {
            let uri = m.split(' ').nth(1).expect("request line");
            uri.trim_start_matches("sip:")
                .split('@')
                .next()
                .expect("user")
                .to_owned()
        })
        .collect()
}

#[test]
fn meeting_calls_fill_rooms_of_n_and_shards_never_share_a_room() {
    let r = |s: &[&str]| s.iter().map(|&x| x.to_owned()).collect::<Vec<_>>();
    assert_eq!(
        rooms((0, 1)),
        r(&[
            "meeting-1",
            "meeting-1",
            "meeting-1",
            "meeting-2",
            "meeting-2",
            "meeting-2",
            "meeting-3"
        ])
    );
    assert_eq!(
        rooms((1, 2)),
        r(&[
            "meeting-2",
            "meeting-2",
            "meeting-2",
            "meeting-4",
            "meeting-4",
            "meeting-4",
            "meeting-6"
        ])
    );
}

#[test]
fn merged_workloads_each_keep_their_rate() {
    let run = |seed: u64| {
        let mut cfg = config();
        let w = |name: &str, rate: f64, arrivals: Arrivals| {
            let mut w = Workload::new(
                name,
                Callee::Service(name.into()),
                u64::MAX,
                rate,
                Hold::Fixed(Duration::from_secs(1)),
            );
            w.arrivals = arrivals;
            w
        };
        cfg.workloads = vec![
            w("fast", 50.0, Arrivals::Poisson),
            w("slow", 2.0, Arrivals::Poisson),
            w("fixed", 20.0, Arrivals::Fixed),
        ];
        cfg.seed = seed;
        let mut e = Engine::new(cfg);
        let mut now = 0;
        while now <= 400_000 * MS {
            // Unanswered INVITEs retransmit and time out; only the attempts count here.
            step(&mut e, now);
            now += 100 * MS;
        }
        e.metrics
            .workloads
            .iter()
            .map(|o| o.attempted)
            .collect::<Vec<u64>>()
    };
    let a = run(7);
    // 400 s: 20,000 and 800 expected from the Poisson streams (sd about 141 and 28), exactly
    // 8,001 from the fixed one (k / rate <= 400 s).
    assert!((19_400..=20_600).contains(&a[0]), "{a:?}");
    assert!((690..=910).contains(&a[1]), "{a:?}");
    assert_eq!(a[2], 8_001, "{a:?}");
    assert_eq!(run(7), a, "one seed, one schedule");
    assert_ne!(run(8), a, "another seed, another schedule");
}

#[test]
fn reserved_users_are_never_callers_or_callees_of_our_own_calls() {
    let mut cfg = config();
    cfg.users = numbered(1000..1012);
    // Queue agents: the first four users.
    cfg.reserved = 4;
    cfg.workloads = vec![
        Workload::new(
            "calls",
            Callee::Users,
            60,
            1000.0,
            Hold::Fixed(Duration::from_secs(1)),
        ),
        Workload::new(
            "queue-1",
            Callee::Service("queue-1".into()),
            20,
            1000.0,
            Hold::Fixed(Duration::from_secs(1)),
        ),
    ];
    let mut e = Engine::new(cfg);
    let out = step(&mut e, 1_000 * MS);
    assert_eq!(out.len(), 80);
    let user = |uri: &str| -> Option<u32> { uri.split(['@', ':']).nth(1)?.parse().ok() };
    let mut callees = std::collections::BTreeSet::new();
    for (_, m) in &out {
        let msg = sip::parse_datagram(m.as_bytes()).expect("valid");
        let caller = msg
            .from()
            .and_then(|f| user(f.uri.trim_start_matches('<')))
            .expect("our user calls");
        assert!(!(1000..1004).contains(&caller), "agent {caller} calls");
        if let Some(callee) = msg.request_uri().and_then(user) {
            assert!(!(1000..1004).contains(&callee), "agent {callee} called");
            assert_ne!(caller, callee);
            callees.insert(callee);
        }
    }
    assert_eq!(callees.len(), 8, "every other user is called: {callees:?}");
}

#[test]
fn registrations_are_refreshed_at_80_percent_of_their_expiry_until_the_run_stops() {
    let mut cfg = config();
    cfg.users = numbered([1000]);
    cfg.register = true;
    cfg.expires_s = 10;
    cfg.workloads.clear();
    let mut e = Engine::new(cfg);
    let registrar = addr(5060);
    let mut registers = Vec::new();
    let mut now = 0;
    while now < 25_000 * MS {
        e.advance(now);
        for (to, text) in sent(&mut e) {
            if text.starts_with("REGISTER") {
                assert_eq!(to, registrar);
                registers.push((now, text.clone()));
                let ok = reply(&text, "200 OK", "", "");
                e.handle(now, registrar, ok.as_bytes());
            }
        }
        now += 100 * MS;
    }
    // The first registration at 0, refreshes at 8 s and 16 s (and 24 s), each with the same
    // Call-ID and a higher CSeq.
    let times: Vec<u64> = registers.iter().map(|(t, _)| t / (1000 * MS)).collect();
    assert_eq!(times, vec![0, 8, 16, 24], "{times:?}");
    let call_ids: Vec<&str> = registers
        .iter()
        .map(|(_, t)| t.lines().find(|l| l.starts_with("Call-ID")).unwrap())
        .collect();
    assert!(call_ids.windows(2).all(|w| w[0] == w[1]));
    assert!(registers[3].1.contains("CSeq: 4 REGISTER"));
    assert_eq!(e.metrics.registrations.attempted, 4);
    assert_eq!(e.metrics.registrations.succeeded, 4);
    assert_eq!(e.metrics.registrations_refreshed, 3);
    // After stop, no more refreshes.
    e.stop(now);
    e.advance(now + 20_000 * MS);
    assert!(sent(&mut e).is_empty());
}

/// A run's datagrams (when, to whom, their bytes) and media commands.
type Recording = (
    Vec<(Nanos, SocketAddr, Vec<u8>)>,
    Vec<(Nanos, MediaCommand)>,
);

/// A registrar and proxy that challenges every first REGISTER and INVITE, then registers,
/// rings and answers with SDP, and accepts every BYE.
fn scripted_peer(req: &str) -> Vec<String> {
    let challenge = |header: &str| {
        format!(
            "{header}: Digest realm=\"127.0.0.1\", nonce=\"n1\", algorithm=MD5, qop=\"auth\"\r\n"
        )
    };
    match req.split(' ').next() {
        Some("REGISTER") if req.contains("\r\nAuthorization:") => {
            vec![reply(req, "200 OK", "", "")]
        }
        Some("REGISTER") => vec![reply(
            req,
            "401 Unauthorized",
            &challenge("WWW-Authenticate"),
            "",
        )],
        Some("INVITE") if req.contains("\r\nProxy-Authorization:") => vec![
            reply(req, "180 Ringing", "", ""),
            reply(
                req,
                "200 OK",
                "Contact: <sip:cm@127.0.0.1:5060>\r\nContent-Type: application/sdp\r\n",
                &sdp(7100),
            ),
        ],
        Some("INVITE") => vec![reply(
            req,
            "407 Proxy Authentication Required",
            &challenge("Proxy-Authenticate"),
            "",
        )],
        Some("BYE") => vec![reply(req, "200 OK", "", "")],
        _ => Vec::new(),
    }
}

/// Shard `shard` of a run seeded `seed` against `scripted_peer`, with every random choice in
/// play: cnonces, exponential holds, which calls carry RTP, IVR digits, Poisson arrivals. The
/// run id comes from the seed and the shard, as `pbxlab load` sets it.
fn seeded_run(seed: u64, shard: (u32, u32)) -> Recording {
    let mut cfg = config();
    cfg.seed = seed;
    cfg.shard = shard;
    cfg.run_id = run_id(seed, shard.0);
    cfg.users = numbered(1000..1004);
    cfg.register = true;
    cfg.rtp_fraction = 0.5;
    let mut calls = Workload::new(
        "calls",
        Callee::Users,
        12,
        20.0,
        Hold::Exponential(Duration::from_secs(2)),
    );
    calls.arrivals = Arrivals::Poisson;
    let mut ivr = Workload::new(
        "ivr",
        Callee::Service("ivr-1".into()),
        8,
        10.0,
        Hold::Exponential(Duration::from_secs(1)),
    );
    ivr.arrivals = Arrivals::Poisson;
    ivr.dtmf = Dtmf::Queue {
        fraction: 0.5,
        queues: 3,
    };
    cfg.workloads = vec![calls, ivr];
    let mut e = Engine::new(cfg);
    let (mut datagrams, mut media) = (Vec::new(), Vec::new());
    let mut now = 0;
    while !e.finished() && now < 120_000 * MS {
        e.advance(now);
        let mut out = sent(&mut e);
        while !out.is_empty() {
            for (to, req) in &out {
                for answer in scripted_peer(req) {
                    e.handle(now, *to, answer.as_bytes());
                }
            }
            datagrams.extend(out.drain(..).map(|(to, m)| (now, to, m.into_bytes())));
            out = sent(&mut e);
        }
        media.extend(e.media_commands().map(|m| (now, m)));
        now += MS;
    }
    assert!(e.finished(), "the run ends by itself");
    assert_eq!(e.metrics.registrations.succeeded, 4);
    assert_eq!(e.metrics.calls.succeeded, 20, "{:?}", e.metrics.failures);
    (datagrams, media)
}

#[test]
fn one_seed_repeats_a_run_byte_for_byte_and_another_seed_or_shard_does_not() {
    let a = seeded_run(7, (0, 1));
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    assert!(
        a.0.iter().any(|(_, _, m)| text(m).contains("cnonce=")),
        "challenges were answered"
    );
    let started =
        a.1.iter()
            .filter(|(_, m)| matches!(m, MediaCommand::Start { .. }))
            .count();
    assert!(
        (1..20).contains(&started),
        "some calls carry RTP: {started}"
    );
    assert!(
        a.1.iter()
            .any(|(_, m)| matches!(m, MediaCommand::Dtmf { .. })),
        "some IVR callers chose a queue"
    );
    assert_eq!(
        seeded_run(7, (0, 1)),
        a,
        "one seed, the same bytes at the same times"
    );
    // Call-IDs differ with the seed or the shard (the run id); the times show that the
    // choices do too.
    let times = |r: &Recording| r.0.iter().map(|&(at, ..)| at).collect::<Vec<_>>();
    let b = seeded_run(8, (0, 1));
    assert_ne!(times(&b), times(&a), "another seed, other choices");
    assert_ne!(b.0[0].2, a.0[0].2, "and another run id");
    assert_ne!(
        times(&seeded_run(7, (1, 2))),
        times(&a),
        "another shard, other choices"
    );
}

// ---- users by name --------------------------------------------------------------------------

/// alice (digest username `alice-auth`), bob and carol, as a users file gives them.
fn named_users() -> Users {
    let mut users = Users::new();
    for (name, username, password) in [
        ("alice", "alice-auth", "a-secret"),
        ("bob", "bob", "b-secret"),
        ("carol", "carol", "c-secret"),
    ] {
        users.push(User {
            name,
            username,
            password,
        });
    }
    users
}

#[test]
fn a_named_user_registers_as_its_user_part_with_its_own_credentials() {
    let mut cfg = config();
    cfg.users = named_users();
    cfg.register = true;
    cfg.register_rate = 1_000_000.0;
    cfg.workloads[0].calls = 0;
    let mut e = Engine::new(cfg);
    let first = step(&mut e, MS);
    assert_eq!(methods(&first), ["REGISTER"; 3]);
    let alice = &first[0].1;
    for line in [
        "From: <sip:alice@127.0.0.1>;tag=",
        "To: <sip:alice@127.0.0.1>\r\n",
        "Contact: <sip:alice@127.0.0.1:6000>\r\n",
    ] {
        assert!(alice.contains(line), "{line:?} in\n{alice}");
    }
    let challenge =
        "WWW-Authenticate: Digest realm=\"pbx\", nonce=\"n1\", algorithm=MD5, qop=\"auth\"\r\n";
    e.handle(
        2 * MS,
        addr(5060),
        reply(alice, "401 Unauthorized", challenge, "").as_bytes(),
    );
    let answer = sent(&mut e).remove(0).1;
    let msg = sip::parse_datagram(answer.as_bytes()).expect("valid");
    let auth = digest::parse_authorization(msg.header(HeaderName::Authorization).expect("sent"))
        .expect("parses");
    assert_eq!(auth.username, "alice-auth");
    assert!(digest::verify(&auth, "REGISTER", "a-secret"), "{answer}");
    assert!(!digest::verify(&auth, "REGISTER", "pw-alice"));
}

#[test]
fn calls_between_named_users_address_them_by_user_part() {
    let mut cfg = config();
    cfg.users = named_users();
    cfg.workloads[0].callee = Callee::Users;
    cfg.workloads[0].calls = 3;
    cfg.workloads[0].rate = 1000.0;
    let mut e = Engine::new(cfg);
    let invites = step(&mut e, 2 * MS);
    let pairs: Vec<(String, String)> = invites
        .iter()
        .map(|(_, m)| {
            let msg = sip::parse_datagram(m.as_bytes()).expect("valid");
            let from = msg.from().map(|f| f.uri.to_owned()).unwrap_or_default();
            (from, msg.request_uri().unwrap_or_default().to_owned())
        })
        .collect();
    // Call k: user k calls the user half the table away.
    let pair = |a: &str, b: &str| (format!("sip:{a}@127.0.0.1"), format!("sip:{b}@127.0.0.1"));
    assert_eq!(
        pairs,
        [
            pair("alice", "bob"),
            pair("bob", "carol"),
            pair("carol", "alice")
        ]
    );
    // The proxy hands bob his INVITE: he rings, and his answer names him.
    let to_bob = invites[0].1.replacen(
        "\r\nVia: ",
        "\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKpx\r\nVia: ",
        1,
    );
    e.handle(3 * MS, addr(5060), to_bob.as_bytes());
    let ringing = sent(&mut e).remove(0).1;
    assert!(ringing.starts_with("SIP/2.0 180 "), "{ringing}");
    assert!(
        ringing.contains("Contact: <sip:bob@127.0.0.1:6000>\r\n"),
        "{ringing}"
    );
    // A user we do not have is not found.
    let to_mallory = to_bob
        .replace("INVITE sip:bob@", "INVITE sip:mallory@")
        .replace("Call-ID: ", "Call-ID: other-");
    e.handle(4 * MS, addr(5060), to_mallory.as_bytes());
    let answer = sent(&mut e).remove(0).1;
    assert!(answer.starts_with("SIP/2.0 404 "), "{answer}");
}

/// The caller and callee of each of `calls` user-to-user calls among `users` numbered users
/// (the first `reserved` kept out) in `order`, with `seed`.
fn drawn_pairs(
    order: UserOrder,
    seed: u64,
    users: u32,
    reserved: usize,
    calls: u64,
) -> Vec<(String, String)> {
    let mut cfg = config();
    cfg.users = numbered(1000..1000 + users);
    cfg.user_order = order;
    cfg.reserved = reserved;
    cfg.seed = seed;
    cfg.workloads[0].callee = Callee::Users;
    cfg.workloads[0].calls = calls;
    cfg.workloads[0].rate = 1_000_000.0;
    let mut e = Engine::new(cfg);
    step(&mut e, MS)
        .iter()
        .map(|(_, m)| {
            let msg = sip::parse_datagram(m.as_bytes()).expect("valid");
            let user = |uri: &str| uri.split(['@', ':']).nth(1).unwrap_or_default().to_owned();
            (
                user(msg.from().map(|f| f.uri).unwrap_or_default()),
                user(msg.request_uri().unwrap_or_default()),
            )
        })
        .collect()
}

#[test]
fn random_order_draws_callers_and_callees_from_the_seed() {
    let random = drawn_pairs(UserOrder::Random, 7, 10, 2, 400);
    assert_eq!(random.len(), 400);
    assert_eq!(
        random,
        drawn_pairs(UserOrder::Random, 7, 10, 2, 400),
        "one seed, one draw"
    );
    assert_ne!(random, drawn_pairs(UserOrder::Random, 8, 10, 2, 400));
    let mut callers = std::collections::BTreeMap::<&str, u32>::new();
    let mut callees = std::collections::BTreeSet::new();
    for (caller, callee) in &random {
        assert_ne!(caller, callee, "nobody calls itself");
        for u in [caller, callee] {
            assert!(!["1000", "1001"].contains(&u.as_str()), "reserved {u} used");
        }
        *callers.entry(caller).or_default() += 1;
        callees.insert(callee.as_str());
    }
    // Eight users, 400 calls: about 50 each, and every one called.
    assert_eq!(callers.len(), 8, "{callers:?}");
    assert!(
        callers.values().all(|&n| (20..=90).contains(&n)),
        "{callers:?}"
    );
    assert_eq!(callees.len(), 8);
    // SEQUENTIAL (and USER) go round the users in order, as before: no draw, any seed.
    let sequential = drawn_pairs(UserOrder::Sequential, 7, 10, 2, 16);
    assert_eq!(sequential, drawn_pairs(UserOrder::User, 8, 10, 2, 16));
    assert_eq!(sequential[0], ("1002".to_owned(), "1006".to_owned()));
    assert_eq!(sequential[9], ("1003".to_owned(), "1007".to_owned()));
    assert_ne!(random[..16], sequential[..]);
}

// ---- a far end that goes silent after the schedule ---------------------------------------------

/// Drives `e` as the driver does, from `now`, with a far end that answers nothing: wakes at
/// each deadline (at least every 100 ms) until the engine is finished or `limit` has passed.
/// Returns when it finished, if it did, and what it sent meanwhile.
fn with_a_silent_far_end(
    e: &mut Engine,
    mut now: Nanos,
    limit: Nanos,
) -> (Option<Nanos>, Vec<String>) {
    let mut out = Vec::new();
    while now <= limit {
        e.advance(now);
        out.extend(sent(e).into_iter().map(|(_, m)| m));
        if e.finished() {
            return (Some(now), out);
        }
        let next = e.next_deadline().unwrap_or(Nanos::MAX);
        now = next.clamp(now + 1, now + 100 * MS);
    }
    (None, out)
}

/// The proxy puts its Via on top of a request it passes on to us.
fn forward(m: &str) -> String {
    m.replacen(
        "\r\nVia: ",
        "\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKpx\r\nVia: ",
        1,
    )
}

/// The proxy takes its Via off a response it passes back.
fn strip(m: &str) -> String {
    m.replacen(
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKpx\r\n",
        "",
        1,
    )
}

/// Registers users 1000 and 1001 (for 600 s: a refresh is due at 480 s) and places the run's
/// one call, held for `hold`, from one to the other through a proxy, as
/// `calls_between_our_own_users_through_a_proxy_ring_and_complete` plays it, up to the ACK.
/// Returns the engine and when the 200 came (the hold runs from then).
fn a_call_between_our_registered_users(hold: Duration) -> (Engine, Nanos) {
    let mut cfg = config();
    cfg.users = numbered([1000, 1001]);
    cfg.register = true;
    cfg.expires_s = 600;
    cfg.workloads[0].callee = Callee::Users;
    cfg.workloads[0].hold = Hold::Fixed(hold);
    let mut e = Engine::new(cfg);
    let proxy = addr(5060);
    let mut now = 0;
    while !e.registered() {
        assert!(now < 1_000 * MS, "never registered");
        for (_, text) in step(&mut e, now) {
            e.handle(now, proxy, reply(&text, "200 OK", "", "").as_bytes());
        }
        now += MS;
    }
    let invite = step(&mut e, now).remove(0).1;
    assert!(invite.starts_with("INVITE"), "{invite}");
    e.handle(now + MS, proxy, forward(&invite).as_bytes());
    let ringing = sent(&mut e).remove(0).1;
    e.handle(now + 2 * MS, proxy, strip(&ringing).as_bytes());
    let ok = step(&mut e, now + 301 * MS).remove(0).1;
    assert_eq!(status(&ok), Some(200));
    e.handle(now + 302 * MS, proxy, strip(&ok).as_bytes());
    let ack = sent(&mut e).remove(0).1;
    e.handle(now + 302 * MS, proxy, ack.as_bytes());
    assert_eq!((e.active_calls(), e.active_legs()), (1, 2));
    (e, now + 302 * MS)
}

/// The reported hang: `pbxlab load scenarios/services.toml` against a cluster that exited
/// under it ran on for over ten minutes. Our registered users' legs (a callee, an agent) wait
/// for the far end's BYE, which RFC 3261 lets take for ever, and the registrations' refreshes
/// kept a deadline pending, so the driver's drain limit (counted only while nothing was due)
/// never started. Now the first timeout with nothing heard for as long ends what is left.
#[test]
fn a_leg_we_answered_ends_when_the_far_end_goes_silent_though_refreshes_are_pending() {
    let (mut e, answered) = a_call_between_our_registered_users(Duration::from_secs(1));
    assert_eq!(
        e.in_progress(),
        InProgress {
            holding: 1,
            answered: 1,
            ..Default::default()
        }
    );
    // Every attempt has started: the drain limit (an hour here) counts from then.
    assert!(e.drain_deadline().is_some());
    // The far end goes away. Our caller hangs up after its 1 s hold; its BYE times out after
    // 64 x T1 (32 s) with nothing heard since the ACK: the target is silent, and the leg we
    // answered ends with it, long before the first refresh (480 s) and the drain limit.
    let (finished, out) = with_a_silent_far_end(&mut e, answered + MS, 3_600_000 * MS);
    let finished = finished.expect("the run never ended with the far end silent");
    let bye_timeout = answered + 1_000 * MS + 64 * 500 * MS;
    assert!(
        (bye_timeout..bye_timeout + 200 * MS).contains(&finished),
        "ended at {} ms, the BYE timed out at {} ms",
        finished / MS,
        bye_timeout / MS
    );
    assert!(
        out.iter().all(|m| m.starts_with("BYE")),
        "only the BYE and its retransmissions"
    );
    assert_eq!(e.active_legs(), 0);
    let m = &e.metrics;
    assert_eq!((m.calls.attempted, m.calls.failed), (1, 1));
    assert_eq!(m.failures.get("BYE timeout"), Some(&1), "{:?}", m.failures);
    assert_eq!(m.failures.get(TARGET_SILENT), Some(&1), "{:?}", m.failures);
    assert!(
        e.next_deadline().is_some(),
        "the refreshes are still due: a drain counted only while nothing is due never starts"
    );
}

/// A far end that answers our BYE but never sends its own to the leg we answer (it forgot the
/// leg): that leg ends 64 x T1 after our last call, counted, though the target is not silent.
#[test]
fn a_leg_the_far_end_never_hangs_up_ends_64_t1_after_our_last_call() {
    let (mut e, answered) = a_call_between_our_registered_users(Duration::from_secs(1));
    let bye = step(&mut e, answered + 1_000 * MS).remove(0).1;
    assert!(bye.starts_with("BYE"), "{bye}");
    let ended = answered + 1_001 * MS;
    e.handle(ended, addr(5060), reply(&bye, "200 OK", "", "").as_bytes());
    assert_eq!((e.active_calls(), e.active_legs()), (0, 1));
    assert_eq!(e.metrics.calls.succeeded, 1);
    let (finished, out) = with_a_silent_far_end(&mut e, ended + MS, 3_600_000 * MS);
    assert!(out.is_empty(), "{out:?}");
    let finished = finished.expect("the leg was never given up");
    assert!(
        (ended + 64 * 500 * MS..ended + 64 * 500 * MS + 200 * MS).contains(&finished),
        "ended at {} ms, our call at {} ms",
        finished / MS,
        ended / MS
    );
    let m = &e.metrics;
    assert_eq!(
        (m.calls.succeeded, m.calls.failed),
        (1, 0),
        "our call completed"
    );
    assert_eq!(m.failures.get(NOT_HUNG_UP), Some(&1), "{:?}", m.failures);
}

/// A queue caller with no patience waits for an agent for ever (RFC 3261 lets it), quietly,
/// so nothing times out: with the target gone, the drain limit after the last attempt ends it,
/// counted, though a refresh is due.
#[test]
fn a_queue_caller_without_patience_fails_at_the_drain_limit_with_refreshes_pending() {
    let mut cfg = queue_config(None);
    cfg.users = numbered([1000]);
    cfg.register = true;
    cfg.expires_s = 600;
    cfg.drain_limit = Duration::from_secs(100);
    let mut e = Engine::new(cfg);
    let reg = step(&mut e, 0).remove(0).1;
    e.handle(MS, addr(5060), reply(&reg, "200 OK", "", "").as_bytes());
    let invite = step(&mut e, 2 * MS).remove(0).1;
    assert!(invite.starts_with("INVITE sip:queue-1@"), "{invite}");
    // The last attempt started at 2 ms: the drain limit is 100 s from then.
    assert_eq!(e.drain_deadline(), Some(100_002 * MS));
    answer(&mut e, 100 * MS, &invite, 9000);
    assert_eq!(e.in_progress().queued, 1);
    let (finished, out) = with_a_silent_far_end(&mut e, 101 * MS, 3_600_000 * MS);
    assert!(out.is_empty(), "the caller waits quietly: {out:?}");
    assert_eq!(finished, Some(100_002 * MS), "given up at the drain limit");
    let m = &e.metrics;
    assert_eq!((m.calls.failed, m.calls.abandoned), (1, 0));
    assert_eq!(m.failures.get(DRAINED), Some(&1), "{:?}", m.failures);
    assert_eq!(m.queue.abandoned, 0, "not out of patience");
    assert!(e.next_deadline().is_some(), "the refresh is still due");
}

/// Calls that end by their own timers are not cut short by the wait for those that do not,
/// however quiet the far end is meanwhile.
#[test]
fn a_leg_we_answer_is_left_alone_while_one_of_our_calls_is_in_progress() {
    let (mut e, answered) = a_call_between_our_registered_users(Duration::from_secs(400));
    let (finished, out) = with_a_silent_far_end(&mut e, answered + MS, answered + 399_000 * MS);
    assert_eq!(finished, None);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!((e.active_calls(), e.active_legs()), (1, 2));
    assert!(e.metrics.failures.is_empty(), "{:?}", e.metrics.failures);
    // The BYE at the end of the hold goes to the proxy, which passes it to the callee's leg.
    let at = answered + 400_000 * MS;
    let bye = step(&mut e, at).remove(0).1;
    assert!(bye.starts_with("BYE"), "{bye}");
    e.handle(at + MS, addr(5060), forward(&bye).as_bytes());
    let bye_ok = sent(&mut e).remove(0).1;
    e.handle(at + 2 * MS, addr(5060), strip(&bye_ok).as_bytes());
    e.advance(at + 3 * MS);
    assert!(e.finished());
    assert_eq!(e.metrics.calls.succeeded, 1);
    assert!(e.metrics.failures.is_empty(), "{:?}", e.metrics.failures);
}

/// A registration counts as in force only once answered 2xx: a refused one is finished but
/// holds nothing, which is what a check against the registrar's bindings relies on.
#[test]
fn only_a_registration_answered_2xx_is_in_force() {
    let mut cfg = config();
    cfg.users = numbered([1000, 1001]);
    cfg.register = true;
    cfg.register_rate = 10_000.0;
    cfg.workloads[0].calls = 0;
    let mut e = Engine::new(cfg);
    let mut regs = step(&mut e, 0);
    regs.extend(step(&mut e, MS));
    assert_eq!(methods(&regs), ["REGISTER"; 2]);
    assert_eq!(e.registered_users().count(), 0);
    let user_of = |req: &str| {
        if req.contains("sip:1000@") {
            "1000"
        } else {
            "1001"
        }
    };
    for (_, req) in &regs {
        let status = if user_of(req) == "1000" {
            "200 OK"
        } else {
            "403 Forbidden"
        };
        e.handle(2 * MS, addr(5060), reply(req, status, "", "").as_bytes());
    }
    assert!(e.registered());
    assert_eq!(e.registered_users().collect::<Vec<_>>(), ["1000"]);
}
