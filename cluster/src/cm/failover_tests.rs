//! Failover by role, driven like `cm_tests`: a fake clock, scripted SIP peers, and the node
//! commands read back. Each test fails (or operates on) one node and checks what its callers
//! see: a media session on a healthy node, a re-INVITE naming it, the order and grouping the
//! role promises (a meeting room whole, a queue first come first served, an IVR caller back at
//! the menu), the alert for the roles that raise one, and calls ended only when nothing has room.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use pbxlab_balancer::{
    Balancer, EventKind, FailoverMode, HealthConfig, Policy, Role, ServerSpec, ServerState,
};
use pbxlab_proto::builder::write_response;
use pbxlab_proto::sdp::SessionDescription;
use pbxlab_proto::sip::{HeaderName, Message, Method};
use pbxlab_scenario::Verb;

use super::tests::{CALLEE, CM, MS, UA, addr, offer, parse, register, register_out, request, sent};
use super::*;

type Out = Vec<(SocketAddr, Vec<u8>)>;

/// The one agent of queue 1.
const AGENT: u32 = 1000;

/// A Call Manager over `nodes` (role and capacity each), named `{role}-{i}` and listening on
/// 127.0.0.1:2000i; pools of the roles in `operator` wait for an operator after a failure.
/// Users 1000..1040; queue 1's one agent is user 1000.
pub(super) fn cluster(nodes: &[(Role, u32)], operator: &[Role]) -> CallManager {
    let health =
        HealthConfig::new(Duration::from_secs(1), Duration::from_millis(500), 3, 2).unwrap();
    let mut b = Balancer::new(health);
    for role in Role::ALL {
        let policy = if matches!(role, Role::Queue | Role::Meeting) {
            Policy::Affinity
        } else {
            Policy::LeastLoaded
        };
        let mode = if operator.contains(&role) {
            FailoverMode::Operator
        } else {
            FailoverMode::Auto
        };
        b.set_pool(role, policy, mode);
    }
    let mut specs = Vec::new();
    for (i, &(role, capacity)) in nodes.iter().enumerate() {
        let name = format!("{}-{i}", role.name());
        let id = b
            .add_server(ServerSpec {
                name: name.clone(),
                role,
                capacity,
                weight: 1,
            })
            .unwrap();
        specs.push(NodeSpec {
            id,
            name,
            role,
            addr: addr(&format!("127.0.0.1:{}", 20000 + i)),
            place: crate::node::Place::InProcess,
            instance: 0,
        });
    }
    let mut cfg = Config::new(addr(CM));
    cfg.users = 40;
    cfg.queues = 1;
    cfg.agents_per_queue = 1;
    cfg.whitelist = vec![addr(UA).ip(), addr(CALLEE).ip()];
    // The scripted phones on 127.0.0.1 call through a trusted edge, as behind a Kamailio that
    // authenticated them: these tests are about the calls. `auth_tests` calls from elsewhere.
    cfg.trust.trusted = vec![addr(UA).ip()];
    CallManager::new(cfg, b, specs)
}

fn node(cm: &CallManager, id: ServerId) -> SocketAddr {
    cm.node_addr(id).unwrap()
}

fn server_of(cm: &CallManager, at: SocketAddr) -> ServerId {
    cm.nodes().iter().find(|n| n.addr == at).unwrap().id
}

/// Where caller `i` (or callee `i`) wants its RTP: a port of its own, so a leg in a node
/// command tells whose it is.
fn caller_rtp(i: u32) -> SocketAddr {
    addr(&format!("127.0.0.1:{}", 30000 + 2 * i))
}

fn callee_rtp(i: u32) -> SocketAddr {
    addr(&format!("127.0.0.1:{}", 31000 + 2 * i))
}

/// A 200 answering `req` from a scripted peer, with an SDP answer when it is an INVITE.
fn ok_for(req: &Message<'_>, tag: &str, contact: &str, rtp: SocketAddr) -> Vec<u8> {
    let mut ok = Vec::new();
    if req.method() == Some(Method::Invite) {
        write_response(
            &mut ok,
            req,
            200,
            "OK",
            Some(tag),
            &[("Contact", contact), ("Content-Type", "application/sdp")],
            offer(&rtp.to_string(), 1).as_bytes(),
        );
    } else {
        write_response(&mut ok, req, 200, "OK", Some(tag), &[], b"");
    }
    ok
}

/// What the Call Manager sends now, handed to peers as [`answer_peers`] does.
fn exchange(cm: &mut CallManager, now: Nanos) -> Out {
    let pending = sent(cm);
    answer_peers(cm, now, pending)
}

/// Hands `pending` (what the Call Manager sent) to scripted peers that accept every in-dialog
/// request, re-INVITE or BYE, at `now`, and again with whatever that makes the Call Manager
/// send, until it sends nothing more. Returns everything it sent.
fn answer_peers(cm: &mut CallManager, now: Nanos, mut pending: Out) -> Out {
    let mut all = Vec::new();
    while !pending.is_empty() {
        for (to, bytes) in &pending {
            let m = parse(bytes);
            let in_dialog = m.to().and_then(|t| t.tag()).is_some();
            if in_dialog && matches!(m.method(), Some(Method::Invite | Method::Bye)) {
                // The answer's SDP is not read again: the leg's media address stays the one it
                // gave first, as every peer here keeps its port.
                let ok = ok_for(&m, "peer", &format!("<sip:peer@{to}>"), *to);
                cm.handle(now, *to, &ok);
            }
        }
        all.append(&mut pending);
        pending = sent(cm);
    }
    all
}

/// Re-INVITEs in `out`: (to, Call-ID, the node their SDP names).
fn reinvites(out: &Out) -> Vec<(SocketAddr, String, SocketAddr)> {
    out.iter()
        .filter_map(|(to, b)| {
            let m = parse(b);
            if m.method() != Some(Method::Invite) || m.to()?.tag().is_none() {
                return None;
            }
            let media = SessionDescription::parse(m.body()).ok()?.audio_addr()?;
            Some((*to, m.call_id()?.to_owned(), media))
        })
        .collect()
}

/// BYEs in `out`: (to, Call-ID).
fn byes(out: &Out) -> Vec<(SocketAddr, String)> {
    out.iter()
        .filter_map(|(to, b)| {
            let m = parse(b);
            (m.method() == Some(Method::Bye)).then(|| (*to, m.call_id().unwrap_or("").to_owned()))
        })
        .collect()
}

