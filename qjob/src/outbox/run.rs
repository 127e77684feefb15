//! Running a relay: rounds, and the waits between them. After each round
//! the relay decides how long to wait ([`Run::after_round`]: at once
//! while rows remain, the poll interval when idle, a backoff after a
//! failure; then [`Relay::pace`]: at once while rounds find rows, watching
//! before it waits), reads the outbox's depth for the metrics when due,
//! then waits for the first of the wait's end, a notification (`wake.rs`)
//! and shutdown. As it stops, it leaves its watch and wakes the other
//! relays ([`Wakeups::leave`]).

use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use super::relay::{Relay, Relayed};
use super::sql::{migrated, missing_table, undefined_column};
use super::wake::{self, Wakeups, Watch};
use crate::Error;
use crate::policy::backoff;

/// The longest a relay waits before a round after a failed one.
const MAX_RELAY_BACKOFF: Duration = Duration::from_secs(5);
/// How long a stopping relay waits for the database to take its leave.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a relay reads the outbox's depth for its metrics.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// The most rows a round woken by a notification finds while the relay
/// keeps watching: more, and commits come faster than the relay's rounds,
/// so it stops watching (commits stop notifying) and claims on its own.
const WATCHED_ROWS: usize = 1;

/// A running relay's state between rounds.
struct Run {
    /// Rounds in a row that failed (none: the last one did not).
    failures: u32,
    /// When the outbox's depth was last read for the metrics.
    stats_at: Option<Instant>,
    /// Whether a round claimed rows since the metrics were last read.
    dirty: bool,
}

impl Run {
    fn new() -> Self {
        Self {
            failures: 0,
            stats_at: None,
            dirty: true,
        }
    }

    /// After a round of `relay` on table `table`: how long to wait before
    /// the next one (none while a full batch suggests more rows wait and
    /// nothing failed).
    fn after_round(
        &mut self,
        relay: &Relay,
        table: &str,
        round: Result<Relayed, Error>,
    ) -> Duration {
        match round {
            Ok(relayed) => {
                self.dirty |= relayed.claimed > 0;
                let more = relayed.claimed == relay.batch;
                match relayed.failed {
                    Some(error) => {
                        self.failures += 1;
                        tracing::warn!(table, %error, "outbox rows not published; retrying");
                    }
                    None => self.failures = 0,
                }
                if more && self.failures == 0 {
                    Duration::ZERO
                } else {
                    relay.wait_after(self.failures)
                }
            }
            Err(error) => {
                self.failures += 1;
                tracing::warn!(table, %error, "outbox relay round failed; retrying");
                relay.wait_after(self.failures)
            }
        }
    }

    /// Whether to read the outbox's depth now, before waiting `wait`: at
    /// most every second while busy; and before waiting, once the rows a
    /// round claimed are accounted for.
    fn stats_due(&mut self, wait: Duration) -> bool {
        let stale = self.stats_at.is_none_or(|at| at.elapsed() >= STATS_EVERY);
        if !(stale || (self.dirty && !wait.is_zero())) {
            return false;
        }
        self.stats_at = Some(Instant::now());
        self.dirty = false;
        true
    }

    /// Whether a commit's notification may end the wait: not after a
    /// failure, whose backoff holds.
    fn wakes(&self) -> bool {
        self.failures == 0
    }
}

