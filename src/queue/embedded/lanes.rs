//! Lanes: what is due, per owner, so that claims let owners take turns
//! (see [`crate::queue`]): the tables, kept in step with [`super::DUE`] by
//! [`Tables::set_due`] and [`Tables::unset_due`], and the pick of a claim.

use std::collections::HashSet;

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{all_of, StoreError, Tables};
use crate::queue::Millis;

/// (lane, due ms, delivery id) for every entry of [`super::DUE`]: a lane is a
/// delivery's owner ([`super::OWNER`]), or `""` for the operator's subscriptions.
/// Claims let lanes take turns, so one tenant's backlog never holds up
/// another's deliveries. Kept in step with [`super::DUE`] by `set_due` and
/// `unset_due`, the only writers of either.
pub(super) const LANE_DUE: TableDefinition<(&str, i64, &str), ()> = TableDefinition::new("lane_due");
/// (turn ms, lane): every lane of [`LANE_DUE`] by its turn, the later of
/// its lowest due time and 1 ms after a claim last served it
/// ([`LANE_SERVED`]): a lane just served waits behind every lane with
/// something due by then.
pub(super) const LANE_HEADS: TableDefinition<(i64, &str), ()> = TableDefinition::new("lane_heads");
/// Lane → (its lowest due time, its key in [`LANE_HEADS`]).
pub(super) const LANE_HEAD: TableDefinition<&str, (i64, i64)> = TableDefinition::new("lane_head");
/// Lane → 1 ms after a claim last served it, while it holds anything.
pub(super) const LANE_SERVED: TableDefinition<&str, i64> = TableDefinition::new("lane_served");

/// What an operation did to a lane: the earliest due time among the
/// entries it removed and among those it added, and whether a claim
/// served it.
#[derive(Default)]
pub(super) struct LaneChange {
    removed: Option<Millis>,
    added: Option<Millis>,
    served: bool,
}

/// The lower of two optional times.
fn min_of(a: Option<Millis>, b: Option<Millis>) -> Option<Millis> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A delivery a claim picks: its due time, its id, and its lane if it was
/// picked from one.
pub(super) type Picked = (i64, String, Option<String>);

