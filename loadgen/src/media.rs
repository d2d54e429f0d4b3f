//! The RTP worker: one UDP socket and one thread for every stream of the run.
//!
//! Every 20 ms one tick sends a G.711 frame on each active stream, so there is no task or timer
//! per packet; received packets are told apart by SSRC (the far end sends to our one address),
//! each with RFC 3550 loss and jitter and the longest gap between arrivals. RFC 4733 digits are
//! sent between audio frames on the same stream.
//!
//! At 10,000 calls with both legs here (20,000 streams) that is a million packets a second each
//! way, so nothing is done per packet that can be done per batch. A tick's frames are written
//! into one buffer, streams ordered by destination, and leave with UDP segmentation offload (up
//! to 64 frames to one address per buffer, 64 buffers per `sendmmsg`) or, where the kernel
//! refuses it, with plain `sendmmsg`. Packets are read 64 buffers per `recvmmsg`, coalesced by
//! the kernel where it can (`UDP_GRO`: a segmented buffer from one sender stays one buffer), and
//! stamped by the kernel as they arrived, so jitter and gaps do not depend on when the thread
//! got round to reading. The socket buffers are made large enough for a whole tick's burst.
//!
//! The thread waits in epoll until a millisecond before each tick and spins the rest, so frames
//! leave within microseconds of their 20 ms slots: jitter the far end measures (or that an echo
//! brings back) is the network's, not the generator's timer granularity. A worker with nothing
//! to send sleeps until packets come or the load loop hands it commands ([`Worker::send`] wakes
//! it), so a run without RTP costs no wakeups here.
//!
//! The load loop closes an interval every second: it asks with [`Worker::close_interval`] and
//! the worker answers with that interval's figures ([`MediaInterval`], [`Worker::interval`])
//! when it next reads its commands, so the per-interval accounting costs nothing per packet:
//! the counters are the run's own, and the interval's share is their difference from the last
//! close, worked out once an interval over the streams.
//!
//! Each received stream is rated by the E-model ([`crate::emodel`]) when the run ends: its
//! RFC 3550 loss plus the packets a 40 ms playout buffer would have dropped as late, and its
//! mouth-to-ear delay (packetisation, the buffer, and the network transit where this worker
//! sent the stream itself and so knows when each packet left).

use std::collections::HashMap;
use std::net::UdpSocket;

use mio::{Events, Interest, Poll, Token, Waker};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pbxlab_proto::g711;
use pbxlab_proto::jitter::ReceiveStats;
use pbxlab_proto::rtp;

mod core;

pub use self::core::{MediaCore, SendBatch, Sent};

use crate::emodel::{self, Playout};
use crate::engine::MediaCommand;
use crate::metrics::{MAX_US, histogram};
use pbxlab_udp::pace::{Pace, PaceFigures};

const FRAME: Duration = Duration::from_millis(20);
const GAP_RECORDED_NS: u64 = GAP_RECORDED.as_nanos() as u64;
/// Samples per 20 ms frame at 8 kHz.
const SAMPLES: u32 = 160;
/// Nanoseconds per RTP timestamp unit at 8 kHz.
const NS_PER_SAMPLE: u64 = 1_000_000_000 / 8000;
/// The longest packet the worker writes: an RTP header and a G.711 frame (digits are shorter).
const PACKET_MAX: usize = rtp::HEADER_LEN + SAMPLES as usize;
/// Socket buffer asked for, each way. A tick to 10,000 streams is 10,000 datagrams at once,
/// about 10 MiB of kernel buffer on loopback (each datagram costs its `truesize`, ~1 KiB, not
/// its 172 bytes); the kernel reports double the request.
const SOCKET_BUFFER_BYTES: usize = 16 << 20;
/// The playout buffer streams are rated with: two frames, a common fixed depth for G.711.
pub const PLAYOUT_DEPTH: Duration = Duration::from_millis(40);
const PLAYOUT_DEPTH_UNITS: u32 = (PLAYOUT_DEPTH.as_nanos() / NS_PER_SAMPLE as u128) as u32;
/// The delay a frame has before it is sent: 20 ms of audio is gathered first.
const PACKETISATION: Duration = FRAME;
/// MOS is kept in hundredths: 1.00 to 4.50.
const MOS_CENTI_MAX: u64 = 450;
/// Ticks whose send time is remembered (5.12 s of them): a packet of ours that comes back
/// later than that is judged on its nominal send time.
const SENT_TICKS: usize = 256;

/// When each recent tick's packets actually left. A packet of ours that comes back (an echo, a
/// call between two of our users) is judged by the playout buffer, and charged its transit,
/// from when it left: a tick this worker sent late, or ticks it skipped after a stall, are this
/// machine's doing, not the network's or the target's, and must not cost the target MOS.
struct SentAt {
    /// Per slot: the tick's number and when it was sent, ns since the epoch.
    slots: [(u64, u64); SENT_TICKS],
}

impl SentAt {
    fn new() -> SentAt {
        SentAt {
            slots: [(u64::MAX, 0); SENT_TICKS],
        }
    }

