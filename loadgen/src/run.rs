//! The driver: binds the sockets, feeds the engine datagrams and the time, sends what it queues,
//! runs the RTP worker, closes an interval every second, and builds the report.
//!
//! One thread and one non-blocking UDP socket. The kernel stamps every datagram on arrival
//! (`SO_TIMESTAMPNS`) and the loop reads them in batches (`recvmmsg`), so it need not wake for
//! each one: while calls are in progress it runs once a tick (`Config::arrival_grid`: by
//! default 1 to 2 ms from the rate, see `engine::auto_grid`; `--tick`), and when idle it
//! sleeps in poll(2) until a datagram or a deadline. Responses are therefore processed up to a
//! tick after they arrive, but measured from when they arrived. Attempts are intended to start
//! on the tick grid and leave when the loop wakes there; a loop that wakes late (or a target
//! that stalls it) is measured from the intended start, so the delay does not hide in the
//! figures.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::Error;
use crate::appender::Appender;
use crate::engine::{Config, Engine, Grid, InProgress, Nanos};
use crate::media::{self, MediaReport};
use crate::metrics::{IntervalSummary, Metric};
use crate::report::{
    self, DriverPace, IntervalRow, LatencySummary, LoadReport, MosSummary, QueueSummary,
    RtpSummary, RunCounts, ShardId, TickSummary, WorkloadSummary,
};
use crate::threshold::Threshold;
use pbxlab_udp::pace::Pace;

mod stepped;
pub use stepped::Stepped;

/// How long in-flight calls get to finish after a stop (Ctrl-C) before the run gives up on them.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The loop's period while calls are in progress when `Config::arrival_grid` is exact; otherwise
/// the loop wakes on that grid, the one intended starts are rounded up to.
const TICK: Duration = Duration::from_millis(1);
/// The longest idle wait, so stop requests and progress lines are not delayed.
const IDLE_WAIT: Duration = Duration::from_millis(50);
/// Refusals (ICMP port unreachable) that end a run in which the target never answered.
const REFUSALS_TO_STOP: u64 = 3;
/// How long the loop waits, at the next interval's close, for the RTP worker's part of the
/// interval before: it answers within a tick (20 ms) unless its thread is stalled. A row the
/// worker missed is written without it.
const MEDIA_WAIT: Duration = Duration::from_secs(1);

/// The interval rows, and the one closed last until the RTP worker's part of it arrives: rows,
/// CSV lines and hlog lines are written in order, each complete.
struct Rows<'a> {
    hlog: Option<&'a mut Appender>,
    csv: Option<&'a mut Appender>,
    done: Vec<IntervalRow>,
    /// The row closed last, its hlog lines, and its start and length.
    waiting: Option<(IntervalRow, Vec<u8>, Duration, Duration)>,
}

impl Rows<'_> {
    /// The index of the row that waits (the worker's interval of that number).
    fn waiting_index(&self) -> u64 {
        self.done.len() as u64
    }

    /// Completes the waiting row with the worker's part (`None`: written without it).
    fn complete(&mut self, media: Option<&media::MediaInterval>) {
        let Some((mut row, mut lines, start, length)) = self.waiting.take() else {
            return;
        };
        if let Some(m) = media {
            row.add_media(m);
            lines.extend(crate::hlog::line(
                Metric::MediaGap,
                &m.gap_us,
                start,
                length,
            ));
        }
        if let Some(log) = self.hlog.as_deref_mut() {
            log.append(&lines);
        }
        if let Some(csv) = self.csv.as_deref_mut() {
            csv.append(crate::csv::row(&row).as_bytes());
        }
        self.done.push(row);
    }

    /// Takes what the worker has answered, waiting for the waiting row at most `wait`; a row
    /// still unanswered then is written without the worker's part.
    fn collect(&mut self, worker: &media::Worker, wait: Duration) {
        let until = Instant::now() + wait;
        while self.waiting.is_some() {
            let left = until.saturating_duration_since(Instant::now());
            // None: nothing within the wait, or the worker has ended.
            let Some(m) = worker.interval(left) else {
                break;
            };
            // An answer for a row already written without it comes too late: dropped.
            if m.index == self.waiting_index() {
                self.complete(Some(&m));
            }
        }
        if !wait.is_zero() {
            self.complete(None);
        }
    }
}

