//! Plain-text tables for the terminal.

use std::time::{Duration, SystemTime};

/// Rows under a header, columns as wide as their widest cell.
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new<const N: usize>(header: [&str; N]) -> Self {
        Self {
            rows: vec![header.iter().map(|cell| (*cell).to_owned()).collect()],
        }
    }

    pub(crate) fn row<const N: usize>(&mut self, cells: [String; N]) {
        self.rows.push(cells.into());
    }

    pub(crate) fn print(&self) {
        say(self.to_string().trim_end_matches('\n'));
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let columns = self.rows[0].len();
        let widths: Vec<usize> = (0..columns)
            .map(|column| {
                self.rows
                    .iter()
                    .map(|row| clean(&row[column], false).chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                let cell = clean(cell, false);
                if column + 1 < columns {
                    line.push_str(&format!("{cell:<width$}  ", width = widths[column]));
                } else {
                    line.push_str(&cell);
                }
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// `text` with every control character shown escaped (`\u{1b}`): nothing
/// a message carries can move the cursor, clear the screen or reach the
/// clipboard. Line breaks stay, with `newlines`.
pub(crate) fn clean(text: &str, newlines: bool) -> String {
    let mut cleaned = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && !(newlines && c == '\n') {
            cleaned.extend(c.escape_default());
        } else {
            cleaned.push(c);
        }
    }
    cleaned
}

/// Writes `text` and a line break to stdout, cleaned of control
/// characters. A closed pipe (`qjob … | head`) ends the program quietly,
/// with success: the reader had what it wanted.
pub(crate) fn say(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = writeln!(stdout, "{}", clean(text, true)).and_then(|()| stdout.flush());
    if let Err(error) = written {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("qjob: cannot write the output: {error}");
        std::process::exit(1);
    }
}

/// `text` cut to `chars` characters, on one line.
pub(crate) fn short(text: &str, chars: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() <= chars && !text.contains('\n') {
        return line.to_owned();
    }
    let cut: String = line.chars().take(chars.saturating_sub(1)).collect();
    format!("{cut}…")
}

/// How long ago `at` was, roughly: `12s`, `5m`, `3h`, `2d`.
pub(crate) fn ago(at: SystemTime) -> String {
    span(
        SystemTime::now()
            .duration_since(at)
            .unwrap_or(Duration::ZERO),
    )
}

/// How long until `at`, as [`ago`] says it.
pub(crate) fn until(at: SystemTime) -> String {
    span(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// A duration, roughly: `12s`, `5m`, `3h`, `2d`.
pub(crate) fn span(span: Duration) -> String {
    let secs = span.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let mut table = Table::new(["A", "LONG HEADER", "C"]);
        table.row(["wide cell".to_owned(), "x".to_owned(), "last".to_owned()]);
        assert_eq!(
            table.to_string(),
            "A          LONG HEADER  C\nwide cell  x            last\n"
        );
    }

    #[test]
    fn control_characters_are_shown_not_sent() {
        assert_eq!(
            clean("a\u{1b}]52;c;x\u{7}b\r", false),
            "a\\u{1b}]52;c;x\\u{7}b\\r"
        );
        assert_eq!(clean("two\nlines\tx", true), "two\nlines\\tx");
        let mut table = Table::new(["A"]);
        table.row(["\u{1b}[2J".to_owned()]);
        assert_eq!(table.to_string(), "A\n\\u{1b}[2J\n");
    }

    #[test]
    fn long_text_is_cut_on_one_line() {
        assert_eq!(short("short", 10), "short");
        assert_eq!(short("a longer text", 6), "a lon…");
        assert_eq!(short("two\nlines", 10), "two…");
    }
}