    fn record(&mut self, tick: u64, sent_ns: u64) {
        self.slots[(tick % SENT_TICKS as u64) as usize] = (tick, sent_ns);
    }

    /// When tick `tick` left, if it is still remembered.
    fn of(&self, tick: u64) -> Option<u64> {
        match self.slots[(tick % SENT_TICKS as u64) as usize] {
            (t, at) if t == tick => Some(at),
            _ => None,
        }
    }
}

struct Sending {
    ssrc: u32,
    payload_type: u8,
    seq: u16,
    timestamp: u32,
    frame: usize,
    /// Pending RFC 4733 packets: (due tick, marker, payload, event timestamp).
    digits: Vec<(u64, bool, [u8; 4], u32)>,
}

struct Receiving {
    stats: ReceiveStats,
    /// Kernel arrival time of the last packet, nanoseconds since the worker's epoch.
    last_ns: Option<u64>,
    max_gap_ns: u64,
    /// RFC 4733 packets: they take sequence numbers but stay out of the statistics (their
    /// timestamps mark an event's start, which would read as jitter), so they are not loss.
    events: u64,
    /// Which audio packets a fixed playout buffer would have played in time.
    playout: Playout,
    /// For a stream this worker sends itself (an echo, or a call between two of our users):
    /// when its timestamp 0 left, nanoseconds since the epoch, so each packet's transit from
    /// our send to our receipt is known.
    origin_ns: Option<i64>,
    /// For a stream this worker sends itself: the tick its timestamp 0 left on (each tick
    /// after it carries the next 20 ms of timestamps), for `SentAt`.
    first_tick: Option<u64>,
    transit_ns_sum: u64,
    transits: u64,
    /// Packets received by the last interval's close: whether it was heard in the interval.
    received_at_close: u64,
    /// For a stream this worker sends: how many intervals had closed when it was stopped.
    stopped_after: Option<u64>,
    /// Whether the stream's longest gap is in `gap_us` already: once, when the stream ends.
    gap_recorded: bool,
}

impl Receiving {
    fn new() -> Receiving {
        Receiving {
            stats: ReceiveStats::new(8000),
            last_ns: None,
            max_gap_ns: 0,
            events: 0,
            playout: Playout::new(PLAYOUT_DEPTH_UNITS),
            origin_ns: None,
            first_tick: None,
            transit_ns_sum: 0,
            transits: 0,
            received_at_close: 0,
            stopped_after: None,
            gap_recorded: false,
        }
    }

    /// Records the stream's longest gap, once, into the run's `gap_us` and the interval's, if
    /// it has one (two packets or more).
    fn record_gap(&mut self, total: &mut Histogram<u64>, interval: &mut Histogram<u64>) {
        if self.gap_recorded || self.stats.received() < 2 {
            return;
        }
        self.gap_recorded = true;
        let gap_us = (self.max_gap_ns / 1000).clamp(1, MAX_US);
        let _ = total.record(gap_us);
        let _ = interval.record(gap_us);
    }

    /// Takes an audio packet that arrived at `arrival_ns` (since the epoch); returns when the
    /// one before it arrived and the time between them. `sent_at` tells, for a packet of ours,
    /// when its tick left.
    fn on_audio(
        &mut self,
        seq: u16,
        timestamp: u32,
        arrival_ns: u64,
        sent_at: &SentAt,
    ) -> Option<(u64, u64)> {
        // RTP timestamp units; only differences count, so wrapping is harmless.
        let units = (arrival_ns / NS_PER_SAMPLE) as u32;
        self.stats.on_packet(seq, timestamp, units);
        let mut played = units;
        if let Some(origin) = self.origin_ns {
            let sent = self
                .first_tick
                .and_then(|first| sent_at.of(first + u64::from(timestamp / SAMPLES)))
                .and_then(|at| i64::try_from(at).ok())
                .unwrap_or_else(|| {
                    origin.saturating_add(i64::from(timestamp) * NS_PER_SAMPLE as i64)
                });
            let arrived = i64::try_from(arrival_ns).unwrap_or(i64::MAX);
            // A packet sent before a skip of ticks can read as early: not below 0.
            let transit = u64::try_from(arrived.saturating_sub(sent)).unwrap_or(0);
            self.transit_ns_sum = self.transit_ns_sum.saturating_add(transit);
            self.transits += 1;
            // The buffer sees it as if it had left at its timestamp's time: its transit is
            // what the network and the target added.
            played = ((transit / NS_PER_SAMPLE) as u32).wrapping_add(timestamp);
        }
        self.playout.on_packet(timestamp, played);
        let gap = self
            .last_ns
            .map(|last| (last, arrival_ns.saturating_sub(last)));
        if let Some((_, g)) = gap {
            self.max_gap_ns = self.max_gap_ns.max(g);
        }
        self.last_ns = Some(arrival_ns);
        gap
    }