pub struct RunOptions<'a> {
    /// Bind the SIP socket here (port 0: any).
    pub bind: SocketAddr,
    /// Bind the RTP socket here (port 0: any).
    pub rtp_bind: SocketAddr,
    pub interval: Duration,
    pub thresholds: Vec<Threshold>,
    /// Set from a signal handler: stop starting, hang up, report.
    pub stop: &'a AtomicBool,
    /// Called after every interval.
    pub progress: &'a mut dyn FnMut(&Progress),
    /// Where the interval log goes as each interval closes (`--hlog`, see `crate::hlog`).
    pub hlog: Option<&'a mut Appender>,
    /// Where each interval's row goes as it closes (`--csv`, see `crate::csv`).
    pub csv: Option<&'a mut Appender>,
}

/// A snapshot for progress output.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub elapsed: Duration,
    pub interval: IntervalSummary,
    pub calls_attempted: u64,
    pub calls_failed: u64,
    pub registrations_attempted: u64,
    pub registrations_failed: u64,
    pub active_calls: usize,
    /// Once the last attempt has started and calls are still in progress: what the run waits
    /// for, and for how long at most.
    pub draining: Option<Draining>,
}

/// The wait for the calls in progress after the schedule.
#[derive(Debug, Clone, Copy)]
pub struct Draining {
    /// Until the calls still in progress are given up (`Config::drain_limit`).
    pub left: Duration,
    pub calls: InProgress,
}

