//! Charts drawn by hand as inline SVG: line charts over time with axes, ticks, a legend and
//! marked moments, and interval charts (a value with its confidence interval against a target).
//! Every string that reaches the markup goes through [`esc`].

use std::fmt::Write as _;

/// Width and height of every chart, in CSS pixels, and the plot area's margins.
pub(crate) const WIDTH: f64 = 960.0;
pub(crate) const HEIGHT: f64 = 300.0;
pub(crate) const LEFT: f64 = 72.0;
pub(crate) const RIGHT: f64 = 24.0;
pub(crate) const TOP: f64 = 36.0;
pub(crate) const BOTTOM: f64 = 46.0;

/// Series colours: distinct, saturated, readable on white.
pub(crate) const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// Escapes text for HTML and XML, attributes included.
pub(crate) fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            // Control characters other than tab and newline are not allowed in XML at all.
            c if c.is_control() && c != '\t' && c != '\n' => o.push('\u{fffd}'),
            c => o.push(c),
        }
    }
    o
}

/// One line of a chart: its name in the legend, and its points in data units.
pub(crate) struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A moment marked on a chart's time axis: a vertical line with a label.
pub(crate) struct Mark {
    pub at: f64,
    pub label: String,
    /// Dashed, for what followed from a fault (its detection) rather than the fault itself.
    pub dashed: bool,
}

/// A line chart over time.
pub(crate) struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub marks: Vec<Mark>,
    /// A shaded span of the time axis with its label (a plan's warm-up).
    pub band: Option<(f64, f64, String)>,
    /// Where the time axis runs, when it should cover more than the data (the whole run).
    pub x_span: Option<(f64, f64)>,
    /// The y axis reaches at least this (a utilisation's 100 %).
    pub y_floor_max: f64,
    /// Steps (the value holds until the next point) rather than straight lines.
    pub steps: bool,
}

impl LineChart {
    pub(crate) fn new(title: &str, x_label: &str, y_label: &str) -> LineChart {
        LineChart {
            title: title.to_owned(),
            x_label: x_label.to_owned(),
            y_label: y_label.to_owned(),
            series: Vec::new(),
            marks: Vec::new(),
            band: None,
            x_span: None,
            y_floor_max: 0.0,
            steps: false,
        }
    }

    /// Whether any series has a point to draw.
    pub(crate) fn has_data(&self) -> bool {
        self.series.iter().any(|s| !s.points.is_empty())
    }

