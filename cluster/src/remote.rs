//! A node in its own process (`pbxlab node`): the node's side of the control link.
//!
//! [`Member`] is sans-IO: it asks to join, then turns COMMAND datagrams into
//! [`NodeCommand`]s for the node (in order, once each, acknowledged), sends the node's events
//! until they are acknowledged, and sends its figures once a second as a heartbeat. [`join`]
//! drives the handshake on a blocking socket; after it, [`super::node::spawn_member`] serves
//! the node exactly as an in-process one, with the member in its loop. Every datagram it
//! sends is sealed (the JOIN with the join key, the rest with the session's, see [`link`]);
//! it takes only a JOINED sealed for its own JOIN, and then only datagrams of that session
//! numbered above the last one taken.
//!
//! A Call Manager that took over from another (a group's new active) has no session with the
//! node and sends a RELINK, sealed with the join key and stamped with the group's clock: the
//! member JOINs again with its own instance and a new nonce, keeps serving meanwhile, and keeps
//! its unacknowledged events for the new session. It takes a RELINK only if its stamp is above
//! every one taken before (a replayed one is not) and at most once a second, and while it
//! rejoins it does not believe a REFUSED (anyone can seal one): it keeps asking. The instance a
//! RELINK names is the Call Manager's view, not checked: a node restarted unseen (its restart
//! lost in the takeover) JOINs with its real one, and the Call Manager sees the restart.
//!
//! What it does not do: notice that a lone Call Manager restarted (it does not know the node;
//! restart the node too), or choose its address: the Call Manager sends probes, commands and
//! callers' media to the address the JOIN came from.

use std::hash::{BuildHasher, Hasher};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pbxlab_balancer::Role;

use super::link::{self, Delivery, Incoming, Message, Outgoing};
use super::node::NodeStats;
use super::{Nanos, NodeCommand, NodeEvent};
use crate::Error;

/// How often a JOIN is repeated until the Call Manager answers.
const JOIN_RETRY: Nanos = 250_000_000;
/// The least time between two RELINKs taken (a replayed one costs a new session, no more).
const RELINK_EVERY: Nanos = 1_000_000_000;
/// How often the node's figures go to the Call Manager (and show it the node is there).
const STATS_EVERY: Nanos = 1_000_000_000;
/// Link datagrams queued between two calls of [`Member::transmit_all`]: an ACK per command
/// of a read batch, and the events; more than that and the driver has stopped draining.
const MAX_OUT: usize = 4_096;

/// Who the node is and where it joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinSpec {
    pub cm: SocketAddr,
    pub name: String,
    pub role: Role,
    /// The join token: it seals the JOIN and keys the session, and is never sent.
    pub token: String,
    /// This process: a JOIN with a new instance from a known node is a restart.
    pub instance: u64,
    /// This process's half of its session key.
    pub nonce: link::Nonce,
}

impl JoinSpec {
    /// A spec with a fresh random instance. Fails if the name or token cannot travel on the
    /// link (see [`link::valid_word`]).
    pub fn new(cm: SocketAddr, name: &str, role: Role, token: &str) -> Result<JoinSpec, String> {
        let mut nonce = [0u8; link::NONCE_LEN];
        getrandom::fill(&mut nonce)
            .map_err(|e| format!("no random nonce from the operating system: {e}"))?;
        if !link::valid_word(name) {
            return Err(format!(
                "node name {name:?}: 1 to {} visible ASCII characters, no spaces",
                link::MAX_WORD
            ));
        }
        if !link::valid_word(token) {
            return Err(format!(
                "the token: 1 to {} visible ASCII characters, no spaces",
                link::MAX_WORD
            ));
        }
        // std's RandomState is seeded from the OS per process; the time and pid make two
        // processes differ even where it is not.
        let mut h = std::hash::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        Ok(JoinSpec {
            cm,
            name: name.to_owned(),
            role,
            token: token.to_owned(),
            instance: h.finish(),
            nonce: link::Nonce(nonce),
        })
    }
}

/// Where the handshake is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberState {
    Joining,
    /// In, as server `id`.
    Joined(u32),
    /// Refused, with the Call Manager's reason.
    Refused(String),
}