/// Runs a load against `cfg.target`. `cfg.local` and `cfg.rtp_local` are replaced by the bound
/// sockets' addresses.
pub fn run(mut cfg: Config, opts: RunOptions<'_>) -> Result<LoadReport, Error> {
    let socket = UdpSocket::bind(opts.bind).map_err(|e| Error::Bind {
        addr: opts.bind,
        error: e,
    })?;
    let rtp_socket = UdpSocket::bind(opts.rtp_bind).map_err(|e| Error::Bind {
        addr: opts.rtp_bind,
        error: e,
    })?;
    cfg.local = socket.local_addr().map_err(|e| Error::Bind {
        addr: opts.bind,
        error: e,
    })?;
    cfg.rtp_local = rtp_socket.local_addr().map_err(|e| Error::Bind {
        addr: opts.rtp_bind,
        error: e,
    })?;
    let io = |e| Error::Bind {
        addr: opts.bind,
        error: e,
    };
    socket.set_nonblocking(true).map_err(io)?;
    // A failover re-INVITEs hundreds of calls at once: a default-sized buffer drops part of
    // the burst, and each loss costs a T1 retransmission in the measured figures.
    let _ = pbxlab_udp::set_buffer_sizes(&socket, 8 << 20);
    // The target gets a socket of its own, connected to it, on the same port: most traffic is
    // with the target, and a connected send costs less than one that names its destination.
    // Without it (say, an IPv6 target from an IPv4 address) everything goes by the socket,
    // which fails or works as it would anyway.
    let twin = pbxlab_udp::connected_twin(&socket, cfg.target).ok();
    let target = cfg.target;
    let shard_note = format!("target {target}, local {}, seed {}", cfg.local, cfg.seed);

    let worker = media::spawn(rtp_socket).map_err(|e| Error::Bind {
        addr: cfg.rtp_local,
        error: e,
    })?;

    let mut engine = Engine::new(cfg);
    let started = Instant::now();
    let mut rows = Rows {
        hlog: opts.hlog,
        csv: opts.csv,
        done: Vec::new(),
        waiting: None,
    };
    if let Some(log) = rows.hlog.as_deref_mut() {
        log.append(&crate::hlog::header(
            &format!("pbxlab load: {shard_note}"),
            SystemTime::now(),
        ));
    }
    if let Some(csv) = rows.csv.as_deref_mut() {
        csv.append(crate::csv::header().as_bytes());
    }
    let mut sender = pbxlab_udp::Sender::default();
    // One set of buffers serves both sockets.
    let mut receiver = pbxlab_udp::Receiver::new(&socket, started).map_err(io)?;
    let mut next_interval = opts.interval;
    let mut responses = 0u64;
    let mut send_errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut stopped_at: Option<Nanos> = None;
    let interrupted;
    // Whether the last round sent or received anything: while traffic flows the loop keeps to
    // the tick grid, and once a round is quiet it waits for a datagram or the next deadline.
    let mut received = 0;
    // The engine's next deadline when the loop last slept, and each socket's kernel drops.
    let pace = Pace::default();
    // ICMP port unreachable reported on our sockets: with nothing ever heard from the target,
    // a few of them say nothing listens there, and the run stops instead of waiting out
    // every transaction's timer.
    let mut refusals = 0u64;
    let mut refused = false;
    let mut due = Nanos::MAX;
    let mut drops = [0u32; 2];
    let mut counts = RunCounts::default();
    loop {
        let now = started.elapsed();
        let now_ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        pace.on_time(due, now_ns);
        if opts.stop.load(Ordering::Relaxed) && stopped_at.is_none() {
            stopped_at = Some(now_ns);
            engine.stop(now_ns);
        }
        engine.advance(now_ns);
        let mut sent = false;
        engine.transmit_all(|datagrams| {
            sent = true;
            let (mut to_target, mut others) = (Vec::new(), Vec::new());
            for &(to, bytes) in datagrams {
                if twin.is_some() && to == target {
                    to_target.push(bytes);
                } else {
                    others.push((to, bytes));
                }
            }
            let mut errors = sender.send_all(&socket, &others);
            if let Some(twin) = &twin {
                errors.extend(sender.send_connected_segmented(twin, &to_target));
            }
            for e in errors {
                *send_errors
                    .entry(format!("send: {}", e.kind()))
                    .or_default() += 1;
            }
        });
        worker.send(engine.media_commands());
        rows.collect(&worker, Duration::ZERO);
        if now >= next_interval {
            // The interval before is complete first, so rows are written in order.
            rows.collect(&worker, MEDIA_WAIT);
            let interval = close(&mut engine, now, &mut send_errors, &mut rows, &mut counts);
            worker.close_interval(rows.waiting_index());
            (opts.progress)(&progress(&engine, now, interval));
            next_interval += opts.interval;
        }
        if engine.finished() {
            interrupted = stopped_at.is_some();
            break;
        }
        if responses == 0 && refusals >= REFUSALS_TO_STOP {
            refused = true;
            interrupted = false;
            break;
        }
        if let Some(at) = stopped_at
            && now_ns.saturating_sub(at) > u64::try_from(STOP_GRACE.as_nanos()).unwrap_or(u64::MAX)
        {
            interrupted = true;
            break;
        }
        // Once nothing is left to start, the engine bounds the wait for the calls in progress
        // (`Config::drain_limit`) and `finished` turns true by then.
        let next_deadline = engine.next_deadline();
        // Traffic flowing: wake once a tick and read in batches; kernel timestamps keep every
        // arrival exact. Quiet: wait for a datagram (handled at once) or the deadline.
        due = next_deadline.unwrap_or(Nanos::MAX);
        let until = next_deadline.map(|d| Duration::from_nanos(d.saturating_sub(now_ns)));
        // The grid of the phase in progress (registrations, then calls).
        let tick = Some(engine.grid()).filter(|g| !g.is_zero()).unwrap_or(TICK);
        if until.is_some_and(|u| u < tick) || sent || received > 0 {
            // To the next boundary of the tick grid, whatever falls due before it: deadlines
            // scattered inside a tick would otherwise each cost a wakeup.
            let tick = tick.as_nanos() as u64;
            let elapsed = started.elapsed().as_nanos() as u64;
            let mut nap = tick - elapsed % tick;
            // Challenges to what was just sent are due back before the next tick: wake for
            // them then, so the answers leave without waiting for the tick.
            if let Some(due) = engine.challenges_due()
                && due > elapsed
            {
                nap = nap.min(due - elapsed);
            }
            std::thread::sleep(Duration::from_nanos(nap));
        } else if let Err(e) = pbxlab_udp::wait_readable(
            &[Some(socket.as_fd()), twin.as_ref().map(AsFd::as_fd)]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>(),
            until.unwrap_or(IDLE_WAIT).min(IDLE_WAIT),
        ) {
            *send_errors
                .entry(format!("poll: {}", e.kind()))
                .or_default() += 1;
        }
        // The target's datagrams come to the twin, anyone else's to the socket.
        received = 0;
        for (s, last) in twin.iter().chain([&socket]).zip(&mut drops) {
            let read = receiver.drain(s, |at, from, bytes| {
                responses += 1;
                engine.handle(at, from, bytes);
            });
            pace.socket_drops(last, receiver.kernel_drops());
            match read {
                Ok(n) => received += n,
                // ICMP port unreachable surfaces here: nobody listens at the target.
                Err(e) => {
                    if e.kind() == std::io::ErrorKind::ConnectionRefused {
                        refusals += 1;
                    }
                    *send_errors
                        .entry(format!("receive: {}", e.kind()))
                        .or_default() += 1
                }
            }
        }
    }
    let elapsed = started.elapsed();
    if refused {
        engine.give_up("refused by the target's host: nothing listens there");
    }
    engine.give_up("unfinished at the end of the run");
    rows.collect(&worker, MEDIA_WAIT);
    close(
        &mut engine,
        elapsed,
        &mut send_errors,
        &mut rows,
        &mut counts,
    );
    // The last interval's RTP part comes with the worker's report: from the last close it
    // answered to its stop.
    let mut media = worker.stop().map_err(|_| Error::MediaWorker)?;
    let emulator = vec![
        DriverPace::of("the generator's SIP loop", &pace.figures()),
        DriverPace::of("the generator's RTP worker", &media.pace),
    ];
    let ended = Ended {
        elapsed,
        interrupted,
        responses,
    };
    Ok(final_report(
        &engine,
        &mut media,
        rows,
        &ended,
        &opts.thresholds,
        emulator,
    ))
}

