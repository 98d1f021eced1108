//! The routes: onboarding steps, each user's progress in the app's tables, keys in the
//! vault, and the later steps behind the vault's `428` gate.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{middleware, Extension, Form, Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use tower_byok::env_file::{self, EnvMapping};
use tower_byok::resolve::FromExtension;
use tower_byok::{ByokLayer, ErrorKind, Rejection, UserKeys, Vault};

use super::auth::{self, Claims, Tokens};
use super::db::{unix, Db, Progress};
use super::pages;

/// The steps, in order. Step 1 is the key step; the others are gated on [`REQUIRED`].
pub(crate) struct Step {
    pub(crate) number: i64,
    pub(crate) title: &'static str,
    /// The form fields the step keeps as its data.
    pub(crate) fields: &'static [&'static str],
}

pub(crate) const STEPS: &[Step] = &[
    Step {
        number: 1,
        title: "Your provider keys",
        fields: &[],
    },
    Step {
        number: 2,
        title: "Your website",
        fields: &["website"],
    },
    Step {
        number: 3,
        title: "Research preferences",
        fields: &["depth", "topics"],
    },
    Step {
        number: 4,
        title: "Finish",
        fields: &[],
    },
];

/// The step number of a user who has finished.
pub(crate) const DONE: i64 = 5;

/// Providers every user must have a key for before the later steps.
pub(crate) const REQUIRED: [&str; 2] = ["gemini", "exa"];

/// How long keys from an uploaded `.env` are kept: the old app's session, done right.
pub(crate) const ENV_KEYS_TTL: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug)]
pub(crate) struct AppState {
    pub(crate) vault: Vault,
    pub(crate) db: Db,
    pub(crate) tokens: Tokens,
}

pub(crate) fn app(state: AppState) -> Router {
    let user = || FromExtension::new(|c: &Claims| c.sub.as_str());
    let open = Router::new()
        .route("/onboarding", get(page))
        .route("/onboarding/progress", get(progress))
        .route("/onboarding/keys", post(save_keys))
        .route("/onboarding/keys/env", post(upload_env))
        .layer(ByokLayer::new(state.vault.clone(), user()).with_require_user(true));
    // Without the required keys, these answer 428 and point back to the key step.
    let gated = Router::new()
        .route("/onboarding/step/{n}", post(submit_step))
        .route("/generate", get(generate))
        .layer(
            ByokLayer::new(state.vault.clone(), user())
                .with_require_user(true)
                .with_required_providers(REQUIRED)
                .with_rejection_response(back_to_key_step),
        );
    Router::new()
        .route("/", get(|| async { pages::home() }))
        .route("/login", post(auth::login))
        .merge(open)
        .merge(gated)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .with_state(state)
}

/// The vault's 428, plus `Location: /onboarding`, which shows the key step.
fn back_to_key_step(rejection: &Rejection) -> axum::http::Response<Bytes> {
    let mut response = rejection.default_response();
    if let Rejection::MissingProviders { .. } = rejection {
        let location = HeaderValue::from_static("/onboarding");
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// `GET /onboarding`: the page of the step to do now.
async fn page(
    State(state): State<AppState>,
    Extension(claims): Extension<Claims>,
    keys: UserKeys,
) -> Result<Html<String>, ApiError> {
    let progress = state.db.progress(&claims.sub).await?;
    let missing: Vec<&str> = REQUIRED.into_iter().filter(|p| !keys.contains(p)).collect();
    Ok(if !missing.is_empty() {
        pages::key_step(&missing)
    } else if progress.current_step >= DONE {
        pages::done(&progress)
    } else {
        let step = STEPS
            .iter()
            .find(|s| s.number == progress.current_step.max(2));
        pages::step(step.unwrap_or(&STEPS[1]), &progress)
    })
}

/// `GET /onboarding/progress`: the caller's progress and keys (masked), as JSON.
async fn progress(
    State(state): State<AppState>,
    Extension(claims): Extension<Claims>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(progress_json(&state, &claims.sub).await?))
}

async fn progress_json(state: &AppState, user: &str) -> Result<Value, ApiError> {
    let Progress {
        current_step,
        steps,
    } = state.db.progress(user).await?;
    let keys: Vec<Value> = (state.vault.list(user).await?.into_iter())
        .filter(|k| !k.is_expired())
        .map(|k| {
            json!({ "provider": k.provider, "masked": k.masked, "fingerprint": k.fingerprint,
                    "expires_at": k.expires_at.map(unix) })
        })
        .collect();
    let completed: Vec<i64> = steps.keys().copied().collect();
    Ok(
        json!({ "user": user, "current_step": current_step, "done": current_step >= DONE,
               "completed": completed, "data": steps, "keys": keys }),
    )
}

/// `POST /onboarding/keys` (`gemini=...&exa=...`): stores each key that passes the vault's
/// checks; the key step is complete once every required provider has one.
async fn save_keys(
    State(state): State<AppState>,
    Extension(claims): Extension<Claims>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let mut errors = serde_json::Map::new();
    for provider in REQUIRED {
        let Some(key) = form
            .get(provider)
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
        else {
            continue;
        };
        match state.vault.put(&claims.sub, provider, key).await {
            Ok(_) => {}
            Err(e) if refused_key(&e) => {
                errors.insert(provider.into(), e.to_string().into());
            }
            Err(e) => return Err(e.into()),
        }
    }
    finish_key_step(&state, &claims.sub, &headers, json!({ "errors": errors })).await
}

#[derive(Deserialize)]
struct EnvUpload {
    env: String,
}

/// `POST /onboarding/keys/env` (`env=<the .env text>`): the keys in an uploaded `.env`,
/// stored for one hour, as the old app's session store held them.
///
/// They replace the user's keys for the same providers, permanent ones included: after
/// the hour the user has no `gemini` or `exa` key and the gate sends them back to the
/// key step. `POST /onboarding/keys` is the way to keep a key.
async fn upload_env(
    State(state): State<AppState>,
    Extension(claims): Extension<Claims>,
    headers: HeaderMap,
    Form(upload): Form<EnvUpload>,
) -> Result<Response, ApiError> {
    let keys = env_file::parse(&upload.env, &EnvMapping::new())
        .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let expires_at = SystemTime::now() + ENV_KEYS_TTL;
    let stored = match state
        .vault
        .put_env_keys(&claims.sub, &keys, Some(expires_at))
        .await
    {
        Ok(stored) => stored,
        Err(e) if refused_key(&e) => {
            return Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()));
        }
        Err(e) => return Err(e.into()),
    };
    let skipped: Vec<&str> = keys.skipped().collect(); // variable names, never values
    let report = json!({ "stored": stored, "skipped": skipped, "expires_at": unix(expires_at) });
    finish_key_step(&state, &claims.sub, &headers, report).await
}

