//! `pbxlab plan`: the simulation or the sizing search, its progress on stderr, the reports and
//! the exit code. What is simulated and how sizes are decided is [`pbxlab_sim`].

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use pbxlab_scenario::parse_duration;
use pbxlab_sim::report::human_duration;
use pbxlab_sim::{Options, Progress, ProgressSink, simulate, size};

use crate::{BadInput, load_scenario, write_json};

/// Exit code of a `plan` stopped by Ctrl-C or SIGTERM before it finished (k6 uses 105 for a run
/// aborted from outside): its report covers part of the scenario, so it must not pass for a
/// finished one.
pub(crate) const EXIT_INTERRUPTED: u8 = 105;

/// Exit code of a sizing that established no size for some role.
pub(crate) const EXIT_NOT_MET: u8 = 99;

/// Progress periods with `--progress auto`: a terminal's status line is redrawn every second;
/// a log (stderr not a terminal) gets a line every ten seconds, so runs shorter than that
/// print nothing.
const TERMINAL_PERIOD: Duration = Duration::from_secs(1);
const LOG_PERIOD: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub struct PlanArgs {
    /// Scenario file (TOML); without one, the embedded reference cluster.
    scenario: Option<PathBuf>,
    /// Seed for every random stream (overrides the scenario's).
    #[arg(long)]
    seed: Option<u64>,
    /// Also write the report as JSON to FILE ("-" for standard output, instead of the tables).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Also write the report as one self-contained HTML page to FILE: each server's
    /// utilisation over simulated time with the faults marked, blocking per role with its
    /// interval against the SLO, and the tables; with --size, the sizes, the runs behind them
    /// and the bill of materials.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Search for the smallest cluster that meets the SLOs with one server of each role down
    /// (N+1), and print a bill of materials.
    #[arg(long)]
    size: bool,
    /// Leave wall-clock figures (wall_s, events_per_s) out of the JSON, so that runs with the
    /// same seed compare byte for byte.
    #[arg(long)]
    no_wall_clock: bool,
    /// Cross-check the balancer against the simulator's own ledger after every event (slow).
    #[arg(long)]
    self_check: bool,
    /// Progress on stderr (virtual time reached, events/s, the time left): auto redraws a
    /// status line every second when stderr is a terminal and writes a line every 10 s
    /// otherwise (so short runs print nothing); off; or a period such as 5s. Standard output
    /// and the JSON are the same either way.
    #[arg(long, default_value = "auto", value_name = "auto|off|PERIOD")]
    progress: String,
}

/// How often to show progress, if at all.
fn progress_period(text: &str, on_terminal: bool) -> anyhow::Result<Option<Duration>> {
    match text {
        "auto" => Ok(Some(if on_terminal {
            TERMINAL_PERIOD
        } else {
            LOG_PERIOD
        })),
        "off" => Ok(None),
        _ => match parse_duration(text) {
            Ok(d) if d >= Duration::from_millis(1) => Ok(Some(d)),
            Ok(_) => Err(BadInput(format!(
                "--progress {text:?}: a period must be at least 1ms (or write off)"
            ))
            .into()),
            Err(e) => {
                Err(BadInput(format!("--progress {text:?}: auto, off or a period: {e}")).into())
            }
        },
    }
}

/// One progress line: "media: 3 servers with one down, a 2.2 h run: 1.2 h of 2.2 h simulated
/// (55%), 6.1 M events/s, about 3 s left".
pub(crate) fn progress_line(p: &Progress<'_>) -> String {
    let stage = if p.stage.is_empty() {
        String::new()
    } else {
        format!("{}: ", p.stage)
    };
    let percent = 100.0 * p.simulated_s / p.duration_s.max(1e-9);
    let left = match p.left_s() {
        Some(s) => format!("about {} left", human_duration(s)),
        None => "estimating the time left".into(),
    };
    format!(
        "plan: {stage}{} of {} simulated ({percent:.0}%), {:.2} M events/s, {left}",
        human_duration(p.simulated_s),
        human_duration(p.duration_s),
        p.events_per_s() / 1e6,
    )
}

