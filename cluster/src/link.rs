//! The control link between the Call Manager and nodes that run in their own processes
//! (`pbxlab node`): its wire format, and the two halves of its reliable, in-order delivery.
//!
//! Sans-IO like the rest of [`super`]: [`encode`] and [`decode`] turn [`Message`]s into
//! datagrams and back, [`Outgoing`] decides what to send (and resend) at `now`, [`Incoming`]
//! decides what a received sequence number means. Sockets and clocks belong to the drivers
//! ([`super::hub`] on the Call Manager's side, [`super::remote`] on the node's).
//!
//! # Wire format
//!
//! One message per UDP datagram, on the Call Manager's SIP socket and the node's one socket
//! (where its RTP and the OPTIONS probes arrive too). Every datagram starts with [`MAGIC`],
//! `PBXL/1 `: an RTP or RTCP packet starts with a byte in 128-191 and a STUN one with 0-3, and
//! a SIP message starts with a method token or `SIP/2.0`, and a token cannot hold `/`. After
//! the magic, ASCII words separated by single spaces:
//!
//! ```text
//! PBXL/1 JOIN <name> <role> <instance, hex> <node nonce, 32 hex>   node -> CM
//! PBXL/1 JOINED <id> <first command seq> <CM nonce, 32 hex>        CM -> node
//! PBXL/1 REFUSED <reason, free text>                               CM -> node
//! PBXL/1 RELINK <instance, hex> <stamp>                            CM -> node
//! PBXL/1 CMD <seq> relay <session> <leg> <leg>           CM -> node, also echo|ivr|hold
//!                                                        <session> <leg>, join <session>
//!                                                        <room> <leg>, end <session>, reset,
//!                                                        mark, sweep
//! PBXL/1 EVENT <seq> digit <session> <digit>             node -> CM
//! PBXL/1 ACK <seq>                                       either way
//! PBXL/1 STATS <12 counters>                             node -> CM, once a second
//! leg: <ip:port>,<ssrc hex or ->,<payload type>,<telephone-event payload type or ->
//! ```
//!
//! and every datagram ends with its seal, ` <counter> <MAC>`: the first 16 bytes (hex) of the
//! HMAC-SHA-256 of the message and the counter. A JOIN is sealed with the join key (from the
//! join token, which never travels); the node's JOIN and the Call Manager's JOINED each carry a
//! random half of the session key, and everything after them is sealed with that session's key
//! for its direction, numbered from 1 up: a receiver drops (and counts) a datagram whose MAC
//! is not its session's, or whose counter is not above every one taken (a replay). REFUSED is
//! sealed with a public key: a refused node often shares no key with the Call Manager, so a
//! node believes one only while it is joining.
//!
//! Commands and events are delivered reliably and in order: each carries a sequence number,
//! the receiver acknowledges each one it gets (again, if it gets it again), holds those that
//! arrive ahead of a gap and applies them in order; the sender sends each unacknowledged one
//! again after [`RETRY`], up to [`ATTEMPTS`] times, keeping at most [`WINDOW`] numbers in
//! flight so the receiver never has to hold more. STATS is a heartbeat with the node's
//! figures; losing one only delays the status.
//!
//! A JOIN names the node's process (`instance`, random at start): the same instance and nonce
//! again is a retransmission and gets the same JOINED; another from the same address is a
//! restart, or (the same instance, a new nonce) a new link of the same process. JOINED says
//! where the Call Manager's sequence numbers start (1 in each session: a stale command of
//! another session fails this one's MAC). RELINK, sealed with the join key, asks a node to
//! JOIN again (a Call Manager that took over has no session with it); its stamp (the group's
//! clock) must be above every RELINK's the node took, so a replayed one is not taken.
//!
//! What the seal does not do: hide anything (the link is readable on the path), or stop an
//! attacker on the path from dropping datagrams or forging a REFUSED to a node that is joining.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;

use pbxlab_balancer::Role;
use pbxlab_proto::mac::{self, Key};

use super::node::NodeStats;
use super::{Leg, MediaSession, Nanos, NodeCommand, NodeEvent};

/// The first bytes of every link datagram.
pub const MAGIC: &[u8] = b"PBXL/1 ";
/// Longest datagram the link sends or accepts; a relay command with two IPv6 legs is ~200.
pub const MAX_DATAGRAM: usize = 1024;
/// Longest node name, token or refusal reason.
pub const MAX_WORD: usize = 64;
/// How long a sent command or event waits for its ACK before it is sent again.
pub const RETRY: Nanos = 100_000_000;
/// Sends of one message before the link counts as lost (5 s at [`RETRY`]).
pub const ATTEMPTS: u32 = 50;
/// Sequence numbers in flight: a message is sent only when it is less than this many after the
/// oldest unacknowledged one, so the receiver holds at most this many ahead of a gap, and a
/// burst of commands does not become a burst of retransmissions.
pub const WINDOW: usize = 256;
/// Messages queued (sent or waiting) before the link counts as lost: a node that has not
/// acknowledged this many is not keeping up, or not there.
pub const MAX_QUEUED: usize = 65_536;

/// Whether a datagram belongs to the link rather than to SIP or RTP.
pub fn is_link(datagram: &[u8]) -> bool {
    datagram.starts_with(MAGIC)
}

/// Whether `word` can be a node name or a token: 1 to [`MAX_WORD`] visible ASCII characters.
pub fn valid_word(word: &str) -> bool {
    !word.is_empty() && word.len() <= MAX_WORD && word.bytes().all(|b| b.is_ascii_graphic())
}

/// Bytes of a nonce (each side's half of a session key).
pub const NONCE_LEN: usize = 16;
/// Bytes of the MAC that ends every datagram.
pub const TAG_LEN: usize = 16;

/// One side's random half of a session key: drawn per process (node) or per JOIN (Call
/// Manager), so that no two sessions share a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Nonce(pub [u8; NONCE_LEN]);

