//! # hookd: webhook delivery daemon
//!
//! (The tour of the modules is written as they land.)

pub mod config;
pub mod deliver;
pub mod ingest;
pub mod queue;
pub mod sign;
