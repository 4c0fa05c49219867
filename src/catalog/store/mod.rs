//! Where the runtime catalogue lives: tenants, API keys, stored
//! subscriptions and event types, shared by every process using the same
//! backend.
//!
//! The store knows records, not their meaning: each is a [`Kind`], an id
//! and an opaque body (the catalogue's JSON). Every applied change bumps
//! one version number, so a process polls [`CatalogStore::version`] (one
//! cheap read) and reloads the whole catalogue ([`CatalogStore::load`])
//! only when it moved. Two backends implement it with the same semantics,
//! checked by `tests/catalog_conformance.rs`:
//!
//! - [`redis::RedisCatalog`]: one hash of records and a version counter
//!   under one hash tag, so one Lua script applies a change atomically on a
//!   single Redis or a Redis Cluster;
//! - [`embedded::EmbeddedCatalog`]: `catalog.redb` beside the embedded
//!   queue, for one process.
//!
//! Key use times ([`CatalogStore::record_uses`]) are kept apart from the
//! records and do not bump the version: a key used on every request must
//! not make every process reload the catalogue. So are the console's
//! sessions and sign-in links ([`CatalogStore::put_session`]): short-lived
//! entries with an expiry, shared by every process so that a browser may
//! land on any of them.

pub mod embedded;
pub mod redis;

use crate::model::Millis;

/// A catalogue store failure.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// Redis refused or could not be reached.
    #[error("catalogue in redis: {0}")]
    Redis(String),
    /// The embedded store failed.
    #[error("catalogue store: {0}")]
    Store(String),
    /// The embedded store's file is open in another process.
    #[error("{} is in use by another hookd process: stop it, or point queue.data_dir elsewhere", path.display())]
    InUse { path: std::path::PathBuf },
    /// A [`Write::Create`] found its record already there: nothing of the
    /// call was applied.
    #[error("{kind} `{id}` already exists")]
    Exists { kind: Kind, id: String },
    /// The caller asked for something the store cannot keep as given.
    #[error("invalid catalogue write: {0}")]
    Invalid(String),
    /// A [`Write::Expect`] found its record otherwise: nothing of the call
    /// was applied.
    #[error("{kind} `{id}` changed meanwhile")]
    Changed { kind: Kind, id: String },
}

/// What a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A tenant (id: its [`crate::model::TenantId`]).
    Tenant,
    /// An API key made through the API (id: `key_…`; the body holds its
    /// hash, never the key).
    Key,
    /// A subscription made through the API (id: `sub_…`).
    Subscription,
    /// An event type of the catalogue (id: its dotted name).
    EventType,
    /// A tenant's revision of its subscriptions (id: the tenant's id; the
    /// body: a decimal count), bumped by every creation of one of them, so
    /// that a creation checked against the plan's `max_subscriptions` is
    /// applied only if no other was made meanwhile, by any process.
    Revision,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; 5] = [
        Kind::Tenant,
        Kind::Key,
        Kind::Subscription,
        Kind::EventType,
        Kind::Revision,
    ];

    /// The kind's stable name, as stored (`tenant`, `key`, `subscription`,
    /// `event_type`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tenant => "tenant",
            Kind::Key => "key",
            Kind::Subscription => "subscription",
            Kind::EventType => "event_type",
            Kind::Revision => "revision",
        }
    }

    /// The kind named `name` (as [`Kind::as_str`] writes it).
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest record id accepted, in bytes.
pub const MAX_ID: usize = 200;

/// One stored record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// What it is.
    pub kind: Kind,
    /// Unique within its kind: 1 to [`MAX_ID`] bytes, no `/` or whitespace.
    pub id: String,
    /// The catalogue's encoding of it (JSON), kept byte for byte.
    pub body: Vec<u8>,
}

/// Everything stored, as of one version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contents {
    /// The version these records are at; 0 for a store never written.
    pub version: u64,
    /// Every record, sorted by (kind, id).
    pub records: Vec<Record>,
}

