//! A store written outside the crate, as an application would: an in-memory map behind
//! a mutex, implementing the core [`KeyStore`] and one capability ([`AuditStore`]) with
//! nothing but the public API, run through real vault operations and a real layer.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_byok::resolve::FromHeader;
use tower_byok::store::{AuditQuery, AuditStore, KeyStore, StoredKey};
use tower_byok::{
    AuditAction, AuditRecord, ByokLayer, Error, ErrorKind, Keyring, MasterKey, Result, UserKeys,
    Vault,
};

/// Everything the store holds, behind one lock: a write and its audit record change
/// together, which is this store's transaction.
#[derive(Default)]
struct State {
    keys: BTreeMap<(String, String), StoredKey>,
    audit: Vec<AuditRecord>,
    checks: Vec<(String, Vec<u8>, i64)>,
}

#[derive(Clone, Default)]
struct MemStore {
    state: Arc<Mutex<State>>,
    /// When set, every read fails as a database outage would.
    down: Arc<AtomicBool>,
    /// When set, the schema is refused.
    bad_schema: bool,
}

impl MemStore {
    fn check_up(&self) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "replica down");
            return Err(Error::store(io));
        }
        Ok(())
    }
}

fn record(audit: &AuditRecord, provider: &str, action: AuditAction) -> AuditRecord {
    AuditRecord {
        provider: provider.to_owned(),
        action,
        ..audit.clone()
    }
}

impl KeyStore for MemStore {
    async fn migrate(&self) -> Result<()> {
        if self.bad_schema {
            let io = std::io::Error::other("schema 9 is newer than this application");
            return Err(Error::migration(io));
        }
        Ok(())
    }

    async fn fetch_user(&self, user_id: &str) -> Result<Vec<StoredKey>> {
        self.check_up()?;
        let state = self.state.lock().unwrap();
        // The map is ordered by (user, provider) as bytes: the user's rows by provider.
        Ok(state
            .keys
            .values()
            .filter(|k| k.user_id == user_id)
            .cloned()
            .collect())
    }

    async fn fetch_key(&self, user_id: &str, provider: &str) -> Result<Option<StoredKey>> {
        self.check_up()?;
        let state = self.state.lock().unwrap();
        Ok(state
            .keys
            .get(&(user_id.to_owned(), provider.to_owned()))
            .cloned())
    }

    async fn upsert(
        &self,
        row: &StoredKey,
        audit: &AuditRecord,
        max_providers: u32,
    ) -> Result<AuditAction> {
        // The count and the insert under one lock: concurrent puts cannot overshoot.
        let mut state = self.state.lock().unwrap();
        let id = (row.user_id.clone(), row.provider.clone());
        if !state.keys.contains_key(&id) {
            let held = state.keys.keys().filter(|(u, _)| *u == row.user_id).count();
            if held >= max_providers as usize {
                return Err(ErrorKind::TooManyProviders.into());
            }
        }
        let action = match state.keys.get(&id) {
            Some(old) => {
                let created_at = old.created_at;
                state.keys.insert(
                    id,
                    StoredKey {
                        created_at,
                        ..row.clone()
                    },
                );
                AuditAction::Replace
            }
            None => {
                state.keys.insert(id, row.clone());
                AuditAction::Put
            }
        };
        state.audit.push(record(audit, &row.provider, action));
        Ok(action)
    }

    async fn delete(
        &self,
        user_id: &str,
        provider: Option<&str>,
        audit: &AuditRecord,
    ) -> Result<Vec<String>> {
        let mut state = self.state.lock().unwrap();
        let doomed: Vec<(String, String)> = state
            .keys
            .keys()
            .filter(|(u, p)| u == user_id && provider.is_none_or(|want| p == want))
            .cloned()
            .collect();
        let mut deleted = Vec::new();
        for id in doomed {
            state.keys.remove(&id);
            state.audit.push(record(audit, &id.1, AuditAction::Delete));
            deleted.push(id.1);
        }
        Ok(deleted)
    }

    async fn check_records(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let state = self.state.lock().unwrap();
        Ok(state
            .checks
            .iter()
            .map(|(id, sealed, _)| (id.clone(), sealed.clone()))
            .collect())
    }

    async fn add_check_records(
        &self,
        records: &[(&str, Vec<u8>)],
        at: i64,
        only_if_none: bool,
    ) -> Result<usize> {
        let mut state = self.state.lock().unwrap();
        if only_if_none && !state.checks.is_empty() {
            return Ok(0);
        }
        let mut added = 0;
        for (id, sealed) in records {
            if !state.checks.iter().any(|(have, _, _)| have == id) {
                state.checks.push(((*id).to_owned(), sealed.clone(), at));
                added += 1;
            }
        }
        Ok(added)
    }

    async fn key_usage(&self) -> Result<Vec<(String, i64)>> {
        let state = self.state.lock().unwrap();
        let mut usage = BTreeMap::<String, i64>::new();
        for key in state.keys.values() {
            *usage.entry(key.key_id.clone()).or_default() += 1;
        }
        Ok(usage.into_iter().collect())
    }

    fn audit(&self) -> Option<&impl AuditStore> {
        Some(self)
    }
}

