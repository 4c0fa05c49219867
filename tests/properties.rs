//! Property tests of what hookd reads from outside: events (parsed from
//! JSON), signatures (signed and verified) and configuration (validated).
//! Random inputs never panic; valid ones round-trip; every refusal names
//! what is wrong.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use hookd::config::{Config, Secret};
use hookd::ingest::{parse_event, Error as IngestError, DEFAULT_MAX_DEPTH};
use hookd::sign::{
    Signer, SigningKey, Verifier, HEADER_WEBHOOK_ID, HEADER_WEBHOOK_SIGNATURE, HEADER_WEBHOOK_TIMESTAMP,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{json, Value};

/// The fields an invalid event may be refused for.
const EVENT_FIELDS: [&str; 5] = ["body", "type", "id", "data", "tenant"];

/// 256 cases a test, unless `PROPTEST_CASES` says; failures kept beside
/// this file and tried first from then on.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(256),
        ..ProptestConfig::default()
    }
}

/// A dotted event type (never under `hookd.`).
fn event_type() -> impl Strategy<Value = String> {
    prop::collection::vec("[A-Za-z0-9_-]{1,10}", 1..=4)
        .prop_map(|segments| segments.join("."))
        .prop_filter("not one of hookd's own types", |t| !t.starts_with("hookd."))
}

/// Any JSON value, nesting at most a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        // Few digits, so the float parses back exactly.
        (-100_000_000i64..100_000_000).prop_map(|n| Value::from(n as f64 / 100.0)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON object, as `data` must be.
fn json_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map("[a-z_]{1,8}", json_value(), 0..6).prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// A time with millisecond precision, between 1970 and 2100.
fn timestamp() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..4_102_444_800_000).prop_map(|ms| DateTime::from_timestamp_millis(ms).expect("in range"))
}

/// A valid event as producers send it, and its parts.
#[derive(Clone, Debug)]
struct ValidEvent {
    event_type: String,
    id: Option<String>,
    data: Value,
    timestamp: Option<DateTime<Utc>>,
    tenant: Option<String>,
}

impl ValidEvent {
    fn json(&self) -> Value {
        let mut object = json!({"type": self.event_type, "data": self.data});
        if let Some(id) = &self.id {
            object["id"] = json!(id);
        }
        if let Some(at) = &self.timestamp {
            object["timestamp"] = json!(at.to_rfc3339_opts(SecondsFormat::Millis, true));
        }
        if let Some(tenant) = &self.tenant {
            object["tenant"] = json!(tenant);
        }
        object
    }
}

fn valid_event() -> impl Strategy<Value = ValidEvent> {
    (
        event_type(),
        prop::option::of("[A-Za-z0-9_.:~-]{1,40}"),
        json_object(),
        prop::option::of(timestamp()),
        prop::option::of("[a-z0-9][a-z0-9_-]{0,20}"),
    )
        .prop_map(|(event_type, id, data, timestamp, tenant)| ValidEvent {
            event_type,
            id,
            data,
            timestamp,
            tenant,
        })
}

/// The field an event's refusal names, checking that its message names it too.
fn refused_field(
    result: Result<hookd::ingest::Event, IngestError>,
    input: &str,
) -> Result<&'static str, TestCaseError> {
    match result {
        Ok(event) => Err(TestCaseError::fail(format!("accepted {input:?} as {event:?}"))),
        Err(IngestError::Invalid { field, problem }) => {
            let message = IngestError::Invalid { field, problem }.to_string();
            prop_assert!(EVENT_FIELDS.contains(&field), "unknown field {field}: {message}");
            prop_assert!(message.contains(&format!("`{field}`")), "{message}");
            Ok(field)
        }
        Err(other) => Err(TestCaseError::fail(format!(
            "{input:?}: not an invalid-event error: {other}"
        ))),
    }
}

/// One way to spoil a valid event, and the field its refusal must name.
#[derive(Clone, Debug)]
enum Spoil {
    /// `type` missing, or not a dotted type.
    Type(Option<Value>),
    /// `id` not an event id.
    Id(Value),
    /// `data` missing or not an object.
    Data(Option<Value>),
    /// `data` nesting deeper than the limit.
    TooDeep(usize),
    /// `tenant` not a tenant id.
    Tenant(Value),
    /// `timestamp` not RFC 3339: the body does not parse.
    Timestamp(String),
    /// A field events do not have: the body does not parse.
    Unknown(String),
}

