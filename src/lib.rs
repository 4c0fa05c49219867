//! # hookd: webhook delivery daemon
//!
//! (The tour of the modules is written as they land.)

pub mod config;
pub mod ingest;
pub mod plugin;
pub mod queue;
