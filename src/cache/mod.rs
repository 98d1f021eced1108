//! The per-user key cache: one moka cache, single-flight loads, invalidation.
//!
//! Each user's keys live in exactly one structure, a [`moka::sync::Cache`]: moka decides
//! who stays (its capacity bound with TinyLFU admission) and for how long (its
//! `time_to_live`: the TTL, plus the stale-if-error bound if any), and every hit is
//! served by moka's own `get`. There is no second index to keep in step, no eviction
//! listener, and no task spawned per miss: a load's result is inserted before the load
//! returns (Tokio is needed only for the load timeout's timer). moka's `get` records
//! each read for its policy, most of a hit's cost (BENCHMARKS.md §1).
//!
//! moka's cache-wide `time_to_live` rather than a per-entry `Expiry`: moka's read path
//! for a per-entry expiry converts its clock to `std::time::Instant` three times and
//! calls the expiry on every hit (about 250 instructions, BENCHMARKS.md §1). An entry
//! that must end sooner than moka's TTL (a key expiring before it, or freshness under a
//! stale-if-error bound) carries its own deadline, checked on each hit with one clock
//! read; other entries need no clock read of ours.
//!
//! What holds, each guarded by a unit test in `tests.rs`:
//! - an entry is served as fresh at most until the TTL (counted by moka from the
//!   insert) or its earliest key expiry, whichever comes first: moka checks the TTL on
//!   every `get`, whatever its housekeeping is doing, and [`KeyCache::get`] the
//!   entry's own earlier deadline;
//! - about its capacity of users is served from it once moka's pending work has run
//!   (moka applies its capacity bound in batches, so briefly a few more may be held);
//! - concurrent misses of one user share one load, also a miss that raced a load's end;
//!   a waiter whose leader is cancelled runs the load itself; a failed load's error goes
//!   to every waiter and is not cached;
//! - after [`invalidate`](KeyCache::invalidate) returns, no load that began before it
//!   puts its keys into the cache, and the user's old entry is gone;
//!   [`invalidate_all`](KeyCache::invalidate_all) does the same for every user;
//! - with a stale-if-error bound, an entry past its TTL is served only to a load that
//!   failed with [`ErrorKind::Store`] or [`ErrorKind::Timeout`], marked
//!   [stale](UserKeys::is_stale), at most that bound past the TTL, never past a key's own
//!   expiry, and never once the user (or every user) was invalidated;
//! - a member's merged keys, kept in the member's entry, are served only while the
//!   owners' cache has had no insert or invalidation since they were made and none of
//!   the owners' entries they came from has reached its end.
//!
//! Only user ids that passed [`validate::user_id`](crate::validate) are ever loaded or
//! inserted (callers check before [`get_or_load`](KeyCache::get_or_load)), so a lookup
//! with an unchecked id can only miss: the request path looks up first and validates
//! only on a miss.
//!
//! Loads are guarded by generations so that a load which raced a write cannot put the
//! older keys back: the generation check and moka's insert happen under one lock, which
//! `invalidate` also takes.
//!
//! Teams' and the platform's keys live in a second cache of the same kind, nested in
//! the users' one ([`KeyCache::owners`]), keyed by [`owner_key`]: a team's change drops
//! the team's one entry, and no member's; the users' cache, and so a teamless user's
//! hit, is as it was. [`invalidate_all`](KeyCache::invalidate_all) empties both.

use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::OnceCell;

use crate::error::{Error, ErrorKind};
use crate::keys::UserKeys;
use crate::metrics::{CacheCounters, LoadTimer};
use crate::owner::OwnerKind;

/// The key of a team's or the platform's entry in [`KeyCache::owners`]: a team's id
/// itself, and for the platform the empty string, which no valid team id is. Borrowed
/// from the id, so that a member's hit looks its team up without building a key
/// (BENCHMARKS.md §1, issue 19). Users' entries are in the users' cache, never here.
pub(crate) fn owner_key(kind: OwnerKind, owner_id: &str) -> &str {
    match kind {
        OwnerKind::Platform => "",
        OwnerKind::Team | OwnerKind::User => owner_id,
    }
}

