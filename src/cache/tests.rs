//! Unit tests of the cache: each guards one of the module's guarantees.

#![allow(clippy::unwrap_used)]

use super::*;

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
    let cache = Arc::new(KeyCache::new(ttl, capacity, Duration::from_secs(5), None));
    (cache, Arc::new(AtomicUsize::new(0)))
}

/// A cache of 100 users under test with a stale-if-error bound, and its load count.
fn stale_cache(ttl: Duration, stale: Option<Duration>) -> (Arc<KeyCache>, Arc<AtomicUsize>) {
    let cache = Arc::new(KeyCache::new(ttl, 100, Duration::from_secs(5), stale));
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

/// Runs moka's pending housekeeping (evictions are applied in batches).
async fn settle(cache: &KeyCache) {
    cache.entries.run_pending_tasks();
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
    let reloaded = cache
        .get("u")
        .expect("the reload replaces the expired entry");
    assert_eq!(reloaded.get("openai").unwrap().expose_secret(), "sk-2");
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
async fn invalidate_forgets_a_cached_user_only() {
    let (cache, loads) = cache(Duration::from_secs(3600), 100);
    load(&cache, &loads, "u", Ok(keys("sk-1"))).await.unwrap();
    load(&cache, &loads, "other", Ok(keys("sk-2")))
        .await
        .unwrap();
    cache.invalidate("u");
    assert!(
        cache.get("u").is_none(),
        "the invalidated user is forgotten"
    );
    assert!(cache.get("other").is_some(), "other users stay cached");
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
async fn a_miss_that_raced_a_finishing_load_takes_its_keys() {
    // The interleaving of two misses of one user: B looks (nothing), A's load finishes,
    // inserts and leaves the map, and only then does B take the lock. B must take A's
    // keys, not load a second time.
    let (cache, loads) = cache(Duration::from_secs(3600), 100);
    let stripe = cache.stripe("u");
    let seen = cache.inserts[stripe].load(Ordering::Acquire);
    assert!(cache.get("u").is_none(), "B's first look misses");
    load(&cache, &loads, "u", Ok(keys("sk-a"))).await.unwrap();
    let b = cache
        .load_after_miss("u", stripe, seen, || async {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok(keys("sk-b"))
        })
        .await
        .unwrap();
    assert_eq!(b.get("openai").unwrap().expose_secret(), "sk-a");
    assert_eq!(loads.load(Ordering::SeqCst), 1, "one load for both misses");

    // With no load in between, the same path loads (and caches) as a plain miss does.
    cache.invalidate("u");
    let seen = cache.inserts[stripe].load(Ordering::Acquire);
    let c = cache
        .load_after_miss("u", stripe, seen, || async {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok(keys("sk-c"))
        })
        .await
        .unwrap();
    assert_eq!(c.get("openai").unwrap().expose_secret(), "sk-c");
    assert_eq!(loads.load(Ordering::SeqCst), 2);
    assert!(cache.get("u").is_some());
}

/// The chain as the vault makes it, reduced: the team's keys for a member without any.
fn team_first(own: UserKeys, team: Option<&UserKeys>, _: Option<&UserKeys>) -> UserKeys {
    match team {
        Some(team) if own.is_empty() => team.clone(),
        _ => own,
    }
}

fn secret_of(keys: &UserKeys) -> String {
    keys.get("openai").unwrap().expose_secret().to_owned()
}

#[tokio::test]
async fn a_members_memo_stands_only_while_the_owners_entries_do() {
    // Wide margins (a second and more around each end), so that a slow or busy machine
    // cannot move a step across an entry's end.
    let (cache, loads) = cache(Duration::from_secs(3), 100);
    let owners = cache.owners();
    load(&cache, &loads, "m", Ok(UserKeys::default()))
        .await
        .unwrap();
    load(owners, &loads, "acme", Ok(keys("sk-team-1")))
        .await
        .unwrap();
    let hit = |team| cache.member_hit("m", Some(team), false, team_first);
    assert_eq!(secret_of(&hit("acme").unwrap()), "sk-team-1");
    assert_eq!(
        secret_of(&hit("acme").unwrap()),
        "sk-team-1",
        "from the memo"
    );

    // Another team: not the memo's, and not cached: no hit.
    assert!(hit("other").is_none());

    // The team's keys change (a write invalidates, a load brings the new ones).
    owners.invalidate("acme");
    assert!(
        hit("acme").is_none(),
        "the team's entry is gone: no hit from the memo"
    );
    load(owners, &loads, "acme", Ok(keys("sk-team-2")))
        .await
        .unwrap();
    assert_eq!(secret_of(&hit("acme").unwrap()), "sk-team-2");

    // Any owner's change, even another team's, retires the memo: the chain is made
    // again from the entries (still sk-team-2).
    load(owners, &loads, "other", Ok(keys("sk-other")))
        .await
        .unwrap();
    assert_eq!(secret_of(&hit("acme").unwrap()), "sk-team-2");

    // The team's entry ends before the member's: the memo ends with it. The member's
    // entry is reloaded first so that it outlives the team's.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cache.invalidate("m");
    load(&cache, &loads, "m", Ok(UserKeys::default()))
        .await
        .unwrap();
    assert_eq!(secret_of(&hit("acme").unwrap()), "sk-team-2");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(
        cache.get("m").is_some(),
        "the member's entry is still there"
    );
    assert!(hit("acme").is_none(), "the team's TTL ended the memo");

    // invalidate_all empties both caches.
    load(owners, &loads, "acme", Ok(keys("sk-team-3")))
        .await
        .unwrap();
    assert_eq!(secret_of(&hit("acme").unwrap()), "sk-team-3");
    cache.invalidate_all();
    assert!(hit("acme").is_none());
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

#[test]
fn what_is_held_stays_bounded_as_users_come_and_go() {
    // 320 users of capacity, a 1 ms TTL, and 5,000 distinct users passing through.
    let cache = KeyCache::new(Duration::from_millis(1), 320, Duration::from_secs(1), None);
    for batch in 0..50 {
        for i in 0..100 {
            let user = format!("user-{batch}-{i}");
            cache.insert(cache.stripe(&user), Arc::from(user), &keys("sk-1"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    cache.entries.run_pending_tasks();
    assert!(
        cache.entries.entry_count() <= 320,
        "{} entries held, capacity 320",
        cache.entries.entry_count()
    );
    assert!(
        cache.get("user-0-0").is_none(),
        "expired entries are never served"
    );
}

/// Loads `user` once with `sk-1` (a hit afterwards), then waits past `wait`.
async fn cached_then_wait(cache: &KeyCache, loads: &AtomicUsize, wait: Duration) {
    load(cache, loads, "u", Ok(keys("sk-1"))).await.unwrap();
    assert!(cache.get("u").is_some());
    tokio::time::sleep(wait).await;
}

#[tokio::test]
async fn invalidate_all_forgets_everyone_and_a_load_under_way_is_not_cached() {
    let (cache, loads) = cache(Duration::from_secs(3600), 100);
    load(&cache, &loads, "other", Ok(keys("sk-other")))
        .await
        .unwrap();
    let (release, gate) = tokio::sync::oneshot::channel::<()>();
    let gate = async { gate.await.unwrap() };
    let leader = spawn_leader(&cache, &loads, gate, Ok(keys("sk-old"))).await;
    cache.invalidate_all();
    assert!(cache.get("other").is_none(), "every entry is forgotten");
    release.send(()).unwrap();
    let old = leader.await.unwrap().unwrap();
    assert_eq!(old.get("openai").unwrap().expose_secret(), "sk-old");
    assert!(
        cache.get("u").is_none(),
        "a load that raced invalidate_all is not cached"
    );
    load(&cache, &loads, "u", Ok(keys("sk-new"))).await.unwrap();
    assert!(cache.get("u").is_some(), "later loads are cached again");
}

#[tokio::test]
async fn invalidate_all_stops_new_requests_joining_a_load_under_way() {
    let (cache, loads) = cache(Duration::from_secs(3600), 100);
    let leader = spawn_leader(&cache, &loads, std::future::pending(), Ok(keys("old"))).await;
    cache.invalidate_all();
    let keys = load(&cache, &loads, "u", Ok(keys("sk-new"))).await.unwrap();
    assert_eq!(keys.get("openai").unwrap().expose_secret(), "sk-new");
    assert_eq!(
        loads.load(Ordering::SeqCst),
        2,
        "a new load, not the old one"
    );
    leader.abort();
}

#[tokio::test]
async fn stale_keys_are_served_on_a_store_error_or_timeout_within_the_bound() {
    let (cache, loads) = stale_cache(Duration::from_millis(50), Some(Duration::from_secs(60)));
    cached_then_wait(&cache, &loads, Duration::from_millis(100)).await;
    assert!(cache.get("u").is_none(), "past the TTL, no hit");
    let stale = load(&cache, &loads, "u", Err(ErrorKind::Store))
        .await
        .unwrap();
    assert!(stale.is_stale());
    assert_eq!(stale.get("openai").unwrap().expose_secret(), "sk-1");
    assert_eq!(
        load(&cache, &loads, "u", Err(ErrorKind::Decrypt))
            .await
            .unwrap_err(),
        ErrorKind::Decrypt,
        "only store errors and timeouts fall back"
    );
    let fresh = load(&cache, &loads, "u", Ok(keys("sk-2"))).await.unwrap();
    assert!(!fresh.is_stale(), "a successful load is fresh");
    assert!(!cache.get("u").unwrap().is_stale());
}

#[tokio::test]
async fn stale_keys_are_served_when_a_load_times_out_within_the_bound() {
    let cache = KeyCache::new(
        Duration::from_millis(50),
        100,
        Duration::from_millis(20),
        Some(Duration::from_secs(60)),
    );
    let loads = AtomicUsize::new(0);
    cached_then_wait(&cache, &loads, Duration::from_millis(100)).await;
    let stale = cache
        .get_or_load("u", || async {
            std::future::pending::<()>().await;
            Ok(keys("never"))
        })
        .await
        .unwrap();
    assert!(stale.is_stale());
}

#[tokio::test]
async fn stale_keys_are_not_served_past_the_bound() {
    let (cache, loads) = stale_cache(Duration::from_millis(50), Some(Duration::from_millis(50)));
    cached_then_wait(&cache, &loads, Duration::from_millis(200)).await;
    assert_eq!(
        load(&cache, &loads, "u", Err(ErrorKind::Store))
            .await
            .unwrap_err(),
        ErrorKind::Store
    );
}

#[tokio::test]
async fn stale_keys_are_not_served_past_a_key_expiry() {
    let (cache, loads) = stale_cache(Duration::from_millis(50), Some(Duration::from_secs(60)));
    let expiring: UserKeys = [ProviderKey::from_secret("openai", "sk-1")
        .unwrap()
        .with_expiry(SystemTime::now() + Duration::from_millis(150))]
    .into_iter()
    .collect();
    load(&cache, &loads, "u", Ok(expiring)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        load(&cache, &loads, "u", Err(ErrorKind::Store))
            .await
            .unwrap_err(),
        ErrorKind::Store
    );
}

#[tokio::test]
async fn stale_keys_are_not_served_after_an_invalidation() {
    let (cache, loads) = stale_cache(Duration::from_millis(50), Some(Duration::from_secs(60)));
    cached_then_wait(&cache, &loads, Duration::from_millis(100)).await;
    cache.invalidate("u");
    assert_eq!(
        load(&cache, &loads, "u", Err(ErrorKind::Store))
            .await
            .unwrap_err(),
        ErrorKind::Store
    );
    cached_then_wait(&cache, &loads, Duration::from_millis(100)).await;
    cache.invalidate_all();
    assert_eq!(
        load(&cache, &loads, "u", Err(ErrorKind::Timeout))
            .await
            .unwrap_err(),
        ErrorKind::Timeout
    );
}

#[tokio::test]
async fn a_replacing_load_brings_its_own_deadline() {
    // The first load is kept a minute past its TTL; the load replacing it holds a key
    // that expires soon, and must leave moka then, not a minute later.
    let (cache, loads) = stale_cache(Duration::from_millis(50), Some(Duration::from_secs(60)));
    cached_then_wait(&cache, &loads, Duration::from_millis(100)).await;
    let expiring: UserKeys = [ProviderKey::from_secret("openai", "sk-2")
        .unwrap()
        .with_expiry(SystemTime::now() + Duration::from_millis(150))]
    .into_iter()
    .collect();
    load(&cache, &loads, "u", Ok(expiring)).await.unwrap();
    assert!(cache.get("u").is_some(), "the replacement is served");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        load(&cache, &loads, "u", Err(ErrorKind::Store))
            .await
            .unwrap_err(),
        ErrorKind::Store,
        "not even stale past the replacement's key expiry"
    );
}

#[tokio::test]
async fn without_a_bound_nothing_stale_is_served() {
    let (cache, loads) = stale_cache(Duration::from_millis(50), None);
    cached_then_wait(&cache, &loads, Duration::from_millis(100)).await;
    assert_eq!(
        load(&cache, &loads, "u", Err(ErrorKind::Store))
            .await
            .unwrap_err(),
        ErrorKind::Store
    );
}
