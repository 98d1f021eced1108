//! The `test-util` kit: the small helpers do what their docs say.
#![allow(clippy::unwrap_used)]

use tower_byok::test_util::{memory_vault, user_keys, TestVault};

// ---------------------------------------------------------------------------------
// The small helpers
// ---------------------------------------------------------------------------------

#[test]
fn user_keys_builds_what_a_handler_gets() {
    let keys = user_keys([
        ("OpenAI", "sk-first"),
        ("exa", "exa-1"),
        ("openai", "sk-second"),
    ]);
    assert_eq!(keys.providers().collect::<Vec<_>>(), ["exa", "openai"]);
    assert_eq!(keys.get("openai").unwrap().expose_secret(), "sk-second");
    assert!(user_keys::<&str, String>([]).is_empty());
}

#[test]
fn user_keys_panics_on_bad_input_without_showing_a_secret() {
    let panic = std::panic::catch_unwind(|| user_keys([("sk-Secret Value!", "openai")]));
    let message = panic.unwrap_err().downcast::<String>().unwrap();
    assert!(message.contains("pair 0"), "{message}");
    assert!(!message.contains("Secret"), "{message}");

    let panic = std::panic::catch_unwind(|| user_keys([("openai", "sk-ok"), ("gemini", "")]));
    let message = panic.unwrap_err().downcast::<String>().unwrap();
    assert!(message.contains("pair 1, the gemini key"), "{message}");
}

#[tokio::test]
async fn a_test_vault_keeps_keys_across_a_reopening_and_cleans_up() {
    let test_vault = TestVault::new().await;
    let path = test_vault.path().to_owned();
    test_vault
        .vault()
        .put("alice", "openai", "sk-test-alice-0001")
        .await
        .unwrap();
    let reopened = test_vault.reopen().await;
    let key = reopened.get("alice", "openai").await.unwrap().unwrap();
    assert_eq!(key.expose_secret(), "sk-test-alice-0001");
    assert!(reopened.get_all("bob").await.unwrap().is_empty());
    assert!(!format!("{test_vault:?}").contains("sk-"));
    drop(reopened);
    drop(test_vault);
    assert!(
        !path.parent().unwrap().exists(),
        "the temporary directory is removed"
    );
}

#[tokio::test]
async fn a_memory_vault_is_private_to_each_call() {
    let one = memory_vault().await;
    let two = memory_vault().await;
    one.put("alice", "openai", "sk-test-alice-0001")
        .await
        .unwrap();
    assert!(two.get_all("alice").await.unwrap().is_empty());
}
