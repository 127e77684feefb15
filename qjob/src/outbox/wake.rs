//! Wake-ups: what ends a relay's wait before the poll interval. A
//! transaction that wrote rows notifies the table's channel as it commits
//! (`LISTEN`/`NOTIFY`); a listener that cannot connect, or is lost, is
//! tried again after a while, and the relay polls meanwhile.

use std::time::{Duration, Instant};

use futures_util::FutureExt;
use sqlx::postgres::{PgListener, PgPool};

/// A relay's listener, when it has one, and when to try again when not.
pub(super) struct Wakeups {
    listener: Option<PgListener>,
    /// When to try to listen again after a failure.
    listen_at: Instant,
    /// Attempts to listen that failed in a row.
    listen_failures: u32,
    /// Whether the listener was lost during the last wait.
    lost: bool,
}

impl Wakeups {
    pub(super) fn new() -> Self {
        Self {
            listener: None,
            listen_at: Instant::now(),
            listen_failures: 0,
            lost: false,
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
        listening: Option<PgListener>,
        retry_after: impl FnOnce(u32) -> Duration,
    ) {
        self.listener = listening;
        if self.listener.is_none() {
            self.listen_failures += 1;
            self.listen_at = Instant::now() + retry_after(self.listen_failures);
        } else {
            self.listen_failures = 0;
        }
    }

    /// Resolves when a commit notified (if `wakes`), and never otherwise.
    /// The listener is read all the same: PostgreSQL keeps every
    /// notification until each listener has read it, and a queue full of
    /// them fails the application's own commits. A listener lost here is
    /// dropped by [`Wakeups::drop_if_lost`] after the wait.
    pub(super) async fn notified(&mut self, wakes: bool) {
        let Some(listening) = self.listener.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            match listening.recv().await {
                // One round takes what every notification so far
                // announced.
                Ok(_) => loop {
                    match listening.try_recv().now_or_never() {
                        Some(Ok(Some(_))) => {}
                        Some(Err(_)) => {
                            self.lost = true;
                            break;
                        }
                        Some(Ok(None)) | None => break,
                    }
                },
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
        }
    }
}

/// A listener on `channel`, on a connection of its own (a listener
/// holds its connection for good: not one of `pool`'s).
pub(super) async fn listen(pool: &PgPool, channel: &str) -> Option<PgListener> {
    let options = (*pool.connect_options()).clone();
    let own = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy_with(options);
    let mut listener = PgListener::connect_with(&own)
        .await
        .inspect_err(|error| tracing::debug!(%error, "outbox listener: could not connect"))
        .ok()?;
    listener
        .listen(channel)
        .await
        .inspect_err(|error| tracing::debug!(%error, "outbox listener: could not listen"))
        .ok()?;
    Some(listener)
}