/// Closes an interval: socket errors join the engine's failures first, so the interval they
/// happened in counts them; the closed row waits in `rows` for the RTP part. `counts` are the
/// run's counts at the close before, and become this one's.
fn close(
    engine: &mut Engine,
    now: Duration,
    errors: &mut BTreeMap<String, u64>,
    rows: &mut Rows<'_>,
    counts: &mut RunCounts,
) -> IntervalSummary {
    for (reason, n) in std::mem::take(errors) {
        *engine.metrics.failures.entry(reason).or_default() += n;
    }
    let closed = engine.metrics.close_interval(now);
    let lines = engine.metrics.take_log();
    let m = &engine.metrics;
    let after = RunCounts {
        calls: m.calls,
        registrations: m.registrations,
        failures: m.failures.clone(),
    };
    let active = engine.active_calls() as u64;
    let row = IntervalRow::of(&closed, &after, counts, active);
    rows.waiting = Some((row, lines, closed.start, closed.length));
    *counts = after;
    closed
}

/// The progress snapshot after the interval closed at `now`.
fn progress(engine: &Engine, now: Duration, interval: IntervalSummary) -> Progress {
    let m = &engine.metrics;
    let now_ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
    Progress {
        elapsed: now,
        interval,
        calls_attempted: m.calls.attempted,
        calls_failed: m.calls.failed,
        registrations_attempted: m.registrations.attempted,
        registrations_failed: m.registrations.failed,
        active_calls: engine.active_calls(),
        draining: engine
            .drain_deadline()
            .filter(|_| engine.active_legs() > 0)
            .map(|at| Draining {
                left: Duration::from_nanos(at.saturating_sub(now_ns)),
                calls: engine.in_progress(),
            }),
    }
}

