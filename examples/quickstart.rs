//! Quickstart: an axum app where each user brings their own provider API keys.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! What it shows:
//!
//! - a toy bearer-token auth middleware in front (demo users `alice`, `bob`, `carol`,
//!   tokens `alice-token`, `bob-token`, `carol-token`) that leaves a `Claims` extension;
//! - [`ByokLayer`] behind it, reading the user id from those claims and putting that
//!   user's decrypted keys into each request as [`UserKeys`];
//! - routes to store, list and delete one's own keys through the [`Vault`], and a
//!   `POST /chat` handler that picks the caller's key as it would to call a provider.
//!
//! It needs no setup: keys live in `byok-quickstart.db` (or `$BYOK_DATABASE`), sealed
//! under the master keyring from `$BYOK_MASTER_KEYS` or, failing that, a development
//! keyring file `byok-dev-keyring.txt` it creates on first run. `$BYOK_MASTER_KEYS` may
//! also hold a wrapped keyring (`tower-byok keyring wrap`), unwrapped through AWS KMS at
//! start when built with `--features aws-kms` (README "Master keys in a KMS"). Then try:
//!
//! ```text
//! curl -X PUT localhost:3000/keys/openai -H 'Authorization: Bearer alice-token' --data 'sk-alice-demo-0001'
//! curl localhost:3000/keys -H 'Authorization: Bearer alice-token'
//! curl -X POST localhost:3000/chat -H 'Authorization: Bearer alice-token'
//! curl -X POST localhost:3000/chat -H 'Authorization: Bearer bob-token'   # 428: bob has no key
//! curl -X DELETE localhost:3000/keys/openai -H 'Authorization: Bearer alice-token'
//! ```
#![allow(clippy::print_stdout)]

use std::io::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde_json::json;
use tower_byok::resolve::FromExtension;
use tower_byok::{
    AuditAction, ByokLayer, ErrorKind, Keyring, MasterKey, SqliteStore, UserKeys, Vault,
};

const DEV_KEYRING_FILE: &str = "byok-dev-keyring.txt";

/// What the auth layer leaves in the request: who the caller is.
#[derive(Clone)]
struct Claims {
    sub: String,
}

/// Toy authentication: fixed demo tokens. A real app verifies a JWT or a session here.
async fn auth(mut req: Request, next: Next) -> Response {
    if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        let user = match value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) {
            Some("alice-token") => "alice",
            Some("bob-token") => "bob",
            Some("carol-token") => "carol",
            _ => return ApiError(StatusCode::UNAUTHORIZED, "invalid bearer token").into_response(),
        };
        req.extensions_mut().insert(Claims {
            sub: user.to_owned(),
        });
    }
    next.run(req).await // no header: no claims, the routes below answer 401 themselves
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().init();

    let keyring = load_keyring().await;
    let db = std::env::var("BYOK_DATABASE").unwrap_or_else(|_| "byok-quickstart.db".to_owned());
    let store = SqliteStore::open(&db)
        .await
        .expect("cannot open the SQLite database");
    let vault = match Vault::open(store, keyring).await {
        Ok(vault) => vault,
        Err(e) if e.kind() == ErrorKind::WrongMasterKey => {
            eprintln!("error: {e}");
            eprintln!("Restore the keyring {db} was created with, or delete {db}.");
            std::process::exit(1);
        }
        Err(e) => panic!("cannot open the vault: {e}"),
    };

    let app = Router::new()
        .route("/", get(usage))
        .route("/keys", get(list_keys))
        .route("/keys/{provider}", put(put_key).delete(delete_key))
        .route("/chat", post(chat))
        .with_state(vault.clone())
        // With `Router::layer`, the layer added LAST runs FIRST. So: auth, then byok.
        .layer(ByokLayer::new(
            vault,
            FromExtension::new(|c: &Claims| c.sub.as_str()),
        ))
        .layer(middleware::from_fn(auth));

    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".to_owned());
    let addr = format!("127.0.0.1:{port}");
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .expect("cannot bind the address");
    println!(
        "tower-byok quickstart listening on http://{addr} (keys in {db})\n\n{}",
        curl_lines(&port)
    );
    axum::serve(listener, app).await.expect("server error");
}

