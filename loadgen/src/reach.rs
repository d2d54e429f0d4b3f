//! Calling each user once: how a Call Manager drill checks the registrations it says were kept.
//! After a takeover, every user bound at the fault is called through the virtual IP as another
//! phone would call them: INVITE, the digest challenge answered, the callee's 200 ACKed, BYE.
//! A binding counts as kept only if the serving Call Manager routed a call to the phone that
//! registered it and that phone answered; a 404 or 480 means it holds no binding.
//!
//! [`Calls`] is the protocol state (sans-IO: it takes `now` and datagrams and hands back
//! datagrams); [`call_each`] drives it over one UDP socket.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use pbxlab_proto::builder::{reason_phrase, write_request, write_response};
use pbxlab_proto::digest;
use pbxlab_proto::sdp::{self, Offer};
use pbxlab_proto::sip::{HeaderName, Message, Method, parse_datagram};

/// RFC 3261's T1 and T2: the first retransmission interval and the cap of a non-INVITE's.
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);

/// Who calls, where to and how patiently.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Where every request goes: the Call Manager's address (the virtual IP).
    pub target: SocketAddr,
    /// The users' domain.
    pub domain: String,
    /// The caller's digest username (a user the Call Manager knows) and password.
    pub username: String,
    pub password: String,
    /// Calls under way at once.
    pub in_flight: usize,
    /// How long a call may go without a final answer, and a BYE without any, before it is
    /// given up.
    pub give_up: Duration,
    /// Tells this check's Call-IDs and tags from another's (derive it from the scenario's seed).
    pub run: u64,
}

/// What calling each user found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reached {
    pub called: u64,
    /// Users whose phone answered.
    pub answered: u64,
    /// Users the Call Manager answered 404 or 480 for: it holds no binding of theirs.
    pub unbound: Vec<u32>,
    /// Users whose call got no final answer in time.
    pub unanswered: Vec<u32>,
    /// Users whose call got another final answer, with its status.
    pub refused: Vec<(u32, u16)>,
    /// Answered calls whose BYE got no answer in time.
    pub hangups_unanswered: u64,
    /// From the first INVITE to the last call's end.
    pub took: Duration,
}

impl Reached {
    /// Users the check could not reach, for whatever reason.
    pub fn lost(&self) -> u64 {
        (self.unbound.len() + self.unanswered.len() + self.refused.len()) as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Inviting,
    HangingUp,
}

struct Call {
    user: u32,
    phase: Phase,
    /// The CSeq of the INVITE (or of the BYE once hanging up).
    cseq: u32,
    /// The branch of the request under way.
    branch: String,
    challenged: bool,
    /// The callee's To (with its tag), once it answered.
    to: String,
    /// The request under way, as sent, and when to send it again.
    request: Vec<u8>,
    resend_at: Instant,
    interval: Duration,
    /// A provisional came: the INVITE is no longer retransmitted (RFC 3261 17.1.1.2).
    proceeding: bool,
    /// The ACK of the 200, sent again for each retransmitted 200.
    ack: Vec<u8>,
    deadline: Instant,
}

/// The calls of one check.
pub struct Calls {
    plan: Plan,
    local: SocketAddr,
    /// Where the offer says our media goes.
    media: SocketAddr,
    waiting: VecDeque<u32>,
    live: HashMap<String, Call>,
    /// The ACKs of ended calls' final answers, by Call-ID, sent again if the answer is.
    acked: HashMap<String, Vec<u8>>,
    out: Vec<Vec<u8>>,
    reached: Reached,
    started: Option<Instant>,
    ended: Option<Instant>,
    cnonce: u64,
}

impl Calls {
    /// A check calling `users` from `local` (our SIP address), offering media at `media`.
    pub fn new(plan: Plan, local: SocketAddr, media: SocketAddr, users: &[u32]) -> Calls {
        let cnonce = plan.run;
        Calls {
            plan,
            local,
            media,
            waiting: users.iter().copied().collect(),
            live: HashMap::new(),
            acked: HashMap::new(),
            out: Vec::new(),
            reached: Reached::default(),
            started: None,
            ended: None,
            cnonce,
        }
    }

    /// Every call has ended, answered or given up.
    pub fn done(&self) -> bool {
        self.waiting.is_empty() && self.live.is_empty()
    }

    /// What the check found (complete once [`Calls::done`]).
    pub fn reached(&self) -> Reached {
        let mut r = self.reached.clone();
        if let (Some(s), Some(e)) = (self.started, self.ended) {
            r.took = e.saturating_duration_since(s);
        }
        r
    }

