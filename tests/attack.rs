//! The attacks of ARCHITECTURE.md's "What a hostile client cannot do any more", performed the
//! way a hostile client would: over real UDP on loopback against a `pbxlab cluster` process
//! (which draws its keys at random), each asserting the defined answer and that nothing
//! legitimate is lost. Legitimate phones send from 127.0.0.1 (whitelisted from the rate limit,
//! not trusted), attackers from 127.0.0.2..127.0.0.250 (Linux routes all of 127/8 to lo), and
//! 127.0.0.9 is a trusted trunk where a test needs one. Each test has its own cluster, every
//! wait is bounded, and each cluster stops by itself after `--for`.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Proc;
use pbxlab_proto::builder::write_response;
use pbxlab_proto::digest;
use pbxlab_proto::sip::{HeaderName, parse_datagram};

/// How long an answer that must come may take.
const WAIT: Duration = Duration::from_secs(3);
/// How long a test listens for something that must not come.
const QUIET: Duration = Duration::from_millis(700);
const TRUNK: &str = "127.0.0.9";

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

/// `pbxlab cluster scenarios/services.toml` (users 1000..1299, password `pw-N`) on a free port,
/// writing its final status to a JSON file.
struct Cluster {
    proc: Proc,
    port: u16,
    json: PathBuf,
}

impl Cluster {
    fn start(name: &str, extra: &[&str]) -> Cluster {
        let scenario = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scenarios")
            .join("services.toml");
        let port = free_port();
        let stem = format!("pbxlab-attack-{}-{name}-{port}", std::process::id());
        let json = std::env::temp_dir().join(format!("{stem}.json"));
        let log = std::env::temp_dir().join(format!("{stem}.log"));
        let _ = std::fs::remove_file(&json);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pbxlab"));
        cmd.arg("cluster")
            .arg(&scenario)
            .args(["--sip", &format!("127.0.0.1:{port}")])
            .args(["--for", "90s", "--status-every", "1h", "--json"])
            .arg(&json)
            .args(extra);
        let mut proc = Proc::start(cmd, &log);
        proc.wait_for_log("Call Manager on", Duration::from_secs(20));
        let probe = Phone::bind("127.0.0.1", port);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let options = Req::options(probe.addr(), port, "wait");
            probe.send(&options.text());
            if probe.recv(Duration::from_millis(200)).is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster never answered on port {port}:\n{}",
                proc.log()
            );
        }
        Cluster { proc, port, json }
    }

    /// SIGTERM; the final status the cluster wrote.
    fn stop(mut self) -> serde_json::Value {
        let status = self.proc.terminate();
        assert!(status.success(), "the cluster exited with {status}");
        let text = std::fs::read(&self.json)
            .unwrap_or_else(|_| panic!("no final status:\n{}", self.proc.log()));
        // A test that fails before this keeps its log for a look.
        let _ = std::fs::remove_file(&self.json);
        let _ = std::fs::remove_file(&self.proc.log);
        serde_json::from_slice(&text).expect("JSON")
    }
}

fn n(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// A SIP endpoint of the test: one UDP socket talking to the Call Manager.
struct Phone {
    sock: UdpSocket,
    cm: SocketAddr,
}

impl Phone {
    fn bind(ip: &str, cm_port: u16) -> Phone {
        let sock = UdpSocket::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}: {e}"));
        Phone {
            sock,
            cm: SocketAddr::from(([127, 0, 0, 1], cm_port)),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("addr")
    }

    fn send(&self, text: &str) {
        self.sock.send_to(text.as_bytes(), self.cm).expect("send");
    }

    /// The next datagram within `wait`, as text.
    fn recv(&self, wait: Duration) -> Option<String> {
        self.recv_where(wait, |_| true)
    }

    /// The next datagram within `wait` for which `want` holds; the others are skipped.
    fn recv_where(&self, wait: Duration, want: impl Fn(&str) -> bool) -> Option<String> {
        let until = Instant::now() + wait;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = until.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            self.sock.set_read_timeout(Some(left)).expect("timeout");
            if let Ok(len) = self.sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..len]).into_owned();
                if want(&text) {
                    return Some(text);
                }
            }
        }
    }

    /// The next final response within `wait`.
    fn final_response(&self, wait: Duration) -> Option<String> {
        self.recv_where(wait, |t| code(t).is_some_and(|c| c >= 200))
    }

    /// The next INVITE within `wait` (a call reaching this phone).
    fn invite(&self, wait: Duration) -> Option<String> {
        self.recv_where(wait, |t| t.starts_with("INVITE "))
    }

    /// Answers `request` (the text this phone received) from this phone.
    fn respond(&self, request: &str, code: u16, extra: &[(&str, &str)], body: &str) {
        self.send(&response(request, code, extra, body));
    }
}

