//! Batched UDP for pbxlab's drivers (the load generator, the live cluster's Call Manager and
//! nodes): receive with kernel arrival timestamps, send many datagrams per system call. Linux
//! only (recvmmsg, sendmmsg, SO_TIMESTAMPNS). It knows nothing of SIP or RTP.
//!
//! `recvmmsg` reads up to a batch of datagrams in one system call, and `SO_TIMESTAMPNS` has the
//! kernel stamp each one as it arrives. With the arrival time carried by the datagram, the driver
//! may read late — once a millisecond instead of waking for every datagram — and still measure
//! exactly: that is what brings the generator's CPU per call below SIPp's.
//!
//! [`Sender::send_segmented`] goes further for many equal datagrams to few addresses (RTP to a
//! cluster's nodes): UDP generic segmentation offload (`UDP_SEGMENT`, Linux 4.18+) hands the
//! kernel up to 64 datagrams to one address as one buffer, and a `sendmmsg` carries up to 64
//! such buffers.

pub mod pace;

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, getsockopt,
    recvmmsg, sendmmsg, setsockopt, sockopt,
};
use nix::sys::time::TimeSpec;

/// Datagrams read per system call.
pub const BATCH: usize = 64;
const DATAGRAM: usize = 65_536;

/// Moves the calling thread (only it) into the network namespace at `path` (an `ip netns`
/// name's file, `/var/run/netns/NAME`): every socket it creates from then on is that
/// namespace's, and a socket keeps its namespace whichever thread uses it.
pub fn enter_netns(path: &std::path::Path) -> io::Result<()> {
    let file = std::fs::File::open(path)?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// A UDP socket bound to `addr` whether or not the address is on an interface yet
/// (`IP_FREEBIND`): a virtual IP that a VRRP daemon adds once this host is its master.
pub fn bind_free(addr: SocketAddr) -> io::Result<UdpSocket> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6, bind};
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = nix::sys::socket::socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .map_err(io::Error::from)?;
    setsockopt(&fd, sockopt::IpFreebind, &true).map_err(io::Error::from)?;
    match addr {
        SocketAddr::V4(a) => bind(fd.as_raw_fd(), &SockaddrIn::from(a)),
        SocketAddr::V6(a) => bind(fd.as_raw_fd(), &SockaddrIn6::from(a)),
    }
    .map_err(io::Error::from)?;
    Ok(UdpSocket::from(fd))
}

/// Has the kernel stamp each datagram `socket` receives with its arrival time
/// (`SO_TIMESTAMPNS`), which [`Receiver::drain`] hands out, and report with it how many
/// datagrams it has dropped on the socket's full queue (`SO_RXQ_OVFL`, best effort), which
/// [`Receiver::kernel_drops`] keeps.
pub fn stamp_arrivals(socket: &impl AsFd) -> io::Result<()> {
    setsockopt(socket, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)?;
    let _ = setsockopt(socket, sockopt::RxqOvfl, &1);
    Ok(())
}

/// As [`stamp_arrivals`], and asks the kernel to coalesce datagrams of one flow (`UDP_GRO`,
/// Linux 5.0+), which a receiver of [`Receiver::for_coalesced`] splits again. Returns whether
/// coalescing is on.
pub fn coalesce(socket: &impl AsFd) -> io::Result<bool> {
    stamp_arrivals(socket)?;
    Ok(setsockopt(socket, sockopt::UdpGroSegment, &true).is_ok())
}

