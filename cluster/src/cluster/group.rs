//! The live cluster's Call Managers: one, or a group of three or five behind one virtual IP
//! ([`crate::ha`]), each on a thread of its own with its own replication socket.
//!
//! **The virtual IP on loopback is a bound socket.** Only a replica that serves holds the
//! virtual IP's address bound (without `SO_REUSEADDR`, so the kernel lets one socket have
//! it); a replica whose lease runs out closes it, and a new active binds it once it serves. A
//! new active that finds the address still bound keeps trying every millisecond (and counts
//! it): the kernel itself fences, and a lease that overlapped another would show as bind
//! refusals rather than as two Call Managers answering. Datagrams that reach the address while
//! nobody holds it are refused by the kernel, and SIP's retransmissions bring them again.
//!
//! **Failure is the thread's end.** `fail cm-N` stops the replica's thread, which closes its
//! sockets and drops its state; `recover` starts a new one that syncs (a snapshot, then
//! the log, both over its replication socket). `partition` cuts a replica off: whatever reaches
//! its sockets is dropped and it sends nothing, while it keeps the virtual IP bound until its
//! lease runs out, as a cut-off host would. `upgrade` resigns, stops, waits the restart and
//! recovers. Nodes follow whichever replica serves without restarting: their answers go to
//! the virtual IP, their events and the operator's requests to the replica that serves.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::Nanos;
use crate::cm::Census;
use crate::drill::CmFigures;
use crate::ha::{HaConfig, HaStats, Replica};

use super::{Control, Shared, Verb};

/// How long a recovered Call Manager may take to catch up (the virtual drill's limit too).
pub const CATCH_UP_LIMIT: Duration = Duration::from_secs(10);
/// What a Call Manager can be told to do.
pub(super) const CM_VERBS: [Verb; 7] = [
    Verb::Fail,
    Verb::Partition,
    Verb::Heal,
    Verb::Recover,
    Verb::Stop,
    Verb::Restart,
    Verb::Upgrade,
];

/// How long a resigning active may take to hand over before it is stopped all the same.
const RESIGN_LIMIT: Duration = Duration::from_secs(2);

/// A running replica's thread.
pub(super) struct Running {
    pub stop: Arc<AtomicBool>,
    pub thread: JoinHandle<io::Result<()>>,
}

/// One Call Manager of the cluster.
pub(super) struct Slot {
    pub name: String,
    /// It runs in this process (every one does, unless this process is one Call Manager of a
    /// group, [`super::CmProcess`]).
    pub local: bool,
    /// The virtual IP's address is moved by a VRRP daemon (keepalived): bound with
    /// `IP_FREEBIND`, and the Call Manager's timers wait until the address has come.
    pub vrrp: bool,
    pub cfg: HaConfig,
    /// Cut off from everything (`partition`), until `heal`.
    pub cut: AtomicBool,
    /// Asked to resign (an upgrade's first step).
    pub resign: AtomicBool,
    pub run: Mutex<Option<Running>>,
    pub row: Mutex<CmStatus>,
    /// Its network namespace (`/var/run/netns/NAME`), when each Call Manager has one.
    pub netns: Option<std::path::PathBuf>,
    /// Its keepalived track file: 0 while it serves, 1 otherwise.
    pub track: Option<std::path::PathBuf>,
}

