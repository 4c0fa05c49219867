//! Delivery activity per minute: attempts by outcome and a latency
//! histogram, kept as aggregates while attempts are recorded, so an
//! overview of the last hour or day never scans the log.
//!
//! Every [`History::record`](super::History::record) call folds its
//! [`Entry::Attempted`] entries into per-minute deltas here (`deltas`),
//! in memory, then each backend adds each delta to its stored minute once
//! per batch: the Redis backend with `HINCRBY`s in one pipeline (keys that
//! expire after [`RETENTION`]), the embedded one in a redb table of the
//! same write transaction (old minutes removed by
//! [`History::trim`](super::History::trim)). A minute is kept for two
//! kinds of view:
//!
//! - the **all** view: every attempt, and how many of them each tenant
//!   owns ([`TenantVolume`]);
//! - a **tenant's** view: the attempts to the subscriptions it owns, by the
//!   same rule as its delivery log ([`crate::model::owner_of`]: the
//!   event's tenant for a subscription made through the API, nobody for
//!   the operator's). Attempts to the operator's subscriptions are in the
//!   all view only, under no tenant.
//!
//! An attempt counts in the minute it started ([`AttemptRecord::started_at`]),
//! as succeeded if the endpoint answered 2xx and failed otherwise (another
//! status, a timeout, a connection error…), and in the latency bucket of
//! its [`AttemptRecord::duration_ms`]: the first of [`LATENCY_BOUNDS_MS`]
//! it does not exceed, or the last, open bucket past 30 s. Quantiles
//! ([`AttemptCounts::quantile_ms`]) are read from the histogram, so they
//! are bucket upper bounds: a p99 of 200 means 99% of the attempts took
//! at most 200 ms (and more than the bound before, 100 ms, for some).
//!
//! The aggregates count attempts as they were recorded: trimming the log
//! (by `history.max_age` or `max_count`) does not lower them; they are
//! kept for [`RETENTION`] whatever the log's retention.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{AttemptRecord, Entry};
use crate::model::{owner_of, Millis, TenantId};

/// One minute, in ms: the width of an aggregate.
pub const MINUTE_MS: Millis = 60_000;

/// Most minutes one [`History::activity`](super::History::activity) call
/// reads: a day and the minute under way. A longer window keeps its latest
/// minutes.
pub const MAX_MINUTES: usize = 24 * 60 + 1;

/// How long a minute's aggregates are kept: a bit over a day, so a day's
/// window is always whole.
pub const RETENTION: Duration = Duration::from_secs(25 * 3600);

/// Upper bounds (inclusive, ms) of the latency buckets but the last, which
/// holds every attempt that took longer than the last bound.
pub const LATENCY_BOUNDS_MS: [u64; 14] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000];

/// Number of latency buckets: one per bound, and the open one past them.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// The start of the minute `at` falls in.
pub fn minute_of(at: Millis) -> Millis {
    at.div_euclid(MINUTE_MS) * MINUTE_MS
}

/// The latency bucket of an attempt that took `duration_ms`.
pub fn latency_bucket(duration_ms: u64) -> usize {
    LATENCY_BOUNDS_MS
        .iter()
        .position(|&bound| duration_ms <= bound)
        .unwrap_or(LATENCY_BOUNDS_MS.len())
}

/// Attempts of one minute (or of a window, summed): how many succeeded,
/// how many failed, and how long they took.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptCounts {
    /// Attempts the endpoint answered with a 2xx.
    pub succeeded: u64,
    /// Every other attempt: another status, a timeout, a connection or
    /// TLS error, a blocked address.
    pub failed: u64,
    /// Attempts per latency bucket: `latency[i]` took at most
    /// `LATENCY_BOUNDS_MS[i]` ms (and more than the bound before); the last
    /// took more than 30 s.
    pub latency: [u64; LATENCY_BUCKETS],
}

impl AttemptCounts {
    /// Every attempt counted.
    pub fn attempts(&self) -> u64 {
        self.succeeded + self.failed
    }

