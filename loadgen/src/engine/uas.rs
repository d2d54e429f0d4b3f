//! Requests that come to us: calls to our users, which we answer as a UAS (ringing, the 200
//! repeated until ACKed), and the far end's requests inside any dialog, ours or theirs (BYE,
//! re-INVITE, CANCEL).

use std::net::SocketAddr;

use pbxlab_proto::sdp::{self, SessionDescription};
use pbxlab_proto::sip::{HeaderName, Message, Method};
use pbxlab_proto::uri::SipUri;

use super::calls::{CallState, End, Stage};
use super::config::Dtmf;
use super::wire::{parse_tag, ssrc, stream_id};
use super::{Engine, MediaCommand, Nanos, ns};
use crate::messages::MessageKind;

impl Engine {
    pub(super) fn on_request(&mut self, now: Nanos, from: SocketAddr, msg: &Message<'_>) {
        let Some(method) = msg.method() else { return };
        let call_id = msg.call_id().unwrap_or_default();
        let to_tag = msg.to().and_then(|t| t.tag());
        // Requests inside a dialog we started (BYE or re-INVITE from the far end) carry our
        // caller-side tag. The Call-ID alone does not tell: when our users call each other
        // through a proxy, the incoming INVITE for the callee has the caller's Call-ID too.
        // Callee-side tags start with 'u'.
        if let Some(tag) = to_tag
            && !tag.starts_with('u')
            && let Some((slot, generation)) = self.calls.own(call_id, self.cfg.run_id)
            && parse_tag(tag) == Some((slot, generation))
        {
            self.in_dialog_request(now, from, slot, method, msg);
            return;
        }
        let known = self.calls.answering(call_id);
        match (method, known, to_tag) {
            (Method::Invite, None, None) => self.incoming_invite(now, from, msg),
            (Method::Invite, Some(slot), None) => {
                // A retransmitted INVITE: repeat where we are.
                match self.calls[slot as usize].state {
                    CallState::Ringing => {
                        self.messages.retransmitted(MessageKind::Response(180));
                        self.wire.uas_response(
                            &self.cfg,
                            slot,
                            &self.calls[slot as usize],
                            180,
                            "Ringing",
                            false,
                        )
                    }
                    CallState::Answered | CallState::UasEstablished => {
                        self.messages.retransmitted(MessageKind::Response(200));
                        self.wire.uas_response(
                            &self.cfg,
                            slot,
                            &self.calls[slot as usize],
                            200,
                            "OK",
                            true,
                        )
                    }
                    _ => {}
                }
            }
            (Method::Ack, Some(slot), _) => {
                let c = &mut self.calls[slot as usize];
                if c.state == CallState::Answered {
                    c.state = CallState::UasEstablished;
                    c.retransmit_at = Nanos::MAX;
                    c.timeout_at = Nanos::MAX;
                    let (rtp, generation, dest) = (c.rtp, c.generation, c.uas_offer_addr);
                    if let (true, Some(dest)) = (rtp, dest) {
                        self.media.push(MediaCommand::Start {
                            stream: stream_id(slot, generation),
                            ssrc: ssrc(slot, generation),
                            dest,
                            payload_type: sdp::PT_PCMU,
                        });
                    }
                }
            }
            (_, Some(slot), _) => self.in_dialog_request(now, from, slot, method, msg),
            (Method::Options, _, _) | (Method::Register, _, _) => {
                self.wire.respond(from, msg, 200, "OK", &[], b"")
            }
            // The ACK of an error response of ours, the call already gone.
            (Method::Ack, None, _) => {}
            (_, None, Some(_)) | (Method::Cancel, None, None) => {
                self.messages.unexpected += 1;
                self.wire
                    .respond(from, msg, 481, "Call/Transaction Does Not Exist", &[], b"")
            }
            _ => {
                self.messages.unexpected += 1;
                self.wire
                    .respond(from, msg, 501, "Not Implemented", &[], b"")
            }
        }
    }

    fn incoming_invite(&mut self, now: Nanos, from: SocketAddr, msg: &Message<'_>) {
        let callee = msg
            .request_uri()
            .and_then(|u| SipUri::parse(u).ok())
            .and_then(|u| u.user)
            .and_then(|u| self.user_named(u));
        let Some(callee) = callee else {
            self.wire.respond(from, msg, 404, "Not Found", &[], b"");
            return;
        };
        let offer = SessionDescription::parse(msg.body()).ok();
        // An `inactive` offer (RFC 3264 5.1) sets up a call without audio: no stream runs, and
        // none is rated.
        let inactive = offer
            .and_then(|s| s.audio)
            .is_some_and(|a| a.direction == sdp::Direction::Inactive);
        let offer = offer.and_then(|s| s.audio_addr());
        let slot = self.calls.alloc();
        let generation = self.calls[slot as usize].generation;
        let to_tag = format!("u{slot}x{generation}");
        let headers = self.wire.uas_headers(msg, &to_tag);
        let remote_target = msg.contact().map(|a| a.uri.to_owned()).unwrap_or_default();
        let routes: Vec<String> = msg
            .values(HeaderName::RecordRoute)
            .map(str::to_owned)
            .collect();
        let call_id = msg.call_id().unwrap_or_default().to_owned();
        let ring = ns(self.cfg.ring_delay);
        // The answering side draws too, so `--rtp 0.1` means a tenth of the streams on both
        // sides of calls between our own users, not a tenth of callers and every callee.
        let rtp = offer.is_some()
            && !inactive
            && self.cfg.rtp_fraction > 0.0
            && (self.cfg.rtp_fraction >= 1.0 || self.rng.uniform() < self.cfg.rtp_fraction);
        let c = &mut self.calls[slot as usize];
        c.state = CallState::Ringing;
        c.callee = Some(callee);
        c.intended = now;
        c.uas_headers = headers;
        c.uas_call_id = call_id.clone();
        c.uas_offer_addr = offer;
        c.uas_inactive = inactive;
        c.rtp = rtp;
        c.remote_tag = msg
            .from()
            .and_then(|f| f.tag())
            .unwrap_or_default()
            .to_owned();
        c.remote_target = remote_target;
        c.next_hop = from;
        c.routes = routes;
        c.retransmit_at = now + ring;
        self.calls.answer(call_id, slot);
        self.wire.uas_response(
            &self.cfg,
            slot,
            &self.calls[slot as usize],
            180,
            "Ringing",
            false,
        );
        self.arm(slot);
    }

