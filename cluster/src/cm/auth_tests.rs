//! Attacks on digest authentication, performed against the Call Manager with a fake clock:
//! forged and expired nonces, replayed requests, calls placed without credentials or in
//! another user's name, passwords guessed.

use pbxlab_proto::digest::{self, Algorithm, Challenge};
use pbxlab_proto::mac::{self, Key};
use pbxlab_proto::sip::HeaderName;

use super::tests::{CALLEE, MS, UA, UA_RTP, addr, cm, offer, parse, register, request, sent};
use super::*;

const ELSEWHERE: &str = "127.0.0.9:7000";
/// A phone that is not behind the trusted edge the other tests' 127.0.0.1 stands for.
const PHONE: &str = "127.0.0.5:7000";

/// A REGISTER of `user` from `from` binding `sip:{user}@{from}` for 60 s, with `auth` (an
/// `Authorization` value) if given.
fn register_request(user: u32, from: &str, cseq: u32, auth: Option<&str>) -> String {
    let aor = format!("sip:{user}@pbxlab.test");
    let auth = auth.map_or_else(String::new, |a| format!("Authorization: {a}\r\n"));
    format!(
        "REGISTER sip:pbxlab.test SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKr{user}x{cseq}\r\n\
         From: <{aor}>;tag=r{user}\r\nTo: <{aor}>\r\nCall-ID: r{user}\r\nCSeq: {cseq} REGISTER\r\n\
         Contact: <sip:{user}@{from}>\r\nExpires: 60\r\n{auth}Content-Length: 0\r\n\r\n"
    )
}

/// The answer to `bytes` sent from `from` at `now`: its code and its challenge header, if any.
fn answer(cm: &mut CallManager, now: Nanos, from: &str, bytes: &[u8]) -> (u16, Option<String>) {
    cm.handle(now, addr(from), bytes);
    let out = sent(cm);
    let m = parse(&out[0].1);
    let ch = m
        .header(HeaderName::WwwAuthenticate)
        .or(m.header(HeaderName::ProxyAuthenticate))
        .map(str::to_owned);
    (m.code().unwrap(), ch)
}

/// A challenge for `user`'s REGISTER from `from` at `now`: the nonce it carries.
fn nonce_for(cm: &mut CallManager, now: Nanos, user: u32, from: &str) -> String {
    let (code, ch) = answer(
        cm,
        now,
        from,
        register_request(user, from, 1, None).as_bytes(),
    );
    assert_eq!(code, 401);
    digest::parse_challenge(&ch.unwrap())
        .unwrap()
        .nonce
        .to_owned()
}

/// The `Authorization` value answering `nonce` for `user` with `password`, `nc` and qop auth.
fn authorization(user: u32, password: &str, nonce: &str, nc: u32) -> String {
    authorization_qop(user, password, nonce, nc, true)
}

fn authorization_qop(user: u32, password: &str, nonce: &str, nc: u32, qop: bool) -> String {
    let ch = Challenge {
        realm: "pbxlab.test",
        nonce,
        opaque: None,
        algorithm: Algorithm::Md5,
        qop_auth: qop,
        stale: false,
    };
    let mut out = String::new();
    let user = user.to_string();
    digest::write_authorization(
        &mut out,
        &ch,
        &user,
        password,
        "REGISTER",
        "sip:pbxlab.test",
        "c1",
        nc,
    );
    out
}

/// `user`'s authenticated REGISTER from `from` on `nonce`, and its answer.
fn register_on(
    cm: &mut CallManager,
    now: Nanos,
    user: u32,
    from: &str,
    nonce: &str,
    nc: u32,
) -> (u16, Option<String>) {
    let auth = authorization(user, &format!("pw-{user}"), nonce, nc);
    let req = register_request(user, from, 2, Some(&auth));
    answer(cm, now, from, req.as_bytes())
}

fn stale(challenge: &Option<String>) -> bool {
    digest::parse_challenge(challenge.as_deref().unwrap())
        .unwrap()
        .stale
}

/// A nonce as ours are made, `{t:x}.{n:x}.{MAC}`, under `key` (the test Call Manager's own,
/// which an attacker would not have, or another).
fn nonce_made_with(key: &Key, t: u64, n: u64) -> String {
    let tag = key
        .derive("nonce")
        .mac(&[&t.to_be_bytes(), &n.to_be_bytes()]);
    let mut s = format!("{t:x}.{n:x}.");
    mac::push_hex(&mut s, &tag[..16]);
    s
}

