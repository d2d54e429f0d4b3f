//! An emulated cluster node (media, meeting, IVR, queue or IM server).
//!
//! A node has one UDP address. All RTP for all its sessions arrives there, as at a single-port
//! media server, and so do the Call Manager's SIP OPTIONS probes. Datagrams are told apart by
//! their first byte, as RFC 7983 multiplexes a shared port: 128-191 is RTP version 2 (or RTCP),
//! an ASCII letter starts a SIP message. An RTP packet finds its session by SSRC; a leg whose
//! endpoint announced none (SIPp) is found by source address, and its SSRC is learnt from its
//! first packet. A node in its own process gets its control link there too (`PBXL/1 `,
//! [`crate::link`]); the driver hands those datagrams to its [`crate::remote::Member`] before
//! the node sees anything.
//!
//! [`Node`] is the sans-IO core: commands, datagrams and 20 ms ticks in, datagrams and events
//! out, no sockets and no clock. [`spawn`] is the driver: one thread serving any number of nodes.
//!
//! - `core.rs`: [`Node`] and [`NodeStats`]: sessions and how a packet finds its leg, relay,
//!   echo, IVR digits, hold, meeting rooms, OPTIONS answers, the send queue.
//! - `audio.rs`: G.711, the prompt and hold tones, the meeting mix's arithmetic.
//! - `handle.rs`: what the Call Manager holds of a node, here or in its own process:
//!   [`NodeHandle`], [`NodeControl`], [`NodeCounters`], [`Place`].
//! - `driver.rs`: sockets and the one thread serving every node over epoll: [`bind`],
//!   [`spawn`], [`spawn_member`].

mod audio;
mod core;
mod driver;
#[cfg(test)]
mod fixtures;
mod handle;

pub use self::core::{FRAME_NS, MAX_SESSIONS, Node, NodeStats};
pub use driver::{ToThread, adopt, bind, spawn, spawn_member};
pub use handle::{NodeControl, NodeCounters, NodeHandle, Place, channel, remote};
