//! The broker an AsyncAPI document names: its AMQP URL without the
//! credentials.

use crate::Error;

/// The broker as an AsyncAPI server names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Server {
    /// `amqp` or `amqps`.
    pub(super) protocol: &'static str,
    /// The host and port, without the user and password.
    pub(super) host: String,
    /// The virtual host, decoded (`/` by default).
    pub(super) vhost: String,
}

impl Server {
    /// Reads an AMQP URL, `amqp[s]://[user[:password]@]host[:port][/vhost][?query]`,
    /// leaving the user and the password out.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a URL of another scheme or without a host.
    pub(super) fn parse(url: &str) -> Result<Self, Error> {
        let invalid = |why: &str| {
            // The URL may hold a password: never repeat it.
            Error::Config(format!(
                "the server's URL is not an AMQP URL (amqp[s]://host[:port][/vhost]): {why}"
            ))
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| invalid("no scheme"))?;
        let (protocol, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "amqp" => ("amqp", 5672),
            "amqps" => ("amqps", 5671),
            _ => return Err(invalid("the scheme is neither amqp nor amqps")),
        };
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = match rest.split_once('/') {
            Some((authority, path)) => (authority, Some(path)),
            None => (rest, None),
        };
        let host = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let has_port = match host.rsplit_once(':') {
            // An IPv6 address without a port ends in `]`.
            Some((_, port)) => !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()),
            None => false,
        };
        let host = if has_port {
            host.to_owned()
        } else {
            format!("{host}:{default_port}")
        };
        let vhost = match path.map(percent_decoded) {
            None => "/".to_owned(),
            Some(vhost) if vhost.is_empty() => "/".to_owned(),
            Some(vhost) => vhost,
        };
        Ok(Self {
            protocol,
            host,
            vhost,
        })
    }

    /// The virtual host as an AsyncAPI server's `pathname`: `None` for the
    /// default `/`, else `/` and the name, percent-encoded as in the URL.
    pub(super) fn pathname(&self) -> Option<String> {
        (self.vhost != "/")
            .then(|| format!("/{}", self.vhost.replace('%', "%25").replace('/', "%2f")))
    }
}

/// `%XX` sequences decoded; a malformed one is kept as it is.
pub(super) fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = bytes
            .get(at + 1..at + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[at], hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                at += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(url: &str) -> Server {
        Server::parse(url).unwrap()
    }

    #[test]
    fn credentials_are_left_out() {
        let parsed = server("amqp://guest:s3cret@rabbit.internal:5673/%2f");
        assert_eq!(parsed.protocol, "amqp");
        assert_eq!(parsed.host, "rabbit.internal:5673");
        assert_eq!(parsed.vhost, "/");
        assert_eq!(parsed.pathname(), None);
        assert!(!format!("{parsed:?}").contains("s3cret"));
        assert_eq!(server("amqp://user@h/").host, "h:5672");
    }

    #[test]
    fn ports_and_vhosts_default_and_decode() {
        assert_eq!(server("amqp://localhost").host, "localhost:5672");
        assert_eq!(server("AMQPS://rabbit").host, "rabbit:5671");
        assert_eq!(server("amqps://rabbit").protocol, "amqps");
        assert_eq!(server("amqp://[::1]").host, "[::1]:5672");
        assert_eq!(server("amqp://[::1]:5680").host, "[::1]:5680");
        let production = server("amqp://u:p@h/prod%2Fbilling?heartbeat=10");
        assert_eq!(production.vhost, "prod/billing");
        assert_eq!(production.pathname().as_deref(), Some("/prod%2fbilling"));
        assert_eq!(server("amqp://h/%zz").vhost, "%zz");
    }

    #[test]
    fn other_urls_are_refused_without_repeating_them() {
        for url in ["http://u:secret@h", "u:secret@h", "amqp://u:secret@/vhost"] {
            let error = Server::parse(url).unwrap_err().to_string();
            assert!(!error.contains("secret"), "{error}");
        }
    }
}
