//! A job type's last hour in one worker: per wall-clock minute, the
//! attempts that settled and their run times, for its heartbeats (see
//! [`crate::protocol::MinuteStatus`]).
//!
//! A ring of 60 minutes, allocated once: recording an attempt takes one
//! short lock and allocates nothing. Each minute is keyed by its number
//! (minutes since the Unix epoch), so the workers' minutes line up when a
//! console adds them. The clock may jump: the ring keeps the hour ending
//! with the newest minute it saw (a minute ahead of a clock set back is
//! kept, and counted into when the clock comes to it); a minute an hour
//! older is dropped; a clock set back by more than an hour starts the ring
//! afresh.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use crate::protocol::MinuteStatus;
use crate::protocol::history::{BINS, WINDOW, bin, minute_of};
use crate::worker::observer::AttemptOutcome;

/// The minutes of one job type.
pub(crate) struct History {
    ring: Mutex<Ring>,
}

impl Default for History {
    fn default() -> Self {
        Self {
            ring: Mutex::new(Ring::new(0)),
        }
    }
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").finish_non_exhaustive()
    }
}

impl History {
    /// Counts an attempt settled now that ran `took` (`None`: it did not
    /// run, as a malformed or cancelled job).
    pub(crate) fn record(&self, outcome: &AttemptOutcome, took: Option<Duration>) {
        self.record_at(minute_of(SystemTime::now()), outcome, took);
    }

    /// The minutes with activity in the hour ending now, oldest first.
    pub(crate) fn minutes(&self) -> Vec<MinuteStatus> {
        self.minutes_at(minute_of(SystemTime::now()))
    }

    fn record_at(&self, now: u64, outcome: &AttemptOutcome, took: Option<Duration>) {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.observe(now);
        let slot = ring.slot(now);
        match outcome {
            AttemptOutcome::Succeeded => slot.succeeded += 1,
            AttemptOutcome::Retrying { .. } => slot.failed += 1,
            AttemptOutcome::DeadLettered { .. } => {
                slot.failed += u32::from(outcome.is_handler_failure());
                slot.dead_lettered += 1;
            }
        }
        if let Some(took) = took {
            let runs = &mut slot.runs[bin(took)];
            *runs = runs.saturating_add(1);
        }
    }

    fn minutes_at(&self, now: u64) -> Vec<MinuteStatus> {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.observe(now);
        let oldest = ring.newest.saturating_sub(WINDOW as u64 - 1);
        let mut minutes: Vec<MinuteStatus> = ring
            .minutes
            .iter()
            .filter(|slot| slot.minute >= oldest && slot.is_active())
            .map(Minute::status)
            .collect();
        minutes.sort_by_key(|minute| minute.minute);
        minutes
    }
}

/// The ring, and the newest minute it saw.
struct Ring {
    minutes: Box<[Minute]>,
    newest: u64,
}

impl Ring {
    fn new(newest: u64) -> Self {
        Self {
            minutes: vec![Minute::default(); WINDOW].into_boxed_slice(),
            newest,
        }
    }

    /// Takes the clock's minute in: the newest if it is ahead; a fresh
    /// ring if the clock went back an hour or more.
    fn observe(&mut self, now: u64) {
        if now > self.newest {
            self.newest = now;
        } else if now + WINDOW as u64 <= self.newest {
            *self = Ring::new(now);
        }
    }

    /// Minute `minute`'s slot (within the hour of the newest), emptied if
    /// it held an older minute.
    fn slot(&mut self, minute: u64) -> &mut Minute {
        let slot = &mut self.minutes[(minute % WINDOW as u64) as usize];
        if slot.minute != minute {
            *slot = Minute {
                minute,
                ..Minute::default()
            };
        }
        slot
    }
}

/// One minute's counts.
#[derive(Clone)]
struct Minute {
    minute: u64,
    succeeded: u32,
    failed: u32,
    dead_lettered: u32,
    runs: [u32; BINS],
}

impl Default for Minute {
    fn default() -> Self {
        Self {
            minute: 0,
            succeeded: 0,
            failed: 0,
            dead_lettered: 0,
            runs: [0; BINS],
        }
    }
}

impl Minute {
    fn is_active(&self) -> bool {
        self.succeeded > 0 || self.failed > 0 || self.dead_lettered > 0
    }