impl Relay {
    /// Relays until `shutdown` resolves: a round whenever a transaction
    /// wrote rows, every poll interval otherwise, and with backoff (up to
    /// 5 s) while the broker or the database fails. A round under way when
    /// `shutdown` resolves completes first.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] at start if the table does not exist, or lacks
    /// a column this qjob uses ([`Outbox::migrate`](super::Outbox::migrate)
    /// creates it, and adds what an earlier qjob's table lacks). Later
    /// failures are logged and retried; they do not end the run.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        self.check().await?;
        self.relay_until(shutdown).await;
        Ok(())
    }

    /// Fails if the outbox table does not exist, or lacks a column (made
    /// by an earlier qjob, and not migrated since); a database not
    /// reachable yet is only logged (the relay retries).
    pub(crate) async fn check(&self) -> Result<(), Error> {
        match self.outbox.stats(&self.pool).await {
            Err(error) if missing_table(&error) => Err(error),
            Err(error) => {
                tracing::warn!(%error, "the outbox's database is not reachable yet; retrying");
                Ok(())
            }
            Ok(_) => {
                let table = &self.outbox.table;
                match sqlx::query(&table.columns).execute(&self.pool).await {
                    Err(error) if undefined_column(&error) => {
                        Err(migrated(format!("read the outbox {}", table.name))(error))
                    }
                    // Unreachable since: the rounds report it.
                    _ => Ok(()),
                }
            }
        }
    }

    /// [`Relay::run_until`] after its check.
    pub(crate) async fn relay_until(self, shutdown: impl Future<Output = ()>) {
        let channel = self.outbox.table.name.to_string();
        let mut wakeups = Wakeups::new(self.pool.clone());
        self.rounds_until(shutdown, &channel, &mut wakeups).await;
        // Another relay that found this one watching waits for its poll.
        let left = wakeups.leave(&self.outbox.table, &channel);
        if tokio::time::timeout(LEAVE_TIMEOUT, left).await.is_err() {
            // Its listener may hold the watch lock, and another relay may
            // wait for it: its session is ended.
            tracing::debug!("outbox listener: no answer as the relay stopped");
            let ended = wakeups.end_listener();
            if tokio::time::timeout(LEAVE_TIMEOUT, ended).await.is_err() {
                tracing::debug!("outbox listener: could not end its session as the relay stopped");
            }
        }
    }

    /// The rounds and the waits between them, until `shutdown` resolves.
    async fn rounds_until(
        &self,
        shutdown: impl Future<Output = ()>,
        channel: &str,
        wakeups: &mut Wakeups,
    ) {
        tokio::pin!(shutdown);
        let mut run = Run::new();
        loop {
            if wakeups.should_listen(self.outbox.notify) {
                tokio::select! {
                    () = &mut shutdown => return,
                    listening = wake::listen(&self.pool, channel) => {
                        wakeups.listened(listening, |failures| self.wait_after(failures).max(self.poll));
                    }
                }
            }
            let round = self.relay_once().await;
            let claimed = round.as_ref().map_or(0, |relayed| relayed.claimed);
            let mut wait = run.after_round(self, channel, round);
            if run.failures == 0 {
                wait = self.pace(wakeups, claimed, wait).await;
            }
            if run.stats_due(wait) {
                tokio::select! {
                    () = &mut shutdown => return,
                    () = self.record_stats() => {}
                }
            }
            if wait.is_zero() {
                // More rows wait: the next round at once, unless told to stop.
                if (&mut shutdown).now_or_never().is_some() {
                    return;
                }
                continue;
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(wait) => {}
                () = wakeups.notified(run.wakes()) => {}
            }
            wakeups.drop_if_lost();
        }
    }

    /// After a round that claimed `claimed` rows and nothing failed: how
    /// long to wait before the next one, `wait` unless rows come. While
    /// rounds find rows, the next one starts at once, and commits do not
    /// notify (unless another relay watches). Once a round finds none,
    /// the relay watches: it takes the watch lock, which waits for the
    /// transactions that wrote rows meanwhile, and claims once more before
    /// it waits for a notification. A watching relay woken for one row
    /// keeps watching, as one producer's commits keep it.
    async fn pace(&self, wakeups: &mut Wakeups, claimed: usize, wait: Duration) -> Duration {
        let table = &self.outbox.table;
        if wakeups.watching() {
            if claimed <= WATCHED_ROWS {
                return wait;
            }
            wakeups.unwatch(table).await;
            return Duration::ZERO;
        }
        if claimed > 0 {
            return Duration::ZERO;
        }
        let retry_after = |failures| self.wait_after(failures).max(self.poll);
        match wakeups.watch(table, retry_after).await {
            // The last claim before the wait, or another try; or listen
            // again first.
            Watch::Watching | Watch::Pending | Watch::Lost => Duration::ZERO,
            Watch::Covered | Watch::Deaf => wait,
        }
    }

    /// How long to wait before the next round: the poll interval, or
    /// less after failures (a first failure is retried soon).
    fn wait_after(&self, failures: u32) -> Duration {
        if failures == 0 {
            return self.poll;
        }
        backoff::retry_delay(failures, MAX_RELAY_BACKOFF)
    }

    async fn record_stats(&self) {
        let Ok(stats) = self.outbox.stats(&self.pool).await else {
            return;
        };
        let label = self.outbox.table.name.to_string();
        metrics::gauge!("qjob_outbox_depth", "table" => label.clone()).set(stats.depth as f64);
        metrics::gauge!("qjob_outbox_oldest_age_seconds", "table" => label)
            .set(stats.oldest.map_or(0.0, |age| age.as_secs_f64()));
    }
}
