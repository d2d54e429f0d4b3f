//! The [`Balancer`]: servers, pools, placed sessions, and the operations that move them.
//!
//! Sessions live in a slab (`slots`) addressed by [`SessionId`]; each server keeps the slots on
//! it with each slot's position in that list, so release and failover are O(1) per session.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::hash::{finalise, fnv1a};
use crate::heap::LoadHeap;
use crate::{
    AffinityKey, Assignment, Dropped, Error, Event, EventKind, FailoverMode, HealthConfig, Move,
    Outcome, Plan, Policy, Probe, Reject, Request, Role, ServerId, ServerSpec, ServerState,
    SessionId,
};

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
enum Admin {
    InService,
    Draining,
    Disabled,
}

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
struct Server {
    name: String,
    role: Role,
    capacity: u32,
    weight: u32,
    load: u32,
    /// Slots of the sessions on this server, in no particular order.
    sessions: Vec<u32>,
    admin: Admin,
    healthy: bool,
    removed: bool,
    fails_in_row: u32,
    oks_in_row: u32,
    last_probe: Option<(Duration, Probe)>,
    name_hash: u64,
    /// Smooth weighted round robin's running score.
    swrr_current: i64,
}

impl Server {
    fn eligible(&self) -> bool {
        !self.removed && self.healthy && self.admin == Admin::InService
    }

    fn fits(&self, weight: u32) -> bool {
        u64::from(self.load) + u64::from(weight) <= u64::from(self.capacity)
    }

    /// Utilisation as a 32.32 fixed-point number, the heap's key.
    fn util_key(&self) -> u64 {
        (u64::from(self.load) << 32) / u64::from(self.capacity)
    }

    fn state(&self) -> ServerState {
        match (self.admin, self.healthy) {
            (Admin::Disabled, _) => ServerState::Disabled,
            (_, false) => ServerState::Down,
            (Admin::Draining, true) => ServerState::Draining,
            (Admin::InService, true) => ServerState::Online,
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy)]
struct Slot {
    generation: u32,
    live: bool,
    server: u32,
    weight: u32,
    key: Option<AffinityKey>,
    /// Placement order; failover keeps it so queue callers keep their places.
    seq: u64,
    /// Index of this slot in its server's `sessions`.
    pos: u32,
}

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy)]
struct Group {
    server: u32,
    sessions: u32,
}

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
struct Pool {
    policy: Policy,
    failover: FailoverMode,
    members: Vec<u32>,
    /// Eligible members by utilisation, for least-loaded and as every policy's fallback.
    heap: LoadHeap,
    rr_cursor: usize,
    groups: HashMap<AffinityKey, Group>,
}

/// A read-only view of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerView<'a> {
    pub id: ServerId,
    pub name: &'a str,
    pub role: Role,
    pub state: ServerState,
    pub load: u32,
    pub capacity: u32,
    pub sessions: usize,
    /// What its probes say, whatever an operator did: a disabled server can be healthy.
    pub healthy: bool,
    pub last_probe: Option<(Duration, Probe)>,
}

/// A read-only view of one placed session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionView {
    pub server: ServerId,
    pub weight: u32,
    pub key: Option<AffinityKey>,
}

/// Servers grouped into one pool per role, the sessions placed on them, and their health.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub struct Balancer {
    health: HealthConfig,
    servers: Vec<Server>,
    names: HashMap<String, u32>,
    pools: [Option<Pool>; 5],
    slots: Vec<Slot>,
    free: Vec<u32>,
    next_seq: u64,
    placed: usize,
}

/// What a release did to the server the session was on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Released {
    pub server: ServerId,
    /// The server is draining and this was its last session.
    pub drained: bool,
}

impl Balancer {
    pub fn new(health: HealthConfig) -> Balancer {
        Balancer {
            health,
            servers: Vec::new(),
            names: HashMap::new(),
            pools: [None, None, None, None, None],
            slots: Vec::new(),
            free: Vec::new(),
            next_seq: 0,
            placed: 0,
        }
    }