type Hasher = foldhash::fast::RandomState;
/// The entry behind an `Arc`: moka's `get` clones the value it returns, and one
/// reference count costs fewer instructions than copying the entry through moka's layers.
type Entries = moka::sync::Cache<Arc<str>, Arc<Entry>, Hasher>;

/// Invalidations are counted per stripe of users: a write to one user makes concurrent
/// loads of the users sharing its stripe skip caching once, which is harmless.
const STRIPES: usize = 64;

/// moka refuses a `time_to_live` over 1,000 years; a longer TTL is as good as forever.
const MOKA_MAX_TTL: Duration = Duration::from_secs(1_000 * 365 * 24 * 3600);

struct Entry {
    keys: UserKeys,
    /// Served on a hit until this instant, when that is sooner than moka's TTL would
    /// allow: the earliest key expiry, or the freshness deadline under a stale-if-error
    /// bound. `None` leaves it to moka's TTL alone, and a hit reads no clock of ours.
    serve_until: Option<Instant>,
    /// Until this instant (the TTL) the entry is fresh.
    fresh_until: Instant,
    /// Until this instant it may be served stale: the TTL plus the stale-if-error bound,
    /// or the earliest key expiry if sooner. moka drops it at its own TTL, this bound
    /// counted from the insert.
    keep_until: Instant,
    /// A member's chain, made on the first hit that acts for a team or takes the
    /// platform's keys, and served while the owners' entries it was made from stand
    /// ([`KeyCache::member_hit`]).
    memo: OnceLock<Box<Memo>>,
}

/// A member's merged keys, as [`KeyCache::member_hit`] made them from this user's entry
/// and the owners' entries.
struct Memo {
    team: Option<Box<str>>,
    platform: bool,
    /// The owners' cache's [`changes`](KeyCache::changes) read before its entries were.
    changes: u64,
    /// The owners' entries' earliest end: their TTL, or a key's expiry.
    until: Option<Instant>,
    keys: UserKeys,
}

/// One load in progress, shared by every request that misses on the same user.
struct Flight {
    result: OnceCell<Result<UserKeys, ErrorKind>>,
    /// The user's stripe generation when the flight began.
    generation: u64,
}

struct Shared {
    /// Hashed like moka's entries and the stripes (foldhash): SipHash cost a miss ~1,400
    /// instructions (BENCHMARKS.md §2). Only ids under load are here, a handful at once.
    flights: HashMap<Arc<str>, Arc<Flight>, Hasher>,
    generations: [u64; STRIPES],
}

/// Per stripe, how many loads have inserted their keys. A miss reads its stripe's count
/// before its first look; if the count has not moved by the time it holds the lock, no
/// load of its stripe finished in between, and the look need not be repeated there
/// (one moka `get` less per miss, BENCHMARKS.md §2).
type Inserts = [AtomicU64; STRIPES];

/// The per-user key cache of one [`Vault`](crate::Vault) and all its clones; see the
/// module docs for what it guarantees.
pub(crate) struct KeyCache {
    entries: Entries,
    shared: Mutex<Shared>,
    inserts: Inserts,
    /// Inserts and invalidations of any entry, counted after the entry went in or out:
    /// a member's memo made from this cache's entries stands while the count stays.
    changes: AtomicU64,
    hasher: Hasher,
    ttl: Duration,
    load_timeout: Duration,
    stale_if_error: Option<Duration>,
    counters: CacheCounters,
    /// Teams' and the platform's entries, with the same settings; `None` in that nested
    /// cache itself.
    owners: Option<Box<KeyCache>>,
}

impl KeyCache {
    /// A cache of at most about `capacity` users, each fresh for `ttl`; `stale_if_error`,
    /// if given, is how long past the TTL an entry may still be served when a load fails
    /// with a store error or a timeout.
    pub(crate) fn new(
        ttl: Duration,
        capacity: u64,
        load_timeout: Duration,
        stale_if_error: Option<Duration>,
    ) -> Self {
        let owners = Self::plain(ttl, capacity, load_timeout, stale_if_error);
        Self {
            owners: Some(Box::new(owners)),
            ..Self::plain(ttl, capacity, load_timeout, stale_if_error)
        }
    }

