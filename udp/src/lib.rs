//! Batched UDP for pbxlab's drivers (the load generator, the live cluster's Call Manager and
//! nodes): receive with kernel arrival timestamps, send many datagrams per system call. Linux
//! only (recvmmsg, sendmmsg, SO_TIMESTAMPNS). It knows nothing of SIP or RTP.
//!
//! `recvmmsg` reads up to a batch of datagrams in one system call, and `SO_TIMESTAMPNS` has the
//! kernel stamp each one as it arrives. With the arrival time carried by the datagram, the driver
//! may read late — once a millisecond instead of waking for every datagram — and still measure
//! exactly: that is what brings the generator's CPU per call below SIPp's.

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg,
    sendmmsg, setsockopt, sockopt,
};
use nix::sys::time::TimeSpec;

/// Datagrams read per system call.
pub const BATCH: usize = 64;
const DATAGRAM: usize = 65_536;

pub struct Receiver {
    headers: MultiHeaders<SockaddrStorage>,
    buffers: Vec<Vec<u8>>,
    /// The wall clock at `started`, to turn kernel timestamps (wall clock) into run time.
    wall_at_start: Duration,
    started: Instant,
}

impl Receiver {
    /// Turns on kernel timestamps for `socket`; `started` is the run's time origin.
    pub fn new(socket: &impl AsFd, started: Instant) -> io::Result<Receiver> {
        Receiver::with_datagram_size(socket, started, DATAGRAM)
    }

    /// As [`Receiver::new`], with buffers of `size` bytes: RTP fits in 2 KiB, and a node with
    /// 64 KiB buffers would hold 4 MiB for nothing. Longer datagrams are truncated.
    pub fn with_datagram_size(
        socket: &impl AsFd,
        started: Instant,
        size: usize,
    ) -> io::Result<Receiver> {
        setsockopt(socket, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)?;
        let cmsg = nix::cmsg_space!(TimeSpec);
        let headers = MultiHeaders::preallocate(BATCH, Some(cmsg));
        let buffers = (0..BATCH).map(|_| vec![0u8; size]).collect();
        // Read both clocks together and step the wall clock back to `started`: reading it after
        // other work (allocating the buffers takes half a millisecond) would shift every
        // arrival early by that much.
        let wall_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let wall_at_start = wall_now.saturating_sub(started.elapsed());
        Ok(Receiver {
            headers,
            buffers,
            wall_at_start,
            started,
        })
    }

