//! The 3-node RabbitMQ cluster of `QJOB_CLUSTER_SCRIPT` (`scripts/cluster`
//! by default, `scripts/rabbitmq4 cluster` for RabbitMQ 4; see
//! [`crate::tools`]), for the cluster tests: started on first use if it is
//! not running, its nodes' names and addresses as the script reports them,
//! which node leads a queue, and node faults.

use std::sync::{Once, OnceLock};

use qjob::{AmqpBroker, AmqpOptions};

use crate::tools::{cluster_script, rabbitmqctl};

/// The cluster's nodes, numbered 1 to 3 as its script numbers them.
pub const NODES: [usize; 3] = [1, 2, 3];

/// Runs the cluster's script with `args`, failing the test if it fails;
/// its standard output.
pub fn script(args: &[&str]) -> String {
    let output = cluster_script(args);
    assert!(
        output.status.success(),
        "the cluster script (QJOB_CLUSTER_SCRIPT) {args:?} failed: {output:?}"
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Starts the cluster unless it runs (once per test binary); a cluster that
/// cannot start fails the test, never skips it.
pub fn ensure_started() {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        script(&["start"]);
    });
}

/// What the script prints for `what` (`urls` or `nodes`): one entry per
/// node, comma-separated.
fn listed(what: &str) -> Vec<String> {
    let listed: Vec<String> = script(&[what])
        .trim()
        .split(',')
        .map(str::to_owned)
        .collect();
    assert_eq!(
        listed.len(),
        NODES.len(),
        "the cluster script's {what}: {listed:?}"
    );
    listed
}

/// Node `n`'s Erlang node name.
pub fn node_name(n: usize) -> String {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| listed("nodes"))[n - 1].clone()
}

/// Node `n`'s AMQP URL.
pub fn url(n: usize) -> String {
    static URLS: OnceLock<Vec<String>> = OnceLock::new();
    URLS.get_or_init(|| listed("urls"))[n - 1].clone()
}

/// Every node's URL, `first` first, then the others in order: a client
/// given these connects to `first` and fails over to the others.
pub fn urls_from(first: usize) -> Vec<String> {
    std::iter::once(first)
        .chain(NODES.into_iter().filter(|n| *n != first))
        .map(url)
        .collect()
}

/// A broker connected to node `first`, failing over to the others.
pub async fn broker(first: usize) -> AmqpBroker {
    AmqpBroker::connect_with(urls_from(first), AmqpOptions::default())
        .await
        .unwrap_or_else(|e| panic!("the cluster answers (QJOB_CLUSTER_SCRIPT start): {e}"))
}

/// `rabbitmqctl <args>` on the first running node, its output's rows split
/// at whitespace.
pub fn rabbitmqctl_rows(args: &[&str]) -> Vec<Vec<String>> {
    for n in NODES {
        let node = node_name(n);
        let mut full = vec!["-n", &node];
        full.extend_from_slice(args);
        full.extend(["-q", "--no-table-headers"]);
        let output = rabbitmqctl(&full);
        if output.status.success() {
            return String::from_utf8_lossy(&output.stdout)
                .lines()
                .map(|line| line.split_whitespace().map(str::to_owned).collect())
                .collect();
        }
    }
    panic!("no cluster node answers rabbitmqctl {args:?}");
}

/// The node (1 to 3) leading each quorum queue whose name starts with
/// `prefix`, by queue name.
pub fn leaders(prefix: &str) -> Vec<(String, usize)> {
    let mut leaders: Vec<(String, usize)> = rabbitmqctl_rows(&["list_queues", "name", "leader"])
        .into_iter()
        .filter_map(|row| {
            let [name, leader] = row.as_slice() else {
                return None;
            };
            let node = NODES.into_iter().find(|n| *leader == node_name(*n))?;
            name.starts_with(prefix).then(|| (name.clone(), node))
        })
        .collect();
    leaders.sort();
    leaders
}

/// The node leading quorum queue `queue`.
pub fn leader(queue: &str) -> usize {
    leaders(queue)
        .into_iter()
        .find(|(name, _)| name == queue)
        .unwrap_or_else(|| panic!("no leader for queue {queue}"))
        .1
}

/// Kills node `n` (SIGKILL: a crash, not a shutdown).
pub fn kill(n: usize) {
    script(&["kill", &n.to_string()]);
}

/// Starts node `n` again and waits until it runs.
pub fn restart(n: usize) {
    script(&["restart", &n.to_string()]);
}

/// Starts node `n` again however the test ends.
pub struct Revive(pub usize);

impl Drop for Revive {
    fn drop(&mut self) {
        let _ = cluster_script(&["restart", &self.0.to_string()]);
    }
}
