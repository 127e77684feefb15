//! The connections of an [`AmqpBroker`]: options, cluster addresses,
//! heartbeat, reconnection and the broker's blocked notifications. One
//! connection publishes, the other consumes: a resource alarm stops
//! RabbitMQ reading from connections that publish, and acks must go on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::{Channel, Connection, ConnectionProperties};

use super::publisher::Channels as Publishers;
use crate::Error;

pub(super) struct Inner {
    /// The broker's addresses (several for a cluster), tried in turn.
    pub(super) urls: Vec<String>,
    /// The address that worked last, tried first.
    pub(super) preferred: AtomicUsize,
    pub(super) options: AmqpOptions,
    pub(super) name: String,
    /// Publishes, on confirm-mode channels. Under a memory or disk alarm
    /// RabbitMQ stops reading from connections that publish.
    pub(super) publishing: Link,
    /// Consumes, acks, declares and gets; never publishes, so an alarm
    /// does not stop its acks (RabbitMQ's advice: one connection for each).
    pub(super) consuming: Link,
    /// Set by `close`: nothing reopens a connection in the background then.
    pub(super) closed: std::sync::atomic::AtomicBool,
    /// Single publishes waiting to be gathered onto a session.
    pub(super) gathering: Arc<super::gather::Gathering>,
}

/// What a connection of the broker is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Publish,
    Consume,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Publish => "publish",
            Role::Consume => "consume",
        }
    }
}

/// One of the broker's connections, reopened on demand.
pub(super) struct Link {
    current: Mutex<Option<Connected>>,
    pub(super) reconnecting: tokio::sync::Mutex<()>,
}

impl Link {
    pub(super) fn new() -> Self {
        Self {
            current: Mutex::new(None),
            reconnecting: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Connected>> {
        self.current.lock().expect("connection lock poisoned")
    }

    /// The connection, if it is open.
    pub(super) fn current(&self) -> Option<Connected> {
        self.lock().clone().filter(Connected::is_usable)
    }

    /// Forgets the connection, for closing it.
    pub(super) fn take(&self) -> Option<Connected> {
        self.lock().take()
    }
}

/// The RabbitMQ broker: two connections, one that publishes (on a
/// confirm-mode channel) and one that consumes (a channel per consumer),
/// declares and inspects. A memory or disk alarm stops RabbitMQ reading
/// from connections that publish; the consuming one never does, so its
/// acks go on during an alarm. A cheap handle: clones share the
/// connections.
///
/// A closed connection is reopened on the next operation that needs it.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), qjob::Error> {
/// let broker = qjob::AmqpBroker::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
/// let client = qjob::Client::new(broker.clone());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AmqpBroker {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.inner.urls.iter().map(|u| redact(u)).collect();
        f.debug_struct("AmqpBroker")
            .field("urls", &urls)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// How [`AmqpBroker`] connects and publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AmqpOptions {
    /// The longest a publish waits for the broker's confirm before it is an
    /// [`Error::Timeout`] (30 s by default).
    pub publish_timeout: Duration,
    /// The heartbeat asked of the broker when the URL does not set one
    /// (`?heartbeat=`): a dead peer is noticed after about twice this
    /// (15 s by default).
    pub heartbeat: Duration,
}

impl Default for AmqpOptions {
    fn default() -> Self {
        Self {
            publish_timeout: Duration::from_secs(30),
            heartbeat: Duration::from_secs(15),
        }
    }
}

impl AmqpOptions {
    /// Sets the publish timeout.
    pub fn with_publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Sets the default heartbeat.
    pub fn with_heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }
}

#[derive(Clone)]
pub(super) struct Connected {
    pub(super) connection: Arc<Connection>,
    pub(super) channels: Channels,
    /// Why the broker blocks this connection's publishes (a resource alarm).
    pub(super) blocked: Arc<tokio::sync::watch::Sender<Option<String>>>,
}

/// The channels a connection keeps open.
#[derive(Clone)]
pub(super) enum Channels {
    /// Consuming: the channel of `basic.get`, where what it takes stays
    /// unsettled.
    Get(Channel),
    /// Publishing: the confirm-mode channels, each lent to one publisher
    /// at a time.
    Publish(Arc<Publishers>),
}

impl Connected {
    pub(super) fn is_usable(&self) -> bool {
        self.connection.status().connected()
            && match &self.channels {
                Channels::Get(channel) => channel.status().connected(),
                Channels::Publish(_) => true,
            }
    }

