//! Console sessions and one-time sign-in links, kept in the catalogue
//! store ([`CatalogStore::put_session`]) so that every process sharing a
//! backend knows them.
//!
//! A browser holds a random token (32 bytes, base64url); the store keeps
//! it under a SHA-256 digest only, so a copy of the store opens no
//! session. Sessions and links live apart (`s_…` and `l_…` ids): a link's
//! token is never a session cookie, and a link opens once
//! ([`CatalogStore::take_session`]).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::catalog::keys::Principal;
use crate::catalog::store::{CatalogStore, Error};
use crate::config::ConsoleConfig;
use crate::model::{now_ms, Millis, TenantId};

/// The cookie holding a session's token.
pub const COOKIE: &str = "hookd_session";

/// Whom a session acts for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Role {
    /// The platform's operator: everything, as an admin key.
    Operator,
    /// One tenant's portal: its objects only, as a tenant key.
    Tenant {
        /// The tenant.
        tenant: TenantId,
        /// Its [`crate::catalog::Tenant::generation`] when the session (or
        /// link) was made: it ends with that tenant, and does not open the
        /// portal of a later tenant with the same id.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        generation: String,
    },
}

impl Role {
    /// The API principal the session acts as: the same authorization as a
    /// key of that role.
    pub fn principal(&self) -> Principal {
        match self {
            Role::Operator => Principal::Admin { key: None },
            Role::Tenant { tenant, .. } => Principal::Tenant {
                key: "console".into(),
                tenant: tenant.clone(),
            },
        }
    }

    /// The tenant, for a portal session.
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Role::Operator => None,
            Role::Tenant { tenant, .. } => Some(tenant),
        }
    }
}

/// The key a session was signed in with, so that it ends with the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Via {
    /// A key made through the API: its id, while it is not revoked.
    Key {
        /// `key_…`.
        id: String,
    },
    /// One of `server.api_keys`: its hash, while the config holds it.
    ConfigKey {
        /// [`crate::catalog::keys::hash`] of the key.
        hash: String,
    },
    /// A one-time link an admin made: the session lives while the key
    /// that made the link does (`by`; none for a link made on an open API,
    /// or by an older hookd), and a tenant's while its tenant exists.
    Link {
        /// How the admin who made the link was signed in.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<Box<Via>>,
    },
}

/// What a console request that calls the API on a session's behalf says
/// of how that session signed in, so that what the API makes for it (a
/// link) can end with the same key.
#[derive(Clone, Debug)]
pub struct SignedInVia(pub Option<Via>);

/// A stored link: whom it opens a session for, and how its maker was
/// signed in. A link stored by an older hookd is its role alone.
#[derive(Serialize, Deserialize)]
struct LinkBody {
    role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    by: Option<Via>,
}

fn link_of(body: &[u8]) -> Option<(Role, Option<Via>)> {
    if let Ok(link) = serde_json::from_slice::<LinkBody>(body) {
        return Some((link.role, link.by));
    }
    serde_json::from_slice::<Role>(body).ok().map(|role| (role, None))
}

/// A signed-in browser.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Whom it acts for.
    #[serde(flatten)]
    pub role: Role,
    /// How it signed in; none on an open API (no `server.api_keys`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Via>,
    /// The token every state-changing form of this session carries.
    pub csrf: String,
    /// When it ends.
    pub expires_at: Millis,
}

/// Sessions and links in the catalogue store.
#[derive(Clone)]
pub struct Sessions {
    /// Where they are kept.
    store: Arc<dyn CatalogStore>,
    /// How long a session lasts.
    session_ttl: Duration,
    /// How long a link waits to be opened.
    link_ttl: Duration,
}

