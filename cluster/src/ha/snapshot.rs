//! Snapshots on the wire: how a replica with no usable state gets the active's.
//!
//! A snapshot is the serving active's Call Manager (without its keys and the users' password
//! prefix: every replica holds them, and they never travel) and its place in the log, encoded as CBOR behind a version
//! tag. The active encodes it once per sync and sends it in chunks of [`MAX_CHUNK`] bytes
//! over the replication link, at most [`WINDOW`] bytes ahead of what the taker acknowledged
//! (go-back-N after a resend interval without progress, as the log's entries). The taker
//! keeps one transfer, takes chunks only in order and at most [`MAX_SNAPSHOT`] bytes in all,
//! and acknowledges how much it holds; when it has the whole snapshot it reads it, puts its
//! own keys in, and follows the log from the snapshot's place. A taker that starts over (a
//! new process, a snapshot it could not read) acknowledges nothing held, and the active
//! encodes a new snapshot for it.

use std::fmt;
use std::sync::Arc;

use super::wire::{MAX_CHUNK, Msg};
use super::{Replica, Role, WINDOW};
use crate::Nanos;
use crate::cm::CallManager;

/// The largest snapshot a replica takes: a Call Manager of 10,000 calls and 50,000 users is
/// a small fraction of it.
pub const MAX_SNAPSHOT: u64 = 1 << 30;
/// What a snapshot starts with; one of another layout is refused, not misread.
const TAG: &[u8] = b"PBXS/1\n";
/// After a snapshot its taker refused, or one that could not be written, the next waits this
/// long: a state that cannot travel is not written again and again on the serving thread.
const BACKOFF: Nanos = 1_000_000_000;

/// The active's state, read from a snapshot.
pub(super) struct Snapshot {
    pub cm: CallManager,
    pub applied: u64,
    pub applied_term: u64,
    pub term: u64,
    pub history: Vec<(u64, u64)>,
}

#[derive(serde::Serialize)]
struct Written<'a> {
    applied: u64,
    applied_term: u64,
    term: u64,
    history: &'a [(u64, u64)],
    cm: &'a CallManager,
}

#[derive(serde::Deserialize)]
struct Read {
    applied: u64,
    applied_term: u64,
    term: u64,
    history: Vec<(u64, u64)>,
    cm: CallManager,
}

/// The replica's state as a snapshot's bytes.
pub(super) fn encode(r: &Replica, cm: &CallManager) -> Result<Vec<u8>, String> {
    let mut out = TAG.to_vec();
    ciborium::into_writer(
        &Written {
            applied: r.applied,
            applied_term: r.applied_term,
            term: r.term,
            history: &r.history,
            cm,
        },
        &mut out,
    )
    .map_err(|e| format!("a snapshot could not be written: {e}"))?;
    Ok(out)
}

/// Reads a snapshot and puts the Call Manager's secrets back into it.
pub(super) fn decode(bytes: &[u8], secrets: &crate::cm::Secrets) -> Result<Snapshot, String> {
    let body = bytes
        .strip_prefix(TAG)
        .ok_or("not a snapshot of this version of pbxlab")?;
    let read: Read =
        ciborium::from_reader(body).map_err(|e| format!("an unreadable snapshot: {e}"))?;
    let mut cm = read.cm;
    cm.rekey(secrets);
    Ok(Snapshot {
        cm,
        applied: read.applied,
        applied_term: read.applied_term,
        term: read.term,
        history: read.history,
    })
}

/// What a snapshot of a replica's state costs, measured (`benches/snapshot.rs`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SnapshotCost {
    pub bytes: usize,
    /// Median of the runs: writing it on the active, and reading it (with the keys put back)
    /// on the taker.
    pub write: std::time::Duration,
    pub read: std::time::Duration,
    /// A copy of the Call Manager in memory, for comparison: what a snapshot cost when
    /// replicas were threads of one process and handed each other a clone.
    pub copy: std::time::Duration,
}

impl Replica {
    /// Writes this replica's state as a snapshot and reads it back, `runs` times each, on the
    /// wall clock (for a benchmark; the replica's own work never reads a clock).
    pub fn measure_snapshot(&self, runs: usize) -> Result<SnapshotCost, String> {
        let cm = self.cm.as_ref().ok_or("no state to snapshot")?;
        let median = |mut v: Vec<std::time::Duration>| {
            v.sort_unstable();
            v.get(v.len() / 2).copied().unwrap_or_default()
        };
        let (mut writes, mut reads, mut copies, mut bytes) =
            (Vec::new(), Vec::new(), Vec::new(), 0);
        for _ in 0..runs.max(1) {
            let began = std::time::Instant::now();
            let copy = cm.clone();
            copies.push(began.elapsed());
            drop(copy);
            let began = std::time::Instant::now();
            let written = encode(self, cm)?;
            writes.push(began.elapsed());
            let began = std::time::Instant::now();
            let read = decode(&written, &self.cfg.cm_secrets)?;
            reads.push(began.elapsed());
            bytes = written.len();
            drop(read);
        }
        Ok(SnapshotCost {
            bytes,
            write: median(writes),
            read: median(reads),
            copy: median(copies),
        })
    }
}

