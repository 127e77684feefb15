//! `history`: each job type's last hour, per minute: attempts settled and
//! run-time percentiles.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qjob::admin::{Admin, JobHistory, MinuteView};
use serde_json::{Value, json};

use crate::commands::running;
use crate::failure::Failure;
use crate::out::{Out, millis};
use crate::table::Table;

/// Prints the minutes with activity of `job` (by name, type name or queue), or of
/// every job type; not found (3) when no running worker runs `job`.
pub(crate) async fn history(out: &Out, admin: &Admin, job: Option<&str>) -> Result<(), Failure> {
    match job {
        Some(job) => running(admin, job).await?,
        None => admin.refresh().await?,
    }
    let histories = admin.history(job);
    if out.json {
        let jobs: Vec<Value> = histories.iter().map(job_json).collect();
        out.print_json(&json!({ "jobs": jobs }));
        return Ok(());
    }
    let mut table = Table::new([
        "JOB",
        "MINUTE (UTC)",
        "SUCCEEDED",
        "FAILED",
        "DEAD-LETTERED",
        "P50",
        "P95",
    ]);
    let mut quiet = Vec::new();
    for history in &histories {
        if history.active().next().is_none() {
            quiet.push(history.job.as_str());
        }
        for minute in history.active() {
            table.row([
                history.job.clone(),
                clock(minute.start),
                minute.succeeded.to_string(),
                minute.failed.to_string(),
                minute.dead_lettered.to_string(),
                run_time(minute.p50),
                run_time(minute.p95),
            ]);
        }
    }
    if quiet.len() < histories.len() {
        table.print();
    }
    if histories.is_empty() {
        say!("no running worker has reported yet");
    } else if !quiet.is_empty() {
        say!("nothing settled in the last hour: {}", quiet.join(", "));
    }
    Ok(())
}

fn job_json(history: &JobHistory) -> Value {
    json!({
        "job": history.job,
        "queue": history.queue,
        "workers": history.workers,
        "succeeded": history.succeeded(),
        "failed": history.failed(),
        "dead_lettered": history.dead_lettered(),
        "minutes": history.active().map(minute_json).collect::<Vec<_>>(),
    })
}

fn minute_json(minute: &MinuteView) -> Value {
    let ms = |d: Option<Duration>| d.map(|d| d.as_micros() as f64 / 1000.0);
    json!({
        "start_ms": millis(minute.start),
        "succeeded": minute.succeeded,
        "failed": minute.failed,
        "dead_lettered": minute.dead_lettered,
        "runs": minute.runs,
        "p50_ms": ms(minute.p50),
        "p95_ms": ms(minute.p95),
    })
}

/// A minute's start as `HH:MM`, UTC.
fn clock(at: SystemTime) -> String {
    let minutes = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 60;
    format!("{:02}:{:02}", minutes / 60 % 24, minutes % 60)
}

/// A run time to three figures (the percentiles are good to about 12 %):
/// `112µs`, `4.52ms`, `224ms`, `1.12s`, `2m05s`; `-` for none.
fn run_time(took: Option<Duration>) -> String {
    let Some(took) = took else {
        return "-".to_owned();
    };
    let micros = took.as_micros();
    let figures = |value: f64, unit: &str| match value {
        v if v < 10.0 => format!("{v:.2}{unit}"),
        v if v < 100.0 => format!("{v:.1}{unit}"),
        v => format!("{v:.0}{unit}"),
    };
    match micros {
        0..1_000 => format!("{micros}µs"),
        1_000..1_000_000 => figures(micros as f64 / 1e3, "ms"),
        1_000_000..60_000_000 => figures(micros as f64 / 1e6, "s"),
        _ => {
            let secs = took.as_secs();
            format!("{}m{:02}s", secs / 60, secs % 60)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_times_read_to_three_figures() {
        let us = Duration::from_micros;
        let cases = [
            (None, "-"),
            (Some(us(112)), "112µs"),
            (Some(us(4_520)), "4.52ms"),
            (Some(us(22_360)), "22.4ms"),
            (Some(us(223_600)), "224ms"),
            (Some(us(1_118_000)), "1.12s"),
            (Some(Duration::from_secs(125)), "2m05s"),
        ];
        for (took, text) in cases {
            assert_eq!(run_time(took), text, "{took:?}");
        }
        assert_eq!(
            clock(UNIX_EPOCH + Duration::from_secs(86_400 + 3_723)),
            "01:02"
        );
    }
}
