//! What the console scenarios share: workers that report often, an
//! `Admin` on the broker under test, and waits on what it heard.

use std::time::Duration;

use qjob::admin::{Admin, JobView, WorkerView};
use qjob::{Job, Worker};

use crate::env::{Env, LIMIT, Running};

/// The scenarios' heartbeat interval: a stopped worker shows at once, a
/// silent one after three of these.
pub(super) const HEARTBEAT: Duration = Duration::from_millis(100);

/// Starts a worker for `job` that reports to the console every [`HEARTBEAT`].
pub(super) fn start<J: Job>(env: &Env, job: J) -> Running {
    env.run(
        Worker::builder(env.broker())
            .register(job)
            .heartbeat_interval(HEARTBEAT)
            .build(),
    )
}

/// The workers that run `J`.
pub(super) fn workers_of<J: Job>(admin: &Admin) -> Vec<WorkerView> {
    admin
        .workers()
        .into_iter()
        .filter(|worker| worker.status.jobs.iter().any(|job| job.job == J::NAME))
        .collect()
}

/// Waits until the workers that run `J` pass `check`; returns them.
pub(super) async fn wait_workers<J: Job>(
    admin: &Admin,
    what: &str,
    check: impl Fn(&[WorkerView]) -> bool,
) -> Vec<WorkerView> {
    crate::eventually(what, LIMIT, || workers_of::<J>(admin), |w| check(w)).await
}

/// Waits until `J`'s view across the alive workers passes `check`.
pub async fn wait_job<J: Job>(
    admin: &Admin,
    what: &str,
    check: impl Fn(&JobView) -> bool,
) -> JobView {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let view = admin
            .jobs()
            .await
            .unwrap()
            .into_iter()
            .find(|view| view.job == J::NAME);
        if let Some(view) = &view
            && check(view)
        {
            return view.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last seen {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub(super) async fn connect(env: &Env) -> Admin {
    Admin::connect(env.broker())
        .await
        .unwrap()
        .with_reply_window(LIMIT)
}