    pub(crate) fn render(&self) -> String {
        let finite = |v: f64| v.is_finite();
        let xs = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .chain(self.marks.iter().map(|m| m.at))
            .chain(self.x_span.iter().flat_map(|&(a, b)| [a, b]))
            .filter(|&v| finite(v));
        let (x_min, x_max) = min_max(xs).unwrap_or((0.0, 1.0));
        let ys = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .filter(|&v| finite(v))
            .chain([0.0, self.y_floor_max]);
        let (y_min, y_max) = min_max(ys).unwrap_or((0.0, 1.0));
        let x_axis = Axis::covering(x_min, x_max, 8);
        let y_axis = Axis::covering(y_min, y_max, 5);
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let px = |x: f64| LEFT + (x - x_axis.lo) / (x_axis.hi - x_axis.lo) * plot_w;
        let py = |y: f64| TOP + plot_h - (y - y_axis.lo) / (y_axis.hi - y_axis.lo) * plot_h;

        let names: Vec<&str> = self.series.iter().map(|s| s.name.as_str()).collect();
        let (legend, below) = legend(&names, &self.title);
        let height = HEIGHT + below;
        let mut o = String::new();
        let _ = write!(
            o,
            r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{title}" data-x-min="{}" data-x-max="{}" data-y-min="{}" data-y-max="{}">"#,
            x_axis.lo,
            x_axis.hi,
            y_axis.lo,
            y_axis.hi,
            title = esc(&self.title),
        );
        let _ = write!(
            o,
            r#"<text class="title" x="{LEFT}" y="20">{}</text>"#,
            esc(&self.title)
        );
        if let Some((a, b, label)) = &self.band {
            let (a, b) = (px(a.max(x_axis.lo)), px(b.min(x_axis.hi)));
            if b > a {
                let _ = write!(
                    o,
                    r#"<rect class="band" x="{a:.1}" y="{TOP}" width="{:.1}" height="{plot_h}"/><text class="band-label" x="{:.1}" y="{:.1}">{}</text>"#,
                    b - a,
                    a + 4.0,
                    TOP + 14.0,
                    esc(label)
                );
            }
        }
        // Grid and ticks.
        for &t in &y_axis.ticks {
            let y = py(t);
            let _ = write!(
                o,
                r#"<line class="grid" x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT + plot_w,
                LEFT - 6.0,
                y + 4.0,
                y_axis.label(t)
            );
        }
        for &t in &x_axis.ticks {
            let x = px(t);
            let _ = write!(
                o,
                r#"<line class="grid" x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}"/><text class="tick" x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                TOP + plot_h,
                TOP + plot_h + 16.0,
                x_axis.label(t)
            );
        }
        let _ = write!(
            o,
            r#"<rect class="frame" x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}"/>"#
        );
        let _ = write!(
            o,
            r#"<text class="axis" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + plot_w / 2.0,
            HEIGHT - 8.0,
            esc(&self.x_label)
        );
        let _ = write!(
            o,
            r#"<text class="axis" x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"#,
            TOP + plot_h / 2.0,
            TOP + plot_h / 2.0,
            esc(&self.y_label)
        );
        for m in &self.marks {
            if !m.at.is_finite() {
                continue;
            }
            let x = px(m.at);
            // Labels near the right edge go to the line's left, so they stay in the picture.
            let (label_x, anchor) = if x > LEFT + 0.8 * plot_w {
                (x - 3.0, "end")
            } else {
                (x + 3.0, "start")
            };
            let _ = write!(
                o,
                r#"<line class="{}" x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}"/><text class="mark-label" x="{label_x:.1}" y="{:.1}" text-anchor="{anchor}">{}</text>"#,
                if m.dashed { "mark detected" } else { "mark" },
                TOP + plot_h,
                if m.dashed { TOP + 26.0 } else { TOP + 12.0 },
                esc(&m.label)
            );
        }
        for (i, s) in self.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let mut points = String::new();
            let mut last: Option<(f64, f64)> = None;
            for &(x, y) in s.points.iter().filter(|p| finite(p.0) && finite(p.1)) {
                if let (true, Some((_, ly))) = (self.steps, last) {
                    let _ = write!(points, "{:.1},{:.1} ", px(x), py(ly));
                }
                let _ = write!(points, "{:.1},{:.1} ", px(x), py(y));
                last = Some((x, y));
            }
            // The last step holds to the end of the run.
            if let (true, Some((x, y)), Some((_, end))) = (self.steps, last, self.x_span)
                && end > x
            {
                let _ = write!(points, "{:.1},{:.1} ", px(end), py(y));
            }
            let _ = write!(
                o,
                r#"<polyline class="series" data-series="{}" data-points="{}" fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                esc(&s.name),
                s.points.len(),
                points.trim_end()
            );
            // A lone point draws no line: show it as a dot.
            if let [(x, y)] = s.points[..] {
                let _ = write!(
                    o,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                    px(x),
                    py(y)
                );
            }
        }
        o.push_str(&legend);
        o.push_str("</svg>");
        o
    }
}