fn alerts(events: &[Event], server: ServerId) -> usize {
    events
        .iter()
        .filter(|e| e.server == server && matches!(e.kind, EventKind::Alert(_)))
        .count()
}

/// ACKs the Call Manager's 200 to caller `user`'s INVITE `call_id`.
fn ack(cm: &mut CallManager, now: Nanos, user: u32, call_id: &str, ok: &Message<'_>) {
    let to = ok.header(HeaderName::To).unwrap();
    let ack = String::from_utf8(request(
        "ACK",
        "sip:cm@127.0.0.1:5060",
        &user.to_string(),
        call_id,
        1,
        "",
        "",
    ))
    .unwrap()
    .replace("To: <sip:cm@127.0.0.1:5060>", &format!("To: {to}"));
    cm.handle(now, addr(UA), ack.as_bytes());
}

/// A call between two registered users as the test knows it.
#[derive(Debug)]
pub(super) struct UserCall {
    pub(super) call_id: String,
    pub(super) b_call_id: String,
    pub(super) a_rtp: SocketAddr,
    pub(super) b_rtp: SocketAddr,
    pub(super) server: ServerId,
    /// The To of the caller's dialog, with the Call Manager's tag.
    pub(super) a_to: String,
}

/// User `1010 + i` calls user `1020 + i` (registered first), who answers; the caller ACKs.
pub(super) fn user_call(cm: &mut CallManager, now: Nanos, i: u32) -> UserCall {
    let (caller, callee) = (1010 + i, 1020 + i);
    assert_eq!(
        register(cm, now, callee, CALLEE, &format!("pw-{callee}")),
        200
    );
    let call_id = format!("u{i}");
    let (a_rtp, b_rtp) = (caller_rtp(i), callee_rtp(i));
    cm.handle(
        now,
        addr(UA),
        &request(
            "INVITE",
            &format!("sip:{callee}@pbxlab.test"),
            &caller.to_string(),
            &call_id,
            1,
            "Content-Type: application/sdp\r\n",
            &offer(&a_rtp.to_string(), i),
        ),
    );
    let out = sent(cm);
    let (_, invite) = out
        .iter()
        .find(|(to, b)| *to == addr(CALLEE) && b.starts_with(b"INVITE"))
        .expect("INVITE to the callee");
    let invite = parse(invite);
    let b_call_id = invite.call_id().unwrap().to_owned();
    let contact = format!("<sip:{callee}@{CALLEE}>");
    let ok = ok_for(&invite, &format!("cal{i}"), &contact, b_rtp);
    cm.handle(now, addr(CALLEE), &ok);
    let out = sent(cm);
    let (_, answer) = out
        .iter()
        .find(|(to, b)| *to == addr(UA) && b.starts_with(b"SIP/2.0 200"))
        .expect("200 to the caller");
    let a_to = parse(answer)
        .header(HeaderName::To)
        .unwrap_or_default()
        .to_owned();
    ack(cm, now, caller, &call_id, &parse(answer));
    let cmds: Vec<_> = cm.node_commands().collect();
    let server = match &cmds[..] {
        [(s, NodeCommand::Relay { a, b, .. })] => {
            assert_eq!((a.remote, b.remote), (a_rtp, b_rtp));
            *s
        }
        other => panic!("{other:?}"),
    };
    UserCall {
        call_id,
        b_call_id,
        a_rtp,
        b_rtp,
        server,
        a_to,
    }
}

/// User `1010 + i` dials `target` (ivr-1, queue-1, meeting-x), which answers at once, and
/// ACKs. Returns the node command that placed the call.
fn service_call(cm: &mut CallManager, now: Nanos, target: &str, i: u32) -> (ServerId, NodeCommand) {
    let user = 1010 + i;
    let call_id = format!("s{i}");
    cm.handle(
        now,
        addr(UA),
        &request(
            "INVITE",
            &format!("sip:{target}@pbxlab.test"),
            &user.to_string(),
            &call_id,
            1,
            "Content-Type: application/sdp\r\n",
            &offer(&caller_rtp(i).to_string(), i),
        ),
    );
    let out = sent(cm);
    let ok = parse(&out[0].1);
    assert_eq!(ok.code(), Some(200), "{target}");
    ack(cm, now, user, &call_id, &ok);
    let mut cmds: Vec<_> = cm.node_commands().collect();
    assert_eq!(cmds.len(), 1, "{cmds:?}");
    cmds.remove(0)
}

/// Probe rounds every second from `start`, every node answering but the one at `dead`, until
/// `server` is down. Returns when that happened and what else the Call Manager sent.
fn probe_until_down(
    cm: &mut CallManager,
    start: Nanos,
    dead: SocketAddr,
    server: ServerId,
) -> (Nanos, Out) {
    let mut other = Vec::new();
    for round in 0..10 {
        let now = start + round * NS;
        cm.advance(now);
        for (to, bytes) in sent(cm) {
            let p = parse(&bytes);
            if p.method() != Some(Method::Options) {
                other.push((to, bytes));
                continue;
            }
            if to != dead {
                let ok = ok_for(&p, "n", "<sip:n@127.0.0.1>", to);
                cm.handle(now + MS, to, &ok);
            }
        }
        let check = now + 500 * MS;
        cm.advance(check);
        other.extend(sent(cm));
        if cm.balancer().server(server).unwrap().state == ServerState::Down {
            return (check, other);
        }
    }
    panic!("{server:?} never went down");
}

