//! The Call Managers' replication and election messages, and the inputs they carry.
//!
//! One message per datagram, between the Call Managers' own addresses (never the virtual
//! IP's), binary, sealed:
//!
//! ```text
//! "PBXH/2 " | from: u8 | counter: u64 | kind: u8 | body | MAC: 16 bytes
//! ```
//!
//! The MAC is the first 16 bytes of HMAC-SHA-256 over everything before it, with the
//! cluster's replication key; a receiver takes a sender's counter once, through a 64-wide
//! window (a replay is dropped; one overtaken on the way is not), and drops what claims to
//! come from itself. The destination is not sealed: a datagram one replica sent another can be
//! delivered to the third, which takes it as it would from its sender (every message means
//! the same to each replica). Numbers are big-endian. Bodies:
//!
//! ```text
//! 1 heartbeat  term, sent_at, commit                        active -> standby
//! 2 append     term, commit, first_seq, prev_term (of the entry before first_seq, 0 for none),
//!              count: u32, then per entry term, len: u32, input
//! 3 ack        term, echo (0, or the sent_at of the heartbeat answered plus 1), applied,
//!              applied_term
//! 4 vote?      term, applied, applied_term, pre: u8         candidate -> everyone
//! 5 vote       term, granted: u8, pre: u8
//! 6 sync?      term                                          a replica with no usable state
//! 7 resign     term                                          an active about to stop
//! 8 chunk      term, applied, total, offset, len: u32, bytes
//!                                                            active -> a replica that syncs
//! 9 chunk ack  term, applied, got, installed: u8             its answer
//! ```
//!
//! A snapshot (the active's Call Manager, without its keys, and its place in the log) travels
//! as chunks of at most [`MAX_CHUNK`] bytes, numbered by their offset in it; `applied` names
//! the snapshot, `total` is its length, and `got` how much of it the taker holds in order.
//!
//! An input (what the active Call Manager was given, and every standby replays):
//!
//! ```text
//! 1 datagram   now, from (4: 4-byte IPv4 | 6: 16-byte IPv6, port u16), len: u32, bytes
//! 2 advance    now
//! 3 digit      now, server: u32, session: u64, digit: u32
//! 4 admin      now, server: u32, verb: u8 (its index in Verb::ALL)
//! 5 add node   now, role: u8 (its index in Role::ALL), place: u8 (0 in-process, 1 remote),
//!              capacity: u32, address (as a datagram's), name: len u16, UTF-8
//! 6 whitelist  now, add: u8, address family and bytes (as a datagram's, without the port)
//! ```
//!
//! Decoding is strict: a short body, an unknown kind, trailing bytes or a bad MAC is an error,
//! never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use pbxlab_balancer::{Role, ServerId};
use pbxlab_proto::mac::Key;
use pbxlab_scenario::Verb;

use crate::cm::NewNode;
use crate::node::Place;
use crate::{MediaSession, Nanos, NodeEvent};

pub const MAGIC: &[u8] = b"PBXH/2 ";
const MAC_LEN: usize = 16;
/// The most an append carries: one UDP datagram's worth, less room for the headers.
pub const MAX_APPEND: usize = 60_000;
/// The most of a snapshot one chunk carries.
pub const MAX_CHUNK: usize = 60_000;

/// What the active Call Manager was handed, in the order it was handed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Datagram {
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    Advance,
    Digit {
        server: ServerId,
        event: NodeEvent,
    },
    Admin {
        server: ServerId,
        verb: Verb,
    },
    /// A server added while the cluster runs (`ctl add`, a node joining over the link).
    AddNode(NewNode),
    /// A remote node's link made again by process `instance` (see
    /// [`crate::cm::CallManager::relink`]).
    Relink {
        server: ServerId,
        instance: u64,
    },
    /// A source added to (`add`) or removed from the rate limit's whitelist.
    Whitelist {
        ip: IpAddr,
        add: bool,
    },
}

