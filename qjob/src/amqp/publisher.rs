//! Publishing with confirms: confirm-mode channels of the publishing
//! connection, each lent to one publisher at a time.
//!
//! lapin hands each `basic.return` to the confirm it completes next, and a
//! multiple ack completes several confirms in no set order: two publishers
//! sharing a channel could swap a return, and the one whose message was
//! returned would read its confirm as stored, a job lost. So a channel
//! serves one session at a time, and a session waits for all its confirms
//! before its channel serves another: every return a session's confirms
//! carry is for one of its own messages (RabbitMQ sends a message's return
//! before its ack), and a session of several messages gives each return to
//! its message by routing key and message id.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::message::BasicReturnMessage;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Confirmation, Connection, PublisherConfirm};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::convert;
use crate::Error;
use crate::broker::Message;
use crate::outcomes::Outcomes;

/// The most sessions publishing at once on one connection (each on its own
/// channel; RabbitMQ allows 2047 by default); more wait for one to end.
const MAX_SESSIONS: usize = 1024;

/// The most unconfirmed messages of one session.
pub(super) const WINDOW: usize = 512;

/// Where a message is published.
#[derive(Clone, Copy, Debug)]
pub(super) struct Target<'a> {
    pub(super) exchange: &'a str,
    pub(super) routing_key: &'a str,
    /// A job (persistent, to a queue that must exist), or a broadcast.
    pub(super) persistent: bool,
}

impl Target<'_> {
    /// A job for `queue`.
    pub(super) fn queue(queue: &str) -> Target<'_> {
        Target {
            exchange: "",
            routing_key: queue,
            persistent: true,
        }
    }

    /// What a failure names.
    pub(super) fn operation(&self) -> String {
        match self.exchange {
            "" => format!("publish to queue {:?}", self.routing_key),
            exchange => format!("broadcast to exchange {exchange:?}"),
        }
    }
}

/// The idle confirm channels of one publishing connection.
pub(super) struct Channels {
    idle: Mutex<Vec<Channel>>,
    sessions: Arc<Semaphore>,
}

impl Channels {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(Vec::new()),
            sessions: Arc::new(Semaphore::new(MAX_SESSIONS)),
        })
    }

    /// A session on an idle channel, or on a new one of `connection`.
    pub(super) async fn session(
        self: &Arc<Self>,
        connection: &Connection,
    ) -> Result<Session, lapin::Error> {
        let permit = Arc::clone(&self.sessions)
            .acquire_owned()
            .await
            .expect("the session semaphore is never closed");
        let idle = loop {
            let channel = self.idle.lock().expect("channel pool poisoned").pop();
            match channel {
                Some(channel) if !channel.status().connected() => continue,
                channel => break channel,
            }
        };
        let channel = match idle {
            Some(channel) => channel,
            None => {
                let channel = connection.create_channel().await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                channel
            }
        };
        Ok(Session {
            channel: Some(channel),
            channels: Arc::clone(self),
            settled: false,
            _permit: permit,
        })
    }
}