/// A fresh random token: 32 bytes, base64url without padding.
pub fn token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The store id of a token: `prefix` and the token's SHA-256, in hex.
fn stored_id(prefix: &str, token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut id = String::with_capacity(prefix.len() + 64);
    id.push_str(prefix);
    for byte in digest {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

/// Whether `id` is a session's store id: `s_` and 64 hex digits.
pub fn is_session_id(id: &str) -> bool {
    id.strip_prefix("s_")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn millis(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

impl Sessions {
    /// Sessions in `store`, lasting as `config` says.
    pub fn new(store: Arc<dyn CatalogStore>, config: &ConsoleConfig) -> Sessions {
        Sessions {
            store,
            session_ttl: config.session_ttl,
            link_ttl: config.link_ttl,
        }
    }

    /// Starts a session for `role`, signed in `via` a key (or a link):
    /// its token (the cookie's value) and the session.
    pub async fn start(&self, role: Role, via: Option<Via>) -> Result<(String, Session), Error> {
        let token = token();
        let session = Session {
            role,
            via,
            csrf: self::token(),
            expires_at: now_ms().saturating_add(millis(self.session_ttl)),
        };
        let body = serde_json::to_vec(&session).map_err(|e| Error::Invalid(e.to_string()))?;
        self.store
            .put_session(&stored_id("s_", &token), &body, session.expires_at)
            .await?;
        Ok((token, session))
    }

    /// The session of `token`, unless it ended or never was.
    pub async fn get(&self, token: &str) -> Result<Option<Session>, Error> {
        let Some(body) = self.store.session(&stored_id("s_", token), now_ms()).await? else {
            return Ok(None);
        };
        // An unreadable session (written by another version) is no session.
        Ok(serde_json::from_slice(&body).ok())
    }

    /// Ends the session of `token`.
    pub async fn end(&self, token: &str) -> Result<(), Error> {
        self.store.delete_session(&stored_id("s_", token)).await
    }

    /// The live sessions, soonest to end first, at most `limit`, each with
    /// its id: the digest the store keeps (`s_…`), which opens nothing.
    pub async fn list(&self, limit: usize) -> Result<Vec<(String, Session)>, Error> {
        Ok(self
            .store
            .live_sessions("s_", now_ms(), limit)
            .await?
            .into_iter()
            .filter_map(|(id, body)| Some((id, serde_json::from_slice(&body).ok()?)))
            .collect())
    }

    /// The live session of store id `id` (as [`Sessions::list`] names it).
    pub async fn by_id(&self, id: &str) -> Result<Option<Session>, Error> {
        if !is_session_id(id) {
            return Ok(None);
        }
        let Some(body) = self.store.session(id, now_ms()).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&body).ok())
    }

    /// Ends the session of store id `id`.
    pub async fn end_id(&self, id: &str) -> Result<(), Error> {
        if !is_session_id(id) {
            return Ok(());
        }
        self.store.delete_session(id).await
    }

    /// A one-time link for `role`, made by an admin signed in `by`: its
    /// token and when it expires.
    pub async fn issue_link(&self, role: Role, by: Option<Via>) -> Result<(String, Millis), Error> {
        let token = token();
        let expires_at = now_ms().saturating_add(millis(self.link_ttl));
        let body = serde_json::to_vec(&LinkBody { role, by }).map_err(|e| Error::Invalid(e.to_string()))?;
        self.store
            .put_session(&stored_id("l_", &token), &body, expires_at)
            .await?;
        Ok((token, expires_at))
    }

    /// Whom the link of `token` opens a session for, if it is still there
    /// to open, without spending it.
    pub async fn link_role(&self, token: &str) -> Result<Option<Role>, Error> {
        let Some(body) = self.store.session(&stored_id("l_", token), now_ms()).await? else {
            return Ok(None);
        };
        Ok(link_of(&body).map(|(role, _)| role))
    }

    /// Spends the link of `token`: its role and how its maker was signed
    /// in, once; `None` if it expired, was opened already or never was.
    pub async fn redeem_link(&self, token: &str) -> Result<Option<(Role, Option<Via>)>, Error> {
        let Some(body) = self.store.take_session(&stored_id("l_", token), now_ms()).await? else {
            return Ok(None);
        };
        Ok(link_of(&body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_digests_apart_by_kind() {
        let t = token();
        assert_eq!(t.len(), 43);
        let (s, l) = (stored_id("s_", &t), stored_id("l_", &t));
        assert_ne!(s, l);
        assert!(!s.contains(&t));
        assert_eq!(s.len(), 66);
    }

    #[test]
    fn a_session_names_its_role() {
        let session = Session {
            role: Role::Tenant {
                tenant: TenantId::parse("acme").unwrap(),
                generation: String::new(),
            },
            via: None,
            csrf: "x".into(),
            expires_at: 5,
        };
        let text = serde_json::to_string(&session).unwrap();
        assert_eq!(text, r#"{"role":"tenant","tenant":"acme","csrf":"x","expires_at":5}"#);
        assert_eq!(serde_json::from_str::<Session>(&text).unwrap(), session);
        let signed_in = Session {
            via: Some(Via::Key { id: "key_1".into() }),
            ..session
        };
        let text = serde_json::to_string(&signed_in).unwrap();
        assert!(text.contains(r#""via":{"kind":"key","id":"key_1"}"#), "{text}");
        assert_eq!(serde_json::from_str::<Session>(&text).unwrap(), signed_in);
    }
}