fn spoil() -> impl Strategy<Value = Spoil> {
    prop_oneof![
        prop_oneof![
            Just(None),
            Just(Some(json!(""))),
            Just(Some(json!("hookd.delivery.dead"))),
            "[a-z]{1,5}\\.\\.[a-z]{1,5}".prop_map(|t| Some(json!(t))),
            "[a-z]{1,5}[ !/@#é][a-z]{0,5}".prop_map(|t| Some(json!(t))),
            "[a-z]{129,140}".prop_map(|t| Some(json!(t))),
            any::<i32>().prop_map(|n| Some(json!(n))),
        ]
        .prop_map(Spoil::Type),
        prop_oneof![
            Just(json!("")),
            "[a-z]{0,5}[ /@#é\\\\][a-z]{0,5}".prop_map(Value::String),
            "[a-z]{129,140}".prop_map(Value::String),
        ]
        .prop_map(Spoil::Id),
        prop_oneof![
            Just(None),
            Just(Some(json!([]))),
            Just(Some(json!(null))),
            any::<i64>().prop_map(|n| Some(json!(n))),
            ".{0,10}".prop_map(|s| Some(json!(s))),
            prop::collection::vec(json_value(), 0..4).prop_map(|v| Some(Value::Array(v))),
        ]
        .prop_map(Spoil::Data),
        (DEFAULT_MAX_DEPTH + 1..DEFAULT_MAX_DEPTH + 50).prop_map(Spoil::TooDeep),
        prop_oneof![
            Just(json!("")),
            "[A-Z][a-z]{0,5}".prop_map(Value::String),
            "[a-z]{0,3}[ .@A-Z][a-z]{0,3}".prop_map(Value::String),
            "[_-][a-z]{0,5}".prop_map(Value::String),
            "[a-z]{64,70}".prop_map(Value::String),
        ]
        .prop_map(Spoil::Tenant),
        prop_oneof!["[0-9]{1,10}", "[a-z ]{0,12}", Just("2024-13-01T00:00:00Z".to_string())].prop_map(Spoil::Timestamp),
        "(colour|kind|payload|Type|ID|extra_[a-z]{1,4})".prop_map(Spoil::Unknown),
    ]
}

/// `data` nesting `depth` objects deep.
fn nested(depth: usize) -> Value {
    (1..depth).fold(json!({}), |inner, _| json!({ "a": inner }))
}