#[test]
fn a_nonce_from_the_future_or_with_a_made_up_mac_is_not_accepted() {
    let mut cm = cm();
    let now = 10 * NS;
    let genuine = nonce_for(&mut cm, now, 1003, UA);
    // The old nonce was `{t:x}.{mix(secret ^ t)}`, and mix64 can be inverted: from one nonce
    // an attacker had the secret, and a far-future time was accepted forever (its expiry sum
    // overflowed). A nonce is now a MAC; move the time and it no longer matches.
    let (_, mac_part) = genuine.split_once('.').unwrap();
    for t in [u64::MAX, now / NS + 1_000_000] {
        let forged = format!("{t:x}.{mac_part}");
        let (code, ch) = register_on(&mut cm, now, 1003, UA, &forged, 1);
        assert_eq!(code, 401, "{forged}");
        assert!(!stale(&ch), "a forged nonce is not stale: {forged}");
    }
    // Even with the key, a nonce dated ahead of the clock (or numbered ahead of what was
    // handed out) is not one we made.
    let key = Key::from_seed(1);
    for (t, n) in [(u64::MAX, 0), (now / NS + 3600, 0), (now / NS, 1_000)] {
        let ahead = nonce_made_with(&key, t, n);
        let (code, ch) = register_on(&mut cm, now, 1003, UA, &ahead, 1);
        assert_eq!((code, stale(&ch)), (401, false), "{ahead}");
    }
    // Another key's nonce (a cluster restarted with a new random key) is not ours either.
    let theirs = nonce_made_with(&Key::from_seed(2), now / NS, 0);
    assert_eq!(register_on(&mut cm, now, 1003, UA, &theirs, 1).0, 401);
    assert_eq!(cm.stats().registered, 0);
    assert_eq!(cm.stats().auth_forged_nonces, 6);
    // The genuine one, answered right, registers.
    assert_eq!(register_on(&mut cm, now, 1003, UA, &genuine, 1).0, 200);
    assert_eq!(cm.stats().registered, 1);
}

#[test]
fn an_expired_nonce_with_the_right_password_is_challenged_again_as_stale() {
    let mut cm = cm();
    let old = nonce_for(&mut cm, 0, 1004, UA);
    // 301 s on, the nonce has lapsed: the right password gets a new challenge marked stale
    // (RFC 7616 3.4), so a phone retries without asking its user.
    let later = 301 * NS;
    let (code, ch) = register_on(&mut cm, later, 1004, UA, &old, 1);
    assert_eq!((code, stale(&ch)), (401, true));
    assert_eq!(cm.stats().auth_stale, 1);
    // A wrong password on the lapsed nonce is still a wrong password.
    let wrong = authorization(1004, "guess", &old, 1);
    let (code, _) = answer(
        &mut cm,
        later,
        UA,
        register_request(1004, UA, 3, Some(&wrong)).as_bytes(),
    );
    assert_eq!(code, 403);
    assert_eq!(cm.stats().auth_failures, 1);
    // The fresh nonce of the stale challenge works.
    let fresh = digest::parse_challenge(ch.as_deref().unwrap())
        .unwrap()
        .nonce
        .to_owned();
    assert_eq!(register_on(&mut cm, later, 1004, UA, &fresh, 1).0, 200);
    // At exactly 300 s a nonce is still good.
    let edge = nonce_for(&mut cm, later, 1005, ELSEWHERE);
    assert_eq!(
        register_on(&mut cm, later + 300 * NS, 1005, ELSEWHERE, &edge, 1).0,
        200
    );
}

