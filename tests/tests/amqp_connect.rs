//! Connecting to a cluster: addresses are tried in turn.

use qjob::{AmqpBroker, AmqpOptions, Error};
use qjob_tests::amqp_url;

const NOBODY: &str = "amqp://guest:secret@127.0.0.1:1/%2f";

#[tokio::test]
async fn the_first_address_that_answers_is_used() {
    let broker = AmqpBroker::connect_with([NOBODY.to_owned(), amqp_url()], AmqpOptions::default())
        .await
        .unwrap();
    assert_eq!(broker.blocked(), None);
    let queue = "qjob.test.connect.cluster";
    let spec = qjob::broker::QueueSpec::new(queue);
    qjob::Broker::declare_queue(&broker, &spec).await.unwrap();
}

#[tokio::test]
async fn no_address_answering_is_an_error_naming_them_all() {
    let other = "amqp://guest:secret@127.0.0.1:2/%2f".to_owned();
    let error = AmqpBroker::connect_with([NOBODY.to_owned(), other], AmqpOptions::default())
        .await
        .unwrap_err();
    let Error::Connect { url, .. } = &error else {
        panic!("expected a connect error, got {error:?}");
    };
    assert!(
        url.contains("127.0.0.1:1") && url.contains("127.0.0.1:2"),
        "{url}"
    );
    assert!(
        !error.to_string().contains("secret"),
        "passwords are hidden: {error}"
    );
}
