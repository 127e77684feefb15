//! The unique-job scenarios on MemoryBroker: the same as on RabbitMQ
//! (`amqp_unique.rs`).

qjob_tests::unique_tests!(qjob_tests::scenarios::Env::memory().await);
