//! The `pbxlab` command line: one subcommand per job.
//!
//! Exit codes: 0 success; 1 the run itself failed; 2 bad usage or bad input (a scenario that
//! does not parse or validate, a bad flag); 3 `load`: the target never answered; 4 a `load` or
//! `drill` that failed while pbxlab itself fell behind (invalid); 99 thresholds breached
//! (`load`, `merge`), an SLO broke (`drill`), or no size within the search bound meets the SLOs
//! (`plan --size`); 105 `plan` stopped by Ctrl-C or SIGTERM before it finished (its partial
//! report is still printed and written).

mod cluster;
mod ctl;
mod drill;
mod html;
mod load;
mod merge;
mod node;
mod plan;
mod token;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use pbxlab_scenario::{Scenario, reference_scenario};

#[derive(Parser)]
#[command(
    name = "pbxlab",
    version,
    about = "Simulator and load tester for a PBX media and signaling cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Capacity planning: run a scenario's workload against its cluster in virtual time.
    ///
    /// Prints per role and per server blocking (with its batch-means interval), utilisation,
    /// queue figures beside Erlang B, C and A, and what each fault cost; with --size, searches
    /// for the smallest N+1 cluster that meets the SLOs and prints a bill of materials.
    ///
    /// Exit codes: 0 done; 99 (--size) some role has no size that meets its SLO within the
    /// search bound, or its runs were too short to decide; 105 stopped by Ctrl-C or SIGTERM
    /// before the end: the report of what was simulated is still printed and written, marked
    /// interrupted, and a sizing lists the roles it did not decide; 2 bad input; 1 the run
    /// failed (the message names the seed).
    Plan(plan::PlanArgs),
    /// Drive SIP/RTP traffic at a SIP server and measure it (CI benchmarks: exit 99 on
    /// breached thresholds).
    Load(Box<load::LoadArgs>),
    /// Add up the JSON reports of the shards of one `load` run (`--shard i/n`) into the report
    /// of the whole, and judge thresholds on it (exit 99 when one broke).
    ///
    /// Counts are summed and latencies come from the shards' histograms added together, never
    /// from averaged percentiles. Refuses reports of different runs (their `run`, set by
    /// --run-id or from the settings) and two reports of one shard, naming the files; warns of
    /// shards missing from 0..n and lists them in the JSON's `shards_missing`.
    ///
    /// Exit codes as `load`'s: 0 every threshold passed; 99 one broke; 4 one broke while a
    /// shard's pbxlab fell behind; 3 no shard heard the target; 2 bad input.
    Merge(merge::MergeArgs),
    /// Run the emulated cluster (Call Manager and nodes) live on loopback until stopped.
    Cluster(Box<cluster::ClusterArgs>),
    /// Failover drill: the live cluster, a load and a fault timeline in one run, with a
    /// verdict (exit 99 when an SLO broke).
    ///
    /// Starts the cluster and the scenario's [drill] load, checks that the SLOs hold before the
    /// first fault (else injects none), carries out the [[fault]]s (fail, partition, heal,
    /// recover, drain, disable, enable, upgrade) and reports per fault: detection time and its
    /// bound, reassignment time per moved call, the callers' media gap, dropped calls by
    /// Call-ID and reason, alerts, and the SLO verdict during and after. Without a scenario:
    /// the embedded drill (2,400 calls with RTP, media-2 failed at 40 s, back at 47 s).
    ///
    /// Exit codes: 0 every SLO held; 99 an SLO broke; 4 invalid: an SLO broke while pbxlab
    /// itself fell behind on this machine (a thread late on its schedule, or the kernel
    /// dropping packets on its sockets), so the failure may be the machine's; 2 bad input; 1 the
    /// drill could not run.
    Drill(Box<drill::DrillArgs>),
    /// Operate a running cluster through its control endpoint (`pbxlab cluster --ctl`).
    Ctl(Box<ctl::CtlArgs>),
    /// Run one node (media, meeting, IVR, queue or IM server) in its own process, joined to a
    /// running `pbxlab cluster`.
    Node(node::NodeArgs),
    /// Validate a scenario file and print its warnings.
    Check {
        /// Scenario file (TOML).
        scenario: PathBuf,
    },
}

/// Exit code of a `load` whose thresholds broke, or a `drill` whose SLOs broke, while pbxlab
/// itself was the bottleneck: the run says nothing of the system under test.
pub(crate) const EXIT_INVALID: u8 = 4;