    pub fn health(&self) -> HealthConfig {
        self.health
    }

    /// Declares the pool of a role (or changes its policy and failover mode).
    pub fn set_pool(&mut self, role: Role, policy: Policy, failover: FailoverMode) {
        match &mut self.pools[role.index()] {
            Some(pool) => {
                pool.policy = policy;
                pool.failover = failover;
            }
            slot @ None => {
                *slot = Some(Pool {
                    policy,
                    failover,
                    members: Vec::new(),
                    heap: LoadHeap::default(),
                    rr_cursor: 0,
                    groups: HashMap::new(),
                });
            }
        }
    }

    /// Adds a server, online, to its role's pool (declared with the default policy if absent).
    pub fn add_server(&mut self, spec: ServerSpec) -> Result<ServerId, Error> {
        if self.names.contains_key(&spec.name) {
            return Err(Error::DuplicateName(spec.name));
        }
        if spec.capacity == 0 {
            return Err(Error::ZeroCapacity { name: spec.name });
        }
        if self.pools[spec.role.index()].is_none() {
            self.set_pool(spec.role, default_policy(spec.role), FailoverMode::Auto);
        }
        let index = self.servers.len() as u32;
        let server = Server {
            name_hash: name_hash(&spec.name),
            name: spec.name.clone(),
            role: spec.role,
            capacity: spec.capacity,
            weight: spec.weight.max(1),
            load: 0,
            sessions: Vec::new(),
            admin: Admin::InService,
            healthy: true,
            removed: false,
            fails_in_row: 0,
            oks_in_row: 0,
            last_probe: None,
            swrr_current: 0,
        };
        let key = server.util_key();
        self.servers.push(server);
        self.names.insert(spec.name, index);
        if let Some(pool) = &mut self.pools[spec.role.index()] {
            pool.members.push(index);
            pool.heap.push(index, key);
        }
        Ok(ServerId(index))
    }

    /// Places one session. Sessions with an affinity key join their group's server.
    pub fn assign(&mut self, req: Request) -> Result<Assignment, Reject> {
        let role = req.role;
        let Some(pool) = &mut self.pools[role.index()] else {
            return Err(Reject::NoPool { role });
        };
        let server = match req.key.and_then(|k| pool.groups.get(&k)) {
            Some(group) => {
                let s = &self.servers[group.server as usize];
                // A group on a draining server still takes members: a meeting in progress
                // finishes where it is.
                if !s.healthy || s.removed || s.admin == Admin::Disabled {
                    return Err(Reject::NoServerInService { role });
                }
                if !s.fits(req.weight) {
                    return Err(Reject::NoCapacity {
                        role,
                        weight: req.weight,
                    });
                }
                group.server
            }
            None => choose(pool, &mut self.servers, role, req.weight, req.key)?,
        };
        let session = self.place(server, req.weight, req.key);
        Ok(Assignment {
            session,
            server: ServerId(server),
        })
    }

    /// Ends a session and frees its capacity.
    pub fn release(&mut self, session: SessionId) -> Result<Released, Error> {
        let slot = self.live_slot(session)?;
        let server = self.unplace(slot);
        let s = &self.servers[server as usize];
        Ok(Released {
            server: ServerId(server),
            drained: s.admin == Admin::Draining && s.load == 0,
        })
    }

    /// Records a health probe's result; crossing a threshold marks the server down (with a
    /// failover plan) or up.
    pub fn probe(
        &mut self,
        now: Duration,
        server: ServerId,
        result: Probe,
    ) -> Result<Outcome, Error> {
        let health = self.health;
        let s = self.server_mut(server)?;
        s.last_probe = Some((now, result));
        if result == Probe::Ok {
            s.fails_in_row = 0;
            s.oks_in_row = s.oks_in_row.saturating_add(1);
            if !s.healthy && s.oks_in_row >= health.up_after {
                return Ok(self.mark_up(now, server.0));
            }
        } else {
            s.oks_in_row = 0;
            s.fails_in_row = s.fails_in_row.saturating_add(1);
            if s.healthy && s.fails_in_row >= health.down_after {
                return Ok(self.mark_down(now, server.0));
            }
        }
        Ok(Outcome::default())
    }

