//! `[traffic]`: calls, IVR, queues, meetings and registrations, their rates and holding-time
//! distributions, and the pools each kind of traffic needs.

use std::ops::Range;
use std::time::Duration;

use pbxlab_balancer::Role;

use super::{Bound, Checker, Res, Table};
use crate::diagnostics::join;
use crate::model::{
    CallTraffic, HoldDist, ImTraffic, IvrTraffic, MeetingTraffic, PoolSpec, QueueTraffic,
    RegistrationTraffic, Traffic,
};
use crate::raw::{
    Leaf, LeafList, RawCalls, RawIm, RawIvr, RawMeetings, RawQueue, RawRegistrations, RawTraffic,
    Tab,
};

const DISTS: &str = "exponential, lognormal, fixed";

/// The shape of a holding-time distribution, before its parameters are known.
#[derive(Clone, Copy, PartialEq)]
enum DistKind {
    Exponential,
    LogNormal,
    Fixed,
}

fn parse_dist_kind(text: &str) -> Option<DistKind> {
    match text {
        "exponential" => Some(DistKind::Exponential),
        "lognormal" => Some(DistKind::LogNormal),
        "fixed" => Some(DistKind::Fixed),
        _ => None,
    }
}

impl Checker<'_> {
    /// Fails unless some pool serves `role`; traffic for a role nobody serves
    /// would be blocked wholesale, which is never what the author meant.
    pub(super) fn need_pool(
        &self,
        pools: &[PoolSpec],
        role: Role,
        span: Range<usize>,
        key: &str,
        what: &str,
    ) -> Res<()> {
        if pools.iter().any(|pool| pool.role == role) {
            return Ok(());
        }
        let role = role.name();
        Err(self.error(
            span,
            key,
            format!("{what} needs a {role} pool, but no [[pool]] has role = \"{role}\""),
        ))
    }

    /// A holding-time distribution from its `<name>`, `<name>_dist` and
    /// `<name>_sigma` keys.
    fn hold(
        &mut self,
        table: &Table<'_>,
        name: &str,
        mean: &Option<Leaf>,
        dist: &Option<Leaf>,
        sigma: &Option<Leaf>,
    ) -> Res<HoldDist> {
        let prefix = table.key;
        let mean_value = self.required(mean, table, name, "a mean time such as \"180s\"")?;
        let mean_s = self.duration(mean_value, prefix, name, true)?.as_secs_f64();
        let dist_name = format!("{name}_dist");
        let sigma_name = format!("{name}_sigma");
        let kind = self
            .opt_choice(dist, prefix, &dist_name, parse_dist_kind, DISTS)?
            .unwrap_or(DistKind::Exponential);
        let given_sigma = self.opt_number(sigma, prefix, &sigma_name, Bound::Positive)?;
        Ok(match kind {
            DistKind::Exponential => HoldDist::Exponential { mean_s },
            DistKind::LogNormal => HoldDist::LogNormal {
                mean_s,
                sigma: given_sigma.unwrap_or(1.0),
            },
            DistKind::Fixed => HoldDist::Fixed { s: mean_s },
        })
    }

    pub(super) fn traffic(
        &mut self,
        raw: Option<&Tab<RawTraffic>>,
        pools: &[PoolSpec],
    ) -> Res<Traffic> {
        let mut traffic = Traffic {
            calls: None,
            ivr: None,
            queue: None,
            meetings: None,
            registrations: None,
            im: None,
        };
        let Some(raw) = raw else {
            return Ok(traffic);
        };
        let raw = raw.get_ref();
        if let Some(calls) = &raw.calls {
            traffic.calls = Some(self.calls(calls, pools)?);
        }
        if let Some(ivr) = &raw.ivr {
            traffic.ivr = Some(self.ivr(ivr, pools, raw.queue.is_some())?);
        }
        if let Some(queue) = &raw.queue {
            let fed_by_ivr = traffic.ivr.as_ref().is_some_and(|ivr| ivr.then_queue > 0.0);
            traffic.queue = Some(self.queue(queue, pools, fed_by_ivr)?);
        }
        if let Some(meetings) = &raw.meetings {
            traffic.meetings = Some(self.meetings(meetings, pools)?);
        }
        if let Some(registrations) = &raw.registrations {
            traffic.registrations = Some(self.registrations(registrations)?);
        }
        if let Some(im) = &raw.im {
            traffic.im = Some(self.im(im, traffic.registrations.as_ref())?);
        }
        Ok(traffic)
    }

    fn calls(&mut self, entry: &Tab<RawCalls>, pools: &[PoolSpec]) -> Res<CallTraffic> {
        let table = Table {
            span: entry.span(),
            key: "traffic.calls",
        };
        self.need_pool(pools, Role::Media, entry.span(), table.key, "call traffic")?;
        let raw = entry.get_ref();
        let rate_value =
            self.required(&raw.rate, &table, "rate", "calls per time, e.g. \"55/s\"")?;
        let rate_per_s = self.rate(rate_value, table.key, "rate")?;
        let hold = self.hold(&table, "hold", &raw.hold, &raw.hold_dist, &raw.hold_sigma)?;
        let profile = match &raw.profile {
            Some(list) => Some(self.profile(list, table.key)?),
            None => None,
        };
        Ok(CallTraffic {
            rate_per_s,
            hold,
            profile,
        })
    }

    fn profile(&self, list: &LeafList, prefix: &str) -> Res<[f64; 24]> {
        let items = list.get_ref();
        if items.len() != 24 {
            return Err(self.error(
                list.span(),
                &join(prefix, "profile"),
                format!(
                    "profile must have exactly 24 hourly multipliers, found {}",
                    items.len()
                ),
            ));
        }
        let mut hours = [0.0; 24];
        for ((i, value), slot) in items.iter().enumerate().zip(hours.iter_mut()) {
            *slot = self.number(value, prefix, &format!("profile[{i}]"), Bound::NonNegative)?;
        }
        if !hours.iter().any(|&x| x > 0.0) {
            return Err(self.error(
                list.span(),
                &join(prefix, "profile"),
                "profile must have at least one hour above 0, found all 0".to_owned(),
            ));
        }
        Ok(hours)
    }

    fn ivr(
        &mut self,
        entry: &Tab<RawIvr>,
        pools: &[PoolSpec],
        has_queue_traffic: bool,
    ) -> Res<IvrTraffic> {
        let table = Table {
            span: entry.span(),
            key: "traffic.ivr",
        };
        self.need_pool(pools, Role::Ivr, entry.span(), table.key, "IVR traffic")?;
        let raw = entry.get_ref();
        let rate_value =
            self.required(&raw.rate, &table, "rate", "sessions per time, e.g. \"5/s\"")?;
        let rate_per_s = self.rate(rate_value, table.key, "rate")?;
        let hold = self.hold(&table, "hold", &raw.hold, &raw.hold_dist, &raw.hold_sigma)?;
        let then_queue = self
            .opt_number(&raw.then_queue, table.key, "then_queue", Bound::Fraction)?
            .unwrap_or(0.0);
        if then_queue > 0.0
            && let Some(value) = &raw.then_queue
        {
            self.need_pool(
                pools,
                Role::Queue,
                value.span(),
                "traffic.ivr.then_queue",
                "transferring IVR callers into a queue",
            )?;
            // Transferred callers are served by the queues' agents; without them they would
            // vanish from the run unnoticed.
            if !has_queue_traffic {
                return Err(self.error(
                    value.span(),
                    "traffic.ivr.then_queue",
                    "transferring IVR callers into a queue needs a [traffic.queue] table \
                     (its agents and handle time serve them); add one with rate = \"0/s\" \
                     if callers only arrive from the IVR"
                        .to_owned(),
                ));
            }
        }
        Ok(IvrTraffic {
            rate_per_s,
            hold,
            then_queue,
        })
    }

    fn queue(
        &mut self,
        entry: &Tab<RawQueue>,
        pools: &[PoolSpec],
        fed_by_ivr: bool,
    ) -> Res<QueueTraffic> {
        let table = Table {
            span: entry.span(),
            key: "traffic.queue",
        };
        self.need_pool(pools, Role::Queue, entry.span(), table.key, "queue traffic")?;
        let raw = entry.get_ref();
        let rate_value = self.required(
            &raw.rate,
            &table,
            "rate",
            "callers per time, e.g. \"5/s\" (\"0/s\" if only the IVR feeds the queues)",
        )?;
        let rate_per_s = self.rate(rate_value, table.key, "rate")?;
        let queues = self.opt_count(&raw.queues, table.key, "queues", 1, 1)?;
        let agents_value = self.required(&raw.agents, &table, "agents", "agents per queue")?;
        let agents = self.count(agents_value, table.key, "agents", 1)?;
        let handle = self.hold(
            &table,
            "handle",
            &raw.handle,
            &raw.handle_dist,
            &raw.handle_sigma,
        )?;
        let patience_s = self
            .opt_duration(&raw.patience, table.key, "patience", true)?
            .map(|d| d.as_secs_f64());
        let service_level_s = self
            .opt_duration(&raw.service_level, table.key, "service_level", false)?
            .unwrap_or(Duration::from_secs(20))
            .as_secs_f64();
        if rate_per_s == 0.0 && !fed_by_ivr {
            self.warn(
                rate_value.span(),
                "traffic.queue.rate",
                "the queues get no callers: rate is 0 and no IVR traffic has then_queue > 0"
                    .to_owned(),
            );
        }
        Ok(QueueTraffic {
            rate_per_s,
            queues,
            agents,
            handle,
            patience_s,
            service_level_s,
        })
    }

    fn meetings(&mut self, entry: &Tab<RawMeetings>, pools: &[PoolSpec]) -> Res<MeetingTraffic> {
        let table = Table {
            span: entry.span(),
            key: "traffic.meetings",
        };
        self.need_pool(
            pools,
            Role::Meeting,
            entry.span(),
            table.key,
            "meeting traffic",
        )?;
        let raw = entry.get_ref();
        let rate_value = self.required(
            &raw.rate,
            &table,
            "rate",
            "meetings per time, e.g. \"0.05/s\"",
        )?;
        let rate_per_s = self.rate(rate_value, table.key, "rate")?;
        let participants_value = self.required(
            &raw.participants,
            &table,
            "participants",
            "mean participants per meeting, at least 1",
        )?;
        let participants_mean = self.number(
            participants_value,
            table.key,
            "participants",
            Bound::AtLeastOne,
        )?;
        let duration = self.hold(
            &table,
            "duration",
            &raw.duration,
            &raw.duration_dist,
            &raw.duration_sigma,
        )?;
        Ok(MeetingTraffic {
            rate_per_s,
            participants_mean,
            duration,
        })
    }

    fn registrations(&self, entry: &Tab<RawRegistrations>) -> Res<RegistrationTraffic> {
        let table = Table {
            span: entry.span(),
            key: "traffic.registrations",
        };
        let raw = entry.get_ref();
        let users_value =
            self.required(&raw.users, &table, "users", "number of users, at least 1")?;
        let users = self.count(users_value, table.key, "users", 1)?;
        let expires = self
            .opt_duration(&raw.expires, table.key, "expires", true)?
            .unwrap_or(Duration::from_secs(3_600));
        let first_user = self.opt_count(&raw.first_user, table.key, "first_user", 0, 1_000)?;
        if first_user.checked_add(users.saturating_sub(1)).is_none() {
            let span = raw
                .first_user
                .as_ref()
                .map_or(users_value.span(), |v| v.span());
            return Err(self.error(
                span,
                "traffic.registrations.first_user",
                format!(
                    "first_user + users - 1 must fit in 32 bits (at most {}), found {first_user} + {users} - 1",
                    u32::MAX
                ),
            ));
        }
        Ok(RegistrationTraffic {
            users,
            expires,
            first_user,
        })
    }

    /// `[traffic.im]`: its users are the registered ones, so it needs
    /// `[traffic.registrations]`.
    fn im(
        &self,
        entry: &Tab<RawIm>,
        registrations: Option<&RegistrationTraffic>,
    ) -> Res<ImTraffic> {
        let key = "traffic.im";
        let raw = entry.get_ref();
        if registrations.is_none() {
            return Err(self.error(
                entry.span(),
                key,
                "[traffic.im] needs [traffic.registrations]: its users are the registered ones"
                    .into(),
            ));
        }
        let per_hour = |value: &Option<Leaf>, name: &str, default: f64| {
            Ok::<_, super::ScenarioError>(
                self.opt_number(value, key, name, Bound::NonNegative)?
                    .unwrap_or(default),
            )
        };
        let messages_per_user_hour =
            per_hour(&raw.messages_per_user_hour, "messages_per_user_hour", 6.0)?;
        let presence_per_user_hour =
            per_hour(&raw.presence_per_user_hour, "presence_per_user_hour", 2.0)?;
        let attachments_per_user_hour = per_hour(
            &raw.attachments_per_user_hour,
            "attachments_per_user_hour",
            0.0,
        )?;
        let message_bytes = self.opt_count(&raw.message_bytes, key, "message_bytes", 1, 160)?;
        if message_bytes > ImTraffic::MAX_MESSAGE_BYTES {
            let span = raw
                .message_bytes
                .as_ref()
                .map_or(entry.span(), |v| v.span());
            return Err(self.error(
                span,
                "traffic.im.message_bytes",
                format!(
                    "message_bytes must be at most {} (RFC 3428: a MESSAGE over UDP stays under 1300 bytes), found {message_bytes}",
                    ImTraffic::MAX_MESSAGE_BYTES
                ),
            ));
        }
        let buddies = self.opt_count(&raw.buddies, key, "buddies", 0, 10)?;
        let attachment_bytes = u64::from(self.opt_count(
            &raw.attachment_bytes,
            key,
            "attachment_bytes",
            1,
            1_000_000,
        )?);
        Ok(ImTraffic {
            messages_per_user_hour,
            message_bytes,
            buddies,
            presence_per_user_hour,
            attachments_per_user_hour,
            attachment_bytes,
        })
    }
}
