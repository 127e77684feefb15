//! HTML written by hand: every text that comes from outside (job names,
//! errors, payloads, headers) goes through [`escape`]; every path segment
//! through [`segment`].

use std::fmt::Write;
use std::time::{Duration, SystemTime};

/// `text` safe inside HTML text and attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// `text` as one percent-encoded URL path segment (or query value).
pub(crate) fn segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                encoded.push(byte as char)
            }
            other => {
                let _ = write!(encoded, "%{other:02X}");
            }
        }
    }
    encoded
}

/// How long ago `at` was, roughly.
pub(crate) fn ago(at: SystemTime) -> String {
    let since = SystemTime::now()
        .duration_since(at)
        .unwrap_or(Duration::ZERO);
    duration(since)
}

/// A duration, roughly: `12s`, `5m`, `3h`, `2d`.
pub(crate) fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// A small line chart of `values` (oldest first) as inline SVG: no
/// script, no style attribute, so it passes a strict CSP.
pub(crate) fn sparkline(values: &[f64]) -> String {
    const WIDTH: f64 = 120.0;
    const HEIGHT: f64 = 24.0;
    if values.len() < 2 {
        return r#"<span class="muted">–</span>"#.to_owned();
    }
    let max = values.iter().copied().fold(0.0_f64, f64::max).max(1e-9);
    let step = WIDTH / (values.len() - 1) as f64;
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let y = HEIGHT - 1.0 - (v / max) * (HEIGHT - 2.0);
            format!("{:.1},{:.1}", i as f64 * step, y)
        })
        .collect();
    format!(
        r#"<svg class="spark" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="throughput, last {n} samples"><polyline fill="none" stroke="currentColor" stroke-width="1.5" points="{points}"/></svg>"#,
        n = values.len(),
        points = points.join(" ")
    )
}

/// A table: a header row, then rows of cells already HTML.
pub(crate) struct Table {
    html: String,
}

impl Table {
    pub(crate) fn new(headers: &[&str]) -> Self {
        let mut html = String::from("<table><thead><tr>");
        for header in headers {
            let _ = write!(html, "<th>{}</th>", escape(header));
        }
        html.push_str("</tr></thead><tbody>");
        Self { html }
    }

    /// A row of cells, each already HTML.
    pub(crate) fn row(&mut self, cells: &[String]) {
        self.html.push_str("<tr>");
        for cell in cells {
            let _ = write!(self.html, "<td>{cell}</td>");
        }
        self.html.push_str("</tr>");
    }

    pub(crate) fn finish(mut self, empty: &str) -> String {
        if !self.html.contains("<td>") {
            let _ = write!(
                self.html,
                r#"<tr><td class="muted" colspan="99">{}</td></tr>"#,
                escape(empty)
            );
        }
        self.html.push_str("</tbody></table>");
        self.html
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_segments_are_escaped() {
        assert_eq!(
            escape(r#"<script>alert("x") & 'y'</script>"#),
            "&lt;script&gt;alert(&quot;x&quot;) &amp; &#39;y&#39;&lt;/script&gt;"
        );
        assert_eq!(segment("a.b/c d?é"), "a.b%2Fc%20d%3F%C3%A9");
    }

    #[test]
    fn sparklines_scale_to_their_maximum() {
        let svg = sparkline(&[0.0, 5.0, 10.0]);
        assert!(
            svg.contains(r#"points="0.0,23.0 60.0,12.0 120.0,1.0""#),
            "{svg}"
        );
        assert!(sparkline(&[3.0]).contains('–'));
    }
}