    /// Starts calls up to the limit, retransmits and gives up what is due at `now`; the
    /// datagrams to send (all to the plan's target) go to `send`. Returns when to poll again.
    pub fn poll(&mut self, now: Instant, mut send: impl FnMut(&[u8])) -> Option<Instant> {
        while self.live.len() < self.plan.in_flight.max(1) {
            let Some(user) = self.waiting.pop_front() else {
                break;
            };
            self.started.get_or_insert(now);
            self.start(now, user);
        }
        let mut over = Vec::new();
        for (id, c) in &mut self.live {
            if now >= c.deadline {
                over.push(id.clone());
            } else if now >= c.resend_at {
                self.out.push(c.request.clone());
                c.interval = match c.phase {
                    Phase::Inviting => c.interval * 2,
                    Phase::HangingUp => (c.interval * 2).min(T2),
                };
                c.resend_at = now + c.interval;
            }
        }
        for id in over {
            if let Some(c) = self.live.remove(&id) {
                match c.phase {
                    Phase::Inviting => self.reached.unanswered.push(c.user),
                    Phase::HangingUp => self.reached.hangups_unanswered += 1,
                }
                self.ended = Some(now);
            }
        }
        for d in self.out.drain(..) {
            send(&d);
        }
        self.live
            .values()
            .map(|c| c.resend_at.min(c.deadline))
            .min()
            .or_else(|| (!self.waiting.is_empty()).then_some(now))
    }

    fn call_id(&self, user: u32) -> String {
        format!("reach-{:x}-{user}@{}", self.plan.run, self.local.ip())
    }

    fn uri(&self, user: u32) -> String {
        format!("sip:{user}@{}", self.plan.domain)
    }

    fn start(&mut self, now: Instant, user: u32) {
        let mut c = Call {
            user,
            phase: Phase::Inviting,
            cseq: 1,
            branch: String::new(),
            challenged: false,
            to: format!("<{}>", self.uri(user)),
            request: Vec::new(),
            resend_at: now,
            interval: T1,
            proceeding: false,
            ack: Vec::new(),
            deadline: now + self.plan.give_up,
        };
        self.invite(&mut c, None);
        c.resend_at = now + T1;
        self.out.push(c.request.clone());
        self.live.insert(self.call_id(user), c);
    }

