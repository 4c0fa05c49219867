//! Fan-out's index of the subscriptions: which ones want an event of a
//! given type and tenant.
//!
//! Subscriptions are indexed by owner: an event of tenant `acme` is matched
//! against acme's own subscriptions and the operator's, never against the
//! other tenants', so fan-out costs the same whether the catalogue holds
//! ten subscriptions or ten thousand across a thousand tenants.

use std::collections::HashMap;

use crate::config::Config;
use crate::model::{EventPattern, SubscriptionName, TenantId};

/// One subscription's filter, as fan-out needs it.
struct Route {
    /// The subscription.
    name: SubscriptionName,
    /// The event types it wants.
    patterns: Vec<EventPattern>,
    /// For an operator subscription, the tenants it is limited to.
    tenants: Option<Vec<TenantId>>,
}

impl Route {
    fn wants(&self, event_type: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(event_type))
    }
}

/// Every subscription's filter: one immutable index, rebuilt with each
/// catalogue snapshot.
#[derive(Default)]
pub struct Routes {
    /// The operator's subscriptions, in config order.
    operator: Vec<Route>,
    /// Each tenant's own subscriptions.
    by_tenant: HashMap<TenantId, Vec<Route>>,
}

impl Routes {
    /// The filters of `config`'s subscriptions.
    pub fn new(config: &Config) -> Routes {
        let mut routes = Routes::default();
        for s in &config.subscriptions {
            let route = Route {
                name: s.name.clone(),
                // Validated at load: every pattern parses.
                patterns: s.events.iter().filter_map(|p| EventPattern::parse(p).ok()).collect(),
                tenants: s.tenants.clone(),
            };
            match &s.owner {
                None => routes.operator.push(route),
                Some(tenant) => routes.by_tenant.entry(tenant.clone()).or_default().push(route),
            }
        }
        routes
    }

    /// The subscriptions that want an event of `event_type` from `tenant`
    /// (or of no tenant): the operator's first, then the tenant's own.
    pub fn matching<'a>(
        &'a self,
        event_type: &'a str,
        tenant: Option<&'a TenantId>,
    ) -> impl Iterator<Item = &'a SubscriptionName> + 'a {
        let operator = self.operator.iter().filter(move |r| match (&r.tenants, tenant) {
            (None, _) => true,
            (Some(list), Some(t)) => list.contains(t),
            (Some(_), None) => false,
        });
        let own = tenant.and_then(|t| self.by_tenant.get(t)).into_iter().flatten();
        operator
            .chain(own)
            .filter(move |r| r.wants(event_type))
            .map(|r| &r.name)
    }
}
