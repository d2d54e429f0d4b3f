//! RTP worker throughput on loopback: two workers, N streams each way between them.
//!
//! Worker A sends N streams to worker B's socket and B sends N to A's, all started at once
//! through `MediaCommand::Start` as the engine would. After the run it prints packets per second
//! sent and received (both workers together), RFC 3550 loss, the CPU the process used, and how
//! many datagrams the kernel dropped for full receive buffers (`RcvbufErrors` in
//! /proc/net/snmp, system-wide: other programs' drops count too).
//!
//! `cargo run --release -p pbxlab-loadgen --example rtp_blast -- [seconds] [N...]`
//! (defaults: 10 s; N = 1000 2000 5000 10000, one run each).

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use pbxlab_loadgen::engine::MediaCommand;
use pbxlab_loadgen::media::{self, MediaReport};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let seconds: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10.0);
    let mut sizes: Vec<u64> = args.filter_map(|s| s.parse().ok()).collect();
    if sizes.is_empty() {
        sizes = vec![1000, 2000, 5000, 10_000];
    }
    println!(
        "{:>7} {:>10} {:>10} {:>10} {:>9} {:>7} {:>8} {:>10} {:>9} {:>9}",
        "streams",
        "target/s",
        "sent/s",
        "recv/s",
        "loss",
        "cpu_s",
        "cpu_%",
        "rcvbuf_err",
        "jit_p50us",
        "gap_maxms"
    );
    for n in sizes {
        blast(n, Duration::from_secs_f64(seconds))?;
    }
    Ok(())
}

fn blast(n: u64, duration: Duration) -> std::io::Result<()> {
    let a = UdpSocket::bind("127.0.0.1:0")?;
    let b = UdpSocket::bind("127.0.0.1:0")?;
    let (a_addr, b_addr) = (a.local_addr()?, b.local_addr()?);
    let drops_before = rcvbuf_errors();
    let cpu_before = cpu_seconds();
    let a_worker = media::spawn(a)?;
    let b_worker = media::spawn(b)?;
    let start = |stream, ssrc, dest| MediaCommand::Start {
        stream,
        ssrc,
        dest,
        payload_type: 0,
    };
    a_worker.send((0..n).map(|i| start(i, 0x1000_0000 + i as u32, b_addr)));
    b_worker.send((0..n).map(|i| start(i, 0x2000_0000 + i as u32, a_addr)));
    let started = Instant::now();
    std::thread::sleep(duration);
    let elapsed = started.elapsed().as_secs_f64();
    let reports: Vec<MediaReport> = [a_worker, b_worker]
        .into_iter()
        .map(|w| {
            w.stop()
                .map_err(|_| std::io::Error::other("worker panicked"))
        })
        .collect::<Result<_, _>>()?;
    let cpu = cpu_seconds() - cpu_before;
    let drops = rcvbuf_errors().saturating_sub(drops_before);
    let sent: u64 = reports.iter().map(|r| r.packets_sent).sum();
    let received: u64 = reports.iter().map(|r| r.packets_received).sum();
    let expected: u64 = reports.iter().map(|r| r.expected).sum();
    let lost: u64 = reports.iter().map(|r| r.lost).sum();
    let mut jitter = reports[0].jitter_us.clone();
    let _ = jitter.add(&reports[1].jitter_us);
    let gap_max = reports.iter().map(|r| r.gap_us.max()).max().unwrap_or(0);
    println!(
        "{:>7} {:>10.0} {:>10.0} {:>10.0} {:>9.5} {:>7.2} {:>7.0}% {:>10} {:>9} {:>9.1}",
        n,
        (2 * n * 50) as f64,
        sent as f64 / elapsed,
        received as f64 / elapsed,
        if expected == 0 {
            0.0
        } else {
            lost as f64 / expected as f64
        },
        cpu,
        100.0 * cpu / elapsed,
        drops,
        jitter.value_at_quantile(0.5),
        gap_max as f64 / 1000.0
    );
    let r = &reports[0];
    println!(
        "        # segmentation offload {}, receive coalescing {}, socket buffers: receive {} B, \
         send {} B, send errors {}",
        r.segmentation_offload,
        r.receive_coalescing,
        r.receive_buffer_bytes,
        r.send_buffer_bytes,
        reports.iter().map(|r| r.send_errors).sum::<u64>()
    );
    Ok(())
}

/// User + system CPU seconds of this process, from /proc/self/stat (clock ticks of 1/100 s,
/// the value of `getconf CLK_TCK` on Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name may hold spaces; the fields after it are fixed.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// The system-wide count of UDP datagrams dropped for a full receive buffer.
fn rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}
