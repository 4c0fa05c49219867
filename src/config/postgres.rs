//! TLS to PostgreSQL: `history.postgres_tls`, `history.postgres_ca_file`,
//! and which mode is in force when the key is unset.
//!
//! Unset, the mode follows the URL's `sslmode` when it has one (`disable`
//! or `require`, the two tokio-postgres reads), else it is `disable` for a
//! server on loopback or a Unix socket and `verify-full` for any other:
//! a log that crosses a network is encrypted and its server authenticated
//! unless the operator says otherwise. `sslmode=prefer` (plain text when
//! the server offers no TLS, without a word) is refused: hookd never falls
//! back to plain text silently.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio_postgres::config::Host;

use super::{invalid, Error};

/// `history.postgres_tls`: how hookd secures its connections to PostgreSQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PostgresTls {
    /// Plain text: for a server on loopback or a Unix socket, or on a
    /// network trusted as such.
    Disable,
    /// TLS or no connection, the server's certificate not checked (as
    /// libpq's `sslmode=require`): it keeps the log from eavesdroppers,
    /// not from a server impersonating the real one.
    Require,
    /// TLS, the server's certificate chain verified against
    /// `history.postgres_ca_file` (else the system's roots) and its name
    /// checked against the URL's host.
    VerifyFull,
}