#[test]
fn a_captured_register_sent_again_from_elsewhere_is_challenged_and_changes_nothing() {
    let mut cm = cm();
    let nonce = nonce_for(&mut cm, 0, 1003, UA);
    let auth = authorization(1003, "pw-1003", &nonce, 1);
    let captured = register_request(1003, UA, 2, Some(&auth));
    assert_eq!(answer(&mut cm, 0, UA, captured.as_bytes()).0, 200);
    // The same bytes from another address: the digest is right, but nonce and count were
    // used. A new challenge (stale, as Kamailio's nonce_count answers), no binding.
    let (code, ch) = answer(&mut cm, NS, ELSEWHERE, captured.as_bytes());
    assert_eq!((code, stale(&ch)), (401, true));
    assert_eq!(cm.stats().auth_replays, 1);
    let b = cm.registrar.binding(1003).unwrap();
    assert_eq!(b.addr, addr(UA), "the binding did not move");
    // The client's own retransmission (its 200 lost) is the same request from the same
    // address: taken again while its transaction could still be retransmitting, then not.
    assert_eq!(answer(&mut cm, 2 * NS, UA, captured.as_bytes()).0, 200);
    assert_eq!(answer(&mut cm, 40 * NS, UA, captured.as_bytes()).0, 401);
    // The same nonce with the next count, in a new request, is fine; a count not above the
    // last is not, whatever the request.
    let next = authorization(1003, "pw-1003", &nonce, 2);
    assert_eq!(
        answer(
            &mut cm,
            41 * NS,
            UA,
            register_request(1003, UA, 3, Some(&next)).as_bytes()
        )
        .0,
        200
    );
    for (cseq, nc) in [(4, 2), (5, 1)] {
        let old = authorization(1003, "pw-1003", &nonce, nc);
        let req = register_request(1003, UA, cseq, Some(&old));
        assert_eq!(
            answer(&mut cm, 42 * NS, UA, req.as_bytes()).0,
            401,
            "nc {nc}"
        );
    }
    assert_eq!(cm.stats().auth_replays, 4);
}

#[test]
fn a_nonce_answered_without_qop_is_good_once() {
    let mut cm = cm();
    let nonce = nonce_for(&mut cm, 0, 1006, UA);
    // RFC 2069 answers carry no nc, so there is no count to check: the nonce is spent.
    let auth = authorization_qop(1006, "pw-1006", &nonce, 0, false);
    let first = register_request(1006, UA, 2, Some(&auth));
    assert_eq!(answer(&mut cm, 0, UA, first.as_bytes()).0, 200);
    let again = register_request(1006, UA, 3, Some(&auth));
    assert_eq!(answer(&mut cm, NS, UA, again.as_bytes()).0, 401);
    assert_eq!(answer(&mut cm, NS, ELSEWHERE, first.as_bytes()).0, 401);
}

const SDP: &str = "Content-Type: application/sdp\r\n";

/// `from_user`'s INVITE to `ruri` (Call-ID `id`, CSeq `cseq`), with `extra` header lines.
fn invite(ruri: &str, from_user: &str, id: &str, cseq: u32, extra: &str) -> Vec<u8> {
    let extra = format!("{SDP}{extra}");
    request(
        "INVITE",
        ruri,
        from_user,
        id,
        cseq,
        &extra,
        &offer(UA_RTP, 7),
    )
}

/// The `Proxy-Authorization` line answering the 407 `challenge` as `user` for `method`.
fn proxy_authorization(
    challenge: &str,
    user: u32,
    password: &str,
    method: &str,
    ruri: &str,
) -> String {
    let ch = digest::parse_challenge(challenge).unwrap();
    let mut out = String::from("Proxy-Authorization: ");
    digest::write_authorization(
        &mut out,
        &ch,
        &user.to_string(),
        password,
        method,
        ruri,
        "c9",
        1,
    );
    out.push_str("\r\n");
    out
}

fn codes(out: &[(SocketAddr, Vec<u8>)]) -> Vec<(SocketAddr, Option<u16>)> {
    out.iter().map(|(a, b)| (*a, parse(b).code())).collect()
}

#[test]
fn a_call_to_a_user_without_credentials_is_challenged_407_and_placed_once_answered() {
    let mut cm = cm();
    assert_eq!(register(&mut cm, 0, 1001, CALLEE, "pw-1001"), 200);
    let ruri = "sip:1001@pbxlab.test";
    let now = NS;
    let (code, ch) = answer(&mut cm, now, PHONE, &invite(ruri, "1000", "c1", 1, ""));
    assert_eq!(code, 407);
    let ch = ch.unwrap();
    assert_eq!(cm.stats().calls_total, 0, "no call placed");
    // The 407's ACK (hop by hop, the INVITE's branch, our stateless tag) is absorbed.
    let ack = String::from_utf8(request("ACK", ruri, "1000", "c1", 1, "", ""))
        .unwrap()
        .replace(&format!("To: <{ruri}>"), &format!("To: <{ruri}>;tag=cm"));
    cm.handle(now, addr(PHONE), ack.as_bytes());
    assert!(sent(&mut cm).is_empty());
    // Answered, the INVITE goes through: 100 to the caller, our INVITE to the callee.
    let auth = proxy_authorization(&ch, 1000, "pw-1000", "INVITE", ruri);
    cm.handle(now, addr(PHONE), &invite(ruri, "1000", "c1", 2, &auth));
    let out = sent(&mut cm);
    assert_eq!(
        codes(&out),
        [(addr(PHONE), Some(100)), (addr(CALLEE), None)]
    );
    assert_eq!(cm.stats().calls_total, 1);
    // The 407's ACK once more, now that the Call-ID is a call: still absorbed, and not
    // counted as a forged in-dialog request.
    cm.handle(now, addr(PHONE), ack.as_bytes());
    assert!(sent(&mut cm).is_empty());
    assert_eq!(cm.stats().unmatched_in_dialog, 0);
}