impl Nonce {
    fn parse(word: &str) -> Result<Nonce, Malformed> {
        match mac::parse_hex::<NONCE_LEN>(word) {
            Some((bytes, NONCE_LEN)) => Ok(Nonce(bytes)),
            _ => malformed("a nonce is 32 hex digits"),
        }
    }

    /// The first bytes of a key's MAC of `parts` (for a nonce drawn from a key).
    pub fn from_key(key: &Key, parts: &[&[u8]]) -> Nonce {
        let full = key.mac(parts);
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(full.get(..NONCE_LEN).unwrap_or(&[0; NONCE_LEN]));
        Nonce(n)
    }
}

impl std::fmt::Display for Nonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::with_capacity(2 * NONCE_LEN);
        mac::push_hex(&mut s, &self.0);
        f.write_str(&s)
    }
}

/// The key that seals JOINs (and REFUSED never: a node with the wrong token shares no key).
pub fn join_key(token: &str) -> Key {
    Key::from_phrase(token.as_bytes()).derive("link join")
}

/// The seal of REFUSED: public, since a refused node often shares no key with the Call
/// Manager; it keeps the framing the same, and authenticates nothing.
pub fn refusal_key() -> Key {
    Key::from_phrase(b"").derive("link refused")
}

/// A session's two keys, one per direction, from the join key and both halves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionKeys {
    pub to_cm: Key,
    pub to_node: Key,
}

impl SessionKeys {
    pub fn new(join_key: &Key, node: &Nonce, cm: &Nonce) -> SessionKeys {
        let session = Key::from_bytes(join_key.mac(&[b"session", &node.0, &cm.0]));
        SessionKeys {
            to_cm: session.derive("node to cm"),
            to_node: session.derive("cm to node"),
        }
    }
}

/// Writes `msg` sealed with `key` as datagram number `counter` of its direction: the message,
/// then ` <counter> <MAC, hex>`, the MAC over both.
pub fn seal(key: &Key, counter: u64, msg: &Message, out: &mut Vec<u8>) {
    encode(msg, out);
    let tag = key.mac(&[out, &counter.to_be_bytes()]);
    let mut trailer = format!(" {counter} ");
    mac::push_hex(&mut trailer, tag.get(..TAG_LEN).unwrap_or_default());
    out.extend_from_slice(trailer.as_bytes());
}

/// A datagram split from its seal, not checked yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed<'a> {
    /// The message, as [`decode`] reads it.
    pub body: &'a [u8],
    pub counter: u64,
    tag: [u8; TAG_LEN],
}

impl Sealed<'_> {
    /// Whether `key` sealed it, compared in constant time.
    pub fn verify(&self, key: &Key) -> bool {
        key.verify(&[self.body, &self.counter.to_be_bytes()], &self.tag)
    }
}

/// Splits a datagram into its message and its seal.
pub fn unseal(datagram: &[u8]) -> Result<Sealed<'_>, Malformed> {
    if datagram.len() > MAX_DATAGRAM {
        return malformed("longer than the link's largest message");
    }
    let mut words = datagram.rsplitn(3, |&b| b == b' ');
    let (Some(tag), Some(counter), Some(body)) = (words.next(), words.next(), words.next()) else {
        return malformed("no seal (counter and MAC) at the end");
    };
    let counter = std::str::from_utf8(counter)
        .ok()
        .and_then(parse_decimal)
        .ok_or(Malformed {
            reason: "the seal's counter is not a number",
        })?;
    let tag = std::str::from_utf8(tag)
        .ok()
        .and_then(mac::parse_hex::<TAG_LEN>)
        .filter(|&(_, n)| n == TAG_LEN)
        .ok_or(Malformed {
            reason: "the seal's MAC is not 32 hex digits",
        })?
        .0;
    Ok(Sealed { body, counter, tag })
}

/// The receiving side of a session's seals: datagrams must be sealed with its key and
/// numbered above every one taken before (a replay, or one overtaken on the way, is dropped;
/// the reliable delivery sends it again with a new number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opener {
    key: Key,
    highest: u64,
}

/// Why a sealed datagram was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsealed {
    /// Not sealed with the key: forged, or from another session.
    Forged,
    /// Sealed, but not numbered above the last one taken: a replay.
    Replayed,
}

impl Opener {
    pub fn new(key: Key) -> Opener {
        Opener { key, highest: 0 }
    }

    /// Checks `sealed` without taking it.
    pub fn check(&self, sealed: &Sealed<'_>) -> Result<(), Unsealed> {
        if !sealed.verify(&self.key) {
            return Err(Unsealed::Forged);
        }
        if sealed.counter <= self.highest {
            return Err(Unsealed::Replayed);
        }
        Ok(())
    }

    /// Checks `sealed` and, if it passes, takes its number.
    pub fn open(&mut self, sealed: &Sealed<'_>) -> Result<(), Unsealed> {
        self.check(sealed)?;
        self.highest = sealed.counter;
        Ok(())
    }
}

/// The sending side of a session's seals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealer {
    key: Key,
    sent: u64,
}

impl Sealer {
    pub fn new(key: Key) -> Sealer {
        Sealer { key, sent: 0 }
    }

    /// `msg`, sealed with the next number.
    pub fn seal(&mut self, msg: &Message) -> Vec<u8> {
        self.sent += 1;
        let mut out = Vec::new();
        seal(&self.key, self.sent, msg, &mut out);
        out
    }
}

