//! The catalogue in Redis (see the parent module).

/// The catalogue in Redis.
pub struct RedisCatalog;
