//! RabbitMQ's topic matching: routing keys and patterns are words separated
//! by `.`; in a pattern, `*` stands for exactly one word and `#` for zero or
//! more.

/// Whether `key` matches `pattern`.
pub(super) fn matches(pattern: &str, key: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = key.split('.').collect();
    words_match(&pattern, &key)
}

fn words_match(pattern: &[&str], key: &[&str]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((&"#", rest)) => (0..=key.len()).any(|skip| words_match(rest, &key[skip..])),
        Some((&word, rest)) => key.split_first().is_some_and(|(&first, tail)| {
            (word == "*" || word == first) && words_match(rest, tail)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn words_stars_and_hashes_match_as_on_rabbitmq() {
        assert!(matches("worker.a", "worker.a"));
        assert!(!matches("worker.a", "worker.b"));
        assert!(matches("worker.*", "worker.b"));
        assert!(!matches("worker.*", "worker.b.c"));
        assert!(!matches("worker.*", "worker"));
        assert!(matches("#", "anything.at.all"));
        assert!(matches("worker.#", "worker"));
        assert!(matches("worker.#", "worker.b.c"));
        assert!(matches("#.reply", "a.b.reply"));
        assert!(!matches("#.reply", "a.b.replied"));
        assert!(matches("*.#.c", "a.c"));
    }
}
