//! Dead letters through the console: browsing many leaves them in place
//! and in order; replay and discard do what they say.

use std::sync::atomic::Ordering;

use qjob::admin::LetterFilter;
use qjob::broker::{HeaderValue, Message, QueueSpec};
use qjob::{DeadReason, Job, headers};

use super::support::{connect, start};
use crate::env::{Env, LIMIT};
use crate::{Act, Task, probe, test_job};

test_job!(browse, "qjob.test.console.browse");
test_job!(replay, "qjob.test.console.replay", retry = 0);

pub async fn browsing_1000_dead_letters_leaves_them_in_place_and_in_order(env: &Env) {
    env.reset::<BrowseJob>().await;
    let dlq = BrowseJob::options().dead_letter_queue();
    let broker = env.broker();
    broker
        .declare_queue(&QueueSpec::new(dlq.clone()))
        .await
        .unwrap();
    let ids: Vec<String> = (0..1000).map(|n| format!("letter-{n:04}")).collect();
    for (n, id) in ids.iter().enumerate() {
        let mut message = Message::new(format!(r#"{{"n":{n}}}"#)).with_id(id.clone());
        let reason = if n % 2 == 0 {
            "permanent"
        } else {
            "retries-exhausted"
        };
        message
            .headers
            .insert(headers::REASON.into(), reason.into());
        message
            .headers
            .insert(headers::ERROR.into(), format!("error {n}").into());
        message
            .headers
            .insert(headers::ATTEMPTS.into(), HeaderValue::Int(3));
        broker.publish(&dlq, message).await.unwrap();
    }
    let admin = connect(env).await;
    let mut browsed = Vec::new();
    for page in 0..4 {
        let letters = admin
            .dead_letters(&dlq, &LetterFilter::all(), page * 250, 250)
            .await
            .unwrap();
        assert_eq!(letters.len(), 250);
        browsed.extend(letters);
        // Each letter goes back as soon as the page is read.
        env.wait_ready(&dlq, 1000).await;
    }
    let browsed_ids: Vec<String> = browsed
        .iter()
        .map(|l| l.job_id.clone().unwrap().to_string())
        .collect();
    assert!(browsed_ids == ids, "pages in queue order");
    let last = &browsed[999];
    assert_eq!(last.payload, Some(serde_json::json!({ "n": 999 })));
    assert_eq!(
        (last.reason.clone(), last.error.as_str(), last.attempts),
        (DeadReason::RetriesExhausted, "error 999", 3)
    );
    assert!(
        admin
            .dead_letters(&dlq, &LetterFilter::all(), 990, 100)
            .await
            .unwrap()
            .len()
            == 10
    );
    env.wait_ready(&dlq, 1000).await;
    // Filtered: the offset counts the letters that pass.
    let odd = LetterFilter::all().reason("retries-exhausted");
    let page = admin.dead_letters(&dlq, &odd, 10, 3).await.unwrap();
    let filtered: Vec<String> = page
        .iter()
        .map(|l| l.job_id.clone().unwrap().to_string())
        .collect();
    assert_eq!(filtered, ["letter-0021", "letter-0023", "letter-0025"]);
    env.wait_ready(&dlq, 1000).await;
    let left: Vec<String> = env
        .take_all(&dlq)
        .await
        .into_iter()
        .map(|got| got.id.unwrap())
        .collect();
    assert!(left == ids, "all in place, in order");
}

pub async fn replay_and_discard_do_what_they_say(env: &Env) {
    env.reset::<ReplayJob>().await;
    let tag = env.tag::<ReplayJob>();
    let probe = probe(&tag);
    let dlq = ReplayJob::options().dead_letter_queue();
    let admin = connect(env).await;
    let worker = start(env, ReplayJob);
    let client = env.client();
    let mut ids = Vec::new();
    for seq in 0..4 {
        let act = if seq == 3 {
            Act::FailPermanently
        } else {
            Act::FailUntilReleased
        };
        ids.push(
            client
                .enqueue::<ReplayJob>(Task::new(&tag, seq, act))
                .await
                .unwrap()
                .to_string(),
        );
    }
    env.wait_ready(&dlq, 4).await;

    assert!(admin.discard(&dlq, &ids[1]).await.unwrap());
    assert!(!admin.discard(&dlq, &ids[1]).await.unwrap(), "gone already");
    let shown = admin.dead_letter(&dlq, &ids[2]).await.unwrap().unwrap();
    assert_eq!(shown.reason, DeadReason::RetriesExhausted);
    assert_eq!(shown.error, "task 2 not released");
    // The four failed at once, so their letters' order is any.
    let mut left: Vec<String> = admin
        .dead_letters(&dlq, &LetterFilter::all(), 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|letter| letter.job_id.unwrap().to_string())
        .collect();
    left.sort();
    let mut expected = [ids[0].clone(), ids[2].clone(), ids[3].clone()];
    expected.sort();
    assert_eq!(left, expected);

    probe.release();
    assert!(admin.replay(&dlq, &ids[2]).await.unwrap());
    probe.wait_succeeded("the replayed job", LIMIT, 1).await;
    assert_eq!(*probe.done.lock().unwrap(), [2]);
    let matching = LetterFilter::all()
        .reason("retries-exhausted")
        .error_contains("not released");
    assert_eq!(admin.replay_matching(&dlq, &matching).await.unwrap(), 1);
    probe.wait_succeeded("the matching job", LIMIT, 2).await;
    assert_eq!(*probe.done.lock().unwrap(), [2, 0]);
    assert_eq!(admin.purge(&dlq).await.unwrap(), 1, "the permanent one");
    assert_eq!(env.ready(&dlq).await, 0);
    worker.stop().await.unwrap();
    assert_eq!(
        probe.attempts.load(Ordering::SeqCst),
        6,
        "4 first attempts and 2 replays"
    );
}