/// One message between Call Managers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Heartbeat {
        term: u64,
        sent_at: Nanos,
        commit: u64,
    },
    Append {
        term: u64,
        commit: u64,
        first_seq: u64,
        /// The term of the entry before `first_seq`: a standby whose entry there has another
        /// term went another way, and syncs (Raft's log matching).
        prev_term: u64,
        /// Each entry's term and its encoded input (see [`encode_input`]).
        entries: Vec<(u64, Vec<u8>)>,
    },
    Ack {
        term: u64,
        /// The send time of the heartbeat this answers; `None` for an append's.
        echo: Option<Nanos>,
        applied: u64,
        applied_term: u64,
    },
    /// `pre`: would you vote for me in `term`? (Raft's pre-vote: nothing changes on either
    /// side, so a replica cut off from the others cannot push the terms up while it is alone.)
    VoteRequest {
        term: u64,
        applied: u64,
        applied_term: u64,
        pre: bool,
    },
    Vote {
        term: u64,
        granted: bool,
        pre: bool,
    },
    SyncRequest {
        term: u64,
    },
    /// The active of `term` has stopped serving and is about to stop (an upgrade): the
    /// standbys need not wait out its silence.
    Resign {
        term: u64,
    },
    /// `data` is the snapshot at `applied` from byte `offset` on, of `total` bytes.
    Chunk {
        term: u64,
        applied: u64,
        total: u64,
        offset: u64,
        data: Vec<u8>,
    },
    /// The taker holds the first `got` bytes of the snapshot at `applied`; `installed`: it
    /// took the whole snapshot and follows the log from there.
    ChunkAck {
        term: u64,
        applied: u64,
        got: u64,
        installed: bool,
    },
}

/// Why a datagram is not a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("not a replication datagram")]
    Magic,
    #[error("truncated")]
    Short,
    #[error("bad MAC")]
    Mac,
    #[error("unknown kind {0}")]
    Kind(u8),
    #[error("bytes after the message")]
    Trailing,
    #[error("bad input: {0}")]
    Input(&'static str),
}

/// A sealed datagram's sender, counter and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub from: u8,
    pub counter: u64,
    pub msg: Msg,
}

fn u64s(out: &mut Vec<u8>, values: &[u64]) {
    for v in values {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// Writes `msg` from replica `from`, numbered `counter`, sealed with `key`.
pub fn encode(key: &Key, from: u8, counter: u64, msg: &Msg, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(MAGIC);
    out.push(from);
    out.extend_from_slice(&counter.to_be_bytes());
    match msg {
        Msg::Heartbeat {
            term,
            sent_at,
            commit,
        } => {
            out.push(1);
            u64s(out, &[*term, *sent_at, *commit]);
        }
        Msg::Append {
            term,
            commit,
            first_seq,
            prev_term,
            entries,
        } => {
            out.push(2);
            u64s(out, &[*term, *commit, *first_seq, *prev_term]);
            out.extend_from_slice(&u32::try_from(entries.len()).unwrap_or(0).to_be_bytes());
            for (t, e) in entries {
                u64s(out, &[*t]);
                out.extend_from_slice(&u32::try_from(e.len()).unwrap_or(0).to_be_bytes());
                out.extend_from_slice(e);
            }
        }
        Msg::Ack {
            term,
            echo,
            applied,
            applied_term,
        } => {
            out.push(3);
            let echo = echo.map_or(0, |e| e.saturating_add(1));
            u64s(out, &[*term, echo, *applied, *applied_term]);
        }
        Msg::VoteRequest {
            term,
            applied,
            applied_term,
            pre,
        } => {
            out.push(4);
            u64s(out, &[*term, *applied, *applied_term]);
            out.push(u8::from(*pre));
        }
        Msg::Vote { term, granted, pre } => {
            out.push(5);
            u64s(out, &[*term]);
            out.push(u8::from(*granted));
            out.push(u8::from(*pre));
        }
        Msg::SyncRequest { term } => {
            out.push(6);
            u64s(out, &[*term]);
        }
        Msg::Resign { term } => {
            out.push(7);
            u64s(out, &[*term]);
        }
        Msg::Chunk {
            term,
            applied,
            total,
            offset,
            data,
        } => {
            out.push(8);
            u64s(out, &[*term, *applied, *total, *offset]);
            out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(0).to_be_bytes());
            out.extend_from_slice(data);
        }
        Msg::ChunkAck {
            term,
            applied,
            got,
            installed,
        } => {
            out.push(9);
            u64s(out, &[*term, *applied, *got]);
            out.push(u8::from(*installed));
        }
    }
    let mac = key.mac(&[out.as_slice()]);
    out.extend_from_slice(mac.get(..MAC_LEN).unwrap_or_default());
}

/// Reads bytes in order; every read is checked.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.bytes.len() < n {
            return Err(Malformed::Short);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?.first().copied().unwrap_or(0))
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes(
            b.try_into().map_err(|_| Malformed::Short)?,
        ))
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes(
            b.try_into().map_err(|_| Malformed::Short)?,
        ))
    }

    fn u64(&mut self) -> Result<u64, Malformed> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes(
            b.try_into().map_err(|_| Malformed::Short)?,
        ))
    }

    fn flag(&mut self) -> Result<bool, Malformed> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Malformed::Input("a flag neither 0 nor 1")),
        }
    }

    /// An address family (4 or 6) and that many bytes.
    fn ip(&mut self) -> Result<IpAddr, Malformed> {
        Ok(match self.u8()? {
            4 => {
                let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| Malformed::Short)?;
                IpAddr::V4(Ipv4Addr::from(b))
            }
            6 => {
                let b: [u8; 16] = self.take(16)?.try_into().map_err(|_| Malformed::Short)?;
                IpAddr::V6(Ipv6Addr::from(b))
            }
            _ => return Err(Malformed::Input("address family")),
        })
    }

    fn end(&self) -> Result<(), Malformed> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(Malformed::Trailing)
        }
    }
}