    /// Packets lost by RFC 3550's count, digits (which take sequence numbers) not included.
    fn lost(&self) -> u64 {
        let events = i64::try_from(self.events).unwrap_or(i64::MAX);
        u64::try_from(self.stats.lost().saturating_sub(events).max(0)).unwrap_or(0)
    }

    /// The E-model's view of the stream: lost and late packets over those expected, and the
    /// mouth-to-ear delay. The network's part of the delay is known only for streams we sent:
    /// for an echo it is the round trip, which is what the caller hears; for a call between
    /// our own users one way. Otherwise it counts as 0.
    fn conditions(&self) -> emodel::Conditions {
        let expected = self.stats.expected();
        let unplayed = self
            .lost()
            .saturating_add(self.playout.late())
            .min(expected);
        let loss = if expected == 0 {
            0.0
        } else {
            unplayed as f64 / expected as f64
        };
        let network_ms = if self.transits == 0 {
            0.0
        } else {
            self.transit_ns_sum as f64 / self.transits as f64 / 1e6
        };
        let fixed_ms = (PACKETISATION + PLAYOUT_DEPTH).as_secs_f64() * 1000.0;
        emodel::Conditions::g711(loss, fixed_ms + network_ms)
    }
}

/// A silence in a received stream longer than [`GAP_RECORDED`]: when the last packet before
/// it arrived and how long until the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub ssrc: u32,
    /// Since [`MediaReport::epoch`].
    pub start_ns: u64,
    pub len_ns: u64,
}

/// Silences from this long are recorded one by one: three lost frames, beyond any jitter
/// loopback shows, yet well below the failovers a drill looks for.
pub const GAP_RECORDED: Duration = Duration::from_millis(60);
/// The most gaps recorded one by one; later ones still count in `gap_us`.
const MAX_GAPS: usize = 1 << 20;

/// What the worker saw, at the end of the run.
#[derive(Debug, Clone)]
pub struct MediaReport {
    /// The clock's origin for `gaps`: the worker thread's start; `None` when the core ran on
    /// a clock handed to it (a simulation's), whose zero is the caller's.
    pub epoch: Option<Instant>,
    /// Every silence of [`GAP_RECORDED`] or more, in the order they ended.
    pub gaps: Vec<Gap>,
    pub streams: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub expected: u64,
    pub lost: u64,
    /// Per received stream: its final interarrival jitter, microseconds.
    pub jitter_us: Histogram<u64>,
    /// Per received stream: the longest time between two arrivals, microseconds.
    pub gap_us: Histogram<u64>,
    /// Per received stream: its E-model MOS in hundredths (100 to 450).
    pub mos_centi: Histogram<u64>,
    /// The sum of the received streams' R factors.
    pub r_factor_sum: f64,
    /// The sum of the received streams' mouth-to-ear delays (G.107's Ta), milliseconds.
    pub delay_ms_sum: f64,
    /// Streams started here less streams received: legs that heard nothing (at least; see
    /// the end of `run`).
    pub silent_streams: u64,
    /// Audio packets that arrived, but later than the playout buffer could play them.
    pub late: u64,
    pub send_errors: u64,
    pub malformed: u64,
    /// Whether frames left with UDP segmentation offload (else one `sendmmsg` entry each).
    pub segmentation_offload: bool,
    /// Whether the kernel hands over datagrams of one flow coalesced (`UDP_GRO`).
    pub receive_coalescing: bool,
    /// The socket's receive buffer as the kernel granted it (`SO_RCVBUF` read back).
    pub receive_buffer_bytes: usize,
    /// The socket's send buffer as the kernel granted it.
    pub send_buffer_bytes: usize,
    /// How late the worker's ticks left against their 20 ms slots, and what the kernel
    /// dropped on its socket.
    pub pace: PaceFigures,
    /// The last interval: from the last [`Worker::close_interval`] the worker answered to the
    /// end of the run.
    pub last_interval: MediaInterval,
}

/// What the worker saw in one interval of the run. Counts are the interval's share of the
/// run's: summed over the intervals they give the report's totals (RFC 3550's loss can shrink
/// when a packet counted lost turns up late; such an interval reports no loss and the next ones
/// make up the difference).
#[derive(Debug, Clone)]
pub struct MediaInterval {
    /// The interval's number, as the load loop asked for it (0 the first).
    pub index: u64,
    /// Streams started since the run began (not only in the interval).
    pub streams: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    /// RFC 3550's expected and lost packets over the received streams, the interval's share.
    pub expected: u64,
    pub lost: u64,
    /// Audio packets that came too late for the playout buffer.
    pub late: u64,
    /// Per stream heard in the interval: its RFC 3550 interarrival jitter as it stood at the
    /// interval's end, microseconds. Jitter is a running estimate (RFC 3550 smooths it over
    /// about 16 packets), so this is each stream's recent jitter, not an average over the run.
    pub jitter_us: Histogram<u64>,
    /// What the worker recorded into [`MediaReport::gap_us`] in the interval: the longest gap
    /// of each stream that ended in it. A stream's longest gap is known once the stream is
    /// over: for a stream this worker sent and hears back (an echo, a call between two of our
    /// users) that is the first close after an interval in which, stopped, it was silent; any
    /// other stream ends with the run, so its gap is in the last interval. Each stream counts
    /// once, so the intervals' counts add up to the run's. Single silences are in
    /// [`MediaReport::gaps`].
    pub gap_us: Histogram<u64>,
}

