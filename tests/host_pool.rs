//! A host app hands its own sqlx pool to the crate's stores: one pool, one database,
//! one sqlx. The app below keeps its own table on the pool it built, gives a clone
//! of that very pool to `SqliteStore::from_pool` / `PostgresStore::from_pool`, and
//! serves a request through the layer on a real server and client over loopback.
//!
//! That this file compiles is half the claim: `sqlx::SqlitePool` here is the test's
//! own `sqlx` dependency, the one a host app would name in its Cargo.toml, and it is
//! the type `from_pool` takes only when both are the same sqlx. `.ci/one-sqlx` checks
//! the other half: the dependency tree holds one version of each `sqlx*` crate.
#![cfg(all(feature = "sqlite", feature = "axum"))]
#![allow(clippy::unwrap_used)]

mod common;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use common::http::Server;
use common::{keyring, Backend, TestDb};
use tower_byok::resolve::FromHeader;
use tower_byok::{ByokLayer, SqliteStore, UserKeys, Vault};

/// The host app's own table, created by the app before it opens the vault.
const HOST_TABLE: &str = "CREATE TABLE notes (user_id TEXT PRIMARY KEY, body TEXT NOT NULL)";
const HOST_INSERT: &str = "INSERT INTO notes (user_id, body) VALUES ($1, $2)";
const HOST_SELECT: &str = "SELECT body FROM notes WHERE user_id = $1";

/// The app's own idea of the caller, here the same header the layer resolves.
fn user(headers: &HeaderMap) -> Result<String, StatusCode> {
    let value = headers.get("x-user").ok_or(StatusCode::UNAUTHORIZED)?;
    let user = value.to_str().map_err(|_| StatusCode::BAD_REQUEST)?;
    Ok(user.to_owned())
}

/// What the handler answers: the app's own row, then the caller's key, so one
/// response shows both reads went through the one pool's database.
fn answer(note: Option<String>, keys: &UserKeys) -> Result<String, StatusCode> {
    let note = note.ok_or(StatusCode::NOT_FOUND)?;
    let key = keys
        .get("openai")
        .ok_or(StatusCode::PRECONDITION_REQUIRED)?;
    Ok(format!("{note}|{}", key.expose_secret()))
}

async fn sqlite_note(
    State(pool): State<sqlx::SqlitePool>,
    headers: HeaderMap,
    keys: UserKeys,
) -> Result<String, StatusCode> {
    let note: Option<String> = sqlx::query_scalar(HOST_SELECT)
        .bind(user(&headers)?)
        .fetch_optional(&pool)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    answer(note, &keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_axum_app_hands_its_own_sqlite_pool_to_the_store() {
    let db = TestDb::new(Backend::Sqlite).await;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db.sqlite_path())
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    sqlx::query(HOST_TABLE).execute(&pool).await.unwrap();
    sqlx::query(HOST_INSERT)
        .bind("alice")
        .bind("alice's note")
        .execute(&pool)
        .await
        .unwrap();

    let vault = Vault::open(SqliteStore::from_pool(pool.clone()), keyring())
        .await
        .unwrap();
    vault.put("alice", "openai", "sk-alice").await.unwrap();
    // The crate's rows are in the app's database, seen through the app's pool.
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM byok_keys")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);

    let app = Router::new()
        .route("/note", get(sqlite_note))
        .layer(ByokLayer::new(vault, FromHeader::new("x-user")))
        .with_state(pool);
    let server = Server::start(app).await;
    let (status, _, body) = server.get("/note", Some("alice")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "alice's note|sk-alice");
}

#[cfg(feature = "postgres")]
async fn postgres_note(
    State(pool): State<sqlx::PgPool>,
    headers: HeaderMap,
    keys: UserKeys,
) -> Result<String, StatusCode> {
    let note: Option<String> = sqlx::query_scalar(HOST_SELECT)
        .bind(user(&headers)?)
        .fetch_optional(&pool)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    answer(note, &keys)
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_axum_app_hands_its_own_postgres_pool_to_the_store() {
    let db = TestDb::new(Backend::Postgres).await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(db.pg_options())
        .await
        .unwrap();
    sqlx::query(HOST_TABLE).execute(&pool).await.unwrap();
    sqlx::query(HOST_INSERT)
        .bind("alice")
        .bind("alice's note")
        .execute(&pool)
        .await
        .unwrap();

    let store = tower_byok::PostgresStore::from_pool(pool.clone());
    let vault = Vault::open(store, keyring()).await.unwrap();
    vault.put("alice", "openai", "sk-alice").await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM byok_keys")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);

    let app = Router::new()
        .route("/note", get(postgres_note))
        .layer(ByokLayer::new(vault, FromHeader::new("x-user")))
        .with_state(pool);
    let server = Server::start(app).await;
    let (status, _, body) = server.get("/note", Some("alice")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "alice's note|sk-alice");
}
