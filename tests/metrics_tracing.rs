//! Each load of a user's keys runs in a `tracing` span, `tower_byok.load`, that names
//! the user by the vault's keyed hash (`Vault::user_ref`) and never by the raw id; a
//! cache hit opens none.
#![allow(clippy::unwrap_used)]

mod common;

use common::logs::Capture;
use tower_byok::{Keyring, MasterKey, SqliteStore, Vault};
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::util::SubscriberInitExt;

// The default current-thread runtime: the subscriber set below is this thread's.
#[tokio::test]
async fn a_load_span_carries_the_user_ref_never_the_user_id() {
    let capture = Capture::default();
    let writer = capture.clone();
    let _guard = tracing_subscriber::fmt()
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(move || writer.clone())
        .finish()
        .set_default();

    let user = "raw-user-7c41d9";
    let keyring = Keyring::new(MasterKey::from_bytes("k1", [7; 32]).unwrap());
    let vault = Vault::open(SqliteStore::in_memory().await.unwrap(), keyring)
        .await
        .unwrap();
    vault.put(user, "openai", "sk-span-0001").await.unwrap();
    assert_eq!(vault.keys_for(user).await.unwrap().len(), 1); // a load
    assert_eq!(vault.keys_for(user).await.unwrap().len(), 1); // a hit

    let out = capture.text();
    let spans: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("tower_byok.load"))
        .collect();
    assert_eq!(spans.len(), 1, "one span closed, for the one load:\n{out}");
    let user_ref = format!("user_ref={}", vault.user_ref(user));
    assert!(spans[0].contains(&user_ref), "{user_ref} in:\n{out}");
    assert!(!out.contains(user), "the raw user id in:\n{out}");
}
