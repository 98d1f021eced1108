//! The per-user key cache.
//!
//! moka decides who stays cached: its capacity bound, TinyLFU admission and TTL. But a
//! moka `get` records every read for that policy, which costs more than the rest of the
//! request path together, so hits are served from a sharded read-mostly index that moka
//! keeps in step through its eviction listener. Each index entry carries one monotonic
//! deadline (the TTL, or the earliest key expiry if sooner), checked on every hit, so
//! correctness never waits on moka's housekeeping. One hit in [`SAMPLE`] is also read
//! through moka, to keep its popularity estimates honest.
//!
//! Loads are single-flight per user, and guarded by generations so that a load which
//! raced a write cannot put the older keys back.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use moka::ops::compute::Op;
use tokio::sync::OnceCell;

use crate::error::{Error, ErrorKind};
use crate::keys::UserKeys;

type Hasher = foldhash::fast::RandomState;
type Policy = moka::sync::Cache<Arc<str>, UserKeys, Hasher>;

/// Invalidations are counted per stripe of users: a write to one user makes concurrent
/// loads of the users sharing its stripe skip caching once, which is harmless.
const STRIPES: usize = 64;
/// Shards of the hit index: enough that two cores rarely share a lock's cache line.
const SHARDS: usize = 32;
/// One hit in this many is also recorded by moka.
const SAMPLE: u32 = 64;

#[derive(Clone)]
struct Entry {
    keys: UserKeys,
    /// Past this instant the entry is a miss: the TTL, or the earliest key expiry.
    deadline: Instant,
}

type Shard = RwLock<HashMap<Arc<str>, Entry, Hasher>>;

/// The read-mostly index the hit path reads.
struct Index {
    shards: Box<[Shard]>,
    hasher: Hasher,
    /// Past this many entries, inserts sweep the shard's expired entries, so that what
    /// the index holds beyond moka's capacity is bounded by what is younger than the TTL,
    /// even where moka's evictions lag.
    shard_soft_cap: usize,
}

impl Index {
    fn new(hasher: Hasher, capacity: u64) -> Self {
        let shards = (0..SHARDS)
            .map(|_| RwLock::new(HashMap::with_hasher(hasher.clone())))
            .collect();
        let per_shard = usize::try_from(capacity / SHARDS as u64).unwrap_or(usize::MAX);
        Self {
            shards,
            hasher,
            shard_soft_cap: per_shard.saturating_add(per_shard / 4).max(16),
        }
    }

    fn shard(&self, user_id: &str) -> &Shard {
        &self.shards[(self.hasher.hash_one(user_id) % SHARDS as u64) as usize]
    }

    fn get(&self, user_id: &str) -> Option<Entry> {
        // A poisoned shard still holds whole entries: each write is one map operation.
        let shard = self
            .shard(user_id)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        shard.get(user_id).cloned()
    }

    fn insert(&self, user_id: Arc<str>, entry: Entry) {
        let mut shard = self
            .shard(&user_id)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Past its share of the capacity, a shard drops its expired entries, every 64th
        // insert so that a shard full of live entries does not pay a sweep per insert.
        if shard.len() >= self.shard_soft_cap
            && (shard.len() - self.shard_soft_cap).is_multiple_of(64)
        {
            let now = Instant::now();
            shard.retain(|_, e| e.deadline > now);
        }
        shard.insert(user_id, entry);
    }

    fn remove(&self, user_id: &str) -> Option<Entry> {
        let mut shard = self
            .shard(user_id)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        shard.remove(user_id)
    }

    /// Whether the entry of `user_id` holds exactly `keys` (the same load).
    fn holds(&self, user_id: &str, keys: &UserKeys) -> bool {
        let shard = self
            .shard(user_id)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        shard.get(user_id).is_some_and(|e| e.keys.is_same(keys))
    }

