//! Pass/fail thresholds on a run's figures, k6-style: `setup.p99<200ms`, `calls.failed==0`,
//! `rtp.loss_fraction<0.001`, `queue_wait.p99<30s`, `queue.abandoned_fraction<0.05`. A latency
//! takes its unit (us, ms, s), as every duration in pbxlab does (k6 reads a bare number as
//! milliseconds; here only 0 may go without); counts and fractions are plain numbers.
//! `mos.p5>4.0` reads the E-model MOS of the run's streams, a plain number from 1 to 4.5.

use std::fmt;

use crate::metrics::Metric;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}

impl Op {
    fn symbol(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
        }
    }

    fn holds(self, value: f64, limit: f64) -> bool {
        match self {
            Op::Lt => value < limit,
            Op::Le => value <= limit,
            Op::Gt => value > limit,
            Op::Ge => value >= limit,
            Op::Eq => value == limit,
        }
    }
}

/// What a threshold reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// A latency percentile, in microseconds.
    Percentile(Metric, Quantile),
    Max(Metric),
    Mean(Metric),
    Count(Metric),
    Calls(Field),
    Registrations(Field),
    Queue(QueueField),
    RtpLossFraction,
    RtpJitterP99,
    /// A figure of the per-stream MOS distribution: low is bad, so the low percentiles count.
    Mos(MosStat),
}

/// The figures of the MOS distribution the report keeps (`report::MosSummary`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MosStat {
    Min,
    P1,
    P5,
    P50,
    Mean,
    Max,
}

/// MOS by the E-model runs from 1 (R of 0 or below) to 4.5 (R of 100).
const MOS_RANGE: std::ops::RangeInclusive<f64> = 1.0..=4.5;

/// A percentile in thousandths of a percent (99.9 is 99,900): exact, and comparable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantile(pub u32);

impl Quantile {
    /// As a fraction in (0, 1], as hdrhistogram takes it.
    pub fn fraction(self) -> f64 {
        f64::from(self.0) / 100_000.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Attempted,
    Succeeded,
    Failed,
    Abandoned,
    FailedFraction,
}

/// Figures of the queue callers (see `report::QueueSummary`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueField {
    Offered,
    Answered,
    Abandoned,
    /// Abandoned over offered.
    AbandonedFraction,
    /// Answered within the service level over offered, as `plan` reports it.
    ServiceLevel,
    /// Average speed of answer, a latency.
    Asa,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub expr: String,
    pub subject: Subject,
    pub op: Op,
    /// In the subject's unit: microseconds for latencies.
    pub limit: f64,
    /// The unit the limit was written in, for showing the value beside it (`None`: a count or
    /// a fraction).
    pub unit: Option<Unit>,
}

/// The unit a latency limit was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Unit {
    #[serde(rename = "us")]
    Us,
    #[serde(rename = "ms")]
    Ms,
    #[serde(rename = "s")]
    S,
}

impl Unit {
    fn us(self) -> f64 {
        match self {
            Unit::Us => 1.0,
            Unit::Ms => 1e3,
            Unit::S => 1e6,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Unit::Us => "us",
            Unit::Ms => "ms",
            Unit::S => "s",
        }
    }
}

/// A threshold's value as the report shows it: a latency (given in microseconds) in `unit`, the
/// limit's own, with the unit named (`1720.319 ms`); a count or fraction as it is.
pub fn show_value(value: f64, unit: Option<Unit>) -> String {
    match unit {
        Some(u) => format!("{:.3} {}", value / u.us(), u.symbol()),
        None if value.fract() == 0.0 && value.abs() < 1e15 => format!("{value:.0}"),
        None => format!("{value:.6}"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("threshold {expr:?}: {reason}")]
pub struct ThresholdError {
    pub expr: String,
    pub reason: String,
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expr)
    }
}

