//! The health of a worker's circuit breakers and schedules, as both its
//! [`HealthReport`](crate::HealthReport) and its heartbeat carry them.

use std::time::SystemTime;

/// A circuit breaker's state in a [`HealthReport`](crate::HealthReport)
/// and a worker's heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum BreakerHealth {
    /// Jobs flow.
    Closed,
    /// No job runs until a probe is allowed.
    Open,
    /// A probe decides.
    HalfOpen,
}

impl BreakerHealth {
    /// The gauge value of `qjob_circuit_breaker_state`: 0 closed, 1 open,
    /// 2 half-open.
    pub fn as_gauge(self) -> f64 {
        match self {
            BreakerHealth::Closed => 0.0,
            BreakerHealth::Open => 1.0,
            BreakerHealth::HalfOpen => 2.0,
        }
    }
}

/// A periodic job's schedule in a [`HealthReport`](crate::HealthReport)
/// and a worker's heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct ScheduleHealth {
    /// The job type it enqueues.
    pub job: String,
    /// The cron expression.
    pub expression: String,
    /// Its time zone.
    pub zone: String,
    /// Whether this worker is the schedule's leader (the one that fires
    /// its ticks) now.
    pub leader: bool,
    /// The next tick, as the leader sees it (`None` on the others, or when
    /// no tick comes any more).
    #[serde(with = "super::time::millis_opt")]
    pub next: Option<SystemTime>,
    /// The last tick this worker fired, if it fired any.
    #[serde(with = "super::time::millis_opt")]
    pub last_fired: Option<SystemTime>,
    /// What keeps this worker from leading the schedule as it should, if
    /// anything: a lease queue without a single active consumer (the
    /// schedule is stopped on this worker), or a lease that recorded a
    /// tick far ahead of this worker's clock (counted as now).
    #[serde(default)]
    pub problem: Option<String>,
    /// What a leader does with the ticks missed while none ran or while
    /// the schedule was paused: `latest` or `skip`
    /// ([`Missed`](crate::schedule::Missed)); empty from a worker of an
    /// earlier version.
    #[serde(default)]
    pub missed: String,
    /// Whether an operator paused the schedule on this worker from the
    /// console: it fires none of its ticks until resumed.
    #[serde(default)]
    pub paused: bool,
}

impl ScheduleHealth {
    #[cfg(feature = "periodic")]
    pub(crate) fn new(job: &str, expression: &str, zone: &str, missed: &str) -> Self {
        Self {
            job: job.to_owned(),
            expression: expression.to_owned(),
            zone: zone.to_owned(),
            leader: false,
            next: None,
            last_fired: None,
            problem: None,
            missed: missed.to_owned(),
            paused: false,
        }
    }
}

#[cfg(all(test, feature = "periodic"))]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_of_an_earlier_version_reads_unpaused_with_no_policy() {
        let mut schedule = ScheduleHealth::new("report", "0 2 * * *", "UTC", "skip");
        schedule.paused = true;
        let mut json = serde_json::to_value(&schedule).unwrap();
        assert_eq!(json["missed"], "skip");
        assert_eq!(json["paused"], true);
        assert_eq!(
            serde_json::from_value::<ScheduleHealth>(json.clone()).unwrap(),
            schedule
        );
        let earlier = json.as_object_mut().unwrap();
        earlier.remove("missed");
        earlier.remove("paused");
        let read: ScheduleHealth = serde_json::from_value(json).unwrap();
        assert_eq!((read.missed.as_str(), read.paused), ("", false));
    }
}
