//! The console scenarios on RabbitMQ: the same scenarios as in memory
//! (`memory_console.rs`).

qjob_tests::console_tests!(qjob_tests::scenarios::Env::amqp().await);
