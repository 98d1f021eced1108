//! The routes: onboarding steps, each user's progress in the app's tables, keys in the
//! vault, and the later steps behind the vault's `428` gate.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
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

/// One field of a step's form.
pub(crate) struct Field {
    pub(crate) name: &'static str,
    pub(crate) label: &'static str,
    pub(crate) hint: &'static str,
    pub(crate) placeholder: &'static str,
}

/// The steps, in order. Step 1 is the key step; the others are gated on [`REQUIRED`].
pub(crate) struct Step {
    pub(crate) number: i64,
    pub(crate) title: &'static str,
    pub(crate) intro: &'static str,
    /// The form fields the step keeps as its data.
    pub(crate) fields: &'static [Field],
}

pub(crate) const STEPS: &[Step] = &[
    Step {
        number: 1,
        title: "Your provider keys",
        intro: "",
        fields: &[],
    },
    Step {
        number: 2,
        title: "Your website",
        intro: "The site your content is for.",
        fields: &[Field {
            name: "website",
            label: "Website address",
            hint: "Its full address, up to 200 characters.",
            placeholder: "https://example.com",
        }],
    },
    Step {
        number: 3,
        title: "Research preferences",
        intro: "How the research for your content should be done.",
        fields: &[
            Field {
                name: "depth",
                label: "Research depth",
                hint: "For example: quick, standard or thorough.",
                placeholder: "standard",
            },
            Field {
                name: "topics",
                label: "Topics",
                hint: "What you write about, separated by commas.",
                placeholder: "rust, web security",
            },
        ],
    },
    Step {
        number: 4,
        title: "Finish",
        intro: "Check the steps above (each one links to its page), then finish.",
        fields: &[],
    },
];

/// The step number of a user who has finished.
pub(crate) const DONE: i64 = 5;

/// Providers every user must have a key for before the later steps.
pub(crate) const REQUIRED: [&str; 2] = ["gemini", "exa"];

/// What the pages say about each required provider.
pub(crate) struct Provider {
    pub(crate) id: &'static str,
    pub(crate) name: &'static str,
    /// HTML: the format and where to get a key.
    pub(crate) hint: &'static str,
    pub(crate) placeholder: &'static str,
    /// The `.env` variables read for it (the crate's default `EnvMapping`).
    pub(crate) env_names: &'static [&'static str],
}

pub(crate) const PROVIDERS: [Provider; 2] = [
    Provider {
        id: "gemini",
        name: "Gemini",
        hint: "Starts with <code>AIza</code>, 39 characters. Create one in Google AI Studio, \
               under \"Get API key\" (aistudio.google.com/apikey).",
        placeholder: "AIza...",
        env_names: &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
    },
    Provider {
        id: "exa",
        name: "Exa",
        hint: "A 36-character UUID such as <code>1a2b3c4d-...</code>. Find it in the Exa \
               dashboard, under \"API keys\" (dashboard.exa.ai/api-keys).",
        placeholder: "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
        env_names: &["EXA_API_KEY"],
    },
];

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
        .route("/onboarding/keys", get(keys_page).post(save_keys))
        .route("/onboarding/keys/env", post(upload_env))
        .route("/onboarding/keys/{provider}/delete", post(delete_key))
        .layer(
            ByokLayer::new(state.vault.clone(), user())
                .with_require_user(true)
                .with_rejection_response(with_page),
        );
    // Without the required keys, these answer 428 and point back to the key step.
    let gated = Router::new()
        .route("/onboarding/step/{n}", post(submit_step))
        .route("/generate", get(generate))
        .layer(
            ByokLayer::new(state.vault.clone(), user())
                .with_require_user(true)
                .with_required_providers(REQUIRED)
                .with_rejection_response(with_page),
        );
    // Opening a form's address (a bookmark, a typed URL) leads to the form's page.
    let to = |path: &'static str| get(move || async move { Redirect::to(path) });
    Router::new()
        .route("/", get(home))
        .route("/login", to("/").post(auth::login))
        .route("/logout", to("/").post(auth::logout))
        .route("/onboarding/keys/env", to("/onboarding/keys"))
        .route("/onboarding/step/{n}", to("/onboarding"))
        .merge(open)
        .merge(gated)
        .layer(middleware::from_fn(negotiate))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .with_state(state)
}

