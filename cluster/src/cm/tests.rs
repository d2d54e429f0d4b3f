//! The Call Manager driven with a fake clock and scripted SIP peers.

use std::net::SocketAddr;
use std::time::Duration;

use pbxlab_balancer::{
    Balancer, FailoverMode, HealthConfig, Policy, Role, ServerSpec, ServerState,
};
use pbxlab_proto::digest;
use pbxlab_proto::sdp::SessionDescription;
use pbxlab_proto::sip::{HeaderName, Message, Method, parse_datagram};

use super::*;

pub(super) const CM: &str = "127.0.0.1:5060";
pub(super) const UA: &str = "127.0.0.1:7000";
pub(super) const UA_RTP: &str = "127.0.0.1:7002";
pub(super) const CALLEE: &str = "127.0.0.1:7100";
const FLOODER: &str = "127.0.0.2:9000";
pub(super) const MS: Nanos = 1_000_000;

pub(super) fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A cluster of one media, one IVR, one queue and one meeting node; users 1000..1010, queue 1
/// with agents 1000 and 1001.
pub(super) fn cm() -> CallManager {
    cm_with(|_| {})
}

/// [`cm`] with its configuration changed by `change` first.
pub(super) fn cm_with(change: impl FnOnce(&mut Config)) -> CallManager {
    let health =
        HealthConfig::new(Duration::from_secs(1), Duration::from_millis(500), 3, 2).unwrap();
    let mut b = Balancer::new(health);
    let mut nodes = Vec::new();
    for (i, role) in [
        Role::Media,
        Role::Media,
        Role::Ivr,
        Role::Queue,
        Role::Meeting,
    ]
    .into_iter()
    .enumerate()
    {
        let policy = if matches!(role, Role::Queue | Role::Meeting) {
            Policy::Affinity
        } else {
            Policy::LeastLoaded
        };
        b.set_pool(role, policy, FailoverMode::Auto);
        let name = format!("{}-{i}", role.name());
        let id = b
            .add_server(ServerSpec {
                name: name.clone(),
                role,
                capacity: 100,
                weight: 1,
            })
            .unwrap();
        nodes.push(NodeSpec {
            id,
            name,
            role,
            addr: addr(&format!("127.0.0.1:{}", 20000 + i)),
            place: crate::node::Place::InProcess,
            instance: 0,
        });
    }
    let mut cfg = Config::new(addr(CM));
    cfg.users = 10;
    cfg.queues = 1;
    cfg.agents_per_queue = 2;
    cfg.whitelist = vec![addr(UA).ip()];
    // The scripted phones on 127.0.0.1 call through a trusted edge, as behind a Kamailio that
    // authenticated them: these tests are about the calls. `auth_tests` calls from elsewhere.
    cfg.trust.trusted = vec![addr(UA).ip()];
    cfg.rate_limit_per_s = 10.0;
    cfg.rate_burst = 5.0;
    change(&mut cfg);
    CallManager::new(cfg, b, nodes)
}

pub(super) fn sent(cm: &mut CallManager) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut out = Vec::new();
    cm.transmit_all(|d| out.extend(d.iter().map(|(a, b)| (*a, b.to_vec()))));
    out
}

pub(super) fn texts(out: &[(SocketAddr, Vec<u8>)]) -> Vec<String> {
    out.iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect()
}

pub(super) fn parse(b: &[u8]) -> Message<'_> {
    parse_datagram(b).unwrap()
}

pub(super) fn offer(rtp: &str, ssrc: u32) -> String {
    let a: SocketAddr = addr(rtp);
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\n\
         a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=ssrc:{ssrc} cname:t\r\n",
        ip = a.ip(),
        port = a.port()
    )
}

