//! A job type's last hour as an inline SVG chart: attempts per minute as
//! bars (succeeded below, failed above), dead letters as dots, both on the
//! left scale; the p50 and p95 run times as lines on the right scale.
//! Each minute with activity has a `<title>` with its numbers (the
//! browser's hover text), the chart one with the hour's totals.
//!
//! No script and no `style` attribute (colours are presentation
//! attributes): it passes the console's Content-Security-Policy.

use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qjob::admin::{JobHistory, MinuteView};

use crate::html::escape;

/// How big a chart is drawn.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Size {
    /// One of several on the overview, headed by the job's name.
    Small,
    /// The job page's.
    Large,
}

const SUCCEEDED: &str = "#1e7a3c";
const FAILED: &str = "#d08a1c";
const DEAD: &str = "#b3261e";
const P50: &str = "#2f5bd3";
const P95: &str = "#7b3fc4";
const AXIS: &str = "#dde1ea";
const LABEL: &str = "#6b7385";

/// The chart's frame: the SVG's size and the plot area inside it.
struct Frame {
    width: f64,
    height: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    font: f64,
}

impl Frame {
    fn of(size: Size) -> Self {
        match size {
            Size::Small => Self {
                width: 320.0,
                height: 120.0,
                left: 30.0,
                right: 282.0,
                top: 20.0,
                bottom: 104.0,
                font: 9.0,
            },
            Size::Large => Self {
                width: 720.0,
                height: 220.0,
                left: 40.0,
                right: 664.0,
                top: 24.0,
                bottom: 200.0,
                font: 11.0,
            },
        }
    }

    /// The width of one minute.
    fn step(&self, minutes: usize) -> f64 {
        (self.right - self.left) / minutes.max(1) as f64
    }

    /// The height of `value` on a scale up to `max`.
    fn y(&self, value: f64, max: f64) -> f64 {
        self.bottom - value / max * (self.bottom - self.top)
    }
}