pub(crate) fn plan(args: PlanArgs, stop: &AtomicBool) -> anyhow::Result<ExitCode> {
    crate::writable("--json", args.json.as_ref())?;
    crate::html::writable(args.html.as_ref())?;
    let scenario = load_scenario(args.scenario.as_ref())?;
    // The planner models servers, not the datagrams between them: a network fault would
    // change nothing it computes, and must not pass for modelled.
    for f in &scenario.net_faults {
        eprintln!(
            "warning: plan does not model network faults: {} at {:.1} s ignored",
            f.kind.name(),
            f.at.as_secs_f64()
        );
    }
    let on_terminal = std::io::stderr().is_terminal();
    let period = progress_period(&args.progress, on_terminal)?;
    let bar = (on_terminal && period.is_some()).then(indicatif::ProgressBar::new_spinner);
    let show = |p: &Progress<'_>| {
        let line = progress_line(p);
        match &bar {
            Some(b) => b.set_message(line),
            None => eprintln!("{line}"),
        }
    };
    let options = Options {
        seed: args.seed,
        self_check: args.self_check,
        stop: Some(stop),
        no_wall_clock: args.no_wall_clock,
        progress: period.map(|every| ProgressSink {
            every,
            stage: "",
            report: &show,
        }),
    };
    let json_to_stdout = args.json.as_deref().is_some_and(|p| p.as_os_str() == "-");
    if args.size {
        let sizing = size::size(&scenario, options);
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        let sizing = sizing?;
        if !json_to_stdout {
            crate::show(&sizing.render_text());
        }
        let value = serde_json::to_value(&sizing)?;
        write_json(args.json.as_ref(), &value)?;
        crate::html::write(args.html.as_ref(), &value, crate::html::plan)?;
        if sizing.interrupted {
            eprintln!(
                "pbxlab: sizing interrupted; roles not decided are listed as such (exit {EXIT_INTERRUPTED})"
            );
        }
        return Ok(if sizing.interrupted {
            ExitCode::from(EXIT_INTERRUPTED)
        } else if sizing.all_met {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_NOT_MET)
        });
    }
    let report = simulate(&scenario, options);
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let report = report?;
    if !json_to_stdout {
        crate::show(&report.render_text());
    }
    let value = serde_json::to_value(&report)?;
    write_json(args.json.as_ref(), &value)?;
    crate::html::write(args.html.as_ref(), &value, crate::html::plan)?;
    if report.interrupted {
        eprintln!(
            "pbxlab: interrupted at {} of {} simulated; the report covers that part (exit {EXIT_INTERRUPTED})",
            human_duration(report.simulated_s),
            human_duration(report.duration_s)
        );
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_progress_line_says_where_the_run_is_and_what_is_left() {
        let p = Progress {
            stage: "",
            simulated_s: 3_600.0,
            duration_s: 4.0 * 3_600.0,
            events: 6_000_000,
            wall_s: 1.0,
        };
        assert_eq!(
            progress_line(&p),
            "plan: 60 min of 4 h simulated (25%), 6.00 M events/s, about 3 s left"
        );
        let early = Progress {
            stage: "media: 3 servers with one down, a 4 h run",
            simulated_s: 0.0,
            ..p
        };
        assert_eq!(
            progress_line(&early),
            "plan: media: 3 servers with one down, a 4 h run: 0 s of 4 h simulated (0%), \
             6.00 M events/s, estimating the time left"
        );
    }

    #[test]
    fn the_progress_flag_reads_auto_off_and_periods() {
        let period = |text, terminal| progress_period(text, terminal).expect("reads");
        assert_eq!(period("auto", true), Some(TERMINAL_PERIOD));
        assert_eq!(period("auto", false), Some(LOG_PERIOD));
        assert_eq!(period("off", true), None);
        assert_eq!(period("250ms", false), Some(Duration::from_millis(250)));
        for bad in ["0s", "soon", "-1s"] {
            let e = progress_period(bad, false).expect_err("refused");
            assert!(e.downcast_ref::<BadInput>().is_some(), "{e}");
            assert!(e.to_string().contains("--progress"), "{e}");
        }
    }
}