fn code(text: &str) -> Option<u16> {
    text.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

fn header(text: &str, name: HeaderName) -> Option<String> {
    parse_datagram(text.as_bytes())
        .ok()?
        .header(name)
        .map(str::to_owned)
}

/// The response to `request` a phone would send, with To tag `v1`.
fn response(request: &str, code: u16, extra: &[(&str, &str)], body: &str) -> String {
    let req = parse_datagram(request.as_bytes()).expect("a request");
    let mut out = Vec::new();
    let reason = pbxlab_proto::builder::reason_phrase(code);
    write_response(
        &mut out,
        &req,
        code,
        reason,
        Some("v1"),
        extra,
        body.as_bytes(),
    );
    String::from_utf8(out).expect("utf-8")
}

/// A request as a UA of the test writes it.
#[derive(Clone)]
struct Req {
    method: &'static str,
    ruri: String,
    via: SocketAddr,
    branch: String,
    from: String,
    to: String,
    call_id: String,
    cseq: u32,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Req {
    fn text(&self) -> String {
        let mut t = format!(
            "{} {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={}\r\nMax-Forwards: 70\r\nFrom: {}\r\n\
             To: {}\r\nCall-ID: {}\r\nCSeq: {} {}\r\n",
            self.method,
            self.ruri,
            self.via,
            self.branch,
            self.from,
            self.to,
            self.call_id,
            self.cseq,
            self.method
        );
        for (name, value) in &self.headers {
            t.push_str(&format!("{name}: {value}\r\n"));
        }
        if !self.body.is_empty() {
            t.push_str("Content-Type: application/sdp\r\n");
        }
        t.push_str(&format!(
            "Content-Length: {}\r\n\r\n{}",
            self.body.len(),
            self.body
        ));
        t
    }

    fn options(via: SocketAddr, port: u16, id: &str) -> Req {
        Req {
            method: "OPTIONS",
            ruri: format!("sip:cm@127.0.0.1:{port}"),
            via,
            branch: format!("z9hG4bKo{id}"),
            from: format!("<sip:probe@{}>;tag=o{id}", via.ip()),
            to: "<sip:cm@pbxlab.test>".into(),
            call_id: format!("options-{id}"),
            cseq: 1,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    /// A REGISTER of `user` binding `contact`, without credentials.
    fn register(via: SocketAddr, user: u32, contact: SocketAddr) -> Req {
        let aor = format!("<sip:{user}@pbxlab.test>");
        Req {
            method: "REGISTER",
            ruri: "sip:pbxlab.test".into(),
            via,
            branch: format!("z9hG4bKr{user}x{}", via.port()),
            from: format!("{aor};tag=r{user}"),
            to: aor,
            call_id: format!("reg-{user}-{}", via.port()),
            cseq: 1,
            headers: vec![
                ("Contact", format!("<sip:{user}@{contact}>")),
                ("Expires", "600".into()),
            ],
            body: String::new(),
        }
    }

    /// An INVITE from `via` to `target` (a user number or a service) with `from_user` (one of
    /// our users, or a stranger's name) in its From, offering `sdp`.
    fn invite(via: SocketAddr, from_user: &str, target: &str, id: &str, sdp: String) -> Req {
        Req {
            method: "INVITE",
            ruri: format!("sip:{target}@pbxlab.test"),
            via,
            branch: format!("z9hG4bK{id}"),
            from: format!("<sip:{from_user}@pbxlab.test>;tag=f{id}"),
            to: format!("<sip:{target}@pbxlab.test>"),
            call_id: format!("call-{id}"),
            cseq: 1,
            headers: vec![("Contact", format!("<sip:{from_user}@{via}>"))],
            body: sdp,
        }
    }

    /// The ACK of `answer`, the final response to this INVITE: hop by hop (same branch) for a
    /// refusal, a new transaction for a 2xx.
    fn ack(&self, answer: &str) -> String {
        let mut ack = self.clone();
        ack.method = "ACK";
        ack.to = header(answer, HeaderName::To).expect("a To");
        ack.headers.retain(|(name, _)| *name == "Contact");
        ack.body.clear();
        if code(answer).is_some_and(|c| c < 300) {
            ack.branch.push_str("ack");
        }
        ack.text()
    }

    /// A BYE in the dialog this INVITE's 2xx `answer` set up.
    fn bye(&self, answer: &str) -> String {
        let mut bye = self.clone();
        bye.method = "BYE";
        bye.to = header(answer, HeaderName::To).expect("a To");
        bye.branch.push_str("bye");
        bye.cseq += 1;
        bye.headers.clear();
        bye.body.clear();
        bye.text()
    }
}

/// The credentials of `user` (password `pw-N`) answering `challenge` for `method` `uri`.
fn credentials(challenge: &str, user: u32, password: &str, method: &str, uri: &str) -> String {
    let ch = digest::parse_challenge(challenge).expect("a digest challenge");
    let mut out = String::new();
    digest::write_authorization(
        &mut out,
        &ch,
        &user.to_string(),
        password,
        method,
        uri,
        "c0ffee",
        1,
    );
    out
}

/// Registers `user` from `phone` with password `password`, answering the 401: the final
/// answer's code and the exact bytes of the REGISTER that carried the credentials.
fn register(phone: &Phone, user: u32, password: &str) -> (Option<u16>, String) {
    let mut req = Req::register(phone.addr(), user, phone.addr());
    phone.send(&req.text());
    let challenge = phone
        .final_response(WAIT)
        .expect("an answer to a REGISTER without credentials");
    assert_eq!(code(&challenge), Some(401), "{challenge}");
    let ch = header(&challenge, HeaderName::WwwAuthenticate).expect("WWW-Authenticate");
    req.cseq += 1;
    req.branch.push('a');
    req.headers.push((
        "Authorization",
        credentials(&ch, user, password, "REGISTER", &req.ruri),
    ));
    let sent = req.text();
    phone.send(&sent);
    (phone.final_response(WAIT).and_then(|t| code(&t)), sent)
}

/// Sends `invite` from `caller`; it must be challenged 407 (ACKed), and is sent again with the
/// credentials of `user`. Returns the INVITE that carried them.
fn invite_with_credentials(caller: &Phone, mut invite: Req, user: u32) -> Req {
    caller.send(&invite.text());
    let challenge = caller
        .final_response(WAIT)
        .expect("an answer to the INVITE");
    assert_eq!(code(&challenge), Some(407), "{challenge}");
    caller.send(&invite.ack(&challenge));
    let ch = header(&challenge, HeaderName::ProxyAuthenticate).expect("Proxy-Authenticate");
    invite.cseq += 1;
    invite.branch.push('a');
    let auth = credentials(&ch, user, &format!("pw-{user}"), "INVITE", &invite.ruri);
    invite.headers.push(("Proxy-Authorization", auth));
    caller.send(&invite.text());
    invite
}

fn offer(rtp: SocketAddr, ssrc: u32) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\n\
         a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=ssrc:{ssrc} cname:t\r\n",
        ip = rtp.ip(),
        port = rtp.port()
    )
}

/// The audio address of the SDP in a SIP message's body.
fn media_addr(message: &str) -> SocketAddr {
    let body = message.split("\r\n\r\n").nth(1).expect("a body");
    let ip = body
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))
        .expect("c=");
    let port = body
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|m| m.split(' ').next())
        .expect("m=");
    format!("{}:{port}", ip.trim())
        .parse()
        .expect("an audio address")
}