    /// Removes the entry only if it still holds `keys`: moka reports evictions late, and
    /// must not take out a newer entry for the same user.
    fn remove_if_same(&self, user_id: &str, keys: &UserKeys) {
        let mut shard = self
            .shard(user_id)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if shard.get(user_id).is_some_and(|e| e.keys.is_same(keys)) {
            shard.remove(user_id);
        }
    }
}

/// One load in progress, shared by every request that misses on the same user.
struct Flight {
    result: OnceCell<Result<UserKeys, ErrorKind>>,
    /// The user's stripe generation when the flight began.
    generation: u64,
}

struct Shared {
    flights: HashMap<Arc<str>, Arc<Flight>>,
    generations: [u64; STRIPES],
}

/// The per-user key cache of one [`Vault`](crate::Vault) and all its clones.
///
/// Guarantees, each checked by a unit test below:
/// - an entry is served at most until the TTL or its earliest key expiry, whichever
///   comes first, whatever moka's housekeeping is doing;
/// - at most about its capacity of users is served from it;
/// - concurrent misses of one user share one load; a waiter whose leader is cancelled
///   runs the load itself; a failed load's error goes to every waiter and is not cached;
/// - after [`invalidate`](Self::invalidate) returns, no load that began before it puts
///   its keys into the cache.
pub(crate) struct KeyCache {
    index: Arc<Index>,
    /// The policy: who stays, for how long. Its evictions remove index entries.
    policy: Policy,
    shared: Mutex<Shared>,
    hasher: Hasher,
    ttl: Duration,
    load_timeout: Duration,
}

