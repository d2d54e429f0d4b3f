//! The RTP worker: one UDP socket and one thread for every stream of the run.
//!
//! Every 20 ms one tick sends a G.711 frame on each active stream, so there is no task or timer
//! per packet; received packets are told apart by SSRC (the far end sends to our one address),
//! each with RFC 3550 loss and jitter and the longest gap between arrivals. RFC 4733 digits are
//! sent between audio frames on the same stream.
//!
//! The thread waits in epoll until a millisecond before each tick and spins the rest, so frames
//! leave within microseconds of their 20 ms slots: jitter the far end measures (or that an echo
//! brings back) is the network's, not the generator's timer granularity.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};

use mio::{Events, Interest, Poll, Token};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pbxlab_proto::dtmf;
use pbxlab_proto::g711;
use pbxlab_proto::jitter::ReceiveStats;
use pbxlab_proto::rtp;
use pbxlab_proto::sdp::PT_TELEPHONE_EVENT;

use crate::engine::MediaCommand;
use crate::metrics::{MAX_US, histogram};

const FRAME: Duration = Duration::from_millis(20);
/// Samples per 20 ms frame at 8 kHz.
const SAMPLES: u32 = 160;

struct Sending {
    ssrc: u32,
    dest: SocketAddr,
    payload_type: u8,
    seq: u16,
    timestamp: u32,
    frame: usize,
    /// Pending RFC 4733 packets: (due tick, marker, payload, event timestamp).
    digits: Vec<(u64, bool, [u8; 4], u32)>,
}

struct Receiving {
    stats: ReceiveStats,
    last: Option<Instant>,
    max_gap: Duration,
}