fn rtp(ssrc: u32, seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0];
    p.extend(seq.to_be_bytes());
    p.extend((u32::from(seq) * 160).to_be_bytes());
    p.extend(ssrc.to_be_bytes());
    p.extend([0xffu8; 160]);
    p
}

/// Sends 50 RTP packets (20 ms apart) of `ssrc` from `from` to `to`, and counts what arrives
/// at `listen` meanwhile and for half a second after.
fn send_media(from: &UdpSocket, to: SocketAddr, ssrc: u32, listen: &UdpSocket) -> usize {
    let mut got = 0;
    for seq in 0..50u16 {
        from.send_to(&rtp(ssrc, seq), to).expect("send RTP");
        got += datagrams_within(listen, Duration::from_millis(20));
    }
    got + datagrams_within(listen, Duration::from_millis(500))
}

/// What arrives at `sock` within `wait`, in datagrams.
fn datagrams_within(sock: &UdpSocket, wait: Duration) -> usize {
    let until = Instant::now() + wait;
    let mut buf = [0u8; 2048];
    let mut got = 0;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left)).expect("timeout");
        if sock.recv(&mut buf).is_ok() {
            got += 1;
        }
    }
    got
}

/// Answers a call that reached `victim` (its INVITE `leg_b`) with 200 and SDP.
fn answer_call(victim: &Phone, leg_b: &str) {
    let contact = format!("<sip:1001@{}>", victim.addr());
    victim.respond(
        leg_b,
        200,
        &[("Contact", &contact)],
        &offer(victim.addr(), 77),
    );
}

