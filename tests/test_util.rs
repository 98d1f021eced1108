//! The `test-util` kit: the isolation check passes on a correct app and fails, with the
//! right failures, on apps broken the ways the old shared `.env`/JSON apps were; its
//! reports never hold a full secret; the small helpers do what their docs say.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{post, put};
use axum::Router;
use bytes::Bytes;
use http::Request as HttpRequest;
use http_body_util::Full;
use tokio::sync::OnceCell;
use tower::{service_fn, ServiceBuilder};
use tower_byok::check::{self, KeyCheck};
use tower_byok::resolve::{FromExtension, FromHeader};
use tower_byok::test_util::{
    memory_vault, user_keys, IsolationCheck, IsolationFailure, IsolationReport, Phase, TestUser,
    TestVault,
};
use tower_byok::{ByokLayer, ProviderKey, UserKeys, Vault};

// ---------------------------------------------------------------------------------
// The apps under check, and how the check talks to them
// ---------------------------------------------------------------------------------

#[derive(Clone)]
struct Claims {
    sub: String,
}

/// Toy bearer auth: `Bearer token-<user>` authenticates `<user>`.
async fn auth(mut req: Request, next: Next) -> Result<Response, StatusCode> {
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let user = header
        .and_then(|v| v.strip_prefix("Bearer token-"))
        .ok_or(StatusCode::UNAUTHORIZED)?;
    let claims = Claims {
        sub: user.to_owned(),
    };
    req.extensions_mut().insert(claims);
    Ok(next.run(req).await)
}

type Sub = fn(&Claims) -> &str;

fn byok(vault: Vault) -> ByokLayer<FromExtension<Claims, Sub>> {
    ByokLayer::new(vault, FromExtension::new((|c| c.sub.as_str()) as Sub))
}

/// What a handler shows of the keys it would call providers with: masked, one a line.
fn show(keys: &UserKeys) -> String {
    keys.iter()
        .map(|k| format!("{} {}\n", k.provider(), k.masked()))
        .collect()
}

fn chat_as(user: &str) -> HttpRequest<Body> {
    HttpRequest::post("/chat")
        .header("authorization", format!("Bearer token-{user}"))
        .body(Body::empty())
        .unwrap()
}

fn put_key_as(user: &str, provider: &str, secret: &str) -> HttpRequest<Body> {
    HttpRequest::put(format!("/keys/{provider}"))
        .header("authorization", format!("Bearer token-{user}"))
        .body(Body::from(secret.to_owned()))
        .unwrap()
}