proptest! {
    #![proptest_config(config())]

    /// A valid event parses to its parts, and its body (what endpoints
    /// receive) parses back to the same type, time and data.
    #[test]
    fn valid_events_parse_and_their_bodies_round_trip(event in valid_event()) {
        let text = serde_json::to_vec(&event.json()).unwrap();
        let parsed = match parse_event(&text, DEFAULT_MAX_DEPTH) {
            Ok(parsed) => parsed,
            Err(e) => return Err(TestCaseError::fail(format!("{event:?} refused: {e}"))),
        };
        prop_assert_eq!(&parsed.event_type, &event.event_type);
        match &event.id {
            Some(id) => prop_assert_eq!(parsed.id.as_str(), id.as_str()),
            None => prop_assert!(parsed.id.as_str().starts_with("evt_"), "generated id {}", parsed.id),
        }
        let data: Value = serde_json::from_str(parsed.data.get()).unwrap();
        prop_assert_eq!(&data, &event.data, "data is kept as sent");
        if let Some(at) = event.timestamp {
            prop_assert_eq!(parsed.occurred_at, at);
        }
        prop_assert_eq!(parsed.tenant.as_ref().map(|t| t.as_str()), event.tenant.as_deref());

        let body = parsed.body();
        let again = match parse_event(&body, DEFAULT_MAX_DEPTH) {
            Ok(again) => again,
            Err(e) => return Err(TestCaseError::fail(format!("the body {:?} does not parse back: {e}", String::from_utf8_lossy(&body)))),
        };
        prop_assert_eq!(&again.event_type, &event.event_type);
        let to_the_ms = DateTime::from_timestamp_millis(parsed.occurred_at.timestamp_millis());
        prop_assert_eq!(Some(again.occurred_at), to_the_ms, "the body keeps the time to the ms");
        let data_again: Value = serde_json::from_str(again.data.get()).unwrap();
        prop_assert_eq!(&data_again, &event.data);
    }

    /// Random bytes never panic the parser, and are refused naming a field.
    #[test]
    fn garbage_is_refused_naming_the_field(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Err(e) = parse_event(&bytes, DEFAULT_MAX_DEPTH) {
            let IngestError::Invalid { field, .. } = &e else {
                return Err(TestCaseError::fail(format!("not an invalid-event error: {e}")));
            };
            prop_assert!(EVENT_FIELDS.contains(field), "{e}");
            prop_assert!(e.to_string().contains(&format!("`{field}`")), "{e}");
        }
    }

    /// JSON that is almost an event (random objects with the event's keys)
    /// never panics the parser: accepted, or refused naming a field.
    #[test]
    fn random_objects_never_panic(
        object in prop::collection::btree_map(
            prop_oneof![Just("type".to_string()), Just("id".to_string()), Just("data".to_string()),
                        Just("timestamp".to_string()), Just("tenant".to_string()), "[a-z]{1,6}"],
            json_value(),
            0..6,
        ),
        max_depth in 1usize..8,
    ) {
        let text = serde_json::to_vec(&object).unwrap();
        if let Err(e) = parse_event(&text, max_depth) {
            let IngestError::Invalid { field, .. } = &e else {
                return Err(TestCaseError::fail(format!("not an invalid-event error: {e}")));
            };
            prop_assert!(EVENT_FIELDS.contains(field), "{e}");
        }
    }

    /// A valid event spoiled in one field is refused naming that field.
    #[test]
    fn a_spoiled_field_is_named(event in valid_event(), spoil in spoil()) {
        let mut object = event.json();
        let map = object.as_object_mut().unwrap();
        let (want, problem) = match &spoil {
            Spoil::Type(None) => { map.remove("type"); ("type", "missing") }
            Spoil::Type(Some(v)) => { map.insert("type".into(), v.clone()); (if v.is_string() { "type" } else { "body" }, "") }
            Spoil::Id(v) => { map.insert("id".into(), v.clone()); ("id", "") }
            Spoil::Data(None) => { map.remove("data"); ("data", "missing") }
            Spoil::Data(Some(v)) => { map.insert("data".into(), v.clone()); ("data", "object") }
            Spoil::TooDeep(depth) => { map.insert("data".into(), nested(*depth)); ("data", "levels deep") }
            Spoil::Tenant(v) => { map.insert("tenant".into(), v.clone()); ("tenant", "") }
            Spoil::Timestamp(t) => { map.insert("timestamp".into(), json!(t)); ("body", "") }
            Spoil::Unknown(key) => { map.insert(key.clone(), json!(1)); ("body", key.as_str()) }
        };
        let text = serde_json::to_string(&object).unwrap();
        let result = parse_event(text.as_bytes(), DEFAULT_MAX_DEPTH);
        let message = result.as_ref().err().map(ToString::to_string).unwrap_or_default();
        let field = refused_field(result, &text)?;
        prop_assert_eq!(field, want, "{}: {}", text, message);
        prop_assert!(message.contains(problem), "{} should say {:?}: {}", text, problem, message);
    }

    /// `data` nesting up to the limit is accepted, one level more refused.
    #[test]
    fn the_depth_limit_is_exact(max_depth in 1usize..40, depth in 1usize..50) {
        let text = serde_json::to_vec(&json!({"type": "a.b", "data": nested(depth)})).unwrap();
        let result = parse_event(&text, max_depth);
        if depth <= max_depth {
            prop_assert!(result.is_ok(), "{depth} deep, limit {max_depth}: {:?}", result.err());
        } else {
            let field = refused_field(result, &format!("{depth} deep"))?;
            prop_assert_eq!(field, "data");
        }
    }
}

/// A random signing secret, and the key a receiver verifies it with.
#[derive(Clone, Debug)]
struct Keys {
    /// `whsec_…` or `whsk_…`.
    secret: String,
    /// What the receiver trusts: the same `whsec_`, or the `whpk_` public
    /// key (or the `whsk_` itself, of which a verifier keeps the public half).
    verify_with: String,
}