/// Answers the BYE the Call Manager sends `phone` at the end of a call, if any comes.
fn answer_bye(phone: &Phone) {
    if let Some(bye) = phone.recv_where(WAIT, |t| t.starts_with("BYE ")) {
        phone.respond(&bye, 200, &[], "");
    }
}

#[test]
fn a_call_in_another_users_name_is_challenged_and_rings_nobody_until_it_has_credentials() {
    let cluster = Cluster::start("spoofed-from", &[]);
    let victim = Phone::bind("127.0.0.1", cluster.port);
    assert_eq!(register(&victim, 1001, "pw-1001").0, Some(200));
    let attacker = Phone::bind("127.0.0.2", cluster.port);
    let invite = Req::invite(
        attacker.addr(),
        "1002",
        "1001",
        "spoof",
        offer(attacker.addr(), 11),
    );
    attacker.send(&invite.text());
    let answer = attacker.final_response(WAIT);
    assert_eq!(
        victim.invite(QUIET),
        None,
        "the victim's phone rang for a caller who proved nothing"
    );
    let answer = answer.expect("an answer to the INVITE");
    assert_eq!(
        code(&answer),
        Some(407),
        "a call in user 1002's name without credentials was not challenged: {answer}"
    );
    let ch = header(&answer, HeaderName::ProxyAuthenticate)
        .expect("the 407 carries a Proxy-Authenticate challenge");
    digest::parse_challenge(&ch).expect("a digest challenge");
    attacker.send(&invite.ack(&answer));
    assert_eq!(
        victim.invite(QUIET),
        None,
        "the victim's phone rang after the 407 was ACKed"
    );

    // With user 1002's password the same call is placed, answered and hung up.
    let caller = Phone::bind("127.0.0.1", cluster.port);
    let invite = Req::invite(
        caller.addr(),
        "1002",
        "1001",
        "real",
        offer(caller.addr(), 12),
    );
    let invite = invite_with_credentials(&caller, invite, 1002);
    let leg_b = victim
        .invite(WAIT)
        .expect("with 1002's credentials the call reaches 1001's phone");
    assert!(leg_b.contains("1002"), "the callee sees who calls: {leg_b}");
    answer_call(&victim, &leg_b);
    let ok = caller.final_response(WAIT).expect("the caller's answer");
    assert_eq!(code(&ok), Some(200), "{ok}");
    caller.send(&invite.ack(&ok));
    caller.send(&invite.bye(&ok));
    let bye_ok = caller.final_response(WAIT).expect("an answer to the BYE");
    assert_eq!(code(&bye_ok), Some(200), "{bye_ok}");
    answer_bye(&victim);
    let s = cluster.stop();
    assert_eq!(n(&s["calls"]["total"]), 1, "one call placed: {s}");
}

#[test]
fn a_captured_register_replayed_from_elsewhere_is_challenged_and_the_victim_keeps_its_calls() {
    let cluster = Cluster::start("replay", &["--trusted", TRUNK]);
    let victim = Phone::bind("127.0.0.1", cluster.port);
    let (answer, captured) = register(&victim, 1001, "pw-1001");
    assert_eq!(answer, Some(200));
    let attacker = Phone::bind("127.0.0.3", cluster.port);
    attacker.send(&captured);
    let replayed = attacker
        .final_response(WAIT)
        .expect("an answer to the replay");
    assert_eq!(
        code(&replayed),
        Some(401),
        "a captured REGISTER sent again from elsewhere was taken: {replayed}"
    );
    let hijack = captured.replace(
        &format!("<sip:1001@{}>", victim.addr()),
        &format!("<sip:1001@{}>", attacker.addr()),
    );
    assert_ne!(hijack, captured);
    attacker.send(&hijack);
    let hijacked = attacker
        .final_response(WAIT)
        .expect("an answer to the replay");
    assert_eq!(
        code(&hijacked),
        Some(401),
        "a captured REGISTER with the attacker's Contact moved 1001's calls: {hijacked}"
    );

    // A call to 1001 still reaches the phone that registered, and not the attacker.
    let trunk = Phone::bind(TRUNK, cluster.port);
    let invite = Req::invite(
        trunk.addr(),
        "1002",
        "1001",
        "check",
        offer(trunk.addr(), 5),
    );
    trunk.send(&invite.text());
    let leg_b = victim
        .invite(WAIT)
        .expect("after the replays, calls to 1001 still reach its own phone");
    assert_eq!(
        attacker.invite(QUIET),
        None,
        "the replay diverted 1001's calls to the attacker"
    );
    victim.respond(&leg_b, 486, &[], "");
    let busy = trunk.final_response(WAIT).expect("the caller's answer");
    assert_eq!(code(&busy), Some(486), "{busy}");
    trunk.send(&invite.ack(&busy));
    let s = cluster.stop();
    assert!(n(&s["auth"]["replays"]) >= 2, "both replays counted: {s}");
    assert_eq!(n(&s["registered"]), 1, "the replays added a binding: {s}");
}

