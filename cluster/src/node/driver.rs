//! The driver: binds each node's socket and runs the one thread that serves every node of the
//! process over epoll, moving datagrams between the sockets and the sans-IO cores and keeping
//! the 20 ms tick. A node in its own process gets its control link on the same socket.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};

use pbxlab_balancer::Role;
use pbxlab_udp::pace::Pace;

use super::core::{FRAME_NS, Node};
use super::handle::{NodeControl, NodeHandle, channel};
use crate::link;
use crate::remote::Member;
use crate::{Nanos, NodeEvent};

/// Binds a node's socket at `addr` (port 0 picks one) and makes the node, its handle and what
/// [`spawn`] takes for it.
pub fn bind(
    id: u32,
    role: Role,
    name: String,
    addr: SocketAddr,
) -> io::Result<(NodeHandle, (Node, UdpSocket, NodeControl))> {
    adopt(id, role, name, UdpSocket::bind(addr)?)
}

/// A node on a socket already bound: for a server added at run time, whose id the balancer
/// gives only once it knows the address.
pub fn adopt(
    id: u32,
    role: Role,
    name: String,
    socket: UdpSocket,
) -> io::Result<(NodeHandle, (Node, UdpSocket, NodeControl))> {
    let node = Node::new(id, role, name, socket.local_addr()?);
    let (handle, control) = channel(&node);
    Ok((handle, (node, socket, control)))
}

/// Receive and send buffer asked of the kernel for each node socket.
const SOCKET_BUFFER_BYTES: usize = 16 << 20;
/// Datagrams one node's socket may hand over before the others get their turn.
const SHARE: usize = 256;
/// How long before a tick the thread stops sleeping and spins, when some node is generating
/// audio: epoll's timeout has millisecond granularity.
const SPIN: Nanos = 1_000_000;

/// Token bit of a node's twin socket (the one connected to the Call Manager).
const TWIN: usize = 1 << 30;

struct Served {
    node: Node,
    socket: mio::net::UdpSocket,
    /// A second socket on the node's address, connected to the Call Manager: the kernel puts
    /// the Call Manager's probes (and a remote node's link) there, away from the media queue,
    /// and the thread reads it first. `None` where the kernel would not make one.
    twin: Option<mio::net::UdpSocket>,
    control: NodeControl,
    /// A node in its own process: its end of the control link, where its commands arrive
    /// and its events go.
    member: Option<Member>,
}

impl Served {
    /// Sets up `socket`, and its twin connected to the Call Manager at `call_manager`, and
    /// registers them with `poll` as node `i`.
    fn new(
        poll: &Poll,
        i: usize,
        (node, socket, control): (Node, UdpSocket, NodeControl),
        call_manager: SocketAddr,
    ) -> io::Result<Served> {
        // Large socket buffers hold a tick's burst from every stream. Coalesced receive
        // (UDP_GRO): a generator's segmented send of 64 frames arrives as one buffer, which
        // the thread's receiver splits by the segment size the kernel reports.
        let _ = pbxlab_udp::set_buffer_sizes(&socket, SOCKET_BUFFER_BYTES);
        pbxlab_udp::coalesce(&socket)?;
        socket.set_nonblocking(true)?;
        let twin = pbxlab_udp::connected_twin(&socket, call_manager).ok();
        let mut socket = mio::net::UdpSocket::from_std(socket);
        poll.registry()
            .register(&mut socket, Token(i), Interest::READABLE)?;
        let twin = match twin {
            Some(t) => {
                let mut t = mio::net::UdpSocket::from_std(t);
                poll.registry()
                    .register(&mut t, Token(i | TWIN), Interest::READABLE)?;
                Some(t)
            }
            None => None,
        };
        Ok(Served {
            node,
            socket,
            twin,
            control,
            member: None,
        })
    }

    fn alive(&self) -> bool {
        self.control.alive.load(Ordering::Relaxed)
    }