/// `$BYOK_MASTER_KEYS` if set (production; plain or wrapped), else the development
/// keyring file.
async fn load_keyring() -> Keyring {
    if let Ok(text) = std::env::var("BYOK_MASTER_KEYS") {
        if text.starts_with("tower-byok wrapped-keyring ") {
            return unwrap_keyring(&text).await;
        }
        return Keyring::from_env("BYOK_MASTER_KEYS")
            .expect("BYOK_MASTER_KEYS is not a valid keyring");
    }
    let path = Path::new(DEV_KEYRING_FILE);
    if !path.exists() {
        let keyring =
            Keyring::new(MasterKey::generate("dev-1").expect("cannot generate a master key"));
        let mut file = std::fs::OpenOptions::new();
        file.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600); // readable by you only
        let mut file = file
            .open(path)
            .expect("cannot create the development keyring file");
        file.write_all(b"# tower-byok quickstart: DEVELOPMENT ONLY master keyring\n")
            .and_then(|()| file.write_all(keyring.expose_text().as_bytes()))
            .expect("cannot write the development keyring file");
    }
    eprintln!(
        "\n  WARNING: using the master keyring in ./{DEV_KEYRING_FILE}: FOR DEVELOPMENT ONLY.\n  \
         In production set BYOK_MASTER_KEYS from a secret manager (never a file next to the app).\n"
    );
    Keyring::from_file(path).expect("cannot read the development keyring file")
}

/// A wrapped keyring, unwrapped once through AWS KMS (credentials, region and endpoint
/// from the standard `AWS_*` variables).
#[cfg(feature = "aws-kms")]
async fn unwrap_keyring(text: &str) -> Keyring {
    let wrapped = tower_byok::WrappedKeyring::parse(text)
        .unwrap_or_else(|e| panic!("BYOK_MASTER_KEYS is not a valid wrapped keyring: {e}"));
    let kms = tower_byok::AwsKms::from_env().unwrap_or_else(|e| panic!("{e}"));
    wrapped
        .unwrap(&kms)
        .await
        .unwrap_or_else(|e| panic!("cannot unwrap the keyring: {e}"))
}

#[cfg(not(feature = "aws-kms"))]
async fn unwrap_keyring(_: &str) -> Keyring {
    panic!("BYOK_MASTER_KEYS holds a wrapped keyring: run with `--features aws-kms`")
}