/// The vault's own response (JSON, for API clients), with the page a browser gets
/// instead in its extensions (see [`negotiate`]); a 428 also says `Location:
/// /onboarding`, which shows the key step.
fn with_page(rejection: &Rejection) -> axum::http::Response<Bytes> {
    let mut response = rejection.default_response();
    let page = match rejection {
        Rejection::Unauthenticated => pages::unauthenticated(),
        Rejection::MissingProviders { missing } => {
            let location = HeaderValue::from_static("/onboarding");
            response.headers_mut().insert(header::LOCATION, location);
            pages::missing_keys(missing)
        }
        _ => pages::ErrorPage::reason(
            "Try again shortly",
            "Your keys could not be loaded just now.",
            ("/onboarding", "Back to onboarding"),
        ),
    };
    response.extensions_mut().insert(page);
    response
}

/// Content negotiation for errors: a browser (`Accept: text/html`, which every browser
/// sends for a page or a form post; `curl -d` sends a form too, so the form content type
/// cannot tell) gets every error as an HTML page with the reason and a way back. API
/// clients keep the JSON.
async fn negotiate(req: Request, next: Next) -> Response {
    if !wants_html(req.headers()) {
        return next.run(req).await;
    }
    let user = req.extensions().get::<Claims>().map(|c| c.sub.clone());
    let response = next.run(req).await;
    let status = response.status();
    let is_html = (response.headers().get(header::CONTENT_TYPE))
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if is_html || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let page = match parts.extensions.remove::<pages::ErrorPage>() {
        Some(page) => page,
        None => {
            // An `ApiError` (JSON `{"error": ..}`) or an extractor's plain-text rejection:
            // both only ever hold the app's own words, never a secret.
            let bytes = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            let reason = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| text.trim().to_owned());
            let reason = match (reason.is_empty(), status) {
                (false, _) => reason,
                (true, StatusCode::NOT_FOUND) => "There is no page at this address.".into(),
                (true, StatusCode::METHOD_NOT_ALLOWED) => {
                    "This address is for sending a form, not for opening.".into()
                }
                (true, _) => status.canonical_reason().unwrap_or("Error").into(),
            };
            let back = if user.is_some() {
                ("/onboarding", "Back to onboarding")
            } else {
                ("/", "Back to sign-in")
            };
            let title = match status {
                StatusCode::CONFLICT => "Not yet",
                StatusCode::UNPROCESSABLE_ENTITY | StatusCode::BAD_REQUEST => {
                    "Please check what you entered"
                }
                StatusCode::SERVICE_UNAVAILABLE => "Try again shortly",
                StatusCode::UNAUTHORIZED => "Please sign in",
                StatusCode::NOT_FOUND => "Not found",
                _ => "Something went wrong",
            };
            pages::ErrorPage::reason(title, &reason, back)
        }
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    let html = HeaderValue::from_static("text/html; charset=utf-8");
    parts.headers.insert(header::CONTENT_TYPE, html);
    let body = page.render(user.as_deref()).0;
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// `GET /`: the sign-in form, or a link onwards for a signed-in user.
async fn home(claims: Option<Extension<Claims>>) -> Html<String> {
    pages::home(claims.as_ref().map(|c| c.sub.as_str()))
}

#[derive(Deserialize)]
struct Show {
    step: Option<i64>,
}

/// `GET /onboarding[?step=n]`: the page of the step to do now, or of an earlier step to
/// change (`?step=n`, any step up to the current one; later steps keep their data).
async fn page(
    State(state): State<AppState>,
    Extension(claims): Extension<Claims>,
    keys: UserKeys,
    Query(show): Query<Show>,
) -> Result<Response, ApiError> {
    let user = claims.sub.as_str();
    let progress = state.db.progress(user).await?;
    let missing = REQUIRED.into_iter().any(|p| !keys.contains(p));
    if missing || show.step == Some(1) {
        return key_step(&state, user, &BTreeMap::new(), missing).await;
    }
    let current = progress.current_step.max(2);
    let wanted = show.step.filter(|n| (2..DONE).contains(n) && *n <= current);
    if wanted.is_none() && progress.current_step >= DONE {
        let keys = state.vault.list(user).await?;
        return Ok(pages::done(user, &progress, &keys).into_response());
    }
    let number = wanted.unwrap_or(current);
    let step = STEPS.iter().find(|s| s.number == number);
    Ok(pages::step(user, step.unwrap_or(&STEPS[1]), &progress, None, None).into_response())
}

/// `GET /onboarding/keys`: the user's keys, masked, to replace or delete.
async fn keys_page(
    State(state): State<AppState>,
    Extension(claims): Extension<Claims>,
) -> Result<Response, ApiError> {
    key_step(&state, &claims.sub, &BTreeMap::new(), false).await
}

/// The key page (step 1 if `step`), with `errors` beside their fields: `422` if there
/// are any.
async fn key_step(
    state: &AppState,
    user: &str,
    errors: &BTreeMap<&'static str, String>,
    step: bool,
) -> Result<Response, ApiError> {
    let keys = state.vault.list(user).await?;
    let progress = state.db.progress(user).await?;
    let view = pages::KeyPage {
        user,
        keys: &keys,
        errors,
        step,
        progress: &progress,
    };
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    Ok((status, pages::key_page(&view)).into_response())
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
/// checks; the key step is complete once every required provider has one. An empty
/// field keeps the stored key.
async fn save_keys(
    State(state): State<AppState>,
    Extension(claims): Extension<Claims>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let mut errors = BTreeMap::new();
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
                errors.insert(provider, e.to_string());
            }
            Err(e) => return Err(e.into()),
        }
    }
    let missing = finish_key_step(&state, &claims.sub).await?;
    if wants_html(&headers) {
        for provider in &missing {
            let name = pages::provider_name(provider);
            (errors.entry(*provider))
                .or_insert_with(|| format!("Enter your {name} key: the next steps need it."));
        }
        return browser_reply(&state, &claims.sub, errors).await;
    }
    let report = json!({ "errors": errors });
    json_reply(&state, &claims.sub, missing, report).await
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
    let html = wants_html(&headers);
    let user = claims.sub.as_str();
    let state = &state;
    let refused = |reason: String| async move {
        if html {
            browser_reply(state, user, BTreeMap::from([("env", reason)])).await
        } else {
            Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, reason))
        }
    };
    let keys = match env_file::parse(&upload.env, &EnvMapping::new()) {
        Ok(keys) => keys,
        Err(e) => return refused(e.to_string()).await,
    };
    let skipped: Vec<&str> = keys.skipped().collect(); // variable names, never values
    if keys.is_empty() && html {
        let names: Vec<&str> = PROVIDERS
            .iter()
            .flat_map(|p| p.env_names)
            .copied()
            .collect();
        let skipped = if skipped.is_empty() {
            String::new()
        } else {
            format!(" (skipped: {})", skipped.join(", "))
        };
        let reason = format!(
            "No key found in the pasted text{skipped}. Paste lines such as {}=...",
            names.join("=... or ")
        );
        return refused(reason).await;
    }
    let expires_at = SystemTime::now() + ENV_KEYS_TTL;
    let stored = match state
        .vault
        .put_env_keys(user, &keys, Some(expires_at))
        .await
    {
        Ok(stored) => stored,
        Err(e) if refused_key(&e) => return refused(e.to_string()).await,
        Err(e) => return Err(e.into()),
    };
    let missing = finish_key_step(state, user).await?;
    if html {
        let mut errors = BTreeMap::new();
        if !missing.is_empty() {
            let names: Vec<&str> = missing.iter().map(|p| pages::provider_name(p)).collect();
            let reason = format!(
                "The pasted text held no {} key: add it above, or paste it here.",
                names.join(" or ")
            );
            errors.insert("env", reason);
        }
        return browser_reply(state, user, errors).await;
    }
    let report = json!({ "stored": stored, "skipped": skipped, "expires_at": unix(expires_at) });
    json_reply(state, user, missing, report).await
}