#[test]
fn guessing_a_password_earns_a_ban_that_the_right_password_does_not_lift() {
    let cluster = Cluster::start("brute-force", &[]);
    let attacker = Phone::bind("127.0.0.4", cluster.port);
    let mut req = Req::register(attacker.addr(), 1003, attacker.addr());
    let mut nonce = None;
    let mut challenged = true;
    let mut answers = Vec::new();
    for guess in 0..30u32 {
        // Each guess answers a fresh challenge while there are any; then the last one.
        if challenged {
            req.cseq += 1;
            req.branch = format!("z9hG4bKg{guess}");
            req.headers.retain(|(name, _)| *name != "Authorization");
            attacker.send(&req.text());
            match attacker.final_response(Duration::from_millis(300)) {
                Some(ch) => nonce = header(&ch, HeaderName::WwwAuthenticate),
                None => challenged = false,
            }
        }
        let ch = nonce.clone().expect("at least one challenge");
        req.cseq += 1;
        req.branch = format!("z9hG4bKg{guess}a");
        req.headers.retain(|(name, _)| *name != "Authorization");
        let wrong = credentials(&ch, 1003, &format!("guess-{guess}"), "REGISTER", &req.ruri);
        req.headers.push(("Authorization", wrong));
        attacker.send(&req.text());
        let answer = attacker.final_response(Duration::from_millis(300));
        answers.push(answer.and_then(|t| code(&t)));
    }
    assert_eq!(
        answers[..10],
        [Some(403); 10],
        "the first ten guesses are refused: {answers:?}"
    );
    assert_eq!(
        answers[10..],
        [None; 20],
        "after ten wrong passwords the source still gets answers to guess on: {answers:?}"
    );
    // The right password from the banned source is not answered either.
    let ch = nonce.expect("a challenge");
    req.cseq += 1;
    req.branch = "z9hG4bKright".into();
    req.headers.retain(|(name, _)| *name != "Authorization");
    req.headers.push((
        "Authorization",
        credentials(&ch, 1003, "pw-1003", "REGISTER", &req.ruri),
    ));
    attacker.send(&req.text());
    assert_eq!(
        attacker.final_response(QUIET),
        None,
        "the banned source registered with the password it had guessed"
    );
    // The user is banned too (the price of every lockout, ARCHITECTURE.md): the right
    // password from elsewhere gets 403 during the ban, without a look at the password.
    let owner = Phone::bind("127.0.0.1", cluster.port);
    assert_eq!(
        register(&owner, 1003, "pw-1003").0,
        Some(403),
        "a guessed-at user was not banned, so guessing could go on from other sources"
    );
    // Everybody else registers as before.
    assert_eq!(register(&owner, 1004, "pw-1004").0, Some(200));
    let s = cluster.stop();
    let auth = &s["auth"];
    assert_eq!(
        n(&auth["failures"]),
        10,
        "guesses checked during the ban: {s}"
    );
    assert_eq!(
        n(&auth["banned_sources"]),
        1,
        "the guessing source not banned: {s}"
    );
    assert_eq!(
        n(&auth["banned_users"]),
        1,
        "the guessed-at user not banned: {s}"
    );
    assert!(
        n(&auth["refused_banned"]) >= 22,
        "requests during the ban not refused: {s}"
    );
    assert_eq!(n(&s["registered"]), 1, "only 1004 is registered: {s}");
}

