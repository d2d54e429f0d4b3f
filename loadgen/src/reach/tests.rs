use std::collections::HashSet;

use pbxlab_proto::digest::{self, Algorithm};

use super::*;

const TARGET: &str = "127.0.0.5:5060";
const LOCAL: &str = "127.0.0.1:40000";
const MEDIA: &str = "127.0.0.1:40002";

fn plan() -> Plan {
    Plan {
        target: TARGET.parse().unwrap(),
        domain: "pbxlab.test".into(),
        username: "1000".into(),
        password: "pw-1000".into(),
        in_flight: 2,
        give_up: Duration::from_secs(8),
        run: 7,
    }
}

/// A Call Manager for the check, scripted: it challenges every INVITE without credentials,
/// answers one with the right ones 200 for a bound user (after a 100) and 480 for another,
/// and answers BYEs. Each datagram it took is kept, parsed again when needed.
struct Registrar {
    bound: HashSet<u32>,
    /// Users whose INVITE it leaves unanswered, and how many of their INVITEs to drop first.
    silent: HashSet<u32>,
    drop_first: HashSet<u32>,
    seen: Vec<Vec<u8>>,
    /// Answered 200s, sent again to check that the ACK is too.
    oks: Vec<Vec<u8>>,
}

impl Registrar {
    fn new(bound: &[u32]) -> Registrar {
        Registrar {
            bound: bound.iter().copied().collect(),
            silent: HashSet::new(),
            drop_first: HashSet::new(),
            seen: Vec::new(),
            oks: Vec::new(),
        }
    }

    fn answer(&mut self, datagram: &[u8]) -> Vec<Vec<u8>> {
        self.seen.push(datagram.to_vec());
        let msg = parse_datagram(datagram).unwrap();
        let user: u32 = msg
            .request_uri()
            .and_then(|u| u.strip_prefix("sip:"))
            .and_then(|u| u.split('@').next())
            .and_then(|u| u.parse().ok())
            .unwrap_or(0);
        let mut out = Vec::new();
        let reply = |code: u16, tag: Option<&str>, extra: &[(&str, &str)]| {
            let mut r = Vec::new();
            write_response(&mut r, &msg, code, reason_phrase(code), tag, extra, b"");
            r
        };
        match msg.method() {
            Some(Method::Invite) => {
                if self.silent.contains(&user) || self.drop_first.remove(&user) {
                    return out;
                }
                let Some(auth) = msg.header(HeaderName::ProxyAuthorization) else {
                    let mut ch = String::new();
                    digest::write_challenge(&mut ch, "pbxlab", "n1", Algorithm::Md5, None);
                    out.push(reply(407, Some("cm"), &[("Proxy-Authenticate", &ch)]));
                    return out;
                };
                let auth = digest::parse_authorization(auth).unwrap();
                assert!(digest::verify(&auth, "INVITE", "pw-1000"), "{auth:?}");
                out.push(reply(100, None, &[]));
                if self.bound.contains(&user) {
                    let ok = reply(200, Some("callee"), &[("Contact", "<sip:cm@127.0.0.5>")]);
                    self.oks.push(ok.clone());
                    out.push(ok);
                } else {
                    out.push(reply(480, Some("cm"), &[]));
                }
            }
            Some(Method::Bye) => out.push(reply(200, None, &[])),
            _ => {}
        }
        out
    }

    /// The requests it took of `method`, as (Call-ID, top branch, CSeq number, To).
    fn requests(&self, method: Method) -> Vec<(String, String, u32, String)> {
        self.seen
            .iter()
            .filter_map(|d| {
                let m = parse_datagram(d).ok()?;
                (m.method() == Some(method)).then(|| {
                    (
                        m.call_id().unwrap_or_default().to_owned(),
                        m.top_via()
                            .and_then(|v| v.branch)
                            .unwrap_or_default()
                            .to_owned(),
                        m.cseq().map_or(0, |c| c.seq),
                        m.header(HeaderName::To).unwrap_or_default().to_owned(),
                    )
                })
            })
            .collect()
    }
}

/// Runs the check against `cm` in steps of 10 ms until it is done (or 30 s pass).
fn run(calls: &mut Calls, cm: &mut Registrar, t0: Instant) -> Instant {
    let mut now = t0;
    while !calls.done() && now < t0 + Duration::from_secs(30) {
        let mut sent = Vec::new();
        calls.poll(now, |d| sent.push(d.to_vec()));
        for d in sent {
            for answer in cm.answer(&d) {
                calls.on_datagram(now, &answer);
            }
        }
        now += Duration::from_millis(10);
    }
    now
}