/// What the member has seen, for the node's final report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberStats {
    pub commands: u64,
    pub duplicates: u64,
    /// Commands that arrived beyond the window (dropped for the retransmission).
    pub too_far: u64,
    pub events_sent: u64,
    /// Events given up on (unacknowledged after every attempt) or never queued.
    pub events_lost: u64,
    /// Link datagrams that did not decode, came from elsewhere, or made no sense now.
    pub ignored: u64,
    /// Datagrams dropped because the outbox was full.
    pub dropped: u64,
    /// Link datagrams not sealed with the session's key (or a JOINED not of our JOIN):
    /// dropped, never acted on.
    pub unauthenticated: u64,
    /// Sealed datagrams numbered at or below one taken before (replays): dropped.
    pub replayed: u64,
    /// RELINKs taken: the node joined again, keeping its sessions.
    pub relinks: u64,
}

/// The node's side of the link.
#[derive(Debug)]
pub struct Member {
    spec: JoinSpec,
    join_key: pbxlab_proto::mac::Key,
    /// The session's seals, once JOINED.
    session: Option<(link::Sealer, link::Opener)>,
    /// This JOIN's half of the session key: the spec's first, a new one for each rejoin.
    nonce: link::Nonce,
    /// It joined once and asks again (a RELINK): a REFUSED is not the end now.
    rejoining: bool,
    /// No RELINK is taken before this.
    next_relink: Nanos,
    /// The stamp of the last RELINK taken: only a later one is.
    relink_stamp: u64,
    state: MemberState,
    next_join: Nanos,
    commands: Incoming<NodeCommand>,
    events: Outgoing<NodeEvent>,
    next_stats: Nanos,
    out: Vec<Vec<u8>>,
    stats: MemberStats,
}

impl Member {
    pub fn new(spec: JoinSpec) -> Member {
        Member {
            join_key: link::join_key(&spec.token),
            nonce: spec.nonce,
            spec,
            session: None,
            rejoining: false,
            next_relink: 0,
            relink_stamp: 0,
            state: MemberState::Joining,
            next_join: 0,
            commands: Incoming::new(0),
            events: Outgoing::new(1),
            next_stats: 0,
            out: Vec::new(),
            stats: MemberStats::default(),
        }
    }

    pub fn state(&self) -> &MemberState {
        &self.state
    }

    pub fn spec(&self) -> &JoinSpec {
        &self.spec
    }

    pub fn stats(&self) -> MemberStats {
        self.stats
    }

    /// Queues `msg` sealed: a JOIN with the join key, the rest with the session's.
    fn queue(&mut self, msg: &Message) {
        if self.out.len() >= MAX_OUT {
            self.stats.dropped += 1;
            return;
        }
        let buf = match &mut self.session {
            Some((tx, _)) => tx.seal(msg),
            None => {
                let mut buf = Vec::new();
                link::seal(&self.join_key, 0, msg, &mut buf);
                buf
            }
        };
        self.out.push(buf);
    }

    /// Takes one link datagram; hands `apply` the commands it makes due, in order (none, or
    /// several when it fills a gap).
    pub fn handle(
        &mut self,
        now: Nanos,
        from: SocketAddr,
        datagram: &[u8],
        mut apply: impl FnMut(NodeCommand),
    ) {
        let decoded = link::unseal(datagram)
            .ok()
            .and_then(|s| Some((s, link::decode(s.body).ok()?)));
        let (sealed, msg) = match decoded {
            Some(d) if from == self.spec.cm => d,
            _ => {
                self.stats.ignored += 1;
                return;
            }
        };
        if let Message::Relink { at, .. } = msg {
            return self.relink(now, &sealed, at);
        }
        if let Some((_, rx)) = &mut self.session {
            match rx.open(&sealed) {
                Ok(()) => {}
                Err(link::Unsealed::Forged) => {
                    self.stats.unauthenticated += 1;
                    return;
                }
                Err(link::Unsealed::Replayed) => {
                    self.stats.replayed += 1;
                    return;
                }
            }
        }
        match (&self.state, msg) {
            (
                MemberState::Joining,
                Message::Joined {
                    id,
                    first_seq,
                    nonce,
                },
            ) => {
                // Sealed with the session key of our nonce and the Call Manager's: it answers
                // our JOIN, from a Call Manager that knows the token.
                let keys = link::SessionKeys::new(&self.join_key, &self.nonce, &nonce);
                if !sealed.verify(&keys.to_node) {
                    self.stats.unauthenticated += 1;
                    return;
                }
                self.session = Some((
                    link::Sealer::new(keys.to_cm),
                    link::Opener::new(keys.to_node),
                ));
                self.state = MemberState::Joined(id);
                self.rejoining = false;
                self.commands = Incoming::new(first_seq);
                // Events the last session did not see acknowledged go on this one.
                self.events.restart(1);
                // The first figures at once: the Call Manager hears from us before any probe.
                self.next_stats = now;
            }
            (MemberState::Joining, Message::Refused { .. }) if self.rejoining => {
                self.stats.ignored += 1;
            }
            (MemberState::Joining, Message::Refused { reason }) => {
                self.state = MemberState::Refused(reason);
            }
            (MemberState::Joined(_), Message::Command { seq, command }) => {
                match self.commands.receive(seq, command) {
                    Delivery::Accepted => self.queue(&Message::Ack { seq }),
                    Delivery::Duplicate => {
                        self.stats.duplicates += 1;
                        self.queue(&Message::Ack { seq });
                    }
                    Delivery::TooFar => self.stats.too_far += 1,
                }
                while let Some(command) = self.commands.pop() {
                    self.stats.commands += 1;
                    apply(command);
                }
            }
            (MemberState::Joined(_), Message::Ack { seq }) => {
                self.events.ack(seq);
            }
            // A repeated JOINED (our JOIN was repeated too), or anything out of place.
            _ => self.stats.ignored += 1,
        }
    }

