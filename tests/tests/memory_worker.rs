//! The worker scenarios on MemoryBroker: the same scenarios and job code as
//! on RabbitMQ (`amqp_worker.rs`).

qjob_tests::worker_tests!(qjob_tests::scenarios::Env::memory().await);
