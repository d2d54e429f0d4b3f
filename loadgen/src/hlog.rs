//! The HdrHistogram interval log a run writes as it goes (`--hlog`): the text format HdrHistogram's
//! Java, Python and Go tools read (`HistogramLogReader`, HistogramLogAnalyzer), one line per
//! metric per interval, tagged with the metric's name, each a compressed V2 histogram of
//! microseconds.
//!
//! The header gives `StartTime` and `BaseTime`, both the wall-clock time the run started, and
//! every interval's timestamp is seconds since then: readers add BaseTime to a timestamp to get
//! its Unix time, and subtract StartTime to place it on the run's axis.
//!
//! The run appends each interval's lines as it closes (`crate::appender`): a run that is killed
//! leaves every interval it closed. The SIP loop's metrics come from `Metrics::take_log`; the
//! `media_gap` line is the RTP worker's, written once the worker has handed its part of the
//! interval over ([`line`]), after the interval's other lines.

use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};

use crate::metrics::Metric;

/// The header of an interval log of a run that started at `start`: comments, then StartTime and
/// BaseTime.
pub fn header(comment: &str, start: SystemTime) -> Vec<u8> {
    let mut out = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    // Every metric's name is its tag. `media_gap` (each received stream's longest gap) is the
    // RTP worker's, in the interval the stream ended in: streams we sent and hear back when
    // they were stopped and fell silent, others at the end of the run.
    let tags: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
    // Writing into a Vec cannot fail.
    let _ = IntervalLogWriterBuilder::new()
        .add_comment("[Histogram log format version 1.3]")
        .add_comment(comment)
        .add_comment(&format!(
            "tags: {}; values in microseconds; timestamps in seconds since BaseTime",
            tags.join(", ")
        ))
        .with_start_time(start)
        .with_base_time(start)
        .begin_log_with(&mut out, &mut serializer);
    out
}

/// The line of `metric`'s histogram `h` for the interval from `start` (since the run began) of
/// `length`; nothing for an empty histogram, as `Metrics::take_log` leaves those out.
pub fn line(metric: Metric, h: &Histogram<u64>, start: Duration, length: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    if h.is_empty() {
        return out;
    }
    let mut serializer = V2DeflateSerializer::new();
    if let Ok(mut w) = IntervalLogWriterBuilder::new().begin_log_with(&mut out, &mut serializer) {
        // A histogram that fails to serialise only costs the log that line.
        let _ = w.write_histogram(h, start, length, Tag::new(metric.name()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use std::time::Duration;

    #[test]
    fn a_line_is_tagged_and_read_back_and_an_empty_histogram_has_none() {
        let mut h = crate::metrics::histogram();
        let _ = h.record_n(80_000, 3);
        let text = line(
            Metric::MediaGap,
            &h,
            Duration::from_secs(4),
            Duration::from_secs(1),
        );
        let s = String::from_utf8(text.clone()).expect("text");
        assert!(s.starts_with("Tag=media_gap,4.000,1.000,"), "{s}");
        let entries: Vec<LogEntry> = IntervalLogIterator::new(&text)
            .collect::<Result<_, _>>()
            .expect("parses");
        assert_eq!(entries.len(), 1, "{s}");
        let empty = crate::metrics::histogram();
        assert!(line(Metric::MediaGap, &empty, Duration::ZERO, Duration::ZERO).is_empty());
    }

    #[test]
    fn the_header_gives_start_and_base_time_and_the_crate_reads_it() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_680_000_250);
        let text = header("pbxlab load: test", start);
        let s = String::from_utf8(text.clone()).expect("text");
        assert!(
            s.contains("#[StartTime: 1764680000.250 (seconds since epoch)]\n"),
            "{s}"
        );
        assert!(
            s.contains("#[BaseTime: 1764680000.250 (seconds since epoch)]\n"),
            "{s}"
        );
        let entries: Vec<LogEntry> = IntervalLogIterator::new(&text)
            .collect::<Result<_, _>>()
            .expect("parses");
        let at = Duration::from_millis(1_764_680_000_250);
        assert_eq!(
            entries,
            [LogEntry::StartTime(at), LogEntry::BaseTime(at)],
            "{s}"
        );
    }
}