impl MediaInterval {
    pub fn loss_fraction(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            self.lost as f64 / self.expected as f64
        }
    }
}

/// The run's counters as the last interval's close reported them, and what was recorded into
/// `gap_us` since: what the next close hands over is the difference.
struct Intervals {
    reported: [u64; 5],
    gap_us: Histogram<u64>,
    /// Intervals closed so far.
    closed: u64,
}

impl Intervals {
    fn new() -> Intervals {
        Intervals {
            reported: [0; 5],
            gap_us: histogram(),
            closed: 0,
        }
    }

    /// Closes interval `index` at the counters `sent`, `received` and the streams' own state:
    /// one pass over the streams, once an interval, nothing per packet. The longest gap of
    /// each stream that has ended goes into `gap_total` (the run's `gap_us`) and the interval.
    fn close(
        &mut self,
        index: u64,
        streams: u64,
        sent: u64,
        received: u64,
        receiving: &mut HashMap<u32, Receiving>,
        gap_total: &mut Histogram<u64>,
    ) -> MediaInterval {
        let mut jitter_us = histogram();
        let (mut expected, mut lost, mut late) = (0u64, 0u64, 0u64);
        for r in receiving.values_mut() {
            if r.last_ns.is_none() {
                continue;
            }
            expected += r.stats.expected();
            lost += r.lost();
            late += r.playout.late();
            let heard = r.stats.received() > r.received_at_close;
            if heard {
                let _ = jitter_us.record((r.stats.jitter_us() as u64).clamp(1, MAX_US));
            }
            // Stopped before the last close and silent since: over.
            if !heard && r.stopped_after.is_some_and(|n| n < self.closed) {
                r.record_gap(gap_total, &mut self.gap_us);
            }
            r.received_at_close = r.stats.received();
        }
        let now = [sent, received, expected, lost, late];
        let mut share = [0u64; 5];
        for ((s, r), n) in share.iter_mut().zip(&mut self.reported).zip(now) {
            *s = n.saturating_sub(*r);
            *r += *s;
        }
        let [packets_sent, packets_received, expected, lost, late] = share;
        let gap_us = std::mem::replace(&mut self.gap_us, histogram());
        self.closed += 1;
        MediaInterval {
            index,
            streams,
            packets_sent,
            packets_received,
            expected,
            lost,
            late,
            jitter_us,
            gap_us,
        }
    }
}

impl MediaReport {
    pub fn loss_fraction(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            self.lost as f64 / self.expected as f64
        }
    }
}

fn mos_histogram() -> Histogram<u64> {
    // 1 to 450 with 3 significant digits records every hundredth exactly; these bounds are
    // valid (high >= 2 * low), so this cannot fail.
    Histogram::new_with_bounds(1, MOS_CENTI_MAX, 3).expect("constant histogram bounds are valid")
}

/// One second of a 400 Hz tone in mu-law: frames are slices of it, so the payload is real audio
/// at no per-packet cost.
fn tone() -> Vec<u8> {
    let pcm: Vec<i16> = (0..8000)
        .map(|i| ((i as f64 * 400.0 * std::f64::consts::TAU / 8000.0).sin() * 8000.0) as i16)
        .collect();
    let mut out = vec![0u8; pcm.len()];
    g711::encode_ulaw(&pcm, &mut out);
    out
}

/// What the load loop tells the worker.
enum Command {
    Media(MediaCommand),
    /// Close interval n and answer with its figures.
    CloseInterval(u64),
}

/// The running worker: streams are started, redirected and stopped by [`Worker::send`],
/// intervals closed by [`Worker::close_interval`], and [`Worker::stop`] ends it and returns its
/// report.
pub struct Worker {
    commands: Sender<Command>,
    intervals: Receiver<MediaInterval>,
    /// Wakes the thread from its wait: a worker without streams sleeps until told something.
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<MediaReport>,
}

impl Worker {
    /// Hands the commands to the worker and wakes it for them.
    pub fn send(&self, commands: impl IntoIterator<Item = MediaCommand>) {
        let mut any = false;
        for cmd in commands {
            // A closed channel only means the thread has ended; `stop` reports why.
            let _ = self.commands.send(Command::Media(cmd));
            any = true;
        }
        if any {
            let _ = self.waker.wake();
        }
    }

    /// Asks the worker to close interval `index`; its figures come back by [`Worker::interval`]
    /// as soon as the worker next reads its commands (within a tick, 20 ms, at the latest
    /// unless the thread is stalled).
    pub fn close_interval(&self, index: u64) {
        let _ = self.commands.send(Command::CloseInterval(index));
        let _ = self.waker.wake();
    }

