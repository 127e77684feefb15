//! [`Schedule`]: when a periodic job fires. The guide is
//! [`crate::docs::periodic`].

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, TimeZone, Utc};

use crate::Error;
use crate::JobId;

/// The prefix of the queue of a schedule's lease (`qjob.schedule.<name>`):
/// a single-active-consumer queue whose active consumer is the schedule's
/// leader.
pub const LEASE_QUEUE_PREFIX: &str = crate::topology::names::LEASE_QUEUE_PREFIX;

/// The longest schedule name: it goes into a queue name.
const MAX_NAME_LEN: usize = 200;

/// What a leader does with the ticks that came while no leader ran (all
/// workers down, or between a leader's crash and the next one's start),
/// and with those that came while an operator paused the schedule, when
/// it is resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Missed {
    /// Fires the latest missed tick, once (the default): a nightly report
    /// missed during a deploy still runs, once, when a worker is back.
    #[default]
    Latest,
    /// Fires none: the next tick is the next one to come.
    Skip,
}

impl Missed {
    /// The policy's name: `latest` or `skip` (as heartbeats, `qjob
    /// schedules` and the dashboard show it).
    pub fn as_str(self) -> &'static str {
        match self {
            Missed::Latest => "latest",
            Missed::Skip => "skip",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Zone {
    Utc,
    Named(chrono_tz::Tz),
}

/// When a periodic job fires: a cron expression in a time zone (UTC by
/// default), with a policy for the ticks missed while no worker ran.
///
/// The expression has five fields (minute, hour, day of month, month, day
/// of week, as in Unix cron: day of week 0 or 7 is Sunday), six (seconds
/// first) or seven (a year last), or is one of `@hourly`, `@daily`,
/// `@weekly`, `@monthly`, `@yearly`. In the six- and seven-field forms,
/// day-of-week numbers run from 1 (Sunday) to 7 (Saturday); names (`Mon`,
/// `Mon-Fri`) mean the same in every form.
///
/// ```
/// use qjob::schedule::{Missed, Schedule};
///
/// let nightly = Schedule::cron("30 2 * * *")?.in_zone("Europe/Paris")?;
/// let every_second = Schedule::cron("* * * * * *")?.with_missed(Missed::Skip);
/// assert!(Schedule::cron("61 * * * *").is_err());
/// # Ok::<(), qjob::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Schedule {
    expression: String,
    cron: cron::Schedule,
    zone: Zone,
    missed: Missed,
    name: Option<String>,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.expression == other.expression
            && self.zone == other.zone
            && self.missed == other.missed
            && self.name == other.name
    }
}

impl Schedule {
    /// A schedule from a cron expression, in UTC.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a malformed expression, naming what is wrong.
    pub fn cron(expression: &str) -> Result<Self, Error> {
        let cron = parse(expression).map_err(Error::Config)?;
        Ok(Self {
            expression: expression.trim().to_owned(),
            cron,
            zone: Zone::Utc,
            missed: Missed::default(),
            name: None,
        })
    }

    /// The same schedule read in the IANA time zone `zone`
    /// (`"Europe/Paris"`, `"America/New_York"`): `0 9 * * *` fires at 09:00
    /// there, following its daylight-saving changes (a time that does not
    /// exist that day is skipped; one that happens twice fires once).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `zone` is not a known zone name.
    pub fn in_zone(mut self, zone: &str) -> Result<Self, Error> {
        let tz = chrono_tz::Tz::from_str(zone).map_err(|_| {
            Error::Config(format!(
                "unknown time zone {zone:?} (an IANA name such as \"Europe/Paris\")"
            ))
        })?;
        self.zone = Zone::Named(tz);
        Ok(self)
    }

    /// What a new leader does with missed ticks ([`Missed::Latest`] by
    /// default).
    pub fn with_missed(mut self, missed: Missed) -> Self {
        self.missed = missed;
        self
    }