    /// A cache with no nested owners' cache.
    fn plain(
        ttl: Duration,
        capacity: u64,
        load_timeout: Duration,
        stale_if_error: Option<Duration>,
    ) -> Self {
        let hasher = Hasher::default();
        let keep = ttl.saturating_add(stale_if_error.unwrap_or(Duration::ZERO));
        let entries = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .time_to_live(keep.min(MOKA_MAX_TTL))
            .build_with_hasher(hasher.clone());
        Self {
            entries,
            shared: Mutex::new(Shared {
                flights: HashMap::with_hasher(hasher.clone()),
                generations: [0; STRIPES],
            }),
            inserts: std::array::from_fn(|_| AtomicU64::new(0)),
            changes: AtomicU64::new(0),
            hasher,
            ttl,
            load_timeout,
            stale_if_error,
            counters: CacheCounters::register(),
            owners: None,
        }
    }

    /// The cache of teams' and the platform's keys, keyed by [`owner_key`].
    pub(crate) fn owners(&self) -> &KeyCache {
        self.owners.as_deref().unwrap_or(self)
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // Nothing under this lock can leave the state half-changed, so a poisoned lock
        // (a panic elsewhere while it was held) is still consistent.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stripe(&self, user_id: &str) -> usize {
        (self.hasher.hash_one(user_id).rotate_left(17) % STRIPES as u64) as usize
    }

    /// The cached keys of a user, without waiting: the request path's fast lane.
    #[inline]
    pub(crate) fn get(&self, user_id: &str) -> Option<UserKeys> {
        Some(self.entry(user_id)?.keys.clone())
    }

    /// The entry of a user, if it may be served: a hit.
    #[inline]
    fn entry(&self, user_id: &str) -> Option<Arc<Entry>> {
        let entry = self.entries.get(user_id)?;
        // moka has checked its TTL; an entry that ends sooner says so.
        if entry
            .serve_until
            .is_some_and(|until| until <= Instant::now())
        {
            return None;
        }
        self.counters.hit();
        Some(entry)
    }

    /// A member's keys from the caches alone: the user's entry, and the team's and
    /// (with `platform`) the platform's in [`owners`](Self::owners), merged by `chain`;
    /// `None` unless all of them are cached.
    ///
    /// The merged set is kept in the user's entry and served again while no owner's
    /// entry has gone in or out since it was made (the owners' cache's `changes`), and
    /// none of those entries has reached its end: one moka read for a member's hit, as
    /// for a single user's. A write of the user's keys drops the user's entry, memo and
    /// all; a write of a team's or the platform's keys changes the count.
    pub(crate) fn member_hit(
        &self,
        user_id: &str,
        team: Option<&str>,
        platform: bool,
        chain: impl FnOnce(UserKeys, Option<&UserKeys>, Option<&UserKeys>) -> UserKeys,
    ) -> Option<UserKeys> {
        let entry = self.entry(user_id)?;
        let owners = self.owners();
        if let Some(memo) = entry.memo.get() {
            if memo.platform == platform
                && memo.team.as_deref() == team
                && memo.changes == owners.changes.load(Ordering::Acquire)
                && memo.until.is_none_or(|until| Instant::now() < until)
            {
                return Some(memo.keys.clone());
            }
        }
        // Read before the entries: an owner's change after this read makes the memo
        // stale at once, and one before it is seen in the entries.
        let changes = owners.changes.load(Ordering::Acquire);
        let team_entry = match team {
            Some(team) => Some(owners.entry(owner_key(OwnerKind::Team, team))?),
            None => None,
        };
        let platform_entry = match platform {
            true => Some(owners.entry(owner_key(OwnerKind::Platform, ""))?),
            false => None,
        };
        let keys = chain(
            entry.keys.clone(),
            team_entry.as_ref().map(|e| &e.keys),
            platform_entry.as_ref().map(|e| &e.keys),
        );
        let until = [&team_entry, &platform_entry]
            .into_iter()
            .flatten()
            .map(|e| e.serve_until.unwrap_or(e.fresh_until))
            .min();
        // Only the first chain made from this entry is kept; a later one (another team,
        // or after an owner's change) is served without one until the entry is reloaded.
        let _ = entry.memo.set(Box::new(Memo {
            team: team.map(Box::from),
            platform,
            changes,
            until,
            keys: keys.clone(),
        }));
        Some(keys)
    }