impl PostgresTls {
    /// The key's value naming this mode.
    pub fn name(self) -> &'static str {
        match self {
            PostgresTls::Disable => "disable",
            PostgresTls::Require => "require",
            PostgresTls::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for PostgresTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The TLS mode in force for `url` with `history.postgres_tls` = `set`,
/// and why (for `config check`): `set` if given, else the URL's `sslmode`,
/// else the default by host. Refuses an `sslmode` that hookd does not
/// follow or that contradicts `set`, a URL tokio-postgres cannot read, and
/// TLS over a Unix socket or without a host name to check.
pub(crate) fn in_force(url: &str, set: Option<PostgresTls>) -> Result<(PostgresTls, &'static str), Error> {
    const KEY: &str = "history.postgres_tls";
    const URL: &str = "history.postgres_url";
    let from_url = match sslmode_of(url).as_deref() {
        None => None,
        Some("disable") => Some(PostgresTls::Disable),
        Some("require") => Some(PostgresTls::Require),
        Some(mode @ ("verify-ca" | "verify-full")) => {
            return Err(invalid(
                URL,
                format!("`sslmode={mode}` is not read from the URL: remove it and set history.postgres_tls = \"verify-full\" (with history.postgres_ca_file for a private CA)"),
            ))
        }
        Some(mode @ ("prefer" | "allow")) => {
            return Err(invalid(
                URL,
                format!("`sslmode={mode}` would fall back to plain text without a word, which hookd does not do: remove it and set history.postgres_tls to \"disable\", \"require\" or \"verify-full\""),
            ))
        }
        Some(mode) => {
            return Err(invalid(
                URL,
                format!("`sslmode={mode}` is not a TLS mode: remove it and set history.postgres_tls to \"disable\", \"require\" or \"verify-full\""),
            ))
        }
    };
    let parsed: tokio_postgres::Config = url.parse().map_err(|e| {
        invalid(
            URL,
            format!("`{}` is not a PostgreSQL URL: {e}", crate::model::redact_url(url)),
        )
    })?;
    let (mode, because, key) = match (set, from_url) {
        (Some(set), Some(said)) if set != said => {
            return Err(invalid(
                KEY,
                format!("is \"{set}\", but history.postgres_url says `sslmode={said}`: remove sslmode from the URL (history.postgres_tls decides)"),
            ))
        }
        (Some(set), _) => (set, "history.postgres_tls", KEY),
        (None, Some(said)) => (said, "the URL's sslmode", URL),
        (None, None) if is_local(&parsed) => (
            PostgresTls::Disable,
            "history.postgres_tls unset: the default for a loopback host or Unix socket",
            KEY,
        ),
        (None, None) => (
            PostgresTls::VerifyFull,
            "history.postgres_tls unset: the default for a host not on loopback",
            KEY,
        ),
    };
    if mode != PostgresTls::Disable {
        let (what, undo) = if key == KEY {
            (format!("is \"{mode}\""), "set history.postgres_tls = \"disable\"")
        } else {
            (format!("says `sslmode={mode}`"), "remove sslmode from the URL")
        };
        if parsed.get_hosts().iter().any(|h| !matches!(h, Host::Tcp(_))) {
            return Err(invalid(
                key,
                format!("{what}, but the URL's host is a Unix socket, over which PostgreSQL speaks no TLS: {undo}, or give a TCP host"),
            ));
        }
        if parsed.get_hosts().is_empty() {
            return Err(invalid(
                key,
                format!("{what}, but the URL names no host to send TLS to (a `hostaddr` alone): give the server's name as the host"),
            ));
        }
    }
    Ok((mode, because))
}

/// Checks `history.postgres_ca_file` against the mode in force: it goes
/// with `verify-full` only, and must hold at least one certificate.
pub(crate) fn check_ca_file(path: &Path, mode: Option<PostgresTls>) -> Result<(), Error> {
    const KEY: &str = "history.postgres_ca_file";
    match mode {
        Some(PostgresTls::VerifyFull) => {}
        Some(mode) => {
            return Err(invalid(
                KEY,
                format!(
                "is set, but history.postgres_tls in force is \"{mode}\": the CA file is used by \"verify-full\" only"
            ),
            ))
        }
        None => return Err(invalid(KEY, "is set, but history.postgres_url is not")),
    }
    let mut roots = rustls::RootCertStore::empty();
    crate::deliver::read_ca_file(&mut roots, path)
        .map(|_| ())
        .map_err(|problem| {
            invalid(
                KEY,
                format!("{}: {problem}; give a PEM file of CA certificates", path.display()),
            )
        })
}

/// The last `sslmode` parameter of a `postgres://` URL, read as
/// tokio-postgres reads it: the userinfo runs to the first `@` (so no
/// character of a password is taken for the query), the query from the
/// first `?` after it.
fn sslmode_of(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.split_once('@').map_or(rest, |(_, rest)| rest);
    let (_, query) = rest.split_once('?')?;
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(key, _)| *key == "sslmode")
        .map(|(_, value)| value.to_owned())
        .next_back()
}

/// Whether every host of `config` is on this machine: a Unix socket,
/// `localhost`, or a loopback address (and so is every `hostaddr`).
fn is_local(config: &tokio_postgres::Config) -> bool {
    config.get_hosts().iter().all(|host| match host {
        Host::Tcp(name) => crate::model::is_local_host(name),
        Host::Unix(_) => true,
    }) && config.get_hostaddrs().iter().all(IpAddr::is_loopback)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(url: &str, set: Option<PostgresTls>) -> Result<PostgresTls, String> {
        in_force(url, set).map(|(mode, _)| mode).map_err(|e| e.to_string())
    }

    #[test]
    fn the_default_follows_the_url() {
        use PostgresTls::*;
        let cases: &[(&str, Option<PostgresTls>, PostgresTls)] = &[
            ("postgres://h@127.0.0.1:5432/db", None, Disable),
            ("postgres://h@127.3.4.5/db", None, Disable),
            ("postgres://h@localhost/db", None, Disable),
            ("postgres://h@[::1]:5432/db", None, Disable),
            ("postgres://h@%2Fvar%2Frun%2Fpostgresql/db", None, Disable),
            ("postgres://h@db.internal/db", None, VerifyFull),
            ("postgres://h@10.0.0.7/db", None, VerifyFull),
            ("postgres://h@localhost/db?hostaddr=10.0.0.7", None, VerifyFull),
            ("postgres://h:p@db.internal/db?sslmode=disable", None, Disable),
            ("postgres://h@localhost/db?sslmode=require", None, Require),
            (
                "postgres://h@db.internal/db?application_name=x&sslmode=require",
                None,
                Require,
            ),
            ("postgres://h@db.internal/db", Some(Disable), Disable),
            ("postgres://h@db.internal/db", Some(Require), Require),
            ("postgres://h@127.0.0.1/db", Some(VerifyFull), VerifyFull),
            ("postgres://h@db.internal/db?sslmode=require", Some(Require), Require),
            // A `?` in the password is not a query, an `@` in the query
            // not the end of a password.
            ("postgres://h:a%3F?sslmode=x@db.internal/db", None, VerifyFull),
            (
                "postgres://h@db.internal/db?application_name=a@b&sslmode=require",
                None,
                Require,
            ),
        ];
        for (url, set, want) in cases {
            assert_eq!(mode(url, *set).as_ref(), Ok(want), "{url} {set:?}");
        }
    }

    #[test]
    fn modes_hookd_does_not_follow_are_refused_with_what_to_set() {
        use PostgresTls::*;
        let cases: &[(&str, Option<PostgresTls>, &str)] = &[
            ("postgres://h@db/db?sslmode=prefer", None, "history.postgres_url"),
            (
                "postgres://h@db/db?sslmode=allow",
                Some(Disable),
                "history.postgres_url",
            ),
            ("postgres://h@db/db?sslmode=verify-full", None, "history.postgres_url"),
            (
                "postgres://h@db/db?sslmode=verify-ca",
                Some(VerifyFull),
                "history.postgres_url",
            ),
            ("postgres://h@db/db?sslmode=bogus", None, "history.postgres_url"),
            (
                "postgres://h@db/db?sslmode=disable",
                Some(VerifyFull),
                "history.postgres_tls",
            ),
            (
                "postgres://h@db/db?sslmode=require",
                Some(Disable),
                "history.postgres_tls",
            ),
            ("postgres://h@%2Ftmp/db", Some(Require), "history.postgres_tls"),
            ("postgres://h@%2Ftmp/db?sslmode=require", None, "history.postgres_url"),
            ("postgres://h@/db?hostaddr=10.0.0.7", None, "history.postgres_tls"),
        ];
        for (url, set, key) in cases {
            let err = mode(url, *set).expect_err(url);
            assert!(err.contains(&format!("invalid `{key}`")), "{url}: {err}");
            // It says what to do instead.
            assert!(
                err.contains(": remove") || err.contains(": set") || err.contains(": give"),
                "{url}: {err}"
            );
        }
    }

    #[test]
    fn a_refusal_never_shows_the_password() {
        for url in [
            "postgres://h:pw-secret-1@db/db?sslmode=prefer",
            "postgres://h:pw-secret-1@db:nope/db",
            "postgres://h:pw-secret-1@db/db?sslmode=require",
        ] {
            let err = mode(url, Some(PostgresTls::VerifyFull)).unwrap_err();
            assert!(!err.contains("pw-secret-1"), "{err}");
        }
    }
}