    /// Names the schedule (the job type's name by default; give a job type
    /// with several schedules a name for each). The name identifies the
    /// schedule's lease queue and its ticks' job ids, so keep it when the
    /// expression changes.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The cron expression, as given.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The time zone's name (`"UTC"` by default).
    pub fn zone(&self) -> &str {
        match &self.zone {
            Zone::Utc => "UTC",
            Zone::Named(tz) => tz.name(),
        }
    }

    /// The missed-tick policy.
    pub fn missed(&self) -> Missed {
        self.missed
    }

    /// The name given with [`Schedule::named`], if any.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The first tick strictly after `after`, or `None` if none comes (an
    /// expression whose years are all past).
    pub fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        // Strictly after: around a daylight-saving change, the crate can
        // give a local time whose instant is not after `after`.
        let utc = to_utc(after);
        let next = match &self.zone {
            Zone::Utc => self.cron.after(&utc).find(|t| *t > utc),
            Zone::Named(tz) => self
                .cron
                .after(&utc.with_timezone(tz))
                .map(|t| t.with_timezone(&Utc))
                .find(|t| *t > utc),
        };
        next.map(from_utc)
    }

    /// The latest tick at or before `at` and strictly after `since`, if
    /// there is one: what [`Missed::Latest`] fires when a leader takes over
    /// at `at` after the tick `since`. One step back from `at`, however
    /// many ticks were missed.
    pub(crate) fn latest_between(&self, since: SystemTime, at: SystemTime) -> Option<SystemTime> {
        let bound = to_utc(at) + chrono::Duration::milliseconds(1);
        let latest = match &self.zone {
            Zone::Utc => self.cron.after(&bound).next_back(),
            Zone::Named(tz) => self
                .cron
                .after(&bound.with_timezone(tz))
                .next_back()
                .map(|t| t.with_timezone(&Utc)),
        };
        latest
            .map(from_utc)
            .filter(|tick| *tick > since && *tick <= at)
    }
}

/// The name a schedule's lease queue and tick ids use: the given name, or
/// else `default` (the job type's name). `Error::Config` if it is empty,
/// too long, or holds characters outside `[A-Za-z0-9._:-]`.
pub(crate) fn checked_name(schedule: &Schedule, default: &str) -> Result<String, Error> {
    let name = schedule.name().unwrap_or(default);
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'));
    if valid {
        Ok(name.to_owned())
    } else {
        Err(Error::Config(format!(
            "schedule name {name:?}: 1 to {MAX_NAME_LEN} characters among letters, digits, '.', '_', ':' and '-'"
        )))
    }
}

/// The job id of schedule `name`'s tick at `tick`: `<name>@<UTC time>`,
/// the same on every worker, so that the console shows which tick a job
/// is and a consumer can tell a repeated tick by its id.
pub fn tick_id(name: &str, tick: SystemTime) -> JobId {
    let at = to_utc(tick).format("%Y-%m-%dT%H:%M:%S%.3fZ");
    JobId::from(format!("{name}@{at}"))
}

/// Parses `expression`: five fields get a seconds field of `0` and their
/// day-of-week numbers read as Unix cron's (0 and 7 Sunday).
pub(crate) fn parse(expression: &str) -> Result<cron::Schedule, String> {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let normalized = match fields.len() {
        5 => {
            let mut fields: Vec<String> = fields.iter().map(|f| (*f).to_owned()).collect();
            fields[4] = unix_days_of_week(&fields[4])?;
            format!("0 {}", fields.join(" "))
        }
        _ => fields.join(" "),
    };
    cron::Schedule::from_str(&normalized).map_err(|error| {
        // The crate's text shows the expression as normalized: keep
        // its reason only.
        let text = error.to_string();
        let reason = text.lines().last().unwrap_or_default().trim().to_owned();
        format!("malformed cron expression {expression:?}: {reason}")
    })
}