    /// A RELINK: a Call Manager that knows the token and has no session with this process
    /// asks it to JOIN again. Taken while joined, if stamped later than the last one taken, at
    /// most once a second.
    fn relink(&mut self, now: Nanos, sealed: &link::Sealed<'_>, at: u64) {
        if !sealed.verify(&self.join_key) {
            self.stats.unauthenticated += 1;
            return;
        }
        if at <= self.relink_stamp {
            self.stats.replayed += 1;
            return;
        }
        if !matches!(self.state, MemberState::Joined(_)) || now < self.next_relink {
            self.stats.ignored += 1;
            return;
        }
        self.relink_stamp = at;
        self.stats.relinks += 1;
        self.next_relink = now + RELINK_EVERY;
        self.nonce = link::Nonce::from_key(
            &self.join_key.derive("relink nonce"),
            &[&self.spec.nonce.0, &self.stats.relinks.to_be_bytes()],
        );
        self.session = None;
        self.rejoining = true;
        self.state = MemberState::Joining;
        self.next_join = now;
    }

    /// Queues an event for the Call Manager.
    pub fn push_event(&mut self, event: NodeEvent) {
        if self.events.push(event).is_err() {
            self.stats.events_lost += 1;
        }
    }

    /// JOINs while joining; then retransmissions, and the figures once a second.
    pub fn advance(&mut self, now: Nanos, stats: &NodeStats, io_errors: u64) {
        match self.state {
            MemberState::Joining => {
                if now >= self.next_join {
                    self.next_join = now + JOIN_RETRY;
                    let join = Message::Join {
                        name: self.spec.name.clone(),
                        role: self.spec.role,
                        instance: self.spec.instance,
                        nonce: self.nonce,
                    };
                    self.queue(&join);
                }
            }
            MemberState::Joined(_) => {
                let mut due = Vec::new();
                let sent = self
                    .events
                    .poll_transmit(now, |seq, &event| due.push(Message::Event { seq, event }));
                if sent.is_err() {
                    // The Call Manager has not acknowledged for seconds: those digits are
                    // stale now; later ones start afresh.
                    self.stats.events_lost += self.events.len() as u64;
                    self.events.clear();
                }
                self.stats.events_sent += due.len() as u64;
                for msg in &due {
                    self.queue(msg);
                }
                if now >= self.next_stats {
                    self.next_stats = now + STATS_EVERY;
                    self.queue(&Message::Stats {
                        stats: *stats,
                        io_errors,
                    });
                }
            }
            MemberState::Refused(_) => {}
        }
    }

    /// Hands every queued datagram (all to the Call Manager) to `send`, once.
    pub fn transmit_all(&mut self, send: impl FnOnce(&[(SocketAddr, &[u8])])) {
        if self.out.is_empty() {
            return;
        }
        let batch: Vec<(SocketAddr, &[u8])> =
            self.out.iter().map(|d| (self.spec.cm, &d[..])).collect();
        send(&batch);
        self.out.clear();
    }
}

