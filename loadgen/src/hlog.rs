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
//! leaves every interval it closed.

use std::time::SystemTime;

use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;

use crate::metrics::Metric;

/// The header of an interval log of a run that started at `start`: comments, then StartTime and
/// BaseTime.
pub fn header(comment: &str, start: SystemTime) -> Vec<u8> {
    let mut out = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
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

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use std::time::Duration;

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
