//! The driver for a clock someone else keeps: the same engine and RTP core as [`run`](super::run),
//! with datagrams handed in and out and the time passed to every call, for a simulation that
//! carries them over a network of its own (`pbxlab drill --virtual`). No socket, no thread, no
//! wall clock: what it does depends only on what it is given, so two runs given the same are
//! the same run.
//!
//! Its clock starts at 0 when it is made, and the caller's clock is its clock: every interval
//! closes at exactly its second (the caller wakes it then, see [`Stepped::next_wakeup`]), and
//! the report's gaps and intervals count from that zero.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::{Ended, Progress, Rows, STOP_GRACE, close, final_report, progress};
use crate::engine::{Config, Engine, Nanos};
use crate::media::{MediaCore, Sent};
use crate::report::{LoadReport, RunCounts};
use crate::threshold::Threshold;

/// A load run driven step by step: see the module docs.
pub struct Stepped {
    engine: Engine,
    media: MediaCore,
    sip: SocketAddr,
    rtp: SocketAddr,
    interval_ns: Nanos,
    next_interval: Nanos,
    rows: Rows<'static>,
    counts: RunCounts,
    errors: BTreeMap<String, u64>,
    responses: u64,
    thresholds: Vec<Threshold>,
    /// Closed intervals not yet taken by [`Stepped::take_progress`].
    progress: Vec<Progress>,
    stopped_at: Option<Nanos>,
    /// Set once the engine has finished (or the stop's grace ran out): when, and whether the
    /// run was stopped.
    ended: Option<(Nanos, bool)>,
}

impl Stepped {
    /// A run of `cfg` from its SIP address `cfg.local` and its RTP address `cfg.rtp_local`,
    /// closing an interval every `interval`.
    pub fn new(cfg: Config, interval: Duration, thresholds: Vec<Threshold>) -> Stepped {
        let (sip, rtp) = (cfg.local, cfg.rtp_local);
        let interval_ns = u64::try_from(interval.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        Stepped {
            engine: Engine::new(cfg),
            media: MediaCore::new(None, 0, 0),
            sip,
            rtp,
            interval_ns,
            next_interval: interval_ns,
            rows: Rows {
                hlog: None,
                csv: None,
                done: Vec::new(),
                waiting: None,
            },
            counts: RunCounts::default(),
            errors: BTreeMap::new(),
            responses: 0,
            thresholds,
            progress: Vec::new(),
            stopped_at: None,
            ended: None,
        }
    }

    /// Its SIP and RTP addresses.
    pub fn addrs(&self) -> [SocketAddr; 2] {
        [self.sip, self.rtp]
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The RTP core: which streams send where.
    pub fn media(&self) -> &MediaCore {
        &self.media
    }

    /// A datagram that arrived at `now` on `to` (one of [`Stepped::addrs`]).
    pub fn handle(&mut self, now: Nanos, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        if self.ended.is_some() {
            return;
        }
        if to == self.rtp {
            self.media.receive(now, bytes);
        } else {
            self.responses += 1;
            self.engine.handle(now, from, bytes);
        }
    }

    /// When it next has something to do: the engine's next deadline, the next RTP tick while
    /// any stream sends, the next interval's close; `None` once the run has ended.
    pub fn next_wakeup(&self) -> Option<Nanos> {
        if self.ended.is_some() {
            return None;
        }
        let grace = self
            .stopped_at
            .map(|at| at.saturating_add(nanos(STOP_GRACE)));
        [
            self.engine.next_deadline(),
            self.media.next_tick(),
            Some(self.next_interval),
            grace,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Stops starting calls and hangs up the ones in progress, as Ctrl-C does a live run; the
    /// calls get the same grace to finish.
    pub fn stop(&mut self, now: Nanos) {
        if self.stopped_at.is_none() && self.ended.is_none() {
            self.stopped_at = Some(now);
            self.engine.stop(now);
        }
    }

    /// Does what is due by `now`: the engine's timers and starts, its datagrams (sent as
    /// `send(from, to, bytes)`), its media commands, the RTP tick and the interval's close.
    pub fn advance(&mut self, now: Nanos, send: &mut dyn FnMut(SocketAddr, SocketAddr, &[u8])) {
        if self.ended.is_some() {
            return;
        }
        self.engine.advance(now);
        let sip = self.sip;
        self.engine.transmit_all(|datagrams| {
            for &(to, bytes) in datagrams {
                send(sip, to, bytes);
            }
        });
        for cmd in self.engine.media_commands() {
            self.media.command(cmd);
        }
        if self.media.is_sending() {
            let rtp = self.rtp;
            self.media.tick(now, &mut |datagrams| {
                for &(to, bytes) in datagrams {
                    send(rtp, to, bytes);
                }
                Sent {
                    at_ns: now,
                    errors: 0,
                }
            });
        }
        if now >= self.next_interval {
            self.close(now);
            self.next_interval = (now / self.interval_ns + 1) * self.interval_ns;
        }
        let graced = self
            .stopped_at
            .is_some_and(|at| now.saturating_sub(at) >= nanos(STOP_GRACE));
        if self.engine.finished() || graced {
            self.ended = Some((now, self.stopped_at.is_some()));
        }
    }

    /// Closes the interval ending at `now`, RTP part and all.
    fn close(&mut self, now: Nanos) {
        let at = Duration::from_nanos(now);
        let interval = close(
            &mut self.engine,
            at,
            &mut self.errors,
            &mut self.rows,
            &mut self.counts,
        );
        let media = self.media.close_interval(self.rows.waiting_index());
        self.rows.complete(Some(&media));
        self.progress.push(progress(&self.engine, at, interval));
    }

    /// The intervals closed since the last call, in order.
    pub fn take_progress(&mut self) -> Vec<Progress> {
        std::mem::take(&mut self.progress)
    }

    /// Whether the run is over: everything finished, or the grace after a stop ran out.
    pub fn is_finished(&self) -> bool {
        self.ended.is_some()
    }

    /// The report. A run not over by `now` is cut there: what is still in progress is
    /// given up and counted failed, as at the end of a live run.
    pub fn finish(mut self, now: Nanos) -> LoadReport {
        let (end, interrupted) = self.ended.unwrap_or((now, true));
        self.engine.give_up("unfinished at the end of the run");
        let elapsed = Duration::from_nanos(end);
        close(
            &mut self.engine,
            elapsed,
            &mut self.errors,
            &mut self.rows,
            &mut self.counts,
        );
        let mut media = self.media.finish();
        let ended = Ended {
            elapsed,
            interrupted,
            responses: self.responses,
        };
        final_report(
            &self.engine,
            &mut media,
            self.rows,
            &ended,
            &self.thresholds,
            Vec::new(),
        )
    }
}

fn nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(Nanos::MAX)
}

#[cfg(test)]
mod tests;
