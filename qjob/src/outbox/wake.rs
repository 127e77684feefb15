//! Wake-ups: what ends a relay's wait before the poll interval. A
//! transaction that wrote rows notifies the table's channel as it commits
//! (`LISTEN`/`NOTIFY`) while a relay watches: holds the table's watch lock
//! on its listening connection, which it takes before its last claim
//! ahead of a wait, and leaves once rows come faster than one a round
//! (see `outbox.sql`). A listener that cannot connect, or is lost, is
//! tried again after a while, and the relay polls meanwhile.

use std::time::{Duration, Instant};

use futures_util::FutureExt;
use sqlx::postgres::{PgListener, PgPool};
use sqlx::{Executor, Row};

use super::sql::{Table, lock_not_available};

/// The longest a relay waits for its listener's connection to answer a
/// statement (taking or leaving the watch). The lock itself is waited for
/// at most 100 ms on the server; a connection that has not answered by
/// then is taken for lost (half-open, or a server that stopped
/// answering): it is dropped, its session is ended from the pool, which
/// frees its lock, and the relay listens again on a new connection.
/// Without it, such a connection would hold the relay, and a worker's
/// stop, until TCP gave up on it.
pub(super) const LISTENER_ANSWER: Duration = Duration::from_secs(5);

/// The longest a relay waits to end the session of a listener that did
/// not answer, through its pool.
const END_SESSION: Duration = Duration::from_secs(2);

/// `statement` on the listener, within [`LISTENER_ANSWER`]; past it, an
/// I/O error that says so.
async fn answered<T>(
    statement: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(LISTENER_ANSWER, statement)
        .await
        .unwrap_or_else(|_| {
            Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {LISTENER_ANSWER:?}"),
            )))
        })
}

/// A relay's listener, when it has one, and when to try again when not.
pub(super) struct Wakeups {
    /// The relay's pool: where a listener that stopped answering is ended.
    pool: PgPool,
    listener: Option<Listening>,
    /// When to try to listen again after a failure.
    listen_at: Instant,
    /// Attempts to listen that failed in a row, and listeners lost
    /// before they watched (reset once one watches).
    listen_failures: u32,
    /// Whether the listener was lost during the last wait.
    lost: bool,
    /// Whether the listener holds the watch lock: commits notify.
    watching: bool,
}

/// What came of trying to watch ([`Wakeups::watch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Watch {
    /// The lock is held: every transaction that wrote rows without a
    /// notification has ended, so the next claim finds its rows, and later
    /// commits notify.
    Watching,
    /// Another relay watches: commits notify, and that relay claims once
    /// more before it stops watching.
    Covered,
    /// Transactions that wrote rows are still open after the lock's
    /// timeout: claim, and try again.
    Pending,
    /// The listener was lost (and its lock with it): listen again, then
    /// claim and watch, at once the first time (after a while if it was
    /// lost again before it watched).
    Lost,
    /// No listener: the relay polls until it listens again.
    Deaf,
}

impl Wakeups {
    pub(super) fn new(pool: PgPool) -> Self {
        Self {
            pool,
            listener: None,
            listen_at: Instant::now(),
            listen_failures: 0,
            lost: false,
            watching: false,
        }
    }

    /// Whether to listen now (`notify`: the outbox's rows notify): no
    /// listener, and not waiting after a failure.
    pub(super) fn should_listen(&self, notify: bool) -> bool {
        self.listener.is_none() && notify && Instant::now() >= self.listen_at
    }

    /// Keeps the listener [`listen`] made; none, it is tried again after
    /// `retry_after(failures in a row)`: rounds go on, polling,
    /// meanwhile.
    pub(super) fn listened(
        &mut self,
        listening: Option<Listening>,
        retry_after: impl FnOnce(u32) -> Duration,
    ) {
        self.listener = listening;
        self.watching = false;
        if self.listener.is_none() {
            self.listen_failures += 1;
            self.listen_at = Instant::now() + retry_after(self.listen_failures);
        }
    }

