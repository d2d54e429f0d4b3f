//! Our client transactions (RFC 3261 17.1): each request we send in a call is kept in a slab
//! slot until its final response, retransmitted on its own timers (A and E from T1, doubling;
//! B and F at 64*T1), and found again by the `{slot}x{generation}` in its branch. The branch
//! also carries a MAC of those two numbers, so an answer is only believed from someone who saw
//! our request (a forger who guessed the numbers once could end a ringing call). An INVITE may
//! also have a ring limit, which takes over from Timer B once it is answered 1xx.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;

use pbxlab_proto::mac::Key;

use super::calls::CallRef;
use super::{Keyed, Nanos, Outbox};

/// How the branch of each of our transactions starts; the id and its MAC follow.
const BRANCH: &str = "z9hG4bKc";

/// A transaction's slot and the slot's generation, so a stale id names nothing.
#[derive(
    serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub(super) struct TxId(u32, u32);

impl TxId {
    /// A transaction id of these numbers, for tests that make records by hand.
    #[cfg(test)]
    pub(super) fn new(slot: u32, generation: u32) -> TxId {
        TxId(slot, generation)
    }
}

/// What a response's top Via branch says about our transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Branch {
    /// One of ours, its MAC checked.
    Ours(TxId),
    /// Shaped like ours, but its MAC is not the one we made: forged, or from before a restart.
    Forged,
    /// Not shaped like ours at all.
    Other,
}

/// What a transaction's request was for, which decides what its answer (or silence) does.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    InviteB,
    ReinviteA,
    ReinviteB,
    ByeA,
    ByeB,
    CancelB,
}

/// Why [`Transactions::fire`] gave up on a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// No final response within 64*T1 (Timers B and F): the transaction is closed.
    Timeout,
    /// An INVITE answered 1xx rang past its limit (RFC 3261 Timer C, 16.6 step 11): it stays
    /// open, to be CANCELled.
    RingLimit,
}

/// A client transaction we started, retransmitted until answered.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
struct ClientTx {
    generation: u32,
    live: bool,
    call: CallRef,
    purpose: Purpose,
    dest: SocketAddr,
    bytes: Vec<u8>,
    invite: bool,
    rto: Nanos,
    next: Nanos,
    deadline: Nanos,
    /// An INVITE stops retransmitting on a provisional response (Timer A ends).
    proceeding: bool,
    /// When an INVITE answered 1xx is given up; Timer B no longer applies to it then.
    ring_until: Nanos,
}

#[derive(serde::Serialize, serde::Deserialize, Clone)]
pub(super) struct Transactions {
    /// Keys the MAC in each branch. Never in a snapshot.
    #[serde(skip, default = "super::unkeyed")]
    key: Key,
    slots: Vec<ClientTx>,
    free: Vec<u32>,
    timers: BinaryHeap<Reverse<(Nanos, TxId)>>,
    t1: Nanos,
    t2: Nanos,
}

impl Transactions {
    pub(super) fn rekey(&mut self, key: Key) {
        self.key = key;
    }

    pub(super) fn new(t1: Nanos, t2: Nanos, key: Key) -> Transactions {
        Transactions {
            key,
            slots: Vec::new(),
            free: Vec::new(),
            timers: BinaryHeap::new(),
            t1,
            t2,
        }
    }

    /// The Via of transaction `id`'s request, sent from `us`; a CANCEL repeats its INVITE's.
    pub(super) fn via(&self, id: TxId, us: SocketAddr) -> String {
        let mac = Keyed::TRANSACTION.mac(&self.key, id.0, id.1);
        format!(
            "SIP/2.0/UDP {us};branch={BRANCH}{}x{}x{mac:016x};rport",
            id.0, id.1
        )
    }

    /// The transaction a response's top Via branch names, if the branch is one of ours and its
    /// MAC holds.
    pub(super) fn branch(&self, branch: &str) -> Branch {
        let Some(rest) = branch.strip_prefix(BRANCH) else {
            return Branch::Other;
        };
        match Keyed::TRANSACTION.check(&self.key, rest) {
            Some((slot, generation)) => Branch::Ours(TxId(slot, generation)),
            None => Branch::Forged,
        }
    }

    /// Where the transaction's request went: the only address its answers may come from.
    pub(super) fn dest(&self, id: TxId) -> Option<SocketAddr> {
        self.slots
            .get(id.0 as usize)
            .filter(|t| t.live && t.generation == id.1)
            .map(|t| t.dest)
    }

    fn get_mut(&mut self, id: TxId) -> Option<&mut ClientTx> {
        self.slots
            .get_mut(id.0 as usize)
            .filter(|t| t.live && t.generation == id.1)
    }

