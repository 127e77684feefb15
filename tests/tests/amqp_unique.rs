//! The unique-job scenarios on RabbitMQ: the same as in memory
//! (`memory_unique.rs`).

qjob_tests::unique_tests!(qjob_tests::scenarios::Env::amqp().await);