#[test]
fn a_forged_nonce_gets_a_plain_challenge_not_a_stale_one() {
    let cluster = Cluster::start("forged-nonce", &[]);
    let attacker = Phone::bind("127.0.0.5", cluster.port);
    for (i, nonce) in [
        "ffffffffffff.zzzz",
        "ffffffffffff.1.0123456789abcdef0123456789abcdef",
    ]
    .iter()
    .enumerate()
    {
        let mut req = Req::register(attacker.addr(), 1005, attacker.addr());
        req.branch.push_str(&format!("n{i}"));
        // The right password over a nonce we did not hand out: only the nonce is forged.
        let forged = format!("Digest realm=\"pbxlab.test\", nonce=\"{nonce}\", qop=\"auth\"");
        let auth = credentials(&forged, 1005, "pw-1005", "REGISTER", &req.ruri);
        req.headers.push(("Authorization", auth));
        attacker.send(&req.text());
        let answer = attacker.final_response(WAIT).expect("an answer");
        assert_eq!(
            code(&answer),
            Some(401),
            "a made-up nonce {nonce} was accepted: {answer}"
        );
        let ch = header(&answer, HeaderName::WwwAuthenticate).expect("a challenge");
        let ch = digest::parse_challenge(&ch).expect("a digest challenge");
        assert!(
            !ch.stale,
            "a made-up nonce {nonce} was taken for one of ours that expired (stale=true)"
        );
        assert_ne!(ch.nonce, *nonce);
    }
    // The same user registers from the same source with a nonce we did hand out.
    assert_eq!(register(&attacker, 1005, "pw-1005").0, Some(200));
    let s = cluster.stop();
    assert_eq!(
        n(&s["auth"]["forged_nonces"]),
        2,
        "made-up nonces not counted: {s}"
    );
    // The password was right: a forged nonce is no strike (ARCHITECTURE.md, "Still open").
    assert_eq!(n(&s["auth"]["banned_sources"]), 0, "{s}");
}

#[test]
fn a_forged_bye_gets_481_and_the_call_stays_up() {
    let cluster = Cluster::start("forged-bye", &[]);
    let caller = Phone::bind("127.0.0.2", cluster.port);
    let media = UdpSocket::bind("127.0.0.2:0").expect("bind");
    let media_at = media.local_addr().expect("addr");
    let invite = Req::invite(
        caller.addr(),
        "stranger",
        "echo",
        "bye",
        offer(media_at, 21),
    );
    caller.send(&invite.text());
    let ok = caller.final_response(WAIT).expect("an answer");
    assert_eq!(code(&ok), Some(200), "{ok}");
    caller.send(&invite.ack(&ok));
    let node = media_addr(&ok);
    assert!(
        send_media(&media, node, 21, &media) > 0,
        "echo before the attack"
    );

    let attacker = Phone::bind("127.0.0.7", cluster.port);
    let made_up = format!(
        "BYE sip:cm@127.0.0.1:{} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKforged\r\n\
         From: <sip:stranger@pbxlab.test>;tag=guess1\r\nTo: <sip:echo@pbxlab.test>;tag=guess2\r\n\
         Call-ID: {}\r\nCSeq: 9 BYE\r\nContent-Length: 0\r\n\r\n",
        cluster.port,
        attacker.addr(),
        invite.call_id
    );
    attacker.send(&made_up);
    let answer = attacker.final_response(WAIT).expect("an answer");
    assert_eq!(
        code(&answer),
        Some(481),
        "a BYE with the Call-ID and made-up tags was taken: {answer}"
    );
    // The caller's own From tag, sent from its own address, with a made-up To tag.
    let mut guessed = invite.clone();
    guessed.method = "BYE";
    guessed.to = "<sip:echo@pbxlab.test>;tag=guess3".into();
    guessed.branch.push_str("forged");
    guessed.cseq = 9;
    guessed.headers.clear();
    guessed.body.clear();
    caller.send(&guessed.text());
    let answer = caller.final_response(WAIT).expect("an answer");
    assert_eq!(
        code(&answer),
        Some(481),
        "a BYE with a guessed To tag ended the call: {answer}"
    );
    assert!(
        send_media(&media, node, 21, &media) > 0,
        "the forged BYEs ended the media session"
    );
    caller.send(&invite.bye(&ok));
    let bye_ok = caller.final_response(WAIT).expect("an answer to the BYE");
    assert_eq!(
        code(&bye_ok),
        Some(200),
        "after the forged BYEs the caller cannot hang up its own call: {bye_ok}"
    );
    let s = cluster.stop();
    assert_eq!(
        n(&s["unmatched_in_dialog"]),
        2,
        "forged BYEs not counted: {s}"
    );
    assert_eq!(
        n(&s["calls"]["completed"]),
        1,
        "the call did not end as its caller ended it: {s}"
    );
}

