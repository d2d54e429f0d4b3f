//! `[explore]`: how an explorer that runs a scenario under many seeds varies it: how far each
//! fault's time moves, how many random network faults it adds, when, and the ranges their
//! values are drawn from.

use std::time::Duration;

use super::{Bound, Checker, Res};
use crate::diagnostics::join;
use crate::model::ExploreSpec;
use crate::raw::{Leaf, LeafList, RawExplore, Tab};
use crate::units::show_duration;

/// At most this many random network faults a seed: more at once than anyone could read a
/// failure of.
const MAX_NETWORK: i64 = 100;

impl Checker<'_> {
    pub(super) fn explore(
        &self,
        raw: Option<&Tab<RawExplore>>,
        duration: Duration,
    ) -> Res<ExploreSpec> {
        let key = "explore";
        let defaults = ExploreSpec::default();
        let Some(raw) = raw else {
            return Ok(defaults);
        };
        let raw = raw.get_ref();
        let fraction = |list: &Option<LeafList>, name: &str, default: (f64, f64)| match list {
            Some(list) => self.range(list, key, name, |value, element| {
                self.number(value, key, element, Bound::Fraction)
            }),
            None => Ok(default),
        };
        let span = |list: &Option<LeafList>, name: &str, positive: bool, default| match list {
            Some(list) => self.range(list, key, name, |value, element| {
                self.duration(value, key, element, positive)
            }),
            None => Ok(default),
        };
        let window = match &raw.window {
            Some(list) => {
                let (start, end) = self.range(list, key, "window", |value, element| {
                    self.duration(value, key, element, false)
                })?;
                if start == end {
                    return Err(self.error(
                        list.span(),
                        &join(key, "window"),
                        format!(
                            "window starts and ends at {}: it leaves no time for a fault to start",
                            show_duration(start)
                        ),
                    ));
                }
                if end > duration {
                    let end_value = &list.get_ref()[1];
                    return Err(self.error(
                        end_value.span(),
                        &join(key, "window[1]"),
                        format!(
                            "window ends at {}, after the end of the run (duration = {})",
                            show_duration(end),
                            show_duration(duration)
                        ),
                    ));
                }
                Some((start, end))
            }
            None => None,
        };
        let network = match &raw.network {
            Some(value) => u32::try_from(self.integer(value, key, "network", 0, MAX_NETWORK)?)
                .unwrap_or(defaults.network),
            None => defaults.network,
        };
        Ok(ExploreSpec {
            shift: self
                .opt_duration(&raw.shift, key, "shift", false)?
                .unwrap_or(defaults.shift),
            network,
            window,
            loss: fraction(&raw.loss, "loss", defaults.loss)?,
            delay: span(&raw.delay, "delay", false, defaults.delay)?,
            jitter: span(&raw.jitter, "jitter", false, defaults.jitter)?,
            duplicate: fraction(&raw.duplicate, "duplicate", defaults.duplicate)?,
            reorder: fraction(&raw.reorder, "reorder", defaults.reorder)?,
            // A fault that lasts no time is no fault.
            lasts: span(&raw.lasts, "lasts", true, defaults.lasts)?,
            partitions: match &raw.partitions {
                Some(value) => self.boolean(value, key, "partitions")?,
                None => defaults.partitions,
            },
        })
    }

    /// A range written `[min, max]`: two values, each read by `read` (given the value and its
    /// name, `name[0]` or `name[1]`), with `min <= max`.
    fn range<T: PartialOrd>(
        &self,
        list: &LeafList,
        prefix: &str,
        name: &str,
        read: impl Fn(&Leaf, &str) -> Res<T>,
    ) -> Res<(T, T)> {
        let key = join(prefix, name);
        let [min, max] = list.get_ref().as_slice() else {
            return Err(self.error(
                list.span(),
                &key,
                format!(
                    "{name} must be a range of two values, [min, max], found {} value{}",
                    list.get_ref().len(),
                    if list.get_ref().len() == 1 { "" } else { "s" }
                ),
            ));
        };
        let low = read(min, &format!("{name}[0]"))?;
        let high = read(max, &format!("{name}[1]"))?;
        if low > high {
            return Err(self.error(
                list.span(),
                &key,
                format!(
                    "{name}'s min ({}) is greater than its max ({})",
                    self.source(min),
                    self.source(max)
                ),
            ));
        }
        Ok((low, high))
    }

    /// A value as the file writes it.
    fn source(&self, value: &Leaf) -> String {
        self.text.get(value.span()).map_or_else(
            || crate::diagnostics::render(value.get_ref()),
            str::to_owned,
        )
    }
}