    /// Whether the relay holds the watch lock.
    pub(super) fn watching(&self) -> bool {
        self.watching
    }

    /// Takes `table`'s watch lock on the listening connection, waiting
    /// for the transactions that wrote rows while no relay watched. A
    /// listener lost meanwhile is dropped ([`Watch::Lost`]): no relay may
    /// watch now, so commits do not notify, and the relay must not wait
    /// for its poll.
    pub(super) async fn watch(
        &mut self,
        table: &Table,
        retry_after: impl FnOnce(u32) -> Duration,
    ) -> Watch {
        let Some(Listening { listener, .. }) = self.listener.as_mut() else {
            return Watch::Deaf;
        };
        if self.watching {
            return Watch::Watching;
        }
        let watch = match answered(listener.execute(sqlx::raw_sql(&table.watch))).await {
            Ok(_) => {
                self.watching = true;
                Ok(Watch::Watching)
            }
            Err(error) if lock_not_available(&error) => {
                answered(listener.fetch_one(sqlx::query(&table.watched)))
                    .await
                    .and_then(|row| row.try_get::<bool, _>(0))
                    .map(|watched| {
                        if watched {
                            Watch::Covered
                        } else {
                            Watch::Pending
                        }
                    })
            }
            Err(error) => Err(error),
        };
        match watch {
            Ok(watch) => {
                self.listen_failures = 0;
                watch
            }
            Err(error) => {
                tracing::debug!(%error, "outbox listener lost while watching; listening again");
                self.drop_listener(&error).await;
                if self.listen_failures > 0 {
                    self.listen_at = Instant::now() + retry_after(self.listen_failures);
                }
                self.listen_failures += 1;
                Watch::Lost
            }
        }
    }

    /// Leaves `table`'s watch lock: commits stop notifying (unless another
    /// relay watches).
    pub(super) async fn unwatch(&mut self, table: &Table) {
        if !std::mem::take(&mut self.watching) {
            return;
        }
        let Some(Listening { listener, .. }) = self.listener.as_mut() else {
            return;
        };
        match answered(listener.fetch_one(sqlx::query(&table.unwatch)))
            .await
            .and_then(|row| row.try_get::<bool, _>(0))
        {
            Ok(true) => {}
            // A listener that lost its lock lost its connection.
            Ok(false) => {
                tracing::debug!("outbox listener: lost its watch; listening again");
                self.listener = None;
            }
            Err(error) => {
                tracing::debug!(%error, "outbox listener: lost as it left its watch; listening again");
                self.drop_listener(&error).await;
            }
        }
    }

    /// As the relay stops: leaves `table`'s watch, and wakes the other
    /// relays on `channel`. One that found this relay watching waits for
    /// its poll, while commits stop notifying once no relay watches; woken,
    /// it claims, and watches in its place.
    pub(super) async fn leave(&mut self, table: &Table, channel: &str) {
        self.unwatch(table).await;
        let Some(Listening { listener, .. }) = self.listener.as_mut() else {
            return;
        };
        let notified =
            answered(listener.execute(sqlx::query("SELECT pg_notify($1, '')").bind(channel))).await;
        if let Err(error) = notified {
            tracing::debug!(%error, "outbox listener: could not wake the other relays");
        }
    }