    /// The next closed interval's figures, waiting for them at most `wait`.
    pub fn interval(&self, wait: Duration) -> Option<MediaInterval> {
        if wait.is_zero() {
            self.intervals.try_recv().ok()
        } else {
            self.intervals.recv_timeout(wait).ok()
        }
    }

    /// Stops the worker and returns what it measured; `Err` if its thread panicked.
    pub fn stop(self) -> std::thread::Result<MediaReport> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.waker.wake();
        self.thread.join()
    }
}

/// Starts the worker on `socket`.
pub fn spawn(socket: UdpSocket) -> std::io::Result<Worker> {
    socket.set_nonblocking(true)?;
    let buffers = pbxlab_udp::set_buffer_sizes(&socket, SOCKET_BUFFER_BYTES)?;
    let mut socket = mio::net::UdpSocket::from_std(socket);
    let poll = Poll::new()?;
    poll.registry()
        .register(&mut socket, Token(0), Interest::READABLE)?;
    let waker = Arc::new(Waker::new(poll.registry(), Token(1))?);
    let (commands_tx, commands) = std::sync::mpsc::channel();
    let (intervals_tx, intervals) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_flag = Arc::clone(&stop);
    // The batch headers hold raw pointers and cannot cross threads, so the worker makes them and
    // says whether it could (kernel timestamps on).
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("pbxlab-rtp".into())
        .spawn(move || {
            let epoch = Instant::now();
            let mut core = MediaCore::new(Some(epoch), buffers.receive_bytes, buffers.send_bytes);
            let receiver = match pbxlab_udp::Receiver::coalescing(&socket, epoch) {
                Ok((r, coalescing)) => {
                    core.report_mut().receive_coalescing = coalescing;
                    let _ = ready_tx.send(Ok(()));
                    r
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return core.finish();
                }
            };
            let io = Io {
                socket: &socket,
                poll,
                receiver,
                sender: pbxlab_udp::Sender::default(),
                epoch,
            };
            run(io, &commands, &intervals_tx, &stop_flag, core)
        })?;
    let worker = Worker {
        commands: commands_tx,
        intervals,
        waker,
        stop,
        thread,
    };
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(worker),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::other(
            "the RTP worker exited while starting",
        )),
    }
}

/// How long before a tick the thread stops sleeping and spins.
const SPIN: Duration = Duration::from_millis(1);

struct Io<'a> {
    socket: &'a mio::net::UdpSocket,
    poll: Poll,
    receiver: pbxlab_udp::Receiver,
    sender: pbxlab_udp::Sender,
    /// Time zero of kernel arrival stamps and of the tick grid.
    epoch: Instant,
}

