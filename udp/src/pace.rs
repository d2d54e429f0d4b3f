//! Whether a driver keeps its schedule: how far behind it ran at worst, how often it passed
//! [`BEHIND`], and how many datagrams this machine's kernel dropped on its sockets because it
//! did not read them in time. A driver thread writes its [`Pace`]; a status line or a report
//! reads it at any time (atomics, no lock).
//!
//! These figures are the emulator's own: when they pass their bound, what the run measured is
//! this machine falling behind, not the system under test.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Lateness from which a driver counts as behind: past a 20 ms media frame twice over, and
/// past any probe timeout a drill uses (40 ms and up), so a driver this late can make a live
/// server look dead on its own.
pub const BEHIND: Duration = Duration::from_millis(50);

/// One driver's pace, shared between the thread that keeps it and whoever reports it.
#[derive(Debug, Default)]
pub struct Pace {
    worst_ns: AtomicU64,
    /// When the worst lateness was seen, nanoseconds since the driver's epoch.
    worst_at_ns: AtomicU64,
    behind: AtomicU64,
    kernel_drops: AtomicU64,
}

/// A [`Pace`] read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PaceFigures {
    /// The furthest behind its schedule the driver ran.
    pub worst: Duration,
    /// When that was, since the driver's epoch.
    pub worst_at: Duration,
    /// Times the driver ran [`BEHIND`] or more behind.
    pub behind: u64,
    /// Datagrams the kernel dropped on the driver's full socket queues.
    pub kernel_drops: u64,
}

impl PaceFigures {
    /// Whether the driver was the bottleneck: it fell [`BEHIND`] or the kernel dropped
    /// datagrams it did not read in time.
    pub fn saturated(&self) -> bool {
        self.behind > 0 || self.kernel_drops > 0
    }
}

impl Pace {
    /// Something due at `due` was done at `now` (both since the driver's epoch, nanoseconds).
    pub fn on_time(&self, due_ns: u64, now_ns: u64) {
        let late = now_ns.saturating_sub(due_ns);
        if late > self.worst_ns.load(Ordering::Relaxed) {
            self.worst_ns.store(late, Ordering::Relaxed);
            self.worst_at_ns.store(now_ns, Ordering::Relaxed);
        }
        if late >= BEHIND.as_nanos() as u64 {
            self.behind.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes a socket's drop count as the kernel reported it (`reported`, a running total
    /// per socket, see `Receiver::kernel_drops`); `last` is what that socket reported before,
    /// kept by the driver.
    pub fn socket_drops(&self, last: &mut u32, reported: Option<u32>) {
        if let Some(total) = reported
            && total > *last
        {
            self.kernel_drops
                .fetch_add(u64::from(total - *last), Ordering::Relaxed);
            *last = total;
        }
    }

    pub fn figures(&self) -> PaceFigures {
        PaceFigures {
            worst: Duration::from_nanos(self.worst_ns.load(Ordering::Relaxed)),
            worst_at: Duration::from_nanos(self.worst_at_ns.load(Ordering::Relaxed)),
            behind: self.behind.load(Ordering::Relaxed),
            kernel_drops: self.kernel_drops.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_driver_on_time_is_not_saturated_and_says_nothing() {
        let p = Pace::default();
        p.on_time(1_000_000, 1_400_000);
        let f = p.figures();
        assert_eq!(f.worst, Duration::from_micros(400));
        assert!(!f.saturated());
    }

    #[test]
    fn lateness_past_the_bound_and_kernel_drops_are_reported() {
        let p = Pace::default();
        p.on_time(40_000_000_000, 40_180_000_000);
        p.on_time(41_000_000_000, 41_010_000_000);
        let mut last = 0;
        p.socket_drops(&mut last, Some(12_000));
        p.socket_drops(&mut last, None);
        p.socket_drops(&mut last, Some(12_400));
        let f = p.figures();
        assert_eq!(f.behind, 1);
        assert_eq!(f.kernel_drops, 12_400);
        assert!(f.saturated());
    }
}