impl Slot {
    /// Its own address (replication); in a group of one, the Call Manager's.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.cfg.addrs.get(usize::from(self.cfg.index)).copied()
    }

    /// Its thread is running (not stopped, and not ended on an error).
    pub fn running(&self) -> bool {
        self.run
            .lock()
            .is_ok_and(|r| r.as_ref().is_some_and(|r| !r.thread.is_finished()))
    }

    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Relaxed)
    }

    /// Tells keepalived whether this Call Manager serves, and in which term (`Some(term)`):
    /// `cm-N` is 0 while it serves, 1 otherwise (a `track_file` of weight 0: anything else
    /// is FAULT), and `cm-N.term` its term while it serves (a `track_file` of weight 1 on a
    /// base priority of 1), so that the newest active's keepalived has the highest priority
    /// and takes the address even from one whose Call Manager died without a word (its files
    /// still say it serves, in an older term): it ignores that one's advertisements, becomes
    /// master after VRRP's master-down interval, and the old one yields to its higher
    /// priority. At equal priorities it never would. From term 253 on, priorities tie at 254.
    /// Each file is written whole (a rename); a stop is written first, a term before its
    /// start.
    pub fn track(&self, serving: Option<u64>) -> io::Result<()> {
        let Some(path) = &self.track else {
            return Ok(());
        };
        let write = |path: &std::path::Path, text: String| {
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(".new");
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, path)
        };
        let mut term = path.as_os_str().to_owned();
        term.push(".term");
        let term = std::path::PathBuf::from(term);
        match serving {
            Some(t) => {
                write(&term, format!("{}\n", t.min(253)))?;
                write(path, "0\n".into())
            }
            None => {
                write(path, "1\n".into())?;
                write(&term, "0\n".into())
            }
        }
    }
}

/// One Call Manager in the status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CmStatus {
    pub name: String,
    /// Its own address (replication): not the virtual IP.
    pub addr: Option<SocketAddr>,
    pub running: bool,
    pub cut: bool,
    /// active, standby, candidate, syncing; "stopped" when its thread is not running.
    pub role: &'static str,
    pub term: u64,
    pub applied: u64,
    pub commit: u64,
    /// Answers at the virtual IP now (the active within its lease).
    pub serving: bool,
    /// Log entries it lacks, as the active last saw it (none for the active itself).
    pub behind: Option<u64>,
    pub stats: HaStats,
    /// Times a new active found the virtual IP still bound and tried again.
    pub bind_waits: u64,
}

impl CmStatus {
    pub(super) fn of(replica: &Replica, name: &str, addr: Option<SocketAddr>, now: Nanos) -> Self {
        CmStatus {
            name: name.to_owned(),
            addr,
            running: true,
            cut: false,
            role: replica.role().name(),
            term: replica.term(),
            applied: replica.applied(),
            commit: replica.commit(),
            serving: replica.serving(now),
            behind: None,
            stats: replica.stats.clone(),
            bind_waits: 0,
        }
    }
}

/// When each Call Manager began and stopped serving, and who sent from the virtual IP: what a
/// drill's takeover figures come from.
#[derive(Debug, Clone, Default)]
pub(super) struct VipWatch {
    /// (when, replica, serving) at every change.
    pub serving: Vec<(Nanos, usize, bool)>,
    /// (when, replica) each time another replica than the last sent a SIP datagram (not a
    /// probe) from the virtual IP.
    pub senders: Vec<(Nanos, usize)>,
    last_sender: Option<usize>,
    /// The last such datagram, and the longest gap between two since `watch`.
    last_send: Nanos,
    watch_from: Nanos,
    longest_gap: Nanos,
}

/// Entries kept in [`VipWatch`]'s lists; a drill needs the few around each fault.
const MAX_WATCH: usize = 4_096;

impl VipWatch {
    pub fn sent(&mut self, now: Nanos, from: usize) {
        let since = self.last_send.max(self.watch_from);
        self.longest_gap = self.longest_gap.max(now.saturating_sub(since));
        self.last_send = now;
        if self.last_sender != Some(from) {
            self.last_sender = Some(from);
            keep_recent(&mut self.senders);
            self.senders.push((now, from));
        }
    }

    pub fn changed(&mut self, now: Nanos, who: usize, serving: bool) {
        if serving {
            // Its first datagram is a takeover's even if it sent the last ones before.
            self.last_sender = None;
        }
        keep_recent(&mut self.serving);
        self.serving.push((now, who, serving));
    }

