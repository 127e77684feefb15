//! The broker conformance scenarios on RabbitMQ.

qjob_tests::conformance_tests!(qjob_tests::scenarios::Env::amqp().await);