/// Errors the user can fix by changing the input: exit code 2.
#[derive(Debug)]
pub(crate) struct BadInput(pub(crate) String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        // Ctrl-C or SIGTERM ends a run early; what was measured is still reported and written.
        if let Err(e) = ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed)) {
            eprintln!("pbxlab: cannot install the Ctrl-C handler: {e}");
            return ExitCode::from(1);
        }
    }
    let result = match cli.command {
        Command::Plan(args) => plan::plan(args, &stop),
        Command::Load(args) => load::load(*args, &stop),
        Command::Merge(args) => merge::merge_command(args),
        Command::Cluster(args) => cluster::cluster(*args, &stop),
        Command::Drill(args) => drill::drill(*args, &stop),
        Command::Ctl(args) => ctl::ctl(*args),
        Command::Node(args) => node::node(args, &stop),
        Command::Check { scenario } => check(&scenario),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pbxlab: {e:#}");
            if e.downcast_ref::<BadInput>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

pub(crate) fn load_scenario(path: Option<&PathBuf>) -> anyhow::Result<Scenario> {
    let scenario = match path {
        Some(p) => Scenario::load(p).map_err(|e| BadInput(e.to_string()))?,
        None => reference_scenario().context("the embedded reference scenario is invalid")?,
    };
    for w in &scenario.warnings {
        eprintln!("{w}");
    }
    Ok(scenario)
}

/// "1 pool", "3 pools".
pub(crate) fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn check(path: &PathBuf) -> anyhow::Result<ExitCode> {
    let scenario = load_scenario(Some(path))?;
    let mut warnings = scenario.warnings.len();
    // Fine for a cluster that other tools load; worth saying to someone about to plan it.
    if scenario.traffic.is_empty() {
        eprintln!(
            "{}: warning: no [traffic]: plan would simulate an idle cluster (cluster, load and drill take their rates from flags)",
            path.display()
        );
        warnings += 1;
    }
    let servers: usize = scenario.pools.iter().map(|p| p.servers.len()).sum();
    show(&format!(
        "{}: ok: {:?}, {}, {}, {}, {}\n",
        path.display(),
        scenario.name,
        count(scenario.pools.len(), "pool"),
        count(servers, "server"),
        count(scenario.faults.len(), "fault"),
        count(warnings, "warning")
    ));
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn write_json(path: Option<&PathBuf>, value: &serde_json::Value) -> anyhow::Result<()> {
    let Some(path) = path else { return Ok(()) };
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    if path.as_os_str() == "-" {
        show(&text);
    } else {
        write_atomic(path, text.as_bytes())?;
    }
    Ok(())
}

/// Prints `text` on standard output. A reader that has gone (`pbxlab load | head`) makes the
/// rest go unread, not a panic that would leave the files still to write unwritten.
pub(crate) fn show(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Checks before a run that its report can be written to `path` (given with `flag`): the
/// folder exists and takes a new file, and the path is not a folder. A run that measured for
/// minutes and then could not write its report would lose what it measured (and hide its
/// verdict behind exit 1).
pub(crate) fn writable(flag: &str, path: Option<&PathBuf>) -> Result<(), BadInput> {
    let Some(path) = path.filter(|p| p.as_os_str() != "-") else {
        return Ok(());
    };
    let bad = |why: String| Err(BadInput(format!("{flag} {}: {why}", path.display())));
    if path.is_dir() {
        return bad("is a folder".to_owned());
    }
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        // A device or a pipe is written in place at the end (`write_atomic`); opening a FIFO
        // now would wait for its reader.
        return Ok(());
    }
    let (tmp, _) = temporary_beside(path);
    match std::fs::File::create(&tmp) {
        Ok(_) => {
            let _ = std::fs::remove_file(&tmp);
            Ok(())
        }
        Err(e) => bad(format!("cannot be written ({e})")),
    }
}

/// A temporary file's path in `path`'s folder, and that folder.
fn temporary_beside(path: &std::path::Path) -> (PathBuf, PathBuf) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (dir.join(format!(".{name}.{}.tmp", std::process::id())), dir)
}

/// Writes `bytes` to `path` whole or not at all: into a temporary file beside it, flushed to
/// disk, then renamed over it, so a full disk or a crash leaves the previous file as it was.
///
/// Only a regular file (or a new path) is replaced so. A device, a FIFO or a socket
/// (`/dev/null`, `/dev/stdout`, a named pipe a script reads) is written in place: renaming a
/// file over it would put a regular file where the device was (run as root, `--json
/// /dev/null` once replaced the machine's `/dev/null`). A symbolic link to a regular file is
/// followed, and its target replaced, so the link stays a link.
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let context = || format!("writing {}", path.display());
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .with_context(context)?;
            return f.write_all(bytes).with_context(context);
        }
        Ok(_) if path.is_symlink() => {
            let target = std::fs::canonicalize(path).with_context(context)?;
            return replace(&target, bytes).with_context(context);
        }
        _ => {}
    }
    replace(path, bytes).with_context(context)
}

/// The atomic replacement of [`write_atomic`]: a temporary file beside `path`, renamed over it.
fn replace(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let (tmp, _) = temporary_beside(path);
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    Ok(())
}
