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

/// The value of cookie `name` the request sent.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|cookies| cookies.split(';'))
        .filter_map(|cookie| cookie.trim().split_once('='))
        .find(|(sent, _)| *sent == name)
        .map(|(_, value)| value)
}

/// The token from the request's cookie, or a new random one.
pub(crate) fn token(headers: &HeaderMap) -> Token {
    let sent = cookie(headers, COOKIE)
        .filter(|value| value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit()));
    match sent {
        Some(value) => Token {
            value: value.to_owned(),
            is_new: false,
        },
        None => Token {
            value: uuid::Uuid::new_v4().simple().to_string(),
            is_new: true,
        },
    }
}

/// The cookie carrying the notice an action leaves for the page it
/// redirects to.
const NOTICE: &str = "qjob_notice";

/// The notice the last action left, if any.
pub(crate) fn notice(headers: &HeaderMap) -> Option<String> {
    let encoded = cookie(headers, NOTICE)?;
    let bytes = encoded.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => {
                let hex = std::str::from_utf8(hex).ok()?;
                decoded.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(decoded)
        .ok()
        .filter(|text| !text.is_empty())
}

/// The `Set-Cookie` value that leaves `notice` for the next page (or, with
/// `None`, clears it).
pub(crate) fn notice_cookie(base: &str, notice: Option<&str>) -> String {
    let path = if base.is_empty() { "/" } else { base };
    match notice {
        Some(text) => format!(
            "{NOTICE}={}; Path={path}; Max-Age=60; HttpOnly; SameSite=Strict",
            crate::html::segment(text)
        ),
        None => format!("{NOTICE}=; Path={path}; Max-Age=0; HttpOnly; SameSite=Strict"),
    }
}

/// The host the request was sent to: `Host`, or the URI's authority
/// (HTTP/2).
pub(crate) fn host(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| parts.uri.authority().map(|authority| authority.as_str()))
}

/// Refuses a request the browser says comes from another site: its
/// `Sec-Fetch-Site`, or an `Origin` that is neither the request's own host
/// nor one of `allowed` (`scheme://host[:port]`, lower-case).
pub(crate) fn same_site(parts: &Parts, allowed: &[String]) -> Result<(), &'static str> {
    if let Some(site) = parts.headers.get("sec-fetch-site")
        && !matches!(site.as_bytes(), b"same-origin" | b"none")
    {
        return Err("refused: a request from another site");
    }
    let Some(origin) = parts.headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default().to_ascii_lowercase();
    if allowed.contains(&origin) {
        return Ok(());
    }
    let origin_host = origin.split_once("://").map(|(_, authority)| authority);
    let host = host(parts).map(str::to_ascii_lowercase);
    match (origin_host, host) {
        (Some(origin_host), Some(host)) if origin_host == host => Ok(()),
        _ => Err("refused: a request from another origin"),
    }
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
        let none: &[String] = &[];
        let check = |headers: &[(&str, &str)]| same_site(&parts(headers), none);
        assert!(check(&[("host", "a.example")]).is_ok());
        assert!(check(&[("host", "a.example"), ("origin", "https://A.example")]).is_ok());
        assert!(check(&[("host", "a.example"), ("origin", "https://evil.example")]).is_err());
        assert!(check(&[("host", "a.example"), ("origin", "null")]).is_err());
        assert!(check(&[("sec-fetch-site", "cross-site")]).is_err());
        assert!(check(&[("sec-fetch-site", "same-site")]).is_err());
        assert!(check(&[("sec-fetch-site", "same-origin")]).is_ok());
        // Behind a proxy that rewrites Host: the public origin, allowed.
        let proxied = parts(&[
            ("host", "backend:8080"),
            ("origin", "https://console.example"),
        ]);
        assert!(same_site(&proxied, none).is_err());
        assert!(same_site(&proxied, &["https://console.example".to_owned()]).is_ok());
    }

    #[test]
    fn a_notice_reads_back_once_encoded() {
        let set = notice_cookie("/qjob", Some("replayed 3 letter(s): “x” & y"));
        let value = set.split(';').next().unwrap();
        let sent = notice(&parts(&[("cookie", value)]).headers);
        assert_eq!(sent.as_deref(), Some("replayed 3 letter(s): “x” & y"));
        assert!(notice_cookie("", None).contains("Max-Age=0; "));
        assert_eq!(
            notice(&parts(&[("cookie", "qjob_notice=%zz")]).headers),
            None
        );
    }
}
