//! The user id, provider and secret rules of `ProviderKey::from_secret` and `Vault::put`
//! against the documented rules, and no secret in an error.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tower_byok::{ErrorKind, Keyring, MasterKey, ProviderKey, SqliteStore, Vault};

fn user_id_ok(id: &str) -> bool {
    (1..=255).contains(&id.len()) && !id.chars().any(char::is_control) && id.trim() == id
}

fn provider_ok(name: &str) -> bool {
    let name = name.trim().to_ascii_lowercase();
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c))
        && name.len() <= 64
}

fn secret_ok(secret: &str) -> bool {
    (1..=16 * 1024).contains(&secret.len())
}

fn env() -> &'static (tokio::runtime::Runtime, Vault) {
    static ENV: OnceLock<(tokio::runtime::Runtime, Vault)> = OnceLock::new();
    ENV.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let vault = rt.block_on(async {
            let store = SqliteStore::in_memory().await.expect("store");
            Vault::open(store, Keyring::new(MasterKey::generate("k1").expect("key")))
                .await
                .expect("vault")
        });
        (rt, vault)
    })
}

fuzz_target!(|input: (&str, &str, &str)| {
    let (user, provider, secret) = input;
    let hidden = |e: &tower_byok::Error| {
        let shown = format!("{e} {e:?}");
        assert!(
            secret.len() < 8 || !shown.contains(secret),
            "error echoes the secret: {shown}"
        );
    };

    let expected = provider_ok(provider) && secret_ok(secret);
    match ProviderKey::from_secret(provider, secret) {
        Ok(key) => {
            assert!(expected, "accepted {provider:?}");
            assert_eq!(key.expose_secret(), secret);
        }
        Err(e) => {
            assert!(!expected, "refused {provider:?}: {e}");
            hidden(&e);
        }
    }

    let (rt, vault) = env();
    let expected = expected && user_id_ok(user);
    match rt.block_on(vault.put(user, provider, secret)) {
        Ok(_) => {
            assert!(expected, "put accepted {user:?} / {provider:?}");
            let got = rt
                .block_on(vault.get(user, provider))
                .expect("get")
                .expect("stored");
            assert_eq!(got.expose_secret(), secret);
            rt.block_on(vault.delete(user, provider)).expect("delete");
        }
        Err(e) => {
            assert!(!expected, "put refused {user:?} / {provider:?}: {e}");
            assert!(matches!(
                e.kind(),
                ErrorKind::InvalidUserId | ErrorKind::InvalidProvider | ErrorKind::InvalidSecret
            ));
            hidden(&e);
        }
    }
});