/// The overview's section: a small chart per job type, each a link
/// (`link(job)`) to its page; nothing without job types.
pub(crate) fn overview(histories: &[JobHistory], link: impl Fn(&str) -> String) -> String {
    if histories.is_empty() {
        return String::new();
    }
    let mut html = String::from(r#"<h2>The last hour</h2><p class="charts">"#);
    for history in histories {
        let _ = write!(
            html,
            r#"<a href="{}">{}</a> "#,
            escape(&link(&history.job)),
            last_hour(history, Size::Small)
        );
    }
    html.push_str("</p>");
    html
}

/// `history` as an inline `<svg>`.
pub(crate) fn last_hour(history: &JobHistory, size: Size) -> String {
    let frame = Frame::of(size);
    let minutes = &history.minutes;
    let step = frame.step(minutes.len());
    let most = minutes
        .iter()
        .map(|m| (m.succeeded + m.failed).max(m.dead_lettered))
        .max()
        .unwrap_or(0);
    let count_max = nice(most.max(1) as f64);
    let slowest = minutes
        .iter()
        .filter_map(|m| m.p95.or(m.p50))
        .max()
        .unwrap_or_default();
    let time_max = nice((slowest.as_micros() as f64).max(1000.0));
    let summary = format!(
        "{}: the last hour, {} succeeded, {} failed, {} dead-lettered",
        history.job,
        history.succeeded(),
        history.failed(),
        history.dead_lettered()
    );
    let mut svg = String::with_capacity(8192);
    let _ = write!(
        svg,
        r#"<svg class="history" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" font-family="system-ui, sans-serif" font-size="{font}"><title>{summary}</title>"#,
        w = frame.width,
        h = frame.height,
        font = frame.font,
        summary = escape(&summary),
    );
    heading(&mut svg, &frame, history, size);
    axes(&mut svg, &frame, count_max, time_max, minutes.len());
    for (i, minute) in minutes.iter().enumerate() {
        let x = frame.left + i as f64 * step;
        let width = (step - 1.0).max(0.5);
        let mut base = frame.bottom;
        for (count, colour) in [(minute.succeeded, SUCCEEDED), (minute.failed, FAILED)] {
            if count == 0 {
                continue;
            }
            let top = frame.y(count as f64, count_max) - (frame.bottom - base);
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{top:.1}" width="{width:.1}" height="{height:.1}" fill="{colour}"/>"#,
                height = base - top,
            );
            base = top;
        }
        if minute.dead_lettered > 0 {
            let _ = write!(
                svg,
                r##"<circle cx="{cx:.1}" cy="{cy:.1}" r="2.5" fill="{DEAD}" stroke="#fff" stroke-width="0.75"/>"##,
                cx = x + step / 2.0,
                cy = frame.y(minute.dead_lettered as f64, count_max),
            );
        }
    }
    for (colour, dashed, pick) in [
        (
            P50,
            false,
            (|m: &MinuteView| m.p50) as fn(&MinuteView) -> Option<Duration>,
        ),
        (P95, true, |m: &MinuteView| m.p95),
    ] {
        line(&mut svg, &frame, minutes, time_max, colour, dashed, pick);
    }
    // The hover areas last, above the rest.
    for (i, minute) in minutes.iter().enumerate().filter(|(_, m)| m.is_active()) {
        let _ = write!(
            svg,
            r##"<rect x="{x:.1}" y="{y:.1}" width="{step:.1}" height="{h:.1}" fill="#000" fill-opacity="0"><title>{title}</title></rect>"##,
            x = frame.left + i as f64 * step,
            y = frame.top,
            h = frame.bottom - frame.top,
            title = escape(&minute_title(minute)),
        );
    }
    if !minutes.iter().any(MinuteView::is_active) {
        let _ = write!(
            svg,
            r#"<text x="{x:.1}" y="{y:.1}" text-anchor="middle" fill="{LABEL}">nothing settled in the last hour</text>"#,
            x = (frame.left + frame.right) / 2.0,
            y = (frame.top + frame.bottom) / 2.0,
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The job's name (small charts) and the legend.
fn heading(svg: &mut String, frame: &Frame, history: &JobHistory, size: Size) {
    let baseline = frame.top - 8.0;
    if size == Size::Small {
        let name: String = if history.job.chars().count() > 24 {
            let cut: String = history.job.chars().take(23).collect();
            format!("{cut}…")
        } else {
            history.job.clone()
        };
        let _ = write!(
            svg,
            r#"<text x="0" y="{baseline:.1}" font-weight="600" fill="currentColor">{}</text>"#,
            escape(&name)
        );
    }
    // Swatches and labels, right-aligned: a square for a count, a stroke
    // for a run time (dashed for p95).
    let legend = [
        ("ok", SUCCEEDED, "succeeded", Mark::Square),
        ("failed", FAILED, "failed", Mark::Square),
        ("dead", DEAD, "dead-lettered", Mark::Dot),
        ("p50", P50, "p50 run time (right scale)", Mark::Line(false)),
        ("p95", P95, "p95 run time (right scale)", Mark::Line(true)),
    ];
    let mark = frame.font * 0.8;
    let width = |label: &str| mark + 3.0 + frame.font * 0.6 * label.len() as f64 + 8.0;
    let mut x = frame.width - legend.iter().map(|(l, ..)| width(l)).sum::<f64>() + 8.0;
    let middle = baseline - frame.font * 0.35;
    for (label, colour, meaning, kind) in legend {
        let _ = write!(svg, "<g><title>{meaning}</title>");
        let _ = match kind {
            Mark::Square => write!(
                svg,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{mark:.1}" height="{mark:.1}" fill="{colour}"/>"#,
                y = middle - mark / 2.0,
            ),
            Mark::Dot => write!(
                svg,
                r#"<circle cx="{cx:.1}" cy="{middle:.1}" r="{r:.1}" fill="{colour}"/>"#,
                cx = x + mark / 2.0,
                r = mark / 2.5,
            ),
            Mark::Line(dashed) => write!(
                svg,
                r#"<line x1="{x:.1}" y1="{middle:.1}" x2="{x2:.1}" y2="{middle:.1}" stroke="{colour}" stroke-width="1.5"{dash}/>"#,
                x2 = x + mark,
                dash = if dashed {
                    r#" stroke-dasharray="3 1""#
                } else {
                    ""
                },
            ),
        };
        let _ = write!(
            svg,
            r#"<text x="{tx:.1}" y="{baseline:.1}" fill="{LABEL}">{label}</text></g>"#,
            tx = x + mark + 3.0,
        );
        x += width(label);
    }
}

/// How the legend marks a series.
#[derive(Clone, Copy)]
enum Mark {
    Square,
    Dot,
    Line(bool),
}

/// The base line, the scales' labels and the time labels.
fn axes(svg: &mut String, frame: &Frame, count_max: f64, time_max: f64, minutes: usize) {
    let _ = write!(
        svg,
        r#"<g fill="{LABEL}"><line x1="{l}" y1="{b}" x2="{r}" y2="{b}" stroke="{AXIS}"/><line x1="{l}" y1="{t}" x2="{r}" y2="{t}" stroke="{AXIS}" stroke-dasharray="2 3"/>"#,
        l = frame.left,
        r = frame.right,
        b = frame.bottom,
        t = frame.top,
    );
    let small = frame.font * 0.35;
    let _ = write!(
        svg,
        r#"<text x="{x:.1}" y="{top:.1}" text-anchor="end">{count}<title>attempts a minute</title></text><text x="{x:.1}" y="{bottom:.1}" text-anchor="end">0</text>"#,
        x = frame.left - 4.0,
        top = frame.top + small,
        bottom = frame.bottom,
        count = count_max,
    );
    let _ = write!(
        svg,
        r#"<text x="{x:.1}" y="{top:.1}">{time}<title>run time</title></text><text x="{x:.1}" y="{bottom:.1}">0</text>"#,
        x = frame.right + 4.0,
        top = frame.top + small,
        bottom = frame.bottom,
        time = escape(&run_time(Duration::from_micros(time_max as u64))),
    );
    let below = frame.bottom + frame.font + 3.0;
    let middle = frame.left + frame.step(minutes) * (minutes / 2) as f64;
    let _ = write!(
        svg,
        r#"<text x="{l}" y="{below:.1}">−{minutes} min</text><text x="{middle:.1}" y="{below:.1}" text-anchor="middle">−{half} min</text><text x="{r}" y="{below:.1}" text-anchor="end">now</text></g>"#,
        l = frame.left,
        r = frame.right,
        half = minutes - minutes / 2,
    );
}

/// A run-time line: a point per minute with runs, joined between
/// neighbouring minutes.
fn line(
    svg: &mut String,
    frame: &Frame,
    minutes: &[MinuteView],
    time_max: f64,
    colour: &str,
    dashed: bool,
    pick: fn(&MinuteView) -> Option<Duration>,
) {
    let step = frame.step(minutes.len());
    let point = |i: usize, took: Duration| {
        (
            frame.left + i as f64 * step + step / 2.0,
            frame.y((took.as_micros() as f64).min(time_max), time_max),
        )
    };
    let mut path = String::new();
    let mut dots = String::new();
    let mut joined = false;
    for (i, minute) in minutes.iter().enumerate() {
        let Some(took) = pick(minute) else {
            joined = false;
            continue;
        };
        let (x, y) = point(i, took);
        let _ = write!(path, "{}{x:.1} {y:.1} ", if joined { "L" } else { "M" });
        let _ = write!(dots, r#"<circle cx="{x:.1}" cy="{y:.1}" r="2"/>"#);
        joined = true;
    }
    if path.is_empty() {
        return;
    }
    let dash = if dashed {
        r#" stroke-dasharray="4 2""#
    } else {
        ""
    };
    let _ = write!(
        svg,
        r##"<path d="{path}" fill="none" stroke="{colour}" stroke-width="1.5"{dash}/><g fill="{colour}" stroke="#fff" stroke-width="0.5">{dots}</g>"##,
        path = path.trim_end(),
    );
}

/// What a minute's hover text says.
fn minute_title(minute: &MinuteView) -> String {
    let mut title = format!(
        "{} UTC: {} succeeded, {} failed, {} dead-lettered",
        clock(minute.start),
        minute.succeeded,
        minute.failed,
        minute.dead_lettered
    );
    if let (Some(p50), Some(p95)) = (minute.p50, minute.p95) {
        let _ = write!(
            title,
            "; p50 {}, p95 {} over {} run(s)",
            run_time(p50),
            run_time(p95),
            minute.runs
        );
    }
    title
}

/// The least of 1, 2 or 5 times a power of ten at or above `value`.
fn nice(value: f64) -> f64 {
    let power = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|candidate| *candidate >= value)
        .unwrap_or(10.0 * power)
}

/// A minute's start as `HH:MM`, UTC.
fn clock(at: SystemTime) -> String {
    let minutes = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 60;
    format!("{:02}:{:02}", minutes / 60 % 24, minutes % 60)
}

/// A run time to three figures (the percentiles are good to about 12 %).
fn run_time(took: Duration) -> String {
    let micros = took.as_micros();
    let figures = |value: f64, unit: &str| match value {
        v if v < 10.0 => format!("{v:.2}{unit}"),
        v if v < 100.0 => format!("{v:.1}{unit}"),
        v => format!("{v:.0}{unit}"),
    };
    match micros {
        0..1_000 => format!("{micros}µs"),
        1_000..1_000_000 => figures(micros as f64 / 1e3, "ms"),
        1_000_000..60_000_000 => figures(micros as f64 / 1e6, "s"),
        _ => {
            let secs = took.as_secs();
            format!("{}m{:02}s", secs / 60, secs % 60)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_end_on_a_round_number() {
        let cases = [
            (1.0, 1.0),
            (3.0, 5.0),
            (7.0, 10.0),
            (20.0, 20.0),
            (21.0, 50.0),
            (1234.0, 2000.0),
        ];
        for (value, scale) in cases {
            assert_eq!(nice(value), scale, "{value}");
        }
        assert_eq!(run_time(Duration::from_micros(223_600)), "224ms");
        assert_eq!(run_time(Duration::from_micros(112)), "112µs");
        assert_eq!(clock(UNIX_EPOCH + Duration::from_secs(3_723)), "01:02");
    }
}
