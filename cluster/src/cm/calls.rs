//! The call table: each B2BUA call with its two dialogs and where its media lives, found by
//! slot, by either leg's Call-ID or by balancer session; and the retransmission of the 200
//! that answers leg A until its ACK comes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use pbxlab_balancer::{Assignment, ServerId, SessionId};
use pbxlab_proto::builder::{ResponseHeaders, write_request};
use pbxlab_proto::sdp;
use pbxlab_proto::sip::{HeaderName, Message, Method};

use super::transactions::TxId;
use super::{Leg, MediaSession, NS, Nanos, Outbox};

/// Leg B dialogs given up while their INVITE rang that are remembered at once; past it the
/// oldest is forgotten first.
const ABANDONED_MAX: usize = 1024;

/// A call's slot and the slot's generation, so a stale reference names nothing.
pub(super) type CallRef = (u32, u32);

/// Where one of a call's sessions lives.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Placement {
    pub(super) server: ServerId,
    pub(super) session: SessionId,
    pub(super) media: MediaSession,
}

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub(super) enum Kind {
    /// To a registered user, media relayed by a media node.
    User(u32),
    Echo,
    Ivr,
    /// Waiting in (or served from) queue q.
    Queue(u32),
    Meeting(u64),
}

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AState {
    /// INVITE received, no final response yet.
    Proceeding,
    /// 200 sent, waiting for the ACK (retransmitting).
    Answered,
    Confirmed,
}

/// Our view of one dialog.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub(super) struct Dialog {
    pub(super) call_id: String,
    pub(super) remote_tag: String,
    /// Where in-dialog requests go (the peer's Contact).
    pub(super) remote_uri: String,
    /// The transport address we send to.
    pub(super) remote_addr: SocketAddr,
    /// From and To values for requests we send in the dialog.
    pub(super) local_party: String,
    pub(super) remote_party: String,
    pub(super) local_cseq: u32,
    /// The `o=` session id and version of the last SDP we sent in this dialog: a changed SDP
    /// keeps the id and raises the version (RFC 3264 8), or the peer may take it for another
    /// session and refuse the re-INVITE that moves its media.
    pub(super) sdp_id: u64,
    pub(super) sdp_version: u64,
}

impl Dialog {
    /// Writes our request `method` in this dialog into `out`: `via` is its whole Via value,
    /// `cseq` its sequence number, `extra` the headers after CSeq.
    /// What the answer to our INVITE tells of the far end: its tag, its party as it wrote
    /// it, and the Contact that in-dialog requests go to.
    pub(super) fn learn_answer(&mut self, msg: &Message<'_>) {
        self.remote_tag = msg
            .to()
            .and_then(|t| t.tag())
            .unwrap_or_default()
            .to_owned();
        self.remote_party = msg.header(HeaderName::To).unwrap_or_default().to_owned();
        if let Some(contact) = msg.contact() {
            self.remote_uri = contact.uri.to_owned();
        }
    }

    pub(super) fn write_request(
        &self,
        out: &mut Vec<u8>,
        method: Method,
        via: &str,
        cseq: u32,
        extra: &[(&str, &str)],
        body: &[u8],
    ) {
        let cseq = format!("{cseq} {}", method.as_str());
        let mut headers = Vec::with_capacity(6 + extra.len());
        headers.extend_from_slice(&[
            ("Via", via),
            ("Max-Forwards", "70"),
            ("From", &self.local_party),
            ("To", &self.remote_party),
            ("Call-ID", &self.call_id),
            ("CSeq", &cseq),
        ]);
        headers.extend_from_slice(extra);
        write_request(out, method.as_str(), &self.remote_uri, &headers, body);
    }