#[test]
fn media_goes_only_where_the_callers_own_media_comes_from() {
    let cluster = Cluster::start("third-party", &[]);
    let victim = UdpSocket::bind("127.0.0.5:0").expect("bind 127.0.0.5");
    let victim_at = victim.local_addr().expect("addr");
    let attacker = Phone::bind("127.0.0.6", cluster.port);
    // An IVR plays its prompt by itself: the attacker sends no media at all.
    let ivr = Req::invite(
        attacker.addr(),
        "stranger",
        "ivr-1",
        "amp1",
        offer(victim_at, 31),
    );
    attacker.send(&ivr.text());
    let ivr_ok = attacker.final_response(WAIT).expect("an answer");
    assert_eq!(code(&ivr_ok), Some(200), "{ivr_ok}");
    attacker.send(&ivr.ack(&ivr_ok));
    // Echo: the attacker speaks from another socket, hoping the echo goes to the SDP's address.
    let echo = Req::invite(
        attacker.addr(),
        "stranger",
        "echo",
        "amp2",
        offer(victim_at, 32),
    );
    attacker.send(&echo.text());
    let echo_ok = attacker.final_response(WAIT).expect("an answer");
    assert_eq!(code(&echo_ok), Some(200), "{echo_ok}");
    attacker.send(&echo.ack(&echo_ok));
    let speaker = UdpSocket::bind("127.0.0.6:0").expect("bind");
    let echoed = send_media(&speaker, media_addr(&echo_ok), 32, &speaker);
    let stray = datagrams_within(&victim, Duration::from_secs(2));
    assert_eq!(
        stray, 0,
        "a third party named in the SDP was sent media it never asked for"
    );

    // The control: a caller that sends media from the address it announces gets media back
    // from both services, so the silence above is the latch's doing.
    let caller = Phone::bind("127.0.0.8", cluster.port);
    let rtp_sock = UdpSocket::bind("127.0.0.8:0").expect("bind");
    let rtp_at = rtp_sock.local_addr().expect("addr");
    for (target, ssrc) in [("ivr-1", 41), ("echo", 42)] {
        let invite = Req::invite(
            caller.addr(),
            "stranger",
            target,
            &format!("ok{ssrc}"),
            offer(rtp_at, ssrc),
        );
        caller.send(&invite.text());
        let ok = caller.final_response(WAIT).expect("an answer");
        assert_eq!(code(&ok), Some(200), "{ok}");
        caller.send(&invite.ack(&ok));
        let back = send_media(&rtp_sock, media_addr(&ok), ssrc, &rtp_sock);
        assert!(back > 10, "{target} sent the honest caller {back} packets");
        caller.send(&invite.bye(&ok));
        assert_eq!(
            caller.final_response(WAIT).and_then(|t| code(&t)),
            Some(200)
        );
    }
    assert!(
        echoed > 10,
        "the echo went back to where the attacker spoke from ({echoed} packets)"
    );
    for (invite, ok) in [(&ivr, &ivr_ok), (&echo, &echo_ok)] {
        attacker.send(&invite.bye(ok));
        assert_eq!(
            attacker.final_response(WAIT).and_then(|t| code(&t)),
            Some(200)
        );
    }
    cluster.stop();
}