    /// Counts one attempt.
    pub fn count(&mut self, attempt: &AttemptRecord) {
        if attempt.status.is_some_and(|s| (200..300).contains(&s)) {
            self.succeeded += 1;
        } else {
            self.failed += 1;
        }
        self.latency[latency_bucket(attempt.duration_ms)] += 1;
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &AttemptCounts) {
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        for (mine, theirs) in self.latency.iter_mut().zip(other.latency) {
            *mine += theirs;
        }
    }

    /// The `percent` quantile of the latency, as the upper bound of the
    /// bucket it falls in: the least bound at or under which at least
    /// `percent`% of the attempts fall. One in the open last bucket reads
    /// as its lower bound, 30,000 (meaning 30 s or more). `None` without
    /// attempts.
    pub fn quantile_ms(&self, percent: u64) -> Option<u64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        // The rank of the quantile among the attempts, from 1.
        let rank = (total * percent.min(100)).div_ceil(100).max(1);
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(LATENCY_BOUNDS_MS[i.min(LATENCY_BOUNDS_MS.len() - 1)]);
            }
        }
        LATENCY_BOUNDS_MS.last().copied()
    }

    /// The median latency, a bucket bound ([`AttemptCounts::quantile_ms`]).
    pub fn p50_ms(&self) -> Option<u64> {
        self.quantile_ms(50)
    }

    /// The 99th percentile latency, a bucket bound
    /// ([`AttemptCounts::quantile_ms`]).
    pub fn p99_ms(&self) -> Option<u64> {
        self.quantile_ms(99)
    }
}

/// One minute of a view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinuteActivity {
    /// The minute's start.
    pub at: Millis,
    /// Its attempts (all zero for a quiet minute).
    pub counts: AttemptCounts,
}

/// How many attempts went to the subscriptions a tenant owns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantVolume {
    /// The tenant.
    pub tenant: TenantId,
    /// Its attempts in the window.
    pub attempts: u64,
}

/// The activity of one view over a window of whole minutes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// The start of the first minute.
    pub from: Millis,
    /// The end of the last minute (exclusive).
    pub to: Millis,
    /// Every minute of the window, oldest first, quiet ones included.
    pub minutes: Vec<MinuteActivity>,
    /// In the all view, the tenants with attempts in the window, most
    /// attempts first (ties by id); empty in a tenant's view.
    pub tenants: Vec<TenantVolume>,
}

impl Activity {
    /// The window's attempts, summed over its minutes.
    pub fn totals(&self) -> AttemptCounts {
        let mut totals = AttemptCounts::default();
        for minute in &self.minutes {
            totals.add(&minute.counts);
        }
        totals
    }
}

/// What one minute of one view holds, as the backends store it and as
/// [`deltas`] computes the change one batch makes to it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MinuteRecord {
    /// The minute's attempts.
    #[serde(flatten)]
    pub counts: AttemptCounts,
    /// In the all view, attempts per owning tenant; empty otherwise.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tenants: BTreeMap<TenantId, u64>,
}

impl MinuteRecord {
    /// Adds `other` to this minute.
    pub fn add(&mut self, other: &MinuteRecord) {
        self.counts.add(&other.counts);
        for (tenant, n) in &other.tenants {
            *self.tenants.entry(tenant.clone()).or_default() += n;
        }
    }
}

/// Which aggregate a [`MinuteRecord`] is: a minute of a view.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct MinuteKey {
    /// The minute's start.
    pub minute: Millis,
    /// `None`: the all view; a tenant: that tenant's view.
    pub view: Option<TenantId>,
}

