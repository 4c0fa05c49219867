//! # hookd-plugin-sdk: a hookd plugin is one function
//!
//! A hookd plugin is a WebAssembly component implementing the
//! `hookd:plugin/transformer` world (`wit/plugin.wit` in hookd's
//! repository). This crate hides the bindings: implement [`Plugin`] and
//! call [`export!`].
//!
//! ```ignore
//! use hookd_plugin_sdk::{export, Config, Error, Event, Plugin, Verdict};
//!
//! struct OnlyBig;
//!
//! impl Plugin for OnlyBig {
//!     fn transform(event: Event, config: &Config) -> Result<Verdict, Error> {
//!         let min: f64 = config.parse_or("min_amount", 0.0)?;
//!         let body = event.json()?;
//!         match body["data"]["amount"].as_f64() {
//!             Some(amount) if amount >= min => Ok(Verdict::unchanged()),
//!             _ => Ok(Verdict::drop(format!("amount under {min}"))),
//!         }
//!     }
//! }
//!
//! export!(OnlyBig);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2` in a crate of
//! `crate-type = ["cdylib"]`; the `.wasm` it produces is the component hookd
//! loads.
//!
//! What a plugin may rely on: global state (a `static`, a `thread_local!`)
//! survives between calls of one warm instance, so caching work derived from
//! the configuration is worthwhile; hookd may start a fresh instance at any
//! time (always, with `fresh_instance = true`). There is no clock, file,
//! network or environment: the event carries its own timestamp.

// The bindings name this crate by its public path, from inside it too.
extern crate self as hookd_plugin_sdk;

use std::fmt;
use std::str::FromStr;

pub use serde_json::{self, json, Value};

/// The generated bindings of the `hookd:plugin/transformer` world.
///
/// Not needed to write a plugin; here for the [`export!`] macro and for
/// authors who want the raw WIT types.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "transformer",
        pub_export_macro: true,
        export_macro_name: "export_transformer",
        default_bindings_module: "hookd_plugin_sdk::bindings",
        runtime_path: "hookd_plugin_sdk::__private::wit_bindgen::rt",
    });
}

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    use crate::bindings::hookd::plugin::types as wit;

    /// Converts the WIT values, runs the plugin, converts the result back.
    pub fn run<P: crate::Plugin>(
        event: wit::Event,
        config: Vec<(String, String)>,
    ) -> Result<wit::Verdict, wit::PluginError> {
        let event = crate::Event {
            id: event.id,
            event_type: event.type_,
            timestamp: event.timestamp,
            body: event.body,
            headers: event.headers,
        };
        let config = crate::Config::new(config);
        match P::transform(event, &config) {
            Ok(crate::Verdict::Drop(reason)) => Ok(wit::Verdict::Drop(reason)),
            Ok(crate::Verdict::Deliver(patch)) => Ok(wit::Verdict::Deliver(wit::Patch {
                body: patch.body,
                set_headers: patch.set_headers,
                remove_headers: patch.remove_headers,
            })),
            Err(error) => Err(wit::PluginError { message: error.0 }),
        }
    }
}

/// Makes a type implementing [`Plugin`] the component's `transform` export.
///
/// Use it once per plugin crate, at the top level: `export!(MyPlugin);`.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        const _: () = {
            struct __HookdPluginExport;

            impl $crate::bindings::Guest for __HookdPluginExport {
                fn transform(
                    event: $crate::bindings::hookd::plugin::types::Event,
                    config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                ) -> ::std::result::Result<
                    $crate::bindings::hookd::plugin::types::Verdict,
                    $crate::bindings::hookd::plugin::types::PluginError,
                > {
                    $crate::__private::run::<$plugin>(event, config)
                }
            }

    $crate::bindings::export_transformer!(__HookdPluginExport with_types_in $crate::bindings);
        };
    };
}

/// What a plugin implements: one decision per delivery.
pub trait Plugin {
    /// Decides what happens to one delivery of `event`.
    ///
    /// Return [`Verdict::drop`] to skip the delivery, a [`Verdict::Deliver`]
    /// patch to send it (changed or not), or an [`Error`] to fail it.
    fn transform(event: Event, config: &Config) -> Result<Verdict, Error>;
}

/// One event about to be delivered to one subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The event id; endpoints receive it as `webhook-id`.
    pub id: String,
    /// The dotted event type, such as `coupon.redeemed`.
    pub event_type: String,
    /// When the event happened: milliseconds since the Unix epoch, UTC.
    pub timestamp: i64,
    /// The exact body hookd is about to send: `{"type", "timestamp", "data"}`.
    pub body: Vec<u8>,
    /// The headers hookd is about to send (lowercase names), before signing.
    pub headers: Vec<(String, String)>,
}

impl Event {
    /// The body parsed as JSON.
    pub fn json(&self) -> Result<Value, Error> {
        serde_json::from_slice(&self.body).map_err(|e| Error::new(format!("the event body is not JSON: {e}")))
    }

    /// The body parsed into `T`.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::new(format!("the event body does not have the expected shape: {e}")))
    }

    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The subscription's `[subscriptions.plugin.config]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// (key, value) pairs, sorted by key.
    entries: Vec<(String, String)>,
}