/// `POST /onboarding/keys/{provider}/delete`: deletes one of the user's keys. Without a
/// required one, the later steps send the user back to the key step.
async fn delete_key(
    State(state): State<AppState>,
    Extension(claims): Extension<Claims>,
    Path(provider): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let deleted = state.vault.delete(&claims.sub, &provider).await?;
    if wants_html(&headers) {
        return Ok(Redirect::to("/onboarding/keys").into_response());
    }
    Ok(Json(json!({ "deleted": deleted })).into_response())
}

/// A key the vault would not store: its message names the check or the line, never
/// the key, so the user may see it.
fn refused_key(e: &tower_byok::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::InvalidSecret | ErrorKind::KeyRejected | ErrorKind::TooManyProviders
    )
}

/// Completes step 1 if every required provider now has a live key; returns the ones
/// still missing.
async fn finish_key_step(state: &AppState, user: &str) -> Result<Vec<&'static str>, ApiError> {
    let stored = state.vault.list(user).await?;
    let has = |p: &str| stored.iter().any(|k| k.provider == p && !k.is_expired());
    let missing: Vec<&str> = REQUIRED.into_iter().filter(|p| !has(p)).collect();
    if missing.is_empty() {
        // The step's data says which providers are set, never their keys.
        let data = json!({ "providers": REQUIRED });
        state.db.complete_step(user, 1, &data, 2).await?;
    }
    Ok(missing)
}