    fn empty() -> Dialog {
        Dialog {
            call_id: String::new(),
            remote_tag: String::new(),
            remote_uri: String::new(),
            remote_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            local_party: String::new(),
            remote_party: String::new(),
            local_cseq: 0,
            sdp_id: 0,
            sdp_version: 1,
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub(super) struct Call {
    generation: u32,
    live: bool,
    /// When the caller's INVITE came: the call's age, against the longest call.
    pub(super) started: Nanos,
    /// The session interval leg A asked for with `Session-Expires` (RFC 4028), refreshed by
    /// its re-INVITEs; 0 when it asked for none (then only the longest call applies).
    pub(super) session_expires_s: u32,
    /// When leg A's session was last refreshed: our 200 to its INVITE, then its re-INVITEs.
    pub(super) refreshed: Nanos,
    /// The caller's INVITE had no SDP: our 200 offered, and the answer is due in its ACK
    /// (RFC 3261 13.2.1); until then `a_leg` is a stand-in and no media runs.
    pub(super) awaiting_answer: bool,
    pub(super) kind: Kind,
    pub(super) a: Dialog,
    pub(super) a_state: AState,
    pub(super) a_leg: Leg,
    /// The direction leg A's offer asked for (RFC 3264 5.1): our offers to B carry it and our
    /// answers to A mirror it, so a call set up `inactive` carries no audio either way.
    #[serde(default)]
    pub(super) a_direction: sdp::Direction,
    /// What every response to A's INVITE copies from it, our tag included.
    pub(super) a_headers: ResponseHeaders,
    pub(super) a_invite_cseq: u32,
    /// The last final response to A's INVITE, for retransmission until the ACK.
    pub(super) a_final: Vec<u8>,
    pub(super) a_rto: Nanos,
    pub(super) a_next: Nanos,
    pub(super) a_deadline: Nanos,
    /// The caller's user number, when it is one of ours (busy tracking for agents).
    pub(super) caller: Option<u32>,
    pub(super) b: Option<Dialog>,
    pub(super) b_leg: Option<Leg>,
    pub(super) b_user: Option<u32>,
    pub(super) b_answered: bool,
    pub(super) b_invite: Option<TxId>,
    /// The node our INVITE to leg B named. A failover can move the media while B rings; B
    /// then answers towards this node, so it is re-INVITEd once it has answered.
    pub(super) b_offered: Option<ServerId>,
    /// Where the audio of the call is handled now.
    pub(super) media: Option<Placement>,
    /// The queue session, held from arrival until the call ends.
    pub(super) queue: Option<Placement>,
    /// The media session placed for a queue caller while its agent's phone rings; it becomes
    /// `media` when the agent answers.
    pub(super) agent_media: Option<Assignment>,
    pub(super) waiting_since: Option<Nanos>,
    /// When a failover or operator action moved the call's media, until every leg answered
    /// the re-INVITE: the reassignment time the drill reports.
    pub(super) moved_at: Option<Nanos>,
    pub(super) reinvites_open: u8,
    /// Per leg (A, B): a re-INVITE of ours is in progress, and the media moved again meanwhile.
    /// RFC 3261 14.1: no second INVITE in a dialog while one is pending; the newer SDP goes
    /// once the first is answered.
    pub(super) reinviting: [bool; 2],
    pub(super) reinvite_again: [bool; 2],
}

impl Call {
    pub(super) fn new(generation: u32) -> Call {
        Call {
            generation,
            live: false,
            started: 0,
            awaiting_answer: false,
            session_expires_s: 0,
            refreshed: 0,
            kind: Kind::Echo,
            a: Dialog::empty(),
            a_state: AState::Proceeding,
            a_leg: Leg {
                remote: SocketAddr::from(([0, 0, 0, 0], 0)),
                ssrc: None,
                codec_pt: 0,
                dtmf_pt: None,
            },
            a_direction: sdp::Direction::SendRecv,
            a_headers: ResponseHeaders::default(),
            a_invite_cseq: 0,
            a_final: Vec::new(),
            a_rto: 0,
            a_next: Nanos::MAX,
            a_deadline: Nanos::MAX,
            caller: None,
            b: None,
            b_leg: None,
            b_user: None,
            b_answered: false,
            b_invite: None,
            b_offered: None,
            media: None,
            queue: None,
            agent_media: None,
            waiting_since: None,
            moved_at: None,
            reinvites_open: 0,
            reinviting: [false; 2],
            reinvite_again: [false; 2],
        }
    }

    /// Leg A's dialog, or leg B's when there is one.
    pub(super) fn dialog(&self, to_a: bool) -> Option<&Dialog> {
        if to_a { Some(&self.a) } else { self.b.as_ref() }
    }

    /// The direction our SDP to leg A (`to_a`) or to leg B says: B is told what A asked for,
    /// A the answer to its own (RFC 3264 6.1).
    pub(super) fn direction_towards(&self, to_a: bool) -> sdp::Direction {
        if to_a {
            self.a_direction.answer()
        } else {
            self.a_direction
        }
    }

    pub(super) fn dialog_mut(&mut self, to_a: bool) -> Option<&mut Dialog> {
        if to_a {
            Some(&mut self.a)
        } else {
            self.b.as_mut()
        }
    }
}

/// A leg B INVITE we gave up on while it rang (the caller left, or it rang too long). Its
/// callee may have answered meanwhile: a 200 crossing our CANCEL still has to be ACKed and its
/// dialog ended with a BYE (RFC 3261 13.2.2.4, 15), after the call itself is forgotten.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
struct Abandoned {
    invite: TxId,
    /// Our CANCEL of it: its answer comes back on the INVITE's branch (RFC 3261 9.1), so it is
    /// found here.
    cancel: Option<TxId>,
    /// The call it was for; its slot may hold another call by now.
    call: CallRef,
    dialog: Dialog,
    /// Kept until then: 64*T1 after it was given up or last answered, as long as the callee
    /// repeats an unacknowledged 200.
    until: Nanos,
    /// A 200 came and its dialog got the BYE; a repeated 200 only gets its ACK again.
    ended: bool,
}

#[derive(serde::Serialize, serde::Deserialize, Clone)]
pub(super) struct Calls {
    slots: Vec<Call>,
    free: Vec<u32>,
    /// Each leg's Call-ID: the slot, and whether it is leg A.
    by_call_id: HashMap<String, (u32, bool)>,
    /// Every balancer session a call holds (media, queue, an agent's media while it rings).
    by_session: HashMap<SessionId, CallRef>,
    /// Retransmissions of A's 200.
    timers: BinaryHeap<Reverse<(Nanos, CallRef)>>,
    /// Oldest first, at most [`ABANDONED_MAX`].
    abandoned: VecDeque<Abandoned>,
    /// The next media session number, unique for the cluster's lifetime.
    next_media: u64,
    /// Per caller address: calls up, and those of them not yet confirmed by an ACK. An entry
    /// lives only while its address has a call, so the table is bounded by the calls.
    by_source: HashMap<IpAddr, Source>,
    t1: Nanos,
    t2: Nanos,
}

/// One caller address's calls.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Source {
    pub(super) calls: u32,
    pub(super) unconfirmed: u32,
}

impl Calls {
    pub(super) fn new(t1: Nanos, t2: Nanos) -> Calls {
        Calls {
            slots: Vec::new(),
            free: Vec::new(),
            by_call_id: HashMap::new(),
            by_session: HashMap::new(),
            timers: BinaryHeap::new(),
            abandoned: VecDeque::new(),
            next_media: 1,
            by_source: HashMap::new(),
            t1,
            t2,
        }
    }

    pub(super) fn get(&self, r: CallRef) -> Option<&Call> {
        self.slots
            .get(r.0 as usize)
            .filter(|c| c.live && c.generation == r.1)
    }

    pub(super) fn get_mut(&mut self, r: CallRef) -> Option<&mut Call> {
        self.slots
            .get_mut(r.0 as usize)
            .filter(|c| c.live && c.generation == r.1)
    }

    /// Leg A's Call-ID of every call held, leg B's if it has one, and whether its caller has
    /// been answered.
    pub(super) fn a_legs(&self) -> impl Iterator<Item = (&str, Option<&str>, bool)> {
        self.slots.iter().filter(|c| c.live).map(|c| {
            (
                c.a.call_id.as_str(),
                c.b.as_ref().map(|b| b.call_id.as_str()),
                c.a_state != AState::Proceeding,
            )
        })
    }

    /// Every call whose media is placed on `server`, in slot order.
    pub(super) fn with_media_on(&self, server: ServerId) -> Vec<(CallRef, Placement)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, c)| c.live)
            .filter_map(|(i, c)| {
                let p = c.media.filter(|p| p.server == server)?;
                Some(((i as u32, c.generation), p))
            })
            .collect()
    }

    pub(super) fn active(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// The reference [`Calls::insert`] will give the next call.
    pub(super) fn next_ref(&self) -> CallRef {
        match self.free.last() {
            Some(&i) => (i, self.slots.get(i as usize).map_or(0, |c| c.generation)),
            None => (self.slots.len() as u32, 0),
        }
    }

    /// Puts `call` (made with the generation of [`Calls::next_ref`]) in its slot, live.
    pub(super) fn insert(&mut self, mut call: Call) -> CallRef {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Call::new(0));
                (self.slots.len() - 1) as u32
            }
        };
        call.live = true;
        let source = self.by_source.entry(call.a.remote_addr.ip()).or_default();
        source.calls += 1;
        if call.a_state != AState::Confirmed {
            source.unconfirmed += 1;
        }
        let r = (index, call.generation);
        if let Some(slot) = self.slots.get_mut(index as usize) {
            *slot = call;
        }
        r
    }

    /// Takes a call out of the table; its slot keeps only its next generation. The call's
    /// Call-IDs and sessions stay indexed until they are forgotten one by one.
    pub(super) fn remove(&mut self, r: CallRef) -> Option<Call> {
        let slot = self.get_mut(r)?;
        let c = std::mem::replace(slot, Call::new(r.1.wrapping_add(1)));
        self.free.push(r.0);
        let ip = c.a.remote_addr.ip();
        if let Some(source) = self.by_source.get_mut(&ip) {
            source.calls = source.calls.saturating_sub(1);
            if c.a_state != AState::Confirmed {
                source.unconfirmed = source.unconfirmed.saturating_sub(1);
            }
            if source.calls == 0 {
                self.by_source.remove(&ip);
            }
        }
        Some(c)
    }

    /// The calls due to end at `now`, in slot order (so a run replays): those that started
    /// `max_call` ago or earlier (0: none), and those whose session timer ran out unrefreshed.
    /// RFC 4028 10: the side that is not the refresher ends the session min(32 s, a third of
    /// the interval) before it expires. The timer runs from the 2xx (RFC 4028 7.2), so a call
    /// whose caller has not been answered yet has none.
    pub(super) fn due_to_end(&self, now: Nanos, max_call: Nanos) -> Vec<CallRef> {
        let old = |c: &Call| max_call > 0 && now.saturating_sub(c.started) >= max_call;
        let expired = |c: &Call| {
            let se = u64::from(c.session_expires_s);
            se > 0
                && c.a_state != AState::Proceeding
                && now.saturating_sub(c.refreshed) >= (se - (se / 3).min(32)) * NS
        };
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, c)| c.live && (old(c) || expired(c)))
            .map(|(i, c)| (i as u32, c.generation))
            .collect()
    }

    /// The calls from this caller address.
    pub(super) fn of_source(&self, ip: IpAddr) -> Source {
        self.by_source.get(&ip).copied().unwrap_or_default()
    }

    /// The call one of whose legs has this Call-ID, and whether it is leg A.
    pub(super) fn find(&self, call_id: &str) -> Option<(CallRef, bool)> {
        let &(index, is_a) = self.by_call_id.get(call_id)?;
        let generation = self.slots.get(index as usize)?.generation;
        Some(((index, generation), is_a))
    }

    /// Where the peer of the dialog with this Call-ID is.
    pub(super) fn peer_of(&self, call_id: &str) -> Option<SocketAddr> {
        let &(index, is_a) = self.by_call_id.get(call_id)?;
        let c = self.slots.get(index as usize)?;
        c.dialog(is_a).map(|d| d.remote_addr)
    }

    pub(super) fn index_call_id(&mut self, call_id: String, r: CallRef, is_a: bool) {
        self.by_call_id.insert(call_id, (r.0, is_a));
    }

    pub(super) fn forget_call_id(&mut self, call_id: &str) {
        self.by_call_id.remove(call_id);
    }

    pub(super) fn by_session(&self, session: SessionId) -> Option<CallRef> {
        self.by_session.get(&session).copied()
    }

    pub(super) fn index_session(&mut self, session: SessionId, r: CallRef) {
        self.by_session.insert(session, r);
    }

    pub(super) fn forget_session(&mut self, session: SessionId) -> Option<CallRef> {
        self.by_session.remove(&session)
    }

    /// Remembers leg B `dialog` of `call`, whose INVITE `invite` we gave up on at `now`.
    pub(super) fn abandon(
        &mut self,
        now: Nanos,
        invite: TxId,
        cancel: Option<TxId>,
        call: CallRef,
        dialog: Dialog,
    ) {
        while self
            .abandoned
            .front()
            .is_some_and(|a| a.until <= now || self.abandoned.len() >= ABANDONED_MAX)
        {
            self.abandoned.pop_front();
        }
        self.abandoned.push_back(Abandoned {
            invite,
            cancel,
            call,
            dialog,
            until: now + 64 * self.t1,
            ended: false,
        });
    }

    /// A final answer at `now` to abandoned INVITE `invite`: its call and leg B dialog, and
    /// for a 2xx (`success`) whether it is the first, whose dialog still needs the BYE. A 2xx
    /// keeps the record another 64*T1, as the callee repeats the 200 until it is ACKed.
    /// Our CANCEL of the given-up INVITE `invite`, if one is kept.
    pub(super) fn cancel_of(&self, invite: TxId) -> Option<TxId> {
        self.abandoned
            .iter()
            .find(|a| a.invite == invite)
            .and_then(|a| a.cancel)
    }

    pub(super) fn abandoned_answer(
        &mut self,
        now: Nanos,
        invite: TxId,
        success: bool,
    ) -> Option<(CallRef, Dialog, bool)> {
        let until = now + 64 * self.t1;
        let a = self
            .abandoned
            .iter_mut()
            .find(|a| a.invite == invite && a.until > now)?;
        let first = success && !a.ended;
        if success {
            a.ended = true;
            a.until = a.until.max(until);
        }
        Some((a.call, a.dialog.clone(), first))
    }

    /// The number the next media session will get.
    pub(super) fn peek_media(&self) -> u64 {
        self.next_media
    }

    pub(super) fn new_media(&mut self) -> MediaSession {
        let m = MediaSession(self.next_media);
        self.next_media += 1;
        m
    }

    /// Queues `response` (A's 200) and keeps it, retransmitted from T1 on until the ACK.
    pub(super) fn answer(&mut self, now: Nanos, r: CallRef, response: Vec<u8>, out: &mut Outbox) {
        let t1 = self.t1;
        let Some(c) = self.get_mut(r) else { return };
        c.a_state = AState::Answered;
        c.a_rto = t1;
        c.a_next = now + t1;
        c.a_deadline = now + 64 * t1;
        out.push(c.a.remote_addr, &response);
        c.a_final = response;
        self.timers.push(Reverse((now + t1, r)));
    }

    /// A's ACK came: the 200 is no longer retransmitted.
    pub(super) fn confirm(&mut self, r: CallRef) {
        let mut confirmed = None;
        if let Some(c) = self.get_mut(r)
            && c.a_state == AState::Answered
        {
            c.a_state = AState::Confirmed;
            c.a_final = Vec::new();
            c.a_next = Nanos::MAX;
            confirmed = Some(c.a.remote_addr.ip());
        }
        if let Some(source) = confirmed.and_then(|ip| self.by_source.get_mut(&ip)) {
            source.unconfirmed = source.unconfirmed.saturating_sub(1);
        }
    }

    pub(super) fn next_timer(&self) -> Option<(Nanos, CallRef)> {
        self.timers.peek().map(|&Reverse(t)| t)
    }

    pub(super) fn pop_timer(&mut self) {
        self.timers.pop();
    }

    /// Runs the retransmission timer of `r`'s 200 at `now`; true when the 200 went
    /// unacknowledged for 64*T1 (RFC 3261 13.3.1.4) and the call has to end.
    pub(super) fn fire(&mut self, now: Nanos, r: CallRef, out: &mut Outbox) -> bool {
        let t2 = self.t2;
        let Some(c) = self.get_mut(r) else {
            return false;
        };
        if c.a_state != AState::Answered || c.a_next > now {
            return false;
        }
        if now >= c.a_deadline {
            return true;
        }
        c.a_rto = (c.a_rto * 2).min(t2);
        c.a_next = now + c.a_rto;
        let at = c.a_next;
        out.push(c.a.remote_addr, &c.a_final);
        self.timers.push(Reverse((at, r)));
        false
    }
}