#[test]
fn forged_responses_do_not_end_a_ringing_call_and_the_callees_own_does() {
    let cluster = Cluster::start("forged-486", &[]);
    let victim = Phone::bind("127.0.0.1", cluster.port);
    assert_eq!(register(&victim, 1001, "pw-1001").0, Some(200));
    let caller = Phone::bind("127.0.0.1", cluster.port);
    let invite = Req::invite(
        caller.addr(),
        "1002",
        "1001",
        "ring",
        offer(caller.addr(), 51),
    );
    let invite = invite_with_credentials(&caller, invite, 1002);
    let leg_b = victim.invite(WAIT).expect("the call reaches 1001");
    victim.respond(&leg_b, 180, &[], "");
    assert!(
        caller.recv_where(WAIT, |t| code(t) == Some(180)).is_some(),
        "the caller hears it ringing"
    );
    // One who saw the INVITE answers it from elsewhere, with its real branch.
    let attacker = Phone::bind("127.0.0.6", cluster.port);
    attacker.respond(&leg_b, 486, &[], "");
    // One who can send from the callee's address guesses branches.
    let branch = parse_datagram(leg_b.as_bytes())
        .ok()
        .and_then(|m| m.top_via())
        .and_then(|v| v.branch.map(str::to_owned))
        .expect("a branch");
    let (numbers, _mac) = branch
        .trim_start_matches("z9hG4bK")
        .rsplit_once('x')
        .expect("slot and generation before the MAC");
    let mut guesses: Vec<String> = (0..4)
        .flat_map(|slot| (0..4).map(move |generation| format!("z9hG4bKc{slot}x{generation}")))
        .collect();
    guesses.push(format!("z9hG4bK{numbers}x0000000000000000"));
    guesses.push(format!("z9hG4bK{numbers}"));
    for guess in &guesses {
        victim.send(&response(&leg_b.replace(&branch, guess), 486, &[], ""));
    }
    assert_eq!(
        caller.final_response(QUIET),
        None,
        "a forged 486 refused the caller's call"
    );
    // The callee's own refusal does end it.
    victim.respond(&leg_b, 486, &[], "");
    let busy = caller.final_response(WAIT).expect("the callee's answer");
    assert_eq!(code(&busy), Some(486), "{busy}");
    caller.send(&invite.ack(&busy));
    let s = cluster.stop();
    assert!(
        n(&s["responses_foreign"]) >= 1,
        "the answer from elsewhere not counted: {s}"
    );
    assert!(
        n(&s["responses_forged"]) >= 1,
        "guessed branches not counted: {s}"
    );
}

#[test]
fn a_flood_from_forty_sources_earns_503s_and_a_whitelisted_user_still_registers() {
    let cluster = Cluster::start("flood", &["--global-rate-limit", "200/s"]);
    let port = cluster.port;
    let sources: Vec<Phone> = (10..50)
        .map(|i| Phone::bind(&format!("127.0.0.{i}"), port))
        .collect();
    let flooding = Arc::new(AtomicBool::new(true));
    let flood = {
        let flooding = Arc::clone(&flooding);
        std::thread::spawn(move || {
            for s in &sources {
                s.sock.set_nonblocking(true).expect("nonblocking");
            }
            let (mut sent, mut ok, mut refused, mut without_retry) = (0u64, 0u64, 0u64, 0u64);
            let mut buf = vec![0u8; 4096];
            let mut drain = |sources: &[Phone]| {
                for s in sources {
                    while let Ok(len) = s.sock.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..len]);
                        match code(&text) {
                            Some(503) if text.contains("\r\nRetry-After: ") => refused += 1,
                            Some(503) => without_retry += 1,
                            Some(200) => ok += 1,
                            _ => {}
                        }
                    }
                }
            };
            // 60 rounds of one OPTIONS from each source, 40 ms apart: 2,400 requests at
            // 1,000/s in all, 25/s (60 in all) from each, far under the per-source limit.
            for round in 0..60 {
                for s in &sources {
                    let id = format!("{}x{round}", s.addr().ip());
                    let options = Req::options(s.addr(), port, &id).text();
                    if s.sock.send_to(options.as_bytes(), s.cm).is_ok() {
                        sent += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(40));
                drain(&sources);
            }
            flooding.store(false, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(300));
            drain(&sources);
            (sent, ok, refused, without_retry)
        })
    };
    std::thread::sleep(Duration::from_millis(1000));
    let phone = Phone::bind("127.0.0.1", port);
    let during = register(&phone, 1006, "pw-1006").0;
    let still_flooding = flooding.load(Ordering::Relaxed);
    let (sent, ok, refused, without_retry) = flood.join().expect("flood thread");
    assert!(still_flooding, "the REGISTER was not sent during the flood");
    assert_eq!(
        during,
        Some(200),
        "the flood refused a whitelisted user's REGISTER"
    );
    assert_eq!(without_retry, 0, "503s without Retry-After");
    // A burst of 400 and 200/s pass: at 1,000/s well over half is refused (a quarter if the
    // flood ran at half speed).
    assert!(
        refused > sent / 4,
        "{refused} of {sent} flood requests refused ({ok} answered): the flood went through"
    );
    assert!(ok >= 300, "{ok} of {sent} answered: the limit refused all");
    assert_eq!(
        ok + refused,
        sent,
        "every request answered, one way or the other"
    );
    let s = cluster.stop();
    assert!(
        n(&s["global_rate_limited"]) >= refused,
        "503s not counted as the global limit's: {s}"
    );
    assert_eq!(
        n(&s["rate_limited"]),
        0,
        "no source passed its own limit: {s}"
    );
}