    fn status(&self) -> MinuteStatus {
        MinuteStatus {
            minute: self.minute,
            succeeded: self.succeeded.into(),
            failed: self.failed.into(),
            dead_lettered: self.dead_lettered.into(),
            run_times: self
                .runs
                .iter()
                .enumerate()
                .filter(|(_, count)| **count > 0)
                .map(|(bin, count)| (bin as u16, u64::from(*count)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DeadReason;
    use crate::protocol::history::{RunTimes, bin_value};

    const T: u64 = 29_000_000;

    fn ok() -> AttemptOutcome {
        AttemptOutcome::Succeeded
    }

    fn retried() -> AttemptOutcome {
        AttemptOutcome::Retrying {
            error: "boom".into(),
            delay: Duration::from_secs(1),
        }
    }

    fn dead(reason: DeadReason) -> AttemptOutcome {
        AttemptOutcome::DeadLettered {
            reason,
            error: "boom".into(),
        }
    }

    fn counts(minutes: &[MinuteStatus]) -> Vec<(u64, u64, u64, u64)> {
        minutes
            .iter()
            .map(|m| (m.minute, m.succeeded, m.failed, m.dead_lettered))
            .collect()
    }

    #[test]
    fn attempts_count_in_the_minute_they_settle_in() {
        let history = History::default();
        let ms = Duration::from_millis;
        history.record_at(T, &ok(), Some(ms(5)));
        history.record_at(T, &ok(), Some(ms(5)));
        history.record_at(T, &retried(), Some(ms(7)));
        history.record_at(T + 1, &dead(DeadReason::RetriesExhausted), Some(ms(9)));
        // Neither a malformed nor a cancelled job is a handler's failure.
        history.record_at(T + 1, &dead(DeadReason::Malformed), None);
        history.record_at(T + 1, &dead(DeadReason::Cancelled), None);
        let minutes = history.minutes_at(T + 1);
        assert_eq!(counts(&minutes), [(T, 2, 1, 0), (T + 1, 0, 1, 3)]);
        let bin = |ms: u64| bin(Duration::from_millis(ms)) as u16;
        assert_eq!(minutes[0].run_times, [(bin(5), 2), (bin(7), 1)]);
        assert_eq!(minutes[1].run_times, [(bin(9), 1)], "only runs are timed");
    }

    #[test]
    fn it_keeps_the_last_60_minutes_and_no_more() {
        let history = History::default();
        for minute in T..T + 150 {
            history.record_at(minute, &ok(), Some(Duration::from_millis(1)));
        }
        let minutes = history.minutes_at(T + 149);
        assert_eq!(minutes.len(), 60);
        assert_eq!(minutes[0].minute, T + 90);
        assert_eq!(minutes[59].minute, T + 149);
        assert!(minutes.iter().all(|m| m.succeeded == 1));
        // Minutes without activity are left out; an idle hour leaves none.
        assert_eq!(history.minutes_at(T + 160).len(), 49);
        assert!(history.minutes_at(T + 209).is_empty());
    }

    #[test]
    fn a_clock_that_jumps_forward_drops_what_is_an_hour_old() {
        let history = History::default();
        history.record_at(T, &ok(), None);
        history.record_at(T + 10, &ok(), None);
        history.record_at(T + 65, &retried(), None);
        assert_eq!(
            counts(&history.minutes_at(T + 65)),
            [(T + 10, 1, 0, 0), (T + 65, 0, 1, 0)]
        );
        history.record_at(T + 500, &ok(), None);
        // T + 560 shares T + 500's slot: that count is not carried into it.
        history.record_at(T + 560, &ok(), None);
        assert_eq!(counts(&history.minutes_at(T + 560)), [(T + 560, 1, 0, 0)]);
    }

    #[test]
    fn a_clock_set_back_keeps_the_minutes_ahead_of_it() {
        let history = History::default();
        history.record_at(T + 5, &ok(), None);
        // Set back three minutes: the newest minute stays in view, and the
        // minutes before it are counted where they belong.
        history.record_at(T + 2, &retried(), None);
        assert_eq!(
            counts(&history.minutes_at(T + 2)),
            [(T + 2, 0, 1, 0), (T + 5, 1, 0, 0)]
        );
        // When the clock comes to T + 5 again, it counts into the same minute.
        history.record_at(T + 5, &ok(), None);
        assert_eq!(
            counts(&history.minutes_at(T + 5)),
            [(T + 2, 0, 1, 0), (T + 5, 2, 0, 0)]
        );
        // Set back more than an hour: the ring starts afresh.
        history.record_at(T - 100, &ok(), None);
        assert_eq!(counts(&history.minutes_at(T - 100)), [(T - 100, 1, 0, 0)]);
        // The real clock, then one before the epoch (minute 0): no panic.
        history.record(&ok(), None);
        history.record_at(
            minute_of(SystemTime::UNIX_EPOCH - Duration::from_secs(1)),
            &ok(),
            None,
        );
        assert_eq!(counts(&history.minutes_at(0)), [(0, 1, 0, 0)]);
    }

    #[test]
    fn percentiles_merged_from_workers_are_as_precise_as_one_bin() {
        // Three workers' run times, spread over five decades.
        let mut next = 0x2545_f491_4f6c_dd1d_u64;
        let mut random = move || {
            next ^= next << 13;
            next ^= next >> 7;
            next ^= next << 17;
            next
        };
        let workers: Vec<History> = (0..3).map(|_| History::default()).collect();
        let mut all = Vec::new();
        for (index, worker) in workers.iter().enumerate() {
            for _ in 0..(500 + index * 300) {
                let micros = 200 + random() % 20_000_000 / (1 + random() % 1000);
                let took = Duration::from_micros(micros);
                worker.record_at(T, &ok(), Some(took));
                all.push(took);
            }
        }
        let mut merged = RunTimes::default();
        for worker in &workers {
            merged.add(&worker.minutes_at(T)[0].run_times);
        }
        all.sort();
        let precision = 1.25f64.sqrt() + 1e-9;
        for quantile in [0.5, 0.95, 0.99] {
            let rank = (quantile * all.len() as f64).ceil() as usize;
            let exact = all[rank - 1].as_secs_f64();
            let merged = merged.quantile(quantile).unwrap().as_secs_f64();
            assert!(
                merged / exact <= precision && exact / merged <= precision,
                "p{quantile}: {merged} for {exact}"
            );
            // Exactly the bin of the exact value.
            assert_eq!(merged, bin_value(bin(all[rank - 1])).as_secs_f64());
        }
    }
}
