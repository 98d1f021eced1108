//! Teams and the platform fallback through the layer, end to end: a real axum server on
//! loopback, a real HTTP client, both backends. The team comes from the application's
//! authentication (a trusted gateway's header, or an auth layer's extension), never from
//! what the client sends otherwise.
#![cfg(all(feature = "sqlite", feature = "axum"))]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use common::http::Server;
use common::{keyring, Backend, TestDb};
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use tower_byok::resolve::{FromExtension, FromHeader, ResolveUser};
use tower_byok::{ByokLayer, Owner, TeamPolicy, UserKeys, Vault};

per_backend!(
    the_chain_over_http,
    failures_over_http_never_fall_through,
    a_team_revoked_elsewhere_stops_over_http,
    the_team_comes_from_the_auth_extension,
    a_resolver_of_its_own_that_names_a_team_is_served_the_chain,
);

const POLL: Duration = Duration::from_millis(100);
const BOUND: Duration = Duration::from_secs(5);

/// The caller's keys: provider → (secret, source).
type Seen = BTreeMap<String, (String, String)>;

async fn keys_handler(keys: UserKeys) -> Json<Seen> {
    Json(
        keys.iter()
            .map(|k| {
                let seen = (k.expose_secret().to_owned(), k.source().as_str().to_owned());
                (k.provider().to_owned(), seen)
            })
            .collect(),
    )
}

fn app<R: ResolveUser<axum::body::Body>>(layer: ByokLayer<R>) -> Router {
    Router::new().route("/keys", get(keys_handler)).layer(layer)
}

/// The layer behind a trusted gateway that sets `x-user` and `x-team`.
fn gateway(vault: &Vault) -> ByokLayer<FromHeader> {
    ByokLayer::new(
        vault.clone(),
        FromHeader::new("x-user").with_team_header("x-team"),
    )
}

