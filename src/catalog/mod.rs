//! The catalogue: tenants, API keys, plans, event types and every
//! subscription (the operator's TOML ones and those stored through the API).

pub mod store;
