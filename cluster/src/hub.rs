//! The Call Manager's side of the control link: nodes in their own processes (`pbxlab node`)
//! join here, and their commands, acknowledgements, events and figures pass through here.
//!
//! The Call Manager's thread hands the hub every link datagram from its SIP socket
//! ([`Hub::handle`]), lets it move commands and retransmissions on ([`Hub::advance`]) and
//! sends what it queued ([`Hub::transmit_all`]). A joined node gets a [`NodeHandle`] like an
//! in-process one, so the thread routes its commands the same way, into the handle's channel;
//! the hub drains that channel onto the link.
//!
//! A node comes in with the cluster's token, a role the scenario has a pool for (it gets that
//! pool's capacity) and a name and address no other server has. The same name from the same
//! address with a new process instance is a restart: the node is marked down at once (its
//! sessions died with the old process and move now), and its probes bring it back.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use pbxlab_balancer::{Role, ServerId};

use super::cm::CallManager;
use super::link::{self, Delivery, Incoming, Lost, Message, Outgoing};
use super::node::{self, NodeControl, NodeHandle};
use super::{Nanos, NodeCommand, NodeEvent};
use pbxlab_scenario::Verb;

/// Remote nodes one Call Manager takes.
const MAX_REMOTES: usize = 1_000;
/// Addresses whose refusals are logged (the first one each); later refusals are only counted.
const MAX_REFUSALS_LOGGED: usize = 256;
/// Datagrams queued between two calls of [`Hub::transmit_all`].
const MAX_OUT: usize = 65_536;
/// A node not heard from for this long (it sends its figures every second) is shown as not
/// running. Its probes decide whether it is down; this is only the status.
const SILENT_NS: Nanos = 3_000_000_000;

/// What the hub has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    pub joins: u64,
    pub rejoins: u64,
    pub refused: u64,
    /// Links given up on (commands unacknowledged after every attempt).
    pub lost: u64,
    pub commands_sent: u64,
    pub events: u64,
    /// Link datagrams that did not decode.
    pub malformed: u64,
    /// Link datagrams from no joined node, or not meant for the Call Manager.
    pub ignored: u64,
    /// Datagrams dropped because the outbox was full.
    pub dropped: u64,
}

/// A remote node's link. Who the node is (name, role, address) is the Call Manager's node
/// table's to say; this is only what the link needs.
#[derive(Debug)]
struct Remote {
    id: ServerId,
    instance: u64,
    first_seq: u64,
    control: NodeControl,
    out: Outgoing<NodeCommand>,
    events: Incoming<NodeEvent>,
    last_heard: Nanos,
    /// The link was lost and its queue dropped: the node may hold sessions the Call Manager
    /// has moved away, so the next command is preceded by a Reset.
    resync: bool,
    lost: bool,
}

/// The Call Manager's end of every remote node's link.
#[derive(Debug)]
pub struct Hub {
    token: Option<String>,
    capacities: Vec<(Role, u32)>,
    remotes: Vec<Remote>,
    out: Vec<(SocketAddr, Vec<u8>)>,
    joined: Vec<NodeHandle>,
    log: Vec<String>,
    refusals_logged: BTreeSet<SocketAddr>,
    stats: HubStats,
}

impl Hub {
    /// A hub that admits nodes presenting `token` (none: it admits nobody) into the pools in
    /// `capacities`, each node with its pool's capacity.
    pub fn new(token: Option<String>, capacities: Vec<(Role, u32)>) -> Hub {
        Hub {
            token,
            capacities,
            remotes: Vec::new(),
            out: Vec::new(),
            joined: Vec::new(),
            log: Vec::new(),
            refusals_logged: BTreeSet::new(),
            stats: HubStats::default(),
        }
    }

    pub fn stats(&self) -> HubStats {
        self.stats
    }

    /// Handles of the nodes that joined since the last call, for the cluster's node list.
    pub fn take_joined(&mut self) -> Vec<NodeHandle> {
        std::mem::take(&mut self.joined)
    }