/// A Unix day-of-week field with its numbers (0–7, Sunday 0 and 7) as
/// names: a numeric range (`1-5`, `0-7`, with a step or not) becomes the
/// list of its days.
fn unix_days_of_week(field: &str) -> Result<String, String> {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    let day = |text: &str| -> Result<Option<usize>, String> {
        if !text.chars().all(|c| c.is_ascii_digit()) || text.is_empty() {
            return Ok(None);
        }
        match text.parse::<usize>() {
            Ok(day) if day <= 7 => Ok(Some(day)),
            _ => Err(format!("day of week {text} is not 0 to 7")),
        }
    };
    let mut items = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (item, None),
        };
        let bounds = match range.split_once('-') {
            Some((from, to)) => day(from)?.zip(day(to)?),
            None => day(range)?.map(|d| (d, d)),
        };
        let Some((from, to)) = bounds else {
            // Names, `*`, `?`: as they are.
            items.push(item.to_owned());
            continue;
        };
        if from > to {
            return Err(format!("day-of-week range {range} goes backwards"));
        }
        let step = match step {
            Some(step) => step
                .parse::<usize>()
                .ok()
                .filter(|step| *step > 0)
                .ok_or_else(|| format!("day-of-week step {step} is not a positive number"))?,
            None => 1,
        };
        let mut days: Vec<usize> = (from..=to).step_by(step).map(|d| d % 7).collect();
        days.sort_unstable();
        days.dedup();
        items.extend(days.into_iter().map(|d| DAYS[d].to_owned()));
    }
    Ok(items.join(","))
}

fn to_utc(time: SystemTime) -> DateTime<Utc> {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    Utc.timestamp_opt(since.as_secs() as i64, since.subsec_nanos())
        .single()
        .unwrap_or_default()
}