    fn in_dialog_request(
        &mut self,
        now: Nanos,
        from: SocketAddr,
        slot: u32,
        method: Method,
        msg: &Message<'_>,
    ) {
        let c = &mut self.calls[slot as usize];
        let (generation, state, rtp, uac) =
            (c.generation, c.state, c.rtp, c.uas_call_id.is_empty());
        // Our user on this leg: the caller of our own calls, the callee of those we answer.
        let user = if uac {
            c.caller
        } else {
            c.callee.unwrap_or_default()
        };
        // Only a request with a new CSeq moves the call on; a retransmission is answered again.
        let seq = msg.cseq().map_or(0, |s| s.seq);
        let fresh = seq > c.remote_cseq;
        c.remote_cseq = c.remote_cseq.max(seq);
        match method {
            Method::Bye => {
                self.wire.respond(from, msg, 200, "OK", &[], b"");
                let c = &self.calls[slot as usize];
                let sends_digits = self
                    .cfg
                    .workloads
                    .get(c.workload as usize)
                    .is_some_and(|w| w.dtmf != Dtmf::None);
                if uac
                    && state == CallState::Established
                    && c.stage == Stage::Hold
                    && !sends_digits
                    && now < c.hold_until
                {
                    // A plain call the far end (or a cluster that lost its media node) ended
                    // before its hold time: dropped, not completed.
                    self.fail_call(slot, "BYE from the far end before the hold ended");
                    return;
                }
                if uac && matches!(state, CallState::Established | CallState::ByeSent) {
                    // The far end hung up first (an IVR after '#', say): the call still
                    // completed, unless we were already hanging up out of patience.
                    self.count_end(slot, End::Succeeded);
                }
                self.release(slot);
            }
            Method::Invite => {
                if uac && fresh && state == CallState::Established {
                    self.advance_stage(now, slot);
                }
                // A re-INVITE moves our media: answer with our address, send to the new one.
                let dest = SessionDescription::parse(msg.body())
                    .ok()
                    .and_then(|s| s.audio_addr());
                let inactive = self.calls[slot as usize].uas_inactive;
                self.wire
                    .reinvite_ok(&self.cfg, from, msg, (slot, generation, inactive), user);
                if let (true, Some(dest)) = (rtp, dest) {
                    self.media.push(MediaCommand::Redirect {
                        stream: stream_id(slot, generation),
                        dest,
                    });
                }
            }
            Method::Ack => {}
            Method::Cancel => {
                self.wire.respond(from, msg, 200, "OK", &[], b"");
                if state == CallState::Ringing {
                    self.wire.uas_response(
                        &self.cfg,
                        slot,
                        &self.calls[slot as usize],
                        487,
                        "Request Terminated",
                        false,
                    );
                    self.release(slot);
                }
            }
            _ => self.wire.respond(from, msg, 200, "OK", &[], b""),
        }
    }

    /// The timers of a call we answer: the ring delay, then Timers G and H for our 200.
    pub(super) fn answer_timer(&mut self, now: Nanos, slot: u32) {
        let t2 = ns(self.cfg.t2);
        let Some(c) = self.calls.get_mut(slot as usize) else {
            return;
        };
        match c.state {
            CallState::Ringing if now >= c.retransmit_at => {
                // The ring delay is over: answer.
                c.state = CallState::Answered;
                c.rto = ns(self.cfg.t1);
                c.retransmit_at = now + c.rto;
                c.timeout_at = now + 64 * c.rto;
                self.wire.uas_response(
                    &self.cfg,
                    slot,
                    &self.calls[slot as usize],
                    200,
                    "OK",
                    true,
                );
                self.arm(slot);
            }
            CallState::Answered => {
                if now >= c.timeout_at {
                    // Timer H: no ACK for our 200.
                    self.messages.timed_out(MessageKind::Response(200));
                    self.timed_out(now);
                    self.metrics.fail("no ACK for 200");
                    self.release(slot);
                } else if now >= c.retransmit_at {
                    // Timer G: 200 retransmissions double up to T2.
                    self.messages.retransmitted(MessageKind::Response(200));
                    c.rto = (c.rto * 2).min(t2);
                    c.retransmit_at = now + c.rto;
                    self.wire.uas_response(
                        &self.cfg,
                        slot,
                        &self.calls[slot as usize],
                        200,
                        "OK",
                        true,
                    );
                    self.arm(slot);
                }
            }
            _ => {}
        }
    }
}