#[test]
fn credentials_for_another_user_than_the_from_get_403() {
    let mut cm = cm();
    assert_eq!(register(&mut cm, 0, 1001, CALLEE, "pw-1001"), 200);
    let ruri = "sip:1001@pbxlab.test";
    for (i, (from_user, user, password)) in [
        ("1002", 1000, "pw-1000"),      // 1000's password, 1002's name
        ("anonymous", 1000, "pw-1000"), // a stranger with a user's password calls a user
        ("1000", 1000, "guess"),
    ]
    .into_iter()
    .enumerate()
    {
        let now = (i as u64 + 1) * NS;
        let id = format!("f{i}");
        let (code, ch) = answer(&mut cm, now, PHONE, &invite(ruri, from_user, &id, 1, ""));
        assert_eq!(code, 407, "{from_user}");
        let auth = proxy_authorization(&ch.unwrap(), user, password, "INVITE", ruri);
        let (code, _) = answer(&mut cm, now, PHONE, &invite(ruri, from_user, &id, 2, &auth));
        assert_eq!(code, 403, "{from_user} as {user}");
    }
    assert_eq!(cm.stats().calls_total, 0);
    assert_eq!(cm.stats().auth_failures, 3);
}

#[test]
fn strangers_reach_the_public_services_and_nothing_else() {
    let mut cm = cm();
    assert_eq!(register(&mut cm, 0, 1001, CALLEE, "pw-1001"), 200);
    // Not one of our users in From, no credentials: the services answer, as inbound numbers.
    for (i, target) in ["echo", "ivr-1", "meeting-9", "queue-1"]
        .into_iter()
        .enumerate()
    {
        let ruri = format!("sip:{target}@pbxlab.test");
        let now = (i as u64 + 1) * NS;
        let (code, _) = answer(
            &mut cm,
            now,
            PHONE,
            &invite(&ruri, "anonymous", target, 1, ""),
        );
        assert_eq!(code, 200, "{target}");
    }
    // A user, or a number we do not have, is challenged alike: the answers do not tell them
    // apart. One of our users in From must prove it even to call the echo.
    for (i, (target, from_user)) in [
        ("1001", "anonymous"),
        ("5555", "anonymous"),
        ("echo", "1000"),
    ]
    .into_iter()
    .enumerate()
    {
        let ruri = format!("sip:{target}@pbxlab.test");
        let now = (i as u64 + 10) * NS;
        let id = format!("s{i}");
        let (code, _) = answer(&mut cm, now, PHONE, &invite(&ruri, from_user, &id, 1, ""));
        assert_eq!(code, 407, "{from_user} to {target}");
    }
    assert_eq!(cm.stats().calls_total, 4);
}

/// `cm()` with `trust` in place of the default.
fn cm_trusting(trust: Trust) -> CallManager {
    let mut cm = cm();
    cm.trust = trust;
    cm
}

#[test]
fn only_the_public_list_is_public_and_trusted_sources_are_not_challenged() {
    let mut cm = cm_trusting(Trust {
        public: vec!["echo".into()],
        trusted: vec![addr(ELSEWHERE).ip()],
    });
    assert_eq!(register(&mut cm, 0, 1001, CALLEE, "pw-1001"), 200);
    let echo = "sip:echo@pbxlab.test";
    let ivr = "sip:ivr-1@pbxlab.test";
    assert_eq!(
        answer(&mut cm, NS, PHONE, &invite(echo, "anonymous", "p1", 1, "")).0,
        200
    );
    assert_eq!(
        answer(&mut cm, NS, PHONE, &invite(ivr, "anonymous", "p2", 1, "")).0,
        407
    );
    // A trunk in front (trusted): its calls to users carry no credentials and go through.
    cm.handle(
        2 * NS,
        addr(ELSEWHERE),
        &invite("sip:1001@pbxlab.test", "1000", "p3", 1, ""),
    );
    let out = sent(&mut cm);
    assert_eq!(
        codes(&out),
        [(addr(ELSEWHERE), Some(100)), (addr(CALLEE), None)]
    );
}