/// One link message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A node asks to join: its name, role, process instance and its half of the session
    /// key (sealed with the join key: it proves the token without carrying it).
    Join {
        name: String,
        role: Role,
        instance: u64,
        nonce: Nonce,
    },
    /// The node is in: its server id, the sequence number of the first command, and the Call
    /// Manager's half of the session key (sealed with the session key).
    Joined {
        id: u32,
        first_seq: u64,
        nonce: Nonce,
    },
    /// The node is not in, and why.
    Refused {
        reason: String,
    },
    /// A Call Manager that has no session with the node's process `instance` (it took over
    /// from another) asks it to JOIN again, keeping its sessions (sealed with the join key).
    Relink {
        instance: u64,
        /// When it was sent, on the group's clock (see [`Message`]'s RELINK).
        at: u64,
    },
    Command {
        seq: u64,
        command: NodeCommand,
    },
    Event {
        seq: u64,
        event: NodeEvent,
    },
    /// Command (or event) `seq` arrived.
    Ack {
        seq: u64,
    },
    /// The node's figures; `io_errors` counts its failed sends and receives.
    Stats {
        stats: NodeStats,
        io_errors: u64,
    },
}

/// Why a datagram is not a link message. Network input: returned, never panicked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed link message: {reason}")]
pub struct Malformed {
    pub reason: &'static str,
}

fn malformed<T>(reason: &'static str) -> Result<T, Malformed> {
    Err(Malformed { reason })
}

/// Writes `msg` into `out` (cleared first).
pub fn encode(msg: &Message, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(MAGIC);
    let mut s = String::with_capacity(96);
    // Writing to a String cannot fail.
    let _ = match msg {
        Message::Join {
            name,
            role,
            instance,
            nonce,
        } => write!(s, "JOIN {name} {} {instance:x} {nonce}", role.name()),
        Message::Joined {
            id,
            first_seq,
            nonce,
        } => write!(s, "JOINED {id} {first_seq} {nonce}"),
        Message::Refused { reason } => write!(s, "REFUSED {reason}"),
        Message::Relink { instance, at } => write!(s, "RELINK {instance:x} {at}"),
        Message::Command { seq, command } => {
            let _ = write!(s, "CMD {seq} ");
            write_command(&mut s, command)
        }
        Message::Event { seq, event } => match event {
            NodeEvent::Digit { session, digit } => {
                write!(s, "EVENT {seq} digit {} {digit}", session.0)
            }
        },
        Message::Ack { seq } => write!(s, "ACK {seq}"),
        Message::Stats { stats, io_errors } => {
            let _ = write!(s, "STATS");
            for n in stats_fields(stats) {
                let _ = write!(s, " {n}");
            }
            write!(s, " {io_errors}")
        }
    };
    out.extend_from_slice(s.as_bytes());
}

fn write_command(s: &mut String, command: &NodeCommand) -> std::fmt::Result {
    match command {
        NodeCommand::Relay { session, a, b } => {
            write!(s, "relay {} {} {}", session.0, LegText(a), LegText(b))
        }
        NodeCommand::Echo { session, leg } => write!(s, "echo {} {}", session.0, LegText(leg)),
        NodeCommand::Ivr { session, leg } => write!(s, "ivr {} {}", session.0, LegText(leg)),
        NodeCommand::Hold { session, leg } => write!(s, "hold {} {}", session.0, LegText(leg)),
        NodeCommand::Join { session, room, leg } => {
            write!(s, "join {} {room} {}", session.0, LegText(leg))
        }
        NodeCommand::End { session } => write!(s, "end {}", session.0),
        NodeCommand::Reset => write!(s, "reset"),
        NodeCommand::Mark => write!(s, "mark"),
        NodeCommand::Sweep => write!(s, "sweep"),
    }
}

struct LegText<'a>(&'a Leg);

impl std::fmt::Display for LegText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = self.0;
        write!(f, "{},", l.remote)?;
        match l.ssrc {
            Some(ssrc) => write!(f, "{ssrc:x},")?,
            None => f.write_str("-,")?,
        }
        write!(f, "{},", l.codec_pt)?;
        match l.dtmf_pt {
            Some(pt) => write!(f, "{pt}"),
            None => f.write_str("-"),
        }
    }
}

/// The STATS counters in their wire order.
fn stats_fields(s: &NodeStats) -> [u64; 11] {
    [
        s.sessions,
        s.rooms,
        s.packets_in,
        s.packets_out,
        s.unknown_packets,
        s.malformed,
        s.options_answered,
        s.digits,
        s.refused,
        s.ignored,
        s.dropped,
    ]
}

/// The STATS counters from their wire order.
fn stats_from_fields(n: [u64; 11]) -> NodeStats {
    let [
        sessions,
        rooms,
        packets_in,
        packets_out,
        unknown_packets,
        malformed,
        options_answered,
        digits,
        refused,
        ignored,
        dropped,
    ] = n;
    NodeStats {
        sessions,
        rooms,
        packets_in,
        packets_out,
        unknown_packets,
        malformed,
        options_answered,
        digits,
        refused,
        ignored,
        dropped,
    }
}

