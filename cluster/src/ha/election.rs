//! Standing, voting and winning: a standby that has not heard the active for the silence asks
//! whether it would be voted for (the pre-vote), then for votes, and a replica grants one
//! vote per term to a candidate whose log is at least as long as its own.

use super::*;

impl Replica {
    /// Becomes a candidate and asks whether the others would vote for it in the next term
    /// (the pre-vote); only if a majority would does it take the term and ask for real.
    pub(super) fn stand(&mut self, now: Nanos) {
        self.role = Role::Candidate;
        self.pre_vote = true;
        self.ask_votes(now, self.term + 1, true);
    }

    pub(super) fn ask_votes(&mut self, now: Nanos, term: u64, pre: bool) {
        self.votes.fill(false);
        if let Some(v) = self.votes.get_mut(usize::from(self.cfg.index)) {
            *v = true;
        }
        self.election_deadline = now + self.cfg.silence() + self.cfg.skew();
        let (applied, applied_term) = (self.applied, self.applied_term);
        self.broadcast(&Msg::VoteRequest {
            term,
            applied,
            applied_term,
            pre,
        });
        self.count_votes(now);
    }

    pub(super) fn count_votes(&mut self, now: Nanos) {
        if self.role != Role::Candidate
            || self.votes.iter().filter(|&&v| v).count() < self.cfg.quorum()
        {
            return;
        }
        if self.pre_vote {
            // A majority would vote: the election proper.
            self.pre_vote = false;
            self.term += 1;
            self.voted_in = self.term;
            self.stats.elections += 1;
            let term = self.term;
            self.ask_votes(now, term, false);
            return;
        }
        self.role = Role::Active;
        self.active = Some(self.cfg.index);
        self.became_active = Some(now);
        self.lease_until = 0;
        self.stats.takeovers += 1;
        self.history.push((self.term, self.applied + 1));
        for p in &mut self.peers {
            p.acked = 0;
            p.echo = None;
            p.next_send = self.applied + 1;
            p.needs_sync = false;
            p.floor = 0;
            p.snapshot = None;
        }
        self.commit = self.commit.min(self.applied);
        self.next_heartbeat = now + self.cfg.heartbeat;
        self.heartbeat(now);
    }

    /// Whether this replica votes for a candidate of `term` whose log ends at `applied`
    /// (`pre`: whether it would, changing nothing).
    pub(super) fn grant(
        &mut self,
        now: Nanos,
        term: u64,
        applied: u64,
        applied_term: u64,
        pre: bool,
    ) -> bool {
        if term < self.term || self.role == Role::Syncing || self.cm.is_none() {
            return false;
        }
        // An active that still holds its lease is alive; a replica that heard it within a
        // lease will not help replace it.
        if self.role == Role::Active || now < self.heard.saturating_add(self.cfg.lease()) {
            return false;
        }
        if self.voted_in >= term {
            return false;
        }
        if pre {
            return (applied_term, applied) >= (self.applied_term, self.applied);
        }
        if term > self.term {
            self.term = term;
            if self.role == Role::Candidate {
                self.role = Role::Standby;
            }
        }
        if (applied_term, applied) < (self.applied_term, self.applied) {
            return false;
        }
        self.voted_in = term;
        self.heard = now;
        true
    }
}