/// An error answer: a status and a fixed JSON message (never echoing input).
struct ApiError(StatusCode, &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

/// Vault errors by kind. Their messages never contain a secret, but a client needs no more
/// than the kind anyway; the rest goes to the log.
impl From<tower_byok::Error> for ApiError {
    fn from(err: tower_byok::Error) -> Self {
        match err.kind() {
            ErrorKind::InvalidProvider => Self(StatusCode::BAD_REQUEST, "invalid provider name"),
            ErrorKind::InvalidSecret => {
                Self(StatusCode::BAD_REQUEST, "the key must be 1 byte to 16 KiB")
            }
            ErrorKind::InvalidUserId => Self(StatusCode::BAD_REQUEST, "invalid user id"),
            _ => {
                tracing::error!(error = %err, "vault operation failed");
                Self(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        }
    }
}

/// The key routes act for the caller, so they need to know who that is.
fn user(claims: Option<Extension<Claims>>) -> Result<String, ApiError> {
    let missing = ApiError(
        StatusCode::UNAUTHORIZED,
        "send Authorization: Bearer <token>",
    );
    claims.map(|Extension(c)| c.sub).ok_or(missing)
}

/// `PUT /keys/{provider}`, the key as the raw body: 201 when new, 200 when replaced.
async fn put_key(
    State(vault): State<Vault>,
    claims: Option<Extension<Claims>>,
    UrlPath(provider): UrlPath<String>,
    body: String,
) -> Result<impl IntoResponse, ApiError> {
    let user = user(claims)?;
    let status = match vault.put(&user, &provider, body.trim()).await? {
        AuditAction::Replace => StatusCode::OK,
        _ => StatusCode::CREATED,
    };
    // Read it back for its normalized provider name and masked form; never echo the key.
    let key = vault.get(&user, &provider).await?;
    let key = key.ok_or(ApiError(
        StatusCode::CONFLICT,
        "the key was deleted meanwhile",
    ))?;
    let fingerprint = vault.fingerprint(key.expose_secret());
    let body =
        json!({ "provider": key.provider(), "masked": key.masked(), "fingerprint": fingerprint });
    Ok((status, Json(body)))
}

/// `GET /keys`: the caller's keys, masked.
async fn list_keys(
    State(vault): State<Vault>,
    claims: Option<Extension<Claims>>,
) -> Result<impl IntoResponse, ApiError> {
    let user = user(claims)?;
    let unix = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let keys: Vec<_> = (vault.list(&user).await?.iter())
        .map(|k| {
            json!({
                "provider": k.provider,
                "masked": k.masked,
                "fingerprint": k.fingerprint,
                "created_at": unix(k.created_at),
                "updated_at": unix(k.updated_at),
                "expires_at": k.expires_at.map(unix),
            })
        })
        .collect();
    Ok(Json(json!({ "user": user, "keys": keys })))
}

/// `DELETE /keys/{provider}`: 204, or 404 when there was no such key.
async fn delete_key(
    State(vault): State<Vault>,
    claims: Option<Extension<Claims>>,
    UrlPath(provider): UrlPath<String>,
) -> Result<StatusCode, ApiError> {
    match vault.delete(&user(claims)?, &provider).await? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(ApiError(
            StatusCode::NOT_FOUND,
            "no key stored for this provider",
        )),
    }
}

/// `POST /chat[?provider=...]`: where a real app would call the provider with the caller's
/// key. `UserKeys` comes from the layer (401 without a user); no network call here.
async fn chat(State(vault): State<Vault>, uri: Uri, keys: UserKeys) -> Response {
    let query = uri.query().unwrap_or_default().split('&');
    let provider = query
        .filter_map(|kv| kv.strip_prefix("provider="))
        .next()
        .unwrap_or("openai");
    let Some(key) = keys.get(provider) else {
        let hint = format!("no {provider} key: PUT one to /keys/{provider} first");
        return (
            StatusCode::PRECONDITION_REQUIRED,
            Json(json!({ "error": "missing_provider_key", "hint": hint })),
        )
            .into_response();
    };
    // e.g. client.post(url).bearer_auth(key.expose_secret()); here we only describe it.
    Json(json!({
        "would_call": key.provider(),
        "with_key": key.masked(),
        "fingerprint": vault.fingerprint(key.expose_secret()),
        "source": key.source().as_str(),
    }))
    .into_response()
}

async fn usage() -> String {
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".to_owned());
    format!(
        "tower-byok quickstart. Demo users: alice, bob, carol (token: <name>-token).\n\n{}",
        curl_lines(&port)
    )
}

fn curl_lines(port: &str) -> String {
    let h = "localhost:".to_owned() + port;
    format!(
        "Try:\n  \
         curl -X PUT {h}/keys/openai -H 'Authorization: Bearer alice-token' --data 'sk-alice-demo-0001'\n  \
         curl {h}/keys -H 'Authorization: Bearer alice-token'\n  \
         curl -X POST {h}/chat -H 'Authorization: Bearer alice-token'\n  \
         curl {h}/keys -H 'Authorization: Bearer bob-token'     # bob sees none of alice's\n  \
         curl -X POST {h}/chat -H 'Authorization: Bearer bob-token'  # 428: no key\n  \
         curl -X DELETE {h}/keys/openai -H 'Authorization: Bearer alice-token'\n"
    )
}