/// The legend: a swatch and a name per series, along the top right when it fits beside the
/// title, else in rows under the chart. Returns its markup and the height it adds below.
fn legend(names: &[&str], title: &str) -> (String, f64) {
    // Roughly 6.5 px a character at the legend's size, 8 at the title's.
    let widths: Vec<f64> = names
        .iter()
        .map(|n| 22.0 + 6.5 * n.chars().count() as f64)
        .collect();
    let title_end = LEFT + 8.0 * title.chars().count() as f64 + 16.0;
    let mut o = String::new();
    let item = |o: &mut String, i: usize, x: f64, y: f64| {
        let _ = write!(
            o,
            r#"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text class="legend" x="{:.1}" y="{y:.1}">{}</text>"#,
            y - 10.0,
            COLOURS[i % COLOURS.len()],
            x + 16.0,
            esc(names[i])
        );
    };
    let total: f64 = widths.iter().sum();
    if WIDTH - RIGHT - total >= title_end {
        let mut x = WIDTH - RIGHT - total;
        for (i, w) in widths.iter().enumerate() {
            item(&mut o, i, x, 21.0);
            x += w;
        }
        return (o, 0.0);
    }
    let (mut x, mut y) = (LEFT, HEIGHT + 8.0);
    for (i, w) in widths.iter().enumerate() {
        if x + w > WIDTH - RIGHT && x > LEFT {
            x = LEFT;
            y += 18.0;
        }
        item(&mut o, i, x, y);
        x += w;
    }
    (o, y - HEIGHT + 8.0)
}

/// One row of an interval chart: a value, the interval around it and the target it must not
/// exceed.
pub(crate) struct Interval {
    pub label: String,
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
    pub target: Option<f64>,
}

/// Horizontal bars of `value` with whiskers from `lo` to `hi` and each row's target as a red
/// tick: how blocking compares with its SLO, with the simulation's uncertainty.
pub(crate) fn interval_chart(
    title: &str,
    x_label: &str,
    rows: &[Interval],
    percent: bool,
) -> String {
    let row_h = 28.0;
    // Room for the legend between the title and the plot.
    let top = TOP + 12.0;
    let height = top + BOTTOM + row_h * rows.len().max(1) as f64;
    let left = 150.0;
    let plot_w = WIDTH - left - RIGHT;
    let plot_h = row_h * rows.len().max(1) as f64;
    let hi = rows
        .iter()
        .flat_map(|r| [r.value, r.hi, r.target.unwrap_or(0.0)])
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let mut axis = Axis::covering(0.0, if hi > 0.0 { hi } else { 0.01 }, 6);
    axis.percent = percent;
    let px = |x: f64| left + (x - axis.lo) / (axis.hi - axis.lo) * plot_w;
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{t}" data-x-min="{}" data-x-max="{}"><text class="title" x="{left}" y="20">{t}</text>"#,
        axis.lo,
        axis.hi,
        t = esc(title)
    );
    for &t in &axis.ticks {
        let x = px(t);
        let _ = write!(
            o,
            r#"<line class="grid" x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}"/><text class="tick" x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            top + plot_h,
            top + plot_h + 16.0,
            axis.label(t)
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let mid = y + row_h / 2.0;
        let value = if r.value.is_finite() { r.value } else { 0.0 };
        let over = r.target.is_some_and(|t| value > t);
        let _ = write!(
            o,
            r#"<text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text><rect class="{}" x="{left}" y="{:.1}" width="{:.1}" height="{:.1}"/>"#,
            left - 8.0,
            mid + 4.0,
            esc(&r.label),
            if over { "bar over" } else { "bar" },
            y + 6.0,
            (px(value) - left).max(0.0),
            row_h - 12.0,
        );
        if r.lo.is_finite() && r.hi.is_finite() && r.hi > r.lo {
            let (a, b) = (px(r.lo.max(0.0)), px(r.hi));
            let _ = write!(
                o,
                r#"<line class="whisker" x1="{a:.1}" y1="{mid:.1}" x2="{b:.1}" y2="{mid:.1}"/><line class="whisker" x1="{a:.1}" y1="{:.1}" x2="{a:.1}" y2="{:.1}"/><line class="whisker" x1="{b:.1}" y1="{:.1}" x2="{b:.1}" y2="{:.1}"/>"#,
                mid - 6.0,
                mid + 6.0,
                mid - 6.0,
                mid + 6.0
            );
        }
        if let Some(t) = r.target.filter(|t| t.is_finite()) {
            let x = px(t);
            let _ = write!(
                o,
                r#"<line class="target" x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}"/>"#,
                y + 2.0,
                y + row_h - 2.0
            );
        }
    }
    let _ = write!(
        o,
        r#"<rect class="frame" x="{left}" y="{top}" width="{plot_w}" height="{plot_h}"/><text class="axis" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        left + plot_w / 2.0,
        height - 8.0,
        esc(x_label)
    );
    // The legend under the title, where a long title cannot run into it.
    let _ = write!(
        o,
        r#"<rect class="bar" x="{left}" y="25" width="12" height="12"/><text class="legend" x="{:.1}" y="35">value</text><line class="whisker" x1="{:.1}" y1="31" x2="{:.1}" y2="31"/><text class="legend" x="{:.1}" y="35">95% interval</text><line class="target" x1="{:.1}" y1="24" x2="{:.1}" y2="38"/><text class="legend" x="{:.1}" y="35">target</text></svg>"#,
        left + 16.0,
        left + 70.0,
        left + 90.0,
        left + 96.0,
        left + 190.0,
        left + 190.0,
        left + 198.0,
    );
    o
}

