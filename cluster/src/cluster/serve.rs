//! One Call Manager's thread: its sockets (the virtual IP's while it holds it, its own
//! replication socket), its timers, and the node events and operator requests it takes while
//! it serves.

use super::*;

/// How often the status snapshot is refreshed.
pub(super) const STATUS_EVERY: Duration = Duration::from_millis(100);
/// The longest the thread sleeps, so `stop` and node events are seen promptly.
const MAX_WAIT: Duration = Duration::from_millis(20);
/// While datagrams keep arriving, read on a 1 ms grid instead of waking for each one; the
/// kernel's arrival timestamps keep every time exact.
const BUSY_TICK: Duration = Duration::from_millis(1);

/// What one Call Manager's thread serves with.
pub(super) struct CmThread {
    pub(super) me: usize,
    pub(super) replica: Replica,
    /// The control link of nodes in their own processes, used while this replica serves.
    pub(super) hub: Hub,
    /// The virtual IP's socket, if this replica holds it from the start.
    pub(super) vip: Option<UdpSocket>,
    /// Its own replication socket (a group of several).
    pub(super) peer: Option<UdpSocket>,
}

/// The virtual IP's socket while this replica holds it.
struct Vip {
    socket: mio::net::UdpSocket,
    receiver: pbxlab_udp::Receiver,
    drops: u32,
}

const VIP: Token = Token(0);
const PEER: Token = Token(1);

impl Vip {
    fn new(socket: UdpSocket, poll: &Poll, started: Instant) -> io::Result<Vip> {
        socket.set_nonblocking(true)?;
        let mut socket = mio::net::UdpSocket::from_std(socket);
        poll.registry()
            .register(&mut socket, VIP, Interest::READABLE)?;
        // 50,000 users registering at once arrive in bursts; a small buffer would drop them.
        let _ = pbxlab_udp::set_buffer_sizes(&socket, 8 << 20);
        let receiver = pbxlab_udp::Receiver::new(&socket, started)?;
        Ok(Vip {
            socket,
            receiver,
            drops: 0,
        })
    }
}

/// What is still queued on the virtual IP's socket as it closes reached the address after
/// this replica stopped serving, and the kernel drops it with the socket: counted with the
/// datagrams nobody served.
fn unserved(v: &Vip, buf: &mut [u8], shared: &Shared) {
    let mut n = 0;
    while n < 1 << 20 && v.socket.recv_from(buf).is_ok() {
        n += 1;
    }
    group::count_lost(shared, n);
}

