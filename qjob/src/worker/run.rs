//! Running a [`Worker`]: declaring its queues, subscribing its consumers,
//! running them with its schedules, relays, autoscalers and console until
//! shutdown, and stopping in order.

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use crate::broker::Subscription;
use crate::protocol::WorkerState;
use crate::worker::console::{self, Console};
use crate::worker::consumer::Consumer;
use crate::worker::plan::JobPlan;
use crate::worker::sampler::Sampled;
#[cfg(feature = "periodic")]
use crate::worker::schedule_control::ScheduleControl;
#[cfg(feature = "periodic")]
use crate::worker::scheduler;
use crate::worker::{Worker, checks, metrics, sampler, scaler};
use crate::{Error, topology};

impl Worker {
    /// Consumes until `shutdown` resolves, then stops taking deliveries,
    /// lets in-flight handlers finish within the shutdown timeout and closes
    /// its consumers, so the broker redelivers everything not settled.
    ///
    /// A consumer whose subscription fails later is resubscribed with
    /// backoff; it does not end the run.
    ///
    /// # Errors
    ///
    /// At start only: no job registered, two jobs on one queue, a malformed
    /// `QJOB_<QUEUE>_…` override ([`Error::Config`]), or the broker refusing
    /// to declare a queue or to start a consumer. Nothing has been consumed
    /// when it returns an error.
    #[cfg_attr(not(feature = "periodic"), allow(unused_mut))]
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let inherited = self.inherited_shards().await?;
        let plans = self.plans(&inherited)?;
        #[cfg(feature = "periodic")]
        let schedules = self.schedules()?;
        self.prepare(&plans).await?;
        #[cfg(feature = "postgres")]
        let relays = self.relays(&plans).await?;
        let sampled: Vec<Sampled> = plans.iter().map(JobPlan::sampled).collect();
        let mut consumers = Vec::new();
        let mut scaled = Vec::new();
        let mut console_jobs = Vec::new();
        for plan in plans {
            consumers.extend(plan.consumers);
            scaled.extend(plan.scaled);
            console_jobs.push(plan.console);
        }
        console::unname_shared_types(&mut console_jobs);
        let subscriptions = self.subscribe(&consumers).await?;
        let stop = CancellationToken::new();
        let mut running = tokio::task::JoinSet::new();
        for (consumer, subscription) in consumers.into_iter().zip(subscriptions) {
            running.spawn(consumer.run(subscription, stop.clone()));
        }
        for job in scaled {
            running.spawn(scaler::run(
                self.broker.clone(),
                job,
                self.autoscale_interval,
                self.health.clone(),
                stop.clone(),
            ));
        }
        #[cfg_attr(not(feature = "periodic"), allow(unused_mut))]
        let mut schedule_controls = Vec::new();
        #[cfg(feature = "periodic")]
        for planned in schedules {
            self.health.add_schedule(&planned.name, planned.health());
            let (control, controlled) = ScheduleControl::pair(&planned.name);
            schedule_controls.push(control);
            running.spawn(scheduler::run(
                self.broker.clone(),
                planned,
                self.health.clone(),
                self.broker_consumer_timeout,
                controlled,
                stop.clone(),
            ));
        }
        #[cfg(feature = "postgres")]
        for relay in relays {
            running.spawn(relay.relay_until(stop.clone().cancelled_owned()));
        }
        running.spawn(sampler::run(
            self.broker.clone(),
            sampled,
            self.sample_interval,
            stop.clone(),
        ));
        self.health.running(true);
        // The console's tasks outlive the consumers: a stopping worker
        // still reports (as stopping) and takes cancels while its
        // in-flight handlers finish.
        let end_console = CancellationToken::new();
        let mut console_tasks = tokio::task::JoinSet::new();
        let console = if self.console {
            let console = Arc::new(Console {
                broker: self.broker.clone(),
                worker_id: self.id.clone(),
                started_at: SystemTime::now(),
                interval: self.heartbeat_interval,
                health: self.health.clone(),
                jobs: console_jobs,
                schedules: schedule_controls,
                cancellations: self.cancellations.clone(),
            });
            // Listening before the first heartbeat: a console that sees
            // the worker can command it.
            let listener = console.listen().await;
            console_tasks.spawn(console.clone().commands(listener, end_console.clone()));
            console_tasks.spawn(
                console
                    .clone()
                    .heartbeats(stop.clone(), end_console.clone()),
            );
            Some(console)
        } else {
            None
        };
        shutdown.await;
        tracing::info!("shutting down: no new deliveries, waiting for in-flight handlers");
        stop.cancel();
        if let Some(console) = &console {
            console.heartbeat(WorkerState::Stopping).await;
        }
        while let Some(joined) = running.join_next().await {
            if let Err(error) = joined
                && error.is_panic()
            {
                tracing::error!(%error, "a consumer task panicked");
            }
        }
        self.health.running(false);
        end_console.cancel();
        while console_tasks.join_next().await.is_some() {}
        if let Some(console) = &console {
            console.heartbeat(WorkerState::Stopped).await;
        }
        Ok(())
    }

    /// The relays to run, each told the registered jobs' options, once
    /// each has found its table.
    #[cfg(feature = "postgres")]
    async fn relays(&mut self, plans: &[JobPlan]) -> Result<Vec<crate::outbox::Relay>, Error> {
        let relays = std::mem::take(&mut self.relays);
        for relay in &relays {
            for plan in plans {
                relay.knows(plan.job, &plan.options);
            }
            relay.check().await?;
        }
        Ok(relays)
    }

    /// Declares every job's queues, and warns about jobs that could outlast
    /// the broker's consumer timeout.
    async fn prepare(&self, plans: &[JobPlan]) -> Result<(), Error> {
        for plan in plans {
            topology::declare(&*self.broker, &plan.options).await?;
        }
        for JobPlan {
            job,
            options,
            consumers,
            ..
        } in plans
        {
            let warning =
                checks::consumer_timeout_warning(job, options, self.broker_consumer_timeout);
            let starved = checks::prefetch_warning(job, options, consumers.len());
            for warning in warning.into_iter().chain(starved) {
                tracing::warn!("{warning}");
            }
            let slots = options.autoscale().map_or(options.concurrency(), |a| a.min);
            metrics::concurrency(options.queue(), slots);
            tracing::info!(
                job,
                queue = options.queue(),
                consumers = consumers.len(),
                prefetch = options.prefetch(),
                concurrency = options.concurrency(),
                "consuming"
            );
        }
        Ok(())
    }

    /// Subscribes every consumer; if one fails, closes the others.
    async fn subscribe(&self, consumers: &[Consumer]) -> Result<Vec<Box<dyn Subscription>>, Error> {
        let mut subscriptions = Vec::with_capacity(consumers.len());
        for consumer in consumers {
            match consumer.subscribe().await {
                Ok(subscription) => {
                    self.health.consumer(consumer.queue(), true);
                    subscriptions.push(subscription);
                }
                Err(error) => {
                    self.health.error(&error);
                    for subscription in subscriptions {
                        let _ = subscription.close().await;
                    }
                    return Err(error);
                }
            }
        }
        Ok(subscriptions)
    }
}
