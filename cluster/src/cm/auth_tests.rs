//! Attacks on digest authentication, performed against the Call Manager with a fake clock:
//! forged and expired nonces, replayed requests.

use pbxlab_proto::digest::{self, Algorithm, Challenge};
use pbxlab_proto::mac::{self, Key};
use pbxlab_proto::sip::HeaderName;

use super::tests::{UA, addr, cm, parse, sent};
use super::*;

const ELSEWHERE: &str = "127.0.0.9:7000";

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