pub struct Receiver {
    headers: MultiHeaders<SockaddrStorage>,
    /// Control-message room per datagram, and whether `headers` must be made again before
    /// the next read: the kernel shrinks each header's control length to what it wrote, and
    /// `recvmmsg` does not restore it, so a slot that once held a datagram without a segment
    /// size would cut that message off the next coalesced buffer (handing over all of it as
    /// one datagram).
    cmsg_space: usize,
    headers_used: bool,
    buffers: Vec<Vec<u8>>,
    /// The socket's drop counter as the kernel last reported it (`SO_RXQ_OVFL`).
    kernel_drops: Option<u32>,
    /// The wall clock at `started`, to turn kernel timestamps (wall clock) into run time; taken
    /// again before every batch.
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
        stamp_arrivals(socket)?;
        Ok(Receiver::with_buffers(started, size))
    }

    /// As [`Receiver::new`], and asks the kernel to coalesce datagrams of one flow (`UDP_GRO`,
    /// Linux 5.0+): on loopback a segmented send arrives as the one buffer it left as, and on a
    /// NIC with GRO a burst of one sender's datagrams does; `drain` still hands them out one by
    /// one, all with the buffer's arrival time. That is most of the receiving cost gone at
    /// hundreds of thousands of datagrams a second. Returns whether coalescing is on (a kernel
    /// without `UDP_GRO` gives an ordinary receiver). Buffers are 64 KiB, the most GRO makes.
    pub fn coalescing(socket: &impl AsFd, started: Instant) -> io::Result<(Receiver, bool)> {
        let gro = coalesce(socket)?;
        Ok((Receiver::for_coalesced(started), gro))
    }

    /// A receiver for any socket set up by [`coalesce`] (or [`stamp_arrivals`]): one thread
    /// serving many sockets needs one set of 64 KiB buffers, not one a socket.
    pub fn for_coalesced(started: Instant) -> Receiver {
        Receiver::with_buffers(started, DATAGRAM)
    }

    /// How many datagrams the kernel has dropped on the last socket drained because its
    /// receive queue was full, counted since the socket was made; `None` until a datagram
    /// arrives with the count (the kernel adds it from the first drop on).
    pub fn kernel_drops(&self) -> Option<u32> {
        self.kernel_drops
    }

    fn with_buffers(started: Instant, size: usize) -> Receiver {
        let cmsg = nix::cmsg_space!(TimeSpec, i32, u32);
        let cmsg_space = cmsg.capacity();
        let headers = MultiHeaders::preallocate(BATCH, Some(cmsg));
        let buffers = (0..BATCH).map(|_| vec![0u8; size]).collect();
        // Read both clocks together and step the wall clock back to `started`: reading it after
        // other work (allocating the buffers takes half a millisecond) would shift every
        // arrival early by that much.
        let wall_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let wall_at_start = wall_now.saturating_sub(started.elapsed());
        Receiver {
            headers,
            cmsg_space,
            headers_used: false,
            buffers,
            kernel_drops: None,
            wall_at_start,
            started,
        }
    }

    /// Reads every datagram waiting on the (non-blocking) socket, calling `f` with its arrival
    /// time in nanoseconds since `started`, its source and its bytes. Returns how many it read
    /// (a coalesced buffer counts as the datagrams in it).
    pub fn drain(
        &mut self,
        socket: &impl AsRawFd,
        f: impl FnMut(u64, SocketAddr, &[u8]),
    ) -> io::Result<usize> {
        self.drain_up_to(socket, usize::MAX, f)
    }

    /// As [`Receiver::drain`], but stops once `limit` datagrams have been read (whole batches:
    /// up to `BATCH - 1` more). A thread serving several sockets uses it so one busy socket
    /// cannot keep the others waiting; reading `limit` or more means more may be waiting.
    pub fn drain_up_to(
        &mut self,
        socket: &impl AsRawFd,
        limit: usize,
        mut f: impl FnMut(u64, SocketAddr, &[u8]),
    ) -> io::Result<usize> {
        let mut total = 0;
        self.kernel_drops = None;
        loop {
            if self.headers_used {
                self.headers =
                    MultiHeaders::preallocate(BATCH, Some(Vec::with_capacity(self.cmsg_space)));
                self.headers_used = false;
            }
            let now = self.started.elapsed();
            // The wall clock is read again for every batch: it need not run at the monotonic
            // clock's rate (a machine whose wall clock was being slewed ran 0.5 % fast, and
            // with one offset taken at the start every arrival came 5 ms later per second of
            // the run: probes timed out and healthy nodes were marked down after 8 s). Read
            // together with `now`, it moves a stamp only by the drift over the time the
            // datagram waited in the queue.
            self.wall_at_start = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .saturating_sub(now);
            // What the kernel reported, per datagram; the buffers are read once the batch's
            // borrows of them have ended.
            let batch: Vec<(Duration, Option<SocketAddr>, usize, usize)> = {
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
                    Ok(r) => {
                        self.headers_used = true;
                        r
                    }
                    Err(nix::errno::Errno::EAGAIN) => return Ok(total),
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(io::Error::from(e)),
                };
                let wall_at_start = self.wall_at_start;
                let drops = &mut self.kernel_drops;
                received
                    .map(|msg| {
                        let mut stamp = None;
                        // The length of each datagram in a coalesced buffer (0: not coalesced).
                        let mut segment = 0;
                        for m in msg.cmsgs().into_iter().flatten() {
                            match m {
                                ControlMessageOwned::ScmTimestampns(ts) => {
                                    stamp = Some(Duration::from(ts));
                                }
                                ControlMessageOwned::UdpGroSegments(size) => {
                                    segment = usize::try_from(size).unwrap_or(0);
                                }
                                ControlMessageOwned::RxqOvfl(n) => *drops = Some(n),
                                _ => {}
                            }
                        }
                        // Wall clock to run time; a datagram stamped before the start (or a
                        // clock step) falls back to the time it was read, and none arrived
                        // after it was read.
                        let arrival = stamp
                            .and_then(|wall| wall.checked_sub(wall_at_start))
                            .unwrap_or(now)
                            .min(now);
                        (
                            arrival,
                            msg.address.and_then(|a: SockaddrStorage| to_std(&a)),
                            msg.bytes,
                            segment,
                        )
                    })
                    .collect()
            };
            let n = batch.len();
            for (i, (arrival, from, len, segment)) in batch.into_iter().enumerate() {
                if let (Some(from), Some(bytes)) =
                    (from, self.buffers.get(i).and_then(|b| b.get(..len)))
                {
                    let at = u64::try_from(arrival.as_nanos()).unwrap_or(u64::MAX);
                    if segment > 0 && segment < bytes.len() {
                        for datagram in bytes.chunks(segment) {
                            f(at, from, datagram);
                            total += 1;
                        }
                    } else {
                        f(at, from, bytes);
                        total += 1;
                    }
                }
            }
            if n < BATCH || total >= limit {
                return Ok(total);
            }
        }
    }
}