/// The app done right: the layer serves each user their own keys from the vault, and
/// `PUT /keys/{provider}` stores the caller's key in that vault after a format check.
fn correct_app(vault: Vault) -> Router {
    async fn chat(keys: UserKeys) -> String {
        show(&keys)
    }
    async fn put_key(
        State(vault): State<Vault>,
        claims: axum::Extension<Claims>,
        Path(provider): Path<String>,
        secret: String,
    ) -> StatusCode {
        let format_ok = match provider.as_str() {
            "openai" => check::openai().check_format(&secret),
            "anthropic" => check::anthropic().check_format(&secret),
            "gemini" => check::gemini().check_format(&secret),
            "groq" => check::groq().check_format(&secret),
            _ => Ok(()),
        };
        if format_ok.is_err() {
            return StatusCode::BAD_REQUEST;
        }
        match vault.put(&claims.sub, &provider, &secret).await {
            Ok(_) => StatusCode::NO_CONTENT,
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
    Router::new()
        .route("/chat", post(chat))
        .route("/keys/{provider}", put(put_key))
        .with_state(vault.clone())
        .layer(byok(vault))
        .layer(middleware::from_fn(auth))
}

/// The old `.env` bug: one key per provider for the whole app, the last one stored.
/// (Kept per app instance, as the file was per deployment.)
fn global_env_app(_vault: Vault) -> Router {
    type Env = Arc<Mutex<HashMap<String, String>>>;
    async fn chat(State(env): State<Env>) -> String {
        let env = env.lock().unwrap();
        let keys: UserKeys = env
            .iter()
            .map(|(p, s)| ProviderKey::from_secret(p, s.as_str()).unwrap())
            .collect();
        show(&keys)
    }
    async fn put_key(State(env): State<Env>, Path(provider): Path<String>, secret: String) {
        env.lock().unwrap().insert(provider, secret);
    }
    Router::new()
        .route("/chat", post(chat))
        .route("/keys/{provider}", put(put_key))
        .with_state(Env::default())
        .layer(middleware::from_fn(auth))
}

/// A per-process cache of "the keys" that forgot the user: the first keys it saw serve
/// everyone.
fn first_user_cache_app(vault: Vault) -> Router {
    type Cached = Arc<Mutex<Option<UserKeys>>>;
    async fn chat(State(cached): State<Cached>, keys: UserKeys) -> String {
        let keys = cached.lock().unwrap().get_or_insert(keys).clone();
        show(&keys)
    }
    Router::new()
        .route("/chat", post(chat))
        .with_state(Cached::default())
        .layer(byok(vault))
        .layer(middleware::from_fn(auth))
}

/// Per-user keys done right except where they live: a vault of the app's own on an
/// in-memory SQLite database, opened at the first request, gone with the process.
fn in_memory_app(_vault: Vault) -> Router {
    type Own = Arc<OnceCell<Vault>>;
    async fn own(cell: &Own) -> &Vault {
        cell.get_or_init(memory_vault).await
    }
    async fn chat(State(cell): State<Own>, claims: axum::Extension<Claims>) -> String {
        show(&own(&cell).await.get_all(&claims.sub).await.unwrap())
    }
    async fn put_key(
        State(cell): State<Own>,
        claims: axum::Extension<Claims>,
        Path(provider): Path<String>,
        secret: String,
    ) {
        own(&cell)
            .await
            .put(&claims.sub, &provider, &secret)
            .await
            .unwrap();
    }
    Router::new()
        .route("/chat", post(chat))
        .route("/keys/{provider}", put(put_key))
        .with_state(Own::default())
        .layer(middleware::from_fn(auth))
}

/// Keys handed from a middleware to the handler through one shared slot: right one
/// request at a time, wrong as soon as two are in flight.
fn shared_slot_app(vault: Vault) -> Router {
    /// The slot every request writes its keys into and reads them back from; how many
    /// requests are in flight, and how many of those have written the slot and wait.
    #[derive(Clone, Default)]
    struct Shared {
        slot: Arc<Mutex<UserKeys>>,
        in_flight: Arc<AtomicUsize>,
        parked: Arc<AtomicUsize>,
    }
    async fn count(State(shared): State<Shared>, req: Request, next: Next) -> Response {
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        let response = next.run(req).await;
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        response
    }
    async fn chat(State(shared): State<Shared>, keys: UserKeys) -> String {
        *shared.slot.lock().unwrap() = keys;
        shared.parked.fetch_add(1, Ordering::SeqCst);
        // "A database call in between", which lasts until every request in flight has
        // written the slot too: requests that overlap always clobber each other, so the
        // bug shows whenever the check has two users' requests in flight at once, however
        // the loads before the handler happen to finish. Alone, a request goes on at once.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            let everyone =
                shared.parked.load(Ordering::SeqCst) >= shared.in_flight.load(Ordering::SeqCst);
            if everyone || std::time::Instant::now() > deadline {
                break;
            }
        }
        let keys = shared.slot.lock().unwrap().clone();
        shared.parked.fetch_sub(1, Ordering::SeqCst);
        show(&keys)
    }
    let shared = Shared::default();
    Router::new()
        .route("/chat", post(chat))
        .with_state(shared.clone())
        .layer(byok(vault))
        .layer(middleware::from_fn(auth))
        .layer(middleware::from_fn_with_state(shared, count))
}

/// The failures of `report`, without their masked keys and details, to compare.
fn found(report: &IsolationReport) -> Vec<String> {
    report
        .failures()
        .iter()
        .map(|f| match f {
            IsolationFailure::ServedOthersKey {
                phase,
                user,
                owner,
                provider,
                ..
            } => format!("{phase:?} {user} served {owner}'s {provider}"),
            IsolationFailure::MissingOwnKey {
                phase,
                user,
                provider,
                ..
            } => format!("{phase:?} {user} missing own {provider}"),
            other => format!("{other}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// The check passes where it should
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_correct_app_passes_with_keys_stored_through_the_vault() {
    let report = IsolationCheck::new(correct_app, chat_as).run().await;
    report.assert_ok();
    // 1 + 3 one by one, 4 rounds of 3 at once, 3 after reopening.
    assert_eq!(report.requests(), 4 + 12 + 3);
    assert_eq!(report.to_string(), "isolation check passed (19 requests)");
}

#[tokio::test]
async fn a_correct_app_passes_with_keys_stored_through_its_own_endpoint() {
    // Its endpoint runs the crate's built-in format checks: the check's keys pass them.
    let report = IsolationCheck::new(correct_app, chat_as)
        .users("alice", "bob", "carol")
        .providers(["OpenAI", "gemini", "anthropic", "groq", "exa"])
        .store_through_app(put_key_as)
        .run()
        .await;
    report.assert_ok();
    // 2 users x 5 providers x 2 generations of stores, and the 19 requests to chat.
    assert_eq!(report.requests(), 20 + 19);
}

#[tokio::test]
async fn a_plain_tower_service_with_a_trusted_header_passes() {
    let make_app = |vault: Vault| {
        ServiceBuilder::new()
            .layer(ByokLayer::new(vault, FromHeader::new("x-user")))
            .service(service_fn(|req: HttpRequest<String>| async move {
                let keys = req.extensions().get::<UserKeys>().cloned();
                Ok::<_, Infallible>(http::Response::new(Full::<Bytes>::from(show(
                    &keys.unwrap_or_default(),
                ))))
            }))
    };
    let request = |user: &str| {
        HttpRequest::get("/")
            .header("x-user", user)
            .body(String::new())
            .unwrap()
    };
    IsolationCheck::new(make_app, request)
        .run()
        .await
        .assert_ok();
}

/// A plain service behind the layer with `resolver`, answering with the keys it got.
fn service_app<R: tower_byok::resolve::ResolveUser<String>>(
    vault: Vault,
    resolver: R,
) -> impl tower::Service<
    HttpRequest<String>,
    Response = http::Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> {
    ServiceBuilder::new()
        .layer(ByokLayer::new(vault, resolver))
        .service(service_fn(|req: HttpRequest<String>| async move {
            let keys = req.extensions().get::<UserKeys>().cloned();
            Ok::<_, Infallible>(http::Response::new(Full::<Bytes>::from(show(
                &keys.unwrap_or_default(),
            ))))
        }))
}

fn as_user(user: &str) -> HttpRequest<String> {
    HttpRequest::get("/")
        .header("x-user", user)
        .body(String::new())
        .unwrap()
}

fn as_member(user: &str, team: &str) -> HttpRequest<String> {
    HttpRequest::get("/")
        .header("x-user", user)
        .header("x-team", team)
        .body(String::new())
        .unwrap()
}

#[tokio::test]
async fn a_correct_app_with_a_team_passes() {
    let make_app =
        |vault: Vault| service_app(vault, FromHeader::new("x-user").with_team_header("x-team"));
    let report = IsolationCheck::new(make_app, as_user)
        .providers(["openai", "gemini"])
        .team("acme", as_member)
        .run()
        .await;
    report.assert_ok();
    // The 19 requests without a team, then twice 4 rounds of A, B and C.
    assert_eq!(report.requests(), 19 + 12 + 12);
}

// ---------------------------------------------------------------------------------
// The check fails where it should, naming what went wrong
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn an_app_that_serves_the_team_to_everyone_is_reported() {
    // The team is taken from a default, not from who is asking: every request acts for it.
    let make_app = |vault: Vault| {
        let resolver = tower_byok::resolve::FromFn::new(|req: &HttpRequest<String>| {
            let user = req.headers().get("x-user")?.to_str().ok()?;
            Some(user.to_owned())
        })
        .with_team(|_: &HttpRequest<String>| Some("acme".to_owned()));
        service_app(vault, resolver)
    };
    let report = IsolationCheck::new(make_app, as_user)
        .team("acme", as_member)
        .run()
        .await;
    let outsiders: Vec<_> = report
        .failures()
        .iter()
        .map(|f| match f {
            IsolationFailure::ServedTeamKey {
                phase,
                user,
                provider,
                masked,
            } => {
                assert!(masked.contains('…'), "masked: {masked}");
                format!("{phase:?} {user} served the team's {provider}")
            }
            other => panic!("only team keys served to outsiders: {other}"),
        })
        .collect();
    // C, who has no key of their own, is served the team's; B's own key wins.
    assert_eq!(outsiders, ["Team C served the team's openai"]);
    assert!(report
        .to_string()
        .contains("with a team: user C, outside the team, was served the team's openai key sk-"));
}

#[tokio::test]
async fn an_app_that_ignores_the_team_is_reported() {
    let make_app = |vault: Vault| service_app(vault, FromHeader::new("x-user"));
    let report = IsolationCheck::new(make_app, as_user)
        .providers(["openai", "gemini"])
        .team("acme", as_member)
        .run()
        .await;
    let missing: Vec<_> = report
        .failures()
        .iter()
        .map(|f| match f {
            IsolationFailure::MissingTeamKey {
                phase,
                user,
                provider,
                status,
                ..
            } => format!("{phase:?} {user} missing the team's {provider} ({status})"),
            other => panic!("only the member's missing team keys: {other}"),
        })
        .collect();
    assert_eq!(
        missing,
        [
            "Team A missing the team's openai (200 OK)",
            "Team A missing the team's gemini (200 OK)",
        ]
    );
}

#[test]
#[should_panic(expected = "IsolationCheck::team")]
fn a_bad_team_id_is_refused() {
    let make_app = |vault: Vault| service_app(vault, FromHeader::new("x-user"));
    let _ = IsolationCheck::new(make_app, as_user).team(" acme", as_member);
}

#[tokio::test]
async fn the_global_env_key_bug_is_reported() {
    let report = IsolationCheck::new(global_env_app, chat_as)
        .store_through_app(put_key_as)
        .run()
        .await;
    assert!(!report.is_ok());
    let found = found(&report);
    for expected in [
        "OneByOne A served B's openai",
        "OneByOne A missing own openai",
        "OneByOne C served B's openai",
        "Reopened A missing own openai",
        "Reopened B missing own openai",
    ] {
        assert!(
            found.iter().any(|f| f == expected),
            "{expected} in {found:?}"
        );
    }
    assert!(
        !found.iter().any(|f| f.starts_with("OneByOne B")),
        "B stored last, so B was served right: {found:?}"
    );
    let text = report.to_string();
    assert!(
        text.contains("one by one: user A was served user B's openai key sk-"),
        "{text}"
    );
    let panic = std::panic::catch_unwind(|| report.assert_ok()).unwrap_err();
    assert_eq!(panic.downcast_ref::<String>(), Some(&text));
}

#[tokio::test]
async fn a_cache_that_serves_the_first_users_keys_to_all_is_reported() {
    let report = IsolationCheck::new(first_user_cache_app, chat_as)
        .run()
        .await;
    let found = found(&report);
    for expected in [
        "OneByOne B served A's openai",
        "OneByOne B missing own openai",
        "OneByOne C served A's openai",
        "Concurrent A missing own openai",
    ] {
        assert!(
            found.iter().any(|f| f == expected),
            "{expected} in {found:?}"
        );
    }
    assert!(
        !found.iter().any(|f| f.starts_with("OneByOne A")),
        "A came first, so A was served right: {found:?}"
    );
    // The lines the README and the module docs show.
    let text = report.to_string();
    assert!(text.starts_with("isolation check failed ("), "{text}");
    assert!(text.contains(" failures, 19 requests):\n  - one by one: user B was not served their own openai key sk-"), "{text}");
    assert!(
        text.contains(
            " (status 200 OK)\n  - one by one: user B was served user A's openai key sk-"
        ),
        "{text}"
    );
    assert!(
        text.contains("\n  - concurrently: user A was not served their own openai key sk-"),
        "{text}"
    );
}

#[tokio::test]
async fn keys_that_do_not_survive_a_restart_are_reported() {
    let report = IsolationCheck::new(in_memory_app, chat_as)
        .store_through_app(put_key_as)
        .run()
        .await;
    assert_eq!(
        found(&report),
        [
            "Reopened A missing own openai",
            "Reopened B missing own openai"
        ],
        "{report}"
    );
    let IsolationFailure::MissingOwnKey { masked, status, .. } = &report.failures()[0] else {
        panic!("{report}");
    };
    assert_eq!(*status, StatusCode::OK);
    assert!(
        masked.starts_with("sk-") && masked.contains('…'),
        "{masked}"
    );
    assert_eq!(report.failures()[0].phase(), Phase::Reopened);
    assert_eq!(report.failures()[1].user(), Some(TestUser::B));
}

#[tokio::test]
async fn keys_shared_between_requests_in_flight_are_reported() {
    let report = IsolationCheck::new(shared_slot_app, chat_as).run().await;
    assert!(!report.is_ok());
    assert!(
        report
            .failures()
            .iter()
            .all(|f| f.phase() == Phase::Concurrent),
        "one request at a time the app is right: {report}"
    );
}

#[tokio::test]
async fn an_app_that_refuses_to_store_is_reported() {
    let report = IsolationCheck::new(correct_app, chat_as)
        .store_through_app(|user, provider, _secret| put_key_as(user, provider, "not-a-key"))
        .run()
        .await;
    let first = report.failures()[0].to_string();
    assert_eq!(
        first,
        "one by one: storing user A's openai key failed: the app answered 400 Bad Request"
    );
}

#[test]
#[should_panic(expected = "IsolationCheck::users: the three user ids must differ")]
fn the_same_user_twice_is_refused() {
    let _ = IsolationCheck::new(correct_app, chat_as).users("alice", "bob", "alice");
}

#[test]
#[should_panic(expected = "IsolationCheck::providers: provider 1: ")]
fn an_invalid_provider_is_refused_without_echoing_it() {
    let _ = IsolationCheck::new(correct_app, chat_as).providers(["openai", "sk-Not A Provider"]);
}

// ---------------------------------------------------------------------------------
// Reports show keys masked, never in full
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_report_never_holds_a_full_secret() {
    // An app that leaks every key it has seen in full to everyone, and whose errors
    // quote keys too; it records them, so the test knows the check's secrets.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let make_app = |vault: Vault| {
        let seen = seen.clone();
        ServiceBuilder::new()
            .layer(ByokLayer::new(vault, FromHeader::new("x-user")))
            .service(service_fn(move |req: HttpRequest<String>| {
                let seen = seen.clone();
                async move {
                    let keys = req
                        .extensions()
                        .get::<UserKeys>()
                        .cloned()
                        .unwrap_or_default();
                    let mut seen = seen.lock().unwrap();
                    for key in keys.iter() {
                        if !seen.iter().any(|s| s == key.expose_secret()) {
                            seen.push(key.expose_secret().to_owned());
                        }
                    }
                    if req.headers()["x-user"] == "isolation-user-c" {
                        return Err(format!("upstream refused the keys {}", seen.join(" and ")));
                    }
                    Ok(http::Response::builder()
                        .header("x-keys", seen.join(","))
                        .body(Full::<Bytes>::from(seen.join("\n")))
                        .unwrap())
                }
            }))
    };
    let request = |user: &str| {
        HttpRequest::get("/")
            .header("x-user", user)
            .body(String::new())
            .unwrap()
    };
    let report = IsolationCheck::new(make_app, request).run().await;

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "A's and B's keys, two generations each");
    let text = format!("{report}\n{report:?}");
    for secret in &seen {
        assert!(!text.contains(secret.as_str()), "a full secret in: {text}");
        let masked = ProviderKey::from_secret("openai", secret.as_str())
            .unwrap()
            .masked();
        assert!(text.contains(&masked), "{masked} in: {text}");
    }
    assert!(
        report.failures().iter().any(|f| matches!(
            f,
            IsolationFailure::RequestFailed { user: TestUser::C, detail, .. }
                if detail.starts_with("upstream refused the keys sk-") && detail.contains('…')
        )),
        "{report}"
    );
    assert!(
        found(&report)
            .iter()
            .any(|f| f == "OneByOne A served B's openai"),
        "{report}"
    );
}

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