    /// The longest gap between datagrams from the virtual IP since the watch began, counting
    /// one still open at `now`.
    pub fn longest_gap(&self, now: Nanos) -> Nanos {
        let since = self.last_send.max(self.watch_from);
        self.longest_gap.max(now.saturating_sub(since))
    }
}

/// A long-running cluster keeps the newest half once a list is full.
fn keep_recent<T>(list: &mut Vec<T>) {
    if list.len() >= MAX_WATCH {
        list.drain(..MAX_WATCH / 2);
    }
}

/// A replica's thread starts: binds nothing (its sockets are the caller's), returns the
/// handle. `vip` is the virtual IP's socket if this replica holds it from the start.
pub(super) fn start(
    shared: &Arc<Shared>,
    me: usize,
    replica: Replica,
    vip: Option<UdpSocket>,
    peer: Option<UdpSocket>,
) -> io::Result<Running> {
    let stop = Arc::new(AtomicBool::new(false));
    // Each replica has a hub of its own: session keys never leave the replica that drew them.
    let hub = crate::hub::Hub::new(
        shared.join_token.as_deref(),
        &crate::random_key()?,
        shared.capacities.clone(),
    );
    let name = shared
        .cms
        .get(me)
        .map_or_else(|| "cm".to_owned(), |s| s.name.clone());
    let thread = {
        let (stop, shared) = (Arc::clone(&stop), Arc::clone(shared));
        std::thread::Builder::new()
            .name(format!("pbxlab-{name}"))
            .spawn(move || {
                let served = super::serve(
                    super::CmThread {
                        me,
                        replica,
                        hub,
                        vip,
                        peer,
                    },
                    &shared,
                    &stop,
                );
                ended(&shared, me, served.as_ref().err());
                served
            })?
    };
    Ok(Running { stop, thread })
}

