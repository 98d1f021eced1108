//! Which changes have been applied: a horizon below which every change is settled, and
//! the changes seen above it, kept until the gaps below them are settled too.
//!
//! Sequence values are handed out when a transaction writes, not when it commits, so a
//! reader can see change 7 committed while change 6 is still in flight. A reader that
//! jumped to 7 would never read 6. So the horizon only moves over a gap once the gap
//! cannot fill any more: on PostgreSQL, when every transaction that was running when the
//! change above the gap was first seen has ended (the snapshot's `xmin` has passed that
//! read's `xmax`, so whatever of the gap committed was visible to the read that settles
//! it); on SQLite at once, since its one writer commits in sequence order.

use std::collections::BTreeMap;

use crate::owner::OwnerKind;

/// The owner a change names: its kind and id.
pub(crate) type Owner = (OwnerKind, String);

/// Reads an owner from the change table: `None` (every owner) for a NULL id, as a
/// TRUNCATE writes, and for a kind this crate does not know, so that nothing is missed.
pub(crate) fn owner_of(kind: &str, owner_id: Option<String>) -> Option<Owner> {
    Some((OwnerKind::parse(kind)?, owner_id?))
}

/// One read of the change table: the changes after a sequence value, in order, and the
/// snapshot they were read in.
///
/// No `Debug`: its rows hold raw user ids, which no log line may show.
#[derive(Default)]
pub(crate) struct Batch {
    /// `(seq, owner)`; `None` stands for every owner.
    pub(crate) rows: Vec<(i64, Option<Owner>)>,
    /// Every transaction below this one had ended when the rows were read.
    pub(crate) xmin: i64,
    /// Every transaction that could still commit a change below these rows is below this.
    pub(crate) xmax: i64,
}

/// What a tracker does to the cache.
pub(crate) trait Invalidate {
    /// Forgets one user's keys.
    fn user(&self, user_id: &str);
    /// Forgets the keys of a team or of the platform.
    fn owner(&self, kind: OwnerKind, owner_id: &str);
    /// Forgets every user's keys.
    fn all(&self);
}

/// Beyond this many changes held above an unsettled gap (a transaction that stays open
/// for very long), the tracker gives up exactness: it forgets every user and starts over
/// from the newest change.
const MAX_HELD: usize = 100_000;

#[derive(Debug)]
pub(crate) struct Tracker {
    /// Every change at or below this has been applied, or can no longer appear.
    horizon: i64,
    /// Changes applied above the horizon, with the `xmax` of the read that first saw
    /// each: a gap below one settles once a read's `xmin` reaches it.
    held: BTreeMap<i64, i64>,
    /// The highest change applied.
    newest: i64,
}

impl Tracker {
    /// A tracker that treats everything at or below `horizon` as applied.
    pub(crate) fn new(horizon: i64) -> Self {
        Self {
            horizon,
            held: BTreeMap::new(),
            newest: horizon,
        }
    }

    /// Where the next read starts: after this.
    pub(crate) fn horizon(&self) -> i64 {
        self.horizon
    }

    /// The highest change applied so far.
    pub(crate) fn newest(&self) -> i64 {
        self.newest
    }

    /// Applies the rows not applied before, returning how many it applied.
    pub(crate) fn apply(&mut self, batch: &Batch, sink: &impl Invalidate) -> usize {
        let mut applied = 0;
        for (seq, owner) in &batch.rows {
            if *seq <= self.horizon || self.held.contains_key(seq) {
                continue;
            }
            match owner {
                Some((OwnerKind::User, user_id)) => sink.user(user_id),
                Some((kind, owner_id)) => sink.owner(*kind, owner_id),
                None => sink.all(),
            }
            self.held.insert(*seq, batch.xmax);
            self.newest = self.newest.max(*seq);
            applied += 1;
        }
        if self.held.len() > MAX_HELD {
            tracing::warn!(
                held = self.held.len(),
                "a change stayed uncommitted for very long; forgetting every cached user"
            );
            sink.all();
            self.horizon = self.newest;
            self.held.clear();
        }
        applied
    }

    /// Moves the horizon as far as the changes held and `settled` allow: over each change
    /// next in sequence, and over a gap once `settled(xmax of the change above it)`.
    ///
    /// `covered` is the highest sequence value the read that decides `settled` covered:
    /// a gap above it was not looked at by that read, so it is not settled by it.
    pub(crate) fn advance(&mut self, covered: i64, settled: impl Fn(i64) -> bool) {
        while let Some((&seq, &xmax)) = self.held.first_key_value() {
            let next_in_order = seq == self.horizon + 1;
            if !(next_in_order || (seq <= covered && settled(xmax))) {
                break;
            }
            self.horizon = seq;
            self.held.pop_first();
        }
        if self.held.is_empty() && self.newest > self.horizon {
            self.horizon = self.newest;
        }
    }

    /// How many changes are held above an unsettled gap.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[derive(Default)]
    struct Seen(RefCell<Vec<String>>);

    impl Invalidate for Seen {
        fn user(&self, user_id: &str) {
            self.0.borrow_mut().push(user_id.to_owned());
        }
        fn owner(&self, kind: OwnerKind, owner_id: &str) {
            self.0.borrow_mut().push(format!("{kind}:{owner_id}"));
        }
        fn all(&self) {
            self.0.borrow_mut().push("*".to_owned());
        }
    }

