//! Redis backend (being written).
/// Placeholder until the backend lands.
pub struct RedisQueue;