pub(super) fn request(
    method: &str,
    ruri: &str,
    from_user: &str,
    call_id: &str,
    cseq: u32,
    extra: &str,
    body: &str,
) -> Vec<u8> {
    format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {UA};branch=z9hG4bK{call_id}{cseq}\r\n\
         From: <sip:{from_user}@pbxlab.test>;tag=ua{call_id}\r\nTo: <{ruri}>\r\nCall-ID: {call_id}\r\n\
         CSeq: {cseq} {method}\r\nContact: <sip:{from_user}@{UA}>\r\n{extra}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Registers `user` from `from` for 60 s, answering the challenge.
pub(super) fn register(
    cm: &mut CallManager,
    now: Nanos,
    user: u32,
    from: &str,
    password: &str,
) -> u16 {
    register_for(cm, now, user, from, password, 60)
}

fn register_for(
    cm: &mut CallManager,
    now: Nanos,
    user: u32,
    from: &str,
    password: &str,
    expires: u32,
) -> u16 {
    let out = register_out(cm, now, user, from, password, expires);
    parse(&out[0].1).code().unwrap()
}

/// Registers `user` as [`register_for`] does; returns all the Call Manager sent on the
/// authenticated REGISTER, its answer first (a queue agent's first call may follow).
pub(super) fn register_out(
    cm: &mut CallManager,
    now: Nanos,
    user: u32,
    from: &str,
    password: &str,
    expires: u32,
) -> Vec<(SocketAddr, Vec<u8>)> {
    let aor = format!("sip:{user}@pbxlab.test");
    let first = format!(
        "REGISTER sip:pbxlab.test SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKr{user}a\r\n\
         From: <{aor}>;tag=r{user}\r\nTo: <{aor}>\r\nCall-ID: r{user}\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:{user}@{from}>\r\nExpires: {expires}\r\nContent-Length: 0\r\n\r\n"
    );
    cm.handle(now, addr(from), first.as_bytes());
    let out = sent(cm);
    let challenge = parse(&out[0].1);
    assert_eq!(challenge.code(), Some(401));
    let ch =
        digest::parse_challenge(challenge.header(HeaderName::WwwAuthenticate).unwrap()).unwrap();
    let mut auth = String::new();
    digest::write_authorization(
        &mut auth,
        &ch,
        &user.to_string(),
        password,
        "REGISTER",
        "sip:pbxlab.test",
        "c1",
        1,
    );
    let second = first.replace("CSeq: 1", "CSeq: 2").replace(
        &format!("Expires: {expires}\r\n"),
        &format!("Expires: {expires}\r\nAuthorization: {auth}\r\n"),
    );
    cm.handle(now, addr(from), second.as_bytes());
    sent(cm)
}

#[test]
fn registration_needs_the_right_password_and_expires() {
    let mut cm = cm();
    assert_eq!(register(&mut cm, 0, 1003, UA, "pw-1003"), 200);
    assert_eq!(cm.stats().registered, 1);
    assert_eq!(register(&mut cm, 0, 1004, UA, "wrong"), 403);
    assert_eq!(cm.stats().auth_failures, 1);
    // Not one of the scenario's users: answered exactly as a user with the wrong password
    // (challenged, then 403), so the answers do not tell who is a user.
    assert_eq!(register(&mut cm, 0, 77, UA, "pw-77"), 403);
    assert_eq!(cm.stats().auth_failures, 2);
    // A digest computed for another Request-URI answers nothing here, right password or not.
    let first = "REGISTER sip:pbxlab.test SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKu1\r\n\
         From: <sip:1005@pbxlab.test>;tag=u1\r\nTo: <sip:1005@pbxlab.test>\r\nCall-ID: u1\r\n\
         CSeq: 1 REGISTER\r\nContact: <sip:1005@192.0.2.9>\r\nContent-Length: 0\r\n\r\n";
    cm.handle(0, addr(UA), first.as_bytes());
    let challenge = sent(&mut cm);
    let challenge = parse(&challenge[0].1);
    let ch =
        digest::parse_challenge(challenge.header(HeaderName::WwwAuthenticate).unwrap()).unwrap();
    let mut auth = String::new();
    digest::write_authorization(
        &mut auth,
        &ch,
        "1005",
        "pw-1005",
        "REGISTER",
        "sip:elsewhere.test",
        "c1",
        1,
    );
    let second = first.replace("CSeq: 1", "CSeq: 2").replace(
        "Content-Length",
        &format!("Authorization: {auth}\r\nContent-Length"),
    );
    cm.handle(0, addr(UA), second.as_bytes());
    assert_eq!(parse(&sent(&mut cm)[0].1).code(), Some(403));
    // The binding lapses after its 60 s.
    cm.advance(61 * NS);
    assert_eq!(cm.stats().registered, 0);
}

#[test]
fn echo_call_is_answered_with_the_media_node_and_the_node_told() {
    let mut cm = cm();
    let invite = request(
        "INVITE",
        "sip:echo@127.0.0.1:5060",
        "sipp",
        "e1",
        1,
        "Content-Type: application/sdp\r\n",
        &offer(UA_RTP, 42),
    );
    cm.handle(0, addr(UA), &invite);
    let out = sent(&mut cm);
    let ok = parse(&out[0].1);
    assert_eq!(ok.code(), Some(200));
    let sdp = SessionDescription::parse(ok.body()).unwrap();
    let node = sdp.audio_addr().unwrap();
    assert!(
        cm.nodes()
            .iter()
            .any(|n| n.addr == node && n.role == Role::Media)
    );
    let cmds: Vec<_> = cm.node_commands().collect();
    match &cmds[..] {
        [(_, NodeCommand::Echo { leg, .. })] => {
            assert_eq!(leg.remote, addr(UA_RTP));
            assert_eq!(leg.ssrc, Some(42));
            assert_eq!(leg.dtmf_pt, Some(101));
        }
        other => panic!("{other:?}"),
    }
    // Without the ACK the 200 is sent again after T1.
    cm.advance(500 * MS);
    assert!(
        texts(&sent(&mut cm))
            .iter()
            .any(|t| t.starts_with("SIP/2.0 200"))
    );
    let to = ok.header(HeaderName::To).unwrap().to_owned();
    let ack = String::from_utf8(request(
        "ACK",
        "sip:cm@127.0.0.1:5060",
        "sipp",
        "e1",
        1,
        "",
        "",
    ))
    .unwrap()
    .replace("To: <sip:cm@127.0.0.1:5060>", &format!("To: {to}"));
    cm.handle(600 * MS, addr(UA), ack.as_bytes());
    cm.advance(2000 * MS);
    assert!(
        texts(&sent(&mut cm))
            .iter()
            .all(|t| !t.starts_with("SIP/2.0 200"))
    );
    let bye = String::from_utf8(request(
        "BYE",
        "sip:cm@127.0.0.1:5060",
        "sipp",
        "e1",
        2,
        "",
        "",
    ))
    .unwrap()
    .replace("To: <sip:cm@127.0.0.1:5060>", &format!("To: {to}"));
    cm.handle(3 * NS, addr(UA), bye.as_bytes());
    assert_eq!(parse(&sent(&mut cm)[0].1).code(), Some(200));
    assert!(matches!(
        cm.node_commands().next(),
        Some((_, NodeCommand::End { .. }))
    ));
    assert_eq!(cm.balancer().placed(), 0);
    assert_eq!(cm.stats().calls_active, 0);
    assert_eq!(cm.stats().calls_completed, 1);
}

#[test]
fn a_call_between_users_is_bridged_through_one_media_node() {
    let mut cm = cm();
    assert_eq!(register(&mut cm, 0, 1005, CALLEE, "pw-1005"), 200);
    let invite = request(
        "INVITE",
        "sip:1005@pbxlab.test",
        "1004",
        "c1",
        1,
        "Content-Type: application/sdp\r\n",
        &offer(UA_RTP, 7),
    );
    cm.handle(0, addr(UA), &invite);
    let out = sent(&mut cm);
    assert_eq!(parse(&out[0].1).code(), Some(100));
    let (to, b_invite) = &out[1];
    assert_eq!(*to, addr(CALLEE));
    let b = parse(b_invite);
    assert_eq!(b.method(), Some(Method::Invite));
    assert_eq!(b.request_uri(), Some("sip:1005@127.0.0.1:7100"));
    let node = SessionDescription::parse(b.body())
        .unwrap()
        .audio_addr()
        .unwrap();
    // The callee rings, then answers with its own SDP.
    let mut ringing = Vec::new();
    pbxlab_proto::builder::write_response(&mut ringing, &b, 180, "Ringing", Some("cal"), &[], b"");
    cm.handle(MS, addr(CALLEE), &ringing);
    assert_eq!(parse(&sent(&mut cm)[0].1).code(), Some(180));
    let mut ok = Vec::new();
    let body = offer("127.0.0.1:7102", 9);
    pbxlab_proto::builder::write_response(
        &mut ok,
        &b,
        200,
        "OK",
        Some("cal"),
        &[
            ("Contact", "<sip:1005@127.0.0.1:7100>"),
            ("Content-Type", "application/sdp"),
        ],
        body.as_bytes(),
    );
    cm.handle(2 * MS, addr(CALLEE), &ok);
    let out = sent(&mut cm);
    let texts = texts(&out);
    assert!(
        texts[0].starts_with("ACK sip:1005@127.0.0.1:7100"),
        "{}",
        texts[0]
    );
    let answer = parse(&out[1].1);
    assert_eq!(answer.code(), Some(200));
    assert_eq!(
        SessionDescription::parse(answer.body())
            .unwrap()
            .audio_addr(),
        Some(node)
    );
    let cmds: Vec<_> = cm.node_commands().collect();
    match &cmds[..] {
        [(_, NodeCommand::Relay { a, b, .. })] => {
            assert_eq!((a.remote, a.ssrc), (addr(UA_RTP), Some(7)));
            assert_eq!((b.remote, b.ssrc), (addr("127.0.0.1:7102"), Some(9)));
        }
        other => panic!("{other:?}"),
    }
    // The callee hangs up: the caller gets a BYE in its own dialog.
    let bye = format!(
        "BYE sip:cm@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLEE};branch=z9hG4bKbye\r\nFrom: {}\r\n\
         To: {}\r\nCall-ID: {}\r\nCSeq: 5 BYE\r\nContent-Length: 0\r\n\r\n",
        answer
            .header(HeaderName::To)
            .map(|_| "<sip:1005@pbxlab.test>;tag=cal")
            .unwrap(),
        b.header(HeaderName::From).unwrap(),
        b.call_id().unwrap()
    );
    cm.handle(NS, addr(CALLEE), bye.as_bytes());
    let out = sent(&mut cm);
    let t = self::texts(&out);
    assert!(t.iter().any(|t| t.starts_with("SIP/2.0 200")));
    let to_a = out
        .iter()
        .find(|(a, b)| *a == addr(UA) && b.starts_with(b"BYE"))
        .expect("BYE to the caller");
    let bye_a = parse(&to_a.1);
    assert_eq!(bye_a.call_id(), Some("c1"));
    assert_eq!(bye_a.to().and_then(|t| t.tag()), Some("uac1"));
    assert_eq!(cm.balancer().placed(), 0);
    // Its 200 lost, the callee sends the BYE again: 200 again, not a 481 for the dialog it
    // ended itself. Another CSeq, or the same BYE from elsewhere, is no retransmission.
    cm.handle(2 * NS, addr(CALLEE), bye.as_bytes());
    let again = self::texts(&sent(&mut cm));
    assert!(
        again.iter().any(|t| t.starts_with("SIP/2.0 200")),
        "{again:?}"
    );
    assert_eq!(cm.stats().bye_retransmissions, 1);
    cm.handle(
        2 * NS,
        addr(CALLEE),
        bye.replace("CSeq: 5 BYE", "CSeq: 6 BYE").as_bytes(),
    );
    let other = self::texts(&sent(&mut cm));
    assert!(
        other.iter().any(|t| t.starts_with("SIP/2.0 481")),
        "{other:?}"
    );
    cm.handle(2 * NS, addr("127.0.0.3:7100"), bye.as_bytes());
    let elsewhere = self::texts(&sent(&mut cm));
    assert!(
        !elsewhere.iter().any(|t| t.starts_with("SIP/2.0 200")),
        "{elsewhere:?}"
    );
    // After Timer J (64 x T1), it is forgotten.
    cm.handle(40 * NS, addr(CALLEE), bye.as_bytes());
    let late = self::texts(&sent(&mut cm));
    assert!(
        late.iter().any(|t| t.starts_with("SIP/2.0 481")),
        "{late:?}"
    );
}

#[test]
fn unknown_targets_and_unregistered_users_are_refused() {
    let mut cm = cm();
    for (ruri, code) in [
        ("sip:nobody@x", 404),
        ("sip:1002@x", 480),
        ("sip:queue-9@x", 404),
    ] {
        cm.handle(
            0,
            addr(UA),
            &request("INVITE", ruri, "1", "u", 1, "", &offer(UA_RTP, 1)),
        );
        assert_eq!(parse(&sent(&mut cm)[0].1).code(), Some(code), "{ruri}");
    }
    // An SDP body we cannot use (no audio): nothing to anchor. (No body at all is a delayed
    // offer, answered with ours.)
    cm.handle(
        0,
        addr(UA),
        &request(
            "INVITE",
            "sip:echo@x",
            "1",
            "n",
            1,
            "Content-Type: application/sdp\r\n",
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n",
        ),
    );
    assert_eq!(parse(&sent(&mut cm)[0].1).code(), Some(488));
    assert_eq!(cm.balancer().placed(), 0);
}

#[test]
fn malformed_requests_are_counted_and_answered_400_when_possible() {
    let mut cm = cm();
    // Parses as SIP, but the CSeq is no number: the sender gets told why.
    let bad_cseq = String::from_utf8(request("INVITE", "sip:echo@x", "1", "b", 1, "", ""))
        .unwrap()
        .replace("CSeq: 1 INVITE", "CSeq: one INVITE");
    cm.handle(0, addr(UA), bad_cseq.as_bytes());
    let out = texts(&sent(&mut cm));
    assert!(
        out[0].starts_with("SIP/2.0 400 Bad Request (malformed CSeq)\r\nVia: "),
        "{}",
        out[0]
    );
    assert!(out[0].contains("\r\nCall-ID: b\r\n"));
    // Missing From, garbage, a body shorter than its Content-Length: nothing to answer to.
    cm.handle(0, addr(UA), b"INVITE sip:echo@x SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKx\r\nContent-Length: 0\r\n\r\n");
    cm.handle(0, addr(UA), b"\x00\x01garbage");
    cm.handle(
        0,
        addr(UA),
        b"INVITE sip:echo@x SIP/2.0\r\nContent-Length: 99\r\n\r\n",
    );
    assert!(sent(&mut cm).is_empty());
    assert_eq!(cm.stats().malformed, 4);
}

#[test]
fn a_request_out_of_hops_gets_483_and_a_request_uri_that_names_nobody_400() {
    let mut cm = cm();
    let offer = offer("192.0.2.50:40000", 5);
    cm.handle(
        0,
        addr(UA),
        &request(
            "INVITE",
            "sip:echo@x",
            "1",
            "mf",
            1,
            "Max-Forwards: 0\r\n",
            &offer,
        ),
    );
    let out = texts(&sent(&mut cm));
    assert!(
        out[0].starts_with("SIP/2.0 483 Too Many Hops\r\n"),
        "{}",
        out[0]
    );
    assert_eq!(cm.stats().calls_total, 0, "no call placed");
    cm.handle(
        0,
        addr(UA),
        &request("INVITE", "sip:@:;;;", "1", "ru", 1, "", &offer),
    );
    let out = texts(&sent(&mut cm));
    assert!(out[0].starts_with("SIP/2.0 400 "), "{}", out[0]);
    // One hop left is enough.
    cm.handle(
        0,
        addr(UA),
        &request(
            "INVITE",
            "sip:echo@x",
            "1",
            "ok",
            1,
            "Max-Forwards: 1\r\n",
            &offer,
        ),
    );
    let out = texts(&sent(&mut cm));
    assert!(out.iter().all(|m| !m.starts_with("SIP/2.0 483")), "{out:?}");
}

/// INVITEs from one address that never ACK fill no pool: past 32 unconfirmed calls that
/// address gets 503 (and nothing retransmitted to it), while others call on; an ACK frees a
/// place.
#[test]
fn one_source_may_hold_only_so_many_unconfirmed_calls() {
    let mut cm = cm();
    let mut finals = Vec::new();
    let mut answered = Vec::new();
    for i in 0..40u32 {
        // Spaced under the request-rate limit (10/s): only the call limits act.
        let now = u64::from(i) * 150 * MS;
        let call_id = format!("f{i}");
        let invite = request(
            "INVITE",
            "sip:echo@x",
            "1",
            &call_id,
            1,
            "",
            &offer("192.0.2.50:40000", i),
        );
        cm.handle(now, addr(FLOODER), &invite);
        for (_, m) in sent(&mut cm) {
            let m = parse(&m);
            if let Some(code) = m.code().filter(|&c| c >= 200) {
                finals.push(code);
                if code == 200 {
                    answered.push((
                        call_id.clone(),
                        m.header(HeaderName::To).unwrap().to_owned(),
                    ));
                }
            }
        }
    }
    let count = |code| finals.iter().filter(|&&c| c == code).count();
    assert_eq!((count(200), count(503)), (32, 8), "{finals:?}");
    assert_eq!(cm.stats().source_limited, 8);
    // Another caller is not held back by it.
    cm.handle(
        7 * NS,
        addr(UA),
        &request(
            "INVITE",
            "sip:echo@x",
            "1",
            "ua1",
            1,
            "",
            &offer(UA_RTP, 77),
        ),
    );
    assert!(
        texts(&sent(&mut cm))
            .iter()
            .any(|t| t.starts_with("SIP/2.0 200"))
    );
    // An ACK confirms one call: the address may start one more.
    let (call_id, to) = &answered[0];
    let ack = String::from_utf8(request("ACK", "sip:echo@x", "1", call_id, 1, "", ""))
        .unwrap()
        .replace("To: <sip:echo@x>", &format!("To: {to}"));
    cm.handle(7 * NS, addr(FLOODER), ack.as_bytes());
    let again = request(
        "INVITE",
        "sip:echo@x",
        "1",
        "f40",
        1,
        "",
        &offer("192.0.2.50:40000", 40),
    );
    cm.handle(7 * NS + 200 * MS, addr(FLOODER), &again);
    assert!(
        texts(&sent(&mut cm))
            .iter()
            .any(|t| t.starts_with("SIP/2.0 200"))
    );
}

#[test]
fn a_flooding_source_earns_503_while_whitelisted_ones_pass() {
    let mut cm = cm();
    let mut codes = Vec::new();
    for i in 0..20 {
        let r = request("OPTIONS", "sip:cm@x", "f", &format!("f{i}"), 1, "", "");
        cm.handle(i * MS, addr(FLOODER), &r);
        codes.push(parse(&sent(&mut cm)[0].1).code().unwrap());
    }
    // The burst of 5 passes, the rest is refused (10/s refills only 0.2 in 20 ms).
    assert_eq!(codes.iter().filter(|&&c| c == 200).count(), 5);
    assert_eq!(codes.iter().filter(|&&c| c == 503).count(), 15);
    assert_eq!(cm.stats().rate_limited, 15);
    // The whitelisted source is not limited; the flooder recovers after a quiet second.
    assert_eq!(register(&mut cm, 30 * MS, 1003, UA, "pw-1003"), 200);
    for i in 0..20 {
        let r = request("OPTIONS", "sip:cm@x", "u", &format!("w{i}"), 1, "", "");
        cm.handle(40 * MS, addr(UA), &r);
        assert_eq!(parse(&sent(&mut cm)[0].1).code(), Some(200));
    }
    cm.handle(
        2 * NS,
        addr(FLOODER),
        &request("OPTIONS", "sip:cm@x", "f", "later", 1, "", ""),
    );
    assert_eq!(parse(&sent(&mut cm)[0].1).code(), Some(200));
}

#[test]
fn unanswered_probes_take_a_node_down_and_its_calls_move() {
    let mut cm = cm();
    let invite = request(
        "INVITE",
        "sip:echo@x",
        "sipp",
        "m1",
        1,
        "",
        &offer(UA_RTP, 3),
    );
    cm.handle(0, addr(UA), &invite);
    let ok = sent(&mut cm);
    let first = SessionDescription::parse(parse(&ok[0].1).body())
        .unwrap()
        .audio_addr()
        .unwrap();
    let _ = cm.node_commands().count();
    let dead = cm.nodes().iter().find(|n| n.addr == first).unwrap().id;
    // Every node but the dead one answers its probes.
    let mut out = Vec::new();
    for round in 0..4u64 {
        let now = round * NS;
        cm.advance(now);
        for (to, probe) in sent(&mut cm) {
            out.push((to, probe.clone()));
            let p = parse(&probe);
            if p.method() != Some(Method::Options) || to == first {
                continue;
            }
            let mut ok = Vec::new();
            pbxlab_proto::builder::write_response(&mut ok, &p, 200, "OK", Some("n"), &[], b"");
            cm.handle(now + MS, to, &ok);
        }
        cm.advance(now + 500 * MS);
        out.extend(sent(&mut cm));
    }
    let state = cm.balancer().server(dead).unwrap().state;
    assert_eq!(state, ServerState::Down);
    assert_eq!(cm.stats().moved, 1);
    // The echo moved to the other media node, and the caller was re-INVITEd there.
    let cmds: Vec<_> = cm.node_commands().collect();
    assert!(
        cmds.iter()
            .any(|(s, c)| *s != dead && matches!(c, NodeCommand::Echo { .. })),
        "{cmds:?}"
    );
    let reinvite = out
        .iter()
        .find(|(a, b)| *a == addr(UA) && b.starts_with(b"INVITE"))
        .expect("re-INVITE");
    let moved_to = SessionDescription::parse(parse(&reinvite.1).body())
        .unwrap()
        .audio_addr()
        .unwrap();
    assert_ne!(moved_to, first);
    cm.balancer().audit().unwrap();
}

#[test]
fn ivr_digit_transfers_to_the_queue_and_an_agent_takes_the_call() {
    let mut cm = cm();
    assert_eq!(register(&mut cm, 0, 1000, CALLEE, "pw-1000"), 200);
    let invite = request(
        "INVITE",
        "sip:ivr-1@x",
        "1008",
        "i1",
        1,
        "",
        &offer(UA_RTP, 11),
    );
    cm.handle(0, addr(UA), &invite);
    let answer = sent(&mut cm);
    let ivr_node = SessionDescription::parse(parse(&answer[0].1).body())
        .unwrap()
        .audio_addr()
        .unwrap();
    let (server, session) = match cm.node_commands().next() {
        Some((s, NodeCommand::Ivr { session, .. })) => (s, session),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        cm.nodes().iter().find(|n| n.id == server).unwrap().addr,
        ivr_node
    );
    cm.on_node_event(
        NS,
        server,
        NodeEvent::Digit {
            session,
            digit: '1',
        },
    );
    assert_eq!(cm.stats().ivr_routed, 1);
    let cmds: Vec<_> = cm.node_commands().collect();
    assert!(matches!(cmds[0].1, NodeCommand::End { .. }));
    assert!(matches!(cmds[1].1, NodeCommand::Hold { .. }));
    let out = sent(&mut cm);
    // The caller is moved to the queue node, and agent 1000 (idle, registered) is called.
    let reinvite = out
        .iter()
        .find(|(a, b)| *a == addr(UA) && b.starts_with(b"INVITE"))
        .unwrap();
    let queue_node = SessionDescription::parse(parse(&reinvite.1).body())
        .unwrap()
        .audio_addr()
        .unwrap();
    assert!(
        cm.nodes()
            .iter()
            .any(|n| n.addr == queue_node && n.role == Role::Queue)
    );
    // The caller accepts the transfer; until it does, no other re-INVITE may go to it.
    let mut accepted = Vec::new();
    let transfer_body = offer("127.0.0.1:7002", 7);
    pbxlab_proto::builder::write_response(
        &mut accepted,
        &parse(&reinvite.1),
        200,
        "OK",
        Some("ua"),
        &[
            ("Contact", "<sip:1001@127.0.0.1:7000>"),
            ("Content-Type", "application/sdp"),
        ],
        transfer_body.as_bytes(),
    );
    cm.handle(2 * NS, addr(UA), &accepted);
    let to_agent = out
        .iter()
        .find(|(a, _)| *a == addr(CALLEE))
        .expect("INVITE to the agent");
    let agent_invite = parse(&to_agent.1);
    assert_eq!(agent_invite.request_uri(), Some("sip:1000@127.0.0.1:7100"));
    assert_eq!(
        cm.stats().queue_waiting,
        0,
        "taken off the queue while the agent rings"
    );
    let mut ok = Vec::new();
    let body = offer("127.0.0.1:7102", 99);
    pbxlab_proto::builder::write_response(
        &mut ok,
        &agent_invite,
        200,
        "OK",
        Some("ag"),
        &[
            ("Contact", "<sip:1000@127.0.0.1:7100>"),
            ("Content-Type", "application/sdp"),
        ],
        body.as_bytes(),
    );
    cm.handle(3 * NS, addr(CALLEE), &ok);
    let cmds: Vec<_> = cm.node_commands().collect();
    assert!(
        cmds.iter()
            .any(|(_, c)| matches!(c, NodeCommand::Relay { b, .. } if b.ssrc == Some(99)))
    );
    assert_eq!(cm.stats().queue_answered, 1);
    let out = sent(&mut cm);
    let connect = out
        .iter()
        .find(|(a, b)| *a == addr(UA) && b.starts_with(b"INVITE"))
        .unwrap();
    let media = SessionDescription::parse(parse(&connect.1).body())
        .unwrap()
        .audio_addr()
        .unwrap();
    assert!(
        cm.nodes()
            .iter()
            .any(|n| n.addr == media && n.role == Role::Media)
    );
    // Balancer: a queue session (held until the end) and a media session.
    assert_eq!(cm.balancer().placed(), 2);
    cm.balancer().audit().unwrap();
}

#[test]
fn a_caller_who_hangs_up_while_waiting_is_counted_abandoned() {
    let mut cm = cm();
    let invite = request(
        "INVITE",
        "sip:queue-1@x",
        "1009",
        "q1",
        1,
        "",
        &offer(UA_RTP, 5),
    );
    cm.handle(0, addr(UA), &invite);
    let ok = sent(&mut cm);
    let to = parse(&ok[0].1).header(HeaderName::To).unwrap().to_owned();
    assert_eq!(cm.stats().queue_waiting, 1);
    let bye = String::from_utf8(request("BYE", "sip:cm@x", "1009", "q1", 2, "", ""))
        .unwrap()
        .replace("To: <sip:cm@x>", &format!("To: {to}"));
    cm.handle(NS, addr(UA), bye.as_bytes());
    let s = cm.stats();
    assert_eq!(
        (s.queue_waiting, s.queue_abandoned, s.calls_active),
        (0, 1, 0)
    );
    assert_eq!(cm.balancer().placed(), 0);
}

#[test]
fn every_participant_of_a_room_lands_on_one_meeting_node() {
    let mut cm = cm();
    let mut rooms = Vec::new();
    for i in 0..6 {
        let room = if i % 2 == 0 { "meeting-a" } else { "meeting-b" };
        let invite = request(
            "INVITE",
            &format!("sip:{room}@x"),
            "1",
            &format!("m{i}"),
            1,
            "",
            &offer(UA_RTP, i),
        );
        cm.handle(0, addr(UA), &invite);
        let _ = sent(&mut cm);
        match cm.node_commands().next() {
            Some((s, NodeCommand::Join { room, .. })) => rooms.push((room, s)),
            other => panic!("{other:?}"),
        }
    }
    for (room, server) in &rooms {
        assert!(
            rooms
                .iter()
                .filter(|(r, _)| r == room)
                .all(|(_, s)| s == server)
        );
    }
    assert_ne!(rooms[0].0, rooms[1].0);
    let st = cm.stats();
    assert_eq!(
        (
            st.meeting_rooms,
            st.meeting_joins,
            st.meeting_split_joins,
            st.meeting_largest
        ),
        (2, 6, 0, 3)
    );
}

#[test]
fn expires_zero_unregisters_and_the_user_becomes_unreachable() {
    let mut cm = cm();
    assert_eq!(register(&mut cm, 0, 1006, CALLEE, "pw-1006"), 200);
    assert_eq!(cm.stats().registered, 1);
    // The same client, authenticated again (a fresh challenge), with Expires: 0.
    assert_eq!(register_for(&mut cm, NS, 1006, CALLEE, "pw-1006", 0), 200);
    assert_eq!(cm.stats().registered, 0);
    cm.handle(
        NS,
        addr(UA),
        &request(
            "INVITE",
            "sip:1006@x",
            "1",
            "after",
            1,
            "",
            &offer(UA_RTP, 1),
        ),
    );
    assert_eq!(parse(&sent(&mut cm)[0].1).code(), Some(480));
}

/// A node that stopped answering goes down even while someone sending from its address
/// answers every probe for it with the probe's own numbers (`z9hG4bKp{server}x{seq}`, what
/// the branch used to be) or a made-up MAC: only the probe's real branch counts.
#[test]
fn forged_probe_answers_from_the_nodes_address_do_not_keep_a_stopped_node_online() {
    let mut cm = cm();
    let stopped = cm.nodes()[0].clone();
    for round in 0..4u64 {
        let now = round * NS;
        cm.advance(now);
        for (to, probe) in sent(&mut cm) {
            let p = parse(&probe);
            if p.method() != Some(Method::Options) {
                continue;
            }
            let mut ok = Vec::new();
            if to != stopped.addr {
                pbxlab_proto::builder::write_response(&mut ok, &p, 200, "OK", Some("n"), &[], b"");
                cm.handle(now + MS, to, &ok);
                continue;
            }
            let text = String::from_utf8(probe.clone()).unwrap();
            let branch = p.top_via().unwrap().branch.unwrap();
            let (numbers, _) = branch.rsplit_once('x').unwrap();
            for forged in [numbers.to_owned(), format!("{numbers}x00000000deadbeef")] {
                let forged = text.replace(branch, &forged);
                let mut ok = Vec::new();
                let f = parse(forged.as_bytes());
                pbxlab_proto::builder::write_response(&mut ok, &f, 200, "OK", Some("n"), &[], b"");
                cm.handle(now + MS, stopped.addr, &ok);
            }
        }
        cm.advance(now + 500 * MS);
        let _ = sent(&mut cm);
    }
    let state = |cm: &CallManager, id| cm.balancer().server(id).unwrap().state;
    assert_eq!(state(&cm, stopped.id), ServerState::Down);
    assert_eq!(cm.stats().responses_forged, 8);
    for n in &cm.nodes()[1..] {
        assert_eq!(state(&cm, n.id), ServerState::Online, "{}", n.name);
    }
}

/// An OPTIONS from `from` at `now`; the status code it got.
fn options_from(cm: &mut CallManager, now: Nanos, from: SocketAddr, id: &str) -> u16 {
    let r = request("OPTIONS", "sip:cm@x", "f", id, 1, "", "");
    cm.handle(now, from, &r);
    let out = sent(cm);
    parse(&out[0].1).code().unwrap()
}

/// 2,000 OPTIONS in one second from 49 addresses, each below its own limit (41/s of 100/s):
/// the per-source buckets alone let all of them through. The global bucket (200/s, 400 at
/// once) answers the rest 503 with Retry-After, counted apart; a whitelisted source still
/// passes in the middle of it, and a quiet second later the sprayers pass again.
#[test]
fn a_flood_spread_over_49_sources_earns_503_once_the_global_limit_is_passed() {
    let mut cm = cm_with(|c| {
        c.rate_limit_per_s = 100.0;
        c.rate_burst = 200.0;
        c.global_rate_limit_per_s = 200.0;
        c.global_rate_burst = 400.0;
    });
    let source = |i: u32| SocketAddr::from(([127, 0, 1, (10 + i % 49) as u8], 9000));
    let mut ok = 0;
    for i in 0..2000u32 {
        let now = u64::from(i) * NS / 2000;
        let r = request("OPTIONS", "sip:cm@x", "f", &format!("s{i}"), 1, "", "");
        cm.handle(now, source(i), &r);
        let out = sent(&mut cm);
        let m = parse(&out[0].1);
        match m.code() {
            Some(200) => ok += 1,
            Some(503) => assert_eq!(m.header(HeaderName::RetryAfter), Some("1")),
            other => panic!("{other:?}"),
        }
        if i == 1000 {
            assert_eq!(options_from(&mut cm, now, addr(UA), "w"), 200);
        }
    }
    // 400 at once and 200/s for the second: about 600, give or take the last refill.
    assert!((590..=610).contains(&ok), "{ok} passed");
    let s = cm.stats();
    assert_eq!(s.global_rate_limited, 2000 - ok);
    assert_eq!(s.rate_limited, 0, "no source was above its own limit");
    assert_eq!(options_from(&mut cm, 3 * NS, source(7), "later"), 200);
}

/// A source being limited stays limited however many other sources come and go: the table
/// used to be wiped when it held 65,536 entries, so 65,536 one-shot requests from spoofed
/// addresses gave the flooder a full bucket again.
#[test]
fn filling_the_rate_table_with_one_shot_sources_does_not_reset_a_flooding_source() {
    let mut cm = cm_with(|c| {
        c.global_rate_limit_per_s = 1e9;
        c.global_rate_burst = 1e9;
    });
    let flooder = addr(FLOODER);
    let codes: Vec<u16> = (0..20)
        .map(|i| options_from(&mut cm, i * MS, flooder, &format!("f{i}")))
        .collect();
    assert_eq!(codes.iter().filter(|&&c| c == 503).count(), 15);
    for i in 0..70_000u32 {
        let one_shot = SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + i), 5060));
        let r = request("OPTIONS", "sip:cm@x", "o", "o", 1, "", "");
        cm.handle(20 * MS, one_shot, &r);
        if i % 1024 == 0 {
            let _ = sent(&mut cm);
        }
    }
    let _ = sent(&mut cm);
    assert!(cm.stats().rate_sources_evicted >= 70_000 - 65_536);
    assert_eq!(options_from(&mut cm, 25 * MS, flooder, "again"), 503);
    assert_eq!(cm.stats().rate_limited, 16);
    // And it recovers as its own bucket refills, not sooner.
    assert_eq!(options_from(&mut cm, 2 * NS, flooder, "later"), 200);
}