/// Reads one link datagram.
pub fn decode(datagram: &[u8]) -> Result<Message, Malformed> {
    if datagram.len() > MAX_DATAGRAM {
        return malformed("longer than the link's largest message");
    }
    let Some(rest) = datagram.strip_prefix(MAGIC) else {
        return malformed("no PBXL/1 magic");
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return malformed("not ASCII");
    };
    if !text.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return malformed("not printable ASCII");
    }
    let (verb, args) = text.split_once(' ').unwrap_or((text, ""));
    if verb == "REFUSED" {
        // Free text: the one message whose last field may hold spaces.
        if args.is_empty() || args.len() > 4 * MAX_WORD {
            return malformed("REFUSED needs a reason of at most 256 characters");
        }
        return Ok(Message::Refused {
            reason: args.to_owned(),
        });
    }
    let mut w = Words::new(args);
    let msg = match verb {
        "JOIN" => {
            let name = w.word("JOIN needs a name")?;
            let role = Role::from_name(w.word("JOIN needs a role")?);
            let Some(role) = role else {
                return malformed("JOIN names an unknown role");
            };
            let instance = w.hex("JOIN needs a hex instance")?;
            let nonce = Nonce::parse(w.word("JOIN needs a nonce")?)?;
            if !valid_word(name) {
                return malformed("JOIN name longer than 64 characters");
            }
            Message::Join {
                name: name.to_owned(),
                role,
                instance,
                nonce,
            }
        }
        "JOINED" => {
            let id = w.number("JOINED needs an id")?;
            let Ok(id) = u32::try_from(id) else {
                return malformed("JOINED id out of range");
            };
            let first_seq = w.number("JOINED needs a first sequence number")?;
            let nonce = Nonce::parse(w.word("JOINED needs a nonce")?)?;
            Message::Joined {
                id,
                first_seq,
                nonce,
            }
        }
        "RELINK" => Message::Relink {
            instance: w.hex("RELINK needs a hex instance")?,
            at: w.number("RELINK needs a stamp")?,
        },
        "CMD" => {
            let seq = w.number("CMD needs a sequence number")?;
            let command = read_command(&mut w)?;
            Message::Command { seq, command }
        }
        "EVENT" => {
            let seq = w.number("EVENT needs a sequence number")?;
            if w.word("EVENT needs a kind")? != "digit" {
                return malformed("EVENT of an unknown kind");
            }
            let session = MediaSession(w.number("digit needs a session")?);
            let digit = w.word("digit needs a digit")?;
            let mut chars = digit.chars();
            let (Some(digit), None) = (chars.next(), chars.next()) else {
                return malformed("a digit is one character");
            };
            Message::Event {
                seq,
                event: NodeEvent::Digit { session, digit },
            }
        }
        "ACK" => Message::Ack {
            seq: w.number("ACK needs a sequence number")?,
        },
        "STATS" => {
            let mut n = [0u64; 11];
            for v in &mut n {
                *v = w.number("STATS needs 12 counters")?;
            }
            Message::Stats {
                stats: stats_from_fields(n),
                io_errors: w.number("STATS needs 12 counters")?,
            }
        }
        _ => return malformed("unknown message"),
    };
    if !w.done() {
        return malformed("extra words after the message");
    }
    Ok(msg)
}

fn read_command(w: &mut Words<'_>) -> Result<NodeCommand, Malformed> {
    let kind = w.word("CMD needs a kind")?;
    match kind {
        "reset" => return Ok(NodeCommand::Reset),
        "mark" => return Ok(NodeCommand::Mark),
        "sweep" => return Ok(NodeCommand::Sweep),
        _ => {}
    }
    let session = MediaSession(w.number("CMD needs a session")?);
    Ok(match kind {
        "relay" => NodeCommand::Relay {
            session,
            a: read_leg(w.word("relay needs two legs")?)?,
            b: read_leg(w.word("relay needs two legs")?)?,
        },
        "echo" => NodeCommand::Echo {
            session,
            leg: read_leg(w.word("echo needs a leg")?)?,
        },
        "ivr" => NodeCommand::Ivr {
            session,
            leg: read_leg(w.word("ivr needs a leg")?)?,
        },
        "hold" => NodeCommand::Hold {
            session,
            leg: read_leg(w.word("hold needs a leg")?)?,
        },
        "join" => NodeCommand::Join {
            session,
            room: w.number("join needs a room")?,
            leg: read_leg(w.word("join needs a leg")?)?,
        },
        "end" => NodeCommand::End { session },
        _ => return malformed("CMD of an unknown kind"),
    })
}

fn read_leg(text: &str) -> Result<Leg, Malformed> {
    let mut parts = text.split(',');
    let (Some(remote), Some(ssrc), Some(codec), Some(dtmf), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return malformed("a leg is address,ssrc,payload type,telephone-event type");
    };
    let Ok(remote) = remote.parse::<SocketAddr>() else {
        return malformed("a leg's address is not ip:port");
    };
    let ssrc = match ssrc {
        "-" => None,
        hex => Some(
            parse_hex(hex)
                .and_then(|v| u32::try_from(v).ok())
                .ok_or(Malformed {
                    reason: "a leg's SSRC is not 32-bit hex",
                })?,
        ),
    };
    let Some(codec_pt) = parse_decimal(codec).and_then(|v| u8::try_from(v).ok()) else {
        return malformed("a leg's payload type is not 0-255");
    };
    let dtmf_pt = match dtmf {
        "-" => None,
        n => Some(
            parse_decimal(n)
                .and_then(|v| u8::try_from(v).ok())
                .ok_or(Malformed {
                    reason: "a leg's telephone-event type is not 0-255",
                })?,
        ),
    };
    Ok(Leg {
        remote,
        ssrc,
        codec_pt,
        dtmf_pt,
    })
}

/// Plain digits only: `u64::from_str` would take a leading `+`, which the encoder never writes.
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_hex(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// Space-separated words; an empty word (two spaces, a trailing space) is an error.
struct Words<'a> {
    rest: Option<&'a str>,
}

