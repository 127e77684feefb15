//! How the harness shows what it saw in a failed assertion: one line per
//! item, bodies as text.

use std::fmt::Debug;

/// A message body as text: JSON as it is, other bytes escaped.
pub(crate) fn body(body: &[u8]) -> String {
    match std::str::from_utf8(body) {
        Ok(text) => text.to_owned(),
        Err(_) => format!("{:?} (not UTF-8)", String::from_utf8_lossy(body)),
    }
}

/// `items` one per line, indented, or `(none)`.
pub(crate) fn lines(items: impl IntoIterator<Item = String>) -> String {
    let lines: Vec<String> = items.into_iter().map(|item| format!("  {item}")).collect();
    if lines.is_empty() {
        return "  (none)".to_owned();
    }
    lines.join("\n")
}

/// `items` as they debug-print, one per line.
pub(crate) fn debug_lines<T: Debug>(items: &[T]) -> String {
    lines(items.iter().map(|item| format!("{item:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_read_as_text() {
        assert_eq!(body(br#"{"a":1}"#), r#"{"a":1}"#);
        assert!(body(&[0xff, b'a']).contains("not UTF-8"));
        assert_eq!(debug_lines::<u8>(&[]), "  (none)");
        assert_eq!(debug_lines(&[1, 2]), "  1\n  2");
    }
}
