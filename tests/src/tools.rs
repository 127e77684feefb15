//! The broker's command-line tools, named in one place so that the same
//! suite runs against any RabbitMQ node: every test that shells out to
//! `rabbitmqctl` or to the cluster's script goes through here.
//!
//! - `QJOB_RABBITMQCTL`: the command line that runs `rabbitmqctl` against
//!   the broker under test (`QJOB_AMQP_URL`), split at whitespace;
//!   `rabbitmqctl` by default. For the RabbitMQ 4 node and cluster of
//!   `scripts/rabbitmq4`: `scripts/rabbitmq4 ctl`.
//! - `QJOB_CLUSTER_SCRIPT`: the command line of the script that runs the
//!   cluster tests' 3-node cluster (`start`, `urls`, `nodes`, `kill N`,
//!   `restart N`), split at whitespace; `scripts/cluster` (RabbitMQ 3) by
//!   default, `scripts/rabbitmq4 cluster` for RabbitMQ 4.
//!
//! A relative program path (`scripts/…`) is taken from the repository's
//! root. README.md ("Get started") shows them in use.

use std::path::Path;
use std::process::{Command, Output};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const DEFAULT_CLUSTER_SCRIPT: &str = "scripts/cluster";

/// The command named by the environment variable `var` (a command line),
/// or by `default`.
fn command(var: &str, default: &str) -> (String, Command) {
    let line = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    let mut words = line.split_whitespace();
    let program = words
        .next()
        .unwrap_or_else(|| panic!("{var} names no command"));
    let mut command = if program.contains('/') && Path::new(program).is_relative() {
        Command::new(Path::new(ROOT).join(program))
    } else {
        Command::new(program)
    };
    command.args(words);
    (line, command)
}

/// Runs `rabbitmqctl <args>` (as `QJOB_RABBITMQCTL` names it) against the
/// broker under test, or another node with `-n`, and returns its output;
/// the caller checks its status. Fails the test if the tool does not run,
/// or if `QJOB_AMQP_URL` or `QJOB_CLUSTER_SCRIPT` names another broker
/// than the default while `QJOB_RABBITMQCTL` is unset (its `rabbitmqctl`
/// would disturb the wrong one).
pub fn rabbitmqctl(args: &[&str]) -> Output {
    if std::env::var_os("QJOB_RABBITMQCTL").is_none() {
        let other_url = std::env::var("QJOB_AMQP_URL").is_ok_and(|url| url != DEFAULT_URL);
        let other_cluster = std::env::var("QJOB_CLUSTER_SCRIPT")
            .is_ok_and(|script| script.trim() != DEFAULT_CLUSTER_SCRIPT);
        assert!(
            !other_url && !other_cluster,
            "QJOB_AMQP_URL or QJOB_CLUSTER_SCRIPT names another broker than the \
             default: set QJOB_RABBITMQCTL to its rabbitmqctl (see README.md)"
        );
    }
    let (line, mut command) = command("QJOB_RABBITMQCTL", "rabbitmqctl");
    command
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{line} {args:?} runs (QJOB_RABBITMQCTL): {e}"))
}

/// Runs `rabbitmqctl <args>`, failing the test unless it succeeds; its
/// standard output.
pub fn rabbitmqctl_ok(args: &[&str]) -> String {
    let output = rabbitmqctl(args);
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {output:?}"
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs the cluster's script (`QJOB_CLUSTER_SCRIPT`) with `args` and
/// returns its output; the caller checks its status. Its standard error
/// (progress, failures) goes to the test's.
pub fn cluster_script(args: &[&str]) -> Output {
    let (line, mut command) = command("QJOB_CLUSTER_SCRIPT", DEFAULT_CLUSTER_SCRIPT);
    command
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("{line} {args:?} runs (QJOB_CLUSTER_SCRIPT): {e}"))
}