impl AuditStore for MemStore {
    async fn audit_trail(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>> {
        let state = self.state.lock().unwrap();
        let limit = query.limit.map_or(usize::MAX, |l| l as usize);
        Ok(state
            .audit
            .iter()
            .filter(|r| query.user_ref.as_ref().is_none_or(|u| *u == r.user_ref))
            .filter(|r| query.since.is_none_or(|t| r.at >= t))
            .filter(|r| query.until.is_none_or(|t| r.at < t))
            .take(limit)
            .cloned()
            .collect())
    }
}

fn keyring() -> Keyring {
    Keyring::new(MasterKey::from_bytes("k1", [7; 32]).unwrap())
}

#[tokio::test]
async fn vault_operations_run_on_a_store_written_outside_the_crate() {
    let store = MemStore::default();
    let vault = Vault::open(store.clone(), keyring()).await.unwrap();

    let put = vault.put("alice", "OpenAI", "sk-alice-first-0123456789");
    assert_eq!(put.await.unwrap(), AuditAction::Put);
    let replace = vault.put("alice", "openai", "sk-alice-second-0123456789");
    assert_eq!(replace.await.unwrap(), AuditAction::Replace);
    vault
        .put("alice", "anthropic", "sk-ant-alice-0123456789")
        .await
        .unwrap();
    vault
        .put("bob", "openai", "sk-bob-0123456789")
        .await
        .unwrap();

    let key = vault.get("alice", "openai").await.unwrap().unwrap();
    assert_eq!(key.expose_secret(), "sk-alice-second-0123456789");
    let listed: Vec<String> = vault
        .list("alice")
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.provider)
        .collect();
    assert_eq!(listed, ["anthropic", "openai"]);
    assert_eq!(vault.get_all("bob").await.unwrap().len(), 1);

    // The store holds sealed bytes only.
    let sealed = store.state.lock().unwrap().keys[&("bob".into(), "openai".into())].clone();
    assert!(!sealed.sealed.windows(6).any(|w| w == b"sk-bob"));

    assert!(vault.delete("alice", "openai").await.unwrap());
    assert!(!vault.delete("alice", "openai").await.unwrap());
    assert_eq!(vault.delete_all("alice").await.unwrap(), 1);
    assert!(vault.get_all("alice").await.unwrap().is_empty());

    // The audit capability, implemented outside too.
    let actions: Vec<(String, AuditAction)> = vault
        .audit_trail("alice")
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.provider, r.action))
        .collect();
    assert_eq!(
        actions,
        [
            ("openai".to_owned(), AuditAction::Put),
            ("openai".to_owned(), AuditAction::Replace),
            ("anthropic".to_owned(), AuditAction::Put),
            ("openai".to_owned(), AuditAction::Delete),
            ("anthropic".to_owned(), AuditAction::Delete),
        ]
    );

    // The check record it keeps proves the keyring to the next vault on the same data.
    let again = Vault::open(store.clone(), keyring()).await.unwrap();
    assert!(again.get("bob", "openai").await.unwrap().is_some());
    let wrong = Keyring::new(MasterKey::from_bytes("k1", [8; 32]).unwrap());
    let err = Vault::open(store, wrong).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongMasterKey);
}

#[tokio::test]
async fn capabilities_it_lacks_answer_unsupported() {
    let vault = Vault::open(MemStore::default(), keyring()).await.unwrap();
    let in_an_hour = SystemTime::now() + Duration::from_secs(3600);
    vault
        .put_expiring("alice", "openai", "sk-alice-0123456789", in_an_hour)
        .await
        .unwrap();
    let unsupported = |e: Error| {
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        e.to_string()
    };
    let msg = unsupported(vault.rewrap(10, |_| {}).await.unwrap_err());
    assert!(msg.contains("RotationStore"), "{msg}");
    unsupported(vault.verify(|_| {}).await.unwrap_err());
    unsupported(vault.retire_master_key("k0").await.unwrap_err());
    let msg = unsupported(vault.set_expiry("alice", "openai", None).await.unwrap_err());
    assert!(msg.contains("ExpiryStore"), "{msg}");
    unsupported(vault.purge_expired().await.unwrap_err());

    // What it has still works, and nothing was changed by the refusals.
    let info = &vault.list("alice").await.unwrap()[0];
    assert!(info.expires_at.is_some());
    assert_eq!(vault.master_key_usage().await.unwrap()[0].rows, 1);
}

#[tokio::test]
async fn a_layer_request_is_served_from_it_and_its_outage_answers_503() {
    let store = MemStore::default();
    let vault = Vault::open(store.clone(), keyring()).await.unwrap();
    vault
        .put("bob", "gemini", "AIza-bob-0123456789")
        .await
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(ByokLayer::new(vault, FromHeader::new("x-user")))
        .service(service_fn(|req: Request<String>| async move {
            let keys = req.extensions().get::<UserKeys>().cloned().unwrap();
            let secret = keys.get("gemini").map(|k| k.expose_secret().to_owned());
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::from(
                secret.unwrap_or_default(),
            )))
        }));
    let request = |user: &str| {
        Request::get("/")
            .header("x-user", user)
            .body(String::new())
            .unwrap()
    };

    let res = service.clone().oneshot(request("bob")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"AIza-bob-0123456789");

    store.down.store(true, Ordering::SeqCst);
    let res = service.oneshot(request("carol")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn its_schema_failure_is_a_migration_error() {
    let store = MemStore {
        bad_schema: true,
        ..MemStore::default()
    };
    let err = Vault::open(store, keyring()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Migration);
    assert!(std::error::Error::source(&err).is_some());
}