/// Asks the Call Manager to take the node, over `socket` (which then serves the node), until
/// it answers, `timeout` passes or `stop` is set. Returns the node's server id.
pub fn join(
    socket: &UdpSocket,
    member: &mut Member,
    epoch: Instant,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<u32, Error> {
    let cm = member.spec().cm;
    let io = |what: &'static str| move |error| Error::Io { what, error };
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(io("setting the socket's read timeout"))?;
    let mut buf = vec![0u8; link::MAX_DATAGRAM + 1];
    let started = Instant::now();
    loop {
        match member.state() {
            MemberState::Joined(id) => return Ok(*id),
            MemberState::Refused(reason) => {
                return Err(Error::Refused {
                    cm,
                    reason: reason.clone(),
                });
            }
            MemberState::Joining => {}
        }
        if stop.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        if started.elapsed() >= timeout {
            return Err(Error::NoAnswer {
                cm,
                waited: timeout,
            });
        }
        let now = nanos(epoch);
        member.advance(now, &NodeStats::default(), 0);
        let mut failed = None;
        member.transmit_all(|datagrams| {
            for (to, bytes) in datagrams {
                if let Err(e) = socket.send_to(bytes, to) {
                    failed = Some(e);
                }
            }
        });
        // Unreachable for now (no route yet, ICMP refused): keep trying until the timeout.
        let _ = failed;
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                let bytes = buf.get(..n).unwrap_or_default();
                if link::is_link(bytes) {
                    // No commands before JOINED: the member drops them unacknowledged.
                    member.handle(nanos(epoch), from, bytes, |_| {});
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                        | std::io::ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => return Err(io("receiving from the Call Manager")(e)),
        }
    }
}

fn nanos(epoch: Instant) -> Nanos {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(Nanos::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MediaSession;

    fn cm() -> SocketAddr {
        SocketAddr::from(([10, 211, 0, 1], 5060))
    }

    fn member() -> Member {
        Member::new(JoinSpec::new(cm(), "media-a", Role::Media, "tok").unwrap())
    }

    fn sent(m: &mut Member) -> Vec<Message> {
        let mut out = Vec::new();
        m.transmit_all(|d| {
            out.extend(d.iter().map(|(to, b)| {
                assert_eq!(*to, cm());
                link::decode(link::unseal(b).unwrap().body).unwrap()
            }))
        });
        out
    }

    /// The Call Manager's side of the session with `m`: its JOINED, and a sealer for the rest.
    fn session(m: &Member, id: u32, first_seq: u64) -> (Vec<u8>, link::Sealer) {
        let nonce = link::Nonce([7; link::NONCE_LEN]);
        let keys = link::SessionKeys::new(&link::join_key("tok"), &m.spec().nonce, &nonce);
        let mut joined = Vec::new();
        let msg = Message::Joined {
            id,
            first_seq,
            nonce,
        };
        link::seal(&keys.to_node, 0, &msg, &mut joined);
        (joined, link::Sealer::new(keys.to_node))
    }

    fn refused(reason: &str) -> Vec<u8> {
        let mut b = Vec::new();
        let msg = Message::Refused {
            reason: reason.into(),
        };
        link::seal(&link::refusal_key(), 0, &msg, &mut b);
        b
    }

    fn end(cm: &mut link::Sealer, seq: u64, session: u64) -> Vec<u8> {
        cm.seal(&Message::Command {
            seq,
            command: NodeCommand::End {
                session: MediaSession(session),
            },
        })
    }

    fn handle(m: &mut Member, now: Nanos, from: SocketAddr, datagram: &[u8]) -> Vec<NodeCommand> {
        let mut got = Vec::new();
        m.handle(now, from, datagram, |c| got.push(c));
        got
    }

    fn ended(sessions: &[u64]) -> Vec<NodeCommand> {
        sessions
            .iter()
            .map(|&s| NodeCommand::End {
                session: MediaSession(s),
            })
            .collect()
    }

    #[test]
    fn joins_then_applies_commands_in_order_once() {
        let mut m = member();
        let s = NodeStats::default();
        m.advance(0, &s, 0);
        let join = sent(&mut m);
        assert!(matches!(&join[..], [Message::Join { name, .. }] if name == "media-a"));
        // Repeated until answered.
        m.advance(JOIN_RETRY - 1, &s, 0);
        assert!(sent(&mut m).is_empty());
        m.advance(JOIN_RETRY, &s, 0);
        assert_eq!(sent(&mut m).len(), 1);
        let (joined, mut tx) = session(&m, 4, 100);
        // A command before JOINED is not taken (nor acknowledged).
        assert!(handle(&mut m, 1, cm(), &end(&mut tx, 100, 1)).is_empty());
        // A JOINED not sealed for our JOIN is not believed.
        let mut other = member();
        let (foreign, _) = session(&other, 4, 100);
        other.advance(0, &s, 0);
        handle(&mut m, 1, cm(), &foreign);
        assert_eq!(m.state(), &MemberState::Joining);
        // Only the Call Manager's address counts.
        handle(
            &mut m,
            1,
            SocketAddr::from(([10, 211, 0, 66], 5060)),
            &joined,
        );
        assert_eq!(m.state(), &MemberState::Joining);
        handle(&mut m, 1, cm(), &joined);
        assert_eq!(m.state(), &MemberState::Joined(4));
        // Ahead of a gap: held and acknowledged; applied once the gap fills.
        assert!(handle(&mut m, 2, cm(), &end(&mut tx, 101, 2)).is_empty());
        assert_eq!(sent(&mut m), [Message::Ack { seq: 101 }]);
        assert_eq!(
            handle(&mut m, 2, cm(), &end(&mut tx, 100, 1)),
            ended(&[1, 2])
        );
        // A duplicate is acknowledged again, not applied again.
        assert!(handle(&mut m, 2, cm(), &end(&mut tx, 101, 2)).is_empty());
        assert_eq!(handle(&mut m, 2, cm(), &end(&mut tx, 102, 3)), ended(&[3]));
        assert_eq!(
            sent(&mut m),
            [
                Message::Ack { seq: 100 },
                Message::Ack { seq: 101 },
                Message::Ack { seq: 102 }
            ]
        );
        let st = m.stats();
        assert_eq!((st.commands, st.duplicates, st.too_far), (3, 1, 0));
        // A datagram replayed, or forged, is dropped unacknowledged.
        let again = end(&mut tx, 103, 4);
        assert_eq!(handle(&mut m, 3, cm(), &again), ended(&[4]));
        assert!(handle(&mut m, 3, cm(), &again).is_empty());
        let forged = b"PBXL/1 CMD 104 end 5 99 00000000000000000000000000000000";
        assert!(handle(&mut m, 3, cm(), forged).is_empty());
        assert_eq!(sent(&mut m), [Message::Ack { seq: 103 }]);
        assert_eq!((m.stats().replayed, m.stats().unauthenticated), (1, 2));
    }

    #[test]
    fn refused_is_final() {
        let mut m = member();
        handle(&mut m, 0, cm(), &refused("wrong token"));
        assert_eq!(m.state(), &MemberState::Refused("wrong token".into()));
        let (joined, _) = session(&m, 1, 1);
        handle(&mut m, 0, cm(), &joined);
        assert_eq!(m.state(), &MemberState::Refused("wrong token".into()));
    }

    #[test]
    fn events_are_resent_until_acknowledged_and_stats_beat() {
        let mut m = member();
        let (joined, mut tx) = session(&m, 1, 1);
        handle(&mut m, 0, cm(), &joined);
        let s = NodeStats {
            sessions: 3,
            ..NodeStats::default()
        };
        let digit = NodeEvent::Digit {
            session: MediaSession(9),
            digit: '5',
        };
        m.push_event(digit);
        m.advance(0, &s, 2);
        assert_eq!(
            sent(&mut m),
            [
                Message::Event {
                    seq: 1,
                    event: digit
                },
                Message::Stats {
                    stats: s,
                    io_errors: 2
                }
            ]
        );
        m.advance(link::RETRY, &s, 2);
        assert_eq!(
            sent(&mut m),
            [Message::Event {
                seq: 1,
                event: digit
            }]
        );
        handle(
            &mut m,
            link::RETRY,
            cm(),
            &tx.seal(&Message::Ack { seq: 1 }),
        );
        m.advance(2 * link::RETRY, &s, 2);
        assert!(sent(&mut m).is_empty());
        m.advance(STATS_EVERY, &s, 2);
        assert!(matches!(&sent(&mut m)[..], [Message::Stats { .. }]));
    }

    #[test]
    fn garbage_is_ignored() {
        let mut m = member();
        assert!(handle(&mut m, 0, cm(), b"PBXL/1 CMD x").is_empty());
        assert!(handle(&mut m, 0, cm(), b"PBXL/1 JOINED").is_empty());
        assert_eq!(m.state(), &MemberState::Joining);
        assert_eq!(m.stats().ignored, 2);
    }

    #[test]
    fn names_and_tokens_must_fit_the_wire() {
        assert!(JoinSpec::new(cm(), "media a", Role::Media, "t").is_err());
        assert!(JoinSpec::new(cm(), "m", Role::Media, "").is_err());
        assert!(JoinSpec::new(cm(), "m", Role::Media, &"t".repeat(65)).is_err());
        let a = JoinSpec::new(cm(), "m", Role::Media, "t").unwrap();
        let b = JoinSpec::new(cm(), "m", Role::Media, "t").unwrap();
        assert_ne!(a.instance, b.instance);
    }
}

#[cfg(test)]
mod relink_tests {
    use super::*;

    fn cm() -> SocketAddr {
        SocketAddr::from(([10, 211, 0, 1], 5060))
    }

    fn relink(key: &pbxlab_proto::mac::Key, at: u64) -> Vec<u8> {
        let mut b = Vec::new();
        link::seal(key, 1, &Message::Relink { instance: 9, at }, &mut b);
        b
    }

    /// The JOINED a Call Manager sends for the node nonce `node`.
    fn joined(node: &link::Nonce, id: u32) -> Vec<u8> {
        let nonce = link::Nonce([9; link::NONCE_LEN]);
        let keys = link::SessionKeys::new(&link::join_key("tok"), node, &nonce);
        let mut b = Vec::new();
        let msg = Message::Joined {
            id,
            first_seq: 1,
            nonce,
        };
        link::seal(&keys.to_node, 0, &msg, &mut b);
        b
    }

    /// The nonce of the JOIN `m` queued.
    fn join_nonce(m: &mut Member, now: Nanos) -> (u64, link::Nonce) {
        m.advance(now, &NodeStats::default(), 0);
        let mut found = None;
        m.transmit_all(|d| {
            for (_, b) in d {
                if let Ok(Message::Join {
                    instance, nonce, ..
                }) = link::decode(link::unseal(b).unwrap().body)
                {
                    found = Some((instance, nonce));
                }
            }
        });
        found.expect("a JOIN")
    }

    #[test]
    fn a_relink_is_taken_only_from_the_token_and_once_and_a_refusal_does_not_end_it() {
        let spec = JoinSpec::new(cm(), "media-a", Role::Media, "tok").unwrap();
        let mut m = Member::new(spec);
        let (instance, first) = join_nonce(&mut m, 0);
        m.handle(1, cm(), &joined(&first, 3), |_| {});
        assert_eq!(m.state(), &MemberState::Joined(3));
        // Not the token's seal: nothing changes.
        let other = link::join_key("other");
        m.handle(2, cm(), &relink(&other, 50), |_| {});
        assert_eq!(m.stats().unauthenticated, 1);
        assert_eq!(m.state(), &MemberState::Joined(3));
        // The real one: it asks again, as the same process with a new nonce.
        let real = relink(&link::join_key("tok"), 50);
        m.handle(4, cm(), &real, |_| {});
        assert_eq!(m.state(), &MemberState::Joining);
        let (again, second) = join_nonce(&mut m, 5);
        assert_eq!(again, instance);
        assert_ne!(second, first);
        // Anyone can seal a REFUSED: while rejoining it is not believed.
        let mut refused = Vec::new();
        let msg = Message::Refused {
            reason: "go away".into(),
        };
        link::seal(&link::refusal_key(), 0, &msg, &mut refused);
        m.handle(6, cm(), &refused, |_| {});
        assert_eq!(m.state(), &MemberState::Joining);
        // A JOINED for the old nonce is not for this JOIN; one for the new is.
        m.handle(7, cm(), &joined(&first, 3), |_| {});
        assert_eq!(m.state(), &MemberState::Joining);
        m.handle(8, cm(), &joined(&second, 3), |_| {});
        assert_eq!(m.state(), &MemberState::Joined(3));
        assert_eq!(m.stats().relinks, 1);
        // Replayed, even a second later, it is not taken: its stamp is not above the last.
        m.handle(2_000_000_000, cm(), &real, |_| {});
        assert_eq!(m.state(), &MemberState::Joined(3));
        assert_eq!(m.stats().replayed, 1);
        // A later one is.
        m.handle(
            2_000_000_001,
            cm(),
            &relink(&link::join_key("tok"), 51),
            |_| {},
        );
        assert_eq!(m.state(), &MemberState::Joining);
    }
}