impl<'a> Words<'a> {
    fn new(args: &'a str) -> Words<'a> {
        Words {
            rest: (!args.is_empty()).then_some(args),
        }
    }

    fn word(&mut self, missing: &'static str) -> Result<&'a str, Malformed> {
        let Some(rest) = self.rest else {
            return malformed(missing);
        };
        let (word, rest) = match rest.split_once(' ') {
            Some((w, r)) => (w, Some(r)),
            None => (rest, None),
        };
        if word.is_empty() {
            return malformed("an empty word (two spaces in a row)");
        }
        self.rest = rest;
        Ok(word)
    }

    fn number(&mut self, missing: &'static str) -> Result<u64, Malformed> {
        parse_decimal(self.word(missing)?).ok_or(Malformed { reason: missing })
    }

    fn hex(&mut self, missing: &'static str) -> Result<u64, Malformed> {
        parse_hex(self.word(missing)?).ok_or(Malformed { reason: missing })
    }

    fn done(&self) -> bool {
        self.rest.is_none()
    }
}

// ---------------------------------------------------------------- reliable delivery

/// Why a link stopped delivering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Lost {
    #[error("message {seq} unacknowledged after {ATTEMPTS} sends")]
    Unanswered { seq: u64 },
    #[error("{MAX_QUEUED} messages queued without acknowledgement")]
    Full,
    #[error("no session {:.0} s after a takeover", (RETRY * ATTEMPTS as u64) as f64 / 1e9)]
    NoSession,
}

#[derive(Debug)]
struct Pending<T> {
    seq: u64,
    item: T,
    sent_at: Option<Nanos>,
    attempts: u32,
}

/// The sending half: numbers messages and sends each until it is acknowledged.
#[derive(Debug)]
pub struct Outgoing<T> {
    next_seq: u64,
    /// Unacknowledged messages, by sequence number.
    queue: VecDeque<Pending<T>>,
}

impl<T> Outgoing<T> {
    /// Numbers the first message `first_seq`.
    pub fn new(first_seq: u64) -> Outgoing<T> {
        Outgoing {
            next_seq: first_seq,
            queue: VecDeque::new(),
        }
    }

    /// The number the next pushed message gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Messages not yet acknowledged.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues a message; it is sent by the next [`Outgoing::poll_transmit`].
    pub fn push(&mut self, item: T) -> Result<u64, Lost> {
        if self.queue.len() >= MAX_QUEUED {
            return Err(Lost::Full);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push_back(Pending {
            seq,
            item,
            sent_at: None,
            attempts: 0,
        });
        Ok(seq)
    }

    /// Message `seq` arrived: it is not sent again. False if it was not waiting (an ACK
    /// repeated, or from before a restart).
    pub fn ack(&mut self, seq: u64) -> bool {
        match self.queue.binary_search_by_key(&seq, |p| p.seq) {
            Ok(i) => self.queue.remove(i).is_some(),
            Err(_) => false,
        }
    }

    /// Drops every queued message; numbering continues where it was.
    pub fn clear(&mut self) {
        self.queue.clear();
    }

    /// Numbers what is still queued afresh from `first_seq`, as if none of it had been sent:
    /// the link starts a new session, whose receiver expects `first_seq` first.
    pub fn restart(&mut self, first_seq: u64) {
        self.next_seq = first_seq;
        for p in &mut self.queue {
            p.seq = self.next_seq;
            p.sent_at = None;
            p.attempts = 0;
            self.next_seq += 1;
        }
    }

    /// The messages that may be in flight: the oldest unacknowledged one and those less than
    /// [`WINDOW`] after it, which the receiver has room to hold.
    fn window(&mut self) -> impl Iterator<Item = &mut Pending<T>> {
        let end = self
            .queue
            .front()
            .map_or(0, |p| p.seq.saturating_add(WINDOW as u64));
        self.queue.iter_mut().take_while(move |p| p.seq < end)
    }

    /// Hands `send` every message of the window that is due at `now`, oldest first: never
    /// sent, or sent [`RETRY`] ago. Fails, sending nothing, once a due message has been sent
    /// [`ATTEMPTS`] times.
    pub fn poll_transmit(&mut self, now: Nanos, mut send: impl FnMut(u64, &T)) -> Result<(), Lost> {
        let due = move |p: &Pending<T>| p.sent_at.is_none_or(|at| now >= at.saturating_add(RETRY));
        if let Some(p) = self.window().find(|p| due(p) && p.attempts >= ATTEMPTS) {
            return Err(Lost::Unanswered { seq: p.seq });
        }
        for p in self.window() {
            if due(p) {
                send(p.seq, &p.item);
                p.sent_at = Some(now);
                p.attempts += 1;
            }
        }
        Ok(())
    }

    /// When [`Outgoing::poll_transmit`] next has something to send.
    pub fn next_deadline(&mut self) -> Option<Nanos> {
        self.window()
            .map(|p| p.sent_at.map_or(0, |at| at.saturating_add(RETRY)))
            .min()
    }
}

/// What a received message means to the receiving half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// New: acknowledge it; it is handed out by [`Incoming::pop`] once those before it are.
    Accepted,
    /// Seen before (its ACK was lost, or it is from before a restart): acknowledge it again.
    Duplicate,
    /// Beyond the window: dropped unacknowledged (a sender that keeps to [`WINDOW`] never
    /// sends one).
    TooFar,
}

/// The receiving half: hands out messages in order, once each, holding those that arrive
/// ahead of a gap (at most [`WINDOW`]).
#[derive(Debug)]
pub struct Incoming<T> {
    next: u64,
    early: BTreeMap<u64, T>,
}

impl<T> Incoming<T> {
    /// Expects `first_seq` first.
    pub fn new(first_seq: u64) -> Incoming<T> {
        Incoming {
            next: first_seq,
            early: BTreeMap::new(),
        }
    }

    pub fn receive(&mut self, seq: u64, item: T) -> Delivery {
        if seq < self.next || self.early.contains_key(&seq) {
            return Delivery::Duplicate;
        }
        if seq - self.next >= WINDOW as u64 {
            return Delivery::TooFar;
        }
        self.early.insert(seq, item);
        Delivery::Accepted
    }

    /// The next message in order, if it has arrived.
    /// The sequence number it hands out next: everything below has been handed out.
    pub fn next(&self) -> u64 {
        self.next
    }

    pub fn pop(&mut self) -> Option<T> {
        let item = self.early.remove(&self.next)?;
        self.next += 1;
        Some(item)
    }