/// `GET /keys` with these headers: status and what the handler saw.
async fn fetch(server: &Server, headers: &[(&str, &str)]) -> (StatusCode, Seen) {
    let mut req = http::Request::get(format!("http://{}/keys", server.addr));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = server
        .client
        .request(req.body(Full::<Bytes>::default()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let seen = match status {
        StatusCode::OK => serde_json::from_slice(&body).unwrap(),
        _ => Seen::new(),
    };
    (status, seen)
}

fn seen(pairs: &[(&str, &str, &str)]) -> Seen {
    pairs
        .iter()
        .map(|(p, s, src)| ((*p).to_owned(), ((*s).to_owned(), (*src).to_owned())))
        .collect()
}

async fn seed(vault: &Vault) {
    vault
        .put("alice", "openai", "sk-alice-own-0001")
        .await
        .unwrap();
    let acme = Owner::team("acme");
    vault
        .put_for(acme, "openai", "sk-acme-team-0001")
        .await
        .unwrap();
    vault
        .put_for(acme, "gemini", "AIza-acme-team-0001")
        .await
        .unwrap();
    let platform = Owner::platform();
    vault
        .put_for(platform, "gemini", "AIza-platform-0001")
        .await
        .unwrap();
    vault
        .put_for(platform, "exa", "exa-platform-0001")
        .await
        .unwrap();
}

async fn the_chain_over_http(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open_teams(keyring(), true, POLL).await;
    seed(&vault).await;
    let server = Server::start(app(gateway(&vault))).await;

    let alice_in_acme = [("x-user", "alice"), ("x-team", "acme")];
    let expected = seen(&[
        ("exa", "exa-platform-0001", "platform"),
        ("gemini", "AIza-acme-team-0001", "team"),
        ("openai", "sk-alice-own-0001", "database"),
    ]);
    // A miss, then hits from the caches: the same keys.
    for _ in 0..3 {
        assert_eq!(
            fetch(&server, &alice_in_acme).await,
            (StatusCode::OK, expected.clone())
        );
    }
    // Bob, in no team: the platform's keys only.
    assert_eq!(
        fetch(&server, &[("x-user", "bob")]).await,
        (
            StatusCode::OK,
            seen(&[
                ("exa", "exa-platform-0001", "platform"),
                ("gemini", "AIza-platform-0001", "platform"),
            ])
        )
    );
    // A user named like the team, in no team: nothing of acme's.
    let (status, keys) = fetch(&server, &[("x-user", "team:acme")]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(keys.values().all(|(_, src)| src == "platform"), "{keys:?}");

    // The team's policy changes: the member's own key stops winning, at once.
    vault
        .set_team_policy("acme", TeamPolicy::TeamKeysOnly)
        .await
        .unwrap();
    let (_, keys) = fetch(&server, &alice_in_acme).await;
    assert_eq!(
        keys["openai"],
        ("sk-acme-team-0001".to_owned(), "team".to_owned())
    );

    // Required providers: the chain's keys count; what no level has answers 428.
    let strict = Server::start(app(
        gateway(&vault).with_required_providers(["exa", "mistral"])
    ))
    .await;
    assert_eq!(
        fetch(&strict, &alice_in_acme).await.0,
        StatusCode::PRECONDITION_REQUIRED
    );
    let strict = Server::start(app(
        gateway(&vault).with_required_providers(["exa", "gemini"])
    ))
    .await;
    assert_eq!(fetch(&strict, &[("x-user", "bob")]).await.0, StatusCode::OK);

    // Without the platform fallback and without a team header in the resolver, a client's
    // own `x-team` header is not read: the single-user path, own keys only.
    let plain_vault = db.open_teams(keyring(), false, POLL).await;
    let plain = Server::start(app(ByokLayer::new(plain_vault, FromHeader::new("x-user")))).await;
    assert_eq!(
        fetch(&plain, &alice_in_acme).await,
        (
            StatusCode::OK,
            seen(&[("openai", "sk-alice-own-0001", "database")])
        )
    );
}

async fn failures_over_http_never_fall_through(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open_teams(keyring(), true, POLL).await;
    seed(&vault).await;
    // The team's gemini key does not open: 500 for its members, never the platform's.
    db.exec(
        "UPDATE byok_keys SET sealed = (SELECT sealed FROM byok_keys \
         WHERE owner_kind = 'team' AND user_id = 'acme' AND provider = 'openai') \
         WHERE owner_kind = 'team' AND user_id = 'acme' AND provider = 'gemini'",
    )
    .await;
    let server = Server::start(app(gateway(&vault))).await;
    let alice_in_acme = [("x-user", "alice"), ("x-team", "acme")];
    assert_eq!(
        fetch(&server, &alice_in_acme).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    // Bob, in no team, is served.
    assert_eq!(fetch(&server, &[("x-user", "bob")]).await.0, StatusCode::OK);
    // An invalid team id from the resolver (over 255 bytes) is refused, never served
    // as no team.
    let long = "t".repeat(300);
    assert_eq!(
        fetch(&server, &[("x-user", "alice"), ("x-team", &long)])
            .await
            .0,
        StatusCode::INTERNAL_SERVER_ERROR
    );

    // The team's keys cannot be loaded: 503, never the platform's key.
    vault
        .put_for(Owner::team("acme"), "gemini", "AIza-acme-team-0002")
        .await
        .unwrap();
    db.exec("ALTER TABLE byok_team_policies RENAME TO byok_team_policies_gone")
        .await;
    let fresh = db.open_teams(keyring(), true, POLL).await;
    let server = Server::start(app(gateway(&fresh))).await;
    assert_eq!(
        fetch(&server, &alice_in_acme).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(fetch(&server, &[("x-user", "bob")]).await.0, StatusCode::OK);
}

async fn a_team_revoked_elsewhere_stops_over_http(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open_teams(keyring(), false, POLL).await;
    let admin = db.open_teams(keyring(), false, POLL).await;
    admin
        .put_for(Owner::team("acme"), "openai", "sk-acme-team-0001")
        .await
        .unwrap();
    let server = Server::start(app(gateway(&vault))).await;
    let members = ["alice", "bob", "carol"];
    for m in members {
        let (status, keys) = fetch(&server, &[("x-user", m), ("x-team", "acme")]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(keys.contains_key("openai"));
    }
    admin
        .delete_for(Owner::team("acme"), "openai")
        .await
        .unwrap();
    let start = Instant::now();
    for m in members {
        loop {
            let (_, keys) = fetch(&server, &[("x-user", m), ("x-team", "acme")]).await;
            if !keys.contains_key("openai") {
                break;
            }
            assert!(start.elapsed() < BOUND, "{m} still served the revoked key");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What an authentication layer in front leaves in the request.
#[derive(Clone)]
struct Claims {
    sub: String,
    workspace: Option<String>,
}

async fn the_team_comes_from_the_auth_extension(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open_teams(keyring(), false, POLL).await;
    seed(&vault).await;
    let resolver = FromExtension::new(|c: &Claims| c.sub.as_str())
        .with_team(|c: &Claims| c.workspace.as_deref());
    // The auth stand-in: a session token names the user and the workspace it verified.
    let auth = middleware::from_fn(|mut req: Request, next: Next| async move {
        let claims = match req.headers().get("authorization").map(|v| v.as_bytes()) {
            Some(b"token-alice-acme") => Some(Claims {
                sub: "alice".to_owned(),
                workspace: Some("acme".to_owned()),
            }),
            Some(b"token-alice") => Some(Claims {
                sub: "alice".to_owned(),
                workspace: None,
            }),
            _ => None,
        };
        if let Some(claims) = claims {
            req.extensions_mut().insert(claims);
        }
        next.run(req).await
    });
    let router = app(ByokLayer::new(vault.clone(), resolver)).layer(auth);
    let server = Server::start(router).await;
    let (status, keys) = fetch(&server, &[("authorization", "token-alice-acme")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        keys,
        seen(&[
            ("gemini", "AIza-acme-team-0001", "team"),
            ("openai", "sk-alice-own-0001", "database"),
        ])
    );
    // The same user acting for no team, even if the client sends a team header.
    let (_, keys) = fetch(
        &server,
        &[("authorization", "token-alice"), ("x-team", "acme")],
    )
    .await;
    assert_eq!(keys, seen(&[("openai", "sk-alice-own-0001", "database")]));
}

/// A resolver written by the application, overriding `resolve_team` but not
/// `names_team`: the default (`true`) sends its requests the member's way, so the team
/// is never skipped, while its requests acting for no team are served as a single user.
#[derive(Clone)]
struct OwnResolver;

impl<B> ResolveUser<B> for OwnResolver {
    fn resolve<'r>(&self, request: &'r http::Request<B>) -> Option<std::borrow::Cow<'r, str>> {
        let user = request.headers().get("x-own-user")?.to_str().ok()?;
        Some(std::borrow::Cow::Borrowed(user))
    }

    fn resolve_team<'r>(&self, request: &'r http::Request<B>) -> Option<std::borrow::Cow<'r, str>> {
        let team = request.headers().get("x-own-team")?.to_str().ok()?;
        Some(std::borrow::Cow::Borrowed(team))
    }
}

async fn a_resolver_of_its_own_that_names_a_team_is_served_the_chain(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open_teams(keyring(), false, POLL).await;
    seed(&vault).await;
    let server = Server::start(app(ByokLayer::new(vault.clone(), OwnResolver))).await;
    for _ in 0..2 {
        // A miss, then a hit.
        let (status, keys) =
            fetch(&server, &[("x-own-user", "alice"), ("x-own-team", "acme")]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            keys,
            seen(&[
                ("gemini", "AIza-acme-team-0001", "team"),
                ("openai", "sk-alice-own-0001", "database"),
            ])
        );
        let (_, keys) = fetch(&server, &[("x-own-user", "alice")]).await;
        assert_eq!(keys, seen(&[("openai", "sk-alice-own-0001", "database")]));
    }
}