fn keys() -> impl Strategy<Value = Keys> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 24..=64).prop_map(|bytes| {
            let secret = format!("whsec_{}", BASE64.encode(bytes));
            Keys {
                verify_with: secret.clone(),
                secret,
            }
        }),
        (any::<[u8; 32]>(), any::<bool>(), any::<bool>()).prop_map(|(seed, pair, public)| {
            let seed_only = format!("whsk_{}", BASE64.encode(seed));
            let key = SigningKey::parse(&seed_only).expect("any 32 bytes are an Ed25519 seed");
            let whpk = key.public_key().expect("an Ed25519 key has a public key");
            let secret = if pair {
                let mut both = seed.to_vec();
                both.extend(BASE64.decode(&whpk["whpk_".len()..]).unwrap());
                format!("whsk_{}", BASE64.encode(both))
            } else {
                seed_only
            };
            Keys {
                verify_with: if public { whpk } else { secret.clone() },
                secret,
            }
        }),
    ]
}

/// The headers of one signed request, if every value is a valid header.
fn headers(id: &[u8], timestamp: &[u8], signature: &[u8]) -> Option<http::HeaderMap> {
    let mut map = http::HeaderMap::new();
    for (name, value) in [
        (HEADER_WEBHOOK_ID, id),
        (HEADER_WEBHOOK_TIMESTAMP, timestamp),
        (HEADER_WEBHOOK_SIGNATURE, signature),
    ] {
        map.insert(name, http::HeaderValue::from_bytes(value).ok()?);
    }
    Some(map)
}

/// What a tampering changes.
#[derive(Clone, Copy, Debug)]
enum Part {
    Body,
    Id,
    Timestamp,
    Signature,
}

proptest! {
    #![proptest_config(config())]

    /// Whatever mix of secrets signs, a verifier trusting any one of them
    /// (or its public key) accepts, within the tolerance either way.
    #[test]
    fn signatures_verify(
        secrets in prop::collection::vec(keys(), 1..=3),
        trusted in any::<prop::sample::Index>(),
        id in "[A-Za-z0-9_-]{1,40}",
        timestamp in 0i64..4_102_444_800,
        skew in -300i64..=300,
        body in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let signer = Signer::new(&secrets.iter().map(|k| Secret::new(k.secret.clone())).collect::<Vec<_>>()).unwrap();
        let signature = signer.sign(&id, timestamp, &body);
        prop_assert_eq!(signature.split(' ').count(), secrets.len());
        for (sig, keys) in signature.split(' ').zip(&secrets) {
            let scheme = if keys.secret.starts_with("whsec_") { "v1," } else { "v1a," };
            prop_assert!(sig.starts_with(scheme), "{} signs {}", keys.secret, sig);
        }
        let keys = trusted.get(&secrets);
        let verifier = Verifier::new(&[keys.verify_with.as_str()]).unwrap();
        let map = headers(id.as_bytes(), timestamp.to_string().as_bytes(), signature.as_bytes()).unwrap();
        prop_assert_eq!(verifier.verify_at(&map, &body, timestamp + skew), Ok(()));
    }

    /// Changing any one byte of the body, the id, the timestamp or the
    /// signature of a request signed with one secret makes it fail.
    #[test]
    fn tampering_with_any_byte_fails(
        keys in keys(),
        id in "[A-Za-z0-9_-]{1,40}",
        timestamp in 1i64..4_102_444_800,
        body in prop::collection::vec(any::<u8>(), 1..200),
        part in prop_oneof![Just(Part::Body), Just(Part::Id), Just(Part::Timestamp), Just(Part::Signature)],
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let signer = Signer::new(&[Secret::new(keys.secret.clone())]).unwrap();
        let verifier = Verifier::new(&[keys.verify_with.as_str()]).unwrap();
        let signature = signer.sign(&id, timestamp, &body);
        let (mut body, mut id, mut ts, mut sig) =
            (body, id.into_bytes(), timestamp.to_string().into_bytes(), signature.into_bytes());
        let original = headers(&id, &ts, &sig).unwrap();
        prop_assert_eq!(verifier.verify_at(&original, &body, timestamp), Ok(()));
        let target = match part {
            Part::Body => &mut body,
            Part::Id => &mut id,
            Part::Timestamp => &mut ts,
            Part::Signature => &mut sig,
        };
        let i = at.index(target.len());
        target[i] ^= flip;
        // A byte no header may hold cannot be sent at all.
        if let Some(map) = headers(&id, &ts, &sig) {
            let result = verifier.verify_at(&map, &body, timestamp);
            prop_assert!(result.is_err(), "{:?} byte {} ^ {:#04x} still verifies", part, i, flip);
        }
    }
}

