//! Proves that `docs/FORMAT.md` is enough to read a tower-byok database without the
//! crate: the vault writes rows through its public API, and this file opens them with
//! raw SQL, the `hkdf`, `sha2`, `hmac` and `chacha20poly1305` crates and nothing but the
//! constants and steps the document gives. No crate-internal function is called.
//!
//! The test vectors of the document are checked both ways: this file's reading of the
//! document derives them, and the crate opens a row built from them.
#![cfg(feature = "sqlite")]

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use tower_byok::{ErrorKind, KeySource, Keyring, MasterKey, Owner, SqliteStore, Vault};

/// The document itself: its test vectors must appear in it verbatim.
const FORMAT_MD: &str = include_str!("../docs/FORMAT.md");

// ---- Constants, as FORMAT.md gives them. ------------------------------------------

/// HKDF-SHA256 salt for every derivation.
const HKDF_SALT: &[u8] = b"tower-byok v1";
/// First byte of every sealed blob and of its associated data.
const VERSION: u8 = 0x01;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// HKDF info labels.
const LABEL_USER_KEY: &[u8] = b"user-key";
const LABEL_FINGERPRINT: &[u8] = b"fingerprint";
const LABEL_USER_REF: &[u8] = b"user-ref";
const LABEL_OWNER_KEY: &[u8] = b"owner-key";

// ---- The recipe of FORMAT.md, written from the document. ---------------------------

/// `u32` big-endian length, then the bytes.
fn push_lp(out: &mut Vec<u8>, field: &[u8]) {
    let len = u32::try_from(field.len()).expect("field under 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(field);
}

/// The HKDF info: every field length-prefixed, concatenated.
fn info(fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for field in fields {
        push_lp(&mut out, field);
    }
    out
}

fn hkdf32(ikm: &[u8], fields: &[&[u8]]) -> [u8; 32] {
    let mut out = [0u8; 32];
    Hkdf::<Sha256>::new(Some(HKDF_SALT), ikm)
        .expand(&info(fields), &mut out)
        .expect("32 bytes is a valid HKDF-SHA256 length");
    out
}

/// Step 2 of the recipe: the user's key under one master key.
fn user_key(master: &[u8; 32], user_id: &str) -> [u8; 32] {
    hkdf32(master, &[LABEL_USER_KEY, user_id.as_bytes()])
}

/// `0x01 || lp(key_id) || lp(user_id) || lp(provider)`.
fn associated_data(key_id: &str, user_id: &str, provider: &str) -> Vec<u8> {
    let mut out = vec![VERSION];
    push_lp(&mut out, key_id.as_bytes());
    push_lp(&mut out, user_id.as_bytes());
    push_lp(&mut out, provider.as_bytes());
    out
}

/// §4: the key of a team's or the platform's rows.
fn owner_key(master: &[u8; 32], kind: &str, owner_id: &str) -> [u8; 32] {
    hkdf32(
        master,
        &[LABEL_OWNER_KEY, kind.as_bytes(), owner_id.as_bytes()],
    )
}

/// §6: `0x01 || lp(key_id) || lp(owner_id) || lp(provider) || lp(owner_kind)`.
fn owner_associated_data(key_id: &str, kind: &str, owner_id: &str, provider: &str) -> Vec<u8> {
    let mut out = associated_data(key_id, owner_id, provider);
    push_lp(&mut out, kind.as_bytes());
    out
}

/// The recipe for a row of any owner kind (`owner_kind` column): a user's row is the
/// original recipe, any other kind's uses §4's owner key and §6's longer associated data.
fn open_owned(
    master: &[u8; 32],
    key_id: &str,
    (kind, owner_id): (&str, &str),
    provider: &str,
    sealed: &[u8],
) -> Option<Vec<u8>> {
    if kind == "user" {
        return open_blob(master, key_id, owner_id, provider, sealed);
    }
    if sealed.len() < 1 + NONCE_LEN + TAG_LEN || sealed[0] != VERSION {
        return None;
    }
    let nonce = <&XNonce>::try_from(&sealed[1..1 + NONCE_LEN]).ok()?;
    let key = owner_key(master, kind, owner_id);
    let aad = owner_associated_data(key_id, kind, owner_id, provider);
    XChaCha20Poly1305::new((&key).into())
        .decrypt(
            nonce,
            Payload {
                msg: &sealed[1 + NONCE_LEN..],
                aad: &aad,
            },
        )
        .ok()
}

/// §8.2: the reference of a team or the platform in the audit trail.
fn owner_ref(vault_secret: &[u8; 32], kind: &str, owner_id: &str) -> String {
    let key = hkdf32(vault_secret, &[LABEL_USER_REF]);
    hex(&hmac_sha256(&key, &info(&[kind.as_bytes(), owner_id.as_bytes()]))[..16])
}

/// The decryption recipe: `None` wherever the document says the row does not open.
fn open_blob(
    master: &[u8; 32],
    key_id: &str,
    user_id: &str,
    provider: &str,
    sealed: &[u8],
) -> Option<Vec<u8>> {
    if sealed.len() < 1 + NONCE_LEN + TAG_LEN || sealed[0] != VERSION {
        return None;
    }
    let nonce = <&XNonce>::try_from(&sealed[1..1 + NONCE_LEN]).ok()?;
    // The AEAD input is ciphertext || tag, i.e. everything after the nonce.
    let ciphertext_and_tag = &sealed[1 + NONCE_LEN..];
    let key = user_key(master, user_id);
    let aad = associated_data(key_id, user_id, provider);
    XChaCha20Poly1305::new((&key).into())
        .decrypt(
            nonce,
            Payload {
                msg: ciphertext_and_tag,
                aad: &aad,
            },
        )
        .ok()
}

/// A stored provider key: the plaintext must be UTF-8.
fn open_text(
    master: &[u8; 32],
    key_id: &str,
    user_id: &str,
    provider: &str,
    sealed: &[u8],
) -> Option<String> {
    String::from_utf8(open_blob(master, key_id, user_id, provider, sealed)?).ok()
}

/// The vault secret, from the check record sealed under `key_id` (user `""`, provider `""`).
fn open_vault_secret(master: &[u8; 32], key_id: &str, sealed: &[u8]) -> [u8; 32] {
    let bytes = open_blob(master, key_id, "", "", sealed).expect("the check record opens");
    bytes.try_into().expect("the vault secret is 32 bytes")
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

/// 8 lowercase hex digits: the first 4 bytes of HMAC-SHA256(fingerprint key, secret).
fn fingerprint(vault_secret: &[u8; 32], secret: &str) -> String {
    let key = hkdf32(vault_secret, &[LABEL_FINGERPRINT]);
    hex(&hmac_sha256(&key, secret.as_bytes())[..4])
}

/// 32 lowercase hex digits: the first 16 bytes of HMAC-SHA256(user-ref key, user id).
fn user_ref(vault_secret: &[u8; 32], user_id: &str) -> String {
    let key = hkdf32(vault_secret, &[LABEL_USER_REF]);
    hex(&hmac_sha256(&key, user_id.as_bytes())[..16])
}

/// The `hint` rule of FORMAT.md.
fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.trim().chars().collect();
    let n = (chars.len() / 8).min(4);
    let head = &chars[..n];
    let tail = &chars[chars.len() - n..];
    let mut out = String::new();
    if !head.iter().any(|c| c.is_control()) {
        out.extend(head);
    }
    out.push('\u{2026}');
    if !tail.iter().any(|c| c.is_control()) {
        out.extend(tail);
    }
    out
}

/// The keyring text format: lines whose first non-blank character is `#` skipped whole;
/// the other lines split on `,`, pieces trimmed, blank ones skipped; `<id>:<base64>`;
/// the first entry is active.
fn parse_keyring(text: &str) -> Vec<(String, [u8; 32])> {
    text.split('\n')
        .filter(|line| !line.trim_start().starts_with('#'))
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let (id, b64) = entry.split_once(':').expect("`<id>:<base64>`");
            let bytes: [u8; 32] = base64_decode(b64.trim())
                .try_into()
                .expect("a master key is 32 bytes");
            (id.trim().to_owned(), bytes)
        })
        .collect()
}