/// One Call Manager's thread: its datagrams (the virtual IP's while it holds it, its
/// replication socket's), its timers, node events and operator requests while it serves.
pub(super) fn serve(t: CmThread, shared: &Shared, stop: &AtomicBool) -> io::Result<()> {
    let CmThread {
        me,
        mut replica,
        mut hub,
        vip,
        peer,
    } = t;
    let group = replica.in_group();
    let Some(slot) = shared.cms.get(me) else {
        return Ok(());
    };
    let name = slot.name.as_str();
    let own = slot.addr();
    if let Some(ns) = &slot.netns {
        pbxlab_udp::enter_netns(ns)
            .map_err(|e| io::Error::new(e.kind(), format!("{name}: {}: {e}", ns.display())))?;
    }
    // In a namespace, the replica binds its own address there.
    let peer = match (peer, own) {
        (None, Some(own)) if group => Some(UdpSocket::bind(own)?),
        (peer, _) => peer,
    };
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(8);
    let started = shared.epoch;
    let mut vip = vip.map(|s| Vip::new(s, &poll, started)).transpose()?;
    // The first active holds the virtual IP from the start, before its first lease.
    let mut first_lease = vip.is_some();
    let mut peer = match peer {
        Some(s) => {
            s.set_nonblocking(true)?;
            // A snapshot comes as a window of 60 KB chunks: more than a default buffer holds.
            let _ = pbxlab_udp::set_buffer_sizes(&s, 8 << 20);
            let mut s = mio::net::UdpSocket::from_std(s);
            poll.registry().register(&mut s, PEER, Interest::READABLE)?;
            Some(s)
        }
        None => None,
    };
    let mut peer_buf = vec![0u8; 65_536];
    let mut sender = pbxlab_udp::Sender::default();
    let mut next_status = Duration::ZERO;
    let mut handles = shared.handles.lock().map(|h| h.clone()).unwrap_or_default();
    // How many handles the shared list had when this thread last took it.
    let mut handles_seen = handles.len();
    let mut send_errors = 0u64;
    let mut bind_waits = 0u64;
    let mut pending = Pending::default();
    let mut lines: Vec<String> = Vec::new();
    let mut was_serving = false;
    let mut last_role = replica.role();
    let mut snapshots_taken = replica.stats.snapshots_taken;
    // In a namespace: whether the virtual IP's address is on one of its interfaces yet.
    let mut vip_here = false;
    let (mut vip_check, mut vip_wait, mut vip_warned) = (0, None, false);
    // The earliest timer when the thread last went to sleep.
    let mut due = Nanos::MAX;
    while !stop.load(Ordering::Relaxed) {
        // The clock is read before the sockets: every datagram that arrived by `now` is
        // handled before `advance(now)` judges probe timeouts, so a thread that was held up
        // between the two never takes an answer sitting in its buffer for a dead node.
        let now = elapsed(started);
        shared.cm_pace.on_time(due, now);
        let cut = slot.is_cut();
        if group {
            if slot.resign.swap(false, Ordering::Relaxed) {
                replica.resign();
            }
            let serving = replica.serving(now);
            // Only until its first lease could have come: one cut off from the start must not
            // keep the address from the others.
            first_lease &=
                !serving && replica.role() == crate::ha::Role::Active && now < slot.cfg.silence();
            if serving && vip.is_none() {
                // The old active's lease is out, so its socket is closed or about to be: the
                // kernel says which.
                let bound = if slot.vrrp {
                    pbxlab_udp::bind_free(shared.sip)
                } else {
                    UdpSocket::bind(shared.sip)
                };
                match bound {
                    Ok(s) => vip = Some(Vip::new(s, &poll, started)?),
                    Err(e) if e.kind() == ErrorKind::AddrInUse => bind_waits += 1,
                    Err(e) => return Err(e),
                }
            } else if !serving
                && !first_lease
                && let Some(mut v) = vip.take()
            {
                let _ = poll.registry().deregister(&mut v.socket);
                unserved(&v, &mut peer_buf, shared);
            }
        }
        if slot.vrrp {
            if vip.is_none() {
                vip_here = false;
                vip_wait = None;
            } else if !vip_here || now >= vip_check {
                // Bound without IP_FREEBIND only where the address is local; checked at once
                // while it is awaited, then every 100 ms (keepalived may take it away).
                let here = UdpSocket::bind(SocketAddr::new(shared.sip.ip(), 0)).is_ok();
                vip_check = now + 100_000_000;
                if here != vip_here {
                    if here {
                        hub.hint_now();
                    }
                    let what = if here {
                        "has the virtual IP's address"
                    } else {
                        "lost the virtual IP's address"
                    };
                    lines.push(line(now, name, what));
                }
                vip_here = here;
                let since = *vip_wait.get_or_insert(now);
                if here {
                    vip_wait = None;
                } else if now.saturating_sub(since) >= 2_000_000_000 && !vip_warned {
                    vip_warned = true;
                    lines.push(line(
                        now,
                        name,
                        "serves, but the virtual IP's address has not reached its namespace \
                         in 2 s: its timers wait; is keepalived running there and following \
                         its track file?",
                    ));
                }
            }
            replica.hold_timers(!vip_here);
        }
        let mut busy = false;
        if let Some(v) = vip.as_mut() {
            let mut lost = 0;
            // Link datagrams (nodes in their own processes) share the SIP socket; their magic
            // cannot start SIP.
            let read = v.receiver.drain(&v.socket, |at, from, bytes| {
                if cut {
                    lost += 1;
                } else if link::is_link(bytes) {
                    hub.handle(&mut replica, at, from, bytes);
                } else {
                    replica.handle(at, from, bytes);
                }
            });
            group::count_lost(shared, lost);
            shared
                .cm_pace
                .socket_drops(&mut v.drops, v.receiver.kernel_drops());
            busy = matches!(read, Ok(n) if n > 0);
        }
        if let Some(p) = peer.as_mut() {
            loop {
                match p.recv_from(&mut peer_buf) {
                    Ok((n, _)) => {
                        if cut {
                            group::count_lost(shared, 1);
                        } else if let Some(d) = peer_buf.get(..n) {
                            // Timed only while a snapshot is or may be coming: its last chunk is
                            // read here.
                            let began = (replica.taking_snapshot()
                                || replica.role() == crate::ha::Role::Syncing)
                                .then(Instant::now);
                            replica.on_peer(now, d);
                            if let Some(began) = began
                                && replica.stats.snapshots_taken > snapshots_taken
                            {
                                snapshots_taken = replica.stats.snapshots_taken;
                                let text = format!(
                                    "took a snapshot of {:.1} MB (read in {} ms)",
                                    replica.stats.snapshot_bytes as f64 / 1e6,
                                    began.elapsed().as_millis()
                                );
                                lines.push(line(now, name, &text));
                            }
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        // New handles come only from the serving thread (the start, `add_node`, its hub's joins
        // and the nodes it took over), so the local list and the shared one are extended
        // together.
        for joined in hub.take_joined() {
            if let Ok(mut shared) = shared.handles.lock() {
                // A node taken over again: its handle replaces the last active's.
                shared.retain(|h| h.id != joined.id);
                shared.push(joined.clone());
            }
            handles.retain(|h| h.id != joined.id);
            handles.push(joined);
        }
        if replica.serving(now) && !cut {
            // A server another replica added while it served: its handle is in the shared
            // list, and this one now sends it the commands. An add a takeover lost left a
            // handle whose number the next add is given again: the newest handle of a number
            // is the one the Call Manager's table means.
            if group
                && let Ok(all) = shared.handles.lock()
                && (all.len() != handles_seen || !was_serving)
            {
                handles_seen = all.len();
                let mut newest: Vec<NodeHandle> = Vec::with_capacity(all.len());
                for h in all.iter().rev() {
                    if !newest.iter().any(|n| n.id == h.id) {
                        newest.push(h.clone());
                    }
                }
                newest.reverse();
                handles = newest;
            }
            if let Ok(rx) = shared.node_events.try_lock() {
                while let Ok((id, event)) = rx.try_recv() {
                    replica.node_event(now, ServerId(id), event);
                }
            }
            if let Ok(rx) = shared.requests_rx.try_lock() {
                let at = Instant::now();
                while let Ok((deadline, request)) = rx.try_recv() {
                    if at > deadline {
                        continue;
                    }
                    handle_request(
                        &mut replica,
                        now,
                        request,
                        &mut pending,
                        shared,
                        &mut handles,
                    );
                }
            }
        }
        replica.advance(now);
        if cut {
            // Lost on the way, as everything a cut-off host sends is.
            replica.transmit_all(|_| {});
            replica.take_commands();
        } else {
            if let Some(v) = vip.as_ref() {
                replica.transmit_all(|datagrams| {
                    // A send error (full buffer, unreachable peer) costs that datagram only;
                    // SIP's retransmissions are there for exactly that. They are counted for
                    // the status.
                    send_errors += sender.send_all(&v.socket, datagrams).len() as u64;
                    if group
                        && datagrams.iter().any(|(_, b)| !b.starts_with(b"OPTIONS "))
                        && let Ok(mut w) = shared.vip.lock()
                    {
                        w.sent(now, me);
                    }
                });
            }
            for (server, command) in replica.take_commands() {
                if let Some(h) = handles.iter().find(|h| h.id == server.0) {
                    let _ = h.send(command);
                }
            }
        }
        if !pending.waits.is_empty()
            && let Some(cm) = replica.cm()
        {
            let at = Instant::now();
            pending.waits.retain(|w| {
                let outcome = if w.holds(cm, &handles) {
                    Ok(())
                } else if at >= w.deadline {
                    Err(())
                } else {
                    return true;
                };
                let _ = w.reply.send(outcome);
                false
            });
        }
        if replica.serving(now) && !cut {
            // Remote nodes' commands, routed into their channels just now, go on their links.
            hub.advance(&mut replica, now);
            if let Some(v) = vip.as_ref() {
                hub.transmit_all(|datagrams| {
                    let _ = sender.send_all(&v.socket, datagrams);
                });
            }
        } else if group {
            // The next active makes its own links.
            hub.forget();
        }
        lines.extend(hub.take_log());
        let taken = replica.take_records(&mut lines);
        record(taken, shared);
        if group && !cut {
            if let Some(p) = peer.as_ref() {
                let (sent, began) = (replica.stats.snapshots_sent, Instant::now());
                let out = replica.take_peer(now);
                if replica.stats.snapshots_sent > sent {
                    let text = format!(
                        "sent a snapshot of {:.1} MB (written in {} ms)",
                        replica.stats.snapshot_bytes as f64 / 1e6,
                        began.elapsed().as_millis()
                    );
                    lines.push(line(now, name, &text));
                }
                for (to, bytes) in out {
                    let _ = p.send_to(&bytes, to);
                }
            }
        } else if group {
            replica.take_peer(now);
        }
        let serving = replica.serving(now);
        // First: a replica that stopped serving may have stepped down and taken a newer
        // active's commit index, which says nothing of inputs only it took.
        if group && was_serving && !serving {
            hand_back(name, &mut pending, shared);
        }
        if serving && !pending.answers.is_empty() {
            let (commit, term) = (replica.commit(), replica.term());
            for a in std::mem::take(&mut pending.answers) {
                if a.term != term {
                    (a.reply)(Some(format!(
                        "{name} lost its place before a standby held the action: it may not \
                         have been carried out; look at the status and try again"
                    )));
                } else if a.seq <= commit {
                    (a.reply)(None);
                } else {
                    pending.answers.push(a);
                }
            }
        }
        let role = replica.role();
        if group && (serving != was_serving || role != last_role) {
            if serving != was_serving {
                if let Ok(mut w) = shared.vip.lock() {
                    w.changed(now, me, serving);
                }
                if let Err(e) = slot.track(serving.then(|| replica.term())) {
                    lines.push(line(
                        now,
                        name,
                        &format!("cannot write its track file: {e}"),
                    ));
                }
                let what = if serving {
                    "serves the virtual IP"
                } else {
                    "stopped serving"
                };
                lines.push(line(
                    now,
                    name,
                    &format!("{what} ({}, term {})", role.name(), replica.term()),
                ));
            }
            was_serving = serving;
            last_role = role;
            next_status = Duration::ZERO;
        }
        if !lines.is_empty()
            && let Ok(mut log) = shared.log.lock()
        {
            log.append(&mut lines);
        }
        let since = started.elapsed();
        if since >= next_status || !pending.publish.is_empty() {
            next_status = since + STATUS_EVERY;
            let mut row = CmStatus::of(&replica, name, own, now);
            row.bind_waits = bind_waits;
            if let Ok(mut r) = slot.row.lock() {
                *r = row;
            }
            // A process's only replica says what it sees: nothing, unless it is the active.
            if (role == crate::ha::Role::Active || shared.process)
                && group
                && let Ok(mut b) = shared.behind.lock()
            {
                for (i, v) in b.iter_mut().enumerate() {
                    *v = u8::try_from(i).ok().and_then(|i| replica.behind(i));
                }
            }
            if (serving || !group || shared.process)
                && let Some(cm) = replica.cm()
            {
                publish_status(cm, &handles, since, send_errors, shared, Some(&hub));
            }
            for reply in pending.publish.drain(..) {
                let _ = reply.send(());
            }
        }
        due = replica.next_deadline();
        let mut until = Duration::from_nanos(due.saturating_sub(elapsed(started)));
        if group && replica.serving(now) && (vip.is_none() || (slot.vrrp && !vip_here)) {
            until = until.min(BUSY_TICK);
        }
        if busy {
            let tick = BUSY_TICK.as_nanos() as u64;
            let nap = tick - started.elapsed().as_nanos() as u64 % tick;
            std::thread::sleep(Duration::from_nanos(nap).min(until));
        } else if let Err(e) = poll.poll(&mut events, Some(until.min(MAX_WAIT)))
            && e.kind() != ErrorKind::Interrupted
        {
            return Err(e);
        }
    }
    let now = elapsed(started);
    if group && let Some(v) = vip.as_ref() {
        unserved(v, &mut peer_buf, shared);
    }
    let taken = replica.take_records(&mut lines);
    record(taken, shared);
    if group {
        // Stopped: what it still held is the next active's to judge or to refuse.
        hand_back(name, &mut pending, shared);
    }
    if !lines.is_empty()
        && let Ok(mut log) = shared.log.lock()
    {
        log.append(&mut lines);
    }
    if (replica.serving(now) || !group)
        && let Some(cm) = replica.cm()
    {
        publish_status(
            cm,
            &handles,
            started.elapsed(),
            send_errors,
            shared,
            Some(&hub),
        );
    }
    Ok(())
}

/// A log line of this Call Manager's.
fn line(now: Nanos, name: &str, what: &str) -> String {
    format!(
        "{:.3}s {name} {what}",
        Duration::from_nanos(now).as_secs_f64()
    )
}

/// The serving Call Manager's view, as the status everyone reads.
fn publish_status(
    cm: &CallManager,
    handles: &[NodeHandle],
    since: Duration,
    send_errors: u64,
    shared: &Shared,
    hub: Option<&Hub>,
) {
    let snapshot = snapshot(cm, handles, since, &[], send_errors, shared.pace());
    let snapshot = Status {
        link: hub.map(Hub::stats).unwrap_or_default(),
        ..snapshot
    };
    if let Ok(mut s) = shared.status.lock() {
        *s = snapshot;
    }
}

/// Adds an in-process server on `socket`: numbered by the balancer, its node made and handed to
/// the node thread, its handle in both lists before any command can be routed to it. If any
/// step fails, the server leaves the balancer again rather than taking sessions it cannot
/// serve.
fn add_node(
    replica: &mut Replica,
    now: super::Nanos,
    shared: &Shared,
    handles: &mut Vec<NodeHandle>,
    add: AddNode,
) -> Result<ServerId, String> {
    let AddNode {
        name,
        role,
        socket,
        capacity,
        ..
    } = add;
    let name = name.as_str();
    let addr = socket.local_addr().map_err(|e| e.to_string())?;
    let id = replica.add_node(
        now,
        crate::cm::NewNode {
            name: name.to_owned(),
            role,
            addr,
            capacity,
            place: Place::InProcess,
            instance: 0,
        },
    )?;
    let handed = node::adopt(id.0, role, name.to_owned(), socket)
        .map_err(|e| e.to_string())
        .and_then(|(handle, parts)| {
            let adds = shared
                .adds
                .lock()
                .map_err(|_| OpError::Stopped.to_string())?;
            let (node, socket, control) = parts;
            adds.send(ToThread::Add(Box::new((node, socket, control))))
                .map_err(|_| OpError::Stopped.to_string())?;
            Ok(handle)
        });
    match handed {
        Ok(handle) => {
            if let Ok(mut h) = shared.handles.lock() {
                h.push(handle.clone());
            }
            handles.push(handle);
            Ok(id)
        }
        Err(reason) => {
            let _ = replica.admin(now, id, Verb::Remove);
            Err(reason)
        }
    }
}

/// Operator actions waiting on the Call Manager's thread at once, at most; more are refused.
const MAX_WAITS: usize = 1_024;

/// An operator action's answer, held until the input it answers is committed (a standby holds
/// it): "done" must not be said of an action a takeover could lose.
struct Answer {
    seq: u64,
    /// The term it was taken in: only that term's commit index speaks for it.
    term: u64,
    reply: Reply,
}

/// An answer on its way to its requester: called with `None` it sends the answer, with
/// `Some(why)` that error instead (it may not have been carried out).
type Reply = Box<dyn FnOnce(Option<String>)>;

fn reply<T: 'static>(to: Sender<Result<T, String>>, answer: Result<T, String>) -> Reply {
    Box::new(move |failed: Option<String>| {
        let _ = to.send(failed.map_or(answer, Err));
    })
}

/// What a serving Call Manager's thread keeps for requests still under way: conditions to
/// judge, status reads to answer once published, and operator actions' answers, each waiting
/// until a standby holds its input.
#[derive(Default)]
struct Pending {
    waits: Vec<Await>,
    publish: Vec<Sender<()>>,
    answers: Vec<Answer>,
}

/// Hands a request to whichever Call Manager serves (now, or once one does).
pub(super) fn requeue(shared: &Shared, request: Request) -> Result<(), ()> {
    shared
        .requests
        .lock()
        .map_err(|_| ())?
        .send((Instant::now() + REPLY_LIMIT, request))
        .map_err(|_| ())
}

/// A replica that stops serving hands its waits back for the next one to judge, and answers
/// the actions it could not see committed: they may or may not survive the takeover.
fn hand_back(name: &str, pending: &mut Pending, shared: &Shared) {
    for w in pending.waits.drain(..) {
        let _ = requeue(shared, Request::Await(w));
    }
    for reply in pending.publish.drain(..) {
        let _ = reply.send(());
    }
    for a in pending.answers.drain(..) {
        (a.reply)(Some(format!(
            "{name} stopped serving before a standby held the action: it may not have been \
             carried out; look at the status and try again"
        )));
    }
}

fn handle_request(
    replica: &mut Replica,
    now: super::Nanos,
    request: Request,
    pending: &mut Pending,
    shared: &Shared,
    handles: &mut Vec<NodeHandle>,
) {
    let Pending {
        waits,
        publish,
        answers,
    } = pending;
    // A requester that gave up waiting is no reason to stop serving.
    match request {
        Request::Rows(reply) => {
            let at = Duration::from_nanos(now);
            let rows = replica.cm().map_or_else(Vec::new, |cm| {
                cm.nodes()
                    .iter()
                    .filter_map(|n| node_row(cm, handles, n, at))
                    .collect()
            });
            let _ = reply.send(rows);
        }
        Request::Census(reply) => {
            if let Some(cm) = replica.cm() {
                let _ = reply.send(cm.census(now));
            }
        }
        Request::Publish(reply) => publish.push(reply),
        Request::Await(wait) => {
            if waits.len() < MAX_WAITS {
                waits.push(wait);
            } else {
                let _ = wait.reply.send(Err(()));
            }
        }
        Request::Admin(server, action, reply) => {
            let answer = replica.admin(now, server, action);
            hold(replica, answers, self::reply(reply, answer));
        }
        Request::Add(add) => {
            let to = add.reply.clone();
            let added = add_node(replica, now, shared, handles, add);
            hold(replica, answers, self::reply(to, added));
        }
        Request::Whitelist(change, reply) => {
            let changed = match change {
                Some((ip, add)) => replica.whitelist(now, ip, add),
                None => Ok(()),
            };
            let list = changed.map(|()| {
                replica
                    .cm()
                    .map(|c| c.whitelist().to_vec())
                    .unwrap_or_default()
            });
            hold(replica, answers, self::reply(reply, list));
        }
    }
}

/// An action's answer goes once a standby holds its input; alone, at once.
fn hold(replica: &Replica, answers: &mut Vec<Answer>, reply: Reply) {
    if replica.in_group() {
        answers.push(Answer {
            seq: replica.applied(),
            term: replica.term(),
            reply,
        });
    } else {
        reply(None);
    }
}

/// Moves what the Call Manager recorded into the shared records.
fn record(taken: Records, shared: &Shared) {
    if taken.events.is_empty() && taken.reassigned.is_empty() && taken.dropped.is_empty() {
        return;
    }
    let Ok(mut r) = shared.records.lock() else {
        return;
    };
    r.events.extend(taken.events);
    r.reassigned.extend(taken.reassigned);
    r.dropped.extend(taken.dropped);
}
