//! What the hit-path benches share (criterion's `hit_path`, the callgrind driver, and
//! `body` for its vault):
//! a vault with one cached user, the two floor layers, and polling a future that must be
//! ready at once.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use http::Request;
use tower::{Service, ServiceBuilder};
use tower_byok::{Keyring, MasterKey, SqliteStore, Vault};

/// Polls a future that must be ready at once (a cache hit completes synchronously).
pub(crate) fn ready_now<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the measured path is not ready at once"),
    }
}

/// A current-thread runtime and a vault whose `bench-user` has three keys, cached, with
/// a TTL longer than any run: every request for that user is a hit.
pub(crate) fn cached_vault() -> (tokio::runtime::Runtime, Vault) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let vault = rt.block_on(async {
        let keyring = Keyring::new(MasterKey::generate("k1").expect("key"));
        let vault = Vault::builder(SqliteStore::in_memory().await.expect("store"), keyring)
            .cache_ttl(std::time::Duration::from_secs(3600))
            .open()
            .await
            .expect("vault");
        for (provider, secret) in [
            ("openai", "sk-proj-bench-0001"),
            ("gemini", "AIza-bench-0002"),
            ("exa", "exa-bench-0003"),
        ] {
            vault
                .put("bench-user", provider, secret)
                .await
                .expect("put");
        }
        vault.keys_for("bench-user").await.expect("warm the cache");
        vault
    });
    (rt, vault)
}

/// The floor: a layer that inserts a prebuilt `Arc` into the extensions and looks
/// nothing up.
pub(crate) fn prebuilt_arc_floor<S>(
    inner: S,
) -> impl Service<Request<()>, Response = S::Response, Error = S::Error>
where
    S: Service<Request<()>>,
{
    let prebuilt = Arc::new(vec![("openai", "sk"), ("gemini", "AIza"), ("exa", "exa")]);
    ServiceBuilder::new()
        .map_request(move |mut req: Request<()>| {
            req.extensions_mut().insert(prebuilt.clone());
            req
        })
        .service(inner)
}

/// What a first attempt would write: a moka `get` of the user's `Arc` per request,
/// keyed by an owned copy of the header, then the insert.
pub(crate) fn naive_moka_layer<S>(
    inner: S,
) -> impl Service<Request<()>, Response = S::Response, Error = S::Error>
where
    S: Service<Request<()>>,
{
    let moka: moka::sync::Cache<String, Arc<Vec<(&str, &str)>>> = moka::sync::Cache::builder()
        .time_to_live(std::time::Duration::from_secs(30))
        .max_capacity(100_000)
        .build();
    moka.insert(
        "bench-user".to_owned(),
        Arc::new(vec![("openai", "sk"), ("gemini", "AIza"), ("exa", "exa")]),
    );
    ServiceBuilder::new()
        .map_request(move |mut req: Request<()>| {
            let user = req
                .headers()
                .get("x-user")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if let Some(keys) = user.and_then(|u| moka.get(&u)) {
                req.extensions_mut().insert(keys);
            }
            req
        })
        .service(inner)
}