/// The socket buffer sizes the kernel granted, as `getsockopt` reads them back (Linux doubles
/// the requested value for its bookkeeping and caps it at `net.core.rmem_max`/`wmem_max`
/// unless the process may force it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferSizes {
    pub receive_bytes: usize,
    pub send_bytes: usize,
    /// Whether `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` (CAP_NET_ADMIN) lifted the sysctl caps.
    pub forced: bool,
}

/// Asks for `bytes` of receive and send buffer: forced past the sysctl caps when the process
/// may (root, CAP_NET_ADMIN), else as much as `SO_RCVBUF`/`SO_SNDBUF` grant. A burst of a tick's
/// datagrams from thousands of streams must fit, or the kernel drops them.
pub fn set_buffer_sizes(socket: &impl AsFd, bytes: usize) -> io::Result<BufferSizes> {
    let forced = setsockopt(socket, sockopt::RcvBufForce, &bytes).is_ok()
        & setsockopt(socket, sockopt::SndBufForce, &bytes).is_ok();
    if !forced {
        setsockopt(socket, sockopt::RcvBuf, &bytes).map_err(io::Error::from)?;
        setsockopt(socket, sockopt::SndBuf, &bytes).map_err(io::Error::from)?;
    }
    Ok(BufferSizes {
        receive_bytes: getsockopt(socket, sockopt::RcvBuf).map_err(io::Error::from)?,
        send_bytes: getsockopt(socket, sockopt::SndBuf).map_err(io::Error::from)?,
        forced,
    })
}

