//! What the Call Manager holds of a node, whether the node runs in this process or its own:
//! [`NodeHandle`] to command it and to kill or revive it for drills, [`NodeControl`] for
//! whoever carries those commands, and [`NodeCounters`], the node's figures as last published.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};

use super::core::{Node, NodeStats};
use crate::NodeCommand;

/// A node's figures, shared with the Call Manager's status line: the driver publishes them once
/// a tick, or the hub as a node in its own process reports them over its link.
#[derive(Debug, Default)]
pub struct NodeCounters {
    sessions: AtomicU64,
    rooms: AtomicU64,
    packets_in: AtomicU64,
    packets_out: AtomicU64,
    unknown_packets: AtomicU64,
    malformed: AtomicU64,
    options_answered: AtomicU64,
    digits: AtomicU64,
    refused: AtomicU64,
    ignored: AtomicU64,
    dropped: AtomicU64,
    /// Datagrams that arrived while the node was dead, read and dropped.
    dead_drops: AtomicU64,
    /// Failed sends, receives and polls.
    io_errors: AtomicU64,
    /// Commands the node has applied, published after the session count they lead to.
    applied: AtomicU64,
}

impl NodeCounters {
    /// The node's stats as last published.
    pub fn load(&self) -> NodeStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NodeStats {
            sessions: l(&self.sessions),
            rooms: l(&self.rooms),
            packets_in: l(&self.packets_in),
            packets_out: l(&self.packets_out),
            unknown_packets: l(&self.unknown_packets),
            malformed: l(&self.malformed),
            options_answered: l(&self.options_answered),
            digits: l(&self.digits),
            refused: l(&self.refused),
            ignored: l(&self.ignored),
            dropped: l(&self.dropped),
        }
    }

    pub fn dead_drops(&self) -> u64 {
        self.dead_drops.load(Ordering::Relaxed)
    }

    pub fn io_errors(&self) -> u64 {
        self.io_errors.load(Ordering::Relaxed)
    }

    pub(super) fn store(&self, s: &NodeStats) {
        let st = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        st(&self.sessions, s.sessions);
        st(&self.rooms, s.rooms);
        st(&self.packets_in, s.packets_in);
        st(&self.packets_out, s.packets_out);
        st(&self.unknown_packets, s.unknown_packets);
        st(&self.malformed, s.malformed);
        st(&self.options_answered, s.options_answered);
        st(&self.digits, s.digits);
        st(&self.refused, s.refused);
        st(&self.ignored, s.ignored);
        st(&self.dropped, s.dropped);
    }

    /// Takes a remote node's figures, as its link reports them.
    pub(crate) fn publish(&self, s: &NodeStats, io_errors: u64) {
        self.store(s);
        self.io_errors.store(io_errors, Ordering::Relaxed);
    }

    /// Counts `n` failed sends, receives or polls.
    pub(super) fn add_io_errors(&self, n: u64) {
        add(&self.io_errors, n);
    }

    /// Commands the node has applied. Read before [`NodeCounters::load`]: the sessions read
    /// then are those after at least this many commands.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Publishes `s` and then that `n` more commands have been applied.
    pub(super) fn store_applied(&self, s: &NodeStats, n: u64) {
        self.store(s);
        self.applied.fetch_add(n, Ordering::Release);
    }

    /// Counts `n` datagrams read and dropped while the node was dead.
    pub(super) fn add_dead_drops(&self, n: u64) {
        add(&self.dead_drops, n);
    }
}

fn add(a: &AtomicU64, n: u64) {
    if n > 0 {
        a.fetch_add(n, Ordering::Relaxed);
    }
}

/// Where a node runs, and so who carries the commands sent to its handle.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A node of this process, served by [`super::spawn`]'s thread, which reads the channel.
    InProcess,
    /// A node in its own process (`pbxlab node`): the Call Manager's thread reads the channel
    /// and sends the commands over the control link ([`crate::hub`]). Its `alive` says whether
    /// it was heard from lately, and its counters are what it last reported; an operator here
    /// cannot crash, cut off or start its process.
    Remote,
}

/// How the Call Manager's thread reaches a node: its channel, its `alive` switch and its
/// counters, under the node's id. Who the node is (name, role, address, place) is the Call
/// Manager's node table's to say (`cm::NodeSpec`), not the handle's.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    pub id: u32,
    pub commands: Sender<NodeCommand>,
    /// Cleared, the node acts as a dead server: it reads and drops every datagram, sends
    /// nothing and plays nothing. It still applies commands, so sessions the Call Manager ends
    /// meanwhile are gone when it comes back.
    pub alive: Arc<AtomicBool>,
    pub counters: Arc<NodeCounters>,
    /// Commands sent through this handle and its clones.
    sent: Arc<AtomicU64>,
}

impl NodeHandle {
    /// Sends a command; false once the node thread has gone.
    pub fn send(&self, cmd: NodeCommand) -> bool {
        let sent = self.commands.send(cmd).is_ok();
        if sent {
            self.sent.fetch_add(1, Ordering::AcqRel);
        }
        sent
    }

    /// Whether a node of this process has applied every command sent to it, so that its
    /// published session count is the one those commands lead to. (A node in its own process
    /// reports no such count: never.)
    pub fn in_step(&self) -> bool {
        self.counters.applied() == self.sent.load(Ordering::Acquire)
    }

    pub fn set_alive(&self, alive: bool) {
        self.alive.store(alive, Ordering::Relaxed);
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }
}

/// The node thread's side of a [`NodeHandle`].
#[derive(Debug)]
pub struct NodeControl {
    pub commands: Receiver<NodeCommand>,
    pub alive: Arc<AtomicBool>,
    pub counters: Arc<NodeCounters>,
}

/// A handle and its control for `node`, which starts alive.
pub fn channel(node: &Node) -> (NodeHandle, NodeControl) {
    pair(node.id())
}

/// A handle and its control for node `id` in its own process (the hub drains the channel onto
/// the node's link).
pub fn remote(id: u32) -> (NodeHandle, NodeControl) {
    pair(id)
}

fn pair(id: u32) -> (NodeHandle, NodeControl) {
    let (tx, rx) = std::sync::mpsc::channel();
    let alive = Arc::new(AtomicBool::new(true));
    let counters = Arc::new(NodeCounters::default());
    (
        NodeHandle {
            id,
            commands: tx,
            alive: Arc::clone(&alive),
            counters: Arc::clone(&counters),
            sent: Arc::new(AtomicU64::new(0)),
        },
        NodeControl {
            commands: rx,
            alive,
            counters,
        },
    )
}
