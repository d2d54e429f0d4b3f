//! The active's side of the log (what each standby is sent, sent again, and has
//! acknowledged, and so what is committed) and the standby's (replaying what it is sent).

use super::wire::{MAX_APPEND, Msg};
use super::*;

impl Replica {
    /// Entries sent a resend interval ago and still not acknowledged are sent again, from the
    /// first the standby lacks (go-back-N: the standby applies in order and drops the rest).
    pub(super) fn resend_due(&mut self, now: Nanos) {
        let (resend, heartbeat) = (self.cfg.resend(), self.cfg.heartbeat);
        for p in &mut self.peers {
            // One that answered nothing for a heartbeat is not sent the window again and
            // again; its next acknowledgement says where to go on from.
            let live = now < p.heard.saturating_add(heartbeat);
            let base = p.acked.max(p.floor);
            if live
                && !p.needs_sync
                && base < self.applied
                && p.next_send > base + 1
                && now >= p.progress + resend
            {
                self.stats.entries_resent += p.next_send - base - 1;
                p.next_send = base + 1;
                p.progress = now;
            }
        }
    }

    /// Sends each standby the entries it has not been sent, within its window.
    pub(super) fn send_entries(&mut self, now: Nanos) {
        for i in 0..self.peers.len() {
            if i == usize::from(self.cfg.index) {
                continue;
            }
            while let Some(p) = self.peers.get(i) {
                if p.needs_sync || p.next_send > self.applied {
                    break;
                }
                if p.next_send < self.log_first {
                    // What it lacks is no longer kept.
                    if let Some(p) = self.peers.get_mut(i) {
                        p.needs_sync = true;
                    }
                    break;
                }
                let in_flight: usize = self.bytes_between(
                    p.acked.max(p.floor).max(self.log_first - 1) + 1,
                    p.next_send,
                );
                if in_flight >= WINDOW {
                    break;
                }
                let first_seq = p.next_send;
                let mut entries = Vec::new();
                let mut size = 0;
                let mut seq = first_seq;
                while seq <= self.applied {
                    let Some((t, e)) = self.log.get((seq - self.log_first) as usize) else {
                        break;
                    };
                    if !entries.is_empty() && size + e.len() + 12 > MAX_APPEND {
                        break;
                    }
                    size += e.len() + 12;
                    entries.push((*t, e.clone()));
                    seq += 1;
                }
                if entries.is_empty() {
                    break;
                }
                self.stats.entries_sent += entries.len() as u64;
                if let Some(p) = self.peers.get_mut(i) {
                    if p.next_send == p.acked + 1 {
                        // Nothing was in flight: the wait for an acknowledgement starts now.
                        p.progress = now;
                    }
                    p.next_send = seq;
                }
                let msg = Msg::Append {
                    term: self.term,
                    commit: self.commit,
                    first_seq,
                    prev_term: self.term_at(first_seq - 1),
                    entries,
                };
                self.send(i, &msg);
            }
        }
    }

    pub(super) fn bytes_between(&self, from: u64, to: u64) -> usize {
        if to <= from || from < self.log_first {
            return 0;
        }
        let (a, b) = (
            (from - self.log_first) as usize,
            (to - self.log_first) as usize,
        );
        self.log
            .range(a..b.min(self.log.len()))
            .map(|(_, e)| e.len())
            .sum()
    }

    /// Entries of the active's log from `first_seq`, applied from the first this replica
    /// lacks; a gap waits for the active to send again.
    pub(super) fn replay(&mut self, first_seq: u64, prev_term: u64, entries: Entries) {
        if self.role == Role::Syncing || first_seq == 0 {
            return;
        }
        if first_seq > self.applied + 1 {
            // Overtaken on the way: kept (within bounds) until the gap is filled, rather
            // than sent again.
            if self.ahead.len() < MAX_AHEAD && !self.ahead.contains_key(&first_seq) {
                self.ahead.insert(first_seq, (prev_term, entries));
            }
            return;
        }
        self.apply_entries(first_seq, prev_term, entries);
        while let Some(entry) = self.ahead.first_entry() {
            if *entry.key() > self.applied + 1 || self.role == Role::Syncing {
                break;
            }
            let (first, (prev, entries)) = entry.remove_entry();
            self.apply_entries(first, prev, entries);
        }
    }