#[test]
fn media_node_that_stops_answering_probes_has_every_call_moved_and_both_legs_reinvited() {
    let mut cm = cluster(&[(Role::Media, 10); 3], &[]);
    let calls: Vec<UserCall> = (0..6).map(|i| user_call(&mut cm, 0, i)).collect();
    let dead = calls[0].server;
    let (on_dead, elsewhere): (Vec<&UserCall>, Vec<&UserCall>) =
        calls.iter().partition(|c| c.server == dead);
    assert_eq!(
        on_dead.len(),
        2,
        "least loaded spreads 6 calls over 3 nodes"
    );

    // What each node was told to hold: two calls each.
    for id in 0..3 {
        assert_eq!(cm.media_sessions(ServerId(id)), 2);
    }
    let dead_addr = node(&cm, dead);
    let (down_at, out) = probe_until_down(&mut cm, NS, dead_addr, dead);
    let events = cm.take_events();
    assert!(
        events
            .iter()
            .any(|e| e.server == dead && e.kind == EventKind::Down)
    );
    assert_eq!(alerts(&events, dead), 0, "media failures raise no alert");
    let cmds: Vec<_> = cm.node_commands().collect();
    let sip = reinvites(&out);
    for c in &on_dead {
        let (to, b) = cmds
            .iter()
            .find_map(|(s, cmd)| match cmd {
                NodeCommand::Relay { a, b, .. } if a.remote == c.a_rtp => Some((*s, b)),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no Relay for {c:?} in {cmds:?}"));
        assert_ne!(to, dead);
        assert_eq!(cm.balancer().server(to).unwrap().state, ServerState::Online);
        assert_eq!(b.remote, c.b_rtp);
        let new_node = node(&cm, to);
        assert!(
            sip.contains(&(addr(UA), c.call_id.clone(), new_node)),
            "{sip:?}"
        );
        assert!(
            sip.contains(&(addr(CALLEE), c.b_call_id.clone(), new_node)),
            "{sip:?}"
        );
    }
    assert_eq!(
        sip.len(),
        2 * on_dead.len(),
        "only the moved calls: {sip:?}"
    );
    for c in &elsewhere {
        assert!(cmds.iter().all(|(_, cmd)| !matches!(
            cmd, NodeCommand::Relay { a, .. } if a.remote == c.a_rtp
        )));
    }

    answer_peers(&mut cm, down_at + 20 * MS, out);
    let reassigned = cm.take_reassigned();
    assert_eq!(
        reassigned,
        vec![
            Reassigned {
                at: down_at,
                took: 20 * MS
            };
            on_dead.len()
        ]
    );
    assert!(cm.take_dropped_calls().is_empty());
    let st = cm.stats();
    assert_eq!((st.moved, st.dropped, st.calls_active), (2, 0, 6));
    assert_eq!(cm.balancer().sessions_on(dead).len(), 0);
    // The moved calls are anchored where they went, none is left on the dead node.
    assert_eq!(cm.media_sessions(dead), 0);
    assert_eq!(
        (0..3)
            .map(|id| cm.media_sessions(ServerId(id)))
            .sum::<u64>(),
        6
    );
    cm.balancer().audit().unwrap();
}

/// The servers of the rooms in `joins`, by room.
fn room_servers(joins: &[(ServerId, NodeCommand)]) -> Vec<(u64, ServerId)> {
    joins
        .iter()
        .filter_map(|(s, c)| match c {
            NodeCommand::Join { room, .. } => Some((*room, *s)),
            _ => None,
        })
        .collect()
}

/// Joins four participants (users 1010..1014) to room `sales` and two (1014, 1015) to room
/// `ops`; returns the node of each room.
fn two_rooms(cm: &mut CallManager) -> (ServerId, ServerId) {
    let joins: Vec<_> = (0..6)
        .map(|i| {
            let room = if i < 4 {
                "meeting-sales"
            } else {
                "meeting-ops"
            };
            service_call(cm, Nanos::from(i) * MS, room, i)
        })
        .collect();
    let rooms = room_servers(&joins);
    let sales = rooms[0].1;
    let ops = rooms[4].1;
    assert!(rooms[..4].iter().all(|&(_, s)| s == sales));
    assert!(rooms[4..].iter().all(|&(_, s)| s == ops));
    (sales, ops)
}

#[test]
fn meeting_node_down_moves_its_room_whole_to_one_node_and_raises_the_alert() {
    let mut cm = cluster(&[(Role::Meeting, 20); 3], &[]);
    let (x, ops) = two_rooms(&mut cm);
    assert_ne!(x, ops, "the two rooms start on different nodes");
    let sales = room_key("sales");

    cm.admin(NS, x, Verb::Stop).unwrap();
    let events = cm.take_events();
    assert_eq!(alerts(&events, x), 1, "{events:?}");
    let cmds: Vec<_> = cm.node_commands().collect();
    let joins = room_servers(&cmds);
    assert_eq!(joins.len(), 4, "{cmds:?}");
    let y = joins[0].1;
    assert_ne!(y, x);
    assert!(joins.iter().all(|&(room, s)| room == sales && s == y));
    // Each participant keeps its own leg; nothing is sent about the other room.
    let legs: BTreeSet<_> = cmds
        .iter()
        .filter_map(|(_, c)| match c {
            NodeCommand::Join { leg, .. } => Some(leg.remote),
            _ => None,
        })
        .collect();
    assert_eq!(legs, (0..4).map(caller_rtp).collect());
    assert!(
        cmds.iter()
            .all(|(s, c)| matches!(c, NodeCommand::Join { .. }) || *s == x),
        "{cmds:?}"
    );

    let out = exchange(&mut cm, NS + MS);
    let sip = reinvites(&out);
    let expected: Vec<_> = (0..4)
        .map(|i| (addr(UA), format!("s{i}"), node(&cm, y)))
        .collect();
    assert_eq!(sip, expected, "every participant, in arrival order");
    assert_eq!(cm.take_reassigned().len(), 4);
    assert_eq!(cm.stats().meeting_split_joins, 0);
    assert_eq!(cm.rooms.get(&sales), Some(&vec![(y, 4)]));

    // A late participant finds the room where it lives now.
    let (s, _) = service_call(&mut cm, 2 * NS, "meeting-sales", 7);
    assert_eq!(s, y);
    assert_eq!(cm.stats().meeting_split_joins, 0);
    assert_eq!(cm.rooms.get(&sales), Some(&vec![(y, 5)]));
    cm.balancer().audit().unwrap();
}

#[test]
fn meeting_pool_in_operator_mode_only_alerts_until_the_node_is_disabled() {
    let mut cm = cluster(&[(Role::Meeting, 20); 3], &[Role::Meeting]);
    let (x, _) = two_rooms(&mut cm);
    let sales = room_key("sales");

    cm.admin(NS, x, Verb::Stop).unwrap();
    let events = cm.take_events();
    assert_eq!(alerts(&events, x), 1, "{events:?}");
    assert_eq!(cm.node_commands().count(), 0);
    assert!(
        sent(&mut cm).is_empty(),
        "no re-INVITE before the operator acts"
    );
    assert_eq!(cm.stats().moved, 0);
    assert_eq!(cm.balancer().sessions_on(x).len(), 4);
    assert_eq!(cm.balancer().server(x).unwrap().state, ServerState::Down);
    // The room is not split meanwhile: a newcomer is refused rather than placed elsewhere.
    cm.handle(
        NS,
        addr(UA),
        &request(
            "INVITE",
            "sip:meeting-sales@pbxlab.test",
            "1017",
            "late",
            1,
            "",
            &offer(&caller_rtp(7).to_string(), 7),
        ),
    );
    assert_eq!(parse(&sent(&mut cm)[0].1).code(), Some(503));

    cm.admin(2 * NS, x, Verb::Disable).unwrap();
    let cmds: Vec<_> = cm.node_commands().collect();
    let joins = room_servers(&cmds);
    assert_eq!(joins.len(), 4, "{cmds:?}");
    let y = joins[0].1;
    assert_ne!(y, x);
    assert!(joins.iter().all(|&(room, s)| room == sales && s == y));
    let out = exchange(&mut cm, 2 * NS + MS);
    let sip = reinvites(&out);
    assert_eq!(sip.len(), 4);
    assert!(sip.iter().all(|(_, _, at)| *at == node(&cm, y)));
    assert_eq!(cm.take_reassigned().len(), 4);
    assert_eq!(cm.stats().meeting_split_joins, 0);
    assert_eq!(cm.rooms.get(&sales), Some(&vec![(y, 4)]));
    assert_eq!(
        cm.balancer().server(x).unwrap().state,
        ServerState::Disabled
    );
    cm.balancer().audit().unwrap();
}

/// The agent answers the INVITE in `out` that offers it a caller; returns the caller's user
/// number and the agent's dialog (Call-ID, the Call Manager's From).
fn agent_answers(cm: &mut CallManager, now: Nanos, out: &Out) -> (u32, String, String) {
    let (_, invite) = out
        .iter()
        .find(|(to, b)| {
            let m = parse(b);
            *to == addr(CALLEE)
                && m.method() == Some(Method::Invite)
                && m.to().and_then(|t| t.tag()).is_none()
        })
        .expect("INVITE to the agent");
    let invite = parse(invite);
    let caller = invite
        .from()
        .and_then(|f| f.sip_uri().ok())
        .and_then(|u| u.user)
        .and_then(|u| u.parse().ok())
        .unwrap();
    let ok = ok_for(
        &invite,
        "ag",
        &format!("<sip:{AGENT}@{CALLEE}>"),
        callee_rtp(0),
    );
    cm.handle(now, addr(CALLEE), &ok);
    let dialog = (
        invite.call_id().unwrap().to_owned(),
        invite.header(HeaderName::From).unwrap().to_owned(),
    );
    (caller, dialog.0, dialog.1)
}

#[test]
fn queue_node_down_moves_waiting_callers_who_are_then_served_in_arrival_order() {
    let mut cm = cluster(
        &[(Role::Queue, 20), (Role::Queue, 20), (Role::Media, 20)],
        &[],
    );
    let mut x = None;
    for i in 0..4 {
        match service_call(&mut cm, Nanos::from(i) * MS, "queue-1", i) {
            (s, NodeCommand::Hold { leg, .. }) => {
                assert_eq!(leg.remote, caller_rtp(i));
                assert!(x.is_none_or(|x| x == s));
                x = Some(s);
            }
            other => panic!("{other:?}"),
        }
    }
    let x = x.unwrap();
    assert_eq!(cm.stats().queue_waiting, 4);

    cm.admin(NS, x, Verb::Stop).unwrap();
    assert_eq!(alerts(&cm.take_events(), x), 1);
    let holds: Vec<_> = cm
        .node_commands()
        .filter_map(|(s, c)| match c {
            NodeCommand::Hold { leg, .. } => Some((s, leg.remote)),
            _ => None,
        })
        .collect();
    let y = holds[0].0;
    assert_ne!(y, x);
    assert_eq!(cm.balancer().server(y).unwrap().role, Role::Queue);
    assert_eq!(
        holds,
        (0..4).map(|i| (y, caller_rtp(i))).collect::<Vec<_>>()
    );
    let out = exchange(&mut cm, NS + MS);
    let sip = reinvites(&out);
    let expected: Vec<_> = (0..4)
        .map(|i| (addr(UA), format!("s{i}"), node(&cm, y)))
        .collect();
    assert_eq!(sip, expected);
    assert_eq!(cm.take_reassigned().len(), 4);
    assert_eq!(cm.stats().queue_waiting, 4);

    // The agent comes on duty and takes one caller at a time: first come, first served.
    let mut now = 2 * NS;
    let mut out = register_out(&mut cm, now, AGENT, CALLEE, "pw-1000", 600);
    assert_eq!(parse(&out[0].1).code(), Some(200));
    let mut served = Vec::new();
    for k in 0..4u32 {
        let (caller, call_id, from) = agent_answers(&mut cm, now, &out);
        served.push(caller);
        let _ = exchange(&mut cm, now);
        // The caller now talks to the agent through a media node.
        assert_eq!(cm.stats().queue_answered, u64::from(k) + 1);
        now += NS;
        let bye = format!(
            "BYE sip:cm@{CM} SIP/2.0\r\nVia: SIP/2.0/UDP {CALLEE};branch=z9hG4bKab{k}\r\n\
             From: <sip:{AGENT}@pbxlab.test>;tag=ag\r\nTo: {from}\r\nCall-ID: {call_id}\r\n\
             CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
        );
        cm.handle(now, addr(CALLEE), bye.as_bytes());
        out = exchange(&mut cm, now);
    }
    assert_eq!(served, vec![1010, 1011, 1012, 1013]);
    let st = cm.stats();
    assert_eq!((st.queue_waiting, st.calls_active, st.dropped), (0, 0, 0));
    cm.balancer().audit().unwrap();
}

#[test]
fn ivr_node_down_restarts_its_callers_at_the_menu_elsewhere_and_digits_still_route() {
    let mut cm = cluster(&[(Role::Ivr, 10), (Role::Ivr, 10), (Role::Queue, 10)], &[]);
    let menus: Vec<(ServerId, MediaSession)> = (0..3)
        .map(|i| match service_call(&mut cm, 0, "ivr-1", i) {
            (s, NodeCommand::Ivr { session, .. }) => (s, session),
            other => panic!("{other:?}"),
        })
        .collect();
    // Least loaded puts two of the three callers on one node: that one fails.
    let x = if menus[1].0 == menus[0].0 || menus[2].0 == menus[0].0 {
        menus[0].0
    } else {
        menus[1].0
    };
    let on_x: Vec<u32> = (0..3).filter(|&i| menus[i as usize].0 == x).collect();
    assert_eq!(on_x.len(), 2);

    cm.admin(NS, x, Verb::Stop).unwrap();
    assert_eq!(alerts(&cm.take_events(), x), 1);
    let cmds: Vec<_> = cm.node_commands().collect();
    let restarted: Vec<(ServerId, MediaSession, SocketAddr)> = cmds
        .iter()
        .filter_map(|(s, c)| match c {
            NodeCommand::Ivr { session, leg } => Some((*s, *session, leg.remote)),
            _ => None,
        })
        .collect();
    assert_eq!(restarted.len(), 2, "{cmds:?}");
    let y = restarted[0].0;
    assert_ne!(y, x);
    for (&i, &(s, session, leg)) in on_x.iter().zip(&restarted) {
        assert_eq!((s, leg), (y, caller_rtp(i)));
        assert!(
            menus.iter().all(|&(_, old)| old != session),
            "a fresh session"
        );
    }
    let out = exchange(&mut cm, NS + MS);
    let sip = reinvites(&out);
    let expected: Vec<_> = on_x
        .iter()
        .map(|i| (addr(UA), format!("s{i}"), node(&cm, y)))
        .collect();
    assert_eq!(sip, expected);
    assert_eq!(cm.take_reassigned().len(), 2);

    // A digit the dead node reported late is ignored; one from the new menu routes the caller.
    let old = menus[on_x[0] as usize].1;
    cm.on_node_event(
        2 * NS,
        x,
        NodeEvent::Digit {
            session: old,
            digit: '1',
        },
    );
    assert_eq!(cm.stats().ivr_digits, 0);
    let (_, session, _) = restarted[0];
    cm.on_node_event(
        2 * NS,
        y,
        NodeEvent::Digit {
            session,
            digit: '1',
        },
    );
    assert_eq!(cm.stats().ivr_routed, 1);
    let cmds: Vec<_> = cm.node_commands().collect();
    let queue = match &cmds[..] {
        [
            (s, NodeCommand::End { session: ended }),
            (q, NodeCommand::Hold { leg, .. }),
        ] => {
            assert_eq!((*s, *ended), (y, session));
            assert_eq!(leg.remote, caller_rtp(on_x[0]));
            *q
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(cm.balancer().server(queue).unwrap().role, Role::Queue);
    let sip = reinvites(&exchange(&mut cm, 2 * NS));
    assert_eq!(
        sip,
        vec![(addr(UA), format!("s{}", on_x[0]), node(&cm, queue))]
    );
    assert_eq!(cm.stats().queue_waiting, 1);
    cm.balancer().audit().unwrap();
}

#[test]
fn calls_that_find_no_room_after_a_failure_are_ended_and_recorded_and_the_rest_move() {
    let mut cm = cluster(&[(Role::Media, 10), (Role::Media, 2)], &[]);
    let (x, y) = (ServerId(0), ServerId(1));
    // Every call on x first; y then has room for two of them.
    cm.admin(0, y, Verb::Disable).unwrap();
    let calls: Vec<UserCall> = (0..4).map(|i| user_call(&mut cm, 0, i)).collect();
    assert!(calls.iter().all(|c| c.server == x));
    cm.admin(0, y, Verb::Enable).unwrap();
    let _ = cm.take_events();

    cm.admin(NS, x, Verb::Stop).unwrap();
    let cmds: Vec<_> = cm.node_commands().collect();
    let relays: Vec<_> = cmds
        .iter()
        .filter_map(|(s, c)| match c {
            NodeCommand::Relay { a, .. } => Some((*s, a.remote)),
            _ => None,
        })
        .collect();
    // Arrival order decides who keeps a place.
    assert_eq!(relays, vec![(y, calls[0].a_rtp), (y, calls[1].a_rtp)]);
    let out = exchange(&mut cm, NS + MS);
    let mut ended = byes(&out);
    ended.sort();
    let mut expected = Vec::new();
    for c in &calls[2..] {
        expected.push((addr(UA), c.call_id.clone()));
        expected.push((addr(CALLEE), c.b_call_id.clone()));
    }
    expected.sort();
    assert_eq!(ended, expected, "BYE to both legs of each dropped call");
    let sip = reinvites(&out);
    assert_eq!(sip.len(), 4, "both legs of the two moved calls: {sip:?}");
    assert!(sip.iter().all(|(_, _, at)| *at == node(&cm, y)));

    let dropped = cm.take_dropped_calls();
    let expected: Vec<_> = calls[2..]
        .iter()
        .map(|c| DroppedCall {
            at: NS,
            call_id: c.call_id.clone(),
            server: x,
            reason: "failover: no capacity",
        })
        .collect();
    assert_eq!(dropped, expected);
    assert_eq!(cm.take_reassigned().len(), 2);
    let st = cm.stats();
    assert_eq!((st.moved, st.dropped, st.calls_active), (2, 2, 2));
    assert_eq!(st.failures.get("failover: no capacity"), Some(&2));
    assert_eq!(cm.balancer().placed(), 2);
    // The dropped calls' media is let go too: nothing stays anchored on the stopped node.
    assert_eq!((cm.media_sessions(x), cm.media_sessions(y)), (0, 2));
    cm.balancer().audit().unwrap();
}

#[test]
fn drain_sends_nothing_and_new_calls_avoid_the_node() {
    let mut cm = cluster(&[(Role::Media, 10), (Role::Media, 10)], &[]);
    let first = user_call(&mut cm, 0, 0);
    let x = first.server;
    cm.admin(NS, x, Verb::Drain).unwrap();
    assert_eq!(cm.node_commands().count(), 0);
    assert!(sent(&mut cm).is_empty(), "no re-INVITE for a drain");
    assert_eq!(
        cm.balancer().server(x).unwrap().state,
        ServerState::Draining
    );
    assert_eq!(cm.balancer().sessions_on(x).len(), 1);
    for i in 1..5 {
        assert_ne!(user_call(&mut cm, NS, i).server, x);
    }
    assert_eq!(cm.stats().moved, 0);
    cm.balancer().audit().unwrap();
}

#[test]
fn disable_moves_calls_and_enable_lets_the_node_take_calls_again() {
    let mut cm = cluster(&[(Role::Media, 10), (Role::Media, 10)], &[]);
    let calls: Vec<UserCall> = (0..4).map(|i| user_call(&mut cm, 0, i)).collect();
    let x = calls[0].server;
    let on_x: Vec<&UserCall> = calls.iter().filter(|c| c.server == x).collect();
    assert_eq!(on_x.len(), 2);

    cm.admin(NS, x, Verb::Disable).unwrap();
    assert_eq!(
        cm.balancer().server(x).unwrap().state,
        ServerState::Disabled
    );
    let relays = cm
        .node_commands()
        .filter(|(s, c)| *s != x && matches!(c, NodeCommand::Relay { .. }))
        .count();
    assert_eq!(relays, 2);
    let out = exchange(&mut cm, NS + MS);
    let mut sip: Vec<_> = reinvites(&out).into_iter().map(|(_, id, _)| id).collect();
    sip.sort();
    let mut expected: Vec<_> = on_x
        .iter()
        .flat_map(|c| [c.call_id.clone(), c.b_call_id.clone()])
        .collect();
    expected.sort();
    assert_eq!(sip, expected);
    assert_eq!(cm.take_reassigned().len(), 2);
    assert_eq!(cm.balancer().sessions_on(x).len(), 0);
    // Disabled, it takes nothing; enabled, the least loaded node is it again.
    assert_ne!(user_call(&mut cm, 2 * NS, 4).server, x);
    cm.admin(3 * NS, x, Verb::Enable).unwrap();
    assert_eq!(cm.balancer().server(x).unwrap().state, ServerState::Online);
    assert_eq!(user_call(&mut cm, 3 * NS, 5).server, x);
    cm.balancer().audit().unwrap();
}

/// The nodes probed in one probe round at `now`; each answers at once.
fn probed(cm: &mut CallManager, now: Nanos) -> BTreeSet<SocketAddr> {
    cm.advance(now);
    let mut nodes = BTreeSet::new();
    for (to, bytes) in sent(cm) {
        let p = parse(&bytes);
        if p.method() == Some(Method::Options) {
            let ok = ok_for(&p, "n", "<sip:n@127.0.0.1>", to);
            cm.handle(now + MS, to, &ok);
            nodes.insert(to);
        }
    }
    nodes
}

#[test]
fn remove_moves_calls_and_the_node_is_no_longer_probed() {
    let mut cm = cluster(&[(Role::Media, 10), (Role::Media, 10)], &[]);
    let calls: Vec<UserCall> = (0..4).map(|i| user_call(&mut cm, 0, i)).collect();
    let x = calls[0].server;
    let gone = node(&cm, x);
    assert!(probed(&mut cm, 0).contains(&gone));

    cm.admin(100 * MS, x, Verb::Remove).unwrap();
    assert!(cm.balancer().server(x).is_none());
    let relays: Vec<_> = cm
        .node_commands()
        .filter(|(_, c)| matches!(c, NodeCommand::Relay { .. }))
        .map(|(s, _)| s)
        .collect();
    assert_eq!(relays.len(), 2);
    assert!(relays.iter().all(|&s| s != x));
    let out = exchange(&mut cm, 100 * MS);
    assert_eq!(reinvites(&out).len(), 4);
    assert!(reinvites(&out).iter().all(|(_, _, at)| *at != gone));
    assert_eq!(cm.take_reassigned().len(), 2);

    for round in 1..4 {
        let later = probed(&mut cm, round * NS);
        assert!(!later.contains(&gone), "{later:?}");
        assert_eq!(later.len(), 1);
    }
    assert_eq!(cm.stats().calls_active, 4);
    assert_eq!(cm.balancer().servers().count(), 1);
    cm.balancer().audit().unwrap();
}

/// The node an SDP body names.
fn sdp_node(bytes: &[u8]) -> SocketAddr {
    SessionDescription::parse(parse(bytes).body())
        .unwrap()
        .audio_addr()
        .unwrap()
}

/// User 1010 calls user 1020, whose phone rings; returns the INVITE the callee got.
fn ringing_call(cm: &mut CallManager, now: Nanos) -> Vec<u8> {
    assert_eq!(register(cm, now, 1020, CALLEE, "pw-1020"), 200);
    cm.handle(
        now,
        addr(UA),
        &request(
            "INVITE",
            "sip:1020@pbxlab.test",
            "1010",
            "u0",
            1,
            "Content-Type: application/sdp\r\n",
            &offer(&caller_rtp(0).to_string(), 0),
        ),
    );
    let (_, invite) = sent(cm)
        .into_iter()
        .find(|(to, b)| *to == addr(CALLEE) && b.starts_with(b"INVITE"))
        .expect("INVITE to the callee");
    invite
}

#[test]
fn a_call_whose_media_node_fails_while_the_callee_rings_reaches_the_callee_on_the_new_node() {
    let mut cm = cluster(&[(Role::Media, 10), (Role::Media, 10)], &[]);
    let invite = ringing_call(&mut cm, 0);
    let x = server_of(&cm, sdp_node(&invite));
    cm.admin(MS, x, Verb::Stop).unwrap();
    assert_eq!(cm.stats().moved, 1);
    let _ = cm.node_commands().count();

    let invite = parse(&invite);
    let b_call_id = invite.call_id().unwrap().to_owned();
    let ok = ok_for(&invite, "cal", "<sip:1020@127.0.0.1:7100>", callee_rtp(0));
    cm.handle(2 * MS, addr(CALLEE), &ok);
    let y = match &cm.node_commands().collect::<Vec<_>>()[..] {
        [(s, NodeCommand::Relay { .. })] => *s,
        other => panic!("{other:?}"),
    };
    assert_ne!(y, x);
    let out = exchange(&mut cm, 3 * MS);
    let (_, answer) = out
        .iter()
        .find(|(to, b)| *to == addr(UA) && b.starts_with(b"SIP/2.0 200"))
        .expect("200 to the caller");
    assert_eq!(sdp_node(answer), node(&cm, y));
    // The callee was offered the failed node: it is told where the audio is now.
    assert_eq!(
        reinvites(&out),
        vec![(addr(CALLEE), b_call_id, node(&cm, y))]
    );
    assert_eq!(cm.take_reassigned().len(), 1);
    cm.balancer().audit().unwrap();
}

#[test]
fn a_queue_call_whose_media_node_fails_while_the_agent_rings_reaches_the_agent_on_the_new_node() {
    let mut cm = cluster(
        &[(Role::Queue, 10), (Role::Media, 10), (Role::Media, 10)],
        &[],
    );
    let _ = service_call(&mut cm, 0, "queue-1", 0);
    let out = register_out(&mut cm, NS, AGENT, CALLEE, "pw-1000", 600);
    let (_, invite) = out
        .iter()
        .find(|(to, b)| *to == addr(CALLEE) && b.starts_with(b"INVITE"))
        .expect("INVITE to the agent");
    let x = server_of(&cm, sdp_node(invite));
    cm.admin(NS + MS, x, Verb::Stop).unwrap();
    assert_eq!(cm.stats().moved, 1);
    assert!(sent(&mut cm).is_empty());

    let (caller, b_call_id, _) = agent_answers(&mut cm, NS + 2 * MS, &out);
    assert_eq!(caller, 1010);
    let cmds: Vec<_> = cm.node_commands().collect();
    let y = cmds
        .iter()
        .find_map(|(s, c)| matches!(c, NodeCommand::Relay { .. }).then_some(*s))
        .unwrap_or_else(|| panic!("{cmds:?}"));
    assert_ne!(y, x, "the agent's call is relayed by a live node");
    let out = exchange(&mut cm, NS + 3 * MS);
    let mut sip = reinvites(&out);
    sip.sort();
    let mut expected = vec![
        (addr(UA), "s0".to_owned(), node(&cm, y)),
        (addr(CALLEE), b_call_id, node(&cm, y)),
    ];
    expected.sort();
    assert_eq!(sip, expected);
    assert_eq!(cm.take_reassigned().len(), 1);
    assert_eq!(cm.stats().queue_answered, 1);
    cm.balancer().audit().unwrap();
}

#[test]
fn a_ringing_call_whose_media_finds_no_node_is_refused_and_the_callee_cancelled() {
    let mut cm = cluster(&[(Role::Media, 10)], &[]);
    let invite = ringing_call(&mut cm, 0);
    let x = server_of(&cm, sdp_node(&invite));
    cm.admin(MS, x, Verb::Stop).unwrap();
    let out = sent(&mut cm);
    let texts: Vec<_> = out
        .iter()
        .map(|(to, b)| (*to, String::from_utf8_lossy(b).into_owned()))
        .collect();
    assert!(
        texts
            .iter()
            .any(|(to, t)| *to == addr(UA) && t.starts_with("SIP/2.0 500")),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|(to, t)| *to == addr(CALLEE) && t.starts_with("CANCEL sip:1020@")),
        "the callee stops ringing: {texts:?}"
    );
    let dropped = cm.take_dropped_calls();
    assert_eq!(dropped.len(), 1);
    assert_eq!(
        (dropped[0].call_id.as_str(), dropped[0].reason),
        ("u0", "failover: no server in service")
    );
    let st = cm.stats();
    assert_eq!((st.dropped, st.calls_active), (1, 0));
    assert_eq!(cm.balancer().placed(), 0);
    cm.balancer().audit().unwrap();
}

#[test]
fn a_callers_cancel_reaches_the_ringing_callee() {
    let mut cm = cluster(&[(Role::Media, 10)], &[]);
    let _ = ringing_call(&mut cm, 0);
    cm.handle(
        MS,
        addr(UA),
        &request("CANCEL", "sip:1020@pbxlab.test", "1010", "u0", 1, "", ""),
    );
    let out = sent(&mut cm);
    let firsts: Vec<_> = out
        .iter()
        .map(|(to, b)| {
            let t = String::from_utf8_lossy(b);
            (*to, t.lines().next().unwrap_or("").to_owned())
        })
        .collect();
    assert_eq!(
        firsts,
        vec![
            (addr(UA), "SIP/2.0 200 OK".to_owned()),
            (addr(UA), "SIP/2.0 487 Request Terminated".to_owned()),
            (
                addr(CALLEE),
                "CANCEL sip:1020@127.0.0.1:7100 SIP/2.0".to_owned()
            ),
        ]
    );
    assert_eq!(cm.balancer().placed(), 0);
}

/// The BYE of call `u0`'s caller (user 1010), CSeq `cseq`, with `to` as its To value.
fn caller_bye(cseq: u32, to: &str) -> String {
    String::from_utf8(request(
        "BYE",
        "sip:cm@127.0.0.1:5060",
        "1010",
        "u0",
        cseq,
        "",
        "",
    ))
    .unwrap()
    .replace("To: <sip:cm@127.0.0.1:5060>", &format!("To: {to}"))
}

/// A BYE that names the call's Call-ID but not its tags (made up, from another address) is
/// answered 481 and ends nothing; the caller's own BYE still does.
#[test]
fn a_forged_bye_gets_481_and_the_call_goes_on() {
    let mut cm = cluster(&[(Role::Media, 10)], &[]);
    let call = user_call(&mut cm, 0, 0);
    let made_up = "<sip:cm@127.0.0.1:5060>;tag=made-up";
    let forged = caller_bye(2, made_up).replace("tag=uau0", "tag=guessed");
    cm.handle(NS, addr("192.0.2.66:5060"), forged.as_bytes());
    let out = sent(&mut cm);
    assert_eq!(out.len(), 1, "only the answer: no BYE to the callee");
    assert_eq!(parse(&out[0].1).code(), Some(481));
    // The right Call-ID and From tag with a wrong To tag is no better.
    cm.handle(NS, addr(UA), caller_bye(2, made_up).as_bytes());
    assert_eq!(parse(&sent(&mut cm)[0].1).code(), Some(481));
    let st = cm.stats();
    assert_eq!((st.calls_active, st.unmatched_in_dialog), (1, 2));
    cm.handle(2 * NS, addr(UA), caller_bye(3, &call.a_to).as_bytes());
    assert_eq!(parse(&sent(&mut cm)[0].1).code(), Some(200));
    assert_eq!(cm.stats().calls_active, 0);
}

#[test]
fn a_draining_node_reports_drained_when_its_last_call_ends() {
    let mut cm = cluster(&[(Role::Media, 10), (Role::Media, 10)], &[]);
    let first = user_call(&mut cm, 0, 0);
    let x = first.server;
    cm.admin(NS, x, Verb::Drain).unwrap();
    let kinds: Vec<_> = cm.take_events().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec![EventKind::Draining]);
    cm.handle(2 * NS, addr(UA), caller_bye(2, &first.a_to).as_bytes());
    let _ = exchange(&mut cm, 2 * NS);
    let events = cm.take_events();
    assert_eq!(
        events,
        vec![Event {
            at: Duration::from_secs(2),
            server: x,
            kind: EventKind::Drained,
        }],
        "the operator learns the node can be stopped"
    );
    assert_eq!(cm.balancer().server(x).unwrap().load, 0);
}

/// The `o=` session id and version of an SDP body.
fn origin(bytes: &[u8]) -> (u64, u64) {
    let sd = SessionDescription::parse(parse(bytes).body()).unwrap();
    (sd.origin_session_id, sd.origin_version)
}

/// The re-INVITE in `out` to `to` in dialog `call_id`.
fn reinvite_in<'a>(out: &'a Out, to: &str, call_id: &str) -> &'a [u8] {
    out.iter()
        .find(|(a, b)| {
            let m = parse(b);
            *a == addr(to) && m.method() == Some(Method::Invite) && m.call_id() == Some(call_id)
        })
        .map(|(_, b)| b.as_slice())
        .unwrap_or_else(|| panic!("no re-INVITE to {to} in {call_id}"))
}