    /// Caches freshly loaded keys. Called under the shared lock, after the generation
    /// check, so that an invalidation is either before (no insert) or after (removes it).
    fn insert(&self, stripe: usize, user_id: Arc<str>, keys: &UserKeys) {
        let now = Instant::now();
        let fresh_until = now.checked_add(self.ttl).unwrap_or(now + MOKA_MAX_TTL);
        let mut keep_until = fresh_until
            .checked_add(self.stale_if_error.unwrap_or(Duration::ZERO))
            .unwrap_or(fresh_until);
        // Under a bound, moka keeps the entry past its freshness: each hit checks it.
        let mut serve_until = self.stale_if_error.map(|_| fresh_until);
        if let Some(expiry) = keys.earliest_expiry() {
            let left = expiry
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            let expires = now.checked_add(left).unwrap_or(keep_until);
            // No expired key is ever served, fresh or stale.
            keep_until = keep_until.min(expires);
            if expires < fresh_until {
                serve_until = Some(expires);
            }
        }
        self.entries.insert(
            user_id,
            Arc::new(Entry {
                keys: keys.clone(),
                serve_until,
                fresh_until,
                keep_until,
                memo: OnceLock::new(),
            }),
        );
        // After the entry is in: a miss that reads the new count sees the entry.
        self.inserts[stripe].fetch_add(1, Ordering::Release);
        self.changes.fetch_add(1, Ordering::Release);
    }

    /// The keys of a user from the cache, or from `load` with concurrent misses for the
    /// same user sharing one call. `load` must filter out expired keys. Errors and
    /// timeouts are returned to every waiter and never cached; with a stale-if-error
    /// bound, a store error or timeout returns the user's stale keys instead, if any may
    /// still be served.
    pub(crate) async fn get_or_load<F, Fut>(
        &self,
        user_id: &str,
        load: F,
    ) -> Result<UserKeys, ErrorKind>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<UserKeys, Error>>,
    {
        let stripe = self.stripe(user_id);
        let seen = self.inserts[stripe].load(Ordering::Acquire);
        if let Some(keys) = self.get(user_id) {
            return Ok(keys);
        }
        self.load_after_miss(user_id, stripe, seen, load).await
    }

    /// [`get_or_load`](Self::get_or_load) once its first look missed, `seen` being the
    /// stripe's insert count read before that look.
    async fn load_after_miss<F, Fut>(
        &self,
        user_id: &str,
        stripe: usize,
        seen: u64,
        load: F,
    ) -> Result<UserKeys, ErrorKind>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<UserKeys, Error>>,
    {
        let (key, flight) = {
            let mut shared = self.lock();
            let generation = shared.generations[stripe];
            match shared.flights.get_key_value(user_id) {
                Some((key, flight)) => (key.clone(), flight.clone()),
                None => {
                    // Look again if a load of this stripe inserted since the first look:
                    // a load inserts under this lock and only then leaves the map, so a
                    // miss that raced a finishing load sees its entry here instead of
                    // starting a second load. (Inserts only happen under the lock, so
                    // the count read here is exact.)
                    if self.inserts[stripe].load(Ordering::Relaxed) != seen {
                        if let Some(keys) = self.get(user_id) {
                            return Ok(keys);
                        }
                    }
                    let key: Arc<str> = Arc::from(user_id);
                    let flight = Arc::new(Flight {
                        result: OnceCell::new(),
                        generation,
                    });
                    shared.flights.insert(key.clone(), flight.clone());
                    (key, flight)
                }
            }
        };
        self.counters.miss();
        // Removes the flight from the map when its last caller leaves, however it leaves,
        // so abandoned flights do not pile up.
        let _leave = LeaveFlight {
            cache: self,
            user_id,
            flight: &flight,
        };
        let result = flight
            .result
            .get_or_init(|| async {
                let timer = LoadTimer::start(&self.counters);
                let loaded = match tokio::time::timeout(self.load_timeout, load()).await {
                    Ok(Ok(keys)) => Ok(keys),
                    Ok(Err(e)) => Err(e.kind()),
                    Err(_) => {
                        tracing::warn!(timeout = ?self.load_timeout, "loading a user's keys timed out");
                        Err(ErrorKind::Timeout)
                    }
                };
                timer.finish(loaded.as_ref().err().copied());
                let shared = self.lock();
                // Under the lock that `invalidate` takes: either the write's
                // invalidation came first and bumped the generation, so these keys
                // are not cached, or it comes after and removes them.
                let current = shared.generations[stripe] == flight.generation;
                match loaded {
                    Ok(keys) => {
                        if current {
                            self.insert(stripe, key.clone(), &keys);
                        }
                        Ok(keys)
                    }
                    // Read under the lock too, so an invalidation (which removes the
                    // entry under it) is wholly before or after.
                    Err(kind @ (ErrorKind::Store | ErrorKind::Timeout)) => {
                        self.stale(&key).ok_or(kind)
                    }
                    Err(kind) => Err(kind),
                }
            })
            .await
            .clone();
        result
    }