    /// Marks a server down at once, as if its health checks had failed.
    pub fn fail(&mut self, now: Duration, server: ServerId) -> Result<Outcome, Error> {
        let s = self.server_mut(server)?;
        s.oks_in_row = 0;
        if !s.healthy {
            return Ok(Outcome::default());
        }
        Ok(self.mark_down(now, server.0))
    }

    /// Marks a server healthy at once, as if enough probes had succeeded.
    pub fn recover(&mut self, now: Duration, server: ServerId) -> Result<Outcome, Error> {
        let s = self.server_mut(server)?;
        s.fails_in_row = 0;
        if s.healthy {
            return Ok(Outcome::default());
        }
        Ok(self.mark_up(now, server.0))
    }

    /// Takes a server out of service and moves its sessions away, whatever its pool's mode.
    pub fn disable(&mut self, now: Duration, server: ServerId) -> Result<Outcome, Error> {
        let s = self.server_mut(server)?;
        if s.admin == Admin::Disabled {
            return Ok(Outcome::default());
        }
        s.admin = Admin::Disabled;
        self.leave_heap(server.0);
        let plan = self.evacuate(server.0);
        Ok(Outcome {
            plan,
            events: vec![event(now, server.0, EventKind::Disabled)],
        })
    }

    /// Lets a server take new sessions again (once healthy).
    pub fn enable(&mut self, now: Duration, server: ServerId) -> Result<Outcome, Error> {
        let s = self.server_mut(server)?;
        if s.admin == Admin::InService {
            return Ok(Outcome::default());
        }
        s.admin = Admin::InService;
        self.join_heap(server.0);
        Ok(Outcome {
            plan: Plan::default(),
            events: vec![event(now, server.0, EventKind::Enabled)],
        })
    }

    /// Stops new sessions on a server; the ones it has finish there.
    pub fn drain(&mut self, now: Duration, server: ServerId) -> Result<Outcome, Error> {
        let s = self.server_mut(server)?;
        if s.admin != Admin::InService {
            return Ok(Outcome::default());
        }
        s.admin = Admin::Draining;
        let empty = s.load == 0;
        self.leave_heap(server.0);
        let mut events = vec![event(now, server.0, EventKind::Draining)];
        if empty {
            events.push(event(now, server.0, EventKind::Drained));
        }
        Ok(Outcome {
            plan: Plan::default(),
            events,
        })
    }

    /// Removes a server for good, moving its sessions away first. Its id is not reused.
    pub fn remove_server(&mut self, now: Duration, server: ServerId) -> Result<Outcome, Error> {
        let s = self.server_mut(server)?;
        s.admin = Admin::Disabled;
        let role = s.role;
        self.leave_heap(server.0);
        let plan = self.evacuate(server.0);
        let s = &mut self.servers[server.0 as usize];
        s.removed = true;
        self.names.remove(&s.name);
        if let Some(pool) = &mut self.pools[role.index()] {
            pool.members.retain(|&m| m != server.0);
        }
        Ok(Outcome {
            plan,
            events: vec![event(now, server.0, EventKind::Removed)],
        })
    }

