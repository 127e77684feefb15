//! Reading literal values out of attribute expressions, with errors that
//! point at the offending token.

use syn::spanned::Spanned;
use syn::{Expr, ExprLit, ExprUnary, Lit, LitStr, UnOp};

/// A string literal.
pub(crate) fn string(key: &str, expr: &Expr) -> syn::Result<LitStr> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => Ok(lit.clone()),
        _ => Err(syn::Error::new(
            expr.span(),
            format!("`{key}` expects a string literal, like {key} = \"...\""),
        )),
    }
}

/// A non-negative integer literal in `min..=max`.
pub(crate) fn integer(key: &str, expr: &Expr, min: u64, max: u64) -> syn::Result<u64> {
    let range = || {
        if max >= u64::from(u32::MAX) {
            format!("`{key}` must be an integer of at least {min}")
        } else {
            format!("`{key}` must be an integer from {min} to {max}")
        }
    };
    let negative = || format!("{}; negative values are not allowed", range());
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(lit), ..
        }) => {
            if lit.base10_digits().starts_with('-') {
                return Err(syn::Error::new(lit.span(), negative()));
            }
            let value = lit
                .base10_parse::<u64>()
                .map_err(|_| syn::Error::new(lit.span(), range()))?;
            if (min..=max).contains(&value) {
                Ok(value)
            } else {
                Err(syn::Error::new(
                    lit.span(),
                    format!("{}, found {value}", range()),
                ))
            }
        }
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_), ..
        }) => Err(syn::Error::new(expr.span(), negative())),
        Expr::Lit(ExprLit {
            lit: Lit::Float(_), ..
        }) => Err(syn::Error::new(
            expr.span(),
            format!("{}; found a non-integer", range()),
        )),
        _ => Err(syn::Error::new(expr.span(), range())),
    }
}

/// A boolean literal.
pub(crate) fn boolean(key: &str, expr: &Expr) -> syn::Result<bool> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(lit),
            ..
        }) => Ok(lit.value),
        _ => Err(syn::Error::new(
            expr.span(),
            format!("`{key}` expects `true` or `false`"),
        )),
    }
}

/// A number literal (integer or float).
pub(crate) fn number(key: &str, expr: &Expr) -> syn::Result<f64> {
    let parsed = match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Float(lit),
            ..
        }) => lit.base10_parse::<f64>().ok(),
        Expr::Lit(ExprLit {
            lit: Lit::Int(lit), ..
        }) => lit.base10_parse::<f64>().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| syn::Error::new(expr.span(), format!("`{key}` expects a number")))
}

/// `#[job]`'s durations and rates have one grammar. A unit is `ms`,
/// `s` (`sec`, `second`, `seconds`), `m` (`min`, `minute`, `minutes`),
/// `h` (`hour`, `hours`) or `d` (`day`, `days`; 24 hours). A duration is a
/// number and a unit, the number whole or with decimals that make whole
/// milliseconds: `"500ms"`, `"5s"`, `"1.5s"`, `"5min"`, `"2h"`, `"7d"`. A
/// rate is a whole count, `/` and a unit: `"100/s"`, `"6/min"`. This
/// lists the units as errors name them.
const UNITS: &str = "ms, s, m, h or d; sec, min, hour and day also read";

/// Milliseconds per `unit`.
fn unit_ms(unit: &str) -> Option<u64> {
    Some(match unit {
        "ms" => 1,
        "s" | "sec" | "second" | "seconds" => 1_000,
        "m" | "min" | "minute" | "minutes" => 60_000,
        "h" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        _ => return None,
    })
}

/// A duration string (see [`UNITS`]), in milliseconds.
pub(crate) fn duration(key: &str, expr: &Expr) -> syn::Result<u64> {
    let lit = string(key, expr)?;
    parse_duration(&lit.value()).ok_or_else(|| {
        syn::Error::new(
            lit.span(),
            format!(
                "`{key}`: invalid duration {:?}; expected a number and a unit ({UNITS}), \
                 like \"500ms\", \"1.5s\", \"5min\" or \"7d\"",
                lit.value()
            ),
        )
    })
}

pub(crate) fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (number, unit) = text.split_at(split);
    let factor = unit_ms(unit.trim())?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.contains('.') || fraction.len() > 9 {
        return None;
    }
    let whole: u64 = whole.parse().ok()?;
    let mut ms = whole.checked_mul(factor)?;
    if !fraction.is_empty() {
        let digits: u64 = fraction.parse().ok()?;
        let scale = 10u64.pow(u32::try_from(fraction.len()).ok()?);
        let part = digits.checked_mul(factor)?;
        if part % scale != 0 {
            return None; // not whole milliseconds
        }
        ms = ms.checked_add(part / scale)?;
    }
    Some(ms)
}

/// A rate such as `"100/s"` or `"6/min"`: (count, period in ms).
pub(crate) fn rate(key: &str, expr: &Expr) -> syn::Result<(u64, u64)> {
    let lit = string(key, expr)?;
    let invalid = || {
        syn::Error::new(
            lit.span(),
            format!(
                "`{key}`: invalid rate {:?}; expected a whole count of at least 1, `/` and a unit \
                 ({UNITS}), like \"100/s\" or \"6/min\"",
                lit.value()
            ),
        )
    };
    parse_rate(&lit.value()).ok_or_else(invalid)
}

pub(crate) fn parse_rate(text: &str) -> Option<(u64, u64)> {
    let (count, unit) = text.split_once('/')?;
    let count: u64 = count.trim().parse().ok()?;
    let per = unit_ms(unit.trim())?;
    (1..=u64::from(u32::MAX))
        .contains(&count)
        .then_some((count, per))
}

#[cfg(test)]
mod tests {
    use super::{parse_duration, parse_rate};

    #[test]
    fn durations() {
        assert_eq!(parse_duration("200ms"), Some(200));
        assert_eq!(parse_duration("5s"), Some(5_000));
        assert_eq!(parse_duration("1.5s"), Some(1_500));
        assert_eq!(parse_duration("0.25s"), Some(250));
        assert_eq!(parse_duration("5m"), Some(300_000));
        assert_eq!(parse_duration("5min"), Some(300_000));
        assert_eq!(parse_duration("10 sec"), Some(10_000));
        assert_eq!(parse_duration("2h"), Some(7_200_000));
        assert_eq!(parse_duration("1.5ms"), None, "not whole milliseconds");
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration(".5s"), None);
        assert_eq!(parse_duration("1.2.3s"), None);
        assert_eq!(parse_duration("1d"), Some(86_400_000));
        assert_eq!(parse_duration("7d"), Some(7 * 86_400_000));
        assert_eq!(parse_duration("2 days"), Some(2 * 86_400_000));
        assert_eq!(parse_duration("1.5d"), Some(129_600_000));
        assert_eq!(parse_duration("3w"), None, "no weeks");
    }

    #[test]
    fn rates_share_the_units() {
        assert_eq!(parse_rate("100/s"), Some((100, 1_000)));
        assert_eq!(parse_rate("6/min"), Some((6, 60_000)));
        assert_eq!(parse_rate("1000 / hour"), Some((1000, 3_600_000)));
        assert_eq!(parse_rate("5/ms"), Some((5, 1)));
        assert_eq!(parse_rate("0/s"), None);
        assert_eq!(parse_rate("1.5/s"), None);
        assert_eq!(parse_rate("5000/d"), Some((5000, 86_400_000)));
        assert_eq!(parse_rate("10/w"), None);
    }
}
