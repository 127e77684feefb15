//! Enqueueing many jobs: [`Client::enqueue_all`], a chunk at a time, each
//! chunk's unique locks claimed together and its messages published over
//! a few channels at once.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use futures_util::StreamExt;
use tracing::Instrument;

use super::message::{full, maybe_stored};
use super::unique::{Claim, Unlock, unless_stored};
use super::{Client, enqueue_span};
use crate::Error;
use crate::broker::{Broker, Message, Sent};
use crate::outcomes::Outcomes;
use crate::{Job, JobId};

/// Messages of one [`Broker::publish_all`], each with its index in the
/// batch it came from.
type Lane = Vec<(usize, (String, Message))>;

/// Whether `J`'s queues keep its jobs in order: partitioned or
/// single-active (the queues say so, not a worker's settings).
fn keeps_order<J: Job>() -> bool {
    let options = J::options();
    options.partitions().is_some() || options.single_active()
}

/// The error of a job of a batch not sent because an earlier one `reason`
/// ("was not stored", "may not have been stored").
fn not_after<J: Job>(reason: &str) -> Error {
    Error::NotSent {
        operation: format!("enqueue job {}", J::NAME),
        reason: format!("an earlier job of the batch {reason}"),
    }
}

/// Splits a batch of `J`'s messages into lanes published concurrently:
/// one per [`LANE_MIN`] messages, at most [`LANES`]. A job whose queues
/// keep an order ([`keeps_order`]) has each of its queues whole on one
/// lane, in input order. Any other job runs concurrently anyway: its batch
/// is cut into contiguous runs, so one queue fills through several
/// channels.
fn lanes<J: Job>(messages: Vec<(String, Message)>) -> Vec<Lane> {
    let ordered = keeps_order::<J>();
    let count = messages.len();
    let lanes = (count / LANE_MIN).clamp(1, LANES);
    let per_lane = count.div_ceil(lanes);
    let mut by_queue: HashMap<String, usize> = HashMap::new();
    let mut split: Vec<Lane> = (0..lanes).map(|_| Vec::new()).collect();
    for (index, (queue, message)) in messages.into_iter().enumerate() {
        let lane = if ordered {
            let queues = by_queue.len();
            *by_queue.entry(queue.clone()).or_insert(queues % lanes)
        } else {
            index / per_lane
        };
        split[lane].push((index, (queue, message)));
    }
    split.retain(|lane| !lane.is_empty());
    split
}

/// How many locks [`Client::enqueue_all`] claims at once.
const PIPELINE: usize = 512;

/// How many jobs [`Client::enqueue_all`] has in flight at most: the
/// next chunk is sent once every job of this one was confirmed.
const CHUNK: usize = 16_384;

/// How many [`Broker::publish_all`] of one chunk run at once, each on its
/// own channel. One queue's messages are stored by one broker process, so
/// more lanes than this gain nothing (`benches/throughput.rs`).
const LANES: usize = 4;

/// Jobs of a batch per lane: a batch of fewer than twice this goes out on
/// one channel, since another costs more than it brings.
const LANE_MIN: usize = 1_024;

/// A job of [`Client::enqueue_all`] with its lock claimed.
#[expect(
    clippy::large_enum_variant,
    reason = "a chunk of them at a time; boxing would allocate for every job"
)]
enum Claimed {
    Publish {
        id: JobId,
        queue: String,
        message: Message,
        guard: Option<Unlock>,
    },
    Duplicate(JobId),
}