    /// Messages held until a gap before them fills.
    pub fn held(&self) -> usize {
        self.early.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leg(port: u16) -> Leg {
        Leg {
            remote: SocketAddr::from(([10, 211, 0, 9], port)),
            ssrc: Some(0xdead_beef),
            codec_pt: 8,
            dtmf_pt: None,
        }
    }

    fn roundtrip(msg: &Message) -> Vec<u8> {
        let mut buf = Vec::new();
        encode(msg, &mut buf);
        assert!(is_link(&buf));
        assert_eq!(
            decode(&buf).as_ref(),
            Ok(msg),
            "{}",
            String::from_utf8_lossy(&buf)
        );
        buf
    }

    fn text(msg: &Message) -> String {
        String::from_utf8(roundtrip(msg)).unwrap()
    }

    #[test]
    fn the_wire_format_is_readable() {
        let join = Message::Join {
            name: "media-a".into(),
            role: Role::Media,
            instance: 0xbeef,
            nonce: Nonce([0xab; NONCE_LEN]),
        };
        assert_eq!(
            text(&join),
            format!("PBXL/1 JOIN media-a media beef {}", "ab".repeat(NONCE_LEN))
        );
        let relay = Message::Command {
            seq: 7,
            command: NodeCommand::Relay {
                session: MediaSession(42),
                a: leg(4000),
                b: Leg {
                    ssrc: None,
                    dtmf_pt: Some(101),
                    ..leg(4002)
                },
            },
        };
        assert_eq!(
            text(&relay),
            "PBXL/1 CMD 7 relay 42 10.211.0.9:4000,deadbeef,8,- 10.211.0.9:4002,-,8,101"
        );
        let digit = Message::Event {
            seq: 3,
            event: NodeEvent::Digit {
                session: MediaSession(5),
                digit: '#',
            },
        };
        assert_eq!(text(&digit), "PBXL/1 EVENT 3 digit 5 #");
        let refused = Message::Refused {
            reason: "wrong token".into(),
        };
        assert_eq!(text(&refused), "PBXL/1 REFUSED wrong token");
        assert_eq!(
            text(&Message::Relink {
                instance: 0xbeef,
                at: 7
            }),
            "PBXL/1 RELINK beef 7"
        );
        assert_eq!(
            text(&Message::Command {
                seq: 1,
                command: NodeCommand::Reset
            }),
            "PBXL/1 CMD 1 reset"
        );
    }

    #[test]
    fn neither_sip_nor_rtp_looks_like_the_link() {
        assert!(!is_link(b"OPTIONS sip:a@b SIP/2.0\r\n\r\n"));
        assert!(!is_link(b"SIP/2.0 200 OK\r\n\r\n"));
        assert!(!is_link(&[0x80, 0, 0, 1]));
        assert!(!is_link(b"PBXL/1"));
        assert!(is_link(b"PBXL/1 ACK 1"));
    }

    #[test]
    fn malformed_input_is_an_error() {
        let cases: &[&[u8]] = &[
            b"",
            b"PBXL/1 ",
            b"PBXL/2 ACK 1",
            b"PBXL/1 ACK",
            b"PBXL/1 ACK ",
            b"PBXL/1 ACK 1 ",
            b"PBXL/1 ACK  1",
            b"PBXL/1 ACK +1",
            b"PBXL/1 ACK -1",
            b"PBXL/1 ACK 18446744073709551616",
            b"PBXL/1 ACK 1 2",
            b"PBXL/1 NOPE 1",
            b"PBXL/1 JOIN a media",
            b"PBXL/1 JOIN a wizard 1 t",
            b"PBXL/1 JOIN a media xyz t",
            b"PBXL/1 JOINED 4294967296 1",
            b"PBXL/1 REFUSED",
            b"PBXL/1 CMD 1",
            b"PBXL/1 CMD 1 fly 2",
            b"PBXL/1 CMD 1 end",
            b"PBXL/1 CMD 1 reset now",
            b"PBXL/1 CMD 1 echo 2 10.0.0.1:5,1,0",
            b"PBXL/1 CMD 1 echo 2 10.0.0.1:5,1,0,1,9",
            b"PBXL/1 CMD 1 echo 2 10.0.0.1,1,0,1",
            b"PBXL/1 CMD 1 echo 2 10.0.0.1:5,100000000,0,1",
            b"PBXL/1 CMD 1 echo 2 10.0.0.1:5,1,256,1",
            b"PBXL/1 CMD 1 echo 2 10.0.0.1:5,1,0,x",
            b"PBXL/1 CMD 1 relay 2 10.0.0.1:5,1,0,1",
            b"PBXL/1 EVENT 1 digit 2",
            b"PBXL/1 EVENT 1 digit 2 12",
            b"PBXL/1 EVENT 1 hangup 2 1",
            b"PBXL/1 STATS 1 2 3",
            b"PBXL/1 ACK 1\r\n",
            b"PBXL/1 ACK \xff",
        ];
        for &case in cases {
            assert!(
                decode(case).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(case)
            );
        }
        let long = [MAGIC, &[b'A'; MAX_DATAGRAM][..]].concat();
        assert_eq!(
            decode(&long).unwrap_err().reason,
            "longer than the link's largest message"
        );
        let name = "n".repeat(MAX_WORD + 1);
        assert!(decode(format!("PBXL/1 JOIN {name} media 1 t").as_bytes()).is_err());
    }

    #[test]
    fn a_seal_is_checked_and_numbered() {
        let keys = SessionKeys::new(&join_key("tok"), &Nonce([1; 16]), &Nonce([2; 16]));
        let mut tx = Sealer::new(keys.to_cm.clone());
        let mut rx = Opener::new(keys.to_cm.clone());
        let stats = Message::Ack { seq: 9 };
        let first = tx.seal(&stats);
        let second = tx.seal(&stats);
        let text = String::from_utf8(first.clone()).unwrap();
        assert!(text.starts_with("PBXL/1 ACK 9 1 "), "{text}");
        let s1 = unseal(&first).unwrap();
        assert_eq!(decode(s1.body).as_ref(), Ok(&stats));
        assert_eq!(rx.open(&s1), Ok(()));
        // The same datagram again is a replay; the next one is taken.
        assert_eq!(rx.open(&s1), Err(Unsealed::Replayed));
        assert_eq!(rx.open(&unseal(&second).unwrap()), Ok(()));
        // Another key, another direction, a changed byte, or a new number with the old MAC:
        // forged.
        let mut other = Sealer::new(keys.to_node.clone());
        let wrong_way = other.seal(&Message::Ack { seq: 9 });
        assert_eq!(
            rx.check(&unseal(&wrong_way).unwrap()),
            Err(Unsealed::Forged)
        );
        let elsewhere = SessionKeys::new(&join_key("tok"), &Nonce([1; 16]), &Nonce([3; 16]));
        let mut stranger = Sealer::new(elsewhere.to_cm);
        stranger.seal(&stats);
        stranger.seal(&stats);
        let third = stranger.seal(&stats);
        assert_eq!(rx.check(&unseal(&third).unwrap()), Err(Unsealed::Forged));
        let bumped = String::from_utf8(second.clone())
            .unwrap()
            .replacen("ACK 9 2 ", "ACK 9 7 ", 1);
        assert_eq!(
            rx.check(&unseal(bumped.as_bytes()).unwrap()),
            Err(Unsealed::Forged)
        );
        let mut flipped = second.clone();
        flipped[11] = b'8';
        assert_eq!(rx.check(&unseal(&flipped).unwrap()), Err(Unsealed::Forged));
        // Without a seal, or with a short MAC: malformed.
        assert!(unseal(b"PBXL/1 ACK 9").is_err());
        assert!(unseal(b"PBXL/1 ACK 9 3 abcd").is_err());
    }

    #[test]
    fn outgoing_resends_until_acknowledged_then_gives_up() {
        let mut out = Outgoing::new(10);
        assert_eq!(out.push("a"), Ok(10));
        assert_eq!(out.push("b"), Ok(11));
        let mut sent = Vec::new();
        out.poll_transmit(0, |seq, m| sent.push((seq, *m))).unwrap();
        assert_eq!(sent, [(10, "a"), (11, "b")]);
        // Nothing is due before RETRY.
        sent.clear();
        out.poll_transmit(RETRY - 1, |seq, m| sent.push((seq, *m)))
            .unwrap();
        assert!(sent.is_empty());
        assert_eq!(out.next_deadline(), Some(RETRY));
        assert!(out.ack(10));
        assert!(!out.ack(10), "an ACK repeated");
        out.poll_transmit(RETRY, |seq, m| sent.push((seq, *m)))
            .unwrap();
        assert_eq!(sent, [(11, "b")]);
        let mut now = RETRY;
        let mut sends = 2;
        let lost = loop {
            now += RETRY;
            match out.poll_transmit(now, |_, _| sends += 1) {
                Ok(()) => {}
                Err(e) => break e,
            }
        };
        assert_eq!(lost, Lost::Unanswered { seq: 11 });
        assert_eq!(sends, ATTEMPTS);
        assert!(out.ack(11));
        assert!(out.is_empty() && out.next_deadline().is_none());
        assert_eq!(out.next_seq(), 12);
    }

    #[test]
    fn a_restart_numbers_what_is_queued_afresh_and_sends_it_again() {
        let mut out = Outgoing::new(5);
        for m in ["a", "b", "c"] {
            out.push(m).unwrap();
        }
        let mut sent = Vec::new();
        out.poll_transmit(0, |seq, m| sent.push((seq, *m))).unwrap();
        assert!(out.ack(5));
        out.restart(1);
        sent.clear();
        // At once, not a RETRY later: the new session has seen none of it.
        out.poll_transmit(1, |seq, m| sent.push((seq, *m))).unwrap();
        assert_eq!(sent, [(1, "b"), (2, "c")]);
        assert_eq!(out.push("d"), Ok(3));
        assert!(!out.ack(6), "a number of the old session");
        assert!(out.ack(1) && out.ack(2) && out.ack(3));
    }

    #[test]
    fn outgoing_keeps_to_the_window_and_is_bounded() {
        let mut out = Outgoing::new(1);
        for i in 0..MAX_QUEUED {
            out.push(i).unwrap();
        }
        assert_eq!(out.push(0), Err(Lost::Full));
        let mut n = 0;
        out.poll_transmit(0, |_, _| n += 1).unwrap();
        assert_eq!(n, WINDOW);
        // Everything but the first acknowledged: the window still ends WINDOW after it.
        for seq in 2..=WINDOW as u64 {
            out.ack(seq);
        }
        let mut more = Vec::new();
        out.poll_transmit(1, |seq, _| more.push(seq)).unwrap();
        assert!(more.is_empty(), "{more:?}");
        out.ack(1);
        out.poll_transmit(2, |seq, _| more.push(seq)).unwrap();
        assert_eq!(more.len(), WINDOW);
        assert_eq!(more.first(), Some(&(WINDOW as u64 + 1)));
    }

    #[test]
    fn incoming_hands_out_in_order_once() {
        let mut inc = Incoming::new(5);
        assert_eq!(inc.receive(6, 'b'), Delivery::Accepted);
        assert_eq!(inc.pop(), None, "6 waits for 5");
        assert_eq!(inc.receive(6, 'b'), Delivery::Duplicate);
        assert_eq!(inc.receive(5 + WINDOW as u64, 'z'), Delivery::TooFar);
        assert_eq!(inc.receive(5, 'a'), Delivery::Accepted);
        assert_eq!(
            (inc.pop(), inc.pop(), inc.pop()),
            (Some('a'), Some('b'), None)
        );
        assert_eq!(inc.receive(5, 'a'), Delivery::Duplicate);
        assert_eq!(inc.receive(3, 'x'), Delivery::Duplicate);
        assert_eq!(inc.held(), 0);
    }

    /// Sends `n` messages over a path that loses a third of the datagrams each way, and
    /// reverses each batch if `reverse`; returns what was delivered, in delivery order.
    fn over_lossy_path(n: u64, reverse: bool) -> Vec<u64> {
        let mut out = Outgoing::new(1);
        let mut inc = Incoming::new(1);
        for i in 0..n {
            out.push(i).unwrap();
        }
        let mut got = Vec::new();
        let mut rng = 12345u64;
        let mut coin = move || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 33).is_multiple_of(3)
        };
        let mut now = 0;
        while !out.is_empty() {
            let mut wire = Vec::new();
            out.poll_transmit(now, |seq, &m| wire.push((seq, m)))
                .unwrap();
            wire.retain(|_| !coin());
            if reverse {
                wire.reverse();
            }
            for (seq, m) in wire {
                if inc.receive(seq, m) != Delivery::TooFar && !coin() {
                    out.ack(seq);
                }
                while let Some(m) = inc.pop() {
                    got.push(m);
                }
            }
            now += RETRY;
        }
        got
    }