/// The caller's ACK in the dialog of `ok` (our 200 to its INVITE `call_id`), with `body`.
fn ack_with(ok: &Message<'_>, call_id: &str, body: &str) -> Vec<u8> {
    let to = ok.header(HeaderName::To).unwrap().to_owned();
    let extra = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    String::from_utf8(request(
        "ACK",
        "sip:cm@127.0.0.1:5060",
        "sipp",
        call_id,
        1,
        extra,
        body,
    ))
    .unwrap()
    .replace("To: <sip:cm@127.0.0.1:5060>", &format!("To: {to}"))
    .into_bytes()
}

/// An INVITE without SDP (a delayed offer, RFC 3261 13.2.1) gets our offer in the 200 and
/// its media from the ACK's answer; it used to get 488. An ACK without an answer ends the
/// call with a BYE.
#[test]
fn an_invite_without_sdp_gets_the_offer_in_the_200_and_the_answer_from_the_ack() {
    let mut cm = cm();
    let invite = request("INVITE", "sip:echo@127.0.0.1:5060", "sipp", "d1", 1, "", "");
    cm.handle(0, addr(UA), &invite);
    let out = sent(&mut cm);
    let ok = parse(&out[0].1);
    assert_eq!(ok.code(), Some(200));
    let offer = SessionDescription::parse(ok.body()).unwrap();
    let node = offer.audio_addr().unwrap();
    assert!(cm.nodes().iter().any(|n| n.addr == node));
    let audio = offer.audio.unwrap();
    assert_eq!(audio.payload_types.as_slice(), &[0, 8, 101][..]);
    assert_eq!(cm.node_commands().count(), 0, "no media before the answer");
    // The caller answers with PCMA (and no telephone-event).
    let answer = offer_pcma(UA_RTP, 77);
    cm.handle(MS, addr(UA), &ack_with(&ok, "d1", &answer));
    let cmds: Vec<_> = cm.node_commands().collect();
    match &cmds[..] {
        [(_, NodeCommand::Echo { leg, .. })] => {
            assert_eq!(
                (leg.remote, leg.ssrc, leg.codec_pt, leg.dtmf_pt),
                (addr(UA_RTP), Some(77), 8, None)
            );
        }
        other => panic!("{other:?}"),
    }
    // The 200 is not sent again: the ACK confirmed it.
    cm.advance(2 * NS);
    assert!(
        texts(&sent(&mut cm))
            .iter()
            .all(|t| !t.starts_with("SIP/2.0 200"))
    );

    // An ACK with no answer: nothing was agreed, so the call ends.
    let invite = request(
        "INVITE",
        "sip:ivr-1@127.0.0.1:5060",
        "sipp",
        "d2",
        1,
        "",
        "",
    );
    cm.handle(3 * NS, addr(UA), &invite);
    let out = sent(&mut cm);
    let ok = parse(&out[0].1);
    assert_eq!(ok.code(), Some(200));
    cm.handle(3 * NS + MS, addr(UA), &ack_with(&ok, "d2", ""));
    let out = sent(&mut cm);
    assert!(
        out.iter()
            .any(|(to, b)| *to == addr(UA) && b.starts_with(b"BYE")),
        "{:?}",
        texts(&out)
    );
    assert!(
        cm.node_commands()
            .all(|(_, c)| !matches!(c, NodeCommand::Ivr { .. })),
        "no prompt for a call without media"
    );
    assert_eq!(cm.stats().calls_active, 1, "only the echo call is left");
    assert_eq!(
        cm.stats().failures.get("no usable SDP answer in the ACK"),
        Some(&1)
    );
}