impl Client {
    /// Publishes many jobs with their confirms pipelined, and returns each
    /// one's outcome in input order.
    ///
    /// A job whose queues keep an order (partitioned or `single_active`)
    /// is published to each of its queues in input order, its partition
    /// queues side by side: a key keeps its order. Any other job's
    /// handlers run in no set order: a batch of 2 048 jobs or more is
    /// spread over up to four channels at once, so its jobs may reach the
    /// queue in another order than given (and on a full `reject-publish`
    /// queue, the refused ones are not only the last).
    ///
    /// A job that may have been stored (a timeout, a lost connection) stops
    /// the batch: the jobs after its chunk of 16 384 are
    /// [`Error::NotSent`]. For a job whose queues keep an order, so does
    /// any job that was not stored, and one that could not be made or
    /// claimed (serialization, the unique store) also stops the jobs after
    /// it in its chunk. The broker's refusals (a full queue) come back
    /// while the chunk is being sent, so its later jobs still go out: on a
    /// capped queue that a worker drains meanwhile, a key's later job may
    /// be stored after its refused one. The `Ok` results were stored;
    /// enqueue the `Err` ones again, in order. A unique job that was not
    /// stored has its lock free again when this returns; dropped before,
    /// this keeps the locks of the jobs whose messages went out, as
    /// [`Client::enqueue_unique`] does.
    ///
    /// # Errors
    ///
    /// The outer error is a failure to declare the queues (nothing was
    /// published); each inner result is as for [`Client::enqueue`].
    pub async fn enqueue_all<J: Job>(
        &self,
        payloads: impl IntoIterator<Item = J::Payload>,
    ) -> Result<Vec<Result<JobId, Error>>, Error> {
        let payloads: Vec<_> = payloads.into_iter().collect();
        let span = enqueue_span::<J>(payloads.len());
        async {
            self.ensure_declared::<J>().await?;
            let mut results = Vec::with_capacity(payloads.len());
            let mut payloads = payloads.into_iter().peekable();
            // A chunk at a time, each confirmed before the next is sent:
            // order holds where it is kept, and memory is bounded by the
            // chunk.
            while payloads.peek().is_some() {
                let chunk: Vec<_> = payloads.by_ref().take(CHUNK).collect();
                let size = chunk.len();
                let claimed = self.claim_chunk::<J>(chunk).await;
                let chunk = match self.publish_chunk::<J>(claimed).await {
                    Ok(chunk) => chunk,
                    // Nothing published yet: the batch is closed, or the
                    // store failed.
                    Err(error) if results.is_empty() => return Err(error),
                    Err(error) => {
                        let reason = format!("its batch could not count it ({error})");
                        let unsent = size + payloads.by_ref().count();
                        results.extend((0..unsent).map(|_| {
                            Err(Error::NotSent {
                                operation: format!("enqueue job {}", J::NAME),
                                reason: reason.clone(),
                            })
                        }));
                        break;
                    }
                };
                let failed = chunk.iter().filter_map(|result| result.as_ref().err());
                // A job of the chunk may yet be stored late, on its own
                // channel, and the next ones could overtake it; and one of
                // an ordered job type that was not stored must not be
                // overtaken either.
                let stop =
                    match failed.fold(None, |worst, error| worst.max(Some(maybe_stored(error)))) {
                        Some(true) => Some("may not have been stored"),
                        Some(false) if keeps_order::<J>() => Some("was not stored"),
                        _ => None,
                    };
                results.extend(chunk);
                if let Some(reason) = stop {
                    results.extend(payloads.by_ref().map(|_| Err(not_after::<J>(reason))));
                }
            }
            Ok(results)
        }
        .instrument(span)
        .await
    }

    /// Makes the messages of `payloads` and claims the locks of the unique
    /// ones.
    async fn claim_chunk<J: Job>(&self, payloads: Vec<J::Payload>) -> Vec<Result<Claimed, Error>> {
        let options = &J::options();
        futures_util::stream::iter(payloads)
            .map(|payload| async move {
                let (id, message, lock) = self.unique_message::<J>(&payload)?;
                let queue = Self::target_now::<J>(options, &payload).into_owned();
                Ok(match self.claim::<J>(lock, &id).await? {
                    Claim::Held(holder) => Claimed::Duplicate(holder),
                    Claim::Free(guard) => Claimed::Publish {
                        id,
                        queue,
                        message,
                        guard,
                    },
                })
            })
            .buffered(PIPELINE)
            .collect()
            .await
    }

