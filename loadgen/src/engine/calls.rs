//! The calls table: one slot per call leg, ours (UAC) and those we answer (UAS), reused by
//! generation so a response finds its call from the ids in its Call-ID and branch.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::{Index, IndexMut};

use super::wire::{parse_call_id, stream_id};
use super::{MediaCommand, Nanos};

/// Where an outgoing call is in its service's flow while established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Held until `hold_until`, then BYE: plain calls, meetings, IVR calls that are not routed.
    Hold,
    /// An IVR call that asked for a queue, waiting for the transfer (re-INVITE).
    Menu,
    /// Waiting for an agent; `hold_until` is when patience runs out.
    Queued,
    /// Talking to an agent until `hold_until`.
    Agent,
    /// Hung up out of patience: the BYE's 200 counts the call as abandoned.
    Abandoned,
}

/// How one of our calls ended, for the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    Succeeded,
    Failed,
    Abandoned,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CallState {
    Free,
    /// INVITE sent, nothing heard yet.
    Calling,
    /// A provisional response came; waiting for the final one.
    Proceeding,
    Established,
    ByeSent,
    /// We answer this call: ringing, the 200 not yet sent.
    Ringing,
    /// Our 200 is out; waiting for the ACK.
    Answered,
    UasEstablished,
}

/// One call leg. Kept small: the Call-ID, branches and our tags are derived from the slot and
/// generation, not stored.
#[derive(Debug, Clone)]
pub(super) struct Call {
    pub(super) generation: u32,
    pub(super) state: CallState,
    pub(super) intended: Nanos,
    pub(super) cseq: u32,
    /// Number of INVITEs sent in this call (a digest retry sends a second one).
    pub(super) invite_round: u8,
    /// Our user on an outgoing call (an index into `Config::users`, see
    /// `Engine::pick_users`).
    pub(super) caller: u32,
    /// Our user called: on an outgoing call to another of our users, and on a call we answer.
    pub(super) callee: Option<u32>,
    /// Index of the call's workload in `Config::workloads`.
    pub(super) workload: u32,
    pub(super) stage: Stage,
    /// When the current wait began: digits requested (`Menu`), queue entered (`Queued`).
    pub(super) stage_at: Nanos,
    /// The digit an IVR caller chose (`Dtmf::Queue`), 0 for none.
    pub(super) digit: u8,
    /// Meeting room number, 0 if not a meeting call.
    pub(super) room: u32,
    /// Highest CSeq of a request from the far end in this dialog, so a retransmitted
    /// re-INVITE does not advance the call.
    pub(super) remote_cseq: u32,
    pub(super) pdd_seen: bool,
    /// When the first INVITE actually left, for the uncorrected setup time.
    pub(super) sent: Nanos,
    pub(super) retransmit_at: Nanos,
    pub(super) rto: Nanos,
    pub(super) timeout_at: Nanos,
    pub(super) hold_until: Nanos,
    /// Deadline of this call's one live entry in the timer heap (MAX: none). Entries that do
    /// not match are stale and skipped, so finished calls leave nothing behind for 32 s.
    pub(super) armed_at: Nanos,
    pub(super) bye_sent_at: Nanos,
    /// Their tag, their target URI and the route set (UAC: reversed Record-Route).
    pub(super) remote_tag: String,
    pub(super) remote_target: String,
    pub(super) routes: Vec<String>,
    pub(super) next_hop: SocketAddr,
    /// Authorization header line for INVITE retransmissions after a challenge.
    pub(super) auth: String,
    pub(super) rtp: bool,
    /// UAS only: the Call-ID and the header block our responses repeat (Via, From, To with our
    /// tag, Call-ID, CSeq, Record-Route).
    pub(super) uas_call_id: String,
    pub(super) uas_headers: String,
    pub(super) uas_offer_addr: Option<SocketAddr>,
    /// The caller offered `inactive`: our answer says so too, and no audio runs.
    pub(super) uas_inactive: bool,
    /// One of the calls we placed (the UAC leg), as opposed to one we answer.
    pub(super) placed: bool,
}

