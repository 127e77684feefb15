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

/// A duration string such as `"200ms"`, `"5s"`, `"5m"` or `"1h"`, in milliseconds.
pub(crate) fn duration(key: &str, expr: &Expr) -> syn::Result<u64> {
    let lit = string(key, expr)?;
    parse_duration(&lit.value()).ok_or_else(|| {
        syn::Error::new(
            lit.span(),
            format!(
                "`{key}`: invalid duration {:?}; expected a whole number followed by ms, s, m or h, like \"500ms\" or \"5m\"",
                lit.value()
            ),
        )
    })
}

pub(crate) fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// A rate such as `"100/s"`, `"20/m"` or `"1000/h"`: (count, period in ms).
pub(crate) fn rate(key: &str, expr: &Expr) -> syn::Result<(u64, u64)> {
    let lit = string(key, expr)?;
    let invalid = || {
        syn::Error::new(
            lit.span(),
            format!(
                "`{key}`: invalid rate {:?}; expected a count of at least 1 per s, m or h, like \"100/s\"",
                lit.value()
            ),
        )
    };
    let value = lit.value();
    let (count, period) = value.split_once('/').ok_or_else(invalid)?;
    let count: u64 = count.trim().parse().map_err(|_| invalid())?;
    let per = match period.trim() {
        "s" | "sec" | "second" => 1_000,
        "m" | "min" | "minute" => 60_000,
        "h" | "hour" => 3_600_000,
        _ => return Err(invalid()),
    };
    if count == 0 || count > u64::from(u32::MAX) {
        return Err(invalid());
    }
    Ok((count, per))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("200ms"), Some(200));
        assert_eq!(parse_duration("5s"), Some(5_000));
        assert_eq!(parse_duration("5m"), Some(300_000));
        assert_eq!(parse_duration("2h"), Some(7_200_000));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("1.5s"), None);
        assert_eq!(parse_duration("3d"), None);
    }
}