#[test]
fn each_legs_sdp_keeps_its_origin_and_raises_its_version_across_moves() {
    let mut cm = cluster(&[(Role::Media, 10), (Role::Media, 10)], &[]);
    let invite = ringing_call(&mut cm, 0);
    let b_origin = origin(&invite);
    let invite = parse(&invite);
    let b_call_id = invite.call_id().unwrap().to_owned();
    let ok = ok_for(&invite, "cal", "<sip:1020@127.0.0.1:7100>", callee_rtp(0));
    cm.handle(MS, addr(CALLEE), &ok);
    let (_, answer) = sent(&mut cm)
        .into_iter()
        .find(|(to, b)| *to == addr(UA) && b.starts_with(b"SIP/2.0 200"))
        .unwrap();
    let a_origin = origin(&answer);
    ack(&mut cm, MS, 1010, "u0", &parse(&answer));
    let x = match cm.node_commands().next() {
        Some((s, NodeCommand::Relay { .. })) => s,
        other => panic!("{other:?}"),
    };

    // The caller re-INVITEs (a session refresh, say): the answer is the same session, newer.
    let to = parse(&answer).header(HeaderName::To).unwrap().to_owned();
    let refresh = String::from_utf8(request(
        "INVITE",
        "sip:cm@127.0.0.1:5060",
        "1010",
        "u0",
        2,
        "Content-Type: application/sdp\r\n",
        &offer(&caller_rtp(0).to_string(), 0),
    ))
    .unwrap()
    .replace("To: <sip:cm@127.0.0.1:5060>", &format!("To: {to}"));
    cm.handle(NS, addr(UA), refresh.as_bytes());
    let out = sent(&mut cm);
    assert_eq!(parse(&out[0].1).code(), Some(200));
    assert_eq!(origin(&out[0].1), (a_origin.0, a_origin.1 + 1));

    // Each failover re-INVITE is that leg's session again, one version up.
    cm.admin(2 * NS, x, Verb::Disable).unwrap();
    let out = exchange(&mut cm, 2 * NS);
    assert_eq!(
        origin(reinvite_in(&out, UA, "u0")),
        (a_origin.0, a_origin.1 + 2)
    );
    assert_eq!(
        origin(reinvite_in(&out, CALLEE, &b_call_id)),
        (b_origin.0, b_origin.1 + 1)
    );
    // And back: the other node is disabled in turn.
    cm.admin(3 * NS, x, Verb::Enable).unwrap();
    assert!(cm.balancer().sessions_on(x).is_empty());
    cm.admin(3 * NS, ServerId(1 - x.0), Verb::Disable).unwrap();
    let out = exchange(&mut cm, 3 * NS);
    assert_eq!(
        origin(reinvite_in(&out, UA, "u0")),
        (a_origin.0, a_origin.1 + 3)
    );
    assert_eq!(
        origin(reinvite_in(&out, CALLEE, &b_call_id)),
        (b_origin.0, b_origin.1 + 2)
    );
}