/// A snapshot on its way to one replica (the active's side).
#[derive(Clone)]
pub(super) struct Outgoing {
    pub term: u64,
    pub applied: u64,
    bytes: Arc<Vec<u8>>,
    /// What the taker said it holds.
    acked: u64,
    /// How far it has been sent.
    sent: u64,
    /// Since when chunks have been in flight without the taker acknowledging more.
    progress: Nanos,
}

impl fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Outgoing {{ applied: {}, bytes: {}, acked: {}, sent: {} }}",
            self.applied,
            self.bytes.len(),
            self.acked,
            self.sent
        )
    }
}

impl Outgoing {
    fn total(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// When chunks in flight are next sent again, if any are.
    pub(super) fn resend_at(&self, resend: Nanos) -> Option<Nanos> {
        (self.sent > self.acked).then(|| self.progress.saturating_add(resend))
    }
}

/// The snapshot a replica is taking.
pub(super) struct Incoming {
    from: u8,
    term: u64,
    applied: u64,
    total: u64,
    bytes: Vec<u8>,
}

impl Replica {
    /// A snapshot is on its way to this replica.
    pub fn taking_snapshot(&self) -> bool {
        self.incoming.is_some()
    }

    /// When the serving active next has something to do for a snapshot: chunks to send
    /// again, or a snapshot it held back. Nothing while it does not serve: it sends none then.
    pub(super) fn snapshot_deadlines(&self) -> impl Iterator<Item = Nanos> + '_ {
        let serving = self.serving(self.seen);
        let (resend, heartbeat) = (self.cfg.resend(), self.cfg.heartbeat);
        self.peers
            .iter()
            .filter(move |_| serving)
            .filter_map(move |p| match &p.snapshot {
                Some(s) if self.seen < p.heard.saturating_add(heartbeat) => s.resend_at(resend),
                Some(_) => None,
                None => (p.needs_sync && p.snapshot_after > self.seen).then_some(p.snapshot_after),
            })
    }

    /// The serving active starts a snapshot for each replica that needs one and sends every
    /// transfer's chunks within its window.
    pub(super) fn send_chunks(&mut self, now: Nanos) {
        if !self.serving(self.seen) {
            return;
        }
        let me = usize::from(self.cfg.index);
        let wants = |i: usize, p: &super::Peer| {
            i != me && p.needs_sync && p.snapshot.is_none() && now >= p.snapshot_after
        };
        let wanted = self.peers.iter().enumerate().any(|(i, p)| wants(i, p));
        if wanted && let Some(cm) = self.cm.as_ref() {
            let written = encode(self, cm).and_then(|bytes| {
                if bytes.len() as u64 > MAX_SNAPSHOT {
                    Err(format!(
                        "a snapshot of {} bytes, beyond the {MAX_SNAPSHOT} a replica takes",
                        bytes.len()
                    ))
                } else {
                    Ok(bytes)
                }
            });
            match written {
                Ok(bytes) => {
                    self.stats.snapshot_bytes = bytes.len() as u64;
                    let bytes = Arc::new(bytes);
                    for (i, p) in self.peers.iter_mut().enumerate() {
                        if wants(i, p) {
                            p.snapshot = Some(Outgoing {
                                term: self.term,
                                applied: self.applied,
                                bytes: Arc::clone(&bytes),
                                acked: 0,
                                sent: 0,
                                progress: now,
                            });
                            self.stats.snapshots_sent += 1;
                        }
                    }
                }
                Err(e) => {
                    self.stats.snapshot_errors += 1;
                    self.last_snapshot_error = Some(e);
                    for (i, p) in self.peers.iter_mut().enumerate() {
                        if wants(i, p) {
                            p.snapshot_after = now + BACKOFF;
                        }
                    }
                }
            }
        }
        let (resend, heartbeat) = (self.cfg.resend(), self.cfg.heartbeat);
        for i in 0..self.peers.len() {
            let mut chunks = Vec::new();
            if let Some(p) = self.peers.get_mut(i)
                && let Some(s) = p.snapshot.as_mut()
            {
                let live = now < p.heard.saturating_add(heartbeat);
                if live && s.sent > s.acked && now >= s.progress.saturating_add(resend) {
                    s.sent = s.acked;
                    s.progress = now;
                }
                let total = s.total();
                while s.sent < total && s.sent - s.acked < WINDOW as u64 {
                    if s.sent == s.acked {
                        s.progress = now;
                    }
                    let end = (s.sent + MAX_CHUNK as u64).min(total);
                    let data = s
                        .bytes
                        .get(s.sent as usize..end as usize)
                        .unwrap_or_default()
                        .to_vec();
                    chunks.push(Msg::Chunk {
                        term: s.term,
                        applied: s.applied,
                        total,
                        offset: s.sent,
                        data,
                    });
                    s.sent = end;
                }
            }
            for msg in chunks {
                self.send(i, &msg);
            }
        }
    }

