//! Which pages may open a WebSocket (`--allowed-origins`): a browser sends
//! the page's `Origin` with every upgrade, and without this check any site
//! could show this gateway's real QR codes and receive the login.
//!
//! Accepted: no `Origin` (not a browser), a same-origin page (the
//! `Origin`'s host is the `Host` header's host and, when `Host` carries a
//! port, the `Origin`'s port, explicit or its scheme's default, is that
//! port), or an origin on the list, where `https://*.example.com` matches
//! any subdomain at any depth but not `example.com` itself.

/// An `Origin` or a list entry taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parts {
    scheme: String,
    host: String,
    port: u16,
}

/// Longest `Origin` header looked at.
const MAX_ORIGIN_LEN: usize = 512;

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// `host[:port]` (IPv6 in brackets) → (lowercase host, port if given).
fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if s.is_empty() {
        return None;
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse().ok()?),
        };
        (format!("[{}]", h.to_ascii_lowercase()), port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h.to_ascii_lowercase(), Some(p.parse().ok()?)),
            None => (s.to_ascii_lowercase(), None),
        }
    };
    if host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    Some((host, port))
}

fn parse_origin(s: &str) -> Option<Parts> {
    if s.len() > MAX_ORIGIN_LEN {
        return None;
    }
    let (scheme, rest) = s.trim().split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = split_host_port(rest)?;
    let port = port.or_else(|| default_port(&scheme))?;
    Some(Parts { scheme, host, port })
}

/// One `--allowed-origins` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigin {
    parts: Parts,
    /// `*.` entries: `parts.host` is the suffix after the `*`.
    wildcard: bool,
}

impl AllowedOrigin {
    /// Parses `https://example.com`, `http://localhost:8080` or
    /// `https://*.example.com`.
    pub fn parse(entry: &str) -> Result<AllowedOrigin, String> {
        let bad = || {
            format!("`{entry}` is not an origin like https://example.com or https://*.example.com")
        };
        let (scheme, rest) = entry.split_once("://").ok_or_else(bad)?;
        let (wildcard, rest) = match rest.strip_prefix("*.") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let mut parts = parse_origin(&format!("{scheme}://{rest}")).ok_or_else(bad)?;
        if wildcard {
            parts.host = format!(".{}", parts.host);
        }
        Ok(AllowedOrigin { parts, wildcard })
    }

    fn matches(&self, o: &Parts) -> bool {
        if o.scheme != self.parts.scheme || o.port != self.parts.port {
            return false;
        }
        if self.wildcard {
            o.host.len() > self.parts.host.len() && o.host.ends_with(&self.parts.host)
        } else {
            o.host == self.parts.host
        }
    }
}

/// Whether an upgrade with these `Origin` and `Host` headers is allowed.
pub fn allowed(origin: Option<&str>, host: Option<&str>, list: &[AllowedOrigin]) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let Some(o) = parse_origin(origin) else {
        return false;
    };
    if let Some((host, port)) = host.and_then(split_host_port)
        && host == o.host
        && port.is_none_or(|p| p == o.port)
    {
        return true;
    }
    list.iter().any(|a| a.matches(&o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Vec<AllowedOrigin> {
        entries
            .iter()
            .map(|e| AllowedOrigin::parse(e).unwrap())
            .collect()
    }

    #[test]
    fn same_origin_by_default() {
        let none = [];
        assert!(allowed(None, Some("login.example.com"), &none));
        assert!(allowed(
            Some("https://login.example.com"),
            Some("login.example.com"),
            &none
        ));
        assert!(allowed(
            Some("http://127.0.0.1:1099"),
            Some("127.0.0.1:1099"),
            &none
        ));
        assert!(allowed(
            Some("https://login.example.com"),
            Some("login.example.com:443"),
            &none
        ));
        assert!(!allowed(
            Some("https://evil.example"),
            Some("login.example.com"),
            &none
        ));
        assert!(!allowed(
            Some("http://127.0.0.1:8000"),
            Some("127.0.0.1:1099"),
            &none
        ));
        assert!(!allowed(Some("null"), Some("login.example.com"), &none));
        assert!(!allowed(Some("https://evil.example"), None, &none));
        assert!(allowed(
            Some("http://[::1]:1099"),
            Some("[::1]:1099"),
            &none
        ));
    }

    #[test]
    fn listed_origins_and_wildcards() {
        let l = list(&[
            "https://example.com",
            "https://*.example.org",
            "http://localhost:8080",
        ]);
        let host = Some("gw.internal:1099");
        assert!(allowed(Some("https://example.com"), host, &l));
        assert!(allowed(Some("https://EXAMPLE.com:443"), host, &l));
        assert!(!allowed(Some("http://example.com"), host, &l));
        assert!(!allowed(Some("https://example.com:8443"), host, &l));
        assert!(allowed(Some("https://a.example.org"), host, &l));
        assert!(allowed(Some("https://a.b.example.org"), host, &l));
        assert!(!allowed(Some("https://example.org"), host, &l));
        assert!(!allowed(Some("https://evilexample.org"), host, &l));
        assert!(allowed(Some("http://localhost:8080"), host, &l));
        assert!(!allowed(Some("http://localhost:8081"), host, &l));
        // Same-origin still works with a list.
        assert!(allowed(Some("http://gw.internal:1099"), host, &l));
    }

    #[test]
    fn bad_entries_are_refused() {
        assert!(AllowedOrigin::parse("example.com").is_err());
        assert!(AllowedOrigin::parse("https://").is_err());
        assert!(AllowedOrigin::parse("https://a.com/path").is_err());
        assert!(AllowedOrigin::parse("ftp://a.com").is_err());
    }
}
