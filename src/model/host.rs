//! Hosts as a request names them (its `Host` header, or HTTP/2's
//! `:authority`) and as `server.allowed_hosts` lists them: one parser for
//! both, so the config's check and the API's comparison agree.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// A host: a name (lower-cased, without a trailing dot) or an IP address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A DNS name, like `hooks.example.com` or `localhost`.
    Name(String),
    /// An IP address written out.
    Ip(IpAddr),
}

impl Host {
    /// A host name or IP address written alone (no scheme, port, path or
    /// wildcard), as `server.allowed_hosts` lists them.
    pub fn parse(text: &str) -> Result<Host, String> {
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        name(text).ok_or_else(|| {
            format!(
                "`{text}` is not a host name or IP address: write one alone, like hooks.example.com or 10.0.0.7 \
                 (no scheme, port, path, brackets or wildcard)"
            )
        })
    }

    /// The host an authority names (`name[:port]`, `v4[:port]`,
    /// `[v6][:port]`), its port dropped; `None` if it is not one.
    pub fn of_authority(authority: &str) -> Option<Host> {
        let port_ok = |port: &str| port.bytes().all(|b| b.is_ascii_digit());
        if let Some(rest) = authority.strip_prefix('[') {
            let (inside, after) = rest.split_once(']')?;
            let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(port_ok);
            return port_ok
                .then(|| inside.parse::<Ipv6Addr>().ok())
                .flatten()
                .map(|ip| Host::Ip(ip.into()));
        }
        let host = match authority.split_once(':') {
            Some((host, port)) if port_ok(port) => host,
            Some(_) => return None,
            None => authority,
        };
        match host.parse::<std::net::Ipv4Addr>() {
            Ok(ip) => Some(Host::Ip(ip.into())),
            Err(_) => name(host),
        }
    }

    /// Whether this host is this machine by its loopback name or address:
    /// `localhost`, `*.localhost`, `127.0.0.0/8` or `::1`. Such a name
    /// cannot be pointed at hookd by another site's DNS.
    pub fn is_loopback(&self) -> bool {
        match self {
            Host::Name(name) => name == "localhost" || name.ends_with(".localhost"),
            Host::Ip(ip) => ip.is_loopback(),
        }
    }
}

/// Whether `host`, as a config writes a server's host (a name, an IP
/// address, an IPv6 address in brackets), is `localhost` or a loopback
/// address: traffic to it never leaves the machine. Any other name may
/// resolve anywhere (stricter than [`Host::is_loopback`], which also takes
/// `*.localhost` for the API's own listener).
pub fn is_local_host(host: &str) -> bool {
    let host = host.trim();
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// `text` as a DNS name: labels of letters, digits and `-` (not at
/// either end), 1 to 63 bytes each, 253 in all, the last not all digits
/// (that would be a mistyped address); one trailing dot allowed.
fn name(text: &str) -> Option<Host> {
    let trimmed = text.strip_suffix('.').unwrap_or(text);
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let last_ok = trimmed
        .rsplit('.')
        .next()
        .is_some_and(|last| !last.bytes().all(|b| b.is_ascii_digit()));
    (!trimmed.is_empty() && trimmed.len() <= 253 && trimmed.split('.').all(label_ok) && last_ok)
        .then(|| Host::Name(trimmed.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_hosts_are_names_or_addresses_alone() {
        let cases: &[(&str, Option<&str>)] = &[
            ("hooks.example.com", Some("hooks.example.com")),
            ("Hooks.Example.COM.", Some("hooks.example.com")),
            ("hookd", Some("hookd")),
            ("10.0.0.7", Some("10.0.0.7")),
            ("2001:db8::1", Some("[2001:db8::1]")),
            ("", None),
            ("https://hooks.example.com", None),
            ("hooks.example.com:8080", None),
            ("hooks.example.com/in", None),
            ("*.example.com", None),
            ("[::1]", None),
            ("-bad.example", None),
            ("a..b", None),
            ("10.0.0.999", None),
            ("under_score.example", None),
        ];
        for (text, want) in cases {
            let got = Host::parse(text).ok().map(|h| h.to_string());
            assert_eq!(got.as_deref(), *want, "{text:?}");
        }
        assert!(Host::parse("x y").unwrap_err().contains("`x y`"));
    }

    #[test]
    fn an_authority_names_its_host_without_the_port() {
        let cases: &[(&str, Option<&str>, bool)] = &[
            ("localhost", Some("localhost"), true),
            ("localhost:8080", Some("localhost"), true),
            ("LOCALHOST.:8080", Some("localhost"), true),
            ("console.localhost:8080", Some("console.localhost"), true),
            ("127.0.0.1:8080", Some("127.0.0.1"), true),
            ("127.9.8.7", Some("127.9.8.7"), true),
            ("[::1]:8080", Some("[::1]"), true),
            ("[::1]", Some("[::1]"), true),
            ("evil.example", Some("evil.example"), false),
            ("localhost.evil.example:80", Some("localhost.evil.example"), false),
            ("evillocalhost", Some("evillocalhost"), false),
            ("10.0.0.7:8080", Some("10.0.0.7"), false),
            ("[2001:db8::1]:443", Some("[2001:db8::1]"), false),
            ("::1", None, false),
            ("[::1]x", None, false),
            ("localhost:http", None, false),
            ("user@localhost", None, false),
            ("", None, false),
        ];
        for (authority, want, loopback) in cases {
            let host = Host::of_authority(authority);
            assert_eq!(host.as_ref().map(Host::to_string).as_deref(), *want, "{authority:?}");
            assert_eq!(host.is_some_and(|h| h.is_loopback()), *loopback, "{authority:?}");
        }
        assert_eq!(
            Host::of_authority("Hooks.example.com:443"),
            Host::parse("hooks.example.com").ok()
        );
        assert_eq!(Host::of_authority("[2001:db8::1]:443"), Host::parse("2001:db8::1").ok());
    }
}
