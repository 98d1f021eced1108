//! Onboarding, done right: the flow that apps kept in one shared
//! `.onboarding_progress.json`, with each user's progress in the app's own tables and
//! each user's provider keys sealed in the vault.
//!
//! ```text
//! cargo run --example onboarding                                  # SQLite, no setup
//! DATABASE_URL=postgres://... cargo run --example onboarding --features postgres,import
//! ```
//!
//! - `auth.rs`: signed bearer tokens (HMAC-SHA256); the middleware leaves `Claims`.
//! - `app.rs`: the steps. Step 1 stores keys through the vault (typed in, or a pasted
//!   `.env` kept for an hour); steps 2 to 4 sit behind `with_required_providers`, whose
//!   `428` sends the front end back to step 1. Errors are negotiated: a browser gets a
//!   page with the reason and a way back, an API client JSON.
//! - `db.rs`: the app's tables (current step, completed steps, step data; no secret), on
//!   the pool the vault uses.
//! - `legacy.rs`: the first-start import of an old `.onboarding_progress.json`: a dry
//!   run, then (`ONBOARDING_LEGACY_IMPORT=apply`) keys into the vault and progress into
//!   the tables, keeping a backup of the file.
//! - `pages.rs`: the HTML pages (a step each, "your keys", errors), with "signed in as"
//!   and sign-out; `server.rs`: settings and start-up (a development keyring and token
//!   secret on first start when none is set).
#![allow(clippy::print_stdout)]

mod app;
mod auth;
mod db;
#[cfg(feature = "import")]
mod legacy;
mod pages;
mod server;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().init();
    if let Err(e) = server::run(server::Config::from_env()).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
