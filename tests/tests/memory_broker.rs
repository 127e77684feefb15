//! The broker conformance scenarios on MemoryBroker.

qjob_tests::conformance_tests!(qjob_tests::scenarios::Env::memory().await);