impl KeyCache {
    pub(crate) fn new(ttl: Duration, capacity: u64, load_timeout: Duration) -> Self {
        let hasher = Hasher::default();
        let index = Arc::new(Index::new(hasher.clone(), capacity));
        let evicted = index.clone();
        let policy = moka::sync::Cache::builder()
            .time_to_live(ttl)
            .max_capacity(capacity)
            .eviction_listener(move |user_id: Arc<Arc<str>>, keys: UserKeys, cause| {
                // A replacement evicts nothing from the index: a late mirror task of an
                // older load may replace a newer one in moka, and must not take the
                // newer keys out of the index (it removes its own stale entry itself).
                if cause != moka::notification::RemovalCause::Replaced {
                    evicted.remove_if_same(&user_id, &keys);
                }
            })
            .build_with_hasher(hasher.clone());
        Self {
            index,
            policy,
            shared: Mutex::new(Shared {
                flights: HashMap::new(),
                generations: [0; STRIPES],
            }),
            hasher,
            ttl,
            load_timeout,
        }
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
    pub(crate) fn get(&self, user_id: &str) -> Option<UserKeys> {
        let entry = self.index.get(user_id)?;
        if entry.deadline <= Instant::now() {
            return None;
        }
        thread_local!(static HITS: Cell<u32> = const { Cell::new(0) });
        let hits = HITS.with(|h| {
            let n = h.get().wrapping_add(1);
            h.set(n);
            n
        });
        if hits.is_multiple_of(SAMPLE) {
            self.policy.get(user_id);
        }
        Some(entry.keys)
    }

    /// Caches freshly loaded keys. Called under the shared lock.
    fn insert(&self, user_id: Arc<str>, keys: &UserKeys) {
        let now = Instant::now();
        let mut deadline = now + self.ttl;
        if let Some(expiry) = keys.earliest_expiry() {
            let left = expiry
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            deadline = deadline.min(now + left);
        }
        self.index.insert(
            user_id.clone(),
            Entry {
                keys: keys.clone(),
                deadline,
            },
        );
        // moka does its housekeeping inline in `insert`: tens of microseconds right after
        // an invalidation, on a path that otherwise waits only on the database. Nothing
        // served depends on it (hits read the index, whose deadlines are checked on every
        // hit, and evictions only remove the very entry they name), so the request does
        // not wait for it.
        let policy = self.policy.clone();
        let index = self.index.clone();
        let keys = keys.clone();
        tokio::spawn(async move {
            // Skip, or undo, the policy entry if these keys left the index meanwhile (an
            // invalidation, a newer load): moka must not hold keys, deleted ones perhaps,
            // that can no longer be served.
            if !index.holds(&user_id, &keys) {
                return;
            }
            policy.insert(user_id.clone(), keys.clone());
            if !index.holds(&user_id, &keys) {
                forget_in_policy(&policy, &user_id, &keys);
            }
        });
    }

    /// The keys of a user from the cache, or from `load` with concurrent misses for the
    /// same user sharing one call. `load` must filter out expired keys. Errors and
    /// timeouts are returned to every waiter and never cached.
    pub(crate) async fn get_or_load<F, Fut>(
        &self,
        user_id: &str,
        load: F,
    ) -> Result<UserKeys, ErrorKind>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<UserKeys, Error>>,
    {
        if let Some(keys) = self.get(user_id) {
            return Ok(keys);
        }
        let stripe = self.stripe(user_id);
        let (key, flight) = {
            let mut shared = self.lock();
            let generation = shared.generations[stripe];
            match shared.flights.get_key_value(user_id) {
                Some((key, flight)) => (key.clone(), flight.clone()),
                None => {
                    // Look again under the lock: a load inserts under it and only then
                    // leaves the map, so a miss that raced a finishing load sees its
                    // entry here instead of starting a second load.
                    if let Some(keys) = self.get(user_id) {
                        return Ok(keys);
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
                let loaded = match tokio::time::timeout(self.load_timeout, load()).await {
                    Ok(Ok(keys)) => Ok(keys),
                    Ok(Err(e)) => Err(e.kind()),
                    Err(_) => {
                        tracing::warn!(timeout = ?self.load_timeout, "loading a user's keys timed out");
                        Err(ErrorKind::Timeout)
                    }
                };
                if let Ok(keys) = &loaded {
                    let shared = self.lock();
                    // Under the lock that `invalidate` takes: either the write's
                    // invalidation came first and bumped the generation, so these keys
                    // are not cached, or it comes after and removes them.
                    if shared.generations[stripe] == flight.generation {
                        self.insert(key.clone(), keys);
                    }
                }
                loaded
            })
            .await
            .clone();
        result
    }

    /// Forgets a user's keys at once, and makes any load of that user already under way
    /// neither cache its result nor be joined by later requests.
    pub(crate) fn invalidate(&self, user_id: &str) {
        let stripe = self.stripe(user_id);
        let removed = {
            let mut shared = self.lock();
            shared.generations[stripe] = shared.generations[stripe].wrapping_add(1);
            shared.flights.remove(user_id);
            self.index.remove(user_id)
        };
        // Outside the lock: moka may do housekeeping here. Its eviction notice for these
        // keys is harmless, since it only removes the index entry if it still holds them.
        if let Some(removed) = removed {
            forget_in_policy(&self.policy, user_id, &removed.keys);
        }
    }
}

impl KeyCache {
    /// Forgets every user's keys at once, and makes every load under way neither cache
    /// its result nor be joined by later requests.
    pub(crate) fn invalidate_all(&self) {
        {
            let mut shared = self.lock();
            for generation in &mut shared.generations {
                *generation = generation.wrapping_add(1);
            }
            shared.flights.clear();
            for shard in self.index.shards.iter() {
                shard
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clear();
            }
        }
        self.policy.invalidate_all();
    }
}

/// Takes `keys` out of moka, but only if moka still holds that very load for the user.
///
/// An unconditional `invalidate` could arrive after a newer load of the same user had
/// reached moka; its eviction notice would then remove the newer index entry, and the
/// next request would load again (seen as 1 extra load in 200,000 cold misses).
fn forget_in_policy(policy: &Policy, user_id: &str, keys: &UserKeys) {
    policy
        .entry(Arc::from(user_id))
        .and_compute_with(|current| match current {
            Some(entry) if entry.value().is_same(keys) => Op::Remove,
            _ => Op::Nop,
        });
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn total(cache: &KeyCache) -> usize {
        cache
            .index
            .shards
            .iter()
            .map(|s| s.read().unwrap().len())
            .sum()
    }

    #[tokio::test]
    async fn the_index_stays_bounded_as_users_come_and_go() {
        // 320 users of capacity, a 1 ms TTL, and 5,000 distinct users passing through.
        let cache = KeyCache::new(Duration::from_millis(1), 320, Duration::from_secs(1));
        let shared = cache.lock();
        for batch in 0..50 {
            for i in 0..100 {
                cache.insert(Arc::from(format!("user-{batch}-{i}")), &UserKeys::default());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        drop(shared);
        let bound = SHARDS * (cache.index.shard_soft_cap + 64) + 100;
        assert!(
            total(&cache) <= bound,
            "{} entries, bound {bound}",
            total(&cache)
        );
        assert!(
            cache.get("user-0-0").is_none(),
            "expired entries are never served"
        );
    }

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::SystemTime;

    use crate::keys::ProviderKey;

    fn keys(secret: &str) -> UserKeys {
        [ProviderKey::from_secret("openai", secret).unwrap()]
            .into_iter()
            .collect()
    }

    /// A cache under test, with a count of the loads that reached "the database".
    fn cache(ttl: Duration, capacity: u64) -> (Arc<KeyCache>, Arc<AtomicUsize>) {
        let cache = Arc::new(KeyCache::new(ttl, capacity, Duration::from_secs(5)));
        (cache, Arc::new(AtomicUsize::new(0)))
    }

    async fn load(
        cache: &KeyCache,
        loads: &AtomicUsize,
        user: &str,
        result: Result<UserKeys, ErrorKind>,
    ) -> Result<UserKeys, ErrorKind> {
        cache
            .get_or_load(user, || async {
                loads.fetch_add(1, Ordering::SeqCst);
                result.map_err(Error::new)
            })
            .await
    }

    /// Starts a load of user `u` that counts itself, waits on `gate`, then gives
    /// `result`; returns once the load has begun.
    async fn spawn_leader(
        cache: &Arc<KeyCache>,
        loads: &Arc<AtomicUsize>,
        gate: impl Future<Output = ()> + Send + 'static,
        result: Result<UserKeys, ErrorKind>,
    ) -> tokio::task::JoinHandle<Result<UserKeys, ErrorKind>> {
        let started = Arc::new(tokio::sync::Notify::new());
        let leader = {
            let (cache, started, loads) = (cache.clone(), started.clone(), loads.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load("u", || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        started.notify_one();
                        gate.await;
                        result.map_err(Error::new)
                    })
                    .await
            })
        };
        started.notified().await;
        leader
    }

    /// Lets the spawned policy inserts run, then moka's housekeeping.
    async fn settle(cache: &KeyCache) {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        cache.policy.run_pending_tasks();
    }

    #[tokio::test]
    async fn capacity_bounds_what_is_served() {
        let (cache, loads) = cache(Duration::from_secs(3600), 20);
        for i in 0..500 {
            load(&cache, &loads, &format!("user-{i}"), Ok(keys("sk-1")))
                .await
                .unwrap();
            if i % 50 == 49 {
                settle(&cache).await;
            }
        }
        settle(&cache).await;
        let cached = (0..500)
            .filter(|i| cache.get(&format!("user-{i}")).is_some())
            .count();
        assert!(
            cached <= 20 + 20 / 4,
            "{cached} of 500 users cached, capacity 20"
        );
        assert_eq!(loads.load(Ordering::SeqCst), 500);
    }

    #[tokio::test]
    async fn entries_end_at_the_ttl() {
        let (cache, loads) = cache(Duration::from_millis(50), 100);
        load(&cache, &loads, "u", Ok(keys("sk-1"))).await.unwrap();
        assert!(cache.get("u").is_some());
        load(&cache, &loads, "u", Ok(keys("sk-1"))).await.unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 1, "a hit does not load");
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(cache.get("u").is_none(), "past the TTL, nothing is served");
        load(&cache, &loads, "u", Ok(keys("sk-2"))).await.unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_entry_ends_at_its_earliest_key_expiry() {
        let (cache, loads) = cache(Duration::from_secs(3600), 100);
        let expiring: UserKeys = [ProviderKey::from_secret("openai", "sk-1")
            .unwrap()
            .with_expiry(SystemTime::now() + Duration::from_millis(50))]
        .into_iter()
        .collect();
        load(&cache, &loads, "u", Ok(expiring)).await.unwrap();
        assert!(cache.get("u").is_some());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(
            cache.get("u").is_none(),
            "an expired key is never served from the cache"
        );
    }

    #[tokio::test]
    async fn a_load_that_raced_an_invalidation_is_not_cached() {
        let (cache, loads) = cache(Duration::from_secs(3600), 100);
        let (release, gate) = tokio::sync::oneshot::channel::<()>();
        let started = Arc::new(tokio::sync::Notify::new());
        let task = {
            let (cache, started) = (cache.clone(), started.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load("u", || async move {
                        started.notify_one();
                        gate.await.unwrap();
                        Ok(keys("sk-old"))
                    })
                    .await
            })
        };
        started.notified().await;
        cache.invalidate("u"); // a write landed while the old keys were being read
        release.send(()).unwrap();
        let old = task.await.unwrap().unwrap();
        assert_eq!(old.get("openai").unwrap().expose_secret(), "sk-old");
        assert!(
            cache.get("u").is_none(),
            "the raced load must not be cached"
        );
        let new = load(&cache, &loads, "u", Ok(keys("sk-new"))).await.unwrap();
        assert_eq!(new.get("openai").unwrap().expose_secret(), "sk-new");
    }

    #[tokio::test]
    async fn a_waiter_takes_over_when_the_leader_is_cancelled() {
        let (cache, loads) = cache(Duration::from_secs(3600), 100);
        let leader = spawn_leader(&cache, &loads, std::future::pending(), Ok(keys("never"))).await;
        let waiter = {
            let (cache, loads) = (cache.clone(), loads.clone());
            tokio::spawn(async move { load(&cache, &loads, "u", Ok(keys("sk-1"))).await })
        };
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            loads.load(Ordering::SeqCst),
            1,
            "the waiter joined the leader's load"
        );
        leader.abort();
        let keys = waiter.await.unwrap().unwrap();
        assert_eq!(keys.get("openai").unwrap().expose_secret(), "sk-1");
        assert_eq!(
            loads.load(Ordering::SeqCst),
            2,
            "the waiter ran the load itself"
        );
        assert!(cache.get("u").is_some());
    }

    #[tokio::test]
    async fn every_waiter_gets_the_error_of_a_failed_load_and_it_is_not_cached() {
        let (cache, loads) = cache(Duration::from_secs(3600), 100);
        let (release, gate) = tokio::sync::oneshot::channel::<()>();
        let gate = async { gate.await.unwrap() };
        let leader = spawn_leader(&cache, &loads, gate, Err(ErrorKind::Store)).await;
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let (cache, loads) = (cache.clone(), loads.clone());
                tokio::spawn(async move { load(&cache, &loads, "u", Ok(keys("unused"))).await })
            })
            .collect();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        release.send(()).unwrap();
        assert_eq!(leader.await.unwrap().unwrap_err(), ErrorKind::Store);
        for waiter in waiters {
            assert_eq!(waiter.await.unwrap().unwrap_err(), ErrorKind::Store);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1, "one load for all four");
        assert!(cache.get("u").is_none(), "errors are never cached");
        load(&cache, &loads, "u", Ok(keys("sk-1"))).await.unwrap();
        assert_eq!(
            loads.load(Ordering::SeqCst),
            2,
            "the next request tries again"
        );
    }
}