impl Threshold {
    pub fn parse(expr: &str) -> Result<Threshold, ThresholdError> {
        let err = |reason: String| ThresholdError {
            expr: expr.to_owned(),
            reason,
        };
        let compact: String = expr.chars().filter(|c| !c.is_whitespace()).collect();
        let at = compact
            .find(['<', '>', '='])
            .ok_or_else(|| err("no comparison: write e.g. setup.p99<200ms".into()))?;
        let (lhs, rest) = compact.split_at(at);
        let (op, value) = [
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("==", Op::Eq),
            ("<", Op::Lt),
            (">", Op::Gt),
        ]
        .into_iter()
        .find_map(|(s, op)| rest.strip_prefix(s).map(|v| (op, v)))
        .ok_or_else(|| {
            err(format!(
                "unknown comparison in {rest:?}; use <, <=, >, >= or =="
            ))
        })?;
        let (name, stat) = lhs.split_once('.').ok_or_else(|| {
            err(format!(
                "{lhs:?} is not NAME.STAT (e.g. setup.p99, calls.failed)"
            ))
        })?;
        let subject = match (Metric::from_name(name), name) {
            (Some(m), _) => match stat {
                "max" => Subject::Max(m),
                "mean" => Subject::Mean(m),
                "count" => Subject::Count(m),
                p => {
                    let digits = p.strip_prefix('p').ok_or_else(|| {
                        err(format!(
                            "unknown statistic {p:?}; use p50, p90, p99, p999, max, mean or count"
                        ))
                    })?;
                    Subject::Percentile(
                        m,
                        percentile(digits).ok_or_else(|| err(format!("bad percentile {p:?}")))?,
                    )
                }
            },
            (None, "calls" | "registrations") => {
                let field = match stat {
                    "attempted" => Field::Attempted,
                    "succeeded" => Field::Succeeded,
                    "failed" => Field::Failed,
                    "abandoned" => Field::Abandoned,
                    "failed_fraction" => Field::FailedFraction,
                    s => {
                        return Err(err(format!(
                            "unknown field {s:?}; use attempted, succeeded, failed, abandoned or failed_fraction"
                        )));
                    }
                };
                if name == "calls" {
                    Subject::Calls(field)
                } else {
                    Subject::Registrations(field)
                }
            }
            (None, "queue") => Subject::Queue(match stat {
                "offered" => QueueField::Offered,
                "answered" => QueueField::Answered,
                "abandoned" => QueueField::Abandoned,
                "abandoned_fraction" => QueueField::AbandonedFraction,
                "service_level" => QueueField::ServiceLevel,
                "asa" => QueueField::Asa,
                s => {
                    return Err(err(format!(
                        "unknown queue figure {s:?}; use offered, answered, abandoned, abandoned_fraction, service_level or asa"
                    )));
                }
            }),
            (None, "rtp") => match stat {
                "loss_fraction" => Subject::RtpLossFraction,
                "jitter_p99" => Subject::RtpJitterP99,
                s => {
                    return Err(err(format!(
                        "unknown rtp figure {s:?}; use loss_fraction or jitter_p99"
                    )));
                }
            },
            (None, "mos") => Subject::Mos(match stat {
                "min" => MosStat::Min,
                "p1" => MosStat::P1,
                "p5" => MosStat::P5,
                "p50" => MosStat::P50,
                "mean" => MosStat::Mean,
                "max" => MosStat::Max,
                s => {
                    return Err(err(format!(
                        "unknown MOS figure {s:?}; use min, p1, p5, p50, mean or max"
                    )));
                }
            }),
            (None, n) => {
                return Err(err(format!(
                    "unknown name {n:?}; use register, pdd, setup, setup_uncorrected, bye, media_gap, queue_wait, ivr_route, calls, registrations, queue, rtp or mos"
                )));
            }
        };
        let is_latency = matches!(
            subject,
            Subject::Percentile(..)
                | Subject::Max(_)
                | Subject::Mean(_)
                | Subject::RtpJitterP99
                | Subject::Queue(QueueField::Asa)
        );
        let (limit, unit) = if is_latency {
            match parse_latency_us(value) {
                Some((v, unit)) => (Some(v), Some(unit)),
                None => (None, None),
            }
        } else {
            (value.parse::<f64>().ok(), None)
        };
        let limit = limit.filter(|v| v.is_finite()).ok_or_else(|| {
            err(if is_latency {
                format!(
                    "{value:?} is not a latency: a number with its unit, us, ms or s (e.g. 200ms)"
                )
            } else {
                match subject {
                    Subject::Mos(_) => format!(
                        "{value:?} is not a number: a MOS is a plain number from 1 to 4.5, without a unit"
                    ),
                    _ => format!("{value:?} is not a number"),
                }
            })
        })?;
        if matches!(subject, Subject::Mos(_)) && !MOS_RANGE.contains(&limit) {
            return Err(err(format!(
                "MOS {limit} is off the scale: the E-model's MOS runs from 1 to 4.5"
            )));
        }
        Ok(Threshold {
            expr: expr.trim().to_owned(),
            subject,
            op,
            limit,
            unit,
        })
    }