#[test]
fn message_and_subscribe_are_not_served_so_not_challenged() {
    // The Call Manager serves neither: 501 at once, to anyone (a challenge first would only
    // cost a round trip before the same 501).
    let mut cm = cm();
    for (i, method) in ["MESSAGE", "SUBSCRIBE"].into_iter().enumerate() {
        let req = request(
            method,
            "sip:1001@pbxlab.test",
            "1000",
            &format!("m{i}"),
            1,
            "",
            "",
        );
        assert_eq!(answer(&mut cm, NS, PHONE, &req).0, 501, "{method}");
    }
}

#[test]
fn a_captured_invite_sent_again_after_its_call_is_challenged() {
    let mut cm = cm();
    let ruri = "sip:echo@pbxlab.test";
    let (code, ch) = answer(&mut cm, NS, PHONE, &invite(ruri, "1000", "r1", 1, ""));
    assert_eq!(code, 407);
    let auth = proxy_authorization(&ch.unwrap(), 1000, "pw-1000", "INVITE", ruri);
    let captured = invite(ruri, "1000", "r1", 2, &auth);
    cm.handle(NS, addr(PHONE), &captured);
    let out = sent(&mut cm);
    let ok = parse(&out[0].1);
    assert_eq!(ok.code(), Some(200));
    let tag = ok.to().unwrap().tag().unwrap().to_owned();
    let bye = String::from_utf8(request("BYE", ruri, "1000", "r1", 3, "", ""))
        .unwrap()
        .replace(&format!("To: <{ruri}>"), &format!("To: <{ruri}>;tag={tag}"));
    assert_eq!(answer(&mut cm, 2 * NS, PHONE, bye.as_bytes()).0, 200);
    assert_eq!(cm.stats().calls_active, 0);
    // The call is over; the same INVITE from elsewhere is a replay, not a new call.
    let (code, ch) = answer(&mut cm, 3 * NS, ELSEWHERE, &captured);
    assert_eq!((code, stale(&ch)), (407, true));
    assert_eq!(cm.stats().calls_total, 1);
}

#[test]
fn three_thousand_wrong_passwords_in_three_seconds_earn_a_ban_that_the_right_one_does_not_lift() {
    let mut cm = cm();
    // UA is whitelisted, so the rate limit does not stand in the way: only the ban does.
    let nonce = nonce_for(&mut cm, 0, 1003, UA);
    let mut answered = Vec::new();
    for i in 0..3000u32 {
        let now = u64::from(i) * MS;
        let auth = authorization(1003, &format!("guess{i}"), &nonce, i + 1);
        let req = register_request(1003, UA, i + 2, Some(&auth));
        cm.handle(now, addr(UA), req.as_bytes());
        answered.extend(sent(&mut cm).iter().map(|(_, b)| parse(b).code().unwrap()));
    }
    // Ten wrong answers were judged; then the source is dropped unanswered and the user
    // banned, and no further password is looked at.
    assert_eq!(answered, vec![403; 10]);
    let s = cm.stats();
    assert_eq!(
        (
            s.auth_failures,
            s.auth_banned_sources,
            s.auth_banned_users,
            s.auth_refused_banned
        ),
        (10, 1, 1, 2990)
    );
    // The right password during the ban: from the banned source, no answer; from another
    // address, 403, as any answer for the banned user.
    let now = 3 * NS;
    let right = authorization(1003, "pw-1003", &nonce, 5000);
    let req = register_request(1003, UA, 9000, Some(&right));
    cm.handle(now, addr(UA), req.as_bytes());
    assert!(sent(&mut cm).is_empty());
    let fresh = nonce_for(&mut cm, now, 1003, ELSEWHERE);
    assert_eq!(register_on(&mut cm, now, 1003, ELSEWHERE, &fresh, 1).0, 403);
    assert_eq!(cm.stats().registered, 0);
    // The ban is over a minute after the tenth failure: the right password works, from both.
    let later = 70 * NS;
    let n = nonce_for(&mut cm, later, 1003, ELSEWHERE);
    assert_eq!(register_on(&mut cm, later, 1003, ELSEWHERE, &n, 1).0, 200);
    let n = nonce_for(&mut cm, later, 1003, UA);
    assert_eq!(register_on(&mut cm, later, 1003, UA, &n, 1).0, 200);
}

