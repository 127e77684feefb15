//! Cross-site request forgery: an action must come from this site. The
//! browser says where a request comes from (`Sec-Fetch-Site`, `Origin`),
//! and each form carries a token that must match the `SameSite=Strict`
//! cookie this console set (a double-submitted token another site can
//! neither read nor send).

use axum::http::HeaderMap;
use axum::http::header;
use axum::http::request::Parts;

/// The cookie holding the token.
const COOKIE: &str = "qjob_csrf";

/// The request's token: the cookie's, or a new one to set.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub(crate) value: String,
    /// Not sent by the browser: set with this response.
    pub(crate) is_new: bool,
}

impl Token {
    /// The `Set-Cookie` value for a console mounted at `base`.
    pub(crate) fn cookie(&self, base: &str) -> String {
        let path = if base.is_empty() { "/" } else { base };
        format!(
            "{COOKIE}={}; Path={path}; HttpOnly; SameSite=Strict",
            self.value
        )
    }

    /// Whether a form's `token` is this request's cookie token.
    pub(crate) fn accepts(&self, token: &str) -> bool {
        !self.is_new && constant_time_eq(self.value.as_bytes(), token.as_bytes())
    }
}

/// The token from the request's cookie, or a new random one.
pub(crate) fn token(headers: &HeaderMap) -> Token {
    let sent = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|cookies| cookies.split(';'))
        .filter_map(|cookie| cookie.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|value| value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit()));
    match sent {
        Some(value) => Token {
            value,
            is_new: false,
        },
        None => Token {
            value: uuid::Uuid::new_v4().simple().to_string(),
            is_new: true,
        },
    }
}

/// Refuses a request the browser says comes from another site.
pub(crate) fn same_site(parts: &Parts) -> Result<(), &'static str> {
    if let Some(site) = parts.headers.get("sec-fetch-site")
        && !matches!(site.as_bytes(), b"same-origin" | b"none")
    {
        return Err("refused: a request from another site");
    }
    if let Some(origin) = parts.headers.get(header::ORIGIN) {
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|host| host.to_str().ok());
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|origin| origin.split_once("://"))
            .map(|(_, authority)| authority);
        if origin_host.is_none() || origin_host != host {
            return Err("refused: a request from another origin");
        }
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut request = Request::post("/x");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn only_the_cookie_token_is_accepted() {
        let fresh = token(&parts(&[]).headers);
        assert!(fresh.is_new);
        assert!(!fresh.accepts(&fresh.value), "no cookie was sent");
        let cookie = format!("other=1; {COOKIE}={}", fresh.value);
        let sent = token(&parts(&[("cookie", &cookie)]).headers);
        assert!(!sent.is_new);
        assert!(sent.accepts(&fresh.value));
        assert!(!sent.accepts("0123456789abcdef0123456789abcdef"));
        assert!(!sent.accepts(""));
        assert!(token(&parts(&[("cookie", "qjob_csrf=short")]).headers).is_new);
    }

    #[test]
    fn cross_site_requests_are_refused() {
        assert!(same_site(&parts(&[("host", "a.example")])).is_ok());
        assert!(
            same_site(&parts(&[
                ("host", "a.example"),
                ("origin", "https://a.example")
            ]))
            .is_ok()
        );
        assert!(
            same_site(&parts(&[
                ("host", "a.example"),
                ("origin", "https://evil.example")
            ]))
            .is_err()
        );
        assert!(same_site(&parts(&[("host", "a.example"), ("origin", "null")])).is_err());
        assert!(same_site(&parts(&[("sec-fetch-site", "cross-site")])).is_err());
        assert!(same_site(&parts(&[("sec-fetch-site", "same-site")])).is_err());
        assert!(same_site(&parts(&[("sec-fetch-site", "same-origin")])).is_ok());
    }
}
