//! The macros that define a suite's tests from the scenarios, once per
//! broker: `tests/memory_*.rs` and `tests/amqp_*.rs` each call one with the
//! broker they test.

/// Defines every broker conformance scenario as a test on the broker that
/// `$env` (an async expression giving a `scenarios::Env`) makes.
#[macro_export]
macro_rules! conformance_tests {
    ($env:expr) => {
        $crate::conformance_tests!(@tests $env;
            publish_to_a_missing_queue_is_unroutable "qjob.test.conformance.missing",
            a_tracked_publish_marks_what_it_sent "qjob.test.conformance.tracked",
            each_publisher_learns_its_own_return "qjob.test.conformance.returns",
            a_full_queue_rejects_publishes "qjob.test.conformance.full",
            a_full_quorum_queue_rejects_publishes "qjob.test.conformance.quorum-full",
            redeclaring_with_other_arguments_fails "qjob.test.conformance.redeclare",
            prefetch_bounds_unacked_deliveries "qjob.test.conformance.prefetch",
            requeued_messages_come_back_redelivered "qjob.test.conformance.requeue",
            closing_a_subscription_returns_what_it_held "qjob.test.conformance.close",
            messages_arrive_as_published "qjob.test.conformance.roundtrip",
            single_active_consumer_fails_over "qjob.test.conformance.single-active",
            rejected_messages_are_dead_lettered_with_x_death "qjob.test.conformance.reject-dlx",
            rejected_messages_without_a_target_are_dropped "qjob.test.conformance.reject-drop",
            dead_letters_into_a_full_queue_are_dropped "qjob.test.conformance.dead-letter-full",
            expired_messages_move_to_the_target_in_order "qjob.test.conformance.ttl",
            a_second_expiry_counts_up_in_x_death_on_3_and_anew_on_4 "qjob.test.conformance.ttl-twice",
            a_requeued_message_keeps_its_position "qjob.test.conformance.requeue-position",
            connection_loss_returns_unsettled_deliveries "qjob.test.conformance.connection-loss",
            a_cancelled_consumer_still_settles_what_it_holds "qjob.test.conformance.cancel",
            consumers_take_turns "qjob.test.conformance.round-robin",
            max_length_counts_ready_messages_only "qjob.test.conformance.max-length-ready",
            an_unused_queue_expires "qjob.test.conformance.expires",
            get_takes_messages_one_at_a_time "qjob.test.conformance.get",
            a_classic_standby_gets_unsettled_messages_in_order "qjob.test.conformance.standby-classic",
            a_quorum_standby_gets_unsettled_messages_in_order "qjob.test.conformance.standby-quorum",
            a_prefetch_change_applies_to_the_live_subscription "qjob.test.conformance.prefetch-change",
            a_prefetch_change_applies_to_a_live_quorum_subscription "qjob.test.conformance.prefetch-change-quorum",
            a_quorum_queue_dead_letters_past_its_delivery_limit "qjob.test.conformance.delivery-limit",
            broadcasts_reach_the_matching_listeners "qjob.test.conformance.broadcast",
            a_priority_queue_delivers_higher_priorities_first "qjob.test.conformance.priority",
            a_quorum_queue_orders_by_priority_on_4_and_not_on_3 "qjob.test.conformance.priority-quorum",
        );
    };
    (@tests $env:expr; $($name:ident $queue:literal,)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                $crate::conformance::$name(&$env, $queue).await;
            }
        )*
    };
}

/// Defines every console scenario as a test on the broker that `$env`
/// makes, each with its own job type from [`console`](crate::console).
#[macro_export]
macro_rules! console_tests {
    ($env:expr) => {
        $crate::console_tests!(@tests $env;
            heartbeats_show_each_worker_and_a_stopped_one_as_gone,
            pause_and_resume_lose_nothing_and_reject_nothing,
            a_cancelled_running_job_is_told_and_dead_lettered,
            a_cancelled_queued_job_is_dead_lettered_when_it_arrives,
            a_handler_that_ignores_a_cancel_finishes_normally,
            set_concurrency_resizes_the_handler_slots,
            shared_limits_are_seen_and_set_from_the_console,
            browsing_1000_dead_letters_leaves_them_in_place_and_in_order,
            replay_and_discard_do_what_they_say,
            a_sharded_job_shows_its_shards_and_the_extra_ones,
            a_pause_starts_no_job_held_in_place,
            a_retry_held_at_a_pause_runs_after_the_resume,
            a_stop_starts_no_job_held_in_place,
            running_jobs_are_listed_longest_first_found_and_cancelled,
            delayed_jobs_are_browsed_in_due_order_run_now_and_discarded,
            a_job_held_for_a_retry_in_place_is_listed_and_runs_now,
            a_schedule_is_fired_paused_and_resumed_from_the_console,
            the_last_hour_adds_up_the_workers_minutes,
        );
    };
    (@tests $env:expr; $($name:ident,)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                $crate::console::$name(&$env).await;
            }
        )*
    };
}