    /// Reads every datagram waiting on the (non-blocking) socket, calling `f` with its arrival
    /// time in nanoseconds since `started`, its source and its bytes. Returns how many it read.
    pub fn drain(
        &mut self,
        socket: &impl AsRawFd,
        mut f: impl FnMut(u64, SocketAddr, &[u8]),
    ) -> io::Result<usize> {
        let mut total = 0;
        loop {
            let now = self.started.elapsed();
            // What the kernel reported, per datagram; the buffers are read once the batch's
            // borrows of them have ended.
            let batch: Vec<(Duration, Option<SocketAddr>, usize)> = {
                let mut slices: Vec<[IoSliceMut<'_>; 1]> = self
                    .buffers
                    .iter_mut()
                    .map(|b| [IoSliceMut::new(b)])
                    .collect();
                let received = match recvmmsg(
                    socket.as_raw_fd(),
                    &mut self.headers,
                    slices.iter_mut(),
                    MsgFlags::MSG_DONTWAIT,
                    None,
                ) {
                    Ok(r) => r,
                    Err(nix::errno::Errno::EAGAIN) => return Ok(total),
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(io::Error::from(e)),
                };
                let wall_at_start = self.wall_at_start;
                received
                    .map(|msg| {
                        let arrival = msg
                            .cmsgs()
                            .ok()
                            .and_then(|mut c| {
                                c.find_map(|m| match m {
                                    ControlMessageOwned::ScmTimestampns(ts) => {
                                        Some(Duration::from(ts))
                                    }
                                    _ => None,
                                })
                            })
                            // Wall clock to run time; a datagram stamped before the start (or a
                            // clock step) falls back to the time it was read.
                            .and_then(|wall| wall.checked_sub(wall_at_start))
                            .unwrap_or(now);
                        (
                            arrival,
                            msg.address.and_then(|a: SockaddrStorage| to_std(&a)),
                            msg.bytes,
                        )
                    })
                    .collect()
            };
            let n = batch.len();
            for (i, (arrival, from, len)) in batch.into_iter().enumerate() {
                if let (Some(from), Some(bytes)) =
                    (from, self.buffers.get(i).and_then(|b| b.get(..len)))
                {
                    f(
                        u64::try_from(arrival.as_nanos()).unwrap_or(u64::MAX),
                        from,
                        bytes,
                    );
                }
            }
            total += n;
            if n < BATCH {
                return Ok(total);
            }
        }
    }
}

/// Batched UDP send: one `sendmmsg` for up to a batch of datagrams.
pub struct Sender {
    headers: MultiHeaders<SockaddrStorage>,
}

impl Default for Sender {
    fn default() -> Self {
        Sender {
            headers: MultiHeaders::preallocate(BATCH, None),
        }
    }
}

impl Sender {
    /// Sends every datagram; returns the errors of those that could not be sent.
    pub fn send_all(
        &mut self,
        socket: &impl AsRawFd,
        datagrams: &[(SocketAddr, &[u8])],
    ) -> Vec<io::Error> {
        let mut errors = Vec::new();
        let no_cmsgs: [ControlMessage<'_>; 0] = [];
        for chunk in datagrams.chunks(BATCH) {
            let mut done = 0;
            // A full send buffer can take part of a batch; the rest is retried a few times.
            for _ in 0..4 {
                let rest = chunk.get(done..).unwrap_or(&[]);
                if rest.is_empty() {
                    break;
                }
                let slices: Vec<[IoSlice<'_>; 1]> =
                    rest.iter().map(|(_, b)| [IoSlice::new(b)]).collect();
                let addrs: Vec<Option<SockaddrStorage>> = rest
                    .iter()
                    .map(|(a, _)| Some(SockaddrStorage::from(*a)))
                    .collect();
                match sendmmsg(
                    socket.as_raw_fd(),
                    &mut self.headers,
                    slices.iter(),
                    &addrs,
                    no_cmsgs,
                    MsgFlags::MSG_DONTWAIT,
                ) {
                    Ok(sent) => done += sent.count().max(1),
                    Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {
                        std::thread::yield_now()
                    }
                    Err(e) => {
                        // Skip the datagram the kernel refused (e.g. unreachable) and go on.
                        errors.push(io::Error::from(e));
                        done += 1;
                    }
                }
            }
            for _ in done..chunk.len() {
                errors.push(io::Error::from(io::ErrorKind::WouldBlock));
            }
        }
        errors
    }
}

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::new(v4.ip(), v4.port())));
    }
    a.as_sockaddr_in6().map(|v6| {
        SocketAddr::V6(SocketAddrV6::new(
            v6.ip(),
            v6.port(),
            v6.flowinfo(),
            v6.scope_id(),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn reads_a_batch_with_arrival_times_in_order() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_nonblocking(true).expect("nonblocking");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let started = Instant::now();
        let mut r = Receiver::new(&rx, started).expect("timestamps");
        let sent_at = started.elapsed();
        for i in 0..100u8 {
            tx.send_to(&[i; 10], rx.local_addr().expect("addr"))
                .expect("send");
        }
        std::thread::sleep(Duration::from_millis(20));
        let mut seen = Vec::new();
        let n = r
            .drain(&rx, |at, from, bytes| seen.push((at, from, bytes[0])))
            .expect("drain");
        let read_at = started.elapsed();
        assert_eq!(n, 100, "more than one batch");
        assert!(seen.iter().all(|s| s.1 == tx.local_addr().expect("addr")));
        assert_eq!(
            seen.iter().map(|s| s.2).collect::<Vec<_>>(),
            (0..100).collect::<Vec<u8>>()
        );
        // Stamped between the send and the read, in order. (How long before the read depends on
        // when the kernel processed the loopback queue, so only causality is asserted.)
        let first = Duration::from_nanos(seen[0].0);
        assert!(
            first >= sent_at,
            "arrival {first:?} before the send at {sent_at:?}"
        );
        let last = Duration::from_nanos(seen[99].0);
        assert!(
            last <= read_at,
            "arrival {last:?} after the read finished at {read_at:?}"
        );
        assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0));
        assert_eq!(r.drain(&rx, |_, _, _| {}).expect("empty"), 0);
    }

    #[test]
    fn sends_more_than_a_batch_in_order() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = rx.local_addr().expect("addr");
        let payloads: Vec<Vec<u8>> = (0..150u8).map(|i| vec![i; 1 + usize::from(i)]).collect();
        let datagrams: Vec<(SocketAddr, &[u8])> =
            payloads.iter().map(|p| (to, p.as_slice())).collect();
        let errors = Sender::default().send_all(&tx, &datagrams);
        assert!(errors.is_empty(), "{errors:?}");
        let mut buf = [0u8; 512];
        for i in 0..150u8 {
            let (n, _) = rx.recv_from(&mut buf).expect("datagram");
            assert_eq!((n, buf[0]), (1 + usize::from(i), i));
        }
    }
}