    fn flush(&mut self, sender: &mut pbxlab_udp::Sender) {
        let Served {
            node,
            socket,
            control,
            member,
            ..
        } = self;
        if let Some(m) = member {
            m.transmit_all(|datagrams| {
                let failed = sender.send_all(socket, datagrams).len();
                control.counters.add_io_errors(failed as u64);
            });
        }
        if control.alive.load(Ordering::Relaxed) {
            node.transmit_all(|datagrams| {
                // Runs of equal datagrams to one address (a relayed burst from one generator)
                // leave as segmented buffers (GSO); plain sendmmsg where the kernel refuses.
                let failed = sender.send_segmented(socket, datagrams).len();
                control.counters.add_io_errors(failed as u64);
            });
        } else {
            node.transmit_all(|_| {});
        }
    }
}

/// What the node thread is told besides its nodes' commands.
pub enum ToThread {
    /// A node an operator added (`pbxlab ctl add`): it joins the loop.
    Add(Box<(Node, UdpSocket, NodeControl)>),
    /// Hold the thread for this long, as a machine with no core to spare would: how a test
    /// checks that pbxlab reports its own lateness instead of blaming the nodes.
    Stall(Duration),
}

/// Starts one thread serving every node in `nodes` until `stop` is set. Digits go to
/// `events` with the node's id; how far behind its 20 ms grid the thread runs, and what the
/// kernel drops on its sockets, go to `pace`.
///
/// One thread for all nodes: the machine this was built for has two cores, and a thread per
/// node would only add context switches, since a node's work per packet is a few hundred
/// nanoseconds. The thread sleeps in epoll over every node's socket; when woken it takes each
/// node's commands, then reads its datagrams in batches (`recvmmsg`) and sends what they
/// produce at once (`sendmmsg`), so relayed packets are not held until a tick. Ticks fall on
/// a 20 ms grid; after a stall the missed ones are skipped, not sent in a burst.
pub fn spawn(
    nodes: Vec<(Node, UdpSocket, NodeControl)>,
    adds: Receiver<ToThread>,
    events: Sender<(u32, NodeEvent)>,
    pace: Arc<Pace>,
    call_manager: SocketAddr,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    let nodes = nodes.into_iter().map(|(n, s, c)| (n, s, c, None)).collect();
    let to = Thread {
        adds,
        events,
        pace,
        call_manager,
        stop,
        started: Instant::now(),
    };
    start(nodes, to)
}

/// Starts the thread serving one node of its own process, whose commands arrive and events
/// leave through `member` (joined already, [`crate::remote::join`]) on the node's socket.
/// `epoch` is the member's clock's zero.
pub fn spawn_member(
    node: Node,
    socket: UdpSocket,
    control: NodeControl,
    member: Member,
    stop: Arc<AtomicBool>,
    epoch: Instant,
) -> io::Result<JoinHandle<()>> {
    // Nobody adds nodes to this thread, and its events go over the link.
    let (_, adds) = std::sync::mpsc::channel();
    let (events, _) = std::sync::mpsc::channel();
    let to = Thread {
        adds,
        events,
        pace: Arc::new(Pace::default()),
        call_manager: member.spec().cm,
        stop,
        started: epoch,
    };
    start(vec![(node, socket, control, Some(member))], to)
}

type ToServe = (Node, UdpSocket, NodeControl, Option<Member>);

/// What the node thread works with besides its nodes.
struct Thread {
    adds: Receiver<ToThread>,
    events: Sender<(u32, NodeEvent)>,
    pace: Arc<Pace>,
    /// Where probes (and a remote node's link) come from: each node's twin is connected here.
    call_manager: SocketAddr,
    stop: Arc<AtomicBool>,
    started: Instant,
}

fn start(nodes: Vec<ToServe>, to: Thread) -> io::Result<JoinHandle<()>> {
    let poll = Poll::new()?;
    let mut served = Vec::with_capacity(nodes.len());
    for (i, (node, socket, control, member)) in nodes.into_iter().enumerate() {
        let s = Served::new(&poll, i, (node, socket, control), to.call_manager)?;
        served.push(Served { member, ..s });
    }
    // The sockets are set up here, so a failure is the caller's to see; the thread makes its
    // receive buffers itself (they hold raw pointers, which cannot move between threads).
    std::thread::Builder::new()
        .name("pbxlab-nodes".into())
        .spawn(move || run(served, poll, &to))
}