    /// Why the broker blocks this connection, if it does. lapin's own flag
    /// decides (it stops writing the moment the broker says so); the
    /// reason follows from the event a moment later.
    pub(super) fn blocked(&self) -> Option<String> {
        self.connection.status().blocked().then(|| {
            self.blocked
                .borrow()
                .clone()
                .unwrap_or_else(|| "a resource alarm".to_owned())
        })
    }
}

impl AmqpBroker {
    pub(super) fn link(&self, role: Role) -> &Link {
        match role {
            Role::Publish => &self.inner.publishing,
            Role::Consume => &self.inner.consuming,
        }
    }

    /// The live connection for `role`, reconnecting if it was lost.
    pub(super) async fn connected(&self, role: Role) -> Result<Connected, Error> {
        let link = self.link(role);
        if let Some(connected) = link.current() {
            return Ok(connected);
        }
        let _one_at_a_time = link.reconnecting.lock().await;
        if let Some(connected) = link.current() {
            return Ok(connected);
        }
        let urls = &self.inner.urls;
        let first = self.inner.preferred.load(Ordering::Relaxed);
        let mut last_error = None;
        for index in (0..urls.len()).map(|i| (first + i) % urls.len()) {
            match self.open(&urls[index], role).await {
                Ok(connected) => {
                    self.inner.preferred.store(index, Ordering::Relaxed);
                    *link.lock() = Some(connected.clone());
                    return Ok(connected);
                }
                Err(error) => {
                    tracing::warn!(url = %redact(&urls[index]), %error, "could not connect to the broker");
                    last_error = Some(error);
                }
            }
        }
        let tried: Vec<String> = urls.iter().map(|u| redact(u)).collect();
        Err(Error::Connect {
            url: tried.join(", "),
            source: last_error.expect("at least one address").into(),
        })
    }

    /// Opens a connection to `url` for `role` with its channel, and follows
    /// its blocked/unblocked notifications.
    async fn open(&self, url: &str, role: Role) -> Result<Connected, lapin::Error> {
        let name = format!("{} {}", self.inner.name, role.as_str());
        let properties = ConnectionProperties::default().with_connection_name(name.as_str().into());
        let connection = Connection::connect(url, properties).await?;
        let channels = match role {
            Role::Publish => Channels::Publish(Publishers::new()),
            Role::Consume => Channels::Get(connection.create_channel().await?),
        };
        let blocked = Arc::new(tokio::sync::watch::Sender::new(None));
        let mut events = connection.events_listener();
        let flag = Arc::downgrade(&blocked);
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                let Some(flag) = flag.upgrade() else { return };
                match event {
                    lapin::Event::ConnectionBlocked(reason) => {
                        tracing::warn!(connection = %name, %reason, "the broker blocks publishing");
                        flag.send_replace(Some(reason));
                    }
                    lapin::Event::ConnectionUnblocked => {
                        tracing::info!(connection = %name, "the broker unblocked publishing");
                        flag.send_replace(None);
                    }
                    _ => {}
                }
            }
        });
        Ok(Connected {
            connection: Arc::new(connection),
            channels,
            blocked,
        })
    }
}

/// `url` with `heartbeat=<secs>` added when it sets none.
pub(super) fn with_heartbeat(url: &str, heartbeat: Duration) -> String {
    if url.contains("heartbeat=") {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}heartbeat={}", heartbeat.as_secs().max(1))
}

/// `url` with its password replaced by `***`.
pub(super) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::{redact, with_heartbeat};
    use std::time::Duration;

    #[test]
    fn a_heartbeat_is_asked_for_unless_the_url_sets_one() {
        let s15 = Duration::from_secs(15);
        assert_eq!(
            with_heartbeat("amqp://h/%2f", s15),
            "amqp://h/%2f?heartbeat=15"
        );
        assert_eq!(
            with_heartbeat("amqp://h/v?frame_max=8192", s15),
            "amqp://h/v?frame_max=8192&heartbeat=15"
        );
        assert_eq!(
            with_heartbeat("amqp://h/v?heartbeat=5", s15),
            "amqp://h/v?heartbeat=5"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("amqp://u:secret@h:5672/%2f"),
            "amqp://u:***@h:5672/%2f"
        );
        assert_eq!(redact("amqp://h:5672"), "amqp://h:5672");
    }
}