/// One change of a [`CatalogStore::apply`] call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// Adds a record; if one of that kind and id exists, the whole call is
    /// refused with [`Error::Exists`] and nothing changes.
    Create(Record),
    /// Adds or replaces a record.
    Put(Record),
    /// Removes a record if it exists.
    Delete {
        /// Its kind.
        kind: Kind,
        /// Its id.
        id: String,
    },
    /// Writes nothing, but refuses the whole call with [`Error::Changed`]
    /// unless the record is stored with exactly `body` (`None`: absent),
    /// as the store holds it before the call: a compare-and-set, so a
    /// change made from what a process read is not applied over a change
    /// it has not seen.
    Expect {
        /// Its kind.
        kind: Kind,
        /// Its id.
        id: String,
        /// The body it must have; `None`: it must not exist.
        body: Option<Vec<u8>>,
    },
}

impl Write {
    /// The kind and id written.
    pub fn target(&self) -> (Kind, &str) {
        match self {
            Write::Create(r) | Write::Put(r) => (r.kind, &r.id),
            Write::Delete { kind, id } | Write::Expect { kind, id, .. } => (*kind, id),
        }
    }

    /// Checks the id: 1 to [`MAX_ID`] bytes, no `/` or whitespace.
    pub fn check(&self) -> Result<(), Error> {
        let (kind, id) = self.target();
        if id.is_empty() || id.len() > MAX_ID || id.contains('/') || id.chars().any(char::is_whitespace) {
            return Err(Error::Invalid(format!(
                "{kind} id `{id}` must be 1 to {MAX_ID} bytes without `/` or whitespace"
            )));
        }
        Ok(())
    }
}

/// A catalogue backend. Every method is safe to call from many tasks and,
/// for shared backends, many processes.
#[async_trait::async_trait]
pub trait CatalogStore: Send + Sync + 'static {
    /// The current version: 0 for a store never written, then one more
    /// with every [`CatalogStore::apply`] that changed something (or that
    /// was asked to, however many writes it held).
    async fn version(&self) -> Result<u64, Error>;

    /// Every record and the version they are at, read consistently (no
    /// change half applied).
    async fn load(&self) -> Result<Contents, Error>;

    /// Applies `writes` in order, atomically: all of them or, if any is
    /// refused ([`Write::check`], [`Error::Exists`], [`Error::Changed`]),
    /// none. Returns the new
    /// version. An empty call changes nothing and returns the version.
    async fn apply(&self, writes: &[Write]) -> Result<u64, Error>;

    /// Records when keys were last used: each `(key id, time)` keeps the
    /// later of the time stored and the one given. Not versioned.
    async fn record_uses(&self, uses: &[(String, Millis)]) -> Result<(), Error>;

    /// The last use of every key that has one, by key id. Uses of deleted
    /// keys may linger; callers look up the keys they have.
    async fn uses(&self) -> Result<Vec<(String, Millis)>, Error>;

    /// Keeps a session (or a one-time link) under `id` until `expires_at`,
    /// replacing one of the same id. `id` is a digest of what the browser
    /// holds, never the secret itself. Not versioned.
    async fn put_session(&self, id: &str, body: &[u8], expires_at: Millis) -> Result<(), Error>;

    /// The session `id`, unless it is gone or expired by `now`.
    async fn session(&self, id: &str, now: Millis) -> Result<Option<Vec<u8>>, Error>;

    /// The session `id` (unless gone or expired by `now`), removed in the
    /// same step: of two callers taking the same id, at most one gets it.
    /// How one-time links are spent.
    async fn take_session(&self, id: &str, now: Millis) -> Result<Option<Vec<u8>>, Error>;

    /// Removes the session `id`, if there is one.
    async fn delete_session(&self, id: &str) -> Result<(), Error>;

    /// The sessions whose id starts with `prefix`, live at `now`: (id,
    /// body) pairs, soonest to expire first, at most `limit`. What an
    /// operator lists to end them.
    async fn live_sessions(&self, prefix: &str, now: Millis, limit: usize) -> Result<Vec<(String, Vec<u8>)>, Error>;
}

/// A stored session: when it expires, then its body. Both backends keep
/// this encoding, so an expiry is checked where the session is read.
pub(crate) fn encode_session(body: &[u8], expires_at: Millis) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&expires_at.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The body of a stored session still valid at `now`; `None` if it
/// expired (or is too short to be one).
pub(crate) fn live_session(stored: &[u8], now: Millis) -> Option<Vec<u8>> {
    let (at, body) = stored.split_at_checked(8)?;
    let expires_at = Millis::from_be_bytes(at.try_into().ok()?);
    (now < expires_at).then(|| body.to_vec())
}
