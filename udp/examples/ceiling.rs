//! This machine's loopback ceiling for RTP-sized datagrams: one thread sends 172-byte datagrams
//! (an RTP header and a 20 ms G.711 frame) from one socket to another as fast as it can, one
//! thread reads them, for a few seconds; prints the datagrams per second that arrived.
//!
//! ```sh
//! cargo run --release -p pbxlab-udp --example ceiling -- [gso|plain] [SECONDS]
//! ```
//!
//! `gso` (the default) sends segmented buffers of 64 (`UDP_SEGMENT`) to a coalescing receiver
//! (`UDP_GRO`), the path the RTP worker and the nodes take; `plain` sends and reads one
//! datagram per `sendmmsg`/`recvmmsg` entry. The figure is the ceiling a media benchmark is
//! measured against: what the kernel carries between two sockets with nothing else to do.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pbxlab_udp::{Receiver, Sender, coalesce, set_buffer_sizes, stamp_arrivals};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "gso".into());
    let seconds: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let gso = match mode.as_str() {
        "gso" => true,
        "plain" => false,
        other => {
            eprintln!("ceiling: unknown mode {other:?} (gso or plain)");
            std::process::exit(2);
        }
    };
    let rx = UdpSocket::bind("127.0.0.1:0")?;
    let tx = UdpSocket::bind("127.0.0.1:0")?;
    let to: SocketAddr = rx.local_addr()?;
    let _ = set_buffer_sizes(&rx, 16 << 20);
    let _ = set_buffer_sizes(&tx, 16 << 20);
    rx.set_nonblocking(true)?;
    let coalescing = if gso { coalesce(&rx)? } else { false };
    if !gso {
        stamp_arrivals(&rx)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, received) = (Arc::clone(&stop), Arc::clone(&received));
        std::thread::spawn(move || {
            let mut r = Receiver::for_coalesced(Instant::now());
            let fds = [std::os::fd::AsFd::as_fd(&rx)];
            while !stop.load(Ordering::Relaxed) {
                let _ = pbxlab_udp::wait_readable(&fds, Duration::from_millis(10));
                let n = r.drain(&rx, |_, _, _| {}).unwrap_or(0);
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        })
    };
    let packet = [0x80u8; 172];
    let burst: Vec<(SocketAddr, &[u8])> = (0..4096).map(|_| (to, &packet[..])).collect();
    let mut sender = Sender::default();
    let warmup = Duration::from_millis(300);
    let started = Instant::now();
    let mut from = None;
    let mut sent = 0u64;
    while started.elapsed() < warmup + Duration::from_secs_f64(seconds) {
        if from.is_none() && started.elapsed() >= warmup {
            from = Some((Instant::now(), received.load(Ordering::Relaxed), sent));
        }
        let failed = if gso {
            sender.send_segmented(&tx, &burst).len()
        } else {
            sender.send_all(&tx, &burst).len()
        };
        sent += (burst.len() - failed) as u64;
    }
    let (t0, r0, s0) = from.unwrap_or((started, 0, 0));
    let took = t0.elapsed().as_secs_f64();
    let got = received.load(Ordering::Relaxed) - r0;
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    println!(
        "mode {mode} (segmentation {}, coalescing {coalescing}): {:.0} datagrams/s received, {:.0} sent, over {took:.1} s",
        sender.segmentation().unwrap_or(false),
        got as f64 / took,
        (sent - s0) as f64 / took,
    );
    Ok(())
}
