//! jq: runs a jq program from the config over each event (with the jaq
//! interpreter), so most reshaping and filtering needs no compiler.
//!
//! Config:
//! - `filter`: the jq program (required). Its input is the body hookd is
//!   about to send, `{"type", "timestamp", "data"}`; `$event` holds
//!   `{"id", "type", "timestamp"}` (timestamp in milliseconds).
//!
//! The program's outputs decide the verdict:
//! - no output (`select(...)` said no, or `empty`): the delivery is dropped;
//! - one output: it becomes the new body (as JSON);
//! - more than one output, or a jq error: the delivery fails with the
//!   message.
//!
//! Example: `filter = 'select(.data.amount >= 10) | {id: .data.coupon, total: .data.amount}'`.
//!
//! The program is compiled once per instance and kept while the `filter`
//! text stays the same; a program that does not compile fails every call
//! with the compiler's message.

use std::cell::RefCell;
use std::fmt::Write as _;

use hookd_plugin_sdk::{export, json, Config, Error, Event, Plugin, Verdict};
use jaq_core::data::JustLut;
use jaq_core::load::{Arena, File, Loader};
use jaq_core::{unwrap_valr, Compiler, Ctx, Vars};
use jaq_json::Val;

/// A compiled program.
type Filter = jaq_core::Filter<JustLut<Val>>;

/// The last program compiled, keyed by its text (or its compile error).
struct Compiled {
    /// The `filter` config value this entry was made from.
    code: String,
    /// The program, or why it does not compile.
    filter: Result<Filter, String>,
}

thread_local! {
    /// One entry: a subscription's config never changes between calls.
    static CACHE: RefCell<Option<Compiled>> = const { RefCell::new(None) };
}

/// The byte offset of `part` (a slice of `code`) in `code`.
fn offset(code: &str, part: &str) -> usize {
    (part.as_ptr() as usize)
        .saturating_sub(code.as_ptr() as usize)
        .min(code.len())
}

/// `at offset N (near "...")` for an error located at `part` of `code`.
fn location(code: &str, part: &str) -> String {
    let at = offset(code, part);
    let near: String = code[at..].chars().take(20).collect();
    if near.is_empty() {
        format!("at the end (offset {at})")
    } else {
        format!("at offset {at} (near {near:?})")
    }
}

/// Parses and compiles `code`, with messages a config author can act on.
fn compile(code: &str) -> Result<Filter, String> {
    let defs = jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs());
    let funs = jaq_core::funs().chain(jaq_std::funs()).chain(jaq_json::funs());
    let arena = Arena::default();
    let modules = Loader::new(defs)
        .load(&arena, File { code, path: () })
        .map_err(|errors| {
            let mut msg = String::from("the jq filter does not parse:");
            for (_, error) in errors {
                match error {
                    jaq_core::load::Error::Io(items) => {
                        for (path, why) in items {
                            let _ = write!(msg, " cannot load module {path:?}: {why};");
                        }
                    }
                    jaq_core::load::Error::Lex(items) => {
                        for (expect, part) in items {
                            let _ = write!(msg, " expected {} {};", expect.as_str(), location(code, part));
                        }
                    }
                    jaq_core::load::Error::Parse(items) => {
                        for (expect, part) in items {
                            let _ = write!(msg, " expected {} {};", expect.as_str(), location(code, part));
                        }
                    }
                }
            }
            msg.trim_end_matches(';').to_owned()
        })?;
    Compiler::default()
        .with_funs(funs)
        .with_global_vars(["$event"])
        .compile(modules)
        .map_err(|errors| {
            let mut msg = String::from("the jq filter does not compile:");
            for (_, items) in errors {
                for (name, undefined) in items {
                    let _ = write!(
                        msg,
                        " undefined {} `{name}` {};",
                        undefined.as_str(),
                        location(code, name)
                    );
                }
            }
            msg.trim_end_matches(';').to_owned()
        })
}

/// Parses JSON text into a jq value.
fn to_val(json: &[u8], what: &str) -> Result<Val, Error> {
    jaq_json::read::parse_single(json).map_err(|e| Error::new(format!("{what} is not JSON: {e}")))
}

struct Jq;

impl Plugin for Jq {
    fn transform(event: Event, config: &Config) -> Result<Verdict, Error> {
        let code = config.require("filter")?;
        let input = to_val(&event.body, "the event body")?;
        let meta = json!({"id": event.id, "type": event.event_type, "timestamp": event.timestamp});
        let meta = to_val(meta.to_string().as_bytes(), "the event metadata")?;
        CACHE.with_borrow_mut(|cache| {
            if cache.as_ref().is_none_or(|c| c.code != code) {
                *cache = Some(Compiled {
                    code: code.to_owned(),
                    filter: compile(code),
                });
            }
            let filter = match cache.as_ref().map(|c| &c.filter) {
                Some(Ok(filter)) => filter,
                Some(Err(message)) => return Err(Error::new(message.clone())),
                None => return Err(Error::new("the jq filter cache is empty")),
            };
            let ctx = Ctx::<JustLut<Val>>::new(&filter.lut, Vars::new([meta]));
            let mut outputs = filter.id.run((ctx, input)).map(unwrap_valr);
            let first = match outputs.next() {
                None => return Ok(Verdict::drop("the jq filter produced no output")),
                Some(Err(e)) => return Err(Error::new(format!("the jq filter failed: {e}"))),
                Some(Ok(value)) => value,
            };
            match outputs.next() {
                None => Ok(Verdict::body(first.to_string())),
                Some(Err(e)) => Err(Error::new(format!("the jq filter failed: {e}"))),
                Some(Ok(_)) => Err(Error::new(
                    "the jq filter produced more than one output; wrap it in [...] to send an array",
                )),
            }
        })
    }
}

export!(Jq);