/// Vertical bars of named values on a fixed scale (the MOS figures from 1 to 5).
pub(crate) fn bar_chart(
    title: &str,
    y_label: &str,
    bars: &[(String, f64)],
    lo: f64,
    hi: f64,
) -> String {
    let axis = Axis::covering(lo, hi, 4);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let py = |y: f64| {
        TOP + plot_h - (y.clamp(axis.lo, axis.hi) - axis.lo) / (axis.hi - axis.lo) * plot_h
    };
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{t}" data-y-min="{}" data-y-max="{}"><text class="title" x="{LEFT}" y="20">{t}</text>"#,
        axis.lo,
        axis.hi,
        t = esc(title)
    );
    for &t in &axis.ticks {
        let y = py(t);
        let _ = write!(
            o,
            r#"<line class="grid" x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            axis.label(t)
        );
    }
    let slot = plot_w / bars.len().max(1) as f64;
    for (i, (label, v)) in bars.iter().enumerate() {
        let x = LEFT + slot * i as f64 + slot * 0.2;
        let y = py(*v);
        let _ = write!(
            o,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text class="tick" x="{:.1}" y="{:.1}" text-anchor="middle">{v:.2}</text>"#,
            slot * 0.6,
            (TOP + plot_h - y).max(0.0),
            COLOURS[0],
            x + slot * 0.3,
            TOP + plot_h + 16.0,
            esc(label),
            x + slot * 0.3,
            y - 4.0,
        );
    }
    let _ = write!(
        o,
        r#"<rect class="frame" x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}"/><text class="axis" x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text></svg>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        esc(y_label)
    );
    o
}

fn min_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// An axis from `lo` to `hi` at round numbers, with its ticks.
pub(crate) struct Axis {
    pub lo: f64,
    pub hi: f64,
    pub step: f64,
    pub ticks: Vec<f64>,
    /// Labels as percentages of the value (0.05 as 5%).
    pub percent: bool,
}