fn elapsed(started: Instant) -> Nanos {
    u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn run(mut served: Vec<Served>, mut poll: Poll, to: &Thread) {
    let Thread {
        adds,
        events,
        pace,
        call_manager,
        stop,
        started,
    } = to;
    let started = *started;
    let mut ready = Events::with_capacity(64);
    let mut receiver = pbxlab_udp::Receiver::for_coalesced(started);
    let mut sender = pbxlab_udp::Sender::default();
    let mut next_tick = FRAME_NS;
    let mut backlog: Vec<usize> = Vec::new();
    // Each socket's kernel drop count as last reported.
    let mut drops = vec![[0u32; 2]; served.len()];
    while !stop.load(Ordering::Relaxed) {
        // Nodes an operator added (`pbxlab ctl add`) join the loop; a socket that cannot be
        // set up leaves its node silent, and its probes then mark it down.
        while let Ok(told) = adds.try_recv() {
            let (node, socket, control) = match told {
                ToThread::Add(parts) => *parts,
                ToThread::Stall(d) => {
                    std::thread::sleep(d);
                    continue;
                }
            };
            let counters = Arc::clone(&control.counters);
            let added = Served::new(&poll, served.len(), (node, socket, control), *call_manager);
            match added {
                Ok(s) => {
                    served.push(s);
                    drops.push([0; 2]);
                }
                Err(_) => counters.add_io_errors(1),
            }
        }
        // Sleep until the next tick (so `stop` and commands are seen every 20 ms) or a
        // datagram; when audio is due, wake a little early and spin so it leaves on time.
        let until = next_tick.saturating_sub(elapsed(started));
        let generating = served.iter().any(|s| s.alive() && s.node.generating());
        let wait = if !backlog.is_empty() {
            0
        } else if !generating {
            until
        } else {
            until.saturating_sub(SPIN)
        };
        if let Err(e) = poll.poll(&mut ready, Some(Duration::from_nanos(wait)))
            && e.kind() != io::ErrorKind::Interrupted
        {
            for s in &served {
                s.control.counters.add_io_errors(1);
            }
        }
        // Commands before datagrams: a packet sent after its session's command finds it.
        for s in &mut served {
            let mut told = 0;
            while let Ok(cmd) = s.control.commands.try_recv() {
                s.node.command(cmd);
                told += 1;
            }
            // Published at once with the count of commands applied, so a status can compare
            // the node's sessions with the Call Manager's exactly.
            if told > 0 {
                s.control.counters.store_applied(&s.node.stats(), told);
            }
        }
        // Sockets with something to read: those epoll reported, and those left with more
        // after their share last time (epoll is edge-triggered and will not report them
        // again). Each gets at most SHARE datagrams a round, so a busy media node's stream
        // never keeps an idle node's probe waiting.
        // The Call Manager's twins first: a media backlog must not make a live node miss
        // its probes.
        for event in ready.iter() {
            let t = event.token().0;
            if !backlog.contains(&t) {
                backlog.push(t);
            }
        }
        backlog.sort_by_key(|&t| t & TWIN == 0);
        let mut more = Vec::new();
        for t in backlog.drain(..) {
            let i = t & !TWIN;
            let Some(s) = served.get_mut(i) else {
                continue;
            };
            let alive = s.alive();
            let Served {
                node,
                socket,
                twin,
                control,
                member,
            } = s;
            let from_socket = if t & TWIN != 0 {
                match twin {
                    Some(twin) => twin,
                    None => continue,
                }
            } else {
                socket
            };
            let mut dead = 0u64;
            let read = receiver.drain_up_to(from_socket, SHARE, |at, from, bytes| {
                if !alive {
                    dead += 1;
                    return;
                }
                match member {
                    Some(m) if link::is_link(bytes) => {
                        m.handle(at, from, bytes, |command| node.command(command));
                    }
                    _ => node.handle(from, bytes),
                }
            });
            control.counters.add_dead_drops(dead);
            let twin_read = usize::from(t & TWIN != 0);
            if let Some(last) = drops.get_mut(i).and_then(|d| d.get_mut(twin_read)) {
                pace.socket_drops(last, receiver.kernel_drops());
            }
            match read {
                Ok(n) if n >= SHARE => more.push(t),
                Ok(_) => {}
                Err(_) => control.counters.add_io_errors(1),
            }
            let id = s.node.id();
            for event in s.node.events() {
                match &mut s.member {
                    Some(m) => m.push_event(event),
                    // Nobody listening is not the node's problem: it keeps serving media.
                    None => {
                        let _ = events.send((id, event));
                    }
                }
            }
            s.flush(&mut sender);
        }
        backlog = more;
        let now = elapsed(started);
        if now >= next_tick {
            pace.on_time(next_tick, now);
            for s in &mut served {
                if s.alive() {
                    s.node.tick(now);
                    if let Some(m) = &mut s.member {
                        let io_errors = s.control.counters.io_errors();
                        m.advance(now, &s.node.stats(), io_errors);
                    }
                    s.flush(&mut sender);
                }
                // Published once a tick: often enough for a status line, and the spin
                // before a tick does not write them over and over.
                s.control.counters.store(&s.node.stats());
            }
            // The first slot of the grid after now: one tick per wakeup, however late.
            next_tick = (now / FRAME_NS + 1) * FRAME_NS;
        }
    }
    // The final figures, for whoever reads them after the thread has ended.
    for s in &served {
        s.control.counters.store(&s.node.stats());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::fixtures::{OPTIONS, audio, session};
    use crate::{Leg, NodeCommand};
    use pbxlab_proto::{dtmf, rtp, sip};

    #[test]
    fn loopback_driver_relays_answers_plays_and_plays_dead() {
        let localhost = SocketAddr::from(([127, 0, 0, 1], 0));
        let (handle, served) = bind(1, Role::Media, "media-1".into(), localhost).unwrap();
        let node_addr = served.0.addr();
        let (events_tx, events_rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (_adds_tx, adds_rx) = std::sync::mpsc::channel();
        let pace = Arc::new(Pace::default());
        let cm = SocketAddr::from(([127, 0, 0, 1], 9));
        let thread = spawn(
            vec![served],
            adds_rx,
            events_tx,
            pace,
            cm,
            Arc::clone(&stop),
        )
        .unwrap();
        let [a, b, c] = [0; 3].map(|_| {
            let s = UdpSocket::bind(localhost).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            s
        });
        let leg_of = |s: &UdpSocket, ssrc| Leg {
            remote: s.local_addr().unwrap(),
            ssrc,
            codec_pt: 0,
            dtmf_pt: Some(101),
        };
        // b announces no SSRC, as SIPp does.
        assert!(handle.send(NodeCommand::Relay {
            session: session(1),
            a: leg_of(&a, Some(1)),
            b: leg_of(&b, None),
        }));
        let mut buf = [0u8; 2048];
        let mut exchange = |from: &UdpSocket, to: &UdpSocket, pkt: &[u8]| -> Option<Vec<u8>> {
            // Sent again if lost: the first may overtake the command in the node thread.
            for _ in 0..20 {
                from.send_to(pkt, node_addr).unwrap();
                if let Ok((n, src)) = to.recv_from(&mut buf) {
                    assert_eq!(src, node_addr);
                    return Some(buf[..n].to_vec());
                }
            }
            None
        };
        let p = audio(1, 1);
        let q = audio(2, 1);
        // Nothing is sent to a leg before its own media has come (latching): b speaks first,
        // to no one yet (a has sent nothing), then a's packet reaches b and b's reaches a.
        let mut first = None;
        let mut first_buf = [0u8; 2048];
        for _ in 0..20 {
            b.send_to(&q, node_addr).unwrap();
            a.send_to(&p, node_addr).unwrap();
            if let Ok((n, _)) = b.recv_from(&mut first_buf) {
                first = Some(first_buf[..n].to_vec());
                break;
            }
        }
        assert_eq!(first, Some(p.clone()));
        assert_eq!(exchange(&b, &a, &q), Some(q.clone()));
        let answer = exchange(&c, &c, OPTIONS.as_bytes()).unwrap();
        assert_eq!(sip::parse_datagram(&answer).unwrap().code(), Some(200));

        // IVR: once the caller has sent a packet, the prompt arrives on the tick, and a digit
        // comes back as an event.
        assert!(handle.send(NodeCommand::Ivr {
            session: session(2),
            leg: leg_of(&c, Some(5)),
        }));
        let hello = audio(5, 1);
        assert_eq!(
            exchange(&c, &c, &hello).map(|b| rtp::read_rtp(&b).unwrap().payload_type),
            Some(0)
        );
        for p in dtmf::digit_packets(9, 100, 20, 10) {
            let mut pkt = [0u8; 16];
            rtp::write_rtp(&mut pkt, 5, 1, 800, 101, p.marker, &p.payload).unwrap();
            c.send_to(&pkt, node_addr).unwrap();
        }
        assert_eq!(
            events_rx.recv_timeout(Duration::from_secs(2)).unwrap(),
            (
                1,
                NodeEvent::Digit {
                    session: session(2),
                    digit: '9'
                }
            )
        );
        assert!(handle.send(NodeCommand::End {
            session: session(2),
        }));

        // Dead: nothing relayed, probes unanswered.
        handle.set_alive(false);
        a.send_to(&p, node_addr).unwrap();
        c.send_to(OPTIONS.as_bytes(), node_addr).unwrap();
        assert!(b.recv_from(&mut buf).is_err());
        // Prompt frames sent before the End may still be queued at c; no answer after them.
        while let Ok((n, _)) = c.recv_from(&mut buf) {
            assert!(rtp::looks_like_rtp(&buf[..n]), "a dead node answered");
        }
        handle.set_alive(true);
        let mut buf = [0u8; 2048];
        let mut again = None;
        for _ in 0..20 {
            a.send_to(&p, node_addr).unwrap();
            if let Ok((n, _)) = b.recv_from(&mut buf) {
                again = Some(buf[..n].to_vec());
                break;
            }
        }
        assert_eq!(again, Some(p));
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
        let s = handle.counters.load();
        assert!(
            s.packets_in >= 3 && s.options_answered >= 1 && s.digits == 1,
            "{s:?}"
        );
        assert!(handle.counters.dead_drops() >= 2);
        assert_eq!(s.sessions, 1);
    }

    /// A node whose media queue overflows (its thread held up while a generator floods it)
    /// still hears the Call Manager's probe: it comes on the twin connected to the Call
    /// Manager, not behind the media (where the full queue would drop it).
    #[test]
    fn a_probe_is_heard_while_the_media_queue_overflows() {
        let localhost = SocketAddr::from(([127, 0, 0, 1], 0));
        let (_handle, served) = bind(1, Role::Media, "media-1".into(), localhost).unwrap();
        let node_addr = served.0.addr();
        let cm = UdpSocket::bind(localhost).unwrap();
        cm.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let (events_tx, _events_rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (adds_tx, adds_rx) = std::sync::mpsc::channel();
        let pace = Arc::new(Pace::default());
        let thread = spawn(
            vec![served],
            adds_rx,
            events_tx,
            Arc::clone(&pace),
            cm.local_addr().unwrap(),
            Arc::clone(&stop),
        )
        .unwrap();
        adds_tx
            .send(ToThread::Stall(Duration::from_millis(800)))
            .unwrap();
        std::thread::sleep(Duration::from_millis(60));
        // Datagrams the probe's size, one by one, until the queue has refused some for a while.
        let flood = UdpSocket::bind(localhost).unwrap();
        let p = vec![0x80u8; OPTIONS.len()];
        let burst: Vec<(SocketAddr, &[u8])> = (0..1024).map(|_| (node_addr, &p[..])).collect();
        let mut sender = pbxlab_udp::Sender::default();
        let mut sent = 0u64;
        for _ in 0..100 {
            sent += (burst.len() - sender.send_all(&flood, &burst).len()) as u64;
        }
        cm.send_to(OPTIONS.as_bytes(), node_addr).unwrap();
        let mut buf = [0u8; 2048];
        let (n, from) = cm.recv_from(&mut buf).expect("the probe answered");
        assert_eq!(from, node_addr);
        assert_eq!(sip::parse_datagram(&buf[..n]).unwrap().code(), Some(200));
        // The media queue did overflow.
        let settled = Instant::now() + Duration::from_secs(3);
        while pace.figures().kernel_drops == 0 && Instant::now() < settled {
            std::thread::sleep(Duration::from_millis(20));
            let _ = flood.send_to(&p, node_addr);
        }
        assert!(pace.figures().kernel_drops > 0, "{sent} sent, none dropped");
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
    }
}