    /// Rows named `"u"` (user `u`), `"team:t"` (team `t`) or `"*"` (every owner).
    fn batch(rows: &[(i64, &str)], xmin: i64, xmax: i64) -> Batch {
        Batch {
            rows: rows
                .iter()
                .map(|(s, u)| {
                    let owner = match u.split_once(':') {
                        _ if *u == "*" => None,
                        Some((kind, id)) => owner_of(kind, Some(id.to_owned())),
                        None => owner_of("user", Some((*u).to_owned())),
                    };
                    (*s, owner)
                })
                .collect(),
            xmin,
            xmax,
        }
    }

    /// A PostgreSQL-like read: a gap settles once `xmin` reaches the holding read's xmax.
    fn read(t: &mut Tracker, b: &Batch, sink: &Seen) -> usize {
        let n = t.apply(b, sink);
        let xmin = b.xmin;
        t.advance(i64::MAX, |xmax| xmin >= xmax);
        n
    }

    #[test]
    fn changes_in_order_move_the_horizon() {
        let (mut t, sink) = (Tracker::new(0), Seen::default());
        assert_eq!(
            read(&mut t, &batch(&[(1, "a"), (2, "b")], 10, 11), &sink),
            2
        );
        assert_eq!(t.horizon(), 2);
        assert_eq!(*sink.0.borrow(), ["a", "b"]);
        // Read again from the horizon: nothing new, nothing applied twice.
        assert_eq!(read(&mut t, &batch(&[], 12, 12), &sink), 0);
        assert_eq!(sink.0.borrow().len(), 2);
    }

    #[test]
    fn a_lower_sequence_committed_later_is_still_applied() {
        let (mut t, sink) = (Tracker::new(0), Seen::default());
        // Change 2 commits first; change 1 belongs to a transaction still running
        // (xid 5, below the read's xmax 9, and so not settled while xmin <= 5).
        read(&mut t, &batch(&[(2, "b")], 5, 9), &sink);
        assert_eq!(t.horizon(), 0, "the horizon waits below the gap");
        // Later reads start after the horizon, so they see 1 once it commits.
        read(&mut t, &batch(&[(2, "b")], 5, 10), &sink);
        assert_eq!(t.horizon(), 0);
        read(&mut t, &batch(&[(1, "a"), (2, "b")], 11, 11), &sink);
        assert_eq!(t.horizon(), 2);
        assert_eq!(*sink.0.borrow(), ["b", "a"], "each change applied once");
    }

    #[test]
    fn a_gap_whose_transaction_rolled_back_settles() {
        let (mut t, sink) = (Tracker::new(0), Seen::default());
        read(&mut t, &batch(&[(2, "b"), (3, "c")], 5, 9), &sink);
        assert_eq!(t.horizon(), 0);
        // Every transaction below 9 has ended and 1 never showed: it rolled back.
        read(&mut t, &batch(&[(2, "b"), (3, "c")], 9, 12), &sink);
        assert_eq!(t.horizon(), 3);
        assert_eq!(t.held(), 0);
    }

    #[test]
    fn a_gap_above_what_the_read_covered_does_not_settle() {
        let (mut t, sink) = (Tracker::new(0), Seen::default());
        t.apply(&batch(&[(5, "e")], 1, 3), &sink);
        // A read that covered only up to 4 cannot say the gap 1..=4 is empty.
        t.advance(4, |_| true);
        assert_eq!(t.horizon(), 0);
        t.advance(5, |_| true);
        assert_eq!(t.horizon(), 5);
    }

    #[test]
    fn a_change_names_its_owner_kind() {
        let (mut t, sink) = (Tracker::new(0), Seen::default());
        read(
            &mut t,
            &batch(
                &[(1, "acme"), (2, "team:acme"), (3, "platform:platform")],
                1,
                1,
            ),
            &sink,
        );
        assert_eq!(*sink.0.borrow(), ["acme", "team:acme", "platform:platform"]);
        // A kind this crate does not know forgets everything rather than nothing.
        assert_eq!(owner_of("robot", Some("r".to_owned())), None);
        assert_eq!(owner_of("team", None), None);
    }

    #[test]
    fn every_user_is_forgotten_for_a_truncate() {
        let (mut t, sink) = (Tracker::new(0), Seen::default());
        read(&mut t, &batch(&[(1, "*")], 1, 1), &sink);
        assert_eq!(*sink.0.borrow(), ["*"]);
    }

    #[test]
    fn too_many_held_changes_forget_everyone_and_start_over() {
        let (mut t, sink) = (Tracker::new(0), Seen::default());
        let rows: Vec<(i64, Option<Owner>)> =
            (2..=(MAX_HELD as i64 + 2)).map(|s| (s, None)).collect();
        t.apply(
            &Batch {
                rows,
                xmin: 1,
                xmax: 2,
            },
            &sink,
        );
        assert_eq!(t.held(), 0);
        assert_eq!(t.horizon(), MAX_HELD as i64 + 2);
    }
}
