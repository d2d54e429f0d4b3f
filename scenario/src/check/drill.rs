//! `[drill]`: the live load `pbxlab drill` runs (`[drill.load]`), its phases and the SLOs it
//! checks.

use std::time::Duration;

use super::{Bound, Checker, Res};
use crate::diagnostics::join;
use crate::model::{Arrivals, DrillLoad, DrillSpec, HoldDist, PoolSpec, Service, Traffic};
use crate::raw::{Leaf, RawDrill, RawDrillLoad, Tab};

const SERVICES: &str = "echo, ivr-N, queue-N or meeting-N (N >= 1)";
const HOLD_DISTS: &str = "fixed, exponential";
const ARRIVALS: &str = "fixed, poisson";

/// The load generator's hold shapes, before the mean is known.
#[derive(Clone, Copy)]
enum HoldShape {
    Fixed,
    Exponential,
}

fn parse_hold_shape(text: &str) -> Option<HoldShape> {
    match text {
        "fixed" => Some(HoldShape::Fixed),
        "exponential" => Some(HoldShape::Exponential),
        _ => None,
    }
}

fn parse_arrivals(text: &str) -> Option<Arrivals> {
    match text {
        "fixed" => Some(Arrivals::Fixed),
        "poisson" => Some(Arrivals::Poisson),
        _ => None,
    }
}

impl Checker<'_> {
    pub(super) fn drill(
        &self,
        raw: Option<&Tab<RawDrill>>,
        pools: &[PoolSpec],
        traffic: &Traffic,
    ) -> Res<Option<DrillSpec>> {
        let key = "drill";
        let Some(raw) = raw else {
            return Ok(None);
        };
        let raw = raw.get_ref();
        let defaults = DrillSpec::default();
        let duration = |value: &Option<Leaf>, name: &str, default: Duration| -> Res<Duration> {
            Ok(self
                .opt_duration(value, key, name, false)?
                .unwrap_or(default))
        };
        let count = |value: &Option<Leaf>, name: &str| -> Res<u64> {
            match value {
                Some(v) => Ok(u64::try_from(self.integer(v, key, name, 0, i64::MAX)?).unwrap_or(0)),
                None => Ok(0),
            }
        };
        let load = match &raw.load {
            Some(load) => self.drill_load(load, pools, traffic)?,
            None => defaults.load,
        };
        Ok(Some(DrillSpec {
            load,
            steady: duration(&raw.steady, "steady", defaults.steady)?,
            settle: duration(&raw.settle, "settle", defaults.settle)?,
            media_gap_p99: duration(&raw.media_gap_p99, "media_gap_p99", defaults.media_gap_p99)?,
            setup_p99: duration(&raw.setup_p99, "setup_p99", defaults.setup_p99)?,
            dropped: count(&raw.dropped, "dropped")?,
            failed: count(&raw.failed, "failed")?,
            takeover: duration(&raw.takeover, "takeover", defaults.takeover)?,
        }))
    }

    fn drill_load(
        &self,
        entry: &Tab<RawDrillLoad>,
        pools: &[PoolSpec],
        traffic: &Traffic,
    ) -> Res<DrillLoad> {
        let key = "drill.load";
        let raw = entry.get_ref();
        let service = match &raw.service {
            Some(value) => Some(self.service(value, key, pools, traffic)?),
            None => None,
        };
        let users = raw
            .users
            .as_ref()
            .map(|value| self.count(value, key, "users", 0))
            .transpose()?;
        let register_rate_per_s = raw
            .register_rate
            .as_ref()
            .map(|value| self.positive_rate(value, key, "register_rate"))
            .transpose()?;
        let calls = raw
            .calls
            .as_ref()
            .map(|value| {
                let n = self.integer(value, key, "calls", 1, i64::MAX)?;
                // The range check makes this conversion infallible.
                Ok(u64::try_from(n).unwrap_or(u64::MAX))
            })
            .transpose()?;
        let call_rate_per_s = raw
            .call_rate
            .as_ref()
            .map(|value| self.positive_rate(value, key, "call_rate"))
            .transpose()?;
        let shape = self.opt_choice(
            &raw.hold_dist,
            key,
            "hold_dist",
            parse_hold_shape,
            HOLD_DISTS,
        )?;
        let hold = match (&raw.hold, &raw.hold_dist) {
            (Some(value), _) => {
                let s = self.duration(value, key, "hold", true)?.as_secs_f64();
                // `pbxlab load --hold` holds for exactly that long unless told otherwise.
                Some(match shape.unwrap_or(HoldShape::Fixed) {
                    HoldShape::Fixed => HoldDist::Fixed { s },
                    HoldShape::Exponential => HoldDist::Exponential { mean_s: s },
                })
            }
            (None, Some(value)) => {
                return Err(self.error(
                    value.span(),
                    &join(key, "hold_dist"),
                    "hold_dist shapes [drill.load]'s hold, which is not given; add hold \
                     (without it the calls hold as [traffic.calls] says)"
                        .to_owned(),
                ));
            }
            (None, None) => None,
        };
        let rtp_fraction = self
            .opt_number(&raw.rtp, key, "rtp", Bound::Fraction)?
            .unwrap_or(0.0);
        let max_concurrent = raw
            .max_concurrent
            .as_ref()
            .map(|value| self.count(value, key, "max_concurrent", 1))
            .transpose()?;
        let arrivals = self.opt_choice(&raw.arrivals, key, "arrivals", parse_arrivals, ARRIVALS)?;
        let dtmf = match &raw.dtmf {
            Some(value) => {
                let digits = self.string(value, key, "dtmf")?;
                let is_digit = |c: char| c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D');
                if digits.is_empty() || !digits.chars().all(is_digit) {
                    return Err(self.error(
                        value.span(),
                        &join(key, "dtmf"),
                        format!("dtmf must be one or more of 0-9, *, # and A-D, found {digits:?}"),
                    ));
                }
                Some(digits.to_owned())
            }
            None => None,
        };
        Ok(DrillLoad {
            service,
            users,
            register_rate_per_s,
            calls,
            call_rate_per_s,
            hold,
            rtp_fraction,
            max_concurrent,
            arrivals,
            dtmf,
        })
    }

    /// A service the cluster of this scenario can serve: its pool exists and, for a queue,
    /// the cluster runs that many queues.
    fn service(
        &self,
        value: &Leaf,
        prefix: &str,
        pools: &[PoolSpec],
        traffic: &Traffic,
    ) -> Res<Service> {
        let service = self.choice(value, prefix, "service", Service::parse, SERVICES)?;
        let key = join(prefix, "service");
        let what = format!("calling {}", service.user());
        self.need_pool(pools, service.role(), value.span(), &key, &what)?;
        if let Service::Queue(n) = service {
            let queues = traffic.queue.as_ref().map_or(0, |q| q.queues);
            if n > queues {
                let has = match &traffic.queue {
                    Some(_) => format!("[traffic.queue] has queues = {queues}"),
                    None => "there is no [traffic.queue]".to_owned(),
                };
                return Err(self.error(
                    value.span(),
                    &key,
                    format!(
                        "{what} needs a [traffic.queue] with queues = {n} or more (the cluster \
                         runs that many queues), but {has}"
                    ),
                ));
            }
        }
        Ok(service)
    }

    fn positive_rate(&self, value: &Leaf, prefix: &str, name: &str) -> Res<f64> {
        let rate = self.rate(value, prefix, name)?;
        if rate > 0.0 {
            Ok(rate)
        } else {
            Err(self.error(
                value.span(),
                &join(prefix, name),
                format!("{name} must be greater than 0"),
            ))
        }
    }
}
