//! The bad-input catalogue: each bad value of each kind, given to the public API of a
//! vault on a real SQLite file and to the layer over real HTTP, gets a typed error (or,
//! for a request, no user), never echoes the secret, and stores nothing.
#![cfg(all(feature = "sqlite", feature = "axum"))]
#![allow(clippy::unwrap_used)]

use axum::routing::get;
use axum::Router;
use http::StatusCode;
use tower_byok::resolve::FromHeader;
use tower_byok::{
    ByokLayer, ErrorKind, Keyring, MasterKey, SqliteStore, UserKeys, Vault,
    DEFAULT_MAX_PROVIDERS_PER_USER,
};

const SECRET: &str = "sk-catalogue-secret-0123456789";

async fn vault(dir: &tempfile::TempDir) -> Vault {
    let store = SqliteStore::open(dir.path().join("keys.db")).await.unwrap();
    Vault::open(store, Keyring::new(MasterKey::generate("k1").unwrap()))
        .await
        .unwrap()
}

/// Nothing is stored for anyone: the whole table is empty.
async fn table_is_empty(vault: &Vault) {
    let report = vault.verify(|_| {}).await.unwrap();
    assert_eq!(report.opened, 0, "something was stored: {report}");
    assert!(report.failed.is_empty());
}

#[tokio::test]
async fn bad_values_get_typed_errors_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let vault = vault(&dir).await;
    let long_id = "u".repeat(256);
    let big_secret = "s".repeat(tower_byok::MAX_SECRET_LEN + 1);
    let long_provider = "p".repeat(65);
    // (what, user, provider, secret, expected kind)
    let cases: Vec<(&str, &str, &str, &str, ErrorKind)> = vec![
        (
            "empty user id",
            "",
            "openai",
            SECRET,
            ErrorKind::InvalidUserId,
        ),
        (
            "256-byte user id",
            &long_id,
            "openai",
            SECRET,
            ErrorKind::InvalidUserId,
        ),
        (
            "NUL in user id",
            "ali\0ce",
            "openai",
            SECRET,
            ErrorKind::InvalidUserId,
        ),
        (
            "newline in user id",
            "alice\nbob",
            "openai",
            SECRET,
            ErrorKind::InvalidUserId,
        ),
        (
            "leading space",
            " alice",
            "openai",
            SECRET,
            ErrorKind::InvalidUserId,
        ),
        (
            "trailing space",
            "alice ",
            "openai",
            SECRET,
            ErrorKind::InvalidUserId,
        ),
        (
            "empty provider",
            "alice",
            "",
            SECRET,
            ErrorKind::InvalidProvider,
        ),
        (
            "65-byte provider",
            "alice",
            &long_provider,
            SECRET,
            ErrorKind::InvalidProvider,
        ),
        (
            "space in provider",
            "alice",
            "open ai",
            SECRET,
            ErrorKind::InvalidProvider,
        ),
        (
            "path in provider",
            "alice",
            "../openai",
            SECRET,
            ErrorKind::InvalidProvider,
        ),
        (
            "NUL in provider",
            "alice",
            "openai\0",
            SECRET,
            ErrorKind::InvalidProvider,
        ),
        (
            "non-ASCII provider",
            "alice",
            "öpenai",
            SECRET,
            ErrorKind::InvalidProvider,
        ),
        (
            "empty secret",
            "alice",
            "openai",
            "",
            ErrorKind::InvalidSecret,
        ),
        (
            "16 KiB + 1 secret",
            "alice",
            "openai",
            &big_secret,
            ErrorKind::InvalidSecret,
        ),
    ];
    for (what, user, provider, secret, kind) in &cases {
        let err = vault.put(user, provider, secret).await.unwrap_err();
        assert_eq!(err.kind(), *kind, "{what}");
        let shown = format!("{err} {err:?}");
        if !secret.is_empty() {
            assert!(
                !shown.contains(&secret[..secret.len().min(24)]),
                "{what}: {shown}"
            );
        }
        if user.len() > 3 && *kind != ErrorKind::InvalidUserId {
            assert!(
                !shown.contains(user.trim()),
                "{what}: the user id is echoed: {shown}"
            );
        }
        let at = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        let err = vault
            .put_expiring(user, provider, secret, at)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), *kind, "{what} (expiring)");
    }
    // Readers refuse the same user ids and providers.
    for (what, user, provider, _, kind) in cases.iter().filter(|c| c.4 != ErrorKind::InvalidSecret)
    {
        assert_eq!(
            vault.get(user, provider).await.unwrap_err().kind(),
            *kind,
            "{what}"
        );
        assert_eq!(
            vault.delete(user, provider).await.unwrap_err().kind(),
            *kind,
            "{what}"
        );
    }
    table_is_empty(&vault).await;

    // The edges that are allowed.
    vault.put(&"u".repeat(255), "openai", SECRET).await.unwrap();
    vault.put("alice", &"p".repeat(64), SECRET).await.unwrap();
    vault
        .put("alice", "big", &"s".repeat(tower_byok::MAX_SECRET_LEN))
        .await
        .unwrap();
    assert_eq!(vault.verify(|_| {}).await.unwrap().opened, 3);
}