// ---- Byte helpers (no extra dependencies). ------------------------------------------

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .map(|b| match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => panic!("not a hex digit: {}", char::from(b)),
        })
        .collect();
    assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
    digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect()
}

/// Standard alphabet (`+`, `/`), trailing `=` padding optional.
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.trim_end_matches('=').bytes() {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .expect("standard base64 alphabet");
        acc = acc << 6 | u32::try_from(v).expect("index below 64");
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).expect("masked to a byte"));
        }
    }
    out
}

fn unix_ms_now() -> i64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    i64::try_from(ms).expect("fits in i64")
}

// ---- Raw SQL access, beside the vault's own pool. ------------------------------------

async fn raw_pool(path: &Path) -> SqlitePool {
    SqlitePool::connect_with(SqliteConnectOptions::new().filename(path))
        .await
        .expect("a second connection to the database file")
}

async fn sealed_row(pool: &SqlitePool, user_id: &str, provider: &str) -> (String, Vec<u8>) {
    sqlx::query_as::<_, (String, Vec<u8>)>(
        "SELECT key_id, sealed FROM byok_keys WHERE user_id = ? AND provider = ?",
    )
    .bind(user_id)
    .bind(provider)
    .fetch_one(pool)
    .await
    .expect("the row exists")
}

async fn check_records(pool: &SqlitePool) -> Vec<(String, Vec<u8>)> {
    sqlx::query_as::<_, (String, Vec<u8>)>(
        "SELECT key_id, sealed FROM byok_check ORDER BY created_at, key_id",
    )
    .fetch_all(pool)
    .await
    .expect("byok_check is readable")
}

// ---- Tests. ---------------------------------------------------------------------------