#[test]
fn each_user_is_called_through_the_challenge_and_an_unbound_one_is_named() {
    let mut cm = Registrar::new(&[1001, 1003]);
    let t0 = Instant::now();
    let mut calls = Calls::new(
        plan(),
        LOCAL.parse().unwrap(),
        MEDIA.parse().unwrap(),
        &[1001, 1002, 1003],
    );
    run(&mut calls, &mut cm, t0);
    assert!(calls.done());
    let r = calls.reached();
    assert_eq!((r.called, r.answered), (3, 2), "{r:?}");
    assert_eq!(r.unbound, vec![1002]);
    assert!(r.unanswered.is_empty() && r.refused.is_empty(), "{r:?}");
    assert_eq!(r.hangups_unanswered, 0);
    assert_eq!(r.lost(), 1);

    let invites = cm.requests(Method::Invite);
    assert_eq!(
        invites.len(),
        6,
        "a challenged and an authorised INVITE per user"
    );
    let acks = cm.requests(Method::Ack);
    // The 407's ACK is in the INVITE's transaction (its branch and CSeq) and names the tag
    // the 407 gave; the 200's ACK has a branch of its own.
    for (id, branch, seq, _) in invites.iter().filter(|i| i.2 == 1) {
        assert!(
            acks.iter()
                .any(|a| &a.0 == id && &a.1 == branch && a.2 == *seq && a.3.contains("tag=cm")),
            "no ACK of the 407 to {id}: {acks:?}"
        );
    }
    let byes = cm.requests(Method::Bye);
    assert_eq!(byes.len(), 2, "{byes:?}");
    for (id, _, seq, to) in &byes {
        assert_eq!(*seq, 3, "the BYE follows the INVITE's CSeq 2");
        assert!(to.contains("tag=callee"), "{to}");
        assert!(
            acks.iter().any(|a| &a.0 == id && a.2 == 2),
            "the 200 to {id} was ACKed"
        );
    }
    // The offer names the media address, not the signalling one.
    let first = parse_datagram(&cm.seen[0]).unwrap();
    let offer = sdp::SessionDescription::parse(first.body()).unwrap();
    assert_eq!(offer.audio_addr(), Some(MEDIA.parse().unwrap()));
}

#[test]
fn a_lost_invite_is_sent_again_and_a_silent_user_is_given_up() {
    let mut cm = Registrar::new(&[1001, 1002]);
    cm.drop_first.insert(1001);
    cm.silent.insert(1002);
    let t0 = Instant::now();
    let mut calls = Calls::new(
        plan(),
        LOCAL.parse().unwrap(),
        MEDIA.parse().unwrap(),
        &[1001, 1002],
    );
    let end = run(&mut calls, &mut cm, t0);
    let r = calls.reached();
    assert_eq!(r.answered, 1, "{r:?}");
    assert_eq!(r.unanswered, vec![1002]);
    // Given up at 8 s, not before; retransmitted at 0.5, 1.5, 3.5 and 7.5 s meanwhile.
    assert!(end >= t0 + Duration::from_secs(8), "{:?}", end - t0);
    let to_silent = cm
        .requests(Method::Invite)
        .into_iter()
        .filter(|i| i.0.contains("-1002@"))
        .count();
    assert_eq!(to_silent, 5);
}

#[test]
fn a_200_sent_again_is_acked_again_and_a_forged_answer_counts_for_nothing() {
    let mut cm = Registrar::new(&[1001]);
    let t0 = Instant::now();
    let mut calls = Calls::new(
        plan(),
        LOCAL.parse().unwrap(),
        MEDIA.parse().unwrap(),
        &[1001],
    );
    // Before any real answer: a 200 on a branch we never sent is not an answer.
    let mut sent = Vec::new();
    calls.poll(t0, |d| sent.push(d.to_vec()));
    let invite = parse_datagram(&sent[0]).unwrap();
    let mut forged = Vec::new();
    write_response(&mut forged, &invite, 200, "OK", Some("x"), &[], b"");
    let forged = String::from_utf8(forged)
        .unwrap()
        .replace("branch=z9hG4bK-reach-1001-1", "branch=z9hG4bK-other");
    calls.on_datagram(t0, forged.as_bytes());
    assert_eq!(calls.reached().answered, 0);

    for d in sent {
        for a in cm.answer(&d) {
            calls.on_datagram(t0, &a);
        }
    }
    run(&mut calls, &mut cm, t0);
    assert_eq!(calls.reached().answered, 1);
    let acks_before = cm.requests(Method::Ack).len();
    let ok = cm.oks.last().unwrap().clone();
    calls.on_datagram(t0, &ok);
    let mut again = Vec::new();
    calls.poll(t0, |d| again.push(d.to_vec()));
    for d in &again {
        cm.answer(d);
    }
    // The call is over: the 200 again finds no call and is not counted twice.
    assert_eq!(calls.reached().answered, 1);
    assert_eq!(cm.requests(Method::Ack).len(), acks_before + 1);
}