/// However a replica's thread ends (stopped, failed, or an error): if it served, that ends now
/// (logged for the drill's fencing figures), its namespace must not keep the virtual IP (its
/// track file says so, as keepalived's process tracking would see), and its row says stopped.
fn ended(shared: &Shared, me: usize, error: Option<&io::Error>) {
    let Some(slot) = shared.cms.get(me) else {
        return;
    };
    let now = u64::try_from(shared.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let was_serving = slot.row.lock().is_ok_and(|r| r.serving);
    if was_serving && let Ok(mut w) = shared.vip.lock() {
        w.changed(now, me, false);
    }
    let _ = slot.track(None);
    if let Ok(mut row) = slot.row.lock() {
        row.running = false;
        row.serving = false;
        row.role = "stopped";
    }
    if let (Some(e), Ok(mut log)) = (error, shared.log.lock()) {
        log.push(format!(
            "{:.3}s {} stopped on an error: {e}",
            Duration::from_nanos(now).as_secs_f64(),
            slot.name
        ));
    }
}

/// Stops a replica's thread and waits for it; false if it was not running.
pub(super) fn stop(slot: &Slot) -> bool {
    let taken = slot.run.lock().ok().and_then(|mut r| r.take());
    let Some(r) = taken else {
        return false;
    };
    r.stop.store(true, Ordering::Relaxed);
    // The thread's end marks it stopped (see `ended`).
    let _ = r.thread.join();
    true
}

/// A Call Manager fault the live drill watches: who served and whom it held at the fault.
#[derive(Debug, Clone)]
pub struct CmFaultWatch {
    index: usize,
    at: Nanos,
    before: CmCheck,
    fenced: u64,
    /// The fault starts the Call Manager afresh: it catches up from a snapshot.
    afresh: bool,
}

/// Figures a drill takes of a Call Manager fault.
#[derive(Debug, Clone, Default)]
pub struct CmCheck {
    /// The replica serving at the check, and who holds what there.
    pub serving: Option<usize>,
    pub census: Option<Census>,
    /// At the check, on the cluster's clock.
    pub at: Duration,
}

impl Control {
    /// Every Call Manager's row as of now, with how far behind the active sees each.
    pub fn callmanagers(&self) -> Vec<CmStatus> {
        let behind = self
            .shared
            .behind
            .lock()
            .map(|b| b.clone())
            .unwrap_or_default();
        self.shared
            .cms
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut row = s.row.lock().map(|r| r.clone()).unwrap_or_default();
                row.name.clone_from(&s.name);
                row.addr = s.addr();
                row.running = s.running();
                row.cut = s.is_cut();
                if !s.local {
                    // Another process's: what the active here sees of it is how far behind
                    // it is; the rest is that process's to say.
                    row.role = "elsewhere";
                    row.behind = behind.get(i).copied().flatten();
                    return row;
                }
                if !row.running {
                    row.role = "stopped";
                    row.serving = false;
                }
                // A stopped one lacks everything; the count says nothing.
                row.behind = behind.get(i).copied().flatten().filter(|_| row.running);
                row
            })
            .collect()
    }

    /// The index of the Call Manager named `name` (`cm-1` ..).
    pub fn cm_index(&self, name: &str) -> Option<usize> {
        self.shared.cms.iter().position(|s| s.name == name)
    }

    /// Which Call Manager serves the virtual IP now.
    pub fn serving_cm(&self) -> Option<usize> {
        self.callmanagers().iter().position(|c| c.serving && !c.cut)
    }

    /// The serving Call Manager's census now (none if nobody serves within 5 s).
    pub fn census(&self) -> CmCheck {
        let (tx, rx) = mpsc::channel();
        let at = self.now();
        let census = self
            .request(super::Request::Census(tx))
            .ok()
            .and_then(|()| rx.recv_timeout(Duration::from_secs(5)).ok());
        CmCheck {
            serving: self.serving_cm(),
            census,
            at,
        }
    }

    /// Call before a fault `verb` on Call Manager `index`: who serves, whom it holds.
    pub fn watch_cm_fault(&self, index: usize, verb: Verb) -> CmFaultWatch {
        self.watch_vip();
        CmFaultWatch {
            index,
            at: self.nanos(),
            before: self.census(),
            fenced: self.fenced_inputs(),
            afresh: crate::drill::starts_afresh(verb),
        }
    }

    /// Once the fault was carried out: waits for another Call Manager to answer from the
    /// virtual IP (if the fault took the serving one away; at most 10 s), lets `settle` pass,
    /// and compares whom the serving Call Manager holds then with whom the old one held. A
    /// call up at the fault counts as lost if the serving one neither holds it nor ended it by
    /// a BYE since (its BYE would get a 481); a registration, if its user is no longer bound.
    /// Also gives the users whose bindings were in force at the fault and had not expired by
    /// the check, for the caller to call each of them.
    pub fn cm_fault_figures(&self, w: &CmFaultWatch, settle: Duration) -> (CmFigures, Vec<u32>) {
        let hit_active = w.before.serving == Some(w.index);
        let limit = Instant::now() + crate::drill::CM_WATCH_LIMIT;
        let took_over = || {
            self.vip_log()
                .senders
                .into_iter()
                .find(|&(t, i)| t >= w.at && i != w.index)
                .map(|(t, _)| t)
        };
        let mut takeover = None;
        if hit_active {
            while takeover.is_none() && Instant::now() < limit {
                std::thread::sleep(Duration::from_millis(1));
                takeover = took_over();
            }
        }
        std::thread::sleep(settle);
        let after = self.census();
        let watch = self.vip_log();
        let longest_gap = watch.longest_gap(self.nanos());
        let none = Census::default();
        let (old, new) = (
            w.before.census.as_ref().unwrap_or(&none),
            after.census.as_ref().unwrap_or(&none),
        );
        // Calls the Call Manager itself ended since (failover drops, the longest call) were not
        // lost to the takeover: the drill counts them as dropped.
        let dropped: std::collections::HashSet<String> = self
            .records()
            .dropped
            .into_iter()
            .filter(|d| d.at >= w.at)
            .map(|d| d.call_id)
            .collect();
        let ended = |id: &str| new.ended.contains(id) || dropped.contains(id);
        let gone = |a: &str, b: Option<&str>| {
            !new.up.contains_key(a) && !ended(a) && b.is_none_or(|b| !ended(b))
        };
        let established_lost = old.up.iter().filter(|(a, b)| gone(a, b.as_deref())).count() as u64;
        // Bindings in force at the fault that had not expired by the check.
        let check = u64::try_from(after.at.as_nanos()).unwrap_or(u64::MAX);
        let due: Vec<u32> = old
            .users
            .iter()
            .filter(|&(_, &expires)| expires > check)
            .map(|(&u, _)| u)
            .collect();
        let registrations_lost = due.iter().filter(|u| !new.users.contains_key(u)).count() as u64;
        let (mut completed, mut failed, mut pending) = (0, 0, 0);
        for id in &old.setting_up {
            if new.setting_up.contains(id) {
                pending += 1;
            } else if new.up.contains_key(id) || ended(id) {
                completed += 1;
            } else {
                failed += 1;
            }
        }
        let (fenced_us, handover_gap_us, overlap) =
            crate::drill::handover(&watch.serving, w.at, w.index, hit_active);
        let name = |i: Option<usize>| {
            i.and_then(|i| self.shared.cms.get(i))
                .map(|s| s.name.clone())
        };
        let figures = CmFigures {
            before: name(w.before.serving),
            after: name(after.serving),
            hit_active,
            takeover_us: takeover.map(|t| t.saturating_sub(w.at) / 1000),
            fenced_us,
            handover_gap_us,
            overlap,
            established: old.up.len() as u64,
            established_lost,
            registrations: due.len() as u64,
            registrations_lost,
            registrations_missing: registrations_lost,
            called: None,
            setups: old.setting_up.len() as u64,
            setups_completed: completed,
            setups_failed: failed,
            setups_pending: pending,
            longest_silence_us: longest_gap / 1000,
            unserved: self.fenced_inputs().saturating_sub(w.fenced),
            checked_at: after.at,
            snapshot_bytes: w
                .afresh
                .then(|| self.callmanagers().into_iter().nth(w.index))
                .flatten()
                .filter(|c| c.running && c.stats.snapshots_taken > 0)
                .map(|c| c.stats.snapshot_bytes),
        };
        (figures, due)
    }

    /// What the virtual IP's watch has seen so far.
    fn vip_log(&self) -> VipWatch {
        self.shared
            .vip
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// Starts measuring the longest gap in what the virtual IP sends from now.
    fn watch_vip(&self) {
        let now = self.nanos();
        if let Ok(mut v) = self.shared.vip.lock() {
            v.watch_from = now;
            v.longest_gap = 0;
        }
    }

    /// Datagrams dropped at the virtual IP by replicas not serving, in all.
    fn fenced_inputs(&self) -> u64 {
        self.callmanagers()
            .iter()
            .map(|c| c.stats.fenced_inputs)
            .sum::<u64>()
            + self.shared.lost_fenced.load(Ordering::Relaxed)
    }

    fn nanos(&self) -> Nanos {
        u64::try_from(self.now().as_nanos()).unwrap_or(u64::MAX)
    }

    /// `verb` on Call Manager `i`: fail (its thread ends, its state with it), partition,
    /// heal, recover (a fresh one syncs; waits until it is a standby) or upgrade (resign,
    /// stop, restart, catch up).
    pub(super) fn act_on_cm(&self, verb: Verb, i: usize) -> Result<(), String> {
        let slot = self.slot(i)?;
        let name = &slot.name;
        if !slot.local {
            return Err(format!(
                "{name} runs in another process: send this to its own control endpoint"
            ));
        }
        if self.shared.cms.len() < 2 {
            return Err(format!(
                "{name} is the only Call Manager: with [callmanager] nodes = 1 there is nothing \
                 to take over; use nodes = 3"
            ));
        }
        match verb {
            Verb::Fail => {
                if !stop(slot) {
                    return Err(format!("{name} is not running"));
                }
                self.note(format!("{name} stopped (its state is gone)"));
            }
            Verb::Partition => {
                slot.cut.store(true, Ordering::Relaxed);
                self.note(format!("{name} cut off"));
            }
            Verb::Heal => {
                slot.cut.store(false, Ordering::Relaxed);
                self.note(format!("{name} reconnected"));
            }
            Verb::Recover => self.restart_cm(i)?,
            Verb::Stop => self.resign_and_stop(i, "stopped")?,
            Verb::Restart => {
                self.resign_and_stop(i, "stopped for a restart")?;
                self.restart_cm(i)?;
            }
            Verb::Upgrade => {
                self.resign_and_stop(i, "stopped for its upgrade")?;
                std::thread::sleep(pbxlab_scenario::UPGRADE_RESTART);
                self.restart_cm(i)?;
            }
            other => {
                return Err(super::OpError::NotForCallManager {
                    server: name.clone(),
                    action: other,
                }
                .to_string());
            }
        }
        Ok(())
    }

    /// A graceful stop: an active resigns first (a standby takes over after its skew alone,
    /// not the silence), then the thread ends.
    fn resign_and_stop(&self, i: usize, what: &str) -> Result<(), String> {
        let slot = self.slot(i)?;
        if !slot.running() {
            return Err(format!("{} is not running", slot.name));
        }
        slot.resign.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + RESIGN_LIMIT;
        while self
            .callmanagers()
            .get(i)
            .is_some_and(|c| c.role == "active")
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        stop(slot);
        self.note(format!("{} resigned and {what}", slot.name));
        Ok(())
    }

    /// Starts Call Manager `i` afresh (no state: it syncs) and waits until it is a standby.
    fn restart_cm(&self, i: usize) -> Result<(), String> {
        let slot = self.slot(i)?;
        let name = &slot.name;
        if slot.running() {
            return Err(format!("{name} is running"));
        }
        let addr = slot
            .addr()
            .ok_or_else(|| format!("{name} has no address"))?;
        // In a namespace, its thread binds the address there.
        let peer = match slot.netns {
            Some(_) => None,
            None => Some(
                UdpSocket::bind(addr).map_err(|e| format!("{name}: cannot bind {addr}: {e}"))?,
            ),
        };
        slot.cut.store(false, Ordering::Relaxed);
        slot.resign.store(false, Ordering::Relaxed);
        let replica = Replica::new(slot.cfg.clone(), None, self.nanos());
        if let Ok(mut row) = slot.row.lock() {
            *row = CmStatus::of(&replica, name, Some(addr), self.nanos());
        }
        let running = start(&self.shared, i, replica, None, peer)
            .map_err(|e| format!("{name}: cannot start its thread: {e}"))?;
        if let Ok(mut r) = slot.run.lock() {
            *r = Some(running);
        }
        self.note(format!("{name} started afresh, syncing"));
        let deadline = Instant::now() + CATCH_UP_LIMIT;
        loop {
            if self
                .callmanagers()
                .get(i)
                .is_some_and(|c| c.role == "standby")
            {
                self.note(format!("{name} caught up: a standby"));
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{name} did not catch up within {} s",
                    CATCH_UP_LIMIT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn slot(&self, i: usize) -> Result<&Slot, String> {
        self.shared
            .cms
            .get(i)
            .ok_or_else(|| format!("no Call Manager numbered {}", i + 1))
    }

    fn note(&self, what: String) {
        let line = format!("{:.3}s {what}", self.now().as_secs_f64());
        if let Ok(mut log) = self.shared.log.lock() {
            log.push(line);
        }
    }
}

/// Counts what a replica dropped without a `Replica` to count it on.
pub(super) fn count_lost(shared: &Shared, n: u64) {
    shared.lost_fenced.fetch_add(n, Ordering::Relaxed);
}

#[cfg(test)]
#[path = "group_tests.rs"]
mod tests;