/// How a run ended: its length, whether it was stopped, and how many datagrams it received.
struct Ended {
    elapsed: Duration,
    interrupted: bool,
    responses: u64,
}

/// The report of a run whose last interval is closed (waiting in `rows` for the RTP part,
/// which is `media`'s last).
fn final_report(
    engine: &Engine,
    media: &mut MediaReport,
    mut rows: Rows<'_>,
    ended: &Ended,
    thresholds: &[Threshold],
    emulator: Vec<DriverPace>,
) -> LoadReport {
    rows.complete(Some(&media.last_interval));
    let mut report = build_report(
        engine,
        media,
        engine.config().target,
        ended.elapsed,
        ended.interrupted,
        ended.responses,
        thresholds,
    );
    report.intervals = rows.done;
    report.emulator = emulator;
    // Up to a million of them: moved, not copied.
    report.gaps = std::mem::take(&mut media.gaps);
    report
}

fn build_report(
    engine: &Engine,
    media: &MediaReport,
    target: SocketAddr,
    elapsed: Duration,
    interrupted: bool,
    responses: u64,
    thresholds: &[Threshold],
) -> LoadReport {
    let m = &engine.metrics;
    let metrics: BTreeMap<String, LatencySummary> = Metric::ALL
        .iter()
        .map(|&metric| {
            (
                metric.name().to_owned(),
                LatencySummary::of(metric_hist(engine, media, metric)),
            )
        })
        .collect();
    let rtp = RtpSummary {
        streams: media.streams,
        packets_sent: media.packets_sent,
        packets_received: media.packets_received,
        loss_fraction: media.loss_fraction(),
        unreceived_fraction: if media.packets_sent == 0 {
            0.0
        } else {
            media.packets_sent.saturating_sub(media.packets_received) as f64
                / media.packets_sent as f64
        },
        jitter_p99_us: media.jitter_us.value_at_quantile(0.99),
        packets_expected: media.expected,
        packets_lost: media.lost,
        mos: MosSummary::default(),
        r_factor_mean: 0.0,
    };
    let cfg = engine.config();
    let rtp = rated(rtp, media, cfg.rtp_fraction >= 1.0);
    let (registrations_tick, calls_tick) = engine.grids();
    let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let tick = TickSummary {
        auto: cfg.arrival_grid == Grid::Auto,
        registrations_us: (cfg.register && !cfg.users.is_empty()).then(|| us(registrations_tick)),
        calls_us: cfg
            .workloads
            .iter()
            .any(|w| w.calls > 0)
            .then(|| us(calls_tick)),
    };
    let mut report = LoadReport {
        target: target.to_string(),
        duration_s: elapsed.as_secs_f64(),
        interrupted,
        seed: cfg.seed,
        tick,
        messages_received: responses,
        malformed: engine.malformed,
        stray: engine.stray,
        messages: engine.messages.clone(),
        metrics,
        calls: m.calls,
        registrations: m.registrations,
        call_rate_per_s: m.call_starts.rate_per_s(),
        register_rate_per_s: m.register_starts.rate_per_s(),
        peak_concurrent_calls: engine.peak_calls() as u64,
        registrations_refreshed: m.registrations_refreshed,
        workloads: engine
            .config()
            .workloads
            .iter()
            .zip(&m.workloads)
            .map(|(w, o)| WorkloadSummary {
                name: w.name.clone(),
                outcomes: *o,
            })
            .collect(),
        queue: QueueSummary::of(
            &m.queue,
            engine.metrics.total(Metric::QueueWait),
            engine.config().service_level,
        ),
        ivr: m.ivr,
        failures: m.failures.clone(),
        rtp,
        emulator: Vec::new(),
        thresholds: Vec::new(),
        intervals: Vec::new(),
        shard: Some(ShardId {
            index: cfg.shard.0,
            count: cfg.shard.1,
        }),
        run: String::new(),
        shards: Vec::new(),
        shards_missing: Vec::new(),
        histograms: report::encode_histograms(
            Metric::ALL
                .iter()
                .map(|&m| (m.name(), metric_hist(engine, media, m)))
                .chain([
                    (report::RTP_JITTER, &media.jitter_us),
                    (
                        report::RTP_MOS_CENTI,
                        &rated_centi(media, cfg.rtp_fraction >= 1.0),
                    ),
                ]),
        ),
        gaps: Vec::new(),
        media_epoch: media.epoch,
    };
    report.thresholds = report.judge(thresholds, metric_hist_by(engine, media));
    report
}