    /// Resolves when a commit notified (if `wakes`), and never otherwise.
    /// The listener is read all the same: PostgreSQL keeps every
    /// notification until each listener has read it, and a queue full of
    /// them fails the application's own commits. A listener lost here is
    /// dropped by [`Wakeups::drop_if_lost`] after the wait.
    pub(super) async fn notified(&mut self, wakes: bool) {
        let Some(Listening {
            listener: listening,
            ..
        }) = self.listener.as_mut()
        else {
            return std::future::pending().await;
        };
        loop {
            match listening.try_recv().await {
                // One round takes what every notification so far
                // announced.
                Ok(Some(_)) => loop {
                    match listening.try_recv().now_or_never() {
                        Some(Ok(Some(_))) => {}
                        Some(Err(_) | Ok(None)) => {
                            self.lost = true;
                            break;
                        }
                        None => break,
                    }
                },
                // The connection was lost, and the watch lock with it
                // (the listener would connect again on its own, without).
                Ok(None) => {
                    tracing::debug!("outbox listener lost its connection; listening again");
                    self.lost = true;
                }
                Err(error) => {
                    tracing::debug!(%error, "outbox listener lost; polling until it is back");
                    self.lost = true;
                }
            }
            if wakes || self.lost {
                break;
            }
        }
        if !wakes {
            // Only the backoff's end starts the next round.
            std::future::pending::<()>().await;
        }
    }

    /// After a wait: drops the listener if it was lost (it is made again
    /// before the next round).
    pub(super) fn drop_if_lost(&mut self) {
        if std::mem::take(&mut self.lost) {
            self.listener = None;
            self.watching = false;
        }
    }

    /// Drops the listener after `error`. One that did not answer in time
    /// may still hold the watch lock, and dropping it does not close its
    /// connection (the listener is left to send an `UNLISTEN`, which waits
    /// for the same answer): its session is ended from the pool, which
    /// frees the lock.
    async fn drop_listener(&mut self, error: &sqlx::Error) {
        let Some(dropped) = self.listener.take() else {
            return;
        };
        self.watching = false;
        if !matches!(error, sqlx::Error::Io(error) if error.kind() == std::io::ErrorKind::TimedOut)
        {
            return;
        }
        self.end_session(&dropped).await;
    }

    /// Ends the listener's session, as the relay stops without an answer
    /// to its leave: it may still hold the watch lock.
    pub(super) async fn end_listener(&mut self) {
        self.watching = false;
        if let Some(dropped) = self.listener.take() {
            self.end_session(&dropped).await;
        }
    }

    /// Ends `listening`'s session from the pool (matched on its process id
    /// and start, so that no other session that reused the id is hit).
    async fn end_session(&self, listening: &Listening) {
        let ended = tokio::time::timeout(
            END_SESSION,
            sqlx::query_scalar::<_, bool>(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE pid = $1 \
                 AND (extract(epoch FROM backend_start) * 1000000)::int8 = $2",
            )
            .bind(listening.pid)
            .bind(listening.started)
            .fetch_optional(&self.pool),
        )
        .await;
        tracing::debug!(
            ?ended,
            "outbox listener: ended the session that did not answer"
        );
    }
}

/// A listener, and its session's process id and start, in microseconds
/// since the epoch (to end the session should it stop answering).
pub(super) struct Listening {
    listener: PgListener,
    pid: i32,
    started: i64,
}

/// A listener on `channel`, on a connection of its own (a listener
/// holds its connection for good: not one of `pool`'s).
pub(super) async fn listen(pool: &PgPool, channel: &str) -> Option<Listening> {
    let options = (*pool.connect_options()).clone();
    let own = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy_with(options);
    let mut listener = PgListener::connect_with(&own)
        .await
        .inspect_err(|error| tracing::debug!(%error, "outbox listener: could not connect"))
        .ok()?;
    // Read first: a listener's last statement stays its `LISTEN`, as
    // `pg_stat_activity` shows it.
    let (pid, started) = answered(
        sqlx::query_as::<_, (i32, i64)>(
            "SELECT pid, (extract(epoch FROM backend_start) * 1000000)::int8 \
             FROM pg_stat_activity WHERE pid = pg_backend_pid()",
        )
        .fetch_one(&mut listener),
    )
    .await
    .inspect_err(|error| tracing::debug!(%error, "outbox listener: could not read its session"))
    .ok()?;
    answered(listener.listen(channel))
        .await
        .inspect_err(|error| tracing::debug!(%error, "outbox listener: could not listen"))
        .ok()?;
    Some(Listening {
        listener,
        pid,
        started,
    })
}
