//! The checker: it walks the raw document section by section, validates every value with
//! its position, fills in defaults and returns a [`Scenario`] or the first problem found.
//! This file holds the entry points, the leaf readers every section uses, and the
//! top-level keys; each section has its own file.

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Value;

use crate::diagnostics::{
    Diagnostic, ScenarioError, Severity, join, key_path_at, line_col, polish, render,
};
use crate::model::Scenario;
use crate::raw::{Leaf, RawScenario};
use crate::units::{parse_duration, parse_rate, show_duration};

mod cluster;
mod drill;
mod explore;
mod faults;
mod pools;
mod slo;
mod traffic;

impl Scenario {
    /// Parses and validates scenario text. `file` is only used for messages
    /// (a path, or e.g. "<embedded reference>").
    pub fn from_toml(file: &str, text: &str) -> Result<Scenario, ScenarioError> {
        let checker = Checker {
            file,
            text,
            warnings: Vec::new(),
        };
        let raw: RawScenario = toml::from_str(text).map_err(|e| checker.toml_error(&e))?;
        checker.scenario(&raw)
    }

    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: shown.clone(),
            source,
        })?;
        Scenario::from_toml(&shown, &text)
    }
}

type Res<T> = Result<T, ScenarioError>;

/// Accepted ranges for floating-point settings.
#[derive(Clone, Copy)]
enum Bound {
    Positive,
    NonNegative,
    AtLeastOne,
    Fraction,
    PositiveFraction,
    /// The E-model's MOS scale.
    Mos,
}

impl Bound {
    fn admits(self, x: f64) -> bool {
        x.is_finite()
            && match self {
                Bound::Positive => x > 0.0,
                Bound::NonNegative => x >= 0.0,
                Bound::AtLeastOne => x >= 1.0,
                Bound::Fraction => (0.0..=1.0).contains(&x),
                Bound::PositiveFraction => x > 0.0 && x <= 1.0,
                Bound::Mos => (1.0..=4.5).contains(&x),
            }
    }

    fn describe(self) -> &'static str {
        match self {
            Bound::Positive => "greater than 0",
            Bound::NonNegative => "at least 0",
            Bound::AtLeastOne => "at least 1",
            Bound::Fraction => "between 0 and 1",
            Bound::PositiveFraction => "greater than 0 and at most 1",
            Bound::Mos => "between 1 and 4.5 (the E-model's MOS scale)",
        }
    }
}

const DEFAULT_DURATION: Duration = Duration::from_secs(3_600);
/// The seed of a scenario that gives none: runs stay reproducible, and `--seed` varies them.
pub const DEFAULT_SEED: u64 = 1;
const DEFAULT_BATCHES: u32 = 20;

struct Checker<'a> {
    file: &'a str,
    text: &'a str,
    warnings: Vec<Diagnostic>,
}

/// Where a table starts and what it is called, for keys that are missing.
struct Table<'k> {
    span: Range<usize>,
    key: &'k str,
}