/// Checks the seal with `key` and reads the message.
pub fn decode(key: &Key, datagram: &[u8]) -> Result<Sealed, Malformed> {
    let body = datagram.strip_prefix(MAGIC).ok_or(Malformed::Magic)?;
    if body.len() < 1 + 8 + 1 + MAC_LEN {
        return Err(Malformed::Short);
    }
    let (signed, mac) = datagram.split_at(datagram.len() - MAC_LEN);
    if !key.verify(&[signed], mac) {
        return Err(Malformed::Mac);
    }
    let mut r = Reader {
        bytes: signed.get(MAGIC.len()..).unwrap_or_default(),
    };
    let from = r.u8()?;
    let counter = r.u64()?;
    let kind = r.u8()?;
    let msg = match kind {
        1 => Msg::Heartbeat {
            term: r.u64()?,
            sent_at: r.u64()?,
            commit: r.u64()?,
        },
        2 => {
            let (term, commit, first_seq, prev_term) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
            let count = r.u32()? as usize;
            // Each entry takes at least 12 bytes: a count beyond that is a lie, not a reason
            // to reserve memory.
            if count > r.bytes.len() / 12 {
                return Err(Malformed::Short);
            }
            let mut entries = Vec::with_capacity(count);
            for _ in 0..count {
                let t = r.u64()?;
                let len = r.u32()? as usize;
                entries.push((t, r.take(len)?.to_vec()));
            }
            Msg::Append {
                term,
                commit,
                first_seq,
                prev_term,
                entries,
            }
        }
        3 => Msg::Ack {
            term: r.u64()?,
            echo: r.u64()?.checked_sub(1),
            applied: r.u64()?,
            applied_term: r.u64()?,
        },
        4 => Msg::VoteRequest {
            term: r.u64()?,
            applied: r.u64()?,
            applied_term: r.u64()?,
            pre: r.flag()?,
        },
        5 => Msg::Vote {
            term: r.u64()?,
            granted: r.flag()?,
            pre: r.flag()?,
        },
        6 => Msg::SyncRequest { term: r.u64()? },
        7 => Msg::Resign { term: r.u64()? },
        8 => {
            let (term, applied, total, offset) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
            let len = r.u32()? as usize;
            if len > MAX_CHUNK {
                return Err(Malformed::Input("a chunk longer than a chunk may be"));
            }
            Msg::Chunk {
                term,
                applied,
                total,
                offset,
                data: r.take(len)?.to_vec(),
            }
        }
        9 => Msg::ChunkAck {
            term: r.u64()?,
            applied: r.u64()?,
            got: r.u64()?,
            installed: r.flag()?,
        },
        k => return Err(Malformed::Kind(k)),
    };
    r.end()?;
    Ok(Sealed { from, counter, msg })
}