/// An SDP body naming PCMA only, with an SSRC.
fn offer_pcma(rtp: &str, ssrc: u32) -> String {
    let a: SocketAddr = addr(rtp);
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 8\r\n\
         a=rtpmap:8 PCMA/8000\r\na=ssrc:{ssrc} cname:t\r\n",
        ip = a.ip(),
        port = a.port()
    )
}

/// A caller that asks for a session timer (RFC 4028: `Supported: timer`, `Session-Expires`)
/// gets it, as refresher: each re-INVITE refreshes it, and a session left unrefreshed is
/// ended (BYE, media ended) min(32 s, a third) before it expires. Less than 90 s gets 422.
#[test]
fn a_session_timer_the_caller_asked_for_ends_the_call_unless_refreshed() {
    let mut cm = cm();
    let timer = "Content-Type: application/sdp\r\nSupported: timer\r\nSession-Expires: 90\r\n";
    let short = "Content-Type: application/sdp\r\nSupported: timer\r\nSession-Expires: 30\r\n";
    let invite = request(
        "INVITE",
        "sip:echo@x",
        "sipp",
        "t0",
        1,
        short,
        &offer(UA_RTP, 5),
    );
    cm.handle(0, addr(UA), &invite);
    let out = sent(&mut cm);
    let refused = parse(&out[0].1);
    assert_eq!(refused.code(), Some(422));
    let min_se = refused.headers().iter().find(|h| h.raw_name == "Min-SE");
    assert_eq!(min_se.map(|h| h.value), Some("90"));

    let invite = request(
        "INVITE",
        "sip:echo@x",
        "sipp",
        "t1",
        1,
        timer,
        &offer(UA_RTP, 5),
    );
    cm.handle(0, addr(UA), &invite);
    let out = sent(&mut cm);
    let ok = parse(&out[0].1);
    assert_eq!(ok.code(), Some(200));
    let se = ok
        .headers()
        .iter()
        .find(|h| h.raw_name == "Session-Expires");
    assert_eq!(se.map(|h| h.value), Some("90;refresher=uac"));
    assert_eq!(ok.header(HeaderName::Require), Some("timer"));
    cm.handle(MS, addr(UA), &ack_with(&ok, "t1", ""));
    let _ = cm.node_commands().count();
    let byes = |cm: &mut CallManager| {
        sent(cm)
            .iter()
            .filter(|(to, b)| *to == addr(UA) && b.starts_with(b"BYE"))
            .count()
    };
    // Refreshed at 50 s by a re-INVITE: due at 50 + 90 - 30 = 110 s, not at 60 s.
    let to = ok.header(HeaderName::To).unwrap().to_owned();
    let reinvite = String::from_utf8(request(
        "INVITE",
        "sip:cm@127.0.0.1:5060",
        "sipp",
        "t1",
        2,
        timer,
        &offer(UA_RTP, 5),
    ))
    .unwrap()
    .replace("To: <sip:cm@127.0.0.1:5060>", &format!("To: {to}"));
    cm.handle(50 * NS, addr(UA), reinvite.as_bytes());
    let out = sent(&mut cm);
    let refreshed = parse(&out[0].1);
    assert_eq!(refreshed.code(), Some(200));
    assert!(
        refreshed
            .headers()
            .iter()
            .any(|h| h.raw_name == "Session-Expires")
    );
    cm.advance(61 * NS);
    cm.advance(109 * NS);
    assert_eq!(byes(&mut cm), 0, "refreshed at 50 s");
    assert_eq!(cm.stats().calls_active, 1);
    cm.advance(111 * NS);
    assert_eq!(byes(&mut cm), 1);
    assert_eq!(cm.stats().calls_active, 0);
    assert_eq!(cm.stats().failures.get("session timer expired"), Some(&1));
    assert!(
        cm.node_commands()
            .any(|(_, c)| matches!(c, NodeCommand::End { .. }))
    );
}