    /// A chunk of the active's snapshot.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_chunk(
        &mut self,
        now: Nanos,
        from: u8,
        term: u64,
        applied: u64,
        total: u64,
        offset: u64,
        data: &[u8],
    ) {
        let answer = |r: &mut Replica, got: u64, installed: bool| {
            r.send(
                usize::from(from),
                &Msg::ChunkAck {
                    term,
                    applied,
                    got,
                    installed,
                },
            );
        };
        if !self.follow(now, from, term) {
            return;
        }
        if self.taken == Some((term, applied)) {
            // One it took already, sent again after its answer was lost: say so again.
            answer(self, total, true);
            return;
        }
        if total > MAX_SNAPSHOT {
            // Refused, and said so: the active holds back its next one.
            self.stats.rejected += 1;
            answer(self, 0, false);
            return;
        }
        let same = self
            .incoming
            .as_ref()
            .is_some_and(|s| (s.from, s.term, s.applied, s.total) == (from, term, applied, total));
        if !same {
            if offset != 0 {
                // A transfer this replica does not hold (it started afresh): from the start.
                answer(self, 0, false);
                return;
            }
            self.incoming = Some(Incoming {
                from,
                term,
                applied,
                total,
                bytes: Vec::with_capacity(usize::try_from(total.min(64 << 20)).unwrap_or(0)),
            });
        }
        let Some(s) = self.incoming.as_mut() else {
            return;
        };
        let held = s.bytes.len() as u64;
        if offset == held && held + data.len() as u64 <= total {
            s.bytes.extend_from_slice(data);
        }
        let got = s.bytes.len() as u64;
        if got < total {
            answer(self, got, false);
            return;
        }
        let Some(s) = self.incoming.take() else {
            return;
        };
        match decode(&s.bytes, &self.cfg.cm_secrets) {
            Ok(snap) if snap.applied == applied && snap.term == term => {
                // A standby that already stands where the snapshot does, in a log that agrees
                // with it, holds what it would take.
                let level = self.role == Role::Standby
                    && (self.applied, self.applied_term) == (snap.applied, snap.applied_term);
                let installed = self.install(now, snap) || level;
                if installed {
                    self.taken = Some((term, applied));
                    self.stats.snapshot_bytes = total;
                }
                answer(self, total, installed);
            }
            Ok(_) | Err(_) => {
                // Unreadable, or not the snapshot it claimed to be: asked for afresh.
                self.stats.snapshot_errors += 1;
                answer(self, 0, false);
            }
        }
    }

    /// The taker's answer to a chunk.
    pub(super) fn on_chunk_ack(
        &mut self,
        now: Nanos,
        from: u8,
        term: u64,
        applied: u64,
        got: u64,
        installed: bool,
    ) {
        if self.role != Role::Active || term != self.term {
            return;
        }
        let Some(p) = self.peers.get_mut(usize::from(from)) else {
            return;
        };
        p.heard = now;
        let Some(s) = p.snapshot.as_mut().filter(|s| s.applied == applied) else {
            return;
        };
        if installed {
            self.handed(from, applied);
            return;
        }
        if got > s.acked {
            s.acked = got.min(s.total());
            s.progress = now;
            s.sent = s.sent.max(s.acked);
        } else if got == 0 && s.sent >= s.total() {
            // It had every chunk and holds nothing: it refused the snapshot (or could not
            // read it). Another, later.
            p.snapshot = None;
            p.snapshot_after = now + BACKOFF;
        } else if got == 0 && s.acked > 0 {
            // It holds nothing of it any more (it started afresh): a new snapshot, from the
            // state as it is now.
            p.snapshot = None;
        }
    }
}