#[tokio::test]
async fn a_stored_row_opens_with_only_the_document() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys.db");
    let master: [u8; 32] = std::array::from_fn(|i| u8::try_from(i * 7 + 3).expect("< 256"));
    let keyring = Keyring::new(MasterKey::from_bytes("main-2026.a", master).expect("key"));
    let vault = Vault::open(SqliteStore::open(&path).await.expect("store"), keyring)
        .await
        .expect("vault");

    let user = "usér|42";
    let secret = "sk-proj-FORMAT-test-0123456789";
    let before = unix_ms_now();
    // The provider name is normalized (lowercased) before it is stored and bound.
    vault.put(user, "OpenAI", secret).await.expect("put");
    let after = unix_ms_now();

    let pool = raw_pool(&path).await;

    // The row: key id of the active master key, blob = 0x01 || nonce || ct || tag.
    let (key_id, sealed) = sealed_row(&pool, user, "openai").await;
    assert_eq!(key_id, "main-2026.a");
    assert_eq!(sealed[0], VERSION);
    assert_eq!(sealed.len(), 1 + NONCE_LEN + secret.len() + TAG_LEN);
    let opened = open_text(&master, &key_id, user, "openai", &sealed).expect("row opens");
    assert_eq!(opened, secret);

    // What the document says makes a row fail to open.
    assert!(open_blob(&master, &key_id, "usér|4", "openai", &sealed).is_none());
    assert!(open_blob(&master, &key_id, "usér", "|42openai", &sealed).is_none());
    assert!(open_blob(&master, &key_id, user, "gemini", &sealed).is_none());
    assert!(open_blob(&master, "main-2026.b", user, "openai", &sealed).is_none());
    let mut other_master = master;
    other_master[31] ^= 1;
    assert!(open_blob(&other_master, &key_id, user, "openai", &sealed).is_none());
    for i in [0, 1, 24, 25, sealed.len() - 1] {
        let mut bad = sealed.clone();
        bad[i] ^= 0x80;
        assert!(
            open_blob(&master, &key_id, user, "openai", &bad).is_none(),
            "byte {i}"
        );
    }

    // The check record: the vault secret sealed under the master key, user "" provider "".
    let checks = check_records(&pool).await;
    assert_eq!(checks.len(), 1);
    assert_eq!(checks[0].0, "main-2026.a");
    assert_eq!(checks[0].1.len(), 1 + NONCE_LEN + 32 + TAG_LEN);
    let vault_secret = open_vault_secret(&master, &checks[0].0, &checks[0].1);

    // hint, fingerprint and timestamps of the row.
    let (hint, fp, created_at, updated_at, expires_at) =
        sqlx::query_as::<_, (String, String, i64, i64, Option<i64>)>(
            "SELECT hint, fingerprint, created_at, updated_at, expires_at FROM byok_keys \
             WHERE user_id = ? AND provider = ?",
        )
        .bind(user)
        .bind("openai")
        .fetch_one(&pool)
        .await
        .expect("row");
    assert_eq!(fp, fingerprint(&vault_secret, secret));
    assert_eq!(fp.len(), 8);
    assert_eq!(fp, vault.fingerprint(secret), "the public API agrees");
    assert_eq!(hint, mask(secret));
    assert_eq!(hint, "sk-\u{2026}789");
    assert!((before..=after).contains(&created_at), "Unix milliseconds");
    assert_eq!(updated_at, created_at);
    assert_eq!(expires_at, None);

    // The audit record names the user only by its reference.
    let audit = sqlx::query_as::<_, (i64, String, String, String, String)>(
        "SELECT at, user_ref, provider, action, actor FROM byok_audit ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .expect("audit rows");
    assert_eq!(audit.len(), 1);
    let (at, audit_ref, audit_provider, action, actor) = &audit[0];
    assert!((before..=after).contains(at));
    assert_eq!(*audit_ref, user_ref(&vault_secret, user));
    assert_eq!(audit_ref.len(), 32);
    assert_eq!(*audit_ref, vault.user_ref(user), "the public API agrees");
    assert_eq!(
        (audit_provider.as_str(), action.as_str(), actor.as_str()),
        ("openai", "put", "app")
    );

    // The migrations table: version 1, SHA-256 of the migration file in lowercase hex.
    let migrations = sqlx::query_as::<_, (i64, String, String, i64)>(
        "SELECT version, description, checksum, applied_at FROM byok_migrations",
    )
    .fetch_all(&pool)
    .await
    .expect("byok_migrations");
    let files = [
        (
            1,
            "init",
            include_str!("../migrations/sqlite/0001_init.sql"),
        ),
        (
            2,
            "change feed",
            include_str!("../migrations/sqlite/0002_changes.sql"),
        ),
        (
            3,
            "owners",
            include_str!("../migrations/sqlite/0003_owners.sql"),
        ),
    ];
    assert_eq!(migrations.len(), files.len());
    for ((version, description, checksum, applied_at), (v, d, sql)) in migrations.iter().zip(files)
    {
        assert_eq!((*version, description.as_str()), (v, d));
        assert_eq!(*checksum, hex(&Sha256::digest(sql.as_bytes())));
        assert!(*applied_at <= after);
    }

    // The change feed: the put above is one row naming the user, at a time in range.
    let changes = sqlx::query_as::<_, (i64, Option<String>, i64)>(
        "SELECT seq, user_id, at FROM byok_changes",
    )
    .fetch_all(&pool)
    .await
    .expect("byok_changes");
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].1.as_deref(), Some(user));
    assert!((before - 1000..=after + 1000).contains(&changes[0].2));

    // More secrets through the same recipe: the hint rule on its edge cases, and the
    // plaintext stored as given (not trimmed).
    let cases = [
        ("p1", "abcdefghij"),
        ("p2", "abcdefg"),
        ("p3", "abc"),
        ("p4", "  padded-secret-value\n"),
        ("p5", "ключ-секрет-длинный"),
        ("p6", "{\n \"type\": \"service_account\"\n}\n"),
        ("p7", "\u{1b}[31mredsecretvalue"),
    ];
    for (provider, secret) in cases {
        vault.put(user, provider, secret).await.expect("put");
        let (key_id, sealed) = sealed_row(&pool, user, provider).await;
        let opened = open_text(&master, &key_id, user, provider, &sealed).expect("opens");
        assert_eq!(opened, secret);
        let (hint, fp) = sqlx::query_as::<_, (String, String)>(
            "SELECT hint, fingerprint FROM byok_keys WHERE user_id = ? AND provider = ?",
        )
        .bind(user)
        .bind(provider)
        .fetch_one(&pool)
        .await
        .expect("row");
        assert_eq!(hint, mask(secret), "{secret:?}");
        assert_eq!(fp, fingerprint(&vault_secret, secret), "{secret:?}");
    }
    // The examples of the document's hint table.
    for (secret, hint) in [
        ("sk-proj-FORMAT-test-0123456789", "sk-…789"),
        ("sk-proj-FORMAT-test-0123456789abc", "sk-p…9abc"),
        ("abcdefghij", "a…j"),
        ("abcdefg", "…"),
        ("abc", "…"),
        ("ключ-секрет-длинный", "кл…ый"),
        ("{\n \"type\": \"service_account\"\n}\n", "…"),
        ("\u{1b}[31mredsecretvalue", "…ue"),
    ] {
        assert_eq!(mask(secret), hint, "{secret:?}");
    }
    pool.close().await;
}