impl Checker<'_> {
    fn diagnostic(
        &self,
        severity: Severity,
        span: Range<usize>,
        key: &str,
        message: String,
    ) -> Diagnostic {
        let (line, column) = line_col(self.text, span.start);
        Diagnostic {
            severity,
            file: self.file.to_owned(),
            line,
            column,
            key: key.to_owned(),
            message,
        }
    }

    fn error(&self, span: Range<usize>, key: &str, message: String) -> ScenarioError {
        ScenarioError::Invalid(self.diagnostic(Severity::Error, span, key, message))
    }

    fn warn(&mut self, span: Range<usize>, key: &str, message: String) {
        let warning = self.diagnostic(Severity::Warning, span, key, message);
        self.warnings.push(warning);
    }

    fn toml_error(&self, error: &toml::de::Error) -> ScenarioError {
        let span = error.span().unwrap_or(0..0);
        let key = key_path_at(self.text, span.start);
        self.error(span, &key, polish(error.message()))
    }

    // --- leaves -----------------------------------------------------------

    fn required<'v>(
        &self,
        value: &'v Option<Leaf>,
        table: &Table<'_>,
        name: &str,
        what: &str,
    ) -> Res<&'v Leaf> {
        value.as_ref().ok_or_else(|| {
            let message = if table.key.is_empty() {
                format!("missing required key `{name}` ({what})")
            } else {
                format!("missing required key `{name}` in {} ({what})", table.key)
            };
            self.error(table.span.clone(), &join(table.key, name), message)
        })
    }

    fn integer(&self, value: &Leaf, prefix: &str, name: &str, min: i64, max: i64) -> Res<i64> {
        let open_ended = max >= i64::from(u32::MAX);
        let message = match value.get_ref() {
            Value::Integer(n) if (min..=max).contains(n) => return Ok(*n),
            Value::Integer(n) if *n > max && open_ended => {
                format!("{name} must be at most {max}, found {n}")
            }
            other => {
                let wanted = if open_ended {
                    format!("a whole number of at least {min}")
                } else {
                    format!("a whole number from {min} to {max}")
                };
                format!("{name} must be {wanted}, found {}", render(other))
            }
        };
        Err(self.error(value.span(), &join(prefix, name), message))
    }

    fn count(&self, value: &Leaf, prefix: &str, name: &str, min: u32) -> Res<u32> {
        let n = self.integer(value, prefix, name, i64::from(min), i64::from(u32::MAX))?;
        // The range check above makes this conversion infallible.
        u32::try_from(n).map_err(|_| {
            self.error(
                value.span(),
                &join(prefix, name),
                format!("{name} is too large"),
            )
        })
    }

    fn opt_count(
        &self,
        value: &Option<Leaf>,
        prefix: &str,
        name: &str,
        min: u32,
        default: u32,
    ) -> Res<u32> {
        match value {
            Some(value) => self.count(value, prefix, name, min),
            None => Ok(default),
        }
    }

    fn number(&self, value: &Leaf, prefix: &str, name: &str, bound: Bound) -> Res<f64> {
        let x = match value.get_ref() {
            Value::Float(x) => *x,
            // Integers are fine wherever a number is expected; the loss of
            // precision above 2^53 is irrelevant for these settings.
            Value::Integer(n) => *n as f64,
            other => {
                return Err(self.error(
                    value.span(),
                    &join(prefix, name),
                    format!(
                        "{name} must be a number {}, found {}",
                        bound.describe(),
                        render(other)
                    ),
                ));
            }
        };
        if bound.admits(x) {
            Ok(x)
        } else {
            Err(self.error(
                value.span(),
                &join(prefix, name),
                format!("{name} must be {}, found {x}", bound.describe()),
            ))
        }
    }

    fn opt_number(
        &self,
        value: &Option<Leaf>,
        prefix: &str,
        name: &str,
        bound: Bound,
    ) -> Res<Option<f64>> {
        value
            .as_ref()
            .map(|value| self.number(value, prefix, name, bound))
            .transpose()
    }

    fn string<'v>(&self, value: &'v Leaf, prefix: &str, name: &str) -> Res<&'v str> {
        match value.get_ref() {
            Value::String(s) => Ok(s),
            other => Err(self.error(
                value.span(),
                &join(prefix, name),
                format!("{name} must be a string, found {}", render(other)),
            )),
        }
    }

    fn boolean(&self, value: &Leaf, prefix: &str, name: &str) -> Res<bool> {
        match value.get_ref() {
            Value::Boolean(b) => Ok(*b),
            other => Err(self.error(
                value.span(),
                &join(prefix, name),
                format!("{name} must be true or false, found {}", render(other)),
            )),
        }
    }

    fn choice<T>(
        &self,
        value: &Leaf,
        prefix: &str,
        name: &str,
        parse: fn(&str) -> Option<T>,
        allowed: &str,
    ) -> Res<T> {
        if let Value::String(s) = value.get_ref()
            && let Some(choice) = parse(s)
        {
            return Ok(choice);
        }
        Err(self.error(
            value.span(),
            &join(prefix, name),
            format!(
                "{name} must be one of {allowed}, found {}",
                render(value.get_ref())
            ),
        ))
    }

    fn opt_choice<T>(
        &self,
        value: &Option<Leaf>,
        prefix: &str,
        name: &str,
        parse: fn(&str) -> Option<T>,
        allowed: &str,
    ) -> Res<Option<T>> {
        value
            .as_ref()
            .map(|value| self.choice(value, prefix, name, parse, allowed))
            .transpose()
    }

    fn duration(&self, value: &Leaf, prefix: &str, name: &str, positive: bool) -> Res<Duration> {
        let key = join(prefix, name);
        let fail = |message: String| Err(self.error(value.span(), &key, message));
        let d = match value.get_ref() {
            Value::String(s) => match parse_duration(s) {
                Ok(d) => d,
                Err(why) => return fail(format!("{name} = {s:?} is not a valid duration: {why}")),
            },
            Value::Integer(n) => match u64::try_from(*n) {
                Ok(secs) => Duration::from_secs(secs),
                Err(_) => return fail(format!("{name} cannot be negative, found {n}")),
            },
            other => {
                return fail(format!(
                    "{name} must be a duration such as \"30s\" or \"1.5h\", found {}",
                    render(other)
                ));
            }
        };
        if positive && d.is_zero() {
            return fail(format!("{name} must be greater than 0"));
        }
        Ok(d)
    }

    fn opt_duration(
        &self,
        value: &Option<Leaf>,
        prefix: &str,
        name: &str,
        positive: bool,
    ) -> Res<Option<Duration>> {
        value
            .as_ref()
            .map(|value| self.duration(value, prefix, name, positive))
            .transpose()
    }

    fn rate(&self, value: &Leaf, prefix: &str, name: &str) -> Res<f64> {
        let key = join(prefix, name);
        let fail = |message: String| Err(self.error(value.span(), &key, message));
        match value.get_ref() {
            Value::String(s) => match parse_rate(s) {
                Ok(rate) => Ok(rate),
                Err(why) => fail(format!("{name} = {s:?} is not a valid rate: {why}")),
            },
            Value::Integer(_) | Value::Float(_) => {
                self.number(value, prefix, name, Bound::NonNegative)
            }
            other => fail(format!(
                "{name} must be a rate such as \"55/s\" or \"3/min\", found {}",
                render(other)
            )),
        }
    }

    // --- the top-level table ----------------------------------------------

    fn scenario(mut self, raw: &RawScenario) -> Res<Scenario> {
        let top = Table {
            span: 0..0,
            key: "",
        };
        let name_value = self.required(&raw.name, &top, "name", "a name for the scenario")?;
        let name = self.string(name_value, "", "name")?;
        if name.trim().is_empty() {
            return Err(self.error(
                name_value.span(),
                "name",
                "name must not be empty".to_owned(),
            ));
        }
        let seed = match &raw.seed {
            Some(v) => u64::try_from(self.integer(v, "", "seed", 0, i64::MAX)?).unwrap_or_default(),
            None => DEFAULT_SEED,
        };

        let duration = self
            .opt_duration(&raw.duration, "", "duration", true)?
            .unwrap_or(DEFAULT_DURATION);
        // Without an explicit warmup, drop the first tenth: the simulated
        // cluster starts empty, and that transient would bias every mean.
        let warmup = self
            .opt_duration(&raw.warmup, "", "warmup", false)?
            .unwrap_or(duration / 10);
        if warmup >= duration
            && let Some(value) = &raw.warmup
        {
            return Err(self.error(
                value.span(),
                "warmup",
                format!(
                    "warmup ({}) must be shorter than duration ({})",
                    show_duration(warmup),
                    show_duration(duration)
                ),
            ));
        }
        let batches = match &raw.batches {
            Some(value) => u32::try_from(self.integer(value, "", "batches", 2, 1_000)?)
                .unwrap_or(DEFAULT_BATCHES),
            None => DEFAULT_BATCHES,
        };

        let pools = self.pools(raw.pool.as_ref())?;
        let health = self.health(raw.health.as_ref())?;
        let traffic = self.traffic(raw.traffic.as_ref(), &pools)?;
        let callmanager = self.callmanager(raw.callmanager.as_ref())?;
        if let Some(server) = pools
            .iter()
            .flat_map(|p| p.servers.iter())
            .find(|s| callmanager.names().contains(&s.name))
            && let Some(value) = raw
                .callmanager
                .as_ref()
                .and_then(|c| c.get_ref().nodes.as_ref())
        {
            return Err(self.error(
                value.span(),
                "callmanager.nodes",
                format!(
                    "the Call Managers are named cm-1 .. cm-{}, and a pool already has a server                      named {:?}; rename it",
                    callmanager.nodes, server.name
                ),
            ));
        }
        let (faults, net_faults) =
            self.faults(raw.fault.as_ref(), &pools, &callmanager, duration)?;
        let slo = self.slo(raw.slo.as_ref())?;
        let sizing = self.sizing(raw.sizing.as_ref())?;
        let drill = self.drill(raw.drill.as_ref(), &pools, &traffic)?;
        let cluster = self.cluster(raw.cluster.as_ref())?;
        let explore = self.explore(raw.explore.as_ref(), duration)?;
        self.scale_warnings(duration, &traffic);

        Ok(Scenario {
            name: name.to_owned(),
            seed,
            duration,
            warmup,
            batches,
            pools,
            health,
            traffic,
            faults,
            net_faults,
            slo,
            sizing,
            drill,
            cluster,
            callmanager,
            explore,
            warnings: self.warnings,
        })
    }
}