/// Defines every unique-job scenario as a test on the broker that `$env`
/// makes.
#[macro_export]
macro_rules! unique_tests {
    ($env:expr) => {
        $crate::unique_tests!(@tests $env;
            a_second_enqueue_returns_the_first_job_until_it_is_done,
            a_started_job_frees_its_key,
            an_unreachable_store_is_an_error_and_nothing_is_enqueued,
            a_job_delivered_twice_runs_once_with_an_inbox,
        );
    };
    (@tests $env:expr; $($name:ident,)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                $crate::unique::$name(&$env).await;
            }
        )*
    };
}

/// Defines every worker scenario as a test on the broker that `$env` makes,
/// each with its own job type from [`scenarios`](crate::scenarios).
#[macro_export]
macro_rules! worker_tests {
    ($env:expr) => {
        $crate::worker_tests!(@tests $env;
            retries_then_dead_letters RetryJob,
            permanent_error_dead_letters_at_once PermanentJob,
            garbage_dead_letters_and_the_next_job_runs GarbageJob,
            panic_is_a_failed_attempt PanicJob,
            concurrency_is_reached_and_never_exceeded ConcurrencyJob,
            shutdown_finishes_started_handlers_and_returns_the_rest ShutdownJob,
            shutdown_timeout_abandons_stuck_handlers StuckJob,
            panicking_to_the_end_dead_letters PanicAlwaysJob,
            a_timeout_is_a_failed_attempt TimeoutJob,
            retries_wait_their_backoff_in_a_delay_queue BackoffJob,
            a_retry_in_backoff_holds_no_prefetch_slot SingleSlotJob,
            a_delayed_job_runs_after_its_delay NoopJob,
            a_retry_survives_a_worker_restart RestartJob,
            dead_letters_can_be_peeked_at_and_replayed ReplayJob,
            a_long_dead_letter_walk_holds_little_and_keeps_order LongWalkJob,
            a_quorum_dlq_survives_browsing QuorumDlqJob,
            a_quorum_dlq_declared_without_a_delivery_limit_is_kept OldQuorumDlqJob,
            a_delay_queue_of_the_other_type_is_not_in_the_way SwitchedDelayJob,
            partitioned_keys_complete_in_publish_order_across_two_workers OrderedJob,
            an_open_breaker_stops_calls_until_a_probe_succeeds BreakerJob,
            a_full_queue_is_an_error_for_the_producer CappedJob,
            a_capped_queue_retries_in_place_while_full CappedRetryJob,
            a_quorum_job_retries_in_place QuorumRetryJob,
            a_panicking_observer_stalls_nothing ObservedJob,
            a_deleted_dlq_is_declared_again_without_running_the_job_again DlqDeletedJob,
            a_graceful_stop_hands_a_partition_over_in_order HandoverJob,
            a_graceful_stop_hands_a_quorum_partition_over_in_order HandoverQuorumJob,
            a_rolling_restart_keeps_every_key_in_order RollingJob,
            a_sharded_job_runs_from_every_shard_and_retries_through_its_work_queue ShardedJob,
            a_queue_named_like_a_shard_is_not_consumed_unless_qjob_declared_it ForeignShardJob,
            a_retry_keeps_its_priority_through_a_delay_queue RankedRetryJob,
            a_replayed_dead_letter_keeps_its_priority RankedReplayJob,
            a_priority_the_job_type_does_not_take_is_refused UnrankedJob,
        );
        // One scenario, several job types: a test each.
        $crate::worker_tests!(@typed $env;
            a_large_batch_goes_out_on_several_lanes a_large_batch SpreadJob,
            a_large_batch_on_a_capped_queue_reports_each_refusal a_large_batch SpreadCappedJob,
            a_large_partitioned_batch_keeps_each_key_in_order a_large_batch SpreadPartitionedJob,
            a_large_single_active_batch_keeps_its_order a_large_batch SpreadSingleActiveJob,
            a_large_sharded_batch_fills_every_shard a_large_batch SpreadShardedJob,
            a_refused_job_stops_an_ordered_batch_after_its_chunk
                a_refusal_over_two_chunks SpreadCappedPartitionedJob,
            a_refused_job_does_not_stop_an_unordered_batch
                a_refusal_over_two_chunks SpreadCappedPlainJob,
            high_priority_jobs_overtake_a_backlog
                high_priority_jobs_overtake_a_backlog RankedJob,
            high_priority_quorum_jobs_overtake_a_backlog_on_rabbitmq_4_only
                high_priority_jobs_overtake_a_backlog RankedQuorumJob,
        );
    };
    (@tests $env:expr; $($name:ident $job:ident,)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                $crate::scenarios::$name(&$env, $crate::scenarios::$job).await;
            }
        )*
    };
    (@typed $env:expr; $($name:ident $scenario:ident $job:ident,)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                $crate::scenarios::$scenario::<$crate::scenarios::$job>(&$env).await;
            }
        )*
    };
}