/// `rtp` with the streams' MOS. A leg that heard nothing is a dead call and rated 1 (R 0)
/// when every leg sends (`every_leg_sends`, `--rtp 1`); with a smaller fraction the far end
/// of a silent leg may have drawn no media, so silence is no verdict then.
/// The streams' MOS in hundredths, as `rtp.mos` is figured from them: the received streams',
/// and with `every_leg_sends` the silent legs' at the floor.
fn rated_centi(media: &MediaReport, every_leg_sends: bool) -> hdrhistogram::Histogram<u64> {
    let mut centi = media.mos_centi.clone();
    if every_leg_sends && media.silent_streams > 0 {
        let _ = centi.record_n(media::mos_centi(1.0), media.silent_streams);
    }
    centi
}

fn rated(mut rtp: RtpSummary, media: &MediaReport, every_leg_sends: bool) -> RtpSummary {
    let centi = rated_centi(media, every_leg_sends);
    rtp.mos = MosSummary::of(&centi, media.silent_streams, media.late);
    let heard = media.mos_centi.len();
    if heard > 0 {
        rtp.mos.delay_ms_mean = media.delay_ms_sum / heard as f64;
    }
    // Silent legs add R 0 to the sum, and count in the mean.
    rtp.r_factor_mean = if centi.is_empty() {
        0.0
    } else {
        media.r_factor_sum / centi.len() as f64
    };
    rtp
}

fn metric_hist<'a>(
    engine: &'a Engine,
    media: &'a MediaReport,
    metric: Metric,
) -> &'a hdrhistogram::Histogram<u64> {
    match metric {
        // Media gaps are measured by the RTP worker, per received stream.
        Metric::MediaGap => &media.gap_us,
        m => engine.metrics.total(m),
    }
}

fn metric_hist_by<'a>(
    engine: &'a Engine,
    media: &'a MediaReport,
) -> impl Fn(Metric) -> &'a hdrhistogram::Histogram<u64> {
    move |m| metric_hist(engine, media, m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_legs_are_rated_at_the_floor_only_when_every_leg_sends() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut media = media::spawn(socket).expect("spawn").stop().expect("worker");
        for _ in 0..9 {
            let _ = media.mos_centi.record(441);
        }
        media.r_factor_sum = 9.0 * 93.2;
        media.delay_ms_sum = 9.0 * 61.0;
        media.silent_streams = 1;
        let rtp = rated(RtpSummary::default(), &media, true);
        assert_eq!((rtp.mos.streams, rtp.mos.silent_streams), (10, 1));
        assert_eq!((rtp.mos.min, rtp.mos.p50, rtp.mos.max), (1.0, 4.41, 4.41));
        assert!((rtp.r_factor_mean - 9.0 * 93.2 / 10.0).abs() < 1e-9);
        // Delay is that of the streams heard: silence has none.
        assert!((rtp.mos.delay_ms_mean - 61.0).abs() < 1e-9);
        // With --rtp below 1 the far end may have sent nothing by design.
        let rtp = rated(RtpSummary::default(), &media, false);
        assert_eq!((rtp.mos.streams, rtp.mos.silent_streams), (9, 1));
        assert_eq!(rtp.mos.min, 4.41);
        assert!((rtp.r_factor_mean - 93.2).abs() < 1e-9);
    }
}