/// A user with thousands of providers: the default cap stores the first
/// [`DEFAULT_MAX_PROVIDERS_PER_USER`] and refuses each one after with a typed error that
/// names neither the user nor the secret, storing nothing; replacing and other users are
/// unaffected.
#[tokio::test]
async fn a_user_with_thousands_of_providers_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let vault = vault(&dir).await;
    let cap = DEFAULT_MAX_PROVIDERS_PER_USER as usize;
    let user = "hoarder-7f3a";
    let mut refused = 0;
    for p in 0..2_000 {
        let secret = format!("{SECRET}-{p:04}");
        match vault.put(user, &format!("provider-{p}"), &secret).await {
            Ok(action) => {
                assert!(p < cap, "provider {p} was stored past the cap");
                assert_eq!(action, tower_byok::AuditAction::Put);
            }
            Err(err) => {
                assert!(p >= cap, "provider {p} was refused below the cap: {err}");
                assert_eq!(err.kind(), ErrorKind::TooManyProviders);
                let shown = format!("{err} {err:?}");
                assert!(
                    shown.contains(&cap.to_string()),
                    "the cap is named: {shown}"
                );
                assert!(!shown.contains(user) && !shown.contains(SECRET), "{shown}");
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 2_000 - cap);
    assert_eq!(vault.list(user).await.unwrap().len(), cap);
    assert_eq!(vault.verify(|_| {}).await.unwrap().opened, cap as u64);
    assert!(vault.get(user, "provider-1999").await.unwrap().is_none());
    // At the cap: a replace is allowed, and other users are not limited by this one.
    vault
        .put(user, "provider-0", "sk-replaced-0123456789")
        .await
        .unwrap();
    vault
        .put("someone-else", "provider-0", SECRET)
        .await
        .unwrap();
    // After a delete there is room for one more.
    vault.delete(user, "provider-1").await.unwrap();
    vault.put(user, "provider-1999", SECRET).await.unwrap();
    let err = vault.put(user, "provider-1998", SECRET).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooManyProviders);
}

#[test]
fn malformed_keyrings_get_typed_errors_without_key_material() {
    let good = MasterKey::generate("k1").unwrap().expose_keyring_line();
    let b64 = good.split_once(':').unwrap().1.trim().to_owned();
    let cases = [
        ("empty", String::new()),
        ("comments only", "# nothing here, really\n".to_owned()),
        ("no colon", b64.clone()),
        ("empty id", format!(":{b64}")),
        ("bad id", format!("k 1:{b64}")),
        ("short key", format!("k1:{}", &b64[..20])),
        ("not base64", format!("k1:{}!", &b64[..42])),
        ("all zeros", format!("k1:{}", "A".repeat(43))),
        ("duplicate id", format!("k1:{b64},k1:{b64}")),
        ("entry starting with #", format!("k1:{b64},#k2:{b64}")),
    ];
    for (what, text) in cases {
        let err = Keyring::parse(&text).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidKeyring, "{what}");
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains(&b64[..20]),
            "{what}: key material in {shown}"
        );
    }
    assert!(Keyring::parse(&good).is_ok());
}

async fn whoami(keys: Option<UserKeys>) -> String {
    keys.map_or("none".to_owned(), |k| {
        k.providers().collect::<Vec<_>>().join(",")
    })
}

#[tokio::test]
async fn bad_user_headers_name_no_user() {
    let dir = tempfile::tempdir().unwrap();
    let vault = vault(&dir).await;
    vault.put("alice", "openai", SECRET).await.unwrap();
    vault.put("bob", "exa", SECRET).await.unwrap();
    let app = Router::new()
        .route("/", get(whoami))
        .layer(ByokLayer::new(vault, FromHeader::new("x-user")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // Raw HTTP/1.1 over loopback, so that any header bytes can be sent.
    async fn send(addr: std::net::SocketAddr, headers: &[u8]) -> (StatusCode, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut request = b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n".to_vec();
        request.extend_from_slice(headers);
        request.extend_from_slice(b"\r\n");
        stream.write_all(&request).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let text = String::from_utf8_lossy(&response).into_owned();
        let status: u16 = text[9..12].parse().unwrap();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        (StatusCode::from_u16(status).unwrap(), body)
    }

    let long = [b"x-user: ".as_slice(), &[b'u'; 256], b"\r\n"].concat();
    let cases: [(&str, &[u8], &str); 7] = [
        ("the user", b"x-user: alice\r\n", "openai"),
        (
            "surrounding spaces are trimmed",
            b"x-user:   alice  \r\n",
            "openai",
        ),
        ("no header", b"", "none"),
        ("empty value", b"x-user: \r\n", "none"),
        ("non-UTF-8 bytes", b"x-user: al\xffice\r\n", "none"),
        ("256 bytes", &long, "none"),
        ("sent twice", b"x-user: bob\r\nx-user: alice\r\n", "none"),
    ];
    for (what, headers, expected) in cases {
        let (status, body) = send(addr, headers).await;
        assert_eq!(status, StatusCode::OK, "{what}: {body}");
        assert_eq!(body, expected, "{what}");
    }
}