impl Config {
    /// Wraps (key, value) pairs.
    pub fn new(mut entries: Vec<(String, String)>) -> Config {
        entries.sort();
        Config { entries }
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| self.entries[i].1.as_str())
    }

    /// The value of `key`, or an error naming the missing key.
    pub fn require(&self, key: &str) -> Result<&str, Error> {
        self.get(key).ok_or_else(|| {
            Error::new(format!(
                "config key `{key}` is missing; set it in [subscriptions.plugin.config]"
            ))
        })
    }

    /// The value of `key` parsed as `T`; `default` if the key is not set.
    pub fn parse_or<T: FromStr>(&self, key: &str, default: T) -> Result<T, Error>
    where
        T::Err: fmt::Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(text) => text
                .trim()
                .parse()
                .map_err(|e| Error::new(format!("config key `{key}` = {text:?} is invalid: {e}"))),
        }
    }

    /// Every (key, value) pair, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The whole configuration as (key, value) pairs, sorted by key.
    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }
}

/// What to do with the delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Do not deliver, for the reason given.
    Drop(String),
    /// Deliver, with these changes.
    Deliver(Patch),
}

impl Verdict {
    /// Skip the delivery; `reason` is recorded with it.
    pub fn drop(reason: impl Into<String>) -> Verdict {
        Verdict::Drop(reason.into())
    }

    /// Deliver as is.
    pub fn unchanged() -> Verdict {
        Verdict::Deliver(Patch::default())
    }

    /// Deliver `body` instead of the original body.
    pub fn body(body: impl Into<Vec<u8>>) -> Verdict {
        Verdict::Deliver(Patch::default().body(body))
    }

    /// Deliver `value`, serialized as JSON, instead of the original body.
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Verdict, Error> {
        Ok(Verdict::Deliver(Patch::default().json(value)?))
    }
}

/// Changes to the outgoing request; the default changes nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Patch {
    /// The new body; `None` keeps the original.
    pub body: Option<Vec<u8>>,
    /// Headers to set (hookd refuses the ones it owns, such as `webhook-*`).
    pub set_headers: Vec<(String, String)>,
    /// Headers to remove.
    pub remove_headers: Vec<String>,
}

impl Patch {
    /// Replaces the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Patch {
        self.body = Some(body.into());
        self
    }

    /// Replaces the body with `value` serialized as JSON.
    pub fn json<T: serde::Serialize + ?Sized>(self, value: &T) -> Result<Patch, Error> {
        let body = serde_json::to_vec(value).map_err(|e| Error::new(format!("cannot serialize the new body: {e}")))?;
        Ok(self.body(body))
    }

    /// Sets header `name` to `value`.
    pub fn set_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Patch {
        self.set_headers.push((name.into(), value.into()));
        self
    }

    /// Removes header `name`.
    pub fn remove_header(mut self, name: impl Into<String>) -> Patch {
        self.remove_headers.push(name.into());
        self
    }
}

impl From<Patch> for Verdict {
    fn from(patch: Patch) -> Verdict {
        Verdict::Deliver(patch)
    }
}

/// A plugin's failure: the delivery fails with this message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    /// An error with `message`, for the operator reading hookd's log.
    pub fn new(message: impl Into<String>) -> Error {
        Error(message.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for Error {
    fn from(message: String) -> Error {
        Error(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Error {
        Error(message.to_owned())
    }
}

impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Error {
        Error(format!("JSON: {error}"))
    }
}

/// Writing to hookd's log (rate-limited by hookd, tagged with the
/// subscription and the event id).
pub mod log {
    use crate::bindings::hookd::plugin::log::{log, Level};

    /// Logs at trace level.
    pub fn trace(message: &str) {
        log(Level::Trace, message);
    }

    /// Logs at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }

    /// Logs at info level.
    pub fn info(message: &str) {
        log(Level::Info, message);
    }

    /// Logs at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }

    /// Logs at error level.
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

/// JSON helpers for plugins that edit the body in place.
pub mod path {
    use serde_json::Value;

    /// The value at a dotted path (`customer.email`), if present. Array
    /// elements are addressed by index (`items.0.sku`).
    pub fn get<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
        path.split('.').try_fold(value, |v, key| match v {
            Value::Object(map) => map.get(key),
            Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        })
    }

    /// The value at a dotted path, mutably, if present.
    pub fn get_mut<'a>(value: &'a mut Value, path: &str) -> Option<&'a mut Value> {
        path.split('.').try_fold(value, |v, key| match v {
            Value::Object(map) => map.get_mut(key),
            Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
            _ => None,
        })
    }

    /// Removes the value at a dotted path; returns it if it was present.
    pub fn remove(value: &mut Value, path: &str) -> Option<Value> {
        let (parent, last) = match path.rsplit_once('.') {
            Some((parent, last)) => (get_mut(value, parent)?, last),
            None => (value, path),
        };
        match parent {
            Value::Object(map) => map.remove(last),
            Value::Array(items) => {
                let i = last.parse::<usize>().ok().filter(|&i| i < items.len())?;
                Some(items.remove(i))
            }
            _ => None,
        }
    }
}
