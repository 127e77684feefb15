//! What the examples share.

use std::io::IsTerminal;

/// Installs a `tracing` subscriber that prints to standard output,
/// filtered by `RUST_LOG` (by `default` without it), in colour only on a
/// terminal: a log written to a file or a CI job carries no escape codes.
pub fn init_logs(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();
}