impl Call {
    fn free() -> Call {
        Call {
            generation: 0,
            state: CallState::Free,
            intended: 0,
            cseq: 0,
            invite_round: 0,
            caller: 0,
            callee: None,
            workload: 0,
            stage: Stage::Hold,
            stage_at: 0,
            digit: 0,
            room: 0,
            remote_cseq: 0,
            pdd_seen: false,
            sent: 0,
            retransmit_at: Nanos::MAX,
            rto: 0,
            timeout_at: Nanos::MAX,
            hold_until: Nanos::MAX,
            armed_at: Nanos::MAX,
            bye_sent_at: 0,
            remote_tag: String::new(),
            remote_target: String::new(),
            routes: Vec::new(),
            next_hop: SocketAddr::from(([0, 0, 0, 0], 0)),
            auth: String::new(),
            rtp: false,
            uas_call_id: String::new(),
            uas_headers: String::new(),
            uas_offer_addr: None,
            uas_inactive: false,
            placed: false,
        }
    }
}

/// The slab of call legs.
#[derive(Debug, Default)]
pub(super) struct Calls {
    slots: Vec<Call>,
    free: Vec<u32>,
    /// The calls we answer, by their Call-ID (the caller chose it, so it encodes no slot).
    answering: HashMap<String, u32>,
    /// Slots in use, either side.
    active: usize,
    /// Of those, the calls we placed: a call between two of our users is one call in two legs.
    placed: usize,
    /// The most calls we had placed in progress at once.
    placed_peak: usize,
}

impl Calls {
    /// Slots ever used, free or not.
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn get(&self, slot: usize) -> Option<&Call> {
        self.slots.get(slot)
    }

    pub(super) fn get_mut(&mut self, slot: usize) -> Option<&mut Call> {
        self.slots.get_mut(slot)
    }

    /// Call legs in progress (either side).
    pub(super) fn active(&self) -> usize {
        self.active
    }

    /// Calls we placed that are in progress.
    pub(super) fn placed(&self) -> usize {
        self.placed
    }

    /// The most calls we had placed in progress at once.
    pub(super) fn placed_peak(&self) -> usize {
        self.placed_peak
    }

    /// A slot for a call we place.
    pub(super) fn alloc_placed(&mut self) -> u32 {
        let slot = self.alloc();
        self.slots[slot as usize].placed = true;
        self.placed += 1;
        self.placed_peak = self.placed_peak.max(self.placed);
        slot
    }

    /// A slot for a call we answer.
    pub(super) fn alloc(&mut self) -> u32 {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Call::free());
                (self.slots.len() - 1) as u32
            }
        };
        let c = &mut self.slots[slot as usize];
        let generation = c.generation.wrapping_add(1);
        *c = Call {
            generation,
            ..Call::free()
        };
        self.active += 1;
        slot
    }

    /// Frees `slot`, stopping its media (the stop goes to `media`).
    pub(super) fn release(&mut self, slot: u32, media: &mut Vec<MediaCommand>) {
        let c = &mut self.slots[slot as usize];
        if c.state == CallState::Free {
            return;
        }
        if c.rtp {
            media.push(MediaCommand::Stop {
                stream: stream_id(slot, c.generation),
            });
        }
        if !c.uas_call_id.is_empty() {
            let id = std::mem::take(&mut c.uas_call_id);
            self.answering.remove(&id);
        }
        if c.placed {
            self.placed = self.placed.saturating_sub(1);
        }
        let generation = c.generation;
        *c = Call {
            generation,
            ..Call::free()
        };
        self.free.push(slot);
        self.active = self.active.saturating_sub(1);
    }

    /// The call we answer with this Call-ID.
    pub(super) fn answering(&self, call_id: &str) -> Option<u32> {
        self.answering.get(call_id).copied()
    }

    /// `slot` answers the call with this Call-ID.
    pub(super) fn answer(&mut self, call_id: String, slot: u32) {
        self.answering.insert(call_id, slot);
    }

    /// A Call-ID of ours: (slot, generation) for a live call of run `run_id`.
    pub(super) fn own(&self, call_id: &str, run_id: u32) -> Option<(u32, u32)> {
        let (slot, generation, run) = parse_call_id(call_id)?;
        let c = self.slots.get(slot as usize)?;
        (run == run_id
            && c.generation == generation
            && c.state != CallState::Free
            && c.uas_call_id.is_empty())
        .then_some((slot, generation))
    }
}

impl Index<usize> for Calls {
    type Output = Call;

    fn index(&self, slot: usize) -> &Call {
        &self.slots[slot]
    }
}

impl IndexMut<usize> for Calls {
    fn index_mut(&mut self, slot: usize) -> &mut Call {
        &mut self.slots[slot]
    }
}