#[tokio::test]
async fn keyring_text_gives_the_master_keys_of_the_recipe() {
    // Written by hand in the documented text format: the first entry is active; padding
    // is optional; `,` separates entries like a newline does.
    const K2: &str = "3qnzk/5v4ujdjaxNCs11iXQiJVdbFgrtYcTcEHiLbyg=";
    const K1: &str = "bEOio099VofhxPk4n8UURzobdmC6dM6uQ4UjWyyDPjU";
    let text = format!("# test keyring, the first key is active\nk2:{K2}\n\nk1 : {K1}\n");

    let parsed = parse_keyring(&text);
    assert_eq!(parsed.len(), 2);
    let (active_id, k2) = parsed[0].clone();
    let (old_id, k1) = parsed[1].clone();
    assert_eq!((active_id.as_str(), old_id.as_str()), ("k2", "k1"));
    assert_eq!(
        hex(&k2),
        "dea9f393fe6fe2e8dd8dac4d0acd7589742225575b160aed61c4dc10788b6f28"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys.db");
    let vault = Vault::open(
        SqliteStore::open(&path).await.expect("store"),
        Keyring::parse(&text).expect("keyring"),
    )
    .await
    .expect("vault");
    vault
        .put("usér|42", "openai", "sk-proj-FORMAT-test-0123456789")
        .await
        .expect("put");
    drop(vault);

    let pool = raw_pool(&path).await;
    let (key_id, sealed) = sealed_row(&pool, "usér|42", "openai").await;
    assert_eq!(key_id, active_id, "sealed under the first entry");
    assert_eq!(
        open_text(&k2, &key_id, "usér|42", "openai", &sealed).as_deref(),
        Some("sk-proj-FORMAT-test-0123456789")
    );
    assert!(open_blob(&k1, &key_id, "usér|42", "openai", &sealed).is_none());

    // Rotate: k1 first now, on one line with a comma. Opening adds a check record for
    // the new active key holding the same vault secret; new rows name k1.
    let rotated = format!("k1:{K1}, k2:{K2}");
    let vault = Vault::open(
        SqliteStore::open(&path).await.expect("store"),
        Keyring::parse(&rotated).expect("keyring"),
    )
    .await
    .expect("vault");
    vault
        .put("usér|42", "gemini", "AIza-FORMAT-test-9876543210")
        .await
        .expect("put");
    drop(vault);

    let checks = check_records(&pool).await;
    assert_eq!(checks.len(), 2);
    let keys = [("k1", k1), ("k2", k2)];
    let secrets: Vec<[u8; 32]> = checks
        .iter()
        .map(|(id, sealed)| {
            let (_, master) = keys.iter().find(|(k, _)| k == id).expect("known key id");
            open_vault_secret(master, id, sealed)
        })
        .collect();
    assert_eq!(
        secrets[0], secrets[1],
        "one vault secret under every master key"
    );

    let (key_id, sealed) = sealed_row(&pool, "usér|42", "gemini").await;
    assert_eq!(key_id, "k1");
    assert_eq!(
        open_text(&k1, "k1", "usér|42", "gemini", &sealed).as_deref(),
        Some("AIza-FORMAT-test-9876543210")
    );
    let (key_id, _) = sealed_row(&pool, "usér|42", "openai").await;
    assert_eq!(
        key_id, "k2",
        "an old row keeps its key id until written again"
    );
    pool.close().await;
}

// The test vectors of FORMAT.md, copied here; each must also appear in the document.
const VEC_MASTER_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const VEC_INFO_ALICE: &str = "00000008757365722d6b657900000005616c696365";
const VEC_INFO_USER_42: &str = "00000008757365722d6b6579000000087573c3a9727c3432";
const VEC_USER_KEY_ALICE: &str = "3466d7264f21895042ce854fe6546e79d28f62d5bc5a6ad18043952707c80a03";
const VEC_AAD: &str = "01000000026b3100000005616c696365000000066f70656e6169";
const VEC_AAD_CHECK: &str = "01000000026b310000000000000000";
const VEC_PLAINTEXT: &str = "sk-proj-VECTOR-0123456789";
const VEC_BLOB: &str = "01404142434445464748494a4b4c4d4e4f505152535455565731b0428c2844cae2bb5dc86ea1a1e37652bc3d2c89333364de36a16024152580395fbf5f388181f147";
const VEC_VAULT_SECRET: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf";
const VEC_CHECK_BLOB: &str = "01606162636465666768696a6b6c6d6e6f707172737475767748a125f7020296d55d1a0e5d3f5d3b7317fa50dc9b28d368815e40e385b01305ab571f975e0d7ef974081383cd5f19b3";
const VEC_FINGERPRINT_KEY: &str =
    "4c9b025a7ddc0684f5df97c009a6b299d1f69a1a7a22600c486e38d399e5d4e5";
const VEC_USER_REF_KEY: &str = "0b398ffcec521d96ceb3270a51a1a77a2bd1c69cac5c3d7ac37b2d9b34117e08";
const VEC_FINGERPRINT: &str = "53aca3c9";
const VEC_USER_REF: &str = "67aa24cd85e3fcadae730b575ac65336";
const VEC_INFO_TEAM_ACME: &str = "000000096f776e65722d6b6579000000047465616d0000000461636d65";
const VEC_INFO_PLATFORM: &str =
    "000000096f776e65722d6b657900000008706c6174666f726d00000008706c6174666f726d";
const VEC_TEAM_KEY_ACME: &str = "a22c7b1a817d271913d15c5e385c143b96c118a26af61b88c3384088fcf4afa5";
const VEC_TEAM_AAD: &str = "01000000026b310000000461636d65000000066f70656e6169000000047465616d";
const VEC_TEAM_PLAINTEXT: &str = "sk-team-VECTOR-0123456789";
const VEC_TEAM_BLOB: &str = "01808182838485868788898a8b8c8d8e8f90919293949596970646c642e06f2f000ef6d8ed14031f5a9e182bf83a520c3a0d47cc5dc2845f3fc5160a312f647f528d";
const VEC_TEAM_REF: &str = "d8790afb1715eb8072d10554374ab88c";

#[tokio::test]
async fn the_documented_test_vectors_hold_both_ways() {
    for v in [
        VEC_MASTER_B64,
        VEC_INFO_ALICE,
        VEC_INFO_USER_42,
        VEC_USER_KEY_ALICE,
        VEC_AAD,
        VEC_AAD_CHECK,
        VEC_PLAINTEXT,
        VEC_BLOB,
        VEC_VAULT_SECRET,
        VEC_CHECK_BLOB,
        VEC_FINGERPRINT_KEY,
        VEC_USER_REF_KEY,
        VEC_FINGERPRINT,
        VEC_USER_REF,
    ] {
        assert!(FORMAT_MD.contains(v), "docs/FORMAT.md lacks {v}");
    }

    // This file's reading of the document derives every vector.
    let master: [u8; 32] = base64_decode(VEC_MASTER_B64).try_into().expect("32 bytes");
    assert_eq!(
        master,
        std::array::from_fn(|i| u8::try_from(i).expect("< 32"))
    );
    assert_eq!(hex(&info(&[LABEL_USER_KEY, b"alice"])), VEC_INFO_ALICE);
    assert_eq!(
        hex(&info(&[LABEL_USER_KEY, "usér|42".as_bytes()])),
        VEC_INFO_USER_42
    );
    assert_eq!(hex(&user_key(&master, "alice")), VEC_USER_KEY_ALICE);
    assert_eq!(hex(&associated_data("k1", "alice", "openai")), VEC_AAD);
    assert_eq!(hex(&associated_data("k1", "", "")), VEC_AAD_CHECK);
    let blob = unhex(VEC_BLOB);
    assert_eq!(
        open_text(&master, "k1", "alice", "openai", &blob).as_deref(),
        Some(VEC_PLAINTEXT)
    );
    let check = unhex(VEC_CHECK_BLOB);
    let vault_secret = open_vault_secret(&master, "k1", &check);
    assert_eq!(hex(&vault_secret), VEC_VAULT_SECRET);
    assert_eq!(
        hex(&hkdf32(&vault_secret, &[LABEL_FINGERPRINT])),
        VEC_FINGERPRINT_KEY
    );
    assert_eq!(
        hex(&hkdf32(&vault_secret, &[LABEL_USER_REF])),
        VEC_USER_REF_KEY
    );
    assert_eq!(fingerprint(&vault_secret, VEC_PLAINTEXT), VEC_FINGERPRINT);
    assert_eq!(user_ref(&vault_secret, "alice"), VEC_USER_REF);

    // The crate opens a database built by hand from the vectors.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys.db");
    let keyring = || Keyring::parse(&format!("k1:{VEC_MASTER_B64}")).expect("keyring");
    // First open creates the schema (and a random check record, replaced below).
    drop(
        Vault::open(SqliteStore::open(&path).await.expect("store"), keyring())
            .await
            .expect("vault"),
    );
    let pool = raw_pool(&path).await;
    sqlx::query("DELETE FROM byok_check")
        .execute(&pool)
        .await
        .expect("delete");
    sqlx::query("INSERT INTO byok_check (key_id, sealed, created_at) VALUES (?, ?, ?)")
        .bind("k1")
        .bind(&check)
        .bind(1_767_225_600_000_i64)
        .execute(&pool)
        .await
        .expect("insert check record");
    insert_row(
        &pool,
        ("alice", "openai", "k1"),
        &blob,
        &mask(VEC_PLAINTEXT),
        VEC_FINGERPRINT,
    )
    .await;
    pool.close().await;

    let vault = Vault::open(SqliteStore::open(&path).await.expect("store"), keyring())
        .await
        .expect("the crate opens the hand-made check record");
    let key = vault
        .get("alice", "openai")
        .await
        .expect("get")
        .expect("the row exists");
    assert_eq!(key.expose_secret(), VEC_PLAINTEXT);
    assert_eq!(vault.fingerprint(VEC_PLAINTEXT), VEC_FINGERPRINT);
    assert_eq!(vault.user_ref("alice"), VEC_USER_REF);
    let listed = vault.list("alice").await.expect("list");
    assert_eq!(listed[0].masked, "sk-\u{2026}789");
    assert_eq!(listed[0].fingerprint, VEC_FINGERPRINT);
}

/// The keyring files the admin CLI writes open with the document's recipe, in Rust and
/// with the Python sketch's own `parse_keyring`, run as the document prints it.
#[cfg(feature = "cli")]
#[test]
fn keyring_files_the_cli_writes_parse_with_the_documented_recipe() {
    use std::process::Command;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("keyring.txt");
    let out = Command::new(env!("CARGO_BIN_EXE_tower-byok"))
        .args(["keygen", "--id", "k1", "--out"])
        .arg(&file)
        .output()
        .expect("run tower-byok keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).expect("keyring file");
    assert!(
        text.lines().any(|l| l.starts_with('#') && l.contains(',')),
        "this test is about comment lines with commas, as the CLI writes them: {}",
        text.lines()
            .filter(|l| l.starts_with('#'))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let keyring = Keyring::from_file(&file).expect("the crate reads its own file");
    let by_recipe = parse_keyring(&text);
    assert_eq!(
        by_recipe
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>(),
        keyring.ids().collect::<Vec<_>>()
    );

    // The Python sketch's parse_keyring, cut from the document and run as printed.
    let start = FORMAT_MD
        .find("def parse_keyring")
        .expect("sketch has parse_keyring");
    let body: Vec<&str> = FORMAT_MD[start..]
        .lines()
        .enumerate()
        .take_while(|(i, l)| *i == 0 || l.is_empty() || l.starts_with(' '))
        .map(|(_, l)| l)
        .collect();
    let script = format!(
        "import base64, sys\n{}\nfor k, v in parse_keyring(sys.stdin.read()).items():\n    print(k, v.hex())\n",
        body.join("\n")
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (it is on every machine of this project)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("write keyring");
    }
    let out = child.wait_with_output().expect("python3 finishes");
    assert!(
        out.status.success(),
        "the sketch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let by_sketch = String::from_utf8(out.stdout).expect("utf-8");
    let by_rust: String = by_recipe
        .iter()
        .map(|(id, key)| format!("{id} {}\n", hex(key)))
        .collect();
    assert_eq!(by_sketch, by_rust);
}

/// Writes a row by hand, as another implementation of the format would.
async fn insert_row(
    pool: &SqlitePool,
    (user_id, provider, key_id): (&str, &str, &str),
    sealed: &[u8],
    hint: &str,
    fingerprint: &str,
) {
    sqlx::query(
        "INSERT INTO byok_keys (user_id, provider, key_id, sealed, hint, fingerprint, \
         created_at, updated_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
    )
    .bind(user_id)
    .bind(provider)
    .bind(key_id)
    .bind(sealed)
    .bind(hint)
    .bind(fingerprint)
    .bind(1_767_225_600_000_i64)
    .bind(1_767_225_600_000_i64)
    .execute(pool)
    .await
    .expect("insert row");
}

/// Seals `plaintext` by the recipe: what another implementation of the format writes.
fn seal_bytes(
    master: &[u8; 32],
    key_id: &str,
    user_id: &str,
    provider: &str,
    plaintext: &[u8],
) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(&user_key(master, user_id).into());
    let nonce = [0x5a_u8; 24];
    let aad = associated_data(key_id, user_id, provider);
    let ct = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .expect("seal");
    [vec![VERSION], nonce.to_vec(), ct].concat()
}

/// A row sealed correctly but holding a plaintext that is not UTF-8 (§7) cannot be
/// served, so `verify` reports it among the failures, like any row a request would fail
/// to open.
#[tokio::test]
async fn verify_reports_a_row_whose_plaintext_is_not_utf8() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys.db");
    let keyring = || Keyring::parse(&format!("k1:{VEC_MASTER_B64}")).expect("keyring");
    let vault = Vault::open(SqliteStore::open(&path).await.expect("store"), keyring())
        .await
        .expect("vault");
    vault
        .put("alice", "openai", "sk-good-0123")
        .await
        .expect("put");
    drop(vault);

    let master: [u8; 32] = base64_decode(VEC_MASTER_B64).try_into().expect("32 bytes");
    let not_utf8 = b"sk-\xff\xfe-bad";
    let sealed = seal_bytes(&master, "k1", "eve", "openai", not_utf8);
    assert_eq!(
        open_blob(&master, "k1", "eve", "openai", &sealed).as_deref(),
        Some(&not_utf8[..])
    );
    let pool = raw_pool(&path).await;
    insert_row(
        &pool,
        ("eve", "openai", "k1"),
        &sealed,
        "sk-\u{2026}",
        "00000000",
    )
    .await;
    pool.close().await;

    let vault = Vault::open(SqliteStore::open(&path).await.expect("store"), keyring())
        .await
        .expect("vault");
    let served = vault.get("eve", "openai").await;
    assert_eq!(
        served.expect_err("cannot be served").kind(),
        ErrorKind::Decrypt
    );
    let report = vault.verify(|_| {}).await.expect("verify");
    assert_eq!(report.opened, 1, "{report}");
    assert_eq!(report.failed.len(), 1, "{report}");
    assert_eq!(report.failed[0].kind, ErrorKind::Decrypt);
    assert_eq!(report.failed[0].user_ref, vault.user_ref("eve"));
}

/// §13's team vectors, both ways: this file's reading of the document derives them, the
/// crate serves a row built from them to a member of the team, and to nobody else: not
/// to a user named like the team, nor as a user's row with the team's id.
#[tokio::test]
async fn the_documented_team_vectors_hold_both_ways() {
    for v in [
        VEC_INFO_TEAM_ACME,
        VEC_INFO_PLATFORM,
        VEC_TEAM_KEY_ACME,
        VEC_TEAM_AAD,
        VEC_TEAM_PLAINTEXT,
        VEC_TEAM_BLOB,
        VEC_TEAM_REF,
    ] {
        assert!(FORMAT_MD.contains(v), "docs/FORMAT.md lacks {v}");
    }
    let master: [u8; 32] = base64_decode(VEC_MASTER_B64).try_into().expect("32 bytes");
    assert_eq!(
        hex(&info(&[LABEL_OWNER_KEY, b"team", b"acme"])),
        VEC_INFO_TEAM_ACME
    );
    assert_eq!(
        hex(&info(&[LABEL_OWNER_KEY, b"platform", b"platform"])),
        VEC_INFO_PLATFORM
    );
    assert_eq!(hex(&owner_key(&master, "team", "acme")), VEC_TEAM_KEY_ACME);
    assert_eq!(
        hex(&owner_associated_data("k1", "team", "acme", "openai")),
        VEC_TEAM_AAD
    );
    let blob = unhex(VEC_TEAM_BLOB);
    assert_eq!(
        &blob[1..25],
        &unhex("808182838485868788898a8b8c8d8e8f9091929394959697")[..]
    );
    let opened = open_owned(&master, "k1", ("team", "acme"), "openai", &blob);
    assert_eq!(opened.as_deref(), Some(VEC_TEAM_PLAINTEXT.as_bytes()));
    // §10: the row opens as no other owner.
    for owner in [
        ("user", "acme"),
        ("user", "team:acme"),
        ("platform", "acme"),
        ("team", "acme2"),
    ] {
        assert!(
            open_owned(&master, "k1", owner, "openai", &blob).is_none(),
            "{owner:?}"
        );
    }
    let vault_secret: [u8; 32] = unhex(VEC_VAULT_SECRET).try_into().expect("32 bytes");
    assert_eq!(owner_ref(&vault_secret, "team", "acme"), VEC_TEAM_REF);
    assert_ne!(VEC_TEAM_REF, user_ref(&vault_secret, "acme"));

    // The crate serves a database built by hand from the vectors.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys.db");
    let keyring = || Keyring::parse(&format!("k1:{VEC_MASTER_B64}")).expect("keyring");
    drop(
        Vault::open(SqliteStore::open(&path).await.expect("store"), keyring())
            .await
            .expect("vault"),
    );
    let pool = raw_pool(&path).await;
    sqlx::query("DELETE FROM byok_check")
        .execute(&pool)
        .await
        .expect("delete");
    sqlx::query("INSERT INTO byok_check (key_id, sealed, created_at) VALUES (?, ?, ?)")
        .bind("k1")
        .bind(unhex(VEC_CHECK_BLOB))
        .bind(1_767_225_600_000_i64)
        .execute(&pool)
        .await
        .expect("insert check record");
    insert_owned_row(&pool, "team", "acme", &blob).await;
    // The same blob as a user's row: of user "team:acme", named like the team, and of
    // user "acme", with the team's id.
    for user in ["team:acme", "acme"] {
        insert_owned_row(&pool, "user", user, &blob).await;
    }
    pool.close().await;

    let vault = Vault::open(SqliteStore::open(&path).await.expect("store"), keyring())
        .await
        .expect("vault");
    let keys = vault
        .keys_for_member("bob", Some("acme"))
        .await
        .expect("a member of acme");
    let key = keys.get("openai").expect("the team's key");
    assert_eq!(key.expose_secret(), VEC_TEAM_PLAINTEXT);
    assert_eq!(key.source(), KeySource::Team);
    // Users holding the team's blob as their own row: it does not open (§10).
    for user in ["team:acme", "acme"] {
        assert_eq!(
            vault
                .keys_for(user)
                .await
                .expect_err("does not open")
                .kind(),
            ErrorKind::Decrypt,
            "{user}"
        );
    }
    let listed = vault.list_for(Owner::team("acme")).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].masked, mask(VEC_TEAM_PLAINTEXT));

    // A team key the crate writes opens with the document's recipe, and its audit
    // record names the team by §8.2's owner reference.
    vault
        .put_for(Owner::team("acme"), "gemini", "AIza-team-FORMAT-0123456789")
        .await
        .expect("put");
    let pool = raw_pool(&path).await;
    let (sealed, kind): (Vec<u8>, String) = sqlx::query_as(
        "SELECT sealed, owner_kind FROM byok_keys WHERE user_id = 'acme' AND provider = 'gemini'",
    )
    .fetch_one(&pool)
    .await
    .expect("row");
    assert_eq!(kind, "team");
    assert_eq!(
        open_owned(&master, "k1", ("team", "acme"), "gemini", &sealed).as_deref(),
        Some(&b"AIza-team-FORMAT-0123456789"[..])
    );
    let (audit_ref,): (String,) =
        sqlx::query_as("SELECT user_ref FROM byok_audit ORDER BY id DESC LIMIT 1")
            .fetch_one(&pool)
            .await
            .expect("audit");
    assert_eq!(audit_ref, VEC_TEAM_REF);
    // The change feed names the owner's kind.
    let (feed_kind, feed_id): (String, String) =
        sqlx::query_as("SELECT owner_kind, user_id FROM byok_changes ORDER BY seq DESC LIMIT 1")
            .fetch_one(&pool)
            .await
            .expect("change");
    assert_eq!((feed_kind.as_str(), feed_id.as_str()), ("team", "acme"));
    pool.close().await;
}