    /// Whether `value` (in the subject's unit) passes.
    pub fn passes(&self, value: f64) -> bool {
        self.op.holds(value, self.limit)
    }

    /// The limit for display: latencies in ms.
    pub fn describe(&self) -> String {
        format!("{} {}", self.op.symbol(), self.limit)
    }
}

/// "5" -> 5 %, "99" -> 99 %, "999" -> 99.9 %, "9999" -> 99.99 %, "100" -> 100 %: after the first
/// two digits come decimals (at most three), as in p999.
fn percentile(digits: &str) -> Option<Quantile> {
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = digits.parse().ok()?;
    let milli = match digits.len() {
        _ if digits == "100" => 100_000,
        1 => n * 1_000,
        len => n * 10u32.pow(5 - len as u32),
    };
    (milli > 0 && milli <= 100_000).then_some(Quantile(milli))
}

/// A latency limit in microseconds, and the unit it was written in (a bare 0 shows in ms).
fn parse_latency_us(text: &str) -> Option<(f64, Unit)> {
    let (number, unit) = if let Some(n) = text.strip_suffix("us") {
        (n, Some(Unit::Us))
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, Some(Unit::Ms))
    } else if let Some(n) = text.strip_suffix('s') {
        (n, Some(Unit::S))
    } else {
        // A bare number only as zero: every latency takes a unit, as every duration does.
        (text, None)
    };
    let v = number.parse::<f64>().ok()?;
    match unit {
        Some(u) => Some((v * u.us(), u)),
        None => (v == 0.0).then_some((0.0, Unit::Ms)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_people_write() {
        let t = Threshold::parse("setup.p99<200ms").expect("valid");
        assert_eq!(
            t.subject,
            Subject::Percentile(Metric::Setup, Quantile(99_000))
        );
        assert_eq!((t.op, t.limit), (Op::Lt, 200_000.0));
        assert!(t.passes(199_999.0) && !t.passes(200_000.0));
        let t = Threshold::parse(" register.p999 <= 1.5s ").expect("valid");
        assert_eq!(
            t.subject,
            Subject::Percentile(Metric::Register, Quantile(99_900))
        );
        assert_eq!(percentile("5"), Some(Quantile(5_000)));
        assert_eq!(percentile("100"), Some(Quantile(100_000)));
        assert_eq!(percentile("50"), Some(Quantile(50_000)));
        assert_eq!(percentile("9999"), Some(Quantile(99_990)));
        assert_eq!(t.limit, 1_500_000.0);
        assert_eq!(t.unit, Some(Unit::S));
        assert!(
            Threshold::parse("bye.max<50").is_err(),
            "a latency takes its unit"
        );
        assert_eq!(Threshold::parse("bye.max<=0").expect("valid").limit, 0.0);
        let t = Threshold::parse("calls.failed==0").expect("valid");
        assert_eq!(
            (t.subject, t.op, t.limit),
            (Subject::Calls(Field::Failed), Op::Eq, 0.0)
        );
        assert!(
            Threshold::parse("rtp.loss_fraction<0.001")
                .expect("valid")
                .passes(0.0005)
        );
        assert!(Threshold::parse("media_gap.p99<=300ms").is_ok());
        let t = Threshold::parse("queue_wait.p99<30s").expect("valid");
        assert_eq!(
            (t.subject, t.limit),
            (
                Subject::Percentile(Metric::QueueWait, Quantile(99_000)),
                30e6
            )
        );
        assert!(Threshold::parse("ivr_route.max<5s").is_ok());
        let t = Threshold::parse("queue.abandoned_fraction<0.05").expect("valid");
        assert_eq!(
            (t.subject, t.limit),
            (Subject::Queue(QueueField::AbandonedFraction), 0.05)
        );
        let t = Threshold::parse("queue.asa<=8s").expect("valid");
        assert_eq!(t.limit, 8e6, "ASA is a latency");
        let t = Threshold::parse("mos.p5>4.0").expect("valid");
        assert_eq!(
            (t.subject, t.op, t.limit),
            (Subject::Mos(MosStat::P5), Op::Gt, 4.0)
        );
        assert!(t.passes(4.41) && !t.passes(4.0));
        for (expr, stat) in [
            ("mos.min>=1", MosStat::Min),
            ("mos.p1 > 3.6", MosStat::P1),
            ("mos.p50>4.3", MosStat::P50),
            ("mos.mean>=4.5", MosStat::Mean),
            ("mos.max<=4.5", MosStat::Max),
        ] {
            assert_eq!(
                Threshold::parse(expr).expect(expr).subject,
                Subject::Mos(stat)
            );
        }
        assert_eq!(
            Threshold::parse("calls.abandoned==0")
                .expect("valid")
                .subject,
            Subject::Calls(Field::Abandoned)
        );
    }

    #[test]
    fn values_show_in_the_limits_own_unit() {
        let unit = |expr: &str| Threshold::parse(expr).expect(expr).unit;
        assert_eq!(
            show_value(1_720_319.0, unit("media_gap.p99<100ms")),
            "1720.319 ms"
        );
        assert_eq!(show_value(1_720_319.0, unit("setup.p99<2s")), "1.720 s");
        assert_eq!(show_value(1_500.0, unit("bye.max<900us")), "1500.000 us");
        assert_eq!(show_value(2_000.0, unit("bye.max<=0")), "2.000 ms");
        assert_eq!(show_value(3.0, unit("calls.failed==0")), "3");
        assert_eq!(
            show_value(0.0005, unit("rtp.loss_fraction<0.001")),
            "0.000500"
        );
    }

    #[test]
    fn errors_name_the_problem() {
        for (expr, needle) in [
            ("setup.p99", "no comparison"),
            ("setup<200ms", "NAME.STAT"),
            ("latency.p99<1s", "unknown name"),
            ("setup.p0<1s", "bad percentile"),
            ("setup.p123456<1s", "bad percentile"),
            ("setup.median<1s", "unknown statistic"),
            ("setup.p99<fast", "not a latency"),
            ("calls.lost<1", "unknown field"),
            ("queue.waiting<1", "unknown queue figure"),
            ("calls.failed<lots", "not a number"),
            ("setup.p99=<1s", "unknown comparison"),
            ("mos.p5>6", "off the scale"),
            ("mos.p5>0.5", "off the scale"),
            ("mos.p5<4ms", "without a unit"),
            ("mos.p10>4", "unknown MOS figure"),
            ("mos.p5>NaN", "not a number"),
        ] {
            let e = Threshold::parse(expr).expect_err(expr);
            assert!(e.to_string().contains(needle), "{expr}: {e}");
        }
    }
}