/// To a browser: on to the next page if nothing was refused, else the key page again
/// with each reason beside its field (the keys that passed are stored and shown masked).
async fn browser_reply(
    state: &AppState,
    user: &str,
    errors: BTreeMap<&'static str, String>,
) -> Result<Response, ApiError> {
    if errors.is_empty() {
        return Ok(Redirect::to("/onboarding").into_response());
    }
    key_step(
        state,
        user,
        &errors,
        !state.db.progress(user).await?.steps.contains_key(&1),
    )
    .await
}

/// To an API client: `report`, what is missing and the progress; `422` if anything was
/// refused or is missing.
async fn json_reply(
    state: &AppState,
    user: &str,
    missing: Vec<&str>,
    mut report: Value,
) -> Result<Response, ApiError> {
    let failed = report["errors"].as_object().is_some_and(|e| !e.is_empty());
    let status = if missing.is_empty() && !failed {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    report["missing"] = json!(missing);
    report["progress"] = progress_json(state, user).await?;
    Ok((status, Json(report)).into_response())
}

/// `POST /onboarding/step/{n}` (n = 2, 3, 4): the step's fields, in order. A step before
/// the current one may be sent again: it changes that step's data and keeps the later
/// steps.
async fn submit_step(
    State(state): State<AppState>,
    Extension(claims): Extension<Claims>,
    Path(n): Path<i64>,
    headers: HeaderMap,
    Form(form): Form<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let Some(step) = STEPS.iter().find(|s| s.number == n && n > 1) else {
        return Err(ApiError(StatusCode::NOT_FOUND, "no such step".into()));
    };
    // The gate let the request in, so the key step's keys are there (imported, say).
    let progress = state.db.progress(&claims.sub).await?;
    let current = progress.current_step.max(2);
    if n > current {
        let msg = format!("finish step {current} first");
        return Err(ApiError(StatusCode::CONFLICT, msg));
    }
    let mut data = serde_json::Map::new();
    for field in step.fields {
        match form.get(field.name).map(|v| v.trim()) {
            Some(v) if !v.is_empty() && v.chars().count() <= 200 => {
                data.insert(field.name.into(), v.into())
            }
            _ => {
                let msg = format!("`{}` must be 1 to 200 characters", field.name);
                if wants_html(&headers) {
                    let reason = format!("{}: enter 1 to 200 characters.", field.label);
                    let page = pages::step(
                        &claims.sub,
                        step,
                        &progress,
                        Some(&form),
                        Some((field.name, &reason)),
                    );
                    return Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response());
                }
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
async fn generate(
    State(state): State<AppState>,
    Extension(claims): Extension<Claims>,
    headers: HeaderMap,
    keys: UserKeys,
) -> Response {
    let using: serde_json::Map<String, Value> = (keys.iter())
        .map(|k| {
            let fingerprint = state.vault.fingerprint(k.expose_secret());
            (
                k.provider().to_owned(),
                json!({ "masked": k.masked(), "fingerprint": fingerprint }),
            )
        })
        .collect();
    if wants_html(&headers) {
        let rows: String = (using.iter())
            .map(|(p, k)| {
                let masked = k["masked"].as_str().unwrap_or_default();
                format!(
                    "<li>{}: <code>{}</code></li>",
                    pages::escape(p),
                    pages::escape(masked)
                )
            })
            .collect();
        let body = format!(
            "<p>Here the app would call the providers with your own keys:</p><ul>{rows}</ul>\
             <p><a href=/onboarding>Back</a></p>"
        );
        return pages::page(Some(&claims.sub), "Try it", &body).into_response();
    }
    Json(json!({ "would_call_with": using })).into_response()
}

/// JSON for API clients; for a browser's form post, a redirect to the next page.
fn reply(headers: &HeaderMap, status: StatusCode, body: Value) -> Response {
    if wants_html(headers) {
        Redirect::to("/onboarding").into_response()
    } else {
        (status, Json(body)).into_response()
    }
}

/// A browser asks for HTML: every browser's `Accept` for a page or a form post names
/// `text/html`; API clients (curl, fetch with JSON) do not.
pub(crate) fn wants_html(headers: &HeaderMap) -> bool {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    accept.is_some_and(|a| a.contains("text/html"))
}

/// An error answer: a status and a message that never holds a secret. Browsers get it
/// as a page through [`negotiate`].
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
            ErrorKind::InvalidProvider => Self(StatusCode::BAD_REQUEST, "no such provider".into()),
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