impl Tables<'_> {
    /// Notes that a claim at `now` served `lane`: its turn comes after
    /// every lane with something due by `now + 1`.
    pub(super) fn lane_served(&mut self, lane: &str, now: Millis) -> Result<(), StoreError> {
        self.lane_served.insert(lane, now.saturating_add(1))?;
        self.lane_changed(lane, None, None);
        if let Some(change) = self.dirty.get_mut(lane) {
            change.served = true;
        }
        Ok(())
    }

    /// Files every due delivery in its lane if none is: a store written
    /// before [`LANE_DUE`] existed (every delivery made due afterwards is
    /// filed as it is).
    pub(super) fn file_unlaned_due(&mut self) -> Result<(), StoreError> {
        if !self.lane_due.is_empty()? || self.due.is_empty()? {
            return Ok(());
        }
        let due = all_of(&self.due)?;
        for (at, id) in &due {
            let lane = self.owner_of(id)?.unwrap_or_default();
            self.lane_due.insert((lane.as_str(), *at, id.as_str()), ())?;
            self.lane_changed(&lane, None, Some(*at));
        }
        self.rehead_dirty()?;
        tracing::info!(due = due.len(), "filed the due deliveries of an older store by owner");
        Ok(())
    }

    /// Notes that `lane` lost an entry due at `removed` and gained one due
    /// at `added`, for the end of the operation.
    pub(super) fn lane_changed(&mut self, lane: &str, removed: Option<Millis>, added: Option<Millis>) {
        let change = match self.dirty.get_mut(lane) {
            Some(change) => change,
            None => self.dirty.entry(lane.to_owned()).or_default(),
        };
        change.removed = min_of(change.removed, removed);
        change.added = min_of(change.added, added);
    }

    /// Keeps `lane`'s turn in [`LANE_HEADS`] true after `change`; forgets
    /// an empty lane. Reads the lane only if its head may have moved: an
    /// entry at or before the head left, one before it came, or a claim
    /// served it.
    pub(super) fn rehead(&mut self, lane: &str, change: &LaneChange) -> Result<(), StoreError> {
        let stored = self.lane_head.get(lane)?.map(|g| g.value());
        if let Some((head, _)) = stored {
            let kept = change.removed.is_none_or(|r| r > head) && change.added.is_none_or(|a| a >= head);
            if kept && !change.served {
                return Ok(());
            }
        }
        let head = match self.lane_due.range((lane, i64::MIN, "")..)?.next() {
            Some(entry) => {
                let (key, _) = entry?;
                let (l, at, _) = key.value();
                (l == lane).then_some(at)
            }
            None => None,
        };
        let served = self.lane_served.get(lane)?.map(|g| g.value());
        let turn = head.map(|h| served.map_or(h, |s| s.max(h)));
        let old = stored.map(|(_, turn)| turn);
        if let (Some(head), Some(turn)) = (head, turn) {
            if stored != Some((head, turn)) {
                self.lane_head.insert(lane, (head, turn))?;
            }
        }
        if old == turn {
            return Ok(());
        }
        if let Some(old) = old {
            self.lane_heads.remove((old, lane))?;
        }
        match turn {
            Some(turn) => {
                self.lane_heads.insert((turn, lane), ())?;
            }
            None => {
                self.lane_head.remove(lane)?;
                self.lane_served.remove(lane)?;
            }
        }
        Ok(())
    }

    /// Makes the turn of every lane changed since true again.
    pub(super) fn rehead_dirty(&mut self) -> Result<(), StoreError> {
        for (lane, change) in std::mem::take(&mut self.dirty) {
            self.rehead(&lane, &change)?;
        }
        Ok(())
    }

    /// Makes `id` due at `due`, in [`super::DUE`] and in its lane (whose turn the
    /// end of the operation makes true).
    pub(super) fn set_due(&mut self, id: &str, due: Millis) -> Result<(), StoreError> {
        let lane = self.owner_of(id)?.unwrap_or_default();
        self.set_due_in(id, due, &lane)
    }

    /// [`Tables::set_due`] of a delivery whose lane the caller knows.
    pub(super) fn set_due_in(&mut self, id: &str, due: Millis, lane: &str) -> Result<(), StoreError> {
        let old = self.due_at.insert(id, due)?.map(|g| g.value());
        if let Some(old) = old {
            self.due.remove((old, id))?;
            self.lane_due.remove((lane, old, id))?;
        }
        self.due.insert((due, id), ())?;
        self.lane_due.insert((lane, due, id), ())?;
        self.lane_changed(lane, old, Some(due));
        Ok(())
    }

    /// Takes `id` out of [`super::DUE`] and its lane (before its owner is
    /// forgotten).
    pub(super) fn unset_due(&mut self, id: &str) -> Result<(), StoreError> {
        let lane = self.owner_of(id)?.unwrap_or_default();
        self.unset_due_in(id, &lane)
    }

    /// [`Tables::unset_due`] of a delivery whose lane the caller knows.
    pub(super) fn unset_due_in(&mut self, id: &str, lane: &str) -> Result<(), StoreError> {
        let old = self.due_at.remove(id)?.map(|g| g.value());
        if let Some(old) = old {
            self.due.remove((old, id))?;
            self.lane_due.remove((lane, old, id))?;
            self.lane_changed(lane, Some(old), None);
        }
        Ok(())
    }

    /// Up to `max` ids due at `now`, the lanes taking turns as the Redis
    /// backend's claim does (see its `pick`): of the lanes with something
    /// due (at most `max`, first turn first, ties by lane), each hands
    /// over its oldest due delivery in turn, up to `ceil(max / lanes)`
    /// each; what that leaves of `max` goes to the oldest due deliveries
    /// not picked. Also the lanes served.
    pub(super) fn pick(&self, now: Millis, max: usize) -> Result<(Vec<Picked>, Vec<String>), StoreError> {
        let end = now.saturating_add(1);
        let lanes: Vec<String> = self
            .lane_heads
            .range(..(end, ""))?
            .take(max)
            .map(|entry| entry.map(|(key, _)| key.value().1.to_owned()))
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(max);
        if !lanes.is_empty() {
            let share = max.div_ceil(lanes.len());
            let mut turns = Vec::with_capacity(lanes.len());
            for lane in &lanes {
                let items: Vec<Picked> = self
                    .lane_due
                    .range((lane.as_str(), i64::MIN, "")..(lane.as_str(), end, ""))?
                    .take(share)
                    .map(|entry| {
                        entry.map(|(key, _)| {
                            let (_, at, id) = key.value();
                            (at, id.to_owned(), Some(lane.clone()))
                        })
                    })
                    .collect::<Result<_, _>>()?;
                turns.push(items.into_iter());
            }
            'rounds: loop {
                let mut any = false;
                for items in &mut turns {
                    if out.len() == max {
                        break 'rounds;
                    }
                    if let Some(item) = items.next() {
                        out.push(item);
                        any = true;
                    }
                }
                if !any {
                    break;
                }
            }
        }
        if out.len() < max {
            let picked: HashSet<String> = out.iter().map(|(_, id, _)| id.clone()).collect();
            for entry in self.due.range(..(end, ""))? {
                if out.len() == max {
                    break;
                }
                let (key, _) = entry?;
                let (at, id) = key.value();
                if !picked.contains(id) {
                    out.push((at, id.to_owned(), None));
                }
            }
        }
        Ok((out, lanes))
    }
}
