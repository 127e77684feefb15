//! `cron = "…"`: the expression checked at compile time, as
//! `qjob::Schedule` reads it (feature `cron`, qjob's `periodic`).

use syn::{Expr, LitStr};

use crate::values;

/// A cron expression (five fields as in Unix cron, six with seconds, seven
/// with a year, or `@hourly` and the like), checked as `qjob::Schedule`
/// reads it.
pub(crate) fn checked(key: &str, expr: &Expr) -> syn::Result<LitStr> {
    let lit = values::string(key, expr)?;
    check_cron(&lit.value()).map_err(|error| {
        syn::Error::new(
            lit.span(),
            format!("`{key}`: malformed cron expression: {error}"),
        )
    })?;
    Ok(lit)
}

fn check_cron(expression: &str) -> Result<(), String> {
    let mut fields: Vec<String> = expression.split_whitespace().map(str::to_owned).collect();
    if fields.len() == 5 {
        fields[4] = unix_days_of_week(&fields[4])?;
        fields.insert(0, "0".to_owned());
    }
    <cron::Schedule as std::str::FromStr>::from_str(&fields.join(" "))
        .map(drop)
        .map_err(|error| reason(&error.to_string()))
}

/// Unix cron's day-of-week numbers (0–7, ranges going forward, a step
/// after them) checked, each numeric item then written as a day the crate
/// accepts: qjob reads them as the days' names.
fn unix_days_of_week(field: &str) -> Result<String, String> {
    let day = |text: &str| -> Result<Option<u32>, String> {
        if text.is_empty() || !text.chars().all(|c| c.is_ascii_digit()) {
            return Ok(None);
        }
        match text.parse::<u32>() {
            Ok(day) if day <= 7 => Ok(Some(day)),
            _ => Err(format!("day of week {text} is not 0 to 7")),
        }
    };
    let mut items = Vec::new();
    for item in field.split(',') {
        let (range, step) = item
            .split_once('/')
            .map_or((item, None), |(r, s)| (r, Some(s)));
        let bounds = match range.split_once('-') {
            Some((from, to)) => day(from)?.zip(day(to)?),
            None => day(range)?.map(|d| (d, d)),
        };
        let Some((from, to)) = bounds else {
            items.push(item.to_owned());
            continue;
        };
        if from > to {
            return Err(format!("day-of-week range {range} goes backwards"));
        }
        if step.is_some_and(|step| step.parse::<u32>().map_or(true, |step| step == 0)) {
            return Err(format!(
                "day-of-week step in {item} is not a positive number"
            ));
        }
        items.push("1".to_owned());
    }
    Ok(items.join(","))
}

/// The reason in the cron crate's error text, without the expression it
/// shows (as normalized, not as written).
fn reason(text: &str) -> String {
    text.lines().last().unwrap_or_default().trim().to_owned()
}

#[cfg(test)]
mod cron_tests {
    use super::check_cron;

    #[test]
    fn cron_expressions_are_checked_as_qjob_reads_them() {
        for good in [
            "* * * * *",
            "0 9 * * 1-5",
            "0 9 * * 0,7",
            "*/5 * * * * *",
            "@daily",
            "0 0 9 * * Mon-Fri 2030",
        ] {
            assert!(check_cron(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "* * *",
            "61 * * * *",
            "0 9 * * 8",
            "0 9 * * 5-1",
            "@often",
        ] {
            assert!(check_cron(bad).is_err(), "{bad}");
        }
    }
}