    /// Log lines (joins, refusals, lost links) since the last call.
    pub fn take_log(&mut self) -> Vec<String> {
        std::mem::take(&mut self.log)
    }

    /// Takes one link datagram that arrived at the Call Manager's socket.
    pub fn handle(&mut self, cm: &mut CallManager, now: Nanos, from: SocketAddr, datagram: &[u8]) {
        let msg = match link::decode(datagram) {
            Ok(msg) => msg,
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        if let Message::Join {
            name,
            role,
            instance,
            token,
        } = msg
        {
            let asked = Asked {
                from,
                name: &name,
                role,
                instance,
                token: &token,
            };
            self.join(cm, now, &asked);
            return;
        }
        let Hub {
            remotes,
            out,
            log,
            stats,
            ..
        } = self;
        let Some(node) = cm.node_at(from).filter(|n| n.place == node::Place::Remote) else {
            stats.ignored += 1;
            return;
        };
        let (id, name) = (node.id, node.name.clone());
        let Some(r) = remotes.iter_mut().find(|r| r.id == id) else {
            stats.ignored += 1;
            return;
        };
        heard(r, now, &name, log);
        match msg {
            Message::Ack { seq } => {
                r.out.ack(seq);
            }
            Message::Event { seq, event } => {
                if r.events.receive(seq, event) != Delivery::TooFar {
                    queue(out, stats, from, &Message::Ack { seq });
                }
                while let Some(event) = r.events.pop() {
                    stats.events += 1;
                    cm.on_node_event(now, r.id, event);
                }
            }
            Message::Stats {
                stats: figures,
                io_errors,
            } => r.control.counters.publish(&figures, io_errors),
            // JOINED, REFUSED and CMD go the other way.
            _ => stats.ignored += 1,
        }
    }

    fn join(&mut self, cm: &mut CallManager, now: Nanos, asked: &Asked<'_>) {
        let &Asked {
            from,
            name,
            role,
            instance,
            token,
        } = asked;
        match &self.token {
            None => {
                return self.refuse(
                    now,
                    from,
                    name,
                    "this Call Manager takes no remote nodes (start it with --token)".into(),
                );
            }
            Some(t) if t != token => return self.refuse(now, from, name, "wrong token".into()),
            Some(_) => {}
        }
        let Some(capacity) = self
            .capacities
            .iter()
            .find(|(r, _)| *r == role)
            .map(|&(_, c)| c)
        else {
            return self.refuse(now, from, name, format!("the cluster has no {role} pool"));
        };
        let known = |r: &Remote| cm.node(r.id).filter(|n| n.name == name).cloned();
        if let Some((i, row)) = self
            .remotes
            .iter()
            .enumerate()
            .find_map(|(i, r)| known(r).map(|row| (i, row)))
        {
            let r = &self.remotes[i];
            if cm.balancer().server(r.id).is_none() {
                // Removed from the cluster (`rm`): it may join again, as a new server.
                self.remotes.remove(i);
            } else if row.addr != from {
                let reason = format!("the name {name} is taken by the node at {}", row.addr);
                return self.refuse(now, from, name, reason);
            } else if row.role != role {
                let reason = format!("{name} joined as a {} node before", row.role);
                return self.refuse(now, from, name, reason);
            } else if r.instance == instance {
                // Our JOINED was lost, or is on its way: the same answer again.
                let joined = Message::Joined {
                    id: r.id.0,
                    first_seq: r.first_seq,
                };
                return queue(&mut self.out, &mut self.stats, from, &joined);
            } else {
                return self.rejoin(cm, now, i, instance);
            }
        }
        let live = |id: ServerId| cm.balancer().server(id).is_some();
        if cm.nodes().iter().any(|n| n.name == name && live(n.id)) {
            let reason = format!("a server named {name} already exists");
            return self.refuse(now, from, name, reason);
        }
        if let Some(n) = cm.nodes().iter().find(|n| n.addr == from && live(n.id)) {
            let reason = format!("address {from} is taken by {}", n.name);
            return self.refuse(now, from, name, reason);
        }
        if self.remotes.len() >= MAX_REMOTES {
            let reason = format!("this Call Manager takes at most {MAX_REMOTES} remote nodes");
            return self.refuse(now, from, name, reason);
        }
        let id = match cm.add_node(name, role, from, capacity, node::Place::Remote) {
            Ok(id) => id,
            Err(e) => return self.refuse(now, from, name, e.to_string()),
        };
        let (handle, control) = node::remote(id.0);
        self.joined.push(handle);
        self.remotes.push(Remote {
            id,
            instance,
            first_seq: 1,
            control,
            out: Outgoing::new(1),
            events: Incoming::new(1),
            last_heard: now,
            resync: false,
            lost: false,
        });
        self.stats.joins += 1;
        self.log
            .push(line(now, name, &format!("joined as {role} from {from}")));
        let joined = Message::Joined {
            id: id.0,
            first_seq: 1,
        };
        queue(&mut self.out, &mut self.stats, from, &joined);
    }

    /// A known node's new process: whatever it had is gone, and so is whatever was queued
    /// for the old one.
    fn rejoin(&mut self, cm: &mut CallManager, now: Nanos, i: usize, instance: u64) {
        let Hub {
            remotes,
            out,
            log,
            stats,
            ..
        } = self;
        let Some(r) = remotes.get_mut(i) else { return };
        let Some(node) = cm.node(r.id) else { return };
        let (name, addr) = (node.name.clone(), node.addr);
        while r.control.commands.try_recv().is_ok() {}
        r.out.clear();
        r.first_seq = r.out.next_seq();
        r.instance = instance;
        r.events = Incoming::new(1);
        r.resync = false;
        r.lost = false;
        heard(r, now, &name, log);
        stats.rejoins += 1;
        // Its sessions died with the old process: they move now, as after a failed probe.
        let _ = cm.admin(now, r.id, Verb::Stop);
        log.push(line(
            now,
            &name,
            &format!("rejoined from {addr} (restarted): down until its probes bring it back"),
        ));
        let joined = Message::Joined {
            id: r.id.0,
            first_seq: r.first_seq,
        };
        queue(out, stats, addr, &joined);
    }

    fn refuse(&mut self, now: Nanos, from: SocketAddr, name: &str, reason: String) {
        self.stats.refused += 1;
        if self.refusals_logged.len() < MAX_REFUSALS_LOGGED && self.refusals_logged.insert(from) {
            self.log
                .push(line(now, name, &format!("refused from {from}: {reason}")));
        }
        // The reason must fit the link's limit (the decoder takes up to 256 characters).
        let mut reason = reason;
        if reason.len() > 4 * link::MAX_WORD {
            let mut end = 4 * link::MAX_WORD;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        queue(
            &mut self.out,
            &mut self.stats,
            from,
            &Message::Refused { reason },
        );
    }

    /// Moves the commands routed to remote nodes onto their links, and sends what is due.
    pub fn advance(&mut self, cm: &mut CallManager, now: Nanos) {
        let Hub {
            remotes,
            out,
            log,
            stats,
            ..
        } = self;
        for r in remotes.iter_mut() {
            let Some(addr) = cm.node(r.id).map(|n| n.addr) else {
                continue;
            };
            let mut lost = None;
            while let Ok(command) = r.control.commands.try_recv() {
                if r.resync {
                    r.resync = false;
                    if let Err(e) = r.out.push(NodeCommand::Reset) {
                        lost = Some(e);
                    }
                }
                if let Err(e) = r.out.push(command) {
                    lost = Some(e);
                }
            }
            let mut due = Vec::new();
            if lost.is_none()
                && let Err(e) = r
                    .out
                    .poll_transmit(now, |seq, command| due.push((seq, command.clone())))
            {
                lost = Some(e);
            }
            for (seq, command) in due {
                stats.commands_sent += 1;
                queue(out, stats, addr, &Message::Command { seq, command });
            }
            if let Some(e) = lost {
                lose(cm, now, r, e, log, stats);
            }
            if now.saturating_sub(r.last_heard) > SILENT_NS {
                r.control.alive.store(false, Ordering::Relaxed);
            }
        }
    }

    /// Hands every queued datagram to `send`, once.
    pub fn transmit_all(&mut self, send: impl FnOnce(&[(SocketAddr, &[u8])])) {
        if self.out.is_empty() {
            return;
        }
        let batch: Vec<(SocketAddr, &[u8])> = self.out.iter().map(|(a, d)| (*a, &d[..])).collect();
        send(&batch);
        self.out.clear();
    }
}

/// A JOIN and where it came from.
struct Asked<'a> {
    from: SocketAddr,
    name: &'a str,
    role: Role,
    instance: u64,
    token: &'a str,
}

fn queue(
    out: &mut Vec<(SocketAddr, Vec<u8>)>,
    stats: &mut HubStats,
    to: SocketAddr,
    msg: &Message,
) {
    if out.len() >= MAX_OUT {
        stats.dropped += 1;
        return;
    }
    let mut buf = Vec::new();
    link::encode(msg, &mut buf);
    out.push((to, buf));
}

fn line(now: Nanos, name: &str, what: &str) -> String {
    format!("{:.3}s {name} {what}", now as f64 / 1e9)
}

fn heard(r: &mut Remote, now: Nanos, name: &str, log: &mut Vec<String>) {
    r.last_heard = now;
    r.control.alive.store(true, Ordering::Relaxed);
    if r.lost {
        r.lost = false;
        log.push(line(now, name, "link back"));
    }
}

/// Gives up on what was queued for `r`: the node is marked down (its probes have most likely
/// done so already) and is told to start afresh with the next command.
fn lose(
    cm: &mut CallManager,
    now: Nanos,
    r: &mut Remote,
    why: Lost,
    log: &mut Vec<String>,
    stats: &mut HubStats,
) {
    r.out.clear();
    r.resync = true;
    r.control.alive.store(false, Ordering::Relaxed);
    if !r.lost {
        r.lost = true;
        stats.lost += 1;
        let name = cm.node(r.id).map_or("?", |n| n.name.as_str());
        log.push(line(now, name, &format!("link lost ({why}): marked down")));
    }
    let _ = cm.admin(now, r.id, Verb::Stop);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cm::{Config, NodeSpec};
    use crate::{Leg, MediaSession};
    use pbxlab_balancer::{Balancer, FailoverMode, HealthConfig, Policy};

    fn cm_addr() -> SocketAddr {
        SocketAddr::from(([10, 211, 0, 1], 5060))
    }

    fn node_addr(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 211, 0, last], 7000))
    }

    fn call_manager() -> CallManager {
        let mut b = Balancer::new(HealthConfig::default());
        b.set_pool(Role::Media, Policy::LeastLoaded, FailoverMode::Auto);
        CallManager::new(Config::new(cm_addr()), b, Vec::<NodeSpec>::new())
    }

    fn hub() -> Hub {
        Hub::new(Some("tok".into()), vec![(Role::Media, 50)])
    }

    fn join(name: &str, instance: u64, token: &str) -> Vec<u8> {
        bytes(&Message::Join {
            name: name.into(),
            role: Role::Media,
            instance,
            token: token.into(),
        })
    }

    fn bytes(msg: &Message) -> Vec<u8> {
        let mut b = Vec::new();
        link::encode(msg, &mut b);
        b
    }

    fn sent(h: &mut Hub) -> Vec<(SocketAddr, Message)> {
        let mut out = Vec::new();
        h.transmit_all(|d| out.extend(d.iter().map(|(to, b)| (*to, link::decode(b).unwrap()))));
        out
    }

    #[test]
    fn a_node_with_the_token_joins_and_one_without_is_refused() {
        let (mut cm, mut h) = (call_manager(), hub());
        h.handle(&mut cm, 0, node_addr(2), &join("media-a", 1, "tok"));
        assert_eq!(
            sent(&mut h),
            [(
                node_addr(2),
                Message::Joined {
                    id: 0,
                    first_seq: 1
                }
            )]
        );
        let joined = h.take_joined();
        assert_eq!(joined.len(), 1);
        assert_eq!(joined[0].id, 0);
        assert_eq!(cm.nodes()[0].place, node::Place::Remote);
        assert_eq!(cm.nodes()[0].addr, node_addr(2));
        assert_eq!(cm.balancer().server(ServerId(0)).unwrap().capacity, 50);
        // The same JOIN again (our answer was lost): the same answer, no second node.
        h.handle(&mut cm, 1, node_addr(2), &join("media-a", 1, "tok"));
        assert!(matches!(
            &sent(&mut h)[..],
            [(_, Message::Joined { id: 0, .. })]
        ));
        assert!(h.take_joined().is_empty());

        h.handle(&mut cm, 2, node_addr(3), &join("media-b", 2, "nope"));
        assert_eq!(
            sent(&mut h),
            [(
                node_addr(3),
                Message::Refused {
                    reason: "wrong token".into()
                }
            )]
        );
        let log = h.take_log();
        assert!(
            log[0].contains("media-a joined as media from 10.211.0.2:7000"),
            "{log:?}"
        );
        assert!(
            log[1].contains("media-b refused from 10.211.0.3:7000: wrong token"),
            "{log:?}"
        );
        // Its repeats are refused, and not logged again.
        h.handle(&mut cm, 3, node_addr(3), &join("media-b", 2, "nope"));
        assert!(h.take_log().is_empty());
        assert_eq!(h.stats().refused, 2);
        assert_eq!(cm.nodes().len(), 1);
    }

    #[test]
    fn names_roles_and_addresses_are_checked() {
        let (mut cm, mut h) = (call_manager(), hub());
        h.handle(&mut cm, 0, node_addr(2), &join("media-a", 1, "tok"));
        sent(&mut h);
        let refused = |h: &mut Hub| match &sent(h)[..] {
            [(_, Message::Refused { reason })] => reason.clone(),
            other => panic!("{other:?}"),
        };
        h.handle(&mut cm, 1, node_addr(3), &join("media-a", 2, "tok"));
        assert_eq!(
            refused(&mut h),
            "the name media-a is taken by the node at 10.211.0.2:7000"
        );
        h.handle(&mut cm, 1, node_addr(2), &join("media-z", 2, "tok"));
        assert_eq!(
            refused(&mut h),
            "address 10.211.0.2:7000 is taken by media-a"
        );
        let ivr = bytes(&Message::Join {
            name: "ivr-a".into(),
            role: Role::Ivr,
            instance: 1,
            token: "tok".into(),
        });
        h.handle(&mut cm, 1, node_addr(4), &ivr);
        assert_eq!(refused(&mut h), "the cluster has no ivr pool");
        let mut closed = Hub::new(None, vec![(Role::Media, 50)]);
        closed.handle(&mut cm, 1, node_addr(5), &join("media-q", 1, "tok"));
        assert!(refused(&mut closed).contains("takes no remote nodes"));
    }

    fn echo(session: u64) -> NodeCommand {
        NodeCommand::Echo {
            session: MediaSession(session),
            leg: Leg {
                remote: node_addr(9),
                ssrc: Some(1),
                codec_pt: 0,
                dtmf_pt: None,
            },
        }
    }

    #[test]
    fn commands_are_resent_until_acknowledged_and_a_restart_starts_over() {
        let (mut cm, mut h) = (call_manager(), hub());
        h.handle(&mut cm, 0, node_addr(2), &join("media-a", 1, "tok"));
        sent(&mut h);
        let handle = h.take_joined().remove(0);
        assert!(handle.send(echo(1)));
        assert!(handle.send(echo(2)));
        h.advance(&mut cm, 0);
        let cmds: Vec<u64> = sent(&mut h)
            .into_iter()
            .map(|(_, m)| match m {
                Message::Command { seq, .. } => seq,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(cmds, [1, 2]);
        h.handle(&mut cm, 1, node_addr(2), &bytes(&Message::Ack { seq: 1 }));
        h.advance(&mut cm, link::RETRY);
        assert!(matches!(
            &sent(&mut h)[..],
            [(_, Message::Command { seq: 2, .. })]
        ));
        // The node restarts: what was queued for the old process is dropped, numbering goes on.
        assert!(handle.send(echo(3)));
        h.handle(&mut cm, 2, node_addr(2), &join("media-a", 7, "tok"));
        assert_eq!(
            sent(&mut h),
            [(
                node_addr(2),
                Message::Joined {
                    id: 0,
                    first_seq: 3
                }
            )]
        );
        assert_eq!(h.stats().rejoins, 1);
        h.advance(&mut cm, 3 * link::RETRY);
        assert!(sent(&mut h).is_empty());
        // The balancer took it down; its probes bring it back.
        assert!(!cm.balancer().server(ServerId(0)).unwrap().healthy);
    }

    #[test]
    fn a_silent_link_is_lost_then_resynchronised_with_a_reset() {
        let (mut cm, mut h) = (call_manager(), hub());
        h.handle(&mut cm, 0, node_addr(2), &join("media-a", 1, "tok"));
        sent(&mut h);
        let handle = h.take_joined().remove(0);
        handle.send(echo(1));
        let mut now = 0;
        for _ in 0..=link::ATTEMPTS {
            h.advance(&mut cm, now);
            now += link::RETRY;
        }
        assert_eq!(h.stats().lost, 1);
        assert!(!handle.is_alive());
        assert!(h.take_log().iter().any(|l| l.contains("media-a link lost")));
        sent(&mut h);
        handle.send(echo(2));
        h.advance(&mut cm, now);
        let got: Vec<NodeCommand> = sent(&mut h)
            .into_iter()
            .filter_map(|(_, m)| match m {
                Message::Command { command, .. } => Some(command),
                _ => None,
            })
            .collect();
        assert_eq!(got, [NodeCommand::Reset, echo(2)]);
        // Its figures show it is back.
        let figures = bytes(&Message::Stats {
            stats: node::NodeStats {
                sessions: 1,
                ..Default::default()
            },
            io_errors: 0,
        });
        h.handle(&mut cm, now, node_addr(2), &figures);
        assert!(handle.is_alive());
        assert_eq!(handle.counters.load().sessions, 1);
        assert!(h.take_log().iter().any(|l| l.contains("media-a link back")));
    }

    #[test]
    fn events_reach_the_call_manager_once() {
        let (mut cm, mut h) = (call_manager(), hub());
        h.handle(&mut cm, 0, node_addr(2), &join("media-a", 1, "tok"));
        sent(&mut h);
        let digit = bytes(&Message::Event {
            seq: 1,
            event: NodeEvent::Digit {
                session: MediaSession(77),
                digit: '3',
            },
        });
        h.handle(&mut cm, 1, node_addr(2), &digit);
        h.handle(&mut cm, 2, node_addr(2), &digit);
        assert_eq!(h.stats().events, 1);
        assert_eq!(
            sent(&mut h),
            [
                (node_addr(2), Message::Ack { seq: 1 }),
                (node_addr(2), Message::Ack { seq: 1 })
            ]
        );
        // From a stranger: ignored.
        h.handle(&mut cm, 3, node_addr(8), &digit);
        assert_eq!(h.stats().ignored, 1);
        h.handle(&mut cm, 3, node_addr(2), b"PBXL/1 EVENT");
        assert_eq!(h.stats().malformed, 1);
    }
}