    #[test]
    fn a_lossy_path_delivers_in_order_once() {
        assert_eq!(over_lossy_path(5000, false), (0..5000).collect::<Vec<_>>());
        assert_eq!(over_lossy_path(5000, true), (0..5000).collect::<Vec<_>>());
    }

    fn arb_leg() -> impl Strategy<Value = Leg> {
        (
            any::<[u8; 4]>(),
            any::<[u16; 8]>(),
            any::<bool>(),
            any::<u16>(),
            any::<Option<u32>>(),
            any::<u8>(),
            any::<Option<u8>>(),
        )
            .prop_map(|(v4, v6, ipv6, port, ssrc, codec_pt, dtmf_pt)| Leg {
                remote: if ipv6 {
                    SocketAddr::from((v6, port))
                } else {
                    SocketAddr::from((v4, port))
                },
                ssrc,
                codec_pt,
                dtmf_pt,
            })
    }

    fn arb_command() -> impl Strategy<Value = NodeCommand> {
        let s = any::<u64>().prop_map(MediaSession);
        prop_oneof![
            (s.clone(), arb_leg(), arb_leg()).prop_map(|(session, a, b)| NodeCommand::Relay {
                session,
                a,
                b
            }),
            (s.clone(), arb_leg()).prop_map(|(session, leg)| NodeCommand::Echo { session, leg }),
            (s.clone(), arb_leg()).prop_map(|(session, leg)| NodeCommand::Ivr { session, leg }),
            (s.clone(), arb_leg()).prop_map(|(session, leg)| NodeCommand::Hold { session, leg }),
            (s.clone(), any::<u64>(), arb_leg())
                .prop_map(|(session, room, leg)| NodeCommand::Join { session, room, leg }),
            s.prop_map(|session| NodeCommand::End { session }),
            Just(NodeCommand::Reset),
            Just(NodeCommand::Mark),
            Just(NodeCommand::Sweep),
        ]
    }

