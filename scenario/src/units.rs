//! Durations ("1.5s", "10m") and arrival rates ("55/s", "3/min") as scenario files write
//! them: their parsing, with errors as sentences, and their compact display in messages.

use std::time::Duration;

const DURATION_HELP: &str =
    "accepted units are ns, us, ms, s, m or min, h, d (e.g. \"1.5s\", \"10m\", \"2h\")";
const RATE_HELP: &str = "write NUMBER/UNIT with unit s, sec, m, min, h or hour (e.g. \"55/s\", \
     \"3/min\", \"200000/h\"), or a bare number meaning per second";
const NANOS_PER_SEC: u128 = 1_000_000_000;
/// Fraction digits beyond this cannot change a whole-nanosecond result even
/// with the largest unit (a day), so they are ignored rather than overflowing.
const MAX_FRACTION_DIGITS: usize = 18;

/// Parses a duration such as "1.5s", "10m", "2h" or "500ms". Every duration takes a unit, as
/// every latency in a threshold does: a bare number (seconds here, milliseconds in k6) would
/// mean one thing on one flag and another on the next. Only "0" may go without. The error is a
/// sentence for humans.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("it is empty; {DURATION_HELP}"));
    }
    if text.starts_with('-') {
        return Err("durations cannot be negative".to_owned());
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = unit.trim();
    let Some((whole, fraction)) = split_decimal(number) else {
        return Err(format!("it does not start with a number; {DURATION_HELP}"));
    };
    let nanos_per_unit: u128 = match unit {
        "" if number.bytes().all(|b| b == b'0' || b == b'.') => 1,
        "" => {
            return Err(format!(
                "a number needs a unit: \"{number}s\" for seconds, \"{number}ms\" for milliseconds; {DURATION_HELP}"
            ));
        }
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => NANOS_PER_SEC,
        "m" | "min" => 60 * NANOS_PER_SEC,
        "h" => 3_600 * NANOS_PER_SEC,
        "d" => 86_400 * NANOS_PER_SEC,
        other => return Err(format!("unknown unit \"{other}\"; {DURATION_HELP}")),
    };
    let too_large = || "it is too large".to_owned();
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    let fraction = &fraction[..fraction.len().min(MAX_FRACTION_DIGITS)];
    let fraction_nanos = if fraction.is_empty() {
        0
    } else {
        let digits: u128 = fraction.parse().map_err(|_| too_large())?;
        let scale = 10u128.pow(fraction.len() as u32);
        digits * nanos_per_unit / scale
    };
    let total = whole
        .checked_mul(nanos_per_unit)
        .and_then(|n| n.checked_add(fraction_nanos))
        .ok_or_else(too_large)?;
    let secs = u64::try_from(total / NANOS_PER_SEC).map_err(|_| too_large())?;
    // The remainder is below 10^9 and therefore always fits.
    let nanos = u32::try_from(total % NANOS_PER_SEC).map_err(|_| too_large())?;
    Ok(Duration::new(secs, nanos))
}

/// Splits "12.5" into ("12", "5"); `None` unless it is digits with at most one
/// dot and at least one digit overall.
fn split_decimal(number: &str) -> Option<(&str, &str)> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    (all_digits(whole) && all_digits(fraction) && !(whole.is_empty() && fraction.is_empty()))
        .then_some((whole, fraction))
}

/// Parses an arrival rate such as "55/s", "3/min", "200000/h" or a bare
/// number (per second) into events per second.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let (number, per) = match text.split_once('/') {
        Some((number, unit)) => {
            let seconds = match unit.trim() {
                "s" | "sec" => 1.0,
                "m" | "min" => 60.0,
                "h" | "hour" => 3_600.0,
                other => return Err(format!("unknown unit \"{other}\"; {RATE_HELP}")),
            };
            (number.trim(), seconds)
        }
        None => (text, 1.0),
    };
    // f64's own parser would also take "inf" and "NaN", which are not rates.
    let looks_numeric = number
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    let value: f64 = match number.parse() {
        Ok(value) if looks_numeric => value,
        _ => return Err(format!("\"{number}\" is not a number; {RATE_HELP}")),
    };
    if !value.is_finite() {
        return Err("it is too large".to_owned());
    }
    if value < 0.0 {
        return Err("rates cannot be negative".to_owned());
    }
    // Adding 0.0 turns a "-0" into +0.
    Ok(value / per + 0.0)
}

/// Renders a duration compactly for messages ("2h", "40m", "1.5s").
pub(crate) fn show_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 {
        format!("{}s", d.as_secs_f64())
    } else if secs != 0 && secs.is_multiple_of(3_600) {
        format!("{}h", secs / 3_600)
    } else if secs != 0 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = |text: &str| parse_duration(text).expect(text);
        assert_eq!(ok("1.5s"), Duration::from_millis(1_500));
        assert_eq!(ok("10m"), Duration::from_secs(600));
        assert_eq!(ok("10min"), Duration::from_secs(600));
        assert_eq!(ok("2h"), Duration::from_secs(7_200));
        assert_eq!(ok("1d"), Duration::from_secs(86_400));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("250us"), Duration::from_micros(250));
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok(" 45 s "), Duration::from_secs(45));
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok(".5h"), Duration::from_secs(1_800));
        assert_eq!(ok("0.1s"), Duration::from_millis(100));
        assert_eq!(ok("1.0000000001s"), Duration::new(1, 0));
        for bad in [
            "",
            "s",
            "10 parsecs",
            "-3s",
            "1.5",
            "30",
            "1..5s",
            "1e3s",
            "+3s",
            "3 s s",
            ".",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(
            parse_duration("10 parsecs")
                .unwrap_err()
                .contains("\"parsecs\"")
        );
        assert!(parse_duration("99999999999999999999999999d").is_err());
        assert!(parse_duration("999999999999999999999999999999999999999999s").is_err());
    }

    #[test]
    fn rates() {
        let ok = |text: &str| parse_rate(text).expect(text);
        assert_eq!(ok("55/s"), 55.0);
        assert_eq!(ok("55/sec"), 55.0);
        assert_eq!(ok("3/min"), 0.05);
        assert_eq!(ok("3/m"), 0.05);
        assert_eq!(ok("7200/h"), 2.0);
        assert_eq!(ok("7200/hour"), 2.0);
        assert_eq!(ok("0.05/s"), 0.05);
        assert_eq!(ok("12"), 12.0);
        assert_eq!(ok("0/s"), 0.0);
        assert_eq!(ok(" 10 / s "), 10.0);
        assert!(ok("-0/s").is_sign_positive());
        for bad in [
            "5/fortnight",
            "-3/s",
            "inf/s",
            "NaN",
            "1e999/s",
            "",
            "/s",
            "five/s",
            "5/",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
