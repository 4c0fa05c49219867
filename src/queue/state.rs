//! Subscription state and rate buckets: the store beside the queue.
//!
//! Every backend of [`super::Queue`] is also a [`StateStore`], keeping in
//! the same Redis or redb file whether each subscription is enabled, its
//! failure health, and the token buckets of rate limits (a subscription's,
//! and a tenant's ingest bucket), so every process sharing the backend sees
//! the same ones and they survive restarts. Checked by the same conformance
//! suite as the queue.

use serde::{Deserialize, Serialize};

use super::{rate, Error, Millis};
use crate::model::SubscriptionName;

/// Subscription state, health and rate buckets. Every method is safe to
/// call from many tasks and, for shared backends, many processes.
#[async_trait::async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// The stored state of `subscription`; the default (enabled, nothing
    /// recorded) if none is stored.
    async fn subscription_state(&self, subscription: &SubscriptionName) -> Result<SubscriptionState, Error>;

    /// Every subscription with a stored state (one that was enabled,
    /// disabled or had health recorded), sorted by name.
    async fn subscription_states(&self) -> Result<Vec<(SubscriptionName, SubscriptionState)>, Error>;

    /// Enables or disables `subscription` at `now` with `reason`
    /// ([`SubscriptionState::set_enabled`]): enabling resets its failure
    /// counters; asking for the state it is already in changes nothing.
    /// Returns whether it changed.
    async fn set_enabled(
        &self,
        subscription: &SubscriptionName,
        enabled: bool,
        reason: Option<String>,
        now: Millis,
    ) -> Result<bool, Error>;

    /// Applies settle batches' outcomes to their subscriptions' health,
    /// atomically per subscription ([`HealthUpdate`]), in order, and returns
    /// each subscription's state right after its update (one entry per
    /// update). Refuses the whole call, changing nothing, if an update is
    /// inconsistent ([`HealthUpdate::check`]).
    async fn record_health(
        &self,
        updates: &[HealthUpdate],
    ) -> Result<Vec<(SubscriptionName, SubscriptionState)>, Error>;

    /// Takes up to `want` request tokens from `subscription`'s rate limit
    /// `limit` at `now` ([`rate::take`]), from one bucket shared by every
    /// process using this backend. The first `granted` of the caller's
    /// deliveries may be sent; the rest wait until `next_at`. A changed
    /// limit applies to the bucket as it stands.
    async fn take_tokens(
        &self,
        subscription: &SubscriptionName,
        limit: &crate::config::RateLimit,
        want: u32,
        now: Millis,
    ) -> Result<rate::Tokens, Error>;
}

/// Whether a subscription is enabled, and how its endpoint has been doing.
///
/// One per subscription, stored in the queue backend so that every process
/// sharing it sees the same and it survives restarts. The queue only
/// records; deciding to disable (thresholds) is the dispatcher's job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionState {
    /// Whether deliveries are sent; false parks them.
    pub enabled: bool,
    /// Why it was last disabled or enabled, if a reason was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When `enabled` last changed (0: never).
    pub since: Millis,
    /// Failed attempts since the last success (reset by a success, and on
    /// enabling).
    pub consecutive_failures: u64,
    /// When the current run of failures started, if one is under way
    /// (cleared by a success, and on enabling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<Millis>,
    /// When an attempt last succeeded, if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<Millis>,
    /// When an attempt last failed, if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_at: Option<Millis>,
}

impl Default for SubscriptionState {
    /// Enabled, never changed, no attempts recorded.
    fn default() -> SubscriptionState {
        SubscriptionState {
            enabled: true,
            reason: None,
            since: 0,
            consecutive_failures: 0,
            failing_since: None,
            last_success_at: None,
            last_failure_at: None,
        }
    }
}

impl SubscriptionState {
    /// Enables or disables at `now`, keeping `reason`; enabling also resets
    /// the failure counters. A state that already is `enabled` is left as it
    /// is (reason and `since` included). Returns whether it changed.
    ///
    /// The rule both backends apply; the Redis backend's script mirrors it.
    pub fn set_enabled(&mut self, enabled: bool, reason: Option<String>, now: Millis) -> bool {
        if self.enabled == enabled {
            return false;
        }
        self.enabled = enabled;
        self.reason = reason;
        self.since = now;
        if enabled {
            self.consecutive_failures = 0;
            self.failing_since = None;
        }
        true
    }

    /// Applies one settle batch's outcomes (see [`HealthUpdate`] for the
    /// rules). The rule both backends apply; the Redis backend's script
    /// mirrors it.
    pub fn apply(&mut self, update: &HealthUpdate) {
        if update.last_outcome_success {
            self.consecutive_failures = 0;
            self.failing_since = None;
        } else if update.failures > 0 {
            if update.successes > 0 {
                // A success earlier in the batch ended the previous run.
                self.consecutive_failures = u64::from(update.failures);
                self.failing_since = update.last_failure_at;
            } else {
                self.consecutive_failures = self.consecutive_failures.saturating_add(u64::from(update.failures));
                self.failing_since = self.failing_since.or(update.last_failure_at);
            }
        }
        self.last_success_at = self.last_success_at.max(update.last_success_at);
        self.last_failure_at = self.last_failure_at.max(update.last_failure_at);
    }
}

/// One settle batch's attempt outcomes for one subscription, for
/// [`StateStore::record_health`].
///
/// Applied atomically per subscription:
/// - the batch ended in a success (`last_outcome_success`): the run of
///   failures is over: `consecutive_failures = 0`, `failing_since = None`
///   (failures before that success don't count);
/// - it ended in a failure and held no success: `consecutive_failures +=
///   failures`, and `failing_since` is set to `last_failure_at` if no run
///   was under way;
/// - it ended in a failure after a success: a new run started within the
///   batch: `consecutive_failures = failures`, `failing_since =
///   last_failure_at`;
/// - `last_success_at` and `last_failure_at` only move forward (batches of
///   several processes may arrive out of order).
///
/// The batch's first failure time is not reported, so a run that starts in
/// a batch is dated by its last failure: early by at most one batch's span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthUpdate {
    /// Whose attempts these were.
    pub subscription: SubscriptionName,
    /// Successful attempts in the batch.
    pub successes: u32,
    /// Failed attempts in the batch; when the batch also holds a success,
    /// only those after its last success (the ones in the current run).
    pub failures: u32,
    /// Whether the batch's last attempt succeeded.
    pub last_outcome_success: bool,
    /// When the batch's last success happened; required if `successes > 0`.
    pub last_success_at: Option<Millis>,
    /// When the batch's last failure happened; required if `failures > 0`.
    pub last_failure_at: Option<Millis>,
}

impl HealthUpdate {
    /// Refuses an update whose fields contradict each other, so both
    /// backends only ever apply consistent ones.
    pub fn check(&self) -> Result<(), Error> {
        let bad = |what: &str| {
            Err(Error::Invalid(format!(
                "health update of subscription {}: {what}",
                self.subscription
            )))
        };
        if self.successes > 0 && self.last_success_at.is_none() {
            return bad("successes > 0 needs last_success_at");
        }
        if self.failures > 0 && self.last_failure_at.is_none() {
            return bad("failures > 0 needs last_failure_at");
        }
        if self.last_outcome_success && self.successes == 0 {
            return bad("last_outcome_success needs successes > 0");
        }
        if !self.last_outcome_success && self.failures == 0 && self.successes > 0 {
            return bad("a batch of only successes must set last_outcome_success");
        }
        Ok(())
    }
}