    /// The user's entry past its TTL, marked stale, if the stale-if-error bound lets it be
    /// served (moka's `get` checks the TTL plus the bound; `keep_until` is checked here
    /// too, for a key expiry and the bound counted from the load).
    fn stale(&self, user_id: &str) -> Option<UserKeys> {
        self.stale_if_error?;
        let entry = self.entries.get(user_id)?;
        let now = Instant::now();
        if entry.keep_until <= now {
            return None;
        }
        if entry.fresh_until > now {
            // A load of this user finished meanwhile: its keys are fresh.
            return Some(entry.keys.clone());
        }
        tracing::warn!(
            past_ttl = ?now.duration_since(entry.fresh_until),
            "loading a user's keys failed; serving them stale from the cache"
        );
        self.counters.stale_served();
        Some(entry.keys.clone().into_stale())
    }

    /// Forgets a user's keys at once, and makes any load of that user already under way
    /// neither cache its result nor be joined by later requests.
    pub(crate) fn invalidate(&self, user_id: &str) {
        let stripe = self.stripe(user_id);
        let mut shared = self.lock();
        shared.generations[stripe] = shared.generations[stripe].wrapping_add(1);
        shared.flights.remove(user_id);
        self.entries.invalidate(user_id);
        // After the entry is out: a memo made with the new count never saw it.
        self.changes.fetch_add(1, Ordering::Release);
    }

    /// Forgets every user's keys at once, and makes every load under way neither cache
    /// its result nor be joined by later requests.
    pub(crate) fn invalidate_all(&self) {
        let mut shared = self.lock();
        for generation in &mut shared.generations {
            *generation = generation.wrapping_add(1);
        }
        shared.flights.clear();
        // moka marks every entry inserted up to now invalid at once; the memory is
        // reclaimed by its housekeeping.
        self.entries.invalidate_all();
        self.changes.fetch_add(1, Ordering::Release);
        drop(shared);
        if let Some(owners) = &self.owners {
            owners.invalidate_all();
        }
    }
}

struct LeaveFlight<'a> {
    cache: &'a KeyCache,
    user_id: &'a str,
    flight: &'a Arc<Flight>,
}

impl Drop for LeaveFlight<'_> {
    fn drop(&mut self) {
        let mut shared = self.cache.lock();
        // Only the last caller takes the flight out: the map's reference and this
        // caller's are all that remain. Earlier, a cancelled leader would have let new
        // requests start a second load while others still waited on this one.
        if shared
            .flights
            .get(self.user_id)
            .is_some_and(|current| Arc::ptr_eq(current, self.flight))
            && Arc::strong_count(self.flight) <= 2
        {
            shared.flights.remove(self.user_id);
        }
    }
}

#[cfg(test)]
mod tests;
