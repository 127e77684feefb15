//! The console scenarios on MemoryBroker: the same scenarios as on
//! RabbitMQ (`amqp_console.rs`).

qjob_tests::console_tests!(qjob_tests::scenarios::Env::memory().await);
