//! A running application sees the binary's writes: the CLI is another process, and the
//! change feed carries its deletes and replacements to a vault whose cache TTL is an
//! hour.

use std::time::{Duration, Instant};

use tower_byok::store::KeyStore;
use tower_byok::{Keyring, PostgresStore, SqliteStore, Vault, VaultBuilder};

use crate::common::Backend;
use crate::Env;

crate::per_backend!(a_running_app_sees_the_clis_writes);

async fn app(env: &Env) -> Vault {
    fn following<S: KeyStore>(store: S, keyring: Keyring) -> VaultBuilder<S> {
        Vault::builder(store, keyring)
            .cache_ttl(Duration::from_secs(3600))
            .poll_interval(Duration::from_millis(200))
    }
    let keyring = Keyring::from_file(env.path("k1.keys")).unwrap();
    let vault = match env.backend {
        Backend::Sqlite => {
            let store = SqliteStore::connect(&env.url).await.unwrap();
            following(store, keyring).open().await
        }
        #[cfg(feature = "postgres")]
        Backend::Postgres => {
            let store = PostgresStore::connect(&env.url).await.unwrap();
            following(store, keyring).open().await
        }
    };
    vault.unwrap()
}

async fn served(app: &Vault) -> Option<String> {
    let keys = app.keys_for("alice").await.unwrap();
    keys.get("openai").map(|k| k.expose_secret().to_owned())
}

async fn a_running_app_sees_the_clis_writes(backend: Backend) {
    let env = Env::new(backend).await;
    env.keygen("k1", "k1.keys");
    env.put("k1.keys", "alice", "openai", "sk-alice-first-0001");
    let app = app(&env).await;
    assert_eq!(served(&app).await.as_deref(), Some("sk-alice-first-0001"));

    env.put("k1.keys", "alice", "openai", "sk-alice-second-0002");
    let deadline = Instant::now() + Duration::from_secs(5);
    while served(&app).await.as_deref() != Some("sk-alice-second-0002") {
        assert!(Instant::now() < deadline, "the CLI's replace was not seen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "delete",
            "--user",
            "alice",
            "--all",
        ],
        None,
    )
    .ok();
    let deadline = Instant::now() + Duration::from_secs(5);
    while served(&app).await.is_some() {
        assert!(Instant::now() < deadline, "the CLI's delete was not seen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
