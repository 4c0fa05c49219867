//! The API's one JSON time format: RFC 3339 in UTC with milliseconds
//! (`2026-11-23T10:00:00.000Z`), for every admin route's answer. Reading
//! takes any RFC 3339 time, so clients holding answers of earlier versions
//! (which sometimes left out the fraction or wrote nanoseconds) still
//! decode them.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serializer};

use super::Millis;

/// `at` as the API writes it.
pub fn format(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A [`Millis`] time as the API writes it; `None` if out of range.
pub fn format_ms(ms: Millis) -> Option<String> {
    DateTime::from_timestamp_millis(ms).map(|t| format(&t))
}

/// `#[serde(with = "crate::model::time::rfc3339")]` on a `DateTime<Utc>`.
pub mod rfc3339 {
    use super::*;

    /// Writes [`super::format`].
    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(at))
    }

    /// Reads any RFC 3339 time.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        DateTime::<Utc>::deserialize(d)
    }
}

/// `#[serde(with = "crate::model::time::rfc3339_option")]` on an
/// `Option<DateTime<Utc>>` (null when absent).
pub mod rfc3339_option {
    use super::*;

    /// Writes [`super::format`], or null.
    pub fn serialize<S: Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => s.serialize_str(&format(at)),
            None => s.serialize_none(),
        }
    }

    /// Reads any RFC 3339 time, or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        Option::<DateTime<Utc>>::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct T {
        #[serde(with = "rfc3339")]
        at: DateTime<Utc>,
        #[serde(with = "rfc3339_option")]
        maybe: Option<DateTime<Utc>>,
    }

    #[test]
    fn times_are_written_with_milliseconds_and_read_in_any_rfc3339() {
        let whole = DateTime::from_timestamp_millis(1_795_000_000_000).unwrap();
        let t = T { at: whole, maybe: None };
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"at": "2026-11-18T11:06:40.000Z", "maybe": null})
        );
        assert_eq!(serde_json::from_value::<T>(json).unwrap(), t);
        let nanos = whole + chrono::Duration::nanoseconds(123_456_789);
        assert_eq!(format(&nanos), "2026-11-18T11:06:40.123Z");
        assert_eq!(format_ms(1_795_000_000_007).unwrap(), "2026-11-18T11:06:40.007Z");
        // What earlier versions wrote still reads.
        let old: T =
            serde_json::from_str(r#"{"at": "2026-11-18T11:06:40Z", "maybe": "2026-11-18T12:06:40.123456789+01:00"}"#)
                .unwrap();
        assert_eq!(old.at, whole);
        assert_eq!(old.maybe, Some(nanos));
    }
}
