//! `[slo]` and `[sizing]`: the targets a run must meet and the per-session hardware costs
//! the sizing report uses.

use super::{Bound, Checker, Res};
use crate::model::{SizingCosts, Slo, parse_codec};
use crate::raw::{Leaf, RawSizing, RawSlo, Tab};

const CODECS: &str = "g711, g729, opus";

impl Checker<'_> {
    pub(super) fn slo(&self, raw: Option<&Tab<RawSlo>>) -> Res<Slo> {
        let key = "slo";
        let Some(raw) = raw else {
            return Ok(Slo {
                blocking: None,
                queue_service_level: None,
                queue_abandoned: None,
                queue_asa_s: None,
                mos_p5: None,
            });
        };
        let raw = raw.get_ref();
        Ok(Slo {
            blocking: self.opt_number(&raw.blocking, key, "blocking", Bound::Fraction)?,
            queue_service_level: self.opt_number(
                &raw.queue_service_level,
                key,
                "queue_service_level",
                Bound::Fraction,
            )?,
            queue_abandoned: self.opt_number(
                &raw.queue_abandoned,
                key,
                "queue_abandoned",
                Bound::Fraction,
            )?,
            queue_asa_s: self
                .opt_duration(&raw.queue_asa, key, "queue_asa", false)?
                .map(|d| d.as_secs_f64()),
            mos_p5: self.opt_number(&raw.mos_p5, key, "mos_p5", Bound::Mos)?,
        })
    }

    pub(super) fn sizing(&self, raw: Option<&Tab<RawSizing>>) -> Res<SizingCosts> {
        let defaults = SizingCosts::default();
        let Some(raw) = raw else {
            return Ok(defaults);
        };
        let raw = raw.get_ref();
        let key = "sizing";
        let cost = |value: &Option<Leaf>, name: &str, default: f64| -> Res<f64> {
            Ok(self
                .opt_number(value, key, name, Bound::Positive)?
                .unwrap_or(default))
        };
        Ok(SizingCosts {
            core_ghz: cost(&raw.core_ghz, "core_ghz", defaults.core_ghz)?,
            target_cpu: self
                .opt_number(&raw.target_cpu, key, "target_cpu", Bound::PositiveFraction)?
                .unwrap_or(defaults.target_cpu),
            codec: self
                .opt_choice(&raw.codec, key, "codec", parse_codec, CODECS)?
                .unwrap_or(defaults.codec),
            media_calls_per_ghz: cost(
                &raw.media_calls_per_ghz,
                "media_calls_per_ghz",
                defaults.media_calls_per_ghz,
            )?,
            meeting_cores_per_participant: cost(
                &raw.meeting_cores_per_participant,
                "meeting_cores_per_participant",
                defaults.meeting_cores_per_participant,
            )?,
            ivr_sessions_per_ghz: cost(
                &raw.ivr_sessions_per_ghz,
                "ivr_sessions_per_ghz",
                defaults.ivr_sessions_per_ghz,
            )?,
            queue_sessions_per_ghz: cost(
                &raw.queue_sessions_per_ghz,
                "queue_sessions_per_ghz",
                defaults.queue_sessions_per_ghz,
            )?,
            im_users_per_core: cost(
                &raw.im_users_per_core,
                "im_users_per_core",
                defaults.im_users_per_core,
            )?,
            im_ram_mb_per_user: cost(
                &raw.im_ram_mb_per_user,
                "im_ram_mb_per_user",
                defaults.im_ram_mb_per_user,
            )?,
            im_kbps_per_user: cost(
                &raw.im_kbps_per_user,
                "im_kbps_per_user",
                defaults.im_kbps_per_user,
            )?,
            ram_gb_base: cost(&raw.ram_gb_base, "ram_gb_base", defaults.ram_gb_base)?,
            ram_mb_per_session: cost(
                &raw.ram_mb_per_session,
                "ram_mb_per_session",
                defaults.ram_mb_per_session,
            )?,
            disk_gb_base: cost(&raw.disk_gb_base, "disk_gb_base", defaults.disk_gb_base)?,
        })
    }
}
