//! The wall clock as schedules read it.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// The wall clock as schedules read it: the system's clock, both ways
/// (a step back by NTP as much as a suspend), plus how far tokio's clock
/// ran ahead of the monotonic one since the process started: nothing in
/// production, and a paused test's virtual time in tests (across worker
/// restarts too).
#[derive(Clone, Copy)]
pub(super) struct Clock;

/// Sleeps are cut to this and the clock read again, so that a jump of the
/// system clock (a suspend, a step either way) is seen within this.
pub(super) const MAX_SLEEP: Duration = Duration::from_secs(30);

/// A lease may record a tick this far ahead of the reader's clock (two
/// workers' clocks a little apart) and be taken as it is; further ahead,
/// it counts as now, and the schedule reports the problem.
pub(super) const AHEAD_TOLERANCE: Duration = Duration::from_secs(30);

impl Clock {
    pub(super) fn now(self) -> SystemTime {
        static ANCHOR: std::sync::OnceLock<(Instant, std::time::Instant)> =
            std::sync::OnceLock::new();
        let (tokio_at, std_at) =
            *ANCHOR.get_or_init(|| (Instant::now(), std::time::Instant::now()));
        wall(SystemTime::now(), tokio_at.elapsed(), std_at.elapsed())
    }

    /// When to wake up for `time`: at it, or after [`MAX_SLEEP`] to look
    /// again.
    pub(super) fn wake_for(self, time: SystemTime) -> Instant {
        let until = time.duration_since(self.now()).unwrap_or_default();
        Instant::now() + until.min(MAX_SLEEP)
    }
}

/// The system's time `system`, moved by how far tokio's clock ran ahead
/// of (or behind, while paused) the monotonic clock since the same
/// anchor.
fn wall(system: SystemTime, tokio_elapsed: Duration, std_elapsed: Duration) -> SystemTime {
    if tokio_elapsed >= std_elapsed {
        system + (tokio_elapsed - std_elapsed)
    } else {
        system - (std_elapsed - tokio_elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schedules' clock follows the system's both ways: a process
    /// that started with its clock ahead (before NTP stepped it back)
    /// used to fire early for its whole life, its clock never behind
    /// where it started.
    #[test]
    fn the_clock_follows_a_step_of_the_system_clock_either_way() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let minute = Duration::from_secs(60);
        // Ten minutes on, with no virtual time: the system's clock.
        assert_eq!(
            wall(start + 10 * minute, 10 * minute, 10 * minute),
            start + 10 * minute
        );
        // Stepped back an hour at minute 10: an hour back.
        let stepped = start + 10 * minute - 60 * minute;
        assert_eq!(wall(stepped, 10 * minute, 10 * minute), stepped);
        // Stepped forward (a suspend the monotonic clocks did not count).
        assert_eq!(
            wall(start + 90 * minute, minute, minute),
            start + 90 * minute
        );
        // Virtual time (a paused test) an hour ahead of the monotonic clock.
        assert_eq!(
            wall(start + minute, 61 * minute, minute),
            start + 61 * minute
        );
        // Tokio's clock paused while the monotonic one ran on.
        assert_eq!(wall(start + 2 * minute, Duration::ZERO, 2 * minute), start);
    }
}