    fn arb_role() -> impl Strategy<Value = Role> {
        prop_oneof![
            Just(Role::Media),
            Just(Role::Meeting),
            Just(Role::Ivr),
            Just(Role::Queue),
            Just(Role::Im),
        ]
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let word = "[!-~]{1,64}";
        prop_oneof![
            (word, arb_role(), any::<u64>(), any::<[u8; NONCE_LEN]>()).prop_map(
                |(name, role, instance, nonce)| Message::Join {
                    name,
                    role,
                    instance,
                    nonce: Nonce(nonce),
                }
            ),
            (any::<u32>(), any::<u64>(), any::<[u8; NONCE_LEN]>()).prop_map(
                |(id, first_seq, nonce)| Message::Joined {
                    id,
                    first_seq,
                    nonce: Nonce(nonce)
                }
            ),
            "[!-~][ -~]{0,200}".prop_map(|reason| Message::Refused { reason }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(instance, at)| Message::Relink { instance, at }),
            (any::<u64>(), arb_command())
                .prop_map(|(seq, command)| Message::Command { seq, command }),
            (any::<u64>(), any::<u64>(), "[0-9*#A-D]").prop_map(|(seq, s, d)| {
                Message::Event {
                    seq,
                    event: NodeEvent::Digit {
                        session: MediaSession(s),
                        digit: d.chars().next().unwrap(),
                    },
                }
            }),
            any::<u64>().prop_map(|seq| Message::Ack { seq }),
            (any::<[u64; 11]>(), any::<u64>()).prop_map(|(n, io_errors)| Message::Stats {
                stats: stats_from_fields(n),
                io_errors,
            }),
        ]
    }

    proptest! {
        #[test]
        fn every_message_roundtrips(msg in arb_message()) {
            let mut buf = Vec::new();
            encode(&msg, &mut buf);
            prop_assert!(buf.len() <= MAX_DATAGRAM);
            prop_assert_eq!(decode(&buf), Ok(msg));
        }

        #[test]
        fn every_message_sealed_opens_and_fits(msg in arb_message(), counter in any::<u64>()) {
            let key = join_key("tok");
            let mut buf = Vec::new();
            seal(&key, counter, &msg, &mut buf);
            prop_assert!(buf.len() <= MAX_DATAGRAM);
            let sealed = unseal(&buf).unwrap();
            prop_assert_eq!(sealed.counter, counter);
            prop_assert!(sealed.verify(&key));
            prop_assert!(!sealed.verify(&join_key("tok2")));
            prop_assert_eq!(decode(sealed.body), Ok(msg));
        }

        #[test]
        fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&tail);
            let _ = decode(&[MAGIC, &tail[..]].concat());
            let _ = unseal(&tail).map(|s| s.verify(&join_key("tok")));
        }

        #[test]
        fn mangled_messages_never_panic(msg in arb_message(), at in any::<usize>(), byte in any::<u8>()) {
            let mut buf = Vec::new();
            encode(&msg, &mut buf);
            let i = at % buf.len();
            buf[i] = byte;
            let _ = decode(&buf);
            buf.truncate(i);
            let _ = decode(&buf);
        }
    }
}