/// What `entries` add to the aggregates: for each minute and view their
/// attempts touch, the sum of those attempts (see the module docs). The
/// one place both backends compute it; each then writes each delta once.
pub(crate) fn deltas<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> HashMap<MinuteKey, MinuteRecord> {
    let mut out: HashMap<MinuteKey, MinuteRecord> = HashMap::new();
    for entry in entries {
        let Entry::Attempted { attempt, .. } = entry else {
            continue;
        };
        let minute = minute_of(attempt.started_at);
        let owner = owner_of(&attempt.subscription, attempt.tenant.as_ref());
        let all = out.entry(MinuteKey { minute, view: None }).or_default();
        all.counts.count(attempt);
        if let Some(owner) = owner {
            *all.tenants.entry(owner.clone()).or_default() += 1;
            out.entry(MinuteKey {
                minute,
                view: Some(owner.clone()),
            })
            .or_default()
            .counts
            .count(attempt);
        }
    }
    out
}

/// The minutes a window `[from, to)` covers: every minute start from the
/// minute of `from` up to, not including, `to`; at most [`MAX_MINUTES`],
/// the latest ones.
pub(crate) fn window_minutes(from: Millis, to: Millis) -> Vec<Millis> {
    let first = minute_of(from);
    if to <= first {
        return Vec::new();
    }
    let count = usize::try_from((to - first - 1) / MINUTE_MS + 1)
        .unwrap_or(usize::MAX)
        .min(MAX_MINUTES);
    let last = minute_of(to - 1);
    (0..count).rev().map(|back| last - MINUTE_MS * back as Millis).collect()
}