    pub fn server(&self, id: ServerId) -> Option<ServerView<'_>> {
        let s = self.servers.get(id.0 as usize).filter(|s| !s.removed)?;
        Some(ServerView {
            id,
            name: &s.name,
            role: s.role,
            state: s.state(),
            load: s.load,
            capacity: s.capacity,
            sessions: s.sessions.len(),
            healthy: s.healthy,
            last_probe: s.last_probe,
        })
    }

    pub fn server_by_name(&self, name: &str) -> Option<ServerId> {
        self.names.get(name).map(|&i| ServerId(i))
    }

    /// Every server that has not been removed, in the order they were added.
    pub fn servers(&self) -> impl Iterator<Item = ServerView<'_>> + '_ {
        (0..self.servers.len() as u32).filter_map(|i| self.server(ServerId(i)))
    }

    /// Servers of a role's pool in the order they were added.
    pub fn pool_members(&self, role: Role) -> impl Iterator<Item = ServerId> + '_ {
        self.pools[role.index()]
            .iter()
            .flat_map(|p| p.members.iter().map(|&m| ServerId(m)))
    }

    pub fn policy(&self, role: Role) -> Option<Policy> {
        self.pools[role.index()].as_ref().map(|p| p.policy)
    }

    pub fn session(&self, id: SessionId) -> Option<SessionView> {
        let slot = self.live_slot(id).ok()?;
        let s = &self.slots[slot as usize];
        Some(SessionView {
            server: ServerId(s.server),
            weight: s.weight,
            key: s.key,
        })
    }

    /// Sessions on a server, in placement order.
    pub fn sessions_on(&self, server: ServerId) -> Vec<SessionId> {
        let Some(s) = self.servers.get(server.0 as usize) else {
            return Vec::new();
        };
        let mut slots = s.sessions.clone();
        slots.sort_unstable_by_key(|&i| self.slots[i as usize].seq);
        slots.into_iter().map(|i| self.session_id(i)).collect()
    }

    /// Sessions placed in all pools.
    pub fn placed(&self) -> usize {
        self.placed
    }

    /// Checks every structural invariant; for tests and for drivers' self-checks.
    pub fn audit(&self) -> Result<(), Error> {
        let broken = |m: String| Err(Error::Invariant(m));
        let mut live = 0;
        let mut loads = vec![0u64; self.servers.len()];
        let mut counts = vec![0usize; self.servers.len()];
        let mut group_counts: BTreeMap<(usize, AffinityKey), (u32, u32)> = BTreeMap::new();
        for (i, slot) in self.slots.iter().enumerate() {
            if !slot.live {
                continue;
            }
            live += 1;
            let s = slot.server as usize;
            let Some(server) = self.servers.get(s) else {
                return broken(format!("slot {i} on unknown server {s}"));
            };
            if server.sessions.get(slot.pos as usize) != Some(&(i as u32)) {
                return broken(format!("slot {i} position {} is stale", slot.pos));
            }
            loads[s] += u64::from(slot.weight);
            counts[s] += 1;
            if let Some(k) = slot.key {
                let e = group_counts
                    .entry((server.role.index(), k))
                    .or_insert((slot.server, 0));
                if e.0 != slot.server {
                    return broken(format!("group {k:?} split over servers {} and {s}", e.0));
                }
                e.1 += 1;
            }
        }
        if live != self.placed {
            return broken(format!("{live} live slots but {} counted", self.placed));
        }
        for (i, s) in self.servers.iter().enumerate() {
            if u64::from(s.load) != loads[i] || s.sessions.len() != counts[i] {
                return broken(format!(
                    "server {} load {} / {} sessions, slots say {} / {}",
                    s.name,
                    s.load,
                    s.sessions.len(),
                    loads[i],
                    counts[i]
                ));
            }
            if s.load > s.capacity {
                return broken(format!("server {} above capacity", s.name));
            }
            if s.removed && s.load > 0 {
                return broken(format!("removed server {} holds sessions", s.name));
            }
            if s.admin == Admin::Disabled && s.load > 0 {
                return broken(format!("disabled server {} holds sessions", s.name));
            }
        }
        for (r, pool) in self.pools.iter().enumerate() {
            let Some(pool) = pool else { continue };
            for &m in &pool.members {
                let s = &self.servers[m as usize];
                if s.eligible() != pool.heap.contains(m) {
                    return broken(format!("server {} heap membership is wrong", s.name));
                }
                if !s.healthy && pool.failover == FailoverMode::Auto && s.load > 0 {
                    return broken(format!("down server {} holds sessions", s.name));
                }
            }
            for (k, g) in &pool.groups {
                match group_counts.get(&(r, *k)) {
                    Some(&(server, n)) if server == g.server && n == g.sessions => {}
                    other => {
                        return broken(format!(
                            "group {k:?} recorded on {} x{}, slots say {other:?}",
                            g.server, g.sessions
                        ));
                    }
                }
            }
            let slot_groups = group_counts.keys().filter(|(role, _)| *role == r).count();
            if slot_groups != pool.groups.len() {
                return broken(format!("role {r}: stale groups"));
            }
        }
        Ok(())
    }

    fn server_mut(&mut self, id: ServerId) -> Result<&mut Server, Error> {
        self.servers
            .get_mut(id.0 as usize)
            .filter(|s| !s.removed)
            .ok_or(Error::UnknownServer(id))
    }

    fn live_slot(&self, id: SessionId) -> Result<u32, Error> {
        match self.slots.get(id.slot as usize) {
            Some(s) if s.live && s.generation == id.generation => Ok(id.slot),
            _ => Err(Error::UnknownSession(id)),
        }
    }

    fn session_id(&self, slot: u32) -> SessionId {
        SessionId {
            slot,
            generation: self.slots[slot as usize].generation,
        }
    }

    fn place(&mut self, server: u32, weight: u32, key: Option<AffinityKey>) -> SessionId {
        let seq = self.next_seq;
        self.next_seq += 1;
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    live: false,
                    server: 0,
                    weight: 0,
                    key: None,
                    seq: 0,
                    pos: 0,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[slot as usize];
        s.live = true;
        s.server = server;
        s.weight = weight;
        s.key = key;
        s.seq = seq;
        self.attach(slot, server);
        self.placed += 1;
        if let Some(k) = key {
            let role = self.servers[server as usize].role;
            if let Some(pool) = &mut self.pools[role.index()] {
                pool.groups
                    .entry(k)
                    .or_insert(Group {
                        server,
                        sessions: 0,
                    })
                    .sessions += 1;
            }
        }
        self.session_id(slot)
    }

    /// Removes a live slot from its server and frees it; returns the server.
    fn unplace(&mut self, slot: u32) -> u32 {
        let server = self.detach(slot);
        let s = &mut self.slots[slot as usize];
        s.live = false;
        s.generation = s.generation.wrapping_add(1);
        let key = s.key.take();
        self.free.push(slot);
        self.placed -= 1;
        if let Some(k) = key {
            let role = self.servers[server as usize].role;
            if let Some(pool) = &mut self.pools[role.index()]
                && let Some(g) = pool.groups.get_mut(&k)
            {
                g.sessions -= 1;
                if g.sessions == 0 {
                    pool.groups.remove(&k);
                }
            }
        }
        server
    }

    /// Puts a slot on a server's list and load (the slot's `server` is set to it).
    fn attach(&mut self, slot: u32, server: u32) {
        let weight = self.slots[slot as usize].weight;
        let s = &mut self.servers[server as usize];
        self.slots[slot as usize].server = server;
        self.slots[slot as usize].pos = s.sessions.len() as u32;
        s.sessions.push(slot);
        s.load += weight;
        let (role, key) = (s.role, s.util_key());
        if let Some(pool) = &mut self.pools[role.index()] {
            pool.heap.update(server, key);
        }
    }

    /// Takes a slot off its server's list and load; returns the server.
    fn detach(&mut self, slot: u32) -> u32 {
        let Slot {
            server,
            pos,
            weight,
            ..
        } = self.slots[slot as usize];
        let s = &mut self.servers[server as usize];
        s.sessions.swap_remove(pos as usize);
        if let Some(&moved) = s.sessions.get(pos as usize) {
            self.slots[moved as usize].pos = pos;
        }
        // The audit proves load equals the sum of its sessions' weights; saturating keeps a
        // broken invariant from wrapping into a huge load.
        s.load = s.load.saturating_sub(weight);
        let (role, key) = (s.role, s.util_key());
        if let Some(pool) = &mut self.pools[role.index()] {
            pool.heap.update(server, key);
        }
        server
    }

    fn join_heap(&mut self, server: u32) {
        let s = &self.servers[server as usize];
        if !s.eligible() {
            return;
        }
        let (role, key) = (s.role, s.util_key());
        if let Some(pool) = &mut self.pools[role.index()] {
            pool.heap.push(server, key);
        }
    }

    fn leave_heap(&mut self, server: u32) {
        let role = self.servers[server as usize].role;
        if let Some(pool) = &mut self.pools[role.index()] {
            pool.heap.remove(server);
        }
    }

    fn mark_down(&mut self, now: Duration, server: u32) -> Outcome {
        let s = &mut self.servers[server as usize];
        s.healthy = false;
        let role = s.role;
        let sessions = s.sessions.len();
        let name = s.name.clone();
        self.leave_heap(server);
        let mut events = vec![event(now, server, EventKind::Down)];
        if matches!(role, Role::Ivr | Role::Queue | Role::Meeting) {
            events.push(event(
                now,
                server,
                EventKind::Alert(format!(
                    "{role} server {name} is down with {sessions} sessions"
                )),
            ));
        }
        let auto = self.pools[role.index()]
            .as_ref()
            .is_none_or(|p| p.failover == FailoverMode::Auto);
        let plan = if auto {
            self.evacuate(server)
        } else {
            Plan::default()
        };
        Outcome { plan, events }
    }

    fn mark_up(&mut self, now: Duration, server: u32) -> Outcome {
        self.servers[server as usize].healthy = true;
        self.join_heap(server);
        Outcome {
            plan: Plan::default(),
            events: vec![event(now, server, EventKind::Up)],
        }
    }

    /// Moves every session off a server that is no longer eligible. Keyed groups move whole,
    /// units go in placement order, and what finds no room is dropped.
    fn evacuate(&mut self, server: u32) -> Plan {
        let role = self.servers[server as usize].role;
        let mut slots = std::mem::take(&mut self.servers[server as usize].sessions);
        // Put them back so `detach` sees consistent positions while we take them one by one.
        slots.sort_unstable_by_key(|&i| self.slots[i as usize].seq);
        for (pos, &slot) in slots.iter().enumerate() {
            self.slots[slot as usize].pos = pos as u32;
        }
        self.servers[server as usize].sessions = slots.clone();

        // Units in order of their first session: a keyless session alone, or a whole group.
        let mut units: Vec<(Option<AffinityKey>, Vec<u32>)> = Vec::new();
        let mut unit_of_key: HashMap<AffinityKey, usize> = HashMap::new();
        for &slot in &slots {
            match self.slots[slot as usize].key {
                Some(k) => match unit_of_key.get(&k) {
                    Some(&u) => units[u].1.push(slot),
                    None => {
                        unit_of_key.insert(k, units.len());
                        units.push((Some(k), vec![slot]));
                    }
                },
                None => units.push((None, vec![slot])),
            }
        }

        let mut plan = Plan {
            moves: Vec::with_capacity(slots.len()),
            dropped: Vec::new(),
        };
        for (key, members) in units {
            let weight: u32 = members
                .iter()
                .map(|&s| self.slots[s as usize].weight)
                .fold(0, u32::saturating_add);
            let target = match &mut self.pools[role.index()] {
                Some(pool) => choose(pool, &mut self.servers, role, weight, key),
                None => Err(Reject::NoPool { role }),
            };
            match target {
                Ok(to) => {
                    for &slot in &members {
                        let id = self.session_id(slot);
                        self.detach(slot);
                        self.attach(slot, to);
                        plan.moves.push(Move {
                            session: id,
                            from: ServerId(server),
                            to: ServerId(to),
                        });
                    }
                    if let Some(k) = key
                        && let Some(pool) = &mut self.pools[role.index()]
                        && let Some(g) = pool.groups.get_mut(&k)
                    {
                        g.server = to;
                    }
                }
                Err(reason) => {
                    for &slot in &members {
                        let id = self.session_id(slot);
                        self.unplace(slot);
                        plan.dropped.push(Dropped {
                            session: id,
                            from: ServerId(server),
                            reason,
                        });
                    }
                }
            }
        }
        plan
    }
}