    /// Writes `c`'s INVITE (a new branch), with `auth` (a whole header line) if given.
    fn invite(&self, c: &mut Call, auth: Option<(&'static str, String)>) {
        c.branch = format!("z9hG4bK-reach-{}-{}", c.user, c.cseq);
        let mut body = Vec::new();
        sdp::write_offer(
            &mut body,
            &Offer {
                session_id: u64::from(c.user),
                version: 1,
                addr: self.media,
                payload_types: vec![sdp::PT_PCMU],
                telephone_event: false,
                ptime_ms: 20,
                ssrc: None,
                direction: sdp::Direction::Inactive,
            },
        );
        let uri = self.uri(c.user);
        let mut headers = self.common(c, "INVITE");
        headers.push(("Content-Type".into(), "application/sdp".into()));
        if let Some((name, value)) = auth {
            headers.push((name.into(), value));
        }
        c.request = request("INVITE", &uri, &headers, &body);
    }

    /// Via, Max-Forwards, From, To, Call-ID, CSeq and Contact of `c`'s request `method`.
    fn common(&self, c: &Call, method: &str) -> Vec<(String, String)> {
        vec![
            (
                "Via".into(),
                format!("SIP/2.0/UDP {};branch={};rport", self.local, c.branch),
            ),
            ("Max-Forwards".into(), "70".into()),
            (
                "From".into(),
                format!(
                    "<sip:{}@{}>;tag=r{:x}",
                    self.plan.username, self.plan.domain, self.plan.run
                ),
            ),
            ("To".into(), c.to.clone()),
            ("Call-ID".into(), self.call_id(c.user)),
            ("CSeq".into(), format!("{} {method}", c.cseq)),
            (
                "Contact".into(),
                format!("<sip:{}@{}>", self.plan.username, self.local),
            ),
        ]
    }

    /// A datagram from the target at `now`: a response to one of our requests, or a request
    /// inside one of our calls.
    pub fn on_datagram(&mut self, now: Instant, datagram: &[u8]) {
        let Ok(msg) = parse_datagram(datagram) else {
            return;
        };
        if msg.is_request() {
            self.on_request(now, &msg);
        } else {
            self.on_response(now, &msg);
        }
    }

    fn on_request(&mut self, now: Instant, msg: &Message<'_>) {
        let id = msg.call_id().unwrap_or_default();
        let answered = self
            .live
            .get(id)
            .is_some_and(|c| c.phase == Phase::HangingUp);
        let code = match msg.method() {
            Some(Method::Ack) => return,
            // The far end hung up first: the call was answered, nothing is left to end.
            Some(Method::Bye) if answered => {
                self.live.remove(id);
                self.ended = Some(now);
                200
            }
            // A session refresh or a keepalive inside the call.
            Some(Method::Invite | Method::Update | Method::Options) if answered => 200,
            _ => 481,
        };
        let mut out = Vec::new();
        write_response(&mut out, msg, code, reason_phrase(code), None, &[], b"");
        self.out.push(out);
    }

    fn on_response(&mut self, now: Instant, msg: &Message<'_>) {
        let (Some(code), Some(id), Some(cseq)) = (msg.code(), msg.call_id(), msg.cseq()) else {
            return;
        };
        let branch = msg.top_via().and_then(|v| v.branch);
        let Some(mut c) = self.live.remove(id) else {
            // A final answer again, its call over: our ACK was lost.
            if cseq.method == Method::Invite
                && code >= 200
                && let Some(ack) = self.acked.get(id)
            {
                self.out.push(ack.clone());
            }
            return;
        };
        let ours = branch == Some(c.branch.as_str()) && cseq.seq == c.cseq;
        let keep = match (c.phase, cseq.method) {
            (Phase::Inviting, Method::Invite) if ours => self.invite_answer(now, &mut c, code, msg),
            (Phase::HangingUp, Method::Invite) if code / 100 == 2 => {
                // The 200 again: our ACK was lost.
                self.out.push(c.ack.clone());
                true
            }
            (Phase::HangingUp, Method::Bye) if ours && code >= 200 => {
                self.ended = Some(now);
                self.acked.insert(id.to_owned(), std::mem::take(&mut c.ack));
                false
            }
            _ => true,
        };
        if keep {
            self.live.insert(id.to_owned(), c);
        }
    }

    /// `code` answered `c`'s INVITE; whether the call goes on.
    fn invite_answer(&mut self, now: Instant, c: &mut Call, code: u16, msg: &Message<'_>) -> bool {
        if code < 200 {
            c.proceeding = true;
            c.resend_at = c.deadline;
            return true;
        }
        let to = msg.header(HeaderName::To).unwrap_or_default().to_owned();
        if code / 100 == 2 {
            self.reached.answered += 1;
            self.reached.called += 1;
            let target = msg
                .contact()
                .map_or_else(|| self.uri(c.user), |a| a.uri.to_owned());
            c.to = to;
            let invite_cseq = c.cseq;
            c.branch = format!("z9hG4bK-reach-{}-{}-ack", c.user, c.cseq);
            c.ack = request("ACK", &target, &self.common(c, "ACK"), b"");
            self.out.push(c.ack.clone());
            c.cseq = invite_cseq + 1;
            c.branch = format!("z9hG4bK-reach-{}-{}", c.user, c.cseq);
            c.request = request("BYE", &target, &self.common(c, "BYE"), b"");
            self.out.push(c.request.clone());
            c.phase = Phase::HangingUp;
            c.interval = T1;
            c.resend_at = now + T1;
            c.deadline = now + self.plan.give_up;
            return true;
        }
        // An error answer is ACKed in its own transaction (RFC 3261 17.1.1.3).
        let uri = self.uri(c.user);
        let mut headers = self.common(c, "ACK");
        if let Some(h) = headers.iter_mut().find(|(n, _)| n == "To") {
            h.1 = to;
        }
        let ack = request("ACK", &uri, &headers, b"");
        self.out.push(ack.clone());
        let challenge = match code {
            401 => msg
                .header(HeaderName::WwwAuthenticate)
                .map(|v| (v, "Authorization")),
            407 => msg
                .header(HeaderName::ProxyAuthenticate)
                .map(|v| (v, "Proxy-Authorization")),
            _ => None,
        };
        if let Some((value, header)) = challenge.filter(|_| !c.challenged)
            && let Ok(ch) = digest::parse_challenge(value)
        {
            self.cnonce = self
                .cnonce
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1);
            let mut line = String::new();
            digest::write_authorization(
                &mut line,
                &ch,
                &self.plan.username,
                &self.plan.password,
                "INVITE",
                &uri,
                &format!("{:016x}", self.cnonce),
                1,
            );
            c.challenged = true;
            c.cseq += 1;
            self.invite(c, Some((header, line)));
            self.out.push(c.request.clone());
            c.interval = T1;
            c.resend_at = now + T1;
            c.proceeding = false;
            return true;
        }
        self.reached.called += 1;
        match code {
            404 | 480 => self.reached.unbound.push(c.user),
            _ => self.reached.refused.push((c.user, code)),
        }
        self.acked.insert(self.call_id(c.user), ack);
        self.ended = Some(now);
        false
    }
}

fn request(method: &str, uri: &str, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let mut out = Vec::new();
    write_request(&mut out, method, uri, &pairs, body);
    out
}

/// Calls each of `users` from a socket on `bind`, as [`Calls`] does, and returns once every
/// call has ended or been given up. What the media server sends to the offered address goes
/// to a second socket that is never read.
pub fn call_each(plan: Plan, bind: IpAddr, users: &[u32]) -> std::io::Result<Reached> {
    let socket = UdpSocket::bind((bind, 0))?;
    let media = UdpSocket::bind((bind, 0))?;
    let target = plan.target;
    let mut calls = Calls::new(plan, socket.local_addr()?, media.local_addr()?, users);
    let mut buf = vec![0u8; 65_536];
    loop {
        let now = Instant::now();
        let mut failed = None;
        let wake = calls.poll(now, |d| {
            if let Err(e) = socket.send_to(d, target) {
                failed.get_or_insert(e);
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        if calls.done() {
            return Ok(calls.reached());
        }
        let wait = wake.map_or(T1, |w| w.saturating_duration_since(now));
        socket.set_read_timeout(Some(wait.clamp(Duration::from_millis(1), T1)))?;
        match socket.recv_from(&mut buf) {
            Ok((n, from)) if from == target => {
                calls.on_datagram(Instant::now(), buf.get(..n).unwrap_or_default());
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests;