    /// Publishes the messages of a claimed chunk over [`lanes`], and
    /// returns each job's outcome in input order. The members of a batch
    /// are counted in it just before they are published (see
    /// [`super::batch::count`]); the outer error is that count's, and
    /// nothing was published then.
    async fn publish_chunk<J: Job>(
        &self,
        claimed: Vec<Result<Claimed, Error>>,
    ) -> Result<Vec<Result<JobId, Error>>, Error> {
        let mut chunk = Chunk::<J>::sort(claimed);
        let count = chunk.outgoing.len();
        let lanes = chunk.lanes();
        let counted = match &self.batch {
            Some(batch) if count > 0 => {
                let sent = lanes.iter().map(|(sent, _)| Arc::clone(sent)).collect();
                Some(super::batch::count(self, batch, count, sent).await?)
            }
            _ => None,
        };
        let outcomes = self.publish_lanes(count, lanes).await;
        let not_stored = chunk.record(outcomes);
        // A member not stored will not finish: it is taken back.
        if let Some(counted) = counted {
            counted.settle(not_stored).await;
        }
        chunk.fail_duplicates_of_lost();
        Ok(chunk.finish().await)
    }

    /// Publishes each lane with its own [`Broker::publish_all_tracked`],
    /// marking what went out in the lane's [`Sent`], up to [`LANES`] at
    /// once, and returns the outcome of each of the `count` messages at
    /// the index [`lanes`] gave it.
    async fn publish_lanes(
        &self,
        count: usize,
        lanes: Vec<(Arc<Sent>, Lane)>,
    ) -> Vec<Result<(), Error>> {
        let mut outcomes = Outcomes::new(count);
        let mut published = futures_util::stream::iter(lanes)
            .map(|(sent, lane)| async move {
                let (indices, messages): (Vec<usize>, Vec<_>) = lane.into_iter().unzip();
                let lane = self.broker.publish_all_tracked(messages, &sent).await;
                indices.into_iter().zip(lane)
            })
            .buffer_unordered(LANES);
        while let Some(lane) = published.next().await {
            for (index, outcome) in lane {
                outcomes.set(index, outcome);
            }
        }
        outcomes.finish(|_| {
            Err(Error::broker(
                "publish",
                "the broker gave no outcome for it",
            ))
        })
    }
}

/// A claimed chunk of [`Client::enqueue_all`], on its way out: what goes
/// out, what does not, and each job's outcome by its index in the chunk.
struct Chunk<J> {
    /// Each job's outcome; a job that goes out has none until its
    /// publish answered.
    results: Outcomes<Result<JobId, Error>>,
    /// The messages that go out, in order.
    outgoing: Vec<(String, Message)>,
    /// For each message of `outgoing`: its job's index, id and lock.
    waiting: Vec<(usize, JobId, Option<Unlock>)>,
    /// The duplicates, by index: the job holding their key may be one of
    /// this chunk's.
    duplicates: Vec<usize>,
    /// The jobs of this chunk that were not stored, with why: a duplicate
    /// of one of them is not stored either.
    lost: HashMap<JobId, String>,
    /// The locks that go back before the results.
    releases: Vec<Unlock>,
    job: PhantomData<fn() -> J>,
}