#[test]
fn guesses_spread_over_sources_ban_the_user_and_over_users_ban_the_source() {
    let mut cm = cm();
    let guess = |cm: &mut CallManager, now: Nanos, user: u32, from: &str| {
        let n = nonce_for(cm, now, user, from);
        let auth = authorization(user, "guess", &n, 1);
        answer(
            cm,
            now,
            from,
            register_request(user, from, 2, Some(&auth)).as_bytes(),
        )
        .0
    };
    // Ten sources, one guess each at user 1004: the user is banned, no source is.
    for i in 0..10 {
        assert_eq!(
            guess(&mut cm, NS, 1004, &format!("127.0.1.{}:5060", i + 1)),
            403
        );
    }
    assert_eq!(cm.stats().auth_banned_users, 1);
    assert_eq!(cm.stats().auth_banned_sources, 0);
    let n = nonce_for(&mut cm, 2 * NS, 1004, PHONE);
    assert_eq!(register_on(&mut cm, 2 * NS, 1004, PHONE, &n, 1).0, 403);
    // One source, a guess at each of ten users (two of them not ours): the source is
    // banned, and its next request, an honest one for another user, is dropped.
    let spray = "127.0.2.1:5060";
    for (i, user) in [1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 77, 78]
        .into_iter()
        .enumerate()
    {
        assert_eq!(guess(&mut cm, (3 + i as u64) * NS, user, spray), 403);
    }
    assert_eq!(cm.stats().auth_banned_sources, 1);
    cm.handle(
        20 * NS,
        addr(spray),
        register_request(1009, spray, 1, None).as_bytes(),
    );
    assert!(sent(&mut cm).is_empty());
    // The same holds for calls: the banned user's INVITE is refused with the right password.
    let ruri = "sip:echo@pbxlab.test";
    let (code, ch) = answer(&mut cm, 30 * NS, PHONE, &invite(ruri, "1004", "b1", 1, ""));
    assert_eq!(code, 407);
    let auth = proxy_authorization(&ch.unwrap(), 1004, "pw-1004", "INVITE", ruri);
    let (code, _) = answer(
        &mut cm,
        30 * NS,
        PHONE,
        &invite(ruri, "1004", "b1", 2, &auth),
    );
    assert_eq!(code, 403);
    // After its minute the user may register again.
    let n = nonce_for(&mut cm, 62 * NS, 1004, PHONE);
    assert_eq!(register_on(&mut cm, 62 * NS, 1004, PHONE, &n, 1).0, 200);
}

/// In-dialog requests are not challenged: an untrusted user's call, authenticated once, is
/// refreshed (RFC 4028) by its re-INVITEs without credentials, as a proxy's usual script
/// relays in-dialog requests on their tags; a 407 there would end every session-timer call.
#[test]
fn an_untrusted_callers_refresh_reinvite_is_not_challenged() {
    let mut cm = cm();
    let ruri = "sip:echo@pbxlab.test";
    let timer = "Supported: timer\r\nSession-Expires: 90\r\n";
    let (code, ch) = answer(&mut cm, 0, PHONE, &invite(ruri, "1000", "rt", 1, timer));
    assert_eq!(code, 407);
    let auth = proxy_authorization(&ch.unwrap(), 1000, "pw-1000", "INVITE", ruri);
    let extra = format!("{timer}{auth}");
    cm.handle(MS, addr(PHONE), &invite(ruri, "1000", "rt", 2, &extra));
    let out = sent(&mut cm);
    let ok = parse(&out[0].1);
    assert_eq!(ok.code(), Some(200));
    let to = ok.header(HeaderName::To).unwrap().to_owned();
    let ack = String::from_utf8(request("ACK", "sip:cm@x", "1000", "rt", 2, "", ""))
        .unwrap()
        .replace("To: <sip:cm@x>", &format!("To: {to}"));
    cm.handle(2 * MS, addr(PHONE), ack.as_bytes());
    let reinvite = String::from_utf8(invite("sip:cm@x", "1000", "rt", 3, timer))
        .unwrap()
        .replace("To: <sip:cm@x>", &format!("To: {to}"));
    let (code, _) = answer(&mut cm, 50 * NS, PHONE, reinvite.as_bytes());
    assert_eq!(code, 200, "a refresh is not challenged");
    cm.advance(100 * NS);
    assert_eq!(cm.stats().calls_active, 1, "refreshed at 50 s");
}