impl Axis {
    /// The smallest axis at multiples of a round step (1, 2 or 5 times a power of ten) that
    /// covers `lo..=hi`, with about `n` steps.
    pub(crate) fn covering(lo: f64, hi: f64, n: u32) -> Axis {
        let (lo, hi) = if hi > lo {
            (lo, hi)
        } else if lo == 0.0 {
            (0.0, 1.0)
        } else {
            (lo - lo.abs() * 0.5, hi + hi.abs() * 0.5)
        };
        let raw = (hi - lo) / f64::from(n.max(1));
        let magnitude = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 2.5, 5.0, 10.0]
            .iter()
            .map(|f| f * magnitude)
            .find(|&s| s >= raw)
            .unwrap_or(10.0 * magnitude);
        let first = (lo / step).floor();
        let last = (hi / step).ceil();
        let ticks = (0..=((last - first) as u32).min(100))
            .map(|i| (first + f64::from(i)) * step)
            .collect();
        Axis {
            lo: first * step,
            hi: last * step,
            step,
            ticks,
            percent: false,
        }
    }

    /// A tick's label with as many decimals as the step needs.
    pub(crate) fn label(&self, v: f64) -> String {
        let (v, step) = if self.percent {
            (v * 100.0, self.step * 100.0)
        } else {
            (v, self.step)
        };
        let decimals = (-step.log10().floor()).max(0.0) as usize
            + usize::from(
                // 2.5 steps need one more.
                ((step / 10f64.powf(step.log10().floor())) - 2.5).abs() < 1e-9,
            );
        let v = if v.abs() < step * 1e-9 { 0.0 } else { v };
        format!("{v:.decimals$}{}", if self.percent { "%" } else { "" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_cover_their_range_at_round_steps() {
        let a = Axis::covering(0.0, 87.0, 5);
        assert_eq!((a.lo, a.hi, a.step), (0.0, 100.0, 20.0));
        assert_eq!(a.ticks, [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        let a = Axis::covering(3.0, 41.7, 8);
        assert!(a.lo <= 3.0 && a.hi >= 41.7, "{} {}", a.lo, a.hi);
        assert_eq!(a.label(5.0), "5");
        let a = Axis::covering(0.0, 0.0031, 5);
        assert!(a.hi >= 0.0031);
        assert_eq!(a.label(a.ticks[1]), format!("{}", a.ticks[1]));
        let mut p = Axis::covering(0.0, 0.012, 6);
        p.percent = true;
        assert_eq!(p.label(0.01), "1.0%");
        // A flat or empty range still makes an axis.
        let a = Axis::covering(7.0, 7.0, 5);
        assert!(a.lo < 7.0 && a.hi > 7.0);
    }

    #[test]
    fn a_legend_too_long_for_the_top_goes_in_rows_under_the_chart() {
        let chart = |n: usize| {
            let mut c = LineChart::new("media: sessions", "time (s)", "sessions");
            for i in 0..n {
                c.series.push(Series {
                    name: format!("media-server-{i}"),
                    points: vec![(0.0, 1.0), (1.0, 2.0)],
                });
            }
            let svg = c.render();
            let all = crate::html::check::elements(&svg).expect("well-formed");
            let height: f64 = all[0]
                .attr("height")
                .and_then(|h| h.parse().ok())
                .expect("height");
            let swatches: Vec<(f64, f64)> = all
                .iter()
                .filter(|e| e.name == "rect" && e.attr("width") == Some("12"))
                .filter_map(|e| Some((e.attr("x")?.parse().ok()?, e.attr("y")?.parse().ok()?)))
                .collect();
            (height, swatches)
        };
        let (height, swatches) = chart(3);
        assert_eq!(height, HEIGHT);
        assert!(swatches.iter().all(|&(_, y)| y < TOP), "{swatches:?}");
        let (height, swatches) = chart(14);
        assert!(height > HEIGHT + 30.0, "{height}");
        assert_eq!(swatches.len(), 14);
        for (x, y) in swatches {
            assert!(x >= LEFT && x + 130.0 <= WIDTH, "{x}");
            assert!(y > HEIGHT - 10.0 && y < height, "{y} of {height}");
        }
    }

    #[test]
    fn escaping_leaves_no_markup() {
        assert_eq!(
            esc("<script>alert('x & \"y\"')</script>\u{1}"),
            "&lt;script&gt;alert(&#39;x &amp; &quot;y&quot;&#39;)&lt;/script&gt;\u{fffd}"
        );
    }
}