impl<J: Job> Chunk<J> {
    /// Sorts the claimed jobs: those that go out, the duplicates, those
    /// that failed. A job of an ordered job type that cannot go out stops
    /// the ones after it, which would overtake it.
    fn sort(claimed: Vec<Result<Claimed, Error>>) -> Self {
        let mut chunk = Self {
            results: Outcomes::with_capacity(claimed.len()),
            outgoing: Vec::new(),
            waiting: Vec::new(),
            duplicates: Vec::new(),
            lost: HashMap::new(),
            releases: Vec::new(),
            job: PhantomData,
        };
        let mut stopped = false;
        for claimed in claimed {
            match claimed {
                Ok(Claimed::Publish { id, guard, .. }) if stopped => {
                    let error = not_after::<J>("was not stored");
                    chunk.lost.insert(id, error.to_string());
                    chunk.releases.extend(guard);
                    chunk.results.push(Some(Err(error)));
                }
                Ok(Claimed::Duplicate(_)) if stopped => {
                    chunk
                        .results
                        .push(Some(Err(not_after::<J>("was not stored"))));
                }
                Ok(Claimed::Publish {
                    id,
                    queue,
                    message,
                    guard,
                }) => {
                    chunk.outgoing.push((queue, message));
                    let index = chunk.results.push(None);
                    chunk.waiting.push((index, id, guard));
                }
                Ok(Claimed::Duplicate(holder)) => {
                    let index = chunk.results.push(Some(Ok(holder)));
                    chunk.duplicates.push(index);
                }
                Err(error) => {
                    stopped = keeps_order::<J>();
                    chunk.results.push(Some(Err(error)));
                }
            }
        }
        chunk
    }

    /// The outgoing messages split into [`lanes`], each with the [`Sent`]
    /// its publish marks. Dropped mid-publish from then on, the chunk
    /// keeps the locks of the jobs that went out, confirmed or not, and
    /// gives back the others'.
    fn lanes(&mut self) -> Vec<(Arc<Sent>, Lane)> {
        let outgoing = std::mem::take(&mut self.outgoing);
        let lanes: Vec<(Arc<Sent>, Lane)> = lanes::<J>(outgoing)
            .into_iter()
            .map(|lane| (Arc::default(), lane))
            .collect();
        for (sent, lane) in &lanes {
            for (position, (index, _)) in lane.iter().enumerate() {
                if let Some(guard) = &mut self.waiting[*index].2 {
                    guard.kept_once_sent(sent, position);
                }
            }
        }
        lanes
    }

    /// Records the publish's outcomes, in the order of the outgoing
    /// messages: each lock goes back unless its job was (or may have
    /// been) stored. Returns how many jobs were not stored.
    fn record(&mut self, outcomes: Vec<Result<(), Error>>) -> usize {
        let mut not_stored = 0;
        for ((index, id, guard), outcome) in self.waiting.drain(..).zip(outcomes) {
            let outcome = outcome.map_err(full::<J>);
            self.releases.extend(unless_stored(guard, &outcome));
            if let Err(error) = &outcome
                && !maybe_stored(error)
            {
                not_stored += 1;
                self.lost.insert(id.clone(), error.to_string());
            }
            self.results.set(index, outcome.map(|()| id));
        }
        not_stored
    }

    /// A duplicate whose key's holder is a job of this chunk that was not
    /// stored was not stored either.
    fn fail_duplicates_of_lost(&mut self) {
        for &index in &self.duplicates {
            if let Some(Ok(holder)) = self.results.get(index)
                && let Some(error) = self.lost.get(holder)
            {
                let error = Error::NotSent {
                    operation: format!("enqueue job {}", J::NAME),
                    reason: format!(
                        "the job {holder} holding its key in the same batch was not stored ({error})"
                    ),
                };
                self.results.set(index, Err(error));
            }
        }
    }

    /// Gives back the locks of the jobs not stored, then returns each
    /// job's outcome in input order.
    async fn finish(self) -> Vec<Result<JobId, Error>> {
        // Given back before the results, so that enqueueing a key again
        // (the next chunk, or the caller's retry) finds it free.
        futures_util::stream::iter(self.releases)
            .for_each_concurrent(PIPELINE, Unlock::release)
            .await;
        // A broker that answered for fewer messages than it was given:
        // the others' fate is unknown.
        self.results.finish(|_| {
            Err(Error::broker(
                format!("enqueue job {}", J::NAME),
                "the broker gave no outcome for it",
            ))
        })
    }
}