/// Writes a row of any owner kind by hand, as another implementation would.
async fn insert_owned_row(pool: &SqlitePool, kind: &str, owner_id: &str, sealed: &[u8]) {
    sqlx::query(
        "INSERT INTO byok_keys (owner_kind, user_id, provider, key_id, sealed, hint, fingerprint, \
         created_at, updated_at, expires_at) VALUES (?, ?, 'openai', 'k1', ?, ?, '', 0, 0, NULL)",
    )
    .bind(kind)
    .bind(owner_id)
    .bind(sealed)
    .bind(mask(VEC_TEAM_PLAINTEXT))
    .execute(pool)
    .await
    .expect("insert owned row");
}

/// A database written before owners existed (migrations 1 and 2 only, rows sealed by
/// the original recipe) is upgraded by migration 3 when a vault opens it: its rows keep
/// opening as users' rows, and the change feed's triggers, rebuilt with the table, still
/// name the user whose row changed.
#[tokio::test]
async fn a_database_from_before_owners_upgrades_and_keeps_opening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys.db");
    let pool = SqlitePool::connect_with(
        SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true),
    )
    .await
    .expect("a new database file");
    sqlx::query(
        "CREATE TABLE byok_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
         checksum TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(&pool)
    .await
    .expect("ledger");
    for (version, description, sql) in [
        (
            1_i64,
            "init",
            include_str!("../migrations/sqlite/0001_init.sql"),
        ),
        (
            2,
            "change feed",
            include_str!("../migrations/sqlite/0002_changes.sql"),
        ),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .expect("old migration");
        sqlx::query("INSERT INTO byok_migrations VALUES (?, ?, ?, 0)")
            .bind(version)
            .bind(description)
            .bind(hex(&Sha256::digest(sql.as_bytes())))
            .execute(&pool)
            .await
            .expect("record");
    }
    sqlx::query("INSERT INTO byok_check (key_id, sealed, created_at) VALUES ('k1', ?, 0)")
        .bind(unhex(VEC_CHECK_BLOB))
        .execute(&pool)
        .await
        .expect("check record");
    insert_row(
        &pool,
        ("alice", "openai", "k1"),
        &unhex(VEC_BLOB),
        &mask(VEC_PLAINTEXT),
        VEC_FINGERPRINT,
    )
    .await;
    pool.close().await;

    let keyring = Keyring::parse(&format!("k1:{VEC_MASTER_B64}")).expect("keyring");
    let vault = Vault::open(SqliteStore::open(&path).await.expect("store"), keyring)
        .await
        .expect("the upgrade runs");
    let key = vault
        .get("alice", "openai")
        .await
        .expect("get")
        .expect("row");
    assert_eq!(key.expose_secret(), VEC_PLAINTEXT);
    assert_eq!(key.source(), KeySource::Database);
    let pool = raw_pool(&path).await;
    let (kind, versions): (String, i64) = sqlx::query_as(
        "SELECT owner_kind, (SELECT MAX(version) FROM byok_migrations) FROM byok_keys",
    )
    .fetch_one(&pool)
    .await
    .expect("row");
    assert_eq!((kind.as_str(), versions), ("user", 3));
    // The rebuilt triggers: an operator's SQL on the old row is noted, naming the user.
    sqlx::query("DELETE FROM byok_changes")
        .execute(&pool)
        .await
        .expect("clear");
    sqlx::query("UPDATE byok_keys SET expires_at = 1 WHERE user_id = 'alice'")
        .execute(&pool)
        .await
        .expect("update");
    let changes: Vec<(String, String)> =
        sqlx::query_as("SELECT owner_kind, user_id FROM byok_changes ORDER BY seq")
            .fetch_all(&pool)
            .await
            .expect("changes");
    assert_eq!(changes, [("user".to_owned(), "alice".to_owned())]);
    pool.close().await;
}