/// What the worker saw, at the end of the run.
#[derive(Debug, Clone)]
pub struct MediaReport {
    pub streams: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub expected: u64,
    pub lost: u64,
    /// Per received stream: its final interarrival jitter, microseconds.
    pub jitter_us: Histogram<u64>,
    /// Per received stream: the longest time between two arrivals, microseconds.
    pub gap_us: Histogram<u64>,
    pub send_errors: u64,
    pub malformed: u64,
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

/// Starts the worker on `socket`; it runs until `stop` is set and then reports.
pub fn spawn(
    socket: UdpSocket,
    commands: Receiver<MediaCommand>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<MediaReport>> {
    socket.set_nonblocking(true)?;
    let mut socket = mio::net::UdpSocket::from_std(socket);
    let poll = Poll::new()?;
    poll.registry()
        .register(&mut socket, Token(0), Interest::READABLE)?;
    std::thread::Builder::new()
        .name("pbxlab-rtp".into())
        .spawn(move || run(&socket, poll, &commands, &stop))
}

/// How long before a tick the thread stops sleeping and spins.
const SPIN: Duration = Duration::from_millis(1);

fn run(
    socket: &mio::net::UdpSocket,
    mut poll: Poll,
    commands: &Receiver<MediaCommand>,
    stop: &AtomicBool,
) -> MediaReport {
    let mut events = Events::with_capacity(16);
    let audio = tone();
    let frames = audio.len() / SAMPLES as usize;
    let mut sending: HashMap<u64, Sending> = HashMap::new();
    let mut receiving: HashMap<u32, Receiving> = HashMap::new();
    let mut report = MediaReport {
        streams: 0,
        packets_sent: 0,
        packets_received: 0,
        expected: 0,
        lost: 0,
        jitter_us: histogram(),
        gap_us: histogram(),
        send_errors: 0,
        malformed: 0,
    };
    let epoch = Instant::now();
    let mut tick: u64 = 0;
    let mut next_tick = epoch;
    let mut packet = [0u8; 1500];
    let mut recv = [0u8; 2048];
    loop {
        while let Ok(cmd) = commands.try_recv() {
            match cmd {
                MediaCommand::Start {
                    stream,
                    ssrc,
                    dest,
                    payload_type,
                } => {
                    report.streams += 1;
                    sending.insert(
                        stream,
                        Sending {
                            ssrc,
                            dest,
                            payload_type,
                            seq: 0,
                            timestamp: 0,
                            frame: 0,
                            digits: Vec::new(),
                        },
                    );
                }
                MediaCommand::Redirect { stream, dest } => {
                    if let Some(s) = sending.get_mut(&stream) {
                        s.dest = dest;
                    }
                }
                MediaCommand::Dtmf { stream, digits } => {
                    if let Some(s) = sending.get_mut(&stream) {
                        // A digit every 200 ms: 100 ms of tone, then a pause, starting after a
                        // second of audio so the far end has locked on to the stream.
                        let mut start = tick + 50;
                        for d in digits.chars().filter_map(dtmf::digit_to_event) {
                            let event_ts =
                                s.timestamp.wrapping_add(((start - tick) as u32) * SAMPLES);
                            for p in dtmf::digit_packets(d, 100, 20, 10) {
                                s.digits.push((
                                    start + u64::from(p.offset_ms / 20),
                                    p.marker,
                                    p.payload,
                                    event_ts,
                                ));
                            }
                            start += 10;
                        }
                    }
                }
                MediaCommand::Stop { stream } => {
                    sending.remove(&stream);
                }
            }
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let now = Instant::now();
        if now >= next_tick {
            for s in sending.values_mut() {
                let mut sent_event = false;
                while let Some(pos) = s.digits.iter().position(|d| d.0 <= tick) {
                    let (_, marker, payload, ts) = s.digits.remove(pos);
                    if let Ok(n) = rtp::write_rtp(
                        &mut packet,
                        s.ssrc,
                        s.seq,
                        ts,
                        PT_TELEPHONE_EVENT,
                        marker,
                        &payload,
                    ) {
                        s.seq = s.seq.wrapping_add(1);
                        send(socket, &packet[..n], s.dest, &mut report);
                        sent_event = true;
                    }
                }
                if !sent_event {
                    let offset = (s.frame % frames) * SAMPLES as usize;
                    let payload = audio.get(offset..offset + SAMPLES as usize).unwrap_or(&[]);
                    if let Ok(n) = rtp::write_rtp(
                        &mut packet,
                        s.ssrc,
                        s.seq,
                        s.timestamp,
                        s.payload_type,
                        false,
                        payload,
                    ) {
                        send(socket, &packet[..n], s.dest, &mut report);
                    }
                    s.seq = s.seq.wrapping_add(1);
                }
                s.frame += 1;
                s.timestamp = s.timestamp.wrapping_add(SAMPLES);
            }
            tick += 1;
            next_tick += FRAME;
            // After a stall, skip missed ticks rather than bursting them out.
            if next_tick + FRAME < now {
                next_tick = now;
            }
        }
        // Sleep until shortly before the next tick or until packets arrive; then read them all.
        let until_tick = next_tick.saturating_duration_since(Instant::now());
        if sending.is_empty() {
            // Nothing to send: wake for packets, or every frame to look for commands and stop.
            let _ = poll.poll(&mut events, Some(FRAME));
        } else if until_tick > SPIN {
            let _ = poll.poll(&mut events, Some(until_tick - SPIN));
        }
        loop {
            match socket.recv_from(&mut recv) {
                Ok((n, _)) => {
                    let arrival = Instant::now();
                    match recv.get(..n).map(rtp::read_rtp) {
                        Some(Ok(p)) if p.payload_type != PT_TELEPHONE_EVENT => {
                            report.packets_received += 1;
                            let r = receiving.entry(p.ssrc).or_insert_with(|| Receiving {
                                stats: ReceiveStats::new(8000),
                                last: None,
                                max_gap: Duration::ZERO,
                            });
                            let units = (arrival.duration_since(epoch).as_nanos() * 8000
                                / 1_000_000_000) as u32;
                            r.stats.on_packet(p.seq, p.timestamp, units);
                            if let Some(last) = r.last {
                                r.max_gap = r.max_gap.max(arrival.duration_since(last));
                            }
                            r.last = Some(arrival);
                        }
                        Some(Ok(_)) => report.packets_received += 1,
                        _ => report.malformed += 1,
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        // Spin only while there is something to send on time; an idle worker sleeps.
        if !sending.is_empty()
            && Instant::now() < next_tick
            && next_tick.saturating_duration_since(Instant::now()) <= SPIN
        {
            std::hint::spin_loop();
        }
    }
    for r in receiving.values() {
        report.expected += r.stats.expected();
        report.lost += u64::try_from(r.stats.lost().max(0)).unwrap_or(0);
        let _ = report
            .jitter_us
            .record((r.stats.jitter_us() as u64).clamp(1, MAX_US));
        if r.last.is_some() && r.stats.received() > 1 {
            let _ = report
                .gap_us
                .record((r.max_gap.as_micros() as u64).clamp(1, MAX_US));
        }
    }
    report
}

fn send(socket: &mio::net::UdpSocket, bytes: &[u8], to: SocketAddr, report: &mut MediaReport) {
    match socket.send_to(bytes, to) {
        Ok(_) => report.packets_sent += 1,
        Err(_) => report.send_errors += 1,
    }
}
