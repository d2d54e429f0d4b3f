//! pbxlab's live emulated cluster, on UDP sockets: a Call Manager (registrar, digest auth, B2BUA
//! routing, per-source rate limit, health probes) in front of emulated media, meeting, IVR,
//! queue and IM nodes that really relay, echo, play prompts, collect RFC 4733 digits, hold
//! callers and mix meetings.
//!
//! As in the rest of the workspace, protocol state is sans-IO: [`cm::CallManager`] and
//! [`node::Node`] take `now` and datagrams and hand back datagrams to send and commands for each
//! other; the threads in [`cluster`] and [`node::spawn`] only move bytes and keep time. Every
//! placement is the balancer's decision, exactly as in `plan`.
//!
//! The Call Manager talks to its nodes in two ways: SIP OPTIONS probes over UDP (so a stopped or
//! cut-off node is detected the way a real one would be) and [`NodeCommand`]s (which media
//! session to set up on the node, and how): over a channel to a node of the same process, over
//! the control link ([`link`]) to a node in its own process ([`remote`], joined through
//! [`hub`]).
//!
//! Operators reach a running cluster through [`ctl`], an HTTP+JSON endpoint over
//! [`cluster::Control`] (with the little HTTP of [`http`]); [`alerts`] carries the balancer's
//! alerts to a file, the log and a webhook.
//!
//! [`drill`] judges a failover drill from what the cluster recorded and the load generator
//! measured; running the drill (the cluster, the load, the fault timeline) is the binary's.

use std::net::SocketAddr;

pub mod alerts;
pub mod cluster;
pub mod cm;
pub mod ctl;
pub mod drill;
pub mod ha;
pub mod http;
pub mod hub;
pub mod link;
pub mod node;
pub mod remote;
pub mod world;

/// A key drawn from the operating system's random source, for a server others can reach: what it
/// keys (nonces, branches, tags) cannot be forged by someone who knows the scenario's seed.
pub fn random_key() -> std::io::Result<pbxlab_proto::mac::Key> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    Ok(pbxlab_proto::mac::Key::from_bytes(bytes))
}

/// Everything that can stop the live cluster, a node process or its alert sinks.
/// Each variant's cause is in its message and not also its `source`, which error reporters that
/// print the chain (anyhow's `{:#}`) would print a second time.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // A cause is written into its variant's message and not also given as its `source`:
    // reporters that print the chain (anyhow's `{:#}`) would print it a second time.
    #[error("balancer: {0}")]
    Balancer(#[from] pbxlab_balancer::Error),
    #[error("a fault names server {0:?}, which the cluster does not have")]
    UnknownServer(String),
    #[error("cannot bind {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("alerts file {path}: {error}")]
    AlertFile {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("alert webhook: {0}")]
    Webhook(String),
    #[error("no random key from the operating system: {0}")]
    Random(std::io::Error),
    #[error("refused by the Call Manager at {cm}: {reason}")]
    Refused { cm: SocketAddr, reason: String },
    #[error("the Call Manager at {cm} did not answer within {:.1} s", waited.as_secs_f64())]
    NoAnswer {
        cm: SocketAddr,
        waited: std::time::Duration,
    },
    #[error("{what}: {error}")]
    Io {
        what: &'static str,
        error: std::io::Error,
    },
    #[error("interrupted")]
    Interrupted,
    #[error("{0}")]
    Unsupported(String),
}

/// Nanoseconds since the cluster started.
pub type Nanos = u64;

/// A media session on a node: one call's relay, one IVR or queue caller, one meeting
/// participant. Numbered by the Call Manager, unique for the cluster's lifetime.
#[derive(
    serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub struct MediaSession(pub u64);

/// One RTP endpoint, as the Call Manager learned it from the endpoint's SDP.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leg {
    /// Where the endpoint wants its RTP (`c=` and `m=` port).
    pub remote: SocketAddr,
    /// The SSRC it announced with `a=ssrc` (RFC 5576). Without one, the node tells the leg's
    /// packets apart by source address, learning the SSRC from the first packet.
    pub ssrc: Option<u32>,
    /// The audio payload type agreed with it: 0 (PCMU) or 8 (PCMA).
    pub codec_pt: u8,
    /// Its telephone-event payload type, if it offered one.
    pub dtmf_pt: Option<u8>,
}

/// What the Call Manager asks of a node.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum NodeCommand {
    /// Relay between two legs: what one sends goes, unchanged, to the other (media anchoring).
    Relay {
        session: MediaSession,
        a: Leg,
        b: Leg,
    },
    /// Send every packet of the leg back to it.
    Echo { session: MediaSession, leg: Leg },
    /// Play the menu prompt to the leg, over and over, and report its RFC 4733 digits.
    Ivr { session: MediaSession, leg: Leg },
    /// Play hold audio to the leg until the session ends.
    Hold { session: MediaSession, leg: Leg },
    /// Add the leg to meeting `room`: it hears the mix of every other participant of the room.
    Join {
        session: MediaSession,
        room: u64,
        leg: Leg,
    },
    /// The session is over (hang-up, transfer elsewhere, or failover): forget it.
    End { session: MediaSession },
    /// The node's process started afresh (after a crash, a stop or an upgrade): every session
    /// it had is gone.
    Reset,
    /// The Call Manager is about to tell the node again every session it carries (a new link
    /// after a takeover): the sessions it has now are marked, and each one started again is
    /// unmarked.
    Mark,
    /// The sessions still marked are ones the Call Manager no longer has (their end was lost
    /// with the old link): they end.
    Sweep,
}

/// What a node tells the Call Manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeEvent {
    /// An IVR session's caller pressed a key (the RFC 4733 event's end).
    Digit { session: MediaSession, digit: char },
}