/// Resident bytes per registered user: `plan` (its binding and refresh cursor) and
/// `pbxlab load` (binding, digest state, index), as measured with 10^6 and 10^8 users.
const PLAN_USER_BYTES: f64 = 27.0;
const LOAD_USER_BYTES: f64 = 135.0;
/// Users from which the memory they take is worth a warning.
const MANY_USERS: u32 = 10_000_000;
/// The planner's speed on the machine this was built on (BENCHMARKS.md: 3.4 to 6.4 M events/s),
/// and the events a session costs it (arrival, departure, their bookkeeping), for an estimate
/// of a long run's wall time.
const PLAN_EVENTS_PER_S: f64 = 4e6;
const EVENTS_PER_SESSION: f64 = 3.0;
/// Estimated wall time of `plan` from which a run is worth a warning.
const LONG_PLAN: Duration = Duration::from_secs(600);

impl Checker<'_> {
    /// Warnings for a scenario that will hurt: users that take gigabytes, a plan that takes
    /// longer than a coffee.
    fn scale_warnings(&mut self, duration: Duration, traffic: &crate::model::Traffic) {
        let t = traffic;
        if let Some(r) = &t.registrations
            && r.users >= MANY_USERS
        {
            let gb = |per: f64| f64::from(r.users) * per / 1e9;
            self.warn(
                0..0,
                "traffic.registrations.users",
                format!(
                    "{} users take about {:.1} GB in plan and {:.1} GB in pbxlab load",
                    r.users,
                    gb(PLAN_USER_BYTES),
                    gb(LOAD_USER_BYTES)
                ),
            );
        }
        let rates = [
            t.calls.as_ref().map(|c| c.rate_per_s),
            t.ivr.as_ref().map(|c| c.rate_per_s),
            t.queue.as_ref().map(|c| c.rate_per_s),
            t.meetings.as_ref().map(|c| c.rate_per_s),
        ];
        let refreshes = t
            .registrations
            .as_ref()
            .map(|r| f64::from(r.users) / r.expires.as_secs_f64().max(1.0));
        let per_s: f64 = rates.into_iter().chain([refreshes]).flatten().sum();
        let sessions = per_s * duration.as_secs_f64();
        let wall = sessions * EVENTS_PER_SESSION / PLAN_EVENTS_PER_S;
        if wall >= LONG_PLAN.as_secs_f64() {
            self.warn(
                0..0,
                "duration",
                format!(
                    "plan will simulate about {} sessions ({} a second for {}): about {} of wall \
                     time at the ~4 M events a second a planner core does",
                    rough(sessions),
                    rough(per_s),
                    show_duration(duration),
                    rough_wall(wall)
                ),
            );
        }
    }
}

/// A large count as people say it: 3.6e21, 1.2 million, 950.
fn rough(n: f64) -> String {
    if n >= 1e9 {
        format!("{n:.1e}")
    } else if n >= 1e6 {
        format!("{:.1} million", n / 1e6)
    } else {
        format!("{n:.0}")
    }
}

/// Seconds of wall time as people say them: minutes, hours, days or years.
fn rough_wall(s: f64) -> String {
    const DAY: f64 = 86_400.0;
    if s >= 365.0 * DAY {
        format!("{} years", rough(s / (365.0 * DAY)))
    } else if s >= DAY {
        format!("{:.0} days", s / DAY)
    } else if s >= 3_600.0 {
        format!("{:.1} hours", s / 3_600.0)
    } else {
        format!("{:.0} minutes", s / 60.0)
    }
}

#[cfg(test)]
mod tests;
