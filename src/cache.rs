//! The per-user key cache: moka for the entries, single-flight loads, and generations
//! so that a load which raced a write cannot put the older keys back.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::OnceCell;

use crate::error::{Error, ErrorKind};
use crate::keys::UserKeys;

/// Invalidations are counted per stripe of users: a write to one user makes concurrent
/// loads of the users sharing its stripe skip caching once, which is harmless.
const STRIPES: usize = 64;

#[derive(Clone)]
struct Entry {
    keys: UserKeys,
    /// The earliest expiry among the keys: past it, the entry is a miss.
    stale_at: Option<SystemTime>,
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

pub(crate) struct KeyCache {
    entries: moka::sync::Cache<Arc<str>, Entry>,
    shared: Mutex<Shared>,
    stripe_hasher: RandomState,
    load_timeout: Duration,
}

impl KeyCache {
    pub(crate) fn new(ttl: Duration, capacity: u64, load_timeout: Duration) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .time_to_live(ttl)
                .max_capacity(capacity)
                .build(),
            shared: Mutex::new(Shared {
                flights: HashMap::new(),
                generations: [0; STRIPES],
            }),
            stripe_hasher: RandomState::new(),
            load_timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // Nothing under this lock can leave the state half-changed, so a poisoned lock
        // (a panic elsewhere while it was held) is still consistent.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stripe(&self, user_id: &str) -> usize {
        (self.stripe_hasher.hash_one(user_id) % STRIPES as u64) as usize
    }

    /// The cached keys of a user, without waiting: the request path's fast lane.
    pub(crate) fn get(&self, user_id: &str) -> Option<UserKeys> {
        let entry = self.entries.get(user_id)?;
        match entry.stale_at {
            Some(at) if at <= SystemTime::now() => None,
            _ => Some(entry.keys),
        }
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
        // Removes the flight from the map however this call ends, even when every request
        // waiting on it is dropped, so abandoned flights do not pile up.
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
                        let entry = Entry {
                            stale_at: keys.earliest_expiry(),
                            keys: keys.clone(),
                        };
                        self.entries.insert(key.clone(), entry);
                    }
                }
                loaded
            })
            .await
            .clone();
        result
    }

    /// A guard that invalidates `user_id` when dropped: after a write returns, fails, or
    /// is cancelled mid-commit (a dropped future whose commit still reached the database).
    pub(crate) fn invalidate_on_drop<'a>(&'a self, user_id: &'a str) -> InvalidateOnDrop<'a> {
        InvalidateOnDrop {
            cache: self,
            user_id,
        }
    }

    /// Forgets a user's keys at once, and makes any load of that user already under way
    /// neither cache its result nor be joined by later requests.
    pub(crate) fn invalidate(&self, user_id: &str) {
        let stripe = self.stripe(user_id);
        let mut shared = self.lock();
        shared.generations[stripe] = shared.generations[stripe].wrapping_add(1);
        shared.flights.remove(user_id);
        self.entries.invalidate(user_id);
    }
}

pub(crate) struct InvalidateOnDrop<'a> {
    cache: &'a KeyCache,
    user_id: &'a str,
}

impl Drop for InvalidateOnDrop<'_> {
    fn drop(&mut self) {
        self.cache.invalidate(self.user_id);
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
        if shared
            .flights
            .get(self.user_id)
            .is_some_and(|current| Arc::ptr_eq(current, self.flight))
        {
            shared.flights.remove(self.user_id);
        }
    }
}