/// Sleeps until one of `sockets` has a datagram to read or `timeout` has passed; a signal also
/// ends the wait. Returns whether any is readable.
///
/// A one-shot `ppoll(2)` (nanosecond timeout), not a standing epoll registration: a socket
/// registered with epoll keeps a waiter on its queue, and then every datagram sent from it pays
/// for a write-space wake-up when the kernel frees the buffer, busy or not.
pub fn wait_readable(sockets: &[BorrowedFd<'_>], timeout: Duration) -> io::Result<bool> {
    use nix::poll::{PollFd, PollFlags, ppoll};
    let mut fds: Vec<PollFd<'_>> = sockets
        .iter()
        .map(|&fd| PollFd::new(fd, PollFlags::POLLIN))
        .collect();
    match ppoll(&mut fds, Some(TimeSpec::from_duration(timeout)), None) {
        Ok(n) => Ok(n > 0),
        Err(Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A second socket on `socket`'s address, connected to `peer`, for the traffic with that one
/// peer: the kernel delivers `peer`'s datagrams to it and `socket` keeps everyone else's (a
/// connected socket outscores an unconnected one on the same port). Sending on it without an
/// address skips the route lookup (and other per-destination work) that an
/// unconnected send pays on every datagram; [`Sender::send_connected`] does that.
///
/// `socket` must already be bound; it is bound as it was, alone on its port, so a busy port is
/// refused as before. Only then is `SO_REUSEPORT` turned on for it, which lets the twin share
/// the port. The twin is non-blocking, gets `socket`'s buffer sizes and has its arrivals stamped
/// (see [`stamp_arrivals`]), so one [`Receiver`] can read both. On error `socket` is as it was.
pub fn connected_twin(socket: &UdpSocket, peer: SocketAddr) -> io::Result<UdpSocket> {
    use nix::sys::socket::AddressFamily;
    let local = socket.local_addr()?;
    let family = match local {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    setsockopt(socket, sockopt::ReusePort, &true).map_err(io::Error::from)?;
    let twin = twin_of(socket, local, family, peer);
    if twin.is_err() {
        // Alone on its port again.
        let _ = setsockopt(socket, sockopt::ReusePort, &false);
    }
    twin
}

fn twin_of(
    socket: &UdpSocket,
    local: SocketAddr,
    family: nix::sys::socket::AddressFamily,
    peer: SocketAddr,
) -> io::Result<UdpSocket> {
    use nix::sys::socket::{SockFlag, SockType, bind, connect, socket as new_socket};
    let fd = new_socket(
        family,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    setsockopt(&fd, sockopt::ReusePort, &true).map_err(io::Error::from)?;
    let receive: usize = getsockopt(socket, sockopt::RcvBuf).map_err(io::Error::from)?;
    let send: usize = getsockopt(socket, sockopt::SndBuf).map_err(io::Error::from)?;
    // getsockopt reports twice what was asked for (the kernel's bookkeeping); ask for half.
    let _ = setsockopt(&fd, sockopt::RcvBufForce, &(receive / 2))
        .or_else(|_| setsockopt(&fd, sockopt::RcvBuf, &(receive / 2)));
    let _ = setsockopt(&fd, sockopt::SndBufForce, &(send / 2))
        .or_else(|_| setsockopt(&fd, sockopt::SndBuf, &(send / 2)));
    stamp_arrivals(&fd)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(local)).map_err(io::Error::from)?;
    connect(fd.as_raw_fd(), &SockaddrStorage::from(peer)).map_err(io::Error::from)?;
    Ok(UdpSocket::from(fd))
}

/// Segments per GSO buffer. Linux allowed 64 (`UDP_MAX_SEGMENTS`) until 6.9 raised it to 128.
const SEGMENTS: usize = 64;
/// Largest datagram sent segmented: one that fits an Ethernet MTU, so the buffer is legal on
/// any route (the kernel refuses a segment size above the path's MTU).
const SEGMENT_MAX: usize = 1472;
/// Largest UDP payload, which bounds a whole GSO buffer.
const GSO_BYTES_MAX: usize = 65_507;

/// Batched UDP send: one `sendmmsg` for up to a batch of datagrams.
pub struct Sender {
    headers: MultiHeaders<SockaddrStorage>,
    /// Headers with room for a `UDP_SEGMENT` control message each.
    gso_headers: MultiHeaders<SockaddrStorage>,
    /// `None` until tried; `Some(false)` once the kernel refused segmentation.
    gso: Option<bool>,
}

impl Default for Sender {
    fn default() -> Self {
        Sender {
            headers: MultiHeaders::preallocate(BATCH, None),
            gso_headers: MultiHeaders::preallocate(BATCH, Some(nix::cmsg_space!(u16))),
            gso: None,
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
        let (addrs, bufs) = addressed(datagrams);
        self.send_items(socket, &addrs, &bufs)
    }

    /// Sends every datagram to the peer a connected `socket` (see [`connected_twin`]) is
    /// connected to, without an address; returns the errors of those that could not be sent.
    pub fn send_connected(&mut self, socket: &impl AsRawFd, datagrams: &[&[u8]]) -> Vec<io::Error> {
        self.send_items(socket, &vec![None; datagrams.len()], datagrams)
    }

    /// Sends `bufs[i]` to `addrs[i]` (`None`: the connected peer).
    fn send_items(
        &mut self,
        socket: &impl AsRawFd,
        addrs: &[Option<SockaddrStorage>],
        bufs: &[&[u8]],
    ) -> Vec<io::Error> {
        let mut errors = Vec::new();
        let no_cmsgs: [ControlMessage<'_>; 0] = [];
        for (addrs, bufs) in addrs.chunks(BATCH).zip(bufs.chunks(BATCH)) {
            let mut done = 0;
            // A full send buffer can take part of a batch; the rest is retried a few times. A
            // datagram the kernel refuses ends a call early (sendmmsg reports what it sent
            // before it, and the error on the next call), so refusals must not use up the
            // retries: once cost a whole batch of the Call Manager's probes.
            let mut full = 0;
            while done < bufs.len() && full < 4 {
                let slices: Vec<[IoSlice<'_>; 1]> = bufs
                    .get(done..)
                    .unwrap_or_default()
                    .iter()
                    .map(|b| [IoSlice::new(b)])
                    .collect();
                match sendmmsg(
                    socket.as_raw_fd(),
                    &mut self.headers,
                    slices.iter(),
                    addrs.get(done..).unwrap_or_default(),
                    no_cmsgs,
                    MsgFlags::MSG_DONTWAIT,
                ) {
                    Ok(sent) => {
                        let n = sent.count();
                        if n > 0 {
                            done += n;
                        } else {
                            full += 1;
                        }
                    }
                    Err(nix::errno::Errno::EAGAIN) => {
                        full += 1;
                        std::thread::yield_now();
                    }
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => {
                        // Skip the datagram the kernel refused (e.g. unreachable) and go on.
                        errors.push(io::Error::from(e));
                        done += 1;
                    }
                }
            }
            for _ in done..bufs.len() {
                errors.push(io::Error::from(io::ErrorKind::WouldBlock));
            }
        }
        errors
    }
}

impl Sender {
    /// Whether [`Sender::send_segmented`] uses segmentation offload: `None` before its first
    /// call, `Some(false)` when the kernel has no `UDP_SEGMENT` or refused it.
    pub fn segmentation(&self) -> Option<bool> {
        self.gso
    }

    /// As [`Sender::send_all`], but consecutive datagrams to the same address with the same
    /// length (the last of a run may be shorter) leave as one segmented buffer of up to 64.
    /// Callers group their datagrams by address to benefit. Falls back to `send_all` for good
    /// when the kernel lacks `UDP_SEGMENT` or refuses a segmented send (EIO, EINVAL).
    pub fn send_segmented(
        &mut self,
        socket: &(impl AsRawFd + AsFd),
        datagrams: &[(SocketAddr, &[u8])],
    ) -> Vec<io::Error> {
        let (addrs, bufs) = addressed(datagrams);
        self.segmented_items(socket, &addrs, &bufs)
    }

    /// As [`Sender::send_connected`], with the segmentation of [`Sender::send_segmented`]:
    /// consecutive datagrams of one length leave as one buffer.
    pub fn send_connected_segmented(
        &mut self,
        socket: &(impl AsRawFd + AsFd),
        datagrams: &[&[u8]],
    ) -> Vec<io::Error> {
        self.segmented_items(socket, &vec![None; datagrams.len()], datagrams)
    }

    /// Sends `bufs[i]` to `addrs[i]` (`None`: the connected peer), segmenting runs.
    fn segmented_items(
        &mut self,
        socket: &(impl AsRawFd + AsFd),
        addrs: &[Option<SockaddrStorage>],
        bufs: &[&[u8]],
    ) -> Vec<io::Error> {
        if self.gso.is_none() {
            self.gso = Some(getsockopt(socket, sockopt::UdpGsoSegment).is_ok());
        }
        if self.gso != Some(true) {
            return self.send_items(socket, addrs, bufs);
        }
        let runs = segment_runs(addrs, bufs);
        let part = |r: &Run| {
            (
                addrs.get(r.start..r.end).unwrap_or(&[]),
                bufs.get(r.start..r.end).unwrap_or(&[]),
            )
        };
        let mut errors = Vec::new();
        let mut next = 0;
        let mut stalls = 0;
        while let Some(run) = runs.get(next) {
            if run.segment_size().is_none() {
                let (a, b) = part(run);
                errors.extend(self.send_items(socket, a, b));
                next += 1;
                continue;
            }
            let (count, size) = shared_batch(runs.get(next..).unwrap_or(&[]));
            let batch = runs.get(next..next + count).unwrap_or(&[]).iter();
            match self.send_batch(socket, addrs, bufs, batch, size) {
                Ok(sent) => {
                    next += sent.max(1);
                    stalls = 0;
                }
                // A full send buffer: wait a little, and give up on this run after a few tries.
                Err(Errno::EINTR | Errno::EAGAIN) if stalls < 4 => {
                    stalls += 1;
                    std::thread::yield_now();
                }
                Err(Errno::EIO | Errno::EINVAL) => {
                    // Either GSO is refused (by the kernel, or by the route: xfrm, UDP-Lite, no
                    // checksums) or this run's address is bad. Sending it plainly tells which.
                    let (a, b) = part(run);
                    let plain = self.send_items(socket, a, b);
                    next += 1;
                    if plain.len() < run.end - run.start {
                        self.gso = Some(false);
                        errors.extend(plain);
                        let rest = run.end;
                        errors.extend(self.send_items(
                            socket,
                            addrs.get(rest..).unwrap_or(&[]),
                            bufs.get(rest..).unwrap_or(&[]),
                        ));
                        return errors;
                    }
                    errors.extend(plain);
                }
                Err(e) => {
                    errors.extend((run.start..run.end).map(|_| io::Error::from(e)));
                    next += 1;
                    stalls = 0;
                }
            }
        }
        errors
    }

    /// One `sendmmsg` of `runs`, each a buffer of segments of `size` bytes; how many runs went.
    fn send_batch<'r>(
        &mut self,
        socket: &impl AsRawFd,
        addrs: &[Option<SockaddrStorage>],
        bufs: &[&[u8]],
        runs: impl Iterator<Item = &'r Run> + Clone,
        size: u16,
    ) -> Result<usize, Errno> {
        let slices: Vec<Vec<IoSlice<'_>>> = runs
            .clone()
            .map(|r| {
                bufs.get(r.start..r.end)
                    .unwrap_or(&[])
                    .iter()
                    .map(|b| IoSlice::new(b))
                    .collect()
            })
            .collect();
        let addrs: Vec<Option<SockaddrStorage>> = runs
            .map(|r| addrs.get(r.start).copied().flatten())
            .collect();
        let cmsgs = [ControlMessage::UdpGsoSegments(&size)];
        sendmmsg(
            socket.as_raw_fd(),
            &mut self.gso_headers,
            slices.iter(),
            &addrs,
            cmsgs,
            MsgFlags::MSG_DONTWAIT,
        )
        .map(|sent| sent.count())
    }
}

/// `datagrams` as the two lists the senders take: addresses (`None` would be a connected
/// socket's peer) and buffers.
fn addressed<'b>(
    datagrams: &[(SocketAddr, &'b [u8])],
) -> (Vec<Option<SockaddrStorage>>, Vec<&'b [u8]>) {
    datagrams
        .iter()
        .map(|&(to, bytes)| (Some(SockaddrStorage::from(to)), bytes))
        .unzip()
}

/// Datagrams `start..end` go to one address as segments of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    start: usize,
    end: usize,
    /// The length of the first datagram.
    size: usize,
}

impl Run {
    /// The segment size to send the run with, or `None` to send it plainly: empty datagrams,
    /// and datagrams too long for an Ethernet MTU (the kernel refuses such a segment size on
    /// most routes; sent plainly they are fragmented instead).
    fn segment_size(&self) -> Option<u16> {
        if self.size == 0 || self.size > SEGMENT_MAX {
            return None;
        }
        u16::try_from(self.size).ok()
    }
}

/// Cuts the datagrams `bufs` (to `addrs`) into GSO buffers: consecutive datagrams to one
/// address, all of one length except a shorter last, at most 64 and 64 KiB. A datagram too long
/// to segment is a run alone.
fn segment_runs(addrs: &[Option<SockaddrStorage>], bufs: &[&[u8]]) -> Vec<Run> {
    let mut runs = Vec::new();
    let mut start = 0;
    while let (Some(to), Some(first)) = (addrs.get(start), bufs.get(start)) {
        let size = first.len();
        let mut end = start + 1;
        if size <= SEGMENT_MAX && size > 0 {
            let most = SEGMENTS.min(GSO_BYTES_MAX / size);
            while end - start < most {
                match (addrs.get(end), bufs.get(end)) {
                    (Some(a), Some(b)) if a == to && b.len() == size => end += 1,
                    (Some(a), Some(b)) if a == to && b.len() < size && !b.is_empty() => {
                        end += 1;
                        break;
                    }
                    _ => break,
                }
            }
        }
        runs.push(Run { start, end, size });
        start = end;
    }
    runs
}

/// How many of `runs`, from the first, can leave in one `sendmmsg`, and the segment size they
/// share: one sendmmsg takes one control message. A run of several datagrams needs its own
/// size exactly; a datagram alone needs only to be no longer than the size, as the kernel
/// segments only what exceeds it. So a tick's lone INVITE, ACK and BYE leave together.
fn shared_batch(runs: &[Run]) -> (usize, u16) {
    // Fixed by the first run of several datagrams; until then, the longest single one.
    let mut fixed: Option<u16> = None;
    let mut longest = 0;
    let mut count = 0;
    for run in runs.iter().take(BATCH) {
        let Some(size) = run.segment_size() else {
            break;
        };
        match fixed {
            Some(f) if run.end - run.start > 1 && size != f => break,
            Some(f) if size > f => break,
            None if run.end - run.start > 1 => {
                if size < longest {
                    break;
                }
                fixed = Some(size);
            }
            _ => longest = longest.max(size),
        }
        count += 1;
    }
    (count, fixed.unwrap_or(longest))
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
    fn a_connected_twin_takes_the_peers_traffic_and_only_that() {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.set_nonblocking(true).expect("nonblocking");
        let port = socket.local_addr().expect("addr");
        let (target, other) = (
            UdpSocket::bind("127.0.0.1:0").expect("bind"),
            UdpSocket::bind("127.0.0.1:0").expect("bind"),
        );
        target
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let twin = connected_twin(&socket, target.local_addr().expect("addr")).expect("twin");
        // Still nobody else's port: a plain bind is refused.
        assert!(UdpSocket::bind(port).is_err());

        // Sent without an address, from the shared port.
        let errors = Sender::default().send_connected(&twin, &[b"to target".as_slice()]);
        assert!(errors.is_empty(), "{errors:?}");
        let mut buf = [0u8; 64];
        let (n, from) = target
            .recv_from(&mut buf)
            .expect("the target hears the twin");
        assert_eq!((&buf[..n], from), (b"to target".as_slice(), port));

        target.send_to(b"from target", port).expect("send");
        other.send_to(b"from other", port).expect("send");
        std::thread::sleep(Duration::from_millis(20));
        let mut r = Receiver::new(&socket, Instant::now()).expect("timestamps");
        let read = |r: &mut Receiver, s: &UdpSocket| {
            let mut got = Vec::new();
            r.drain(s, |_, from, bytes| got.push((from, bytes.to_vec())))
                .expect("drain");
            got
        };
        assert_eq!(
            read(&mut r, &twin),
            vec![(target.local_addr().expect("addr"), b"from target".to_vec())]
        );
        assert_eq!(
            read(&mut r, &socket),
            vec![(other.local_addr().expect("addr"), b"from other".to_vec())]
        );
    }

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
    fn runs_are_one_address_and_one_length_with_a_shorter_last() {
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        let (long, short, huge) = ([0u8; 172], [0u8; 16], [0u8; 2000]);
        let mut d: Vec<(SocketAddr, &[u8])> = vec![(a, &long); 70];
        d.extend([
            (a, &short[..]),
            (a, &short[..]),
            (b, &long[..]),
            (b, &huge[..]),
        ]);
        d.extend([(b, &huge[..]), (a, &[][..]), (a, &[][..])]);
        let runs: Vec<(usize, usize)> = runs_of(&d).iter().map(|r| (r.start, r.end)).collect();
        assert_eq!(
            runs,
            [
                (0, 64),
                (64, 71),
                (71, 72),
                (72, 73),
                (73, 74),
                (74, 75),
                (75, 76),
                (76, 77)
            ]
        );
        // 64 KiB bounds a buffer: 46 datagrams of 1,400 bytes.
        let kilo = [0u8; 1400];
        let d: Vec<(SocketAddr, &[u8])> = vec![(a, &kilo); 100];
        assert_eq!(runs_of(&d)[0].end, 46);
    }

    #[test]
    fn one_sendmmsg_takes_runs_of_one_size_and_lone_datagrams_no_longer() {
        let run = |start, end, size| Run { start, end, size };
        // A lone INVITE, ACK and BYE: one batch, segmented at the longest (so not at all).
        assert_eq!(
            shared_batch(&[run(0, 1, 900), run(1, 2, 400), run(2, 3, 420)]),
            (3, 900)
        );
        // Lone ones before and after a run of its size or shorter join it; a longer one,
        // or a run of another size, starts the next batch.
        let runs = [
            run(0, 1, 400),
            run(1, 5, 900),
            run(5, 6, 900),
            run(6, 7, 300),
            run(7, 9, 420),
        ];
        assert_eq!(shared_batch(&runs), (4, 900));
        assert_eq!(shared_batch(&[run(0, 1, 900), run(1, 3, 400)]), (1, 900));
        assert_eq!(shared_batch(&[run(0, 2, 400), run(2, 3, 900)]), (1, 400));
        // A datagram too long to segment goes alone, plainly.
        assert_eq!(shared_batch(&[run(0, 1, 2000), run(1, 2, 400)]), (0, 0));
    }

    fn runs_of(d: &[(SocketAddr, &[u8])]) -> Vec<Run> {
        let (addrs, bufs) = addressed(d);
        segment_runs(&addrs, &bufs)
    }

    #[test]
    fn segmented_sends_arrive_as_the_datagrams_they_were() {
        let rx: Vec<UdpSocket> = (0..2)
            .map(|_| {
                let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
                s.set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                s
            })
            .collect();
        let to: Vec<SocketAddr> = rx.iter().map(|s| s.local_addr().expect("addr")).collect();
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        set_buffer_sizes(&tx, 1 << 20).expect("buffers");
        set_buffer_sizes(&rx[0], 1 << 20).expect("buffers");
        // 150 equal datagrams to the first socket, a shorter one, 3 to the second, one too long
        // to segment, and the first socket again.
        let mut payloads: Vec<(usize, Vec<u8>)> = (0..150u8).map(|i| (0, vec![i; 172])).collect();
        payloads.push((0, vec![150; 20]));
        payloads.extend((151..154u8).map(|i| (1, vec![i; 172])));
        payloads.push((1, vec![154; 3000]));
        payloads.push((0, vec![155; 172]));
        let datagrams: Vec<(SocketAddr, &[u8])> = payloads
            .iter()
            .map(|(s, p)| (to[*s], p.as_slice()))
            .collect();
        let mut sender = Sender::default();
        let errors = sender.send_segmented(&tx, &datagrams);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(sender.segmentation().is_some());
        let mut buf = [0u8; 4096];
        for (s, p) in &payloads {
            let (n, from) = rx[*s].recv_from(&mut buf).expect("datagram");
            assert_eq!(from, tx.local_addr().expect("addr"));
            assert_eq!(&buf[..n], p.as_slice());
        }
    }

    #[test]
    fn connected_segmented_sends_arrive_as_the_datagrams_they_were() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        tx.connect(rx.local_addr().expect("addr")).expect("connect");
        // Runs of two lengths, each with a shorter last, one too long to segment, and singles.
        let mut payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 600]).collect();
        payloads.push(vec![5; 590]);
        payloads.extend((6..10u8).map(|i| vec![i; 300]));
        payloads.push(vec![10; 2500]);
        payloads.extend([vec![11; 300], vec![12; 600], vec![13; 1]]);
        let datagrams: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let mut sender = Sender::default();
        let errors = sender.send_connected_segmented(&tx, &datagrams);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(sender.segmentation().is_some());
        let mut buf = [0u8; 4096];
        for p in &payloads {
            let (n, from) = rx.recv_from(&mut buf).expect("datagram");
            assert_eq!(from, tx.local_addr().expect("addr"));
            assert_eq!(&buf[..n], p.as_slice());
        }
    }

    #[test]
    fn a_coalescing_receiver_hands_out_the_datagrams_one_by_one() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_nonblocking(true).expect("nonblocking");
        let to = rx.local_addr().expect("addr");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let started = Instant::now();
        let (mut r, _coalescing) = Receiver::coalescing(&rx, started).expect("receiver");
        let payloads: Vec<Vec<u8>> = (0..200u8)
            .map(|i| vec![i; if i == 99 { 50 } else { 172 }])
            .collect();
        let datagrams: Vec<(SocketAddr, &[u8])> =
            payloads.iter().map(|p| (to, p.as_slice())).collect();
        let errors = Sender::default().send_segmented(&tx, &datagrams);
        assert!(errors.is_empty(), "{errors:?}");
        std::thread::sleep(Duration::from_millis(20));
        let mut seen: Vec<Vec<u8>> = Vec::new();
        let n = r
            .drain(&rx, |_, from, bytes| {
                assert_eq!(from, tx.local_addr().expect("addr"));
                seen.push(bytes.to_vec());
            })
            .expect("drain");
        assert_eq!(n, 200);
        assert_eq!(seen, payloads);
    }

    #[test]
    fn a_coalesced_buffer_read_after_a_lone_datagram_is_still_split() {
        // The kernel shrinks a header's control length to what one datagram needed; a
        // receiver that kept the header would lose the next buffer's segment size.
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_nonblocking(true).expect("nonblocking");
        let to = rx.local_addr().expect("addr");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let (mut r, coalescing) = Receiver::coalescing(&rx, Instant::now()).expect("receiver");
        let frames: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; 172]).collect();
        let run: Vec<(SocketAddr, &[u8])> = frames.iter().map(|p| (to, p.as_slice())).collect();
        let mut sender = Sender::default();
        for round in 0..3 {
            tx.send_to(&[7; 40], to).expect("send");
            std::thread::sleep(Duration::from_millis(5));
            let mut lengths = Vec::new();
            r.drain(&rx, |_, _, bytes| lengths.push(bytes.len()))
                .expect("drain");
            assert_eq!(lengths, [40], "round {round}");
            assert!(sender.send_segmented(&tx, &run).is_empty());
            std::thread::sleep(Duration::from_millis(5));
            let mut seen = Vec::new();
            r.drain(&rx, |_, _, bytes| seen.push(bytes.to_vec()))
                .expect("drain");
            let lengths: Vec<usize> = seen.iter().map(Vec::len).collect();
            assert_eq!(lengths, [172; 64], "round {round}, coalescing {coalescing}");
            assert_eq!(seen, frames);
        }
    }

    #[test]
    fn the_kernels_drops_on_a_full_queue_are_reported() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_nonblocking(true).expect("nonblocking");
        setsockopt(&rx, sockopt::RcvBuf, &4096).expect("rcvbuf");
        let to = rx.local_addr().expect("addr");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut r = Receiver::new(&rx, Instant::now()).expect("receiver");
        for _ in 0..200 {
            let _ = tx.send_to(&[1; 100], to);
        }
        let read = r.drain(&rx, |_, _, _| {}).expect("drain");
        assert!(read < 200, "a 4 KiB queue held {read} datagrams");
        // The count comes with the datagrams queued after the first drop.
        let _ = tx.send_to(&[1; 100], to);
        std::thread::sleep(Duration::from_millis(5));
        r.drain(&rx, |_, _, _| {}).expect("drain");
        let dropped = r.kernel_drops().expect("a drop count");
        assert_eq!(u64::from(dropped), 200 - read as u64);
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
