//! pbxlab's traffic generator: SIP user agents over UDP that register with digest
//! authentication, place and answer calls, send RTP and RFC 4733 digits, and measure every step
//! into latency histograms, with k6-style pass/fail thresholds.
//!
//! The protocol state (transactions, dialogs, timers, measurements) is the sans-IO
//! [`engine::Engine`]; [`run::run`] is the thin driver that owns the sockets and the clock. It
//! does not simulate anything: every figure comes from real datagrams on real sockets.
//! [`settings`] maps a scenario's [traffic] and [slo] (and the flags or `[drill.load]` laid
//! over them) to a [`Config`] and its thresholds; [`users`] is the table of our users and the
//! parser of SIPp's users files. [`hlog`] and [`csv`] are the interval log and the CSV a run
//! appends to as each interval closes ([`Appender`]); [`messages`] counts every message sent and
//! received, as SIPp's screen does. Reading flags and opening files is the binary's business.

mod appender;
pub mod csv;
pub mod emodel;
pub mod engine;
pub mod hlog;
pub mod media;
pub mod messages;
pub mod metrics;
pub mod reach;
pub mod report;
pub mod run;
pub mod settings;
pub mod threshold;
pub mod users;
mod wheel;

pub use appender::Appender;
pub use engine::{Arrivals, Callee, Config, Dtmf, Grid, Hold, Workload};
pub use report::LoadReport;
pub use run::{Draining, Progress, RunOptions, Stepped, run};
pub use settings::{Settings, configure};
pub use threshold::Threshold;
pub use users::{Password, User, UserOrder, Users, UsersFile};

/// Everything that can stop a load run, or refuse its settings.
/// Each variant's cause is in its message and not also its `source`, which error reporters that
/// print the chain (anyhow's `{:#}`) would print a second time.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // A cause is written into its variant's message and not also given as its `source`:
    // reporters that print the chain (anyhow's `{:#}`) would print it a second time.
    #[error("cannot bind {addr}: {error}")]
    Bind {
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
    #[error("the RTP worker thread panicked")]
    MediaWorker,
    #[error(transparent)]
    Threshold(#[from] threshold::ThresholdError),
    #[error("--rtp {0}: a fraction from 0 to 1")]
    RtpFraction(f64),
    /// A target or bind address that cannot work, found before the run starts.
    #[error("{0}")]
    Address(String),
    /// A load larger than this machine can hold.
    #[error("{0}")]
    TooLarge(String),
    /// A users file that cannot be read as SIPp's injection format; `line` is 1-based, `None`
    /// for the file as a whole.
    #[error("{}{reason}", at_line(.line))]
    UsersFile { line: Option<usize>, reason: String },
    #[error("{users} users from {first}: their numbers run past {max}", max = u32::MAX)]
    UserNumbers { first: u32, users: u32 },
}

fn at_line(line: &Option<usize>) -> String {
    line.map(|n| format!("line {n}: ")).unwrap_or_default()
}