/// The thread: moves commands, the clock and datagrams between the load loop, the socket and
/// the core, and keeps the figures only a real socket has (lateness, kernel drops, offload).
fn run(
    mut io: Io<'_>,
    commands: &Receiver<Command>,
    intervals_out: &Sender<MediaInterval>,
    stop: &AtomicBool,
    mut core: MediaCore,
) -> MediaReport {
    let mut events = Events::with_capacity(16);
    let epoch = io.epoch;
    // Lateness counts from a tick that had streams: the first after an idle spell is on time
    // by definition.
    let pace = Pace::default();
    let mut scheduled = false;
    let mut drops = 0u32;
    let ns = |t: Instant| u64::try_from(t.duration_since(epoch).as_nanos()).unwrap_or(u64::MAX);
    let at = |ns: u64| epoch + Duration::from_nanos(ns);
    loop {
        while let Ok(cmd) = commands.try_recv() {
            match cmd {
                Command::Media(cmd) => core.command(cmd),
                Command::CloseInterval(index) => {
                    // A closed channel only means the load loop has stopped listening.
                    let _ = intervals_out.send(core.close_interval(index));
                }
            }
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let now = ns(Instant::now());
        let due = core.tick_at();
        if now >= due {
            if scheduled {
                pace.on_time(due, now);
            }
            scheduled = core.is_sending();
            let (socket, sender) = (io.socket, &mut io.sender);
            core.tick(now, &mut |datagrams| Sent {
                at_ns: ns(Instant::now()),
                errors: sender.send_segmented(socket, datagrams).len(),
            });
        }
        // Sleep until shortly before the next tick or until packets arrive; then read them all.
        let next_tick = at(core.tick_at());
        let until_tick = next_tick.saturating_duration_since(Instant::now());
        if !core.is_sending() {
            // Nothing to send: sleep until packets come or the waker brings commands or a stop.
            let _ = io.poll.poll(&mut events, None);
        } else if until_tick > SPIN {
            let _ = io.poll.poll(&mut events, Some(until_tick - SPIN));
        }
        let _ = io.receiver.drain(io.socket, |arrival_ns, _, bytes| {
            core.receive(arrival_ns, bytes)
        });
        pace.socket_drops(&mut drops, io.receiver.kernel_drops());
        // Spin only while there is something to send on time; an idle worker sleeps.
        if core.is_sending()
            && Instant::now() < next_tick
            && next_tick.saturating_duration_since(Instant::now()) <= SPIN
        {
            std::hint::spin_loop();
        }
    }
    let segmentation_offload = io.sender.segmentation() == Some(true);
    let mut report = core.finish();
    report.segmentation_offload = segmentation_offload;
    report.pace = pace.figures();
    report
}

impl MediaReport {
    fn rate(&mut self, r_factor: f64) {
        self.r_factor_sum += r_factor;
        let _ = self.mos_centi.record(mos_centi(emodel::mos(r_factor)));
    }
}

/// A MOS in hundredths, as [`MediaReport::mos_centi`] holds it.
pub fn mos_centi(mos: f64) -> u64 {
    ((mos * 100.0).round() as u64).clamp(100, MOS_CENTI_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn worker() -> (SocketAddr, Worker) {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = socket.local_addr().expect("addr");
        (addr, spawn(socket).expect("spawn"))
    }

    /// A 20 ms stream of `n` packets, the i-th arriving `delay_ms(i)` after it left (None:
    /// lost), sent at time 0 by this worker if `ours`.
    fn stream(n: u16, ours: bool, delay_ms: impl Fn(u16) -> Option<u64>) -> Receiving {
        let mut r = Receiving::new();
        if ours {
            r.origin_ns = Some(0);
        }
        for i in 0..n {
            if let Some(d) = delay_ms(i) {
                let sent_ns = u64::from(i) * 20_000_000;
                r.on_audio(
                    i,
                    u32::from(i) * SAMPLES,
                    sent_ns + d * 1_000_000,
                    &SentAt::new(),
                );
            }
        }
        r
    }

    #[test]
    fn ticks_this_worker_sent_late_or_skipped_cost_the_target_nothing() {
        // Our own stream, timestamp 0 on tick 0: every tenth tick left 60 ms late (past the
        // 40 ms buffer), and from tick 250 on every tick left 100 ms later than its slot (a
        // stall: ticks skipped, timestamps going on from where they were). Each packet came
        // back 1 ms after it actually left.
        let sent_ns = |i: u16| {
            u64::from(i) * 20_000_000
                + if i % 10 == 5 { 60_000_000 } else { 0 }
                + if i >= 250 { 100_000_000 } else { 0 }
        };
        // Each tick is recorded as it leaves; its packet comes back before many more do.
        let arrivals = |r: &mut Receiving| {
            let mut sent_at = SentAt::new();
            for i in 0..500u16 {
                sent_at.record(u64::from(i), sent_ns(i));
                r.on_audio(i, u32::from(i) * SAMPLES, sent_ns(i) + 1_000_000, &sent_at);
            }
            sent_at
        };
        let mut ours = Receiving::new();
        ours.origin_ns = Some(0);
        ours.first_tick = Some(0);
        let sent_at = arrivals(&mut ours);
        assert_eq!(ours.playout.late(), 0, "the lateness was ours");
        let c = ours.conditions();
        assert_eq!(mos_centi(c.mos()), 441);
        // Transit from the actual send: 1 ms.
        assert!((c.delay_ms - 61.0).abs() < 1e-6, "{}", c.delay_ms);
        // Judged on the timestamps' own times, the same arrivals read as the network's doing.
        let mut blind = Receiving::new();
        blind.origin_ns = Some(0);
        arrivals(&mut blind);
        assert!(blind.playout.late() >= 50, "{}", blind.playout.late());
        // A slot holds only its own tick: tick 255 is remembered, tick 5's slot is tick 261's.
        assert_eq!(sent_at.of(255), Some(sent_ns(255)));
        assert_eq!(sent_at.of(5), None);
    }

    #[test]
    fn a_clean_stream_rates_as_g711_at_its_best() {
        let c = stream(500, false, |_| Some(3)).conditions();
        assert_eq!(c.loss_fraction, 0.0);
        // Packetisation and the buffer; the network's share is unknown for a stream not ours.
        assert_eq!(c.delay_ms, 60.0);
        assert_eq!(mos_centi(c.mos()), 441);
    }

    #[test]
    fn our_own_stream_coming_back_measures_its_transit() {
        // 150 ms from our send to our receipt: Ta 210 ms, G.107's Idd there is 3.9.
        let c = stream(500, true, |_| Some(150)).conditions();
        assert!((c.delay_ms - 210.0).abs() < 1e-9, "{}", c.delay_ms);
        let r = c.r_factor();
        assert!(
            (r - (93.2 - emodel::idd(210.0))).abs() < 1e-9 && r < 89.5,
            "{r}"
        );
        // The same stream from someone else: no delay to charge.
        let theirs = stream(500, false, |_| Some(150)).conditions();
        assert!(theirs.r_factor() > r);
    }

    #[test]
    fn late_packets_count_as_lost_and_lost_ones_too() {
        // One in 50 lost, one other in 50 arriving 60 ms late (past the 40 ms buffer).
        let r = stream(1001, false, |i| match i % 50 {
            10 => None,
            30 => Some(65),
            _ => Some(5),
        });
        assert_eq!(r.lost(), 20);
        assert_eq!(r.playout.late(), 20);
        let c = r.conditions();
        assert!((c.loss_fraction - 0.04).abs() < 1e-3, "{}", c.loss_fraction);
        // 4% random loss without concealment is a poor call.
        assert!(c.mos() < 3.0, "{}", c.mos());
    }

    #[test]
    fn an_interval_hands_over_its_share_of_the_counts_and_the_jitter_of_streams_heard_in_it() {
        // Stream 1: packets 0..50 in the first interval with seq 10 lost, 50..100 in the second
        // with 60 and 70 lost and 80 too late for the playout buffer. Stream 2: heard only in
        // the first.
        let feed = |r: &mut Receiving, seqs: std::ops::Range<u16>| {
            for i in seqs.filter(|i| ![10, 60, 70].contains(i)) {
                let delay_ms = if i == 80 { 65 } else { 5 };
                let arrival = u64::from(i) * 20_000_000 + delay_ms * 1_000_000;
                r.on_audio(i, u32::from(i) * SAMPLES, arrival, &SentAt::new());
            }
        };
        let mut receiving = HashMap::new();
        let mut one = Receiving::new();
        feed(&mut one, 0..50);
        receiving.insert(1, one);
        receiving.insert(2, stream(50, false, |_| Some(5)));
        // Ours, never heard: not a received stream.
        receiving.insert(3, Receiving::new());
        // Ours, heard back, stopped in the first interval.
        let mut four = stream(50, true, |_| Some(5));
        four.stopped_after = Some(0);
        receiving.insert(4, four);
        let mut intervals = Intervals::new();
        let mut gaps = histogram();
        let first = intervals.close(0, 4, 150, 99, &mut receiving, &mut gaps);
        assert_eq!((first.index, first.streams), (0, 4));
        assert_eq!((first.packets_sent, first.packets_received), (150, 99));
        // RFC 3550's probation: a stream's count starts from its second packet, 49 each.
        assert_eq!((first.expected, first.lost, first.late), (147, 1, 0));
        assert_eq!(first.jitter_us.len(), 3, "three streams were heard");
        assert!(first.gap_us.is_empty(), "stream 4 may have packets to come");

        if let Some(one) = receiving.get_mut(&1) {
            feed(one, 50..100);
        }
        let second = intervals.close(1, 4, 300, 99 + 48, &mut receiving, &mut gaps);
        assert_eq!((second.packets_sent, second.packets_received), (150, 48));
        assert_eq!((second.expected, second.lost, second.late), (50, 2, 1));
        assert!((second.loss_fraction() - 0.04).abs() < 1e-12);
        assert_eq!(second.jitter_us.len(), 1, "only stream 1 was heard");
        // Stream 4, stopped and silent through an interval, is over: its longest gap (20 ms)
        // goes to the run's and this interval's. Stream 2 is silent but may come back.
        assert_eq!((second.gap_us.len(), gaps.len()), (1, 1));
        assert!(second.gap_us.equivalent(second.gap_us.max(), 20_000));

        // Nothing new: an empty interval, and the gaps were handed over once.
        let third = intervals.close(2, 4, 300, 147, &mut receiving, &mut gaps);
        assert_eq!((third.packets_sent, third.expected, third.lost), (0, 0, 0));
        assert!(third.jitter_us.is_empty() && third.gap_us.is_empty());
        assert_eq!(gaps.len(), 1);
        // The shares add up to the streams' totals.
        let heard = || receiving.values().filter(|r| r.last_ns.is_some());
        assert_eq!(
            first.lost + second.lost,
            heard().map(Receiving::lost).sum::<u64>()
        );
        assert_eq!(
            first.expected + second.expected,
            heard().map(|r| r.stats.expected()).sum::<u64>()
        );
    }

    #[test]
    fn the_worker_answers_an_interval_close_and_its_intervals_add_up_to_the_report() {
        let (addr, w) = worker();
        // Nothing to close yet: an interval of nothing, at once.
        w.close_interval(0);
        let empty = w.interval(Duration::from_secs(5)).expect("first interval");
        assert_eq!((empty.index, empty.streams, empty.packets_sent), (0, 0, 0));
        // A stream the worker echoes to itself.
        w.send([MediaCommand::Start {
            stream: 1,
            ssrc: 0x1111,
            dest: addr,
            payload_type: 0,
        }]);
        std::thread::sleep(Duration::from_millis(300));
        w.close_interval(1);
        let busy = w.interval(Duration::from_secs(5)).expect("second interval");
        assert_eq!((busy.index, busy.streams), (1, 1));
        assert!(
            busy.packets_sent > 0 && busy.packets_received > 0,
            "{busy:?}"
        );
        assert_eq!(busy.jitter_us.len(), 1);
        assert!(busy.gap_us.is_empty(), "a stream's gap is known at its end");
        std::thread::sleep(Duration::from_millis(200));
        w.send([MediaCommand::Stop { stream: 1 }]);
        std::thread::sleep(Duration::from_millis(100));
        // The interval it stopped in, with its last packets; then one of silence, which ends
        // it: its longest gap is that interval's.
        w.close_interval(2);
        let stopped = w.interval(Duration::from_secs(5)).expect("third interval");
        assert!(
            stopped.packets_sent > 0 && stopped.gap_us.is_empty(),
            "{stopped:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
        w.close_interval(3);
        let over = w.interval(Duration::from_secs(5)).expect("fourth interval");
        assert_eq!((over.packets_sent, over.packets_received), (0, 0));
        assert_eq!(over.gap_us.len(), 1, "{over:?}");
        let r = w.stop().expect("worker");
        let last = &r.last_interval;
        assert_eq!(last.index, 4);
        assert!(
            last.gap_us.is_empty(),
            "recorded once, when the stream ended"
        );
        let all = [&empty, &busy, &stopped, &over, last];
        let sum = |f: fn(&MediaInterval) -> u64| all.iter().map(|i| f(i)).sum::<u64>();
        assert_eq!(sum(|i| i.packets_sent), r.packets_sent);
        assert_eq!(sum(|i| i.packets_received), r.packets_received);
        assert_eq!(sum(|i| i.expected), r.expected);
        assert_eq!(sum(|i| i.lost), r.lost);
        assert_eq!(sum(|i| i.late), r.late);
        assert_eq!(sum(|i| i.gap_us.len()), r.gap_us.len());
        assert_eq!(r.gap_us.len(), 1);
    }

    #[test]
    fn a_leg_that_hears_nothing_is_counted_and_its_own_echo_is_rated() {
        let (addr, w) = worker();
        let nobody = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let nobody_addr = nobody.local_addr().expect("addr");
        // Stream 1 comes straight back (the worker is its own echo); stream 2 goes nowhere.
        w.send([
            MediaCommand::Start {
                stream: 1,
                ssrc: 0x1111,
                dest: addr,
                payload_type: 0,
            },
            MediaCommand::Start {
                stream: 2,
                ssrc: 0x2222,
                dest: nobody_addr,
                payload_type: 0,
            },
        ]);
        std::thread::sleep(Duration::from_millis(500));
        w.send([1, 2].map(|stream| MediaCommand::Stop { stream }));
        std::thread::sleep(Duration::from_millis(100));
        let r = w.stop().expect("worker");
        assert_eq!(r.streams, 2);
        assert_eq!(r.silent_streams, 1);
        assert_eq!(
            r.mos_centi.len(),
            1,
            "only the stream that came back is rated"
        );
        assert!(r.r_factor_sum > 0.0);
    }

    #[test]
    fn two_workers_exchange_fifty_streams_without_loss() {
        const STREAMS: u64 = 50;
        let ((a_addr, a), (b_addr, b)) = (worker(), worker());
        for (w, to, base) in [(&a, b_addr, 0x1000_0000), (&b, a_addr, 0x2000_0000)] {
            w.send((0..STREAMS).map(|i| MediaCommand::Start {
                stream: i,
                ssrc: base + i as u32,
                dest: to,
                payload_type: 0,
            }));
        }
        // Digits ride on the same streams and the same batches.
        a.send([MediaCommand::Dtmf {
            stream: 7,
            digits: "1#".into(),
        }]);
        std::thread::sleep(Duration::from_millis(1500));
        // Stop sending first and let the last packets land, so every packet sent is counted.
        for w in [&a, &b] {
            w.send((0..STREAMS).map(|stream| MediaCommand::Stop { stream }));
        }
        std::thread::sleep(Duration::from_millis(300));
        // Both are idle now, asleep until told: stopping must wake them.
        let reports: Vec<MediaReport> = [a, b]
            .into_iter()
            .map(|w| w.stop().expect("worker"))
            .collect();
        for (r, far) in [(&reports[0], &reports[1]), (&reports[1], &reports[0])] {
            assert_eq!(r.streams, STREAMS);
            assert!(r.packets_sent >= STREAMS * 10, "{r:?}");
            assert_eq!(r.send_errors, 0);
            assert_eq!(r.malformed, 0);
            assert_eq!(r.packets_received, far.packets_sent, "every packet arrives");
            // Digits took sequence numbers on one stream; they are not loss.
            assert_eq!(r.lost, 0);
            assert_eq!(r.jitter_us.len(), STREAMS);
            assert_eq!(r.gap_us.len(), STREAMS);
            // Generous: a loaded CI machine may be late by milliseconds, not by a frame.
            assert!(r.jitter_us.max() < 20_000, "jitter {}", r.jitter_us.max());
            assert!(r.receive_buffer_bytes > 0 && r.send_buffer_bytes > 0);
            // Every stream was heard and rated; a clean one as G.711 at its best.
            assert_eq!(r.mos_centi.len(), STREAMS);
            assert_eq!(r.silent_streams, 0);
            assert_eq!(r.mos_centi.max(), 441, "{r:?}");
        }
    }
}