/// One publisher's use of a channel. Its channel goes back to the pool
/// once every confirm came; a session dropped before (a timeout, an
/// abandoned publish) closes its channel instead, with the confirms it
/// still waited for.
pub(super) struct Session {
    channel: Option<Channel>,
    channels: Arc<Channels>,
    settled: bool,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Session {
    fn drop(&mut self) {
        let Some(channel) = self.channel.take() else {
            return;
        };
        if self.settled && channel.status().connected() {
            self.channels
                .idle
                .lock()
                .expect("channel pool poisoned")
                .push(channel);
        }
        // Otherwise dropped: lapin closes a channel when its last handle
        // goes.
    }
}

/// Why the rest of a session's messages were not sent.
enum Unsent {
    /// The broker blocks publishing.
    Blocked(String),
    /// An earlier message failed.
    After(&'static str),
}

impl Unsent {
    fn error(&self, to: Target<'_>) -> Error {
        match self {
            Unsent::Blocked(reason) => Error::Blocked {
                reason: reason.clone(),
            },
            Unsent::After(reason) => Error::NotSent {
                operation: to.operation(),
                reason: (*reason).to_owned(),
            },
        }
    }
}

impl Session {
    /// Publishes each message to its target, in order, with at most
    /// [`WINDOW`] unconfirmed, and returns each one's outcome in order.
    /// `blocked` tells whether the broker blocks publishing now: nothing
    /// more is sent then. Writing a message and waiting for its confirm
    /// are each bounded by `timeout`. `sending(index)` is asked just
    /// before a message is handed to lapin, which may write it from then
    /// on: false skips that message (its publisher is gone), and it is
    /// [`Error::NotSent`].
    pub(super) async fn publish(
        &mut self,
        messages: &[(Target<'_>, &Message)],
        timeout: Duration,
        blocked: impl Fn() -> Option<String>,
        mut sending: impl FnMut(usize) -> bool,
    ) -> Vec<Result<(), Error>> {
        let channel = self.channel.clone().expect("a session has its channel");
        let mut outcomes = Outcomes::new(messages.len());
        let mut returned: Vec<BasicReturnMessage> = Vec::new();
        let mut unconfirmed: VecDeque<(usize, PublisherConfirm)> = VecDeque::new();
        let mut unsent: Option<Unsent> = None;
        // One timer for every send (a timer each would cost a message's
        // worth of time per message): see `bounded_send`.
        let stall = tokio::time::sleep(timeout);
        tokio::pin!(stall);
        // Whether the channel may serve another session: every message
        // sent was confirmed.
        let mut clean = true;
        for (index, (to, message)) in messages.iter().enumerate() {
            if unconfirmed.len() == WINDOW {
                let (first, confirm) = unconfirmed.pop_front().expect("the window is full");
                match confirmed(messages[first].0, confirm, timeout, &mut returned).await {
                    Ok(outcome) => outcomes.set(first, outcome),
                    Err(error) => {
                        outcomes.set(first, Err(error));
                        unsent = Some(Unsent::After("an earlier publish got no confirm"));
                        clean = false;
                        break;
                    }
                }
            }
            if let Some(reason) = blocked() {
                unsent = Some(Unsent::Blocked(reason));
                break;
            }
            if !sending(index) {
                outcomes.set(
                    index,
                    Err(Error::NotSent {
                        operation: to.operation(),
                        reason: "its publisher is gone".to_owned(),
                    }),
                );
                continue;
            }
            // lapin waits for the frames to be written, which it does not
            // while the broker blocks the connection.
            match bounded_send(&channel, *to, message, timeout, stall.as_mut()).await {
                Ok(Ok(confirm)) => unconfirmed.push_back((index, confirm)),
                Ok(Err(error)) => {
                    outcomes.set(index, Err(Error::broker(to.operation(), error)));
                    unsent = Some(Unsent::After("an earlier publish failed"));
                    clean = false;
                    break;
                }
                Err(()) => {
                    // Handed to lapin, which may still write it.
                    outcomes.set(
                        index,
                        Err(Error::Timeout {
                            operation: to.operation(),
                            after: timeout,
                        }),
                    );
                    unsent = Some(Unsent::After("an earlier publish was not written in time"));
                    clean = false;
                    break;
                }
            }
        }
        // What was sent is confirmed (or not) whatever stopped the sending;
        // after a confirm that did not come, the rest are not waited for,
        // but those that came already count (of a session's messages, one
        // to a queue that cannot confirm leaves the others theirs).
        while let Some((index, confirm)) = unconfirmed.pop_front() {
            let to = messages[index].0;
            if !clean {
                let came = confirmed(to, confirm, Duration::ZERO, &mut returned).await;
                outcomes.set(
                    index,
                    came.unwrap_or_else(|_| {
                        Err(Error::Timeout {
                            operation: to.operation(),
                            after: timeout,
                        })
                    }),
                );
                continue;
            }
            match confirmed(to, confirm, timeout, &mut returned).await {
                Ok(outcome) => outcomes.set(index, outcome),
                Err(error) => {
                    outcomes.set(index, Err(error));
                    clean = false;
                }
            }
        }
        self.settled = clean;
        let mut outcomes = outcomes.finish(|index| {
            Err(unsent
                .as_ref()
                .expect("a message unsent means a stop")
                .error(messages[index].0))
        });
        for message in returned {
            attribute(&message, messages, &mut outcomes);
        }
        outcomes
    }
}

/// Sends `message`, giving up once the send took `timeout`. `stall` is the
/// session's one timer: when it goes off during a send that started less
/// than `timeout` ago, it is set again for that send.
async fn bounded_send(
    channel: &Channel,
    to: Target<'_>,
    message: &Message,
    timeout: Duration,
    mut stall: std::pin::Pin<&mut tokio::time::Sleep>,
) -> Result<Result<PublisherConfirm, lapin::Error>, ()> {
    let started = tokio::time::Instant::now();
    let send = send(channel, to, message);
    tokio::pin!(send);
    loop {
        tokio::select! {
            biased;
            sent = &mut send => return Ok(sent),
            () = &mut stall => {
                if started.elapsed() >= timeout {
                    return Err(());
                }
                stall.as_mut().reset(started + timeout);
            }
        }
    }
}

async fn send(
    channel: &Channel,
    to: Target<'_>,
    message: &Message,
) -> Result<PublisherConfirm, lapin::Error> {
    let mut properties = convert::properties(message);
    if !to.persistent {
        properties = properties.with_delivery_mode(1);
    }
    channel
        .basic_publish(
            to.exchange.into(),
            to.routing_key.into(),
            BasicPublishOptions {
                // A job must reach its queue; a broadcast without
                // listeners goes nowhere, as it should.
                mandatory: to.persistent,
                immediate: false,
            },
            &message.body,
            properties,
        )
        .await
}

/// Waits for `confirm`: `Ok(outcome)` when it came (a return it carries
/// goes to `returned`, whoever's it is), `Err` when it did not in time or
/// the channel failed. A return does not decide the outcome here: see
/// [`attribute`].
async fn confirmed(
    to: Target<'_>,
    confirm: PublisherConfirm,
    timeout: Duration,
    returned: &mut Vec<BasicReturnMessage>,
) -> Result<Result<(), Error>, Error> {
    let confirmation = tokio::time::timeout(timeout, confirm)
        .await
        .map_err(|_| Error::Timeout {
            operation: to.operation(),
            after: timeout,
        })?
        .map_err(|e| Error::broker(to.operation(), e))?;
    Ok(match confirmation {
        Confirmation::Ack(message) => {
            returned.extend(message);
            Ok(())
        }
        Confirmation::Nack(message) => {
            returned.extend(message);
            Err(Error::PublishRejected {
                queue: to.routing_key.to_owned(),
            })
        }
        Confirmation::NotRequested => Err(Error::broker(
            to.operation(),
            "the publishing channel is not in confirm mode",
        )),
    })
}

/// Marks the message of the session that `message` is the return of as
/// unroutable: the one with its routing key and message id (every one
/// with both, if ids repeat). A return that matches none (it should not
/// happen) marks every message with its routing key: a possible loss
/// becomes a possible duplicate.
fn attribute(
    message: &BasicReturnMessage,
    messages: &[(Target<'_>, &Message)],
    outcomes: &mut [Result<(), Error>],
) {
    let routing_key = message.delivery.routing_key.as_str();
    let id = message
        .delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str());
    let to_queue = |to: &Target<'_>| to.persistent && to.routing_key == routing_key;
    let matches = messages
        .iter()
        .any(|(to, sent)| to_queue(to) && sent.id.as_deref() == id);
    for ((to, sent), outcome) in messages.iter().zip(outcomes.iter_mut()) {
        if to_queue(to) && (!matches || sent.id.as_deref() == id) {
            *outcome = Err(Error::Unroutable {
                queue: routing_key.to_owned(),
                reason: message.reply_text.to_string(),
            });
        }
    }
}