/// A session-timer refresh is any re-INVITE (RFC 4028 7.4), and a re-INVITE may carry no
/// offer (RFC 3261 14.1, as the delayed offer of a first INVITE): ours is in the 200 then,
/// the media as it was. Such a refresh got 488, was not counted, and the call was ended with
/// a BYE as unrefreshed.
#[test]
fn a_refresh_reinvite_without_sdp_gets_our_offer_and_refreshes_the_timer() {
    let mut cm = cm();
    let timer = "Content-Type: application/sdp\r\nSupported: timer\r\nSession-Expires: 90\r\n";
    let invite = request(
        "INVITE",
        "sip:echo@x",
        "sipp",
        "r1",
        1,
        timer,
        &offer(UA_RTP, 5),
    );
    cm.handle(0, addr(UA), &invite);
    let out = sent(&mut cm);
    let ok = parse(&out[0].1);
    assert_eq!(ok.code(), Some(200));
    let node = SessionDescription::parse(ok.body())
        .unwrap()
        .audio_addr()
        .unwrap();
    cm.handle(MS, addr(UA), &ack_with(&ok, "r1", ""));
    let started = cm.node_commands().count();
    assert_eq!(started, 1);
    let to = ok.header(HeaderName::To).unwrap().to_owned();
    let reinvite = String::from_utf8(request(
        "INVITE",
        "sip:cm@127.0.0.1:5060",
        "sipp",
        "r1",
        2,
        "Supported: timer\r\nSession-Expires: 90\r\n",
        "",
    ))
    .unwrap()
    .replace("To: <sip:cm@127.0.0.1:5060>", &format!("To: {to}"));
    cm.handle(50 * NS, addr(UA), reinvite.as_bytes());
    let out = sent(&mut cm);
    let refreshed = parse(&out[0].1);
    assert_eq!(refreshed.code(), Some(200), "{:?}", texts(&out));
    let ours = SessionDescription::parse(refreshed.body()).unwrap();
    assert_eq!(ours.audio_addr(), Some(node), "the media stays where it is");
    assert!(
        refreshed
            .headers()
            .iter()
            .any(|h| h.raw_name == "Session-Expires")
    );
    // The ACK carries the caller's answer; nothing is re-pointed.
    cm.handle(
        50 * NS + MS,
        addr(UA),
        &ack_with(&refreshed, "r1", &offer(UA_RTP, 5)),
    );
    assert_eq!(cm.node_commands().count(), 0);
    // Refreshed at 50 s: still up at 109 s, ended by 111 s.
    cm.advance(61 * NS);
    cm.advance(109 * NS);
    assert_eq!(cm.stats().calls_active, 1, "refreshed at 50 s");
    cm.advance(111 * NS);
    assert_eq!(cm.stats().calls_active, 0);
}