    /// Opens a transaction of `call` towards `dest`. Its request names the id in its branch,
    /// so it is rendered afterwards and handed to [`Transactions::send`].
    pub(super) fn open(
        &mut self,
        now: Nanos,
        call: CallRef,
        purpose: Purpose,
        dest: SocketAddr,
        invite: bool,
    ) -> TxId {
        let t1 = self.t1;
        let fresh = ClientTx {
            generation: 0,
            live: true,
            call,
            purpose,
            dest,
            bytes: Vec::new(),
            invite,
            rto: t1,
            next: now + t1,
            deadline: now + 64 * t1,
            proceeding: false,
            ring_until: Nanos::MAX,
        };
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(fresh.clone());
                (self.slots.len() - 1) as u32
            }
        };
        let tx = &mut self.slots[index as usize];
        // Reuse the slot's buffer; the generation tells a stale id from this one.
        let generation = tx.generation.wrapping_add(1);
        let bytes = std::mem::take(&mut tx.bytes);
        *tx = ClientTx {
            generation,
            bytes,
            ..fresh
        };
        let id = TxId(index, generation);
        self.timers.push(Reverse((now + t1, id)));
        id
    }

    /// Queues `request` as the request of transaction `id` and keeps it for retransmission.
    pub(super) fn send(&mut self, id: TxId, request: &[u8], out: &mut Outbox) {
        if let Some(tx) = self.get_mut(id) {
            tx.bytes.clear();
            tx.bytes.extend_from_slice(request);
            out.push(tx.dest, request);
        }
    }

    /// Gives INVITE `id` up at `at` if it is still ringing then (answered 1xx, no final).
    pub(super) fn limit_ringing(&mut self, id: TxId, at: Nanos) {
        if let Some(tx) = self.get_mut(id) {
            tx.ring_until = at;
            self.timers.push(Reverse((at, id)));
        }
    }

    /// Timer B's span, 64*T1: how long an INVITE may go without a final response.
    pub(super) fn timer_b(&self) -> Nanos {
        64 * self.t1
    }

    /// Whether transaction `id` is still open.
    pub(super) fn is_open(&self, id: TxId) -> bool {
        self.slots
            .get(id.0 as usize)
            .is_some_and(|t| t.live && t.generation == id.1)
    }

    pub(super) fn close(&mut self, id: TxId) {
        if let Some(tx) = self.get_mut(id) {
            tx.live = false;
            tx.bytes.clear();
            self.free.push(id.0);
        }
    }

    /// A response with status `code` to transaction `id`: whose it is and what it was for, or
    /// None when the transaction is over. A final response closes it.
    pub(super) fn on_response(&mut self, id: TxId, code: u16) -> Option<(CallRef, Purpose)> {
        let tx = self.get_mut(id)?;
        let answered = (tx.call, tx.purpose);
        if code < 200 {
            if tx.invite && !tx.proceeding {
                tx.proceeding = true;
                // A first 1xx after the limit passed: the limit's timer may have run already.
                if tx.ring_until != Nanos::MAX {
                    let at = tx.ring_until;
                    self.timers.push(Reverse((at, id)));
                }
            }
        } else {
            self.close(id);
        }
        Some(answered)
    }

    pub(super) fn next_timer(&self) -> Option<(Nanos, TxId)> {
        self.timers.peek().map(|&Reverse(t)| t)
    }

    pub(super) fn pop_timer(&mut self) {
        self.timers.pop();
    }

    /// Runs the timer of transaction `id` at `now`: its request is sent again, or, past its
    /// deadline or ring limit, its call and purpose are returned with the reason.
    pub(super) fn fire(
        &mut self,
        now: Nanos,
        id: TxId,
        out: &mut Outbox,
    ) -> Option<(CallRef, Purpose, Expiry)> {
        let t2 = self.t2;
        let tx = self.get_mut(id)?;
        if tx.proceeding {
            // Timer B ends with the 1xx (RFC 3261 17.1.1.2); only the ring limit is left.
            if now < tx.ring_until {
                return None;
            }
            tx.ring_until = Nanos::MAX;
            return Some((tx.call, tx.purpose, Expiry::RingLimit));
        }
        if now >= tx.deadline {
            let timed_out = (tx.call, tx.purpose, Expiry::Timeout);
            self.close(id);
            return Some(timed_out);
        }
        if tx.next > now {
            return None;
        }
        tx.rto = if tx.invite {
            tx.rto * 2
        } else {
            (tx.rto * 2).min(t2)
        };
        tx.next = now + tx.rto;
        let at = tx.next.min(tx.deadline);
        out.push(tx.dest, &tx.bytes);
        self.timers.push(Reverse((at, id)));
        None
    }
}