fn from_utc(time: DateTime<Utc>) -> SystemTime {
    let nanos = u64::try_from(time.timestamp_nanos_opt().unwrap_or_default()).unwrap_or_default();
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SystemTime {
        from_utc(
            DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc),
        )
    }

    #[test]
    fn five_fields_are_unix_cron_with_sunday_0_or_7() {
        let weekdays = Schedule::cron("0 9 * * 1-5").unwrap();
        // Saturday 2026-11-28 → Monday 2026-11-30 09:00.
        let next = weekdays.next_after(at("2026-11-28T10:00:00Z")).unwrap();
        assert_eq!(next, at("2026-11-30T09:00:00Z"));
        for sunday in ["0 9 * * 0", "0 9 * * 7", "0 9 * * Sun"] {
            let next = Schedule::cron(sunday)
                .unwrap()
                .next_after(at("2026-11-28T10:00:00Z"));
            assert_eq!(next, Some(at("2026-11-29T09:00:00Z")), "{sunday}");
        }
        assert!(Schedule::cron("0 9 * * 8").is_err());
    }

    #[test]
    fn six_fields_have_seconds() {
        let every_second = Schedule::cron("* * * * * *").unwrap();
        let t = at("2026-11-28T10:00:00.500Z");
        assert_eq!(every_second.next_after(t), Some(at("2026-11-28T10:00:01Z")));
        let every_minute = Schedule::cron("0 * * * * *").unwrap();
        assert_eq!(every_minute.next_after(t), Some(at("2026-11-28T10:01:00Z")));
    }

    #[test]
    fn malformed_expressions_and_zones_are_config_errors() {
        for bad in ["", "* * *", "61 * * * *", "* * * * * * * *", "@often"] {
            let error = Schedule::cron(bad).unwrap_err();
            assert!(matches!(error, Error::Config(_)), "{bad}: {error:?}");
        }
        let error = Schedule::cron("@daily")
            .unwrap()
            .in_zone("Mars/Olympus")
            .unwrap_err();
        assert!(error.to_string().contains("Mars/Olympus"), "{error}");
    }

    #[test]
    fn a_named_zone_follows_its_daylight_saving_time() {
        let paris = Schedule::cron("0 9 * * *")
            .unwrap()
            .in_zone("Europe/Paris")
            .unwrap();
        // Winter: UTC+1; summer: UTC+2.
        assert_eq!(
            paris.next_after(at("2026-11-28T10:00:00Z")),
            Some(at("2026-11-29T08:00:00Z"))
        );
        assert_eq!(
            paris.next_after(at("2026-07-01T10:00:00Z")),
            Some(at("2026-07-02T07:00:00Z"))
        );
        assert_eq!(paris.zone(), "Europe/Paris");
    }

    #[test]
    fn the_latest_missed_tick_is_found() {
        let minutely = Schedule::cron("* * * * *").unwrap();
        let since = at("2026-11-28T10:00:00Z");
        assert_eq!(
            minutely.latest_between(since, at("2026-11-28T10:05:30Z")),
            Some(at("2026-11-28T10:05:00Z"))
        );
        assert_eq!(
            minutely.latest_between(since, at("2026-11-28T10:00:59Z")),
            None
        );
        assert_eq!(
            minutely.latest_between(since, at("2026-11-28T10:05:00Z")),
            Some(at("2026-11-28T10:05:00Z"))
        );
        // A month down, per second: one step.
        let every_second = Schedule::cron("* * * * * *").unwrap();
        assert_eq!(
            every_second.latest_between(at("2026-10-28T10:00:00Z"), at("2026-11-28T10:00:00.5Z")),
            Some(at("2026-11-28T10:00:00Z"))
        );
    }

    #[test]
    fn the_autumn_change_never_goes_back() {
        // Paris leaves summer time at 03:00 CEST (01:00Z) on 2026-10-25.
        let quarterly = Schedule::cron("*/15 * * * *")
            .unwrap()
            .in_zone("Europe/Paris")
            .unwrap();
        let mut tick = at("2026-10-24T23:30:00Z");
        for _ in 0..16 {
            let next = quarterly.next_after(tick).unwrap();
            assert!(next > tick, "{next:?} after {tick:?}");
            tick = next;
        }
    }

    #[test]
    fn unix_day_of_week_ranges_read_as_unix_cron() {
        let saturday = at("2026-11-28T10:00:00Z");
        for (expression, next) in [
            ("0 9 * * 0-7", "2026-11-29T09:00:00Z"),
            ("0 9 * * 1-7", "2026-11-29T09:00:00Z"),
            ("0 9 * * 5-7", "2026-11-29T09:00:00Z"),
            ("0 9 * * 0-6/2", "2026-11-29T09:00:00Z"),
            ("0 9 * * 1-5/2", "2026-11-30T09:00:00Z"),
        ] {
            let schedule = Schedule::cron(expression).unwrap();
            assert_eq!(
                schedule.next_after(saturday),
                Some(at(next)),
                "{expression}"
            );
        }
        let every_day = Schedule::cron("0 9 * * 0-7").unwrap();
        assert_eq!(
            every_day.next_after(at("2026-11-29T10:00:00Z")),
            Some(at("2026-11-30T09:00:00Z")),
            "Monday too"
        );
        assert!(Schedule::cron("0 9 * * 5-1").is_err(), "descending");
    }

    #[test]
    fn tick_ids_name_the_schedule_and_the_time() {
        let id = tick_id("nightly", at("2026-11-28T02:30:00Z"));
        assert_eq!(id.as_str(), "nightly@2026-11-28T02:30:00.000Z");
    }

    #[test]
    fn names_are_checked() {
        let schedule = Schedule::cron("@hourly").unwrap();
        assert_eq!(checked_name(&schedule, "report").unwrap(), "report");
        for bad in ["", "has space", "é"] {
            assert!(
                checked_name(&schedule.clone().named(bad), "x").is_err(),
                "{bad}"
            );
        }
    }
}