    pub(super) fn apply_entries(&mut self, first_seq: u64, prev_term: u64, entries: Entries) {
        if first_seq > 1 && self.term_at(first_seq - 1) != prev_term {
            // Our entry before these is not the active's: our log went another way (inputs
            // of an active nobody else followed), and only a snapshot puts it right.
            self.become_syncing();
            return;
        }
        let mut seq = first_seq;
        for (t, e) in entries {
            if seq <= self.applied {
                if self.term_at(seq) != t {
                    self.become_syncing();
                    return;
                }
                seq += 1;
                continue;
            }
            if seq > self.applied + 1 {
                return;
            }
            let Ok((at, input)) = wire::decode_input(&e) else {
                // The active's own encoding; a standby that cannot read it cannot follow.
                self.stats.rejected += 1;
                self.become_syncing();
                return;
            };
            // A refused operator action was refused on the active too: nothing to do.
            let _ = self.apply(at, &input);
            if self.term_at(seq) != t || self.history.is_empty() {
                self.history.push((t, seq));
            }
            self.applied = seq;
            self.applied_term = t;
            self.hold_outputs();
            self.push_log(t, e);
            seq += 1;
        }
    }

    pub(super) fn on_ack(
        &mut self,
        now: Nanos,
        from: u8,
        term: u64,
        echo: Option<Nanos>,
        applied: u64,
        applied_term: u64,
    ) {
        if term > self.term {
            if self.role == Role::Active {
                self.step_down(term);
            } else {
                self.term = term;
            }
            return;
        }
        if self.role != Role::Active || term < self.term {
            return;
        }
        let consistent = applied == 0 || self.term_at(applied) == applied_term;
        let quorum = self.cfg.quorum();
        let index = usize::from(self.cfg.index);
        let Some(p) = self.peers.get_mut(usize::from(from)) else {
            return;
        };
        p.heard = now;
        if echo.is_some() {
            p.echo = p.echo.max(echo);
        }
        // It took the snapshot it was sent, and the answer that said so was lost.
        let took = p
            .snapshot
            .as_ref()
            .is_some_and(|s| applied > 0 && applied >= s.applied && s.term == term);
        if took && consistent {
            let at = p.snapshot.as_ref().map_or(0, |s| s.applied);
            self.handed(from, at);
        }
        let Some(p) = self.peers.get_mut(usize::from(from)) else {
            return;
        };
        if !consistent || applied > self.applied {
            p.needs_sync = true;
        } else {
            if applied > p.acked {
                p.acked = applied;
                p.progress = now;
            }
            if p.next_send <= p.acked {
                p.next_send = p.acked + 1;
            }
        }
        // The lease: the newest heartbeat a majority (with us) acknowledged, plus the lease.
        let mut echoes: Vec<Option<Nanos>> = self
            .peers
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != index)
            .map(|(_, p)| p.echo)
            .collect();
        echoes.sort_unstable_by(|a, b| b.cmp(a));
        if let Some(&Some(e)) = echoes.get(quorum.saturating_sub(2)) {
            self.lease_until = self.lease_until.max(e.saturating_add(self.cfg.lease()));
        }
        let mut acks: Vec<u64> = self
            .peers
            .iter()
            .enumerate()
            .filter(|&(i, p)| i != index && !p.needs_sync)
            .map(|(_, p)| p.acked)
            .collect();
        acks.sort_unstable_by(|a, b| b.cmp(a));
        if let Some(&c) = acks.get(quorum.saturating_sub(2)) {
            self.commit = self.commit.max(c.min(self.applied));
        }
        self.release(now);
    }
}