/// RFC 3261 14.1: a second move while the first re-INVITE of a leg is unanswered waits for it,
/// then goes out with the newest node; the move is timed once, from the first plan.
#[test]
fn a_second_move_waits_for_the_pending_reinvite_and_then_names_the_newest_node() {
    let mut cm = cluster(&[(Role::Media, 10); 3], &[]);
    let c = user_call(&mut cm, 0, 0);
    cm.admin(NS, c.server, Verb::Stop).expect("known server");
    let first = sent(&mut cm);
    let moved: Vec<_> = reinvites(&first);
    assert_eq!(moved.len(), 2, "one re-INVITE per leg: {moved:?}");
    let second_node = moved[0].2;
    // Nobody has answered yet when the new node is disabled too.
    let _ = cm.node_commands().count();
    cm.admin(NS + 5 * MS, server_of(&cm, second_node), Verb::Disable)
        .expect("known server");
    assert!(
        reinvites(&sent(&mut cm)).is_empty(),
        "no second INVITE while one is pending in the dialog"
    );
    let third_node = match cm.node_commands().collect::<Vec<_>>()[..] {
        [.., (s, NodeCommand::Relay { .. })] => node(&cm, s),
        ref other => panic!("{other:?}"),
    };
    assert_ne!(third_node, second_node);
    // The peers answer the first re-INVITEs: the Call Manager follows with the newest node.
    let out = answer_peers(&mut cm, NS + 20 * MS, first);
    let again: Vec<_> = reinvites(&out)
        .into_iter()
        .filter(|&(_, _, media)| media == third_node)
        .collect();
    assert_eq!(again.len(), 2, "{:?}", reinvites(&out));
    assert_eq!(
        cm.take_reassigned(),
        vec![Reassigned {
            at: NS,
            took: 20 * MS
        }]
    );
    assert_eq!(cm.stats().calls_active, 1);
}

/// A caller who already talks to an agent keeps the call when the queue node dies and no other
/// queue node can take the queue session: the audio is on a media node, and the queue session
/// was only the queue's accounting.
#[test]
fn a_caller_talking_to_an_agent_survives_the_loss_of_the_only_queue_node() {
    let mut cm = cluster(&[(Role::Queue, 20), (Role::Media, 20)], &[]);
    let (x, _) = service_call(&mut cm, 0, "queue-1", 0);
    let now = NS;
    let out = register_out(&mut cm, now, AGENT, CALLEE, "pw-1000", 600);
    let _ = agent_answers(&mut cm, now, &out);
    let _ = exchange(&mut cm, now);
    assert_eq!(cm.stats().queue_answered, 1);
    let _ = cm.node_commands().count();

    cm.admin(2 * NS, x, Verb::Stop).expect("known server");
    let out = exchange(&mut cm, 2 * NS);
    assert!(byes(&out).is_empty(), "{:?}", byes(&out));
    assert!(cm.take_dropped_calls().is_empty());
    assert_eq!(cm.stats().calls_active, 1);
    cm.balancer().audit().unwrap();
}