/// The major version of the RabbitMQ under test (`rabbitmqctl version`),
/// read once: for the few scenarios whose broker behaviour differs between
/// versions, each named for it.
pub fn rabbitmq_major() -> u32 {
    static MAJOR: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *MAJOR.get_or_init(|| {
        let version = rabbitmqctl_ok(&["version"]);
        version
            .trim()
            .split('.')
            .next()
            .and_then(|major| major.parse().ok())
            .unwrap_or_else(|| panic!("rabbitmqctl version printed {version:?}"))
    })
}

/// The rows `rabbitmqctl <list> -q --no-table-headers <columns>` prints,
/// each split at whitespace (for columns without spaces in their values).
fn rabbitmqctl_rows(list: &str, columns: &[&str]) -> Vec<Vec<String>> {
    let args: Vec<&str> = [list, "-q", "--no-table-headers"]
        .into_iter()
        .chain(columns.iter().copied())
        .collect();
    rabbitmqctl_ok(&args)
        .lines()
        .map(|line| line.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// The second column of the rows whose first is `key`, parsed.
fn values_of<T: std::str::FromStr>(rows: Vec<Vec<String>>, key: &str) -> Vec<T> {
    rows.into_iter()
        .filter(|row| row.first().map(String::as_str) == Some(key))
        .filter_map(|row| row.get(1)?.parse().ok())
        .collect()
}

/// Every message of `queue`, ready or unacked, as RabbitMQ reports them.
pub fn queue_messages(queue: &str) -> u32 {
    let rows = rabbitmqctl_rows("list_queues", &["name", "messages"]);
    values_of(rows, queue)
        .first()
        .copied()
        .unwrap_or_else(|| panic!("no queue {queue}"))
}

/// The prefetch counts of `queue`'s consumers, as RabbitMQ reports them.
pub fn consumer_prefetch(queue: &str) -> Vec<u16> {
    values_of(
        rabbitmqctl_rows("list_consumers", &["queue_name", "prefetch_count"]),
        queue,
    )
}

/// For every consumer of a queue whose name starts with `prefix`: the queue
/// and whether the consumer is active (single-active-consumer queues have
/// one active consumer; the others wait).
pub fn consumer_activity(prefix: &str) -> Vec<(String, bool)> {
    let mut consumers: Vec<(String, bool)> =
        rabbitmqctl_rows("list_consumers", &["queue_name", "active"])
            .into_iter()
            .filter_map(|row| {
                let [queue, active] = row.as_slice() else {
                    return None;
                };
                queue
                    .starts_with(prefix)
                    .then(|| (queue.clone(), active == "true"))
            })
            .collect();
    consumers.sort();
    consumers
}

/// Closes the RabbitMQ connections of the broker named `name` (its
/// publishing and its consuming one), as a network failure would.
pub fn close_connection(name: &str) {
    let listing = rabbitmqctl_ok(&[
        "list_connections",
        "-q",
        "--no-table-headers",
        "pid",
        "client_properties",
    ]);
    // The name a client gives itself is in its properties, quoted:
    // "<name> publish" and "<name> consume".
    let pids: Vec<&str> = listing
        .lines()
        .filter_map(|line| {
            let (pid, properties) = line.split_once(char::is_whitespace)?;
            ["publish", "consume"]
                .iter()
                .any(|role| properties.contains(&format!("\"{name} {role}\"")))
                .then_some(pid)
        })
        .collect();
    assert!(
        !pids.is_empty(),
        "no connection named {name:?} in {listing}"
    );
    for pid in pids {
        rabbitmqctl_ok(&["close_connection", pid, "closed by a qjob test"]);
    }
}

/// How many channels the connection named `name` (its client-provided
/// name, as qjob names its connections) has open.
pub fn connection_channels(name: &str) -> u32 {
    let listed = rabbitmqctl_ok(&[
        "list_connections",
        "-q",
        "--no-table-headers",
        "channels",
        "client_properties",
    ]);
    let quoted = format!("\"{name}\"");
    let counts: Vec<u32> = listed
        .lines()
        .filter(|line| line.contains(&quoted))
        .filter_map(|line| line.split_whitespace().next()?.parse().ok())
        .collect();
    match counts[..] {
        [count] => count,
        _ => panic!("no one connection named {name:?}: {listed}"),
    }
}