/// The activity of a view from the stored records of `minutes` (one per
/// minute, `None` for a quiet one): every minute in order, and the tenants'
/// volumes summed over the window, most first.
pub(crate) fn assemble(minutes: &[Millis], records: Vec<Option<MinuteRecord>>) -> Activity {
    let mut tenants: BTreeMap<TenantId, u64> = BTreeMap::new();
    let mut out = Vec::with_capacity(minutes.len());
    for (&at, record) in minutes.iter().zip(records) {
        let record = record.unwrap_or_default();
        for (tenant, n) in record.tenants {
            *tenants.entry(tenant).or_default() += n;
        }
        out.push(MinuteActivity {
            at,
            counts: record.counts,
        });
    }
    let mut tenants: Vec<TenantVolume> = tenants
        .into_iter()
        .filter(|(_, attempts)| *attempts > 0)
        .map(|(tenant, attempts)| TenantVolume { tenant, attempts })
        .collect();
    tenants.sort_by(|a, b| b.attempts.cmp(&a.attempts).then_with(|| a.tenant.cmp(&b.tenant)));
    let from = minutes.first().copied().unwrap_or_default();
    let to = minutes.last().map_or(from, |last| last + MINUTE_MS);
    Activity {
        from,
        to,
        minutes: out,
        tenants,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SubscriptionName;
    use crate::history::DeliveryState;
    use crate::ingest::EventId;
    use crate::queue::DeliveryId;

    fn attempt(subscription: &str, tenant: Option<&str>, at: Millis, ms: u64, status: Option<u16>) -> Entry {
        Entry::Attempted {
            attempt: AttemptRecord {
                delivery_id: DeliveryId::new(0),
                event_id: EventId::parse("evt_1").unwrap(),
                event_type: "coupon.redeemed".into(),
                subscription: SubscriptionName::parse(subscription).unwrap(),
                attempt: 1,
                started_at: at,
                duration_ms: ms,
                request_headers: Vec::new(),
                status,
                response_headers: Vec::new(),
                response_body: String::new(),
                error_kind: None,
                error: None,
                next_attempt_at: None,
                tenant: tenant.map(|t| TenantId::parse(t).unwrap()),
            },
            state: DeliveryState::Delivered,
        }
    }

    #[test]
    fn durations_fall_in_the_first_bucket_they_do_not_exceed() {
        for (ms, bucket) in [
            (0, 0),
            (1, 0),
            (2, 1),
            (3, 2),
            (100, 6),
            (101, 7),
            (30_000, 13),
            (30_001, 14),
            (u64::MAX, 14),
        ] {
            assert_eq!(latency_bucket(ms), bucket, "{ms} ms");
        }
    }

    #[test]
    fn quantiles_are_bucket_bounds() {
        let mut counts = AttemptCounts::default();
        assert_eq!((counts.p50_ms(), counts.p99_ms()), (None, None), "no attempts");
        counts.latency[latency_bucket(25)] = 98; // ≤ 50 ms
        counts.latency[latency_bucket(150)] = 1; // ≤ 200 ms
        counts.latency[latency_bucket(3_000)] = 1; // ≤ 5 s
        assert_eq!(counts.p50_ms(), Some(50));
        assert_eq!(counts.p99_ms(), Some(200), "the 99th of 100 is in the 200 ms bucket");
        assert_eq!(counts.quantile_ms(100), Some(5_000));
        let mut one = AttemptCounts::default();
        one.latency[latency_bucket(60_000)] = 1;
        assert_eq!(one.p50_ms(), Some(30_000), "past the last bound: reads as it");
    }

    #[test]
    fn deltas_sum_per_minute_and_owner() {
        let m = 1_700_000_040_000;
        let entries = [
            attempt("sub_a", Some("acme"), m + 1, 3, Some(200)),
            attempt("sub_a", Some("acme"), m + 59_999, 700, Some(500)),
            attempt("crm", Some("acme"), m + 5, 3, None), // the operator's
            attempt("sub_g", Some("globex"), m + MINUTE_MS, 3, Some(204)),
            Entry::State {
                id: DeliveryId::new(0),
                state: DeliveryState::Parked,
                at: m,
                note: None,
            },
        ];
        let d = deltas(&entries);
        assert_eq!(d.len(), 4, "{d:?}");
        let key = |minute, view: Option<&str>| MinuteKey {
            minute,
            view: view.map(|t| TenantId::parse(t).unwrap()),
        };
        let all = &d[&key(m, None)];
        assert_eq!((all.counts.succeeded, all.counts.failed), (1, 2));
        assert_eq!(all.counts.latency[latency_bucket(3)], 2);
        assert_eq!(all.counts.latency[latency_bucket(700)], 1);
        assert_eq!(all.tenants.len(), 1);
        assert_eq!(
            all.tenants[&TenantId::parse("acme").unwrap()],
            2,
            "the operator's is nobody's"
        );
        let acme = &d[&key(m, Some("acme"))];
        assert_eq!((acme.counts.succeeded, acme.counts.failed), (1, 1));
        assert!(acme.tenants.is_empty());
        assert_eq!(d[&key(m + MINUTE_MS, Some("globex"))].counts.succeeded, 1);
        assert_eq!(d[&key(m + MINUTE_MS, None)].counts.attempts(), 1);
    }

    #[test]
    fn windows_are_whole_minutes_and_at_most_a_day() {
        let m = 1_700_000_040_000;
        assert_eq!(window_minutes(m + 5, m + MINUTE_MS), vec![m]);
        assert_eq!(window_minutes(m, m + MINUTE_MS + 1), vec![m, m + MINUTE_MS]);
        assert!(window_minutes(m, m).is_empty());
        assert!(window_minutes(m + 1, m).is_empty());
        let day = window_minutes(m - 24 * 60 * MINUTE_MS, m + 1);
        assert_eq!(day.len(), MAX_MINUTES);
        assert_eq!(day.last(), Some(&m));
        let week = window_minutes(m - 7 * 24 * 60 * MINUTE_MS, m + 1);
        assert_eq!(week, day, "the latest minutes of a longer window");
        let activity = assemble(&day, vec![None; day.len()]);
        assert_eq!((activity.from, activity.to), (day[0], m + MINUTE_MS));
    }

    #[test]
    fn records_read_back_from_json_and_add() {
        let m = 1_700_000_040_000;
        let d = deltas(&[attempt("sub_a", Some("acme"), m, 3, Some(200))]);
        let all = d[&MinuteKey { minute: m, view: None }].clone();
        let json = serde_json::to_vec(&all).unwrap();
        let mut back: MinuteRecord = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, all);
        back.add(&all);
        assert_eq!(back.counts.succeeded, 2);
        assert_eq!(back.tenants[&TenantId::parse("acme").unwrap()], 2);
    }
}