/// Writes one input handed to the Call Manager at `now`.
pub fn encode_input(now: Nanos, input: &Input, out: &mut Vec<u8>) {
    out.clear();
    match input {
        Input::Datagram { from, bytes } => {
            out.push(1);
            u64s(out, &[now]);
            address(out, from.ip());
            out.extend_from_slice(&from.port().to_be_bytes());
            out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(0).to_be_bytes());
            out.extend_from_slice(bytes);
        }
        Input::Advance => {
            out.push(2);
            u64s(out, &[now]);
        }
        Input::Digit { server, event } => {
            let NodeEvent::Digit { session, digit } = event;
            out.push(3);
            u64s(out, &[now]);
            out.extend_from_slice(&server.0.to_be_bytes());
            u64s(out, &[session.0]);
            out.extend_from_slice(&u32::from(*digit).to_be_bytes());
        }
        Input::Admin { server, verb } => {
            out.push(4);
            u64s(out, &[now]);
            out.extend_from_slice(&server.0.to_be_bytes());
            let index = Verb::ALL.iter().position(|v| v == verb).unwrap_or(0);
            out.push(u8::try_from(index).unwrap_or(0));
        }
        Input::AddNode(NewNode {
            name,
            role,
            addr,
            capacity,
            place,
            instance,
        }) => {
            out.push(5);
            u64s(out, &[now]);
            out.push(u8::try_from(role.index()).unwrap_or(0));
            out.push(u8::from(*place == Place::Remote));
            out.extend_from_slice(&capacity.to_be_bytes());
            u64s(out, &[*instance]);
            address(out, addr.ip());
            out.extend_from_slice(&addr.port().to_be_bytes());
            // Names are checked short long before (`ctl add`); a longer one is cut here
            // rather than misread.
            let name = name.as_bytes().get(..name.len().min(usize::from(u16::MAX)));
            let name = name.unwrap_or_default();
            out.extend_from_slice(&u16::try_from(name.len()).unwrap_or(0).to_be_bytes());
            out.extend_from_slice(name);
        }
        Input::Whitelist { ip, add } => {
            out.push(6);
            u64s(out, &[now]);
            out.push(u8::from(*add));
            address(out, *ip);
        }
        Input::Relink { server, instance } => {
            out.push(7);
            u64s(out, &[now]);
            out.extend_from_slice(&server.0.to_be_bytes());
            u64s(out, &[*instance]);
        }
    }
}

fn address(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
}

/// Reads an input written by [`encode_input`]: when it was handed over, and what.
pub fn decode_input(bytes: &[u8]) -> Result<(Nanos, Input), Malformed> {
    let mut r = Reader { bytes };
    let kind = r.u8()?;
    let now = r.u64()?;
    let input = match kind {
        1 => {
            let ip = r.ip()?;
            let port = r.u16()?;
            let len = r.u32()? as usize;
            Input::Datagram {
                from: SocketAddr::new(ip, port),
                bytes: r.take(len)?.to_vec(),
            }
        }
        2 => Input::Advance,
        3 => {
            let server = ServerId(r.u32()?);
            let session = MediaSession(r.u64()?);
            let digit = char::from_u32(r.u32()?).ok_or(Malformed::Input("digit"))?;
            Input::Digit {
                server,
                event: NodeEvent::Digit { session, digit },
            }
        }
        4 => {
            let server = ServerId(r.u32()?);
            let verb = *Verb::ALL
                .get(usize::from(r.u8()?))
                .ok_or(Malformed::Input("verb"))?;
            Input::Admin { server, verb }
        }
        5 => {
            let role = *Role::ALL
                .get(usize::from(r.u8()?))
                .ok_or(Malformed::Input("role"))?;
            let place = if r.flag()? {
                Place::Remote
            } else {
                Place::InProcess
            };
            let capacity = r.u32()?;
            let instance = r.u64()?;
            let ip = r.ip()?;
            let addr = SocketAddr::new(ip, r.u16()?);
            let len = usize::from(r.u16()?);
            let name = std::str::from_utf8(r.take(len)?)
                .map_err(|_| Malformed::Input("a name that is not UTF-8"))?
                .to_owned();
            Input::AddNode(NewNode {
                name,
                role,
                addr,
                capacity,
                place,
                instance,
            })
        }
        6 => {
            let add = r.flag()?;
            Input::Whitelist { ip: r.ip()?, add }
        }
        7 => Input::Relink {
            server: ServerId(r.u32()?),
            instance: r.u64()?,
        },
        k => return Err(Malformed::Kind(k)),
    };
    r.end()?;
    Ok((now, input))
}