/// A key the vault would not store: its message names the check or the line, never
/// the key, so the user may see it.
fn refused_key(e: &tower_byok::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::InvalidSecret | ErrorKind::KeyRejected | ErrorKind::TooManyProviders
    )
}

/// Completes step 1 if every required provider now has a live key; replies with
/// `report` and the progress (or, to a browser, the next page).
async fn finish_key_step(
    state: &AppState,
    user: &str,
    headers: &HeaderMap,
    mut report: Value,
) -> Result<Response, ApiError> {
    let stored = state.vault.list(user).await?;
    let has = |p: &str| stored.iter().any(|k| k.provider == p && !k.is_expired());
    let missing: Vec<&str> = REQUIRED.into_iter().filter(|p| !has(p)).collect();
    let failed = report["errors"].as_object().is_some_and(|e| !e.is_empty());
    let status = if missing.is_empty() {
        // The step's data says which providers are set, never their keys.
        let data = json!({ "providers": REQUIRED });
        state.db.complete_step(user, 1, &data, 2).await?;
        if failed {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::OK
        }
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    report["missing"] = json!(missing);
    report["progress"] = progress_json(state, user).await?;
    Ok(reply(headers, status, report))
}

/// `POST /onboarding/step/{n}` (n = 2, 3, 4): the step's fields, in order.
async fn submit_step(
    State(state): State<AppState>,
    Extension(claims): Extension<Claims>,
    Path(n): Path<i64>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let Some(step) = STEPS.iter().find(|s| s.number == n && n > 1) else {
        return Err(ApiError(StatusCode::NOT_FOUND, "no such step".into()));
    };
    // The gate let the request in, so the key step's keys are there (imported, say).
    let current = state.db.progress(&claims.sub).await?.current_step.max(2);
    if n > current {
        let msg = format!("finish step {current} first");
        return Err(ApiError(StatusCode::CONFLICT, msg));
    }
    let mut data = serde_json::Map::new();
    for field in step.fields {
        match form.get(*field).map(|v| v.trim()) {
            Some(v) if !v.is_empty() && v.len() <= 200 => data.insert((*field).into(), v.into()),
            _ => {
                let msg = format!("`{field}` must be 1 to 200 characters");
                return Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, msg));
            }
        };
    }
    state
        .db
        .complete_step(&claims.sub, n, &Value::Object(data), n + 1)
        .await?;
    Ok(reply(
        &headers,
        StatusCode::OK,
        progress_json(&state, &claims.sub).await?,
    ))
}

/// `GET /generate`: where the finished app would call the providers with the caller's
/// own keys. It only says which keys it would use.
async fn generate(State(state): State<AppState>, keys: UserKeys) -> Json<Value> {
    let using: serde_json::Map<String, Value> = (keys.iter())
        .map(|k| {
            let fingerprint = state.vault.fingerprint(k.expose_secret());
            (
                k.provider().to_owned(),
                json!({ "masked": k.masked(), "fingerprint": fingerprint }),
            )
        })
        .collect();
    Json(json!({ "would_call_with": using }))
}

/// JSON for API clients; for a browser's form post, a redirect to the next page.
fn reply(headers: &HeaderMap, status: StatusCode, body: Value) -> Response {
    if wants_html(headers) {
        Redirect::to("/onboarding").into_response()
    } else {
        (status, Json(body)).into_response()
    }
}

pub(crate) fn wants_html(headers: &HeaderMap) -> bool {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    accept.is_some_and(|a| a.contains("text/html"))
}

/// An error answer: a status and a message that never holds a secret.
#[derive(Debug)]
pub(crate) struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.0, Json(json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            let retry = HeaderValue::from_static("1");
            response.headers_mut().insert(header::RETRY_AFTER, retry);
        }
        response
    }
}

impl From<tower_byok::Error> for ApiError {
    fn from(e: tower_byok::Error) -> Self {
        tracing::error!(error = %e, "vault operation failed"); // never holds a secret
        match e.kind() {
            ErrorKind::Store | ErrorKind::Timeout => Self::unavailable(),
            ErrorKind::InvalidUserId => Self(StatusCode::BAD_REQUEST, "invalid user id".into()),
            _ => Self(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into()),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "progress query failed");
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => Self::unavailable(),
            _ => Self(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into()),
        }
    }
}

impl ApiError {
    fn unavailable() -> Self {
        Self(StatusCode::SERVICE_UNAVAILABLE, "try again shortly".into())
    }
}