#[test]
fn a_node_linked_again_is_told_what_it_carries_and_a_restarted_one_loses_it() {
    let mut cm = cm();
    let invite = request(
        "INVITE",
        "sip:echo@127.0.0.1:5060",
        "sipp",
        "r1",
        1,
        "Content-Type: application/sdp\r\n",
        &offer(UA_RTP, 42),
    );
    cm.handle(0, addr(UA), &invite);
    sent(&mut cm);
    let first: Vec<_> = cm.node_commands().collect();
    let [(on, NodeCommand::Echo { session, .. })] = first[..] else {
        panic!("{first:?}");
    };
    // The same process on a new link: the same command again, nothing moves.
    cm.relink(MS, on, 0);
    let again: Vec<_> = cm.node_commands().collect();
    let mut expected = vec![(on, NodeCommand::Mark)];
    expected.extend(first.iter().cloned());
    expected.push((on, NodeCommand::Sweep));
    assert_eq!(again, expected);
    assert_eq!(cm.stats().moved, 0);
    // Another process: its sessions died with the old one, so the call moves.
    cm.relink(2 * MS, on, 9);
    assert_eq!(cm.node(on).unwrap().instance, 9);
    assert_eq!(cm.stats().moved, 1);
    let moved: Vec<_> = cm.node_commands().collect();
    assert!(
        moved
            .iter()
            .any(|(s, c)| *s != on && matches!(c, NodeCommand::Echo { .. })),
        "{moved:?}"
    );
    assert!(moved.contains(&(on, NodeCommand::End { session })));
    // Nothing is anchored on it now: a new link tells it only to sweep.
    cm.relink(3 * MS, on, 9);
    let swept: Vec<_> = cm.node_commands().collect();
    assert_eq!(swept, [(on, NodeCommand::Mark), (on, NodeCommand::Sweep)]);
}