/// A bounded configuration field, the TOML of a value for it, and whether
/// the documented bounds accept that value.
#[derive(Clone, Debug)]
struct Field {
    /// `section.key`.
    key: &'static str,
    /// The value as TOML.
    value: String,
    /// Whether the bounds accept it.
    valid: bool,
}

fn field() -> impl Strategy<Value = Field> {
    let int = |key: &'static str, range: std::ops::RangeInclusive<i64>, ok: fn(i64) -> bool| {
        range.prop_map(move |n| Field {
            key,
            value: n.to_string(),
            valid: ok(n),
        })
    };
    let duration = |key: &'static str, ok: fn(Duration) -> bool| {
        (0u64..10_000, prop_oneof![Just("ms"), Just("s"), Just("m"), Just("h")]).prop_map(move |(n, unit)| {
            let d = match unit {
                "ms" => Duration::from_millis(n),
                "s" => Duration::from_secs(n),
                "m" => Duration::from_secs(60 * n),
                _ => Duration::from_secs(3600 * n),
            };
            Field {
                key,
                value: format!("\"{n}{unit}\""),
                valid: ok(d),
            }
        })
    };
    prop_oneof![
        int("queue.shards", -5..=300, |n| (1..=256).contains(&n)),
        int("queue.pool_size", -2..=40, |n| n >= 1),
        int("ingest.max_body_bytes", -2..=200, |n| n >= 64),
        int("ingest.max_depth", -2..=120, |n| (1..=100).contains(&n)),
        int("ingest.max_batch", -2..=5, |n| n >= 1),
        int("delivery.max_in_flight", -2..=5, |n| n >= 1),
        duration("queue.lease", |d| d >= Duration::from_secs(1)),
        duration("queue.poll_interval", |d| !d.is_zero() && d <= Duration::from_secs(10)),
        duration("queue.dead_retention", |d| d.is_zero()
            || d >= Duration::from_secs(3600)),
        (-3.0f64..8.0).prop_map(|x| Field {
            key: "delivery.backoff_multiplier",
            value: format!("{x:?}"),
            valid: x >= 1.0,
        }),
        prop_oneof![Just("nan"), Just("inf"), Just("-inf")].prop_map(|x| Field {
            key: "delivery.backoff_multiplier",
            value: x.to_string(),
            valid: false,
        }),
    ]
}

/// `key = value` in its section.
fn toml_of(key: &str, value: &str) -> String {
    let (section, name) = key.split_once('.').expect("section.key");
    format!("[{section}]\n{name} = {value}\n")
}

proptest! {
    #![proptest_config(config())]

    /// A bounded field loads when its bounds accept the value and is
    /// refused naming the key otherwise.
    #[test]
    fn bounded_fields_load_or_name_the_key(field in field()) {
        let text = toml_of(field.key, &field.value);
        match Config::from_toml(&text) {
            Ok(_) => prop_assert!(field.valid, "{} loaded, outside its bounds", text),
            Err(e) => {
                prop_assert!(!field.valid, "{} refused: {}", text, e);
                prop_assert!(e.to_string().contains(field.key), "{} refused without naming {}: {}", text, field.key, e);
            }
        }
    }

    /// A value of the wrong kind is refused naming the key, never a panic.
    #[test]
    fn values_of_the_wrong_kind_name_the_key(
        field in field(),
        value in prop_oneof![
            "\"[a-z0-9 ]{0,8}\"",
            Just("true".to_string()),
            Just("[1, 2]".to_string()),
            Just("{ a = 1 }".to_string()),
            Just("99999999999999999999".to_string()),
            Just("1979-05-27T07:32:00Z".to_string()),
        ],
    ) {
        let text = toml_of(field.key, &value);
        if let Err(e) = Config::from_toml(&text) {
            let message = e.to_string();
            // TOML that does not parse at all (an integer beyond i64) is
            // refused by line and column, quoting the line.
            let name = field.key.split_once('.').unwrap().1;
            let quoted = message.contains("TOML parse error") && message.contains(&format!("{name} = "));
            prop_assert!(message.contains(field.key) || quoted, "{} refused without naming {}: {}", text, field.key, message);
        }
    }

    /// Random text never panics the loader.
    #[test]
    fn random_text_never_panics(text in "(\\[[a-z]{1,8}\\]\n)?([a-z_]{1,12} = .{0,12}\n){0,3}") {
        let _ = Config::from_toml(&text);
    }
}