/// Picks a server for a new session or a unit being moved; only eligible servers with room for
/// `weight` qualify.
fn choose(
    pool: &mut Pool,
    servers: &mut [Server],
    role: Role,
    weight: u32,
    key: Option<AffinityKey>,
) -> Result<u32, Reject> {
    if pool.heap.len() == 0 {
        return Err(Reject::NoServerInService { role });
    }
    let full = Reject::NoCapacity { role, weight };
    let pick = match (pool.policy, key) {
        (Policy::RoundRobin, _) => {
            let n = pool.members.len();
            let found = (0..n).map(|i| (pool.rr_cursor + i) % n).find(|&i| {
                let s = &servers[pool.members[i] as usize];
                s.eligible() && s.fits(weight)
            });
            found.map(|i| {
                pool.rr_cursor = (i + 1) % n;
                pool.members[i]
            })
        }
        (Policy::Weighted, _) => {
            let mut total = 0i64;
            let mut best: Option<(i64, u32)> = None;
            for &m in &pool.members {
                let s = &mut servers[m as usize];
                if !(s.eligible() && s.fits(weight)) {
                    continue;
                }
                s.swrr_current += i64::from(s.weight);
                total += i64::from(s.weight);
                if best.is_none_or(|(c, _)| s.swrr_current > c) {
                    best = Some((s.swrr_current, m));
                }
            }
            best.map(|(_, b)| {
                servers[b as usize].swrr_current -= total;
                b
            })
        }
        (Policy::Affinity, Some(k)) => pool
            .members
            .iter()
            .copied()
            .filter(|&m| {
                let s = &servers[m as usize];
                s.eligible() && s.fits(weight)
            })
            .max_by_key(|&m| {
                (
                    rendezvous(k, servers[m as usize].name_hash),
                    std::cmp::Reverse(m),
                )
            }),
        (Policy::LeastLoaded | Policy::Affinity, _) => {
            match pool.heap.peek() {
                Some(top) if servers[top as usize].fits(weight) => Some(top),
                // The least utilised server cannot take `weight`; a bigger one still might.
                _ => pool
                    .members
                    .iter()
                    .copied()
                    .filter(|&m| {
                        let s = &servers[m as usize];
                        s.eligible() && s.fits(weight)
                    })
                    .min_by_key(|&m| (servers[m as usize].util_key(), m)),
            }
        }
    };
    pick.ok_or(full)
}

fn default_policy(role: Role) -> Policy {
    match role {
        Role::Meeting | Role::Queue => Policy::Affinity,
        Role::Media | Role::Ivr | Role::Im => Policy::LeastLoaded,
    }
}

fn event(at: Duration, server: u32, kind: EventKind) -> Event {
    Event {
        at,
        server: ServerId(server),
        kind,
    }
}

/// FNV-1a over the name, mixed: stable across runs and processes, unlike std's hasher, so every
/// driver ranks servers the same way for a key.
fn name_hash(name: &str) -> u64 {
    finalise(fnv1a(name.as_bytes()))
}

fn rendezvous(key: AffinityKey, server_hash: u64) -> u64 {
    finalise(finalise(key.0) ^ server_hash)
}
