//! The examples' logs carry no colour codes when they are not written to
//! a terminal (a file, a pipe, CI's log).

use std::process::Command;

/// Run again as a child with its standard output piped: there it installs
/// the examples' subscriber and logs a warning.
#[test]
fn logs_written_to_a_pipe_carry_no_escape_codes() {
    if std::env::var_os("QJOB_EXAMPLES_LOG_CHILD").is_some() {
        qjob_examples::init_logs("info");
        tracing::warn!(job = "charge", "a warning with fields");
        return;
    }
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "logs_written_to_a_pipe_carry_no_escape_codes",
            "--nocapture",
        ])
        .env("QJOB_EXAMPLES_LOG_CHILD", "1")
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("a warning with fields"), "{stdout}");
    assert!(!stdout.contains('\x1b'), "escape codes in {stdout:?}");
}
