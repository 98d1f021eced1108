//! The onboarding example (`examples/onboarding/`), run as a process of its own and
//! driven over HTTP on loopback through the old app's test checklist, on SQLite and
//! PostgreSQL: A's and B's data separate; a restart keeps both; C sees nothing; 50
//! concurrent onboardings all correct; a partial onboarding resumes; keys encrypted at
//! rest; the legacy file imported after a dry run, with a backup; an uploaded `.env`
//! kept for one hour.
//!
//! The server is this test binary started again in server mode ([`child_server`], see
//! `tests/onboarding_app/`), which runs the example's own start-up code; a restart kills
//! that process and starts another on the same database.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    dead_code,
    unreachable_pub,
    missing_docs
)]

mod common;

mod onboarding_app;

use onboarding_app::{app, auth, db};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use common::{Backend, TestDb};

const TOKEN_SECRET: &str = "a test-only token secret, at least 32 bytes long";

/// Not a test: the example's server, started by the tests as a process of its own.
/// Serves until killed or until its standard input closes (its test has ended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "started by the other tests as a separate process"]
async fn child_server() {
    onboarding_app::serve_as_child().await;
}

/// One test's world: a database, a working directory, and the settings of its servers.
struct World {
    db: TestDb,
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl World {
    async fn new(backend: Backend) -> Self {
        let db = TestDb::new(backend).await;
        let url = match backend {
            Backend::Sqlite => format!("sqlite://{}?mode=rwc", db.sqlite_path().display()),
            #[cfg(feature = "postgres")]
            Backend::Postgres => db.pg_url(),
        };
        let keyring = common::keyring().expose_text().to_string();
        let env = [
            ("DATABASE_URL", url.as_str()),
            ("BYOK_MASTER_KEYS", keyring.as_str()),
            ("ONBOARDING_TOKEN_SECRET", TOKEN_SECRET),
            ("ONBOARDING_ADDR", "127.0.0.1:0"),
        ];
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Self {
            db,
            dir: tempfile::tempdir().unwrap(),
            env,
        }
    }

    /// Starts a server process with these settings and `extra` ones.
    fn start(&self, extra: &[(&str, &str)]) -> App {
        let (child, addr, output) = onboarding_app::start(
            onboarding_app::child_command()
                .current_dir(self.dir.path())
                .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .envs(extra.iter().copied()),
        );
        App {
            child,
            addr,
            output,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// A vault of the test's own on the server's database and keyring, to check it.
    async fn vault(&self) -> tower_byok::Vault {
        self.db.open(common::keyring()).await.unwrap()
    }
}

/// A running server process, killed when dropped.
struct App {
    child: Child,
    addr: SocketAddr,
    /// What it printed before it listened (e.g. the legacy import's dry run).
    output: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response: status, headers and body.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }
}

impl App {
    async fn call(&self, method: Method, path: &str, token: &str, form: &[(&str, &str)]) -> Reply {
        let auth = (!token.is_empty()).then(|| (header::AUTHORIZATION, format!("Bearer {token}")));
        self.send(method, path, auth, form).await
    }

    /// A request with headers of the caller's choice (a bearer token, a cookie, `Accept`).
    async fn send(
        &self,
        method: Method,
        path: &str,
        extra: impl IntoIterator<Item = (header::HeaderName, String)>,
        form: &[(&str, &str)],
    ) -> Reply {
        let body: Vec<String> = form
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        for (name, value) in extra {
            req = req.header(name, value);
        }
        let req = req.body(Full::new(Bytes::from(body.join("&")))).unwrap();
        // A bound against a hung server, not a timing assertion.
        let res = tokio::time::timeout(Duration::from_secs(60), self.client.request(req));
        let res = res.await.expect("no answer within a minute").unwrap();
        let (parts, body) = res.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, token, &[]).await
    }

    async fn post(&self, path: &str, token: &str, form: &[(&str, &str)]) -> Reply {
        self.call(Method::POST, path, token, form).await
    }

    async fn login(&self, user: &str) -> String {
        let reply = self.post("/login", "", &[("user", user)]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.json()["token"].as_str().unwrap().to_owned()
    }

    async fn progress(&self, token: &str) -> Value {
        let reply = self.get("/onboarding/progress", token).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.json()
    }
}

/// Percent-encoding for a form body.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A user of the checklist and the keys only they have.
struct User {
    name: String,
    gemini: String,
    exa: String,
}

impl User {
    fn new(name: &str, n: u32) -> Self {
        Self {
            name: name.to_owned(),
            gemini: format!("AIzaSy{:0>33}", name.replace('-', "_")),
            exa: format!("{n:08x}-5eed-4000-8000-{n:012x}"),
        }
    }

    fn website(&self) -> String {
        format!("https://{}.example", self.name)
    }
}

/// The step requests of a whole onboarding, in order, for `user`.
fn steps(user: &User) -> Vec<(String, Vec<(&'static str, String)>)> {
    vec![
        (
            "/onboarding/keys".into(),
            vec![("gemini", user.gemini.clone()), ("exa", user.exa.clone())],
        ),
        (
            "/onboarding/step/2".into(),
            vec![("website", user.website())],
        ),
        (
            "/onboarding/step/3".into(),
            vec![
                ("depth", "deep".into()),
                ("topics", format!("{} topics", user.name)),
            ],
        ),
        ("/onboarding/step/4".into(), vec![]),
    ]
}

/// Runs steps `range` of `user`'s onboarding; returns how many answers were 503 (each
/// retried), and panics on any other answer than 200.
async fn onboard(app: &App, token: &str, user: &User, range: std::ops::Range<usize>) -> usize {
    try_onboard(app, token, user, range).await.unwrap()
}

/// As [`onboard`], with an answer other than 200 or 503 as an error.
async fn try_onboard(
    app: &App,
    token: &str,
    user: &User,
    range: std::ops::Range<usize>,
) -> Result<usize, String> {
    let mut unavailable = 0;
    for (path, form) in &steps(user)[range] {
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        loop {
            let reply = app.post(path, token, &form).await;
            if reply.status == StatusCode::SERVICE_UNAVAILABLE && unavailable < 100 {
                unavailable += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            if reply.status != StatusCode::OK {
                return Err(format!(
                    "{path} for {}: {} {}",
                    user.name, reply.status, reply.body
                ));
            }
            break;
        }
    }
    Ok(unavailable)
}

/// What is wrong with `user`'s finished onboarding as the app reports it, if anything:
/// progress, step data and the keys the app would call the providers with.
async fn check_finished(
    app: &App,
    vault: &tower_byok::Vault,
    token: &str,
    user: &User,
) -> Result<(), String> {
    let p = app.progress(token).await;
    let expected = json!({
        "user": user.name, "current_step": 5, "done": true, "completed": [1, 2, 3, 4],
        "data": {
            "1": { "providers": ["gemini", "exa"] },
            "2": { "website": user.website() },
            "3": { "depth": "deep", "topics": format!("{} topics", user.name) },
            "4": {},
        },
    });
    let mut without_keys = p.clone();
    without_keys.as_object_mut().unwrap().remove("keys");
    if without_keys != expected {
        return Err(format!("{}: progress {without_keys}", user.name));
    }
    let generate = app.get("/generate", token).await;
    if generate.status != StatusCode::OK {
        return Err(format!(
            "{}: /generate answered {}",
            user.name, generate.status
        ));
    }
    let using = &generate.json()["would_call_with"];
    for (provider, secret) in [("gemini", &user.gemini), ("exa", &user.exa)] {
        let fingerprint = vault.fingerprint(secret);
        let listed = p["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["provider"] == provider);
        if listed.map(|k| &k["fingerprint"]) != Some(&json!(fingerprint)) {
            return Err(format!(
                "{}: listed {provider} key is not theirs",
                user.name
            ));
        }
        if using[provider]["fingerprint"] != json!(fingerprint) {
            return Err(format!(
                "{}: would call {provider} with another key",
                user.name
            ));
        }
    }
    Ok(())
}

/// C, who has not onboarded: no progress, no keys, and the gated steps answer 428
/// pointing back to the key step.
async fn check_sees_nothing(app: &App, token: &str, name: &str) {
    let p = app.progress(token).await;
    let nothing = json!({ "user": name, "current_step": 1, "done": false, "completed": [], "data": {}, "keys": [] });
    assert_eq!(p, nothing);
    for reply in [
        app.get("/generate", token).await,
        app.post("/onboarding/step/2", token, &[("website", "x")])
            .await,
    ] {
        assert_eq!(
            reply.status,
            StatusCode::PRECONDITION_REQUIRED,
            "{}",
            reply.body
        );
        assert_eq!(reply.headers[header::LOCATION], "/onboarding");
        assert_eq!(reply.json()["missing"], json!(["gemini", "exa"]));
    }
    let page = app.get("/onboarding", token).await;
    assert!(
        page.body
            .contains("<title>Step 1: your provider keys</title>"),
        "{}",
        page.body
    );
}

per_backend!(
    a_and_b_are_separate_and_survive_a_restart_and_c_sees_nothing,
    a_partial_onboarding_resumes_after_a_restart,
    fifty_concurrent_onboardings_are_all_correct,
    keys_are_encrypted_at_rest,
    a_legacy_file_is_imported_after_a_dry_run_and_backed_up,
    an_uploaded_env_is_kept_for_one_hour,
);

async fn a_and_b_are_separate_and_survive_a_restart_and_c_sees_nothing(backend: Backend) {
    let world = World::new(backend).await;
    let vault = world.vault().await;
    let (a, b) = (User::new("user-a", 0xa), User::new("user-b", 0xb));
    let app = world.start(&[]);
    let (ta, tb) = (app.login(&a.name).await, app.login(&b.name).await);
    // Interleaved, as two people using the app at once.
    onboard(&app, &ta, &a, 0..2).await;
    onboard(&app, &tb, &b, 0..2).await;
    onboard(&app, &ta, &a, 2..4).await;
    onboard(&app, &tb, &b, 2..4).await;
    check_finished(&app, &vault, &ta, &a).await.unwrap();
    check_finished(&app, &vault, &tb, &b).await.unwrap();

    drop(app); // a redeploy
    let app = world.start(&[]);
    let (ta, tb) = (app.login(&a.name).await, app.login(&b.name).await);
    check_finished(&app, &vault, &ta, &a).await.unwrap();
    check_finished(&app, &vault, &tb, &b).await.unwrap();

    let tc = app.login("user-c").await;
    check_sees_nothing(&app, &tc, "user-c").await;
    assert!(vault.list("user-c").await.unwrap().is_empty());
}

async fn a_partial_onboarding_resumes_after_a_restart(backend: Backend) {
    let world = World::new(backend).await;
    let d = User::new("user-d", 0xd);
    let app = world.start(&[]);
    let token = app.login(&d.name).await;
    onboard(&app, &token, &d, 0..2).await; // keys and website, then gone

    drop(app);
    let app = world.start(&[]);
    let token = app.login(&d.name).await;
    let p = app.progress(&token).await;
    assert_eq!(
        (&p["current_step"], &p["completed"]),
        (&json!(3), &json!([1, 2]))
    );
    assert_eq!(p["data"]["2"]["website"], json!(d.website()));
    let page = app.get("/onboarding", &token).await;
    assert!(
        page.body
            .contains("<title>Step 3: Research preferences</title>"),
        "{}",
        page.body
    );
    let skip = app.post("/onboarding/step/4", &token, &[]).await;
    assert_eq!(skip.status, StatusCode::CONFLICT, "{}", skip.body);
    onboard(&app, &token, &d, 2..4).await;
    check_finished(&app, &world.vault().await, &token, &d)
        .await
        .unwrap();
}

async fn fifty_concurrent_onboardings_are_all_correct(backend: Backend) {
    let world = World::new(backend).await;
    let vault = world.vault().await;
    let app = Arc::new(world.start(&[]));
    let users: Vec<Arc<User>> = (0..50)
        .map(|n| Arc::new(User::new(&format!("user-{n}"), n)))
        .collect();
    let tasks: Vec<_> = (users.iter().cloned())
        .map(|user| {
            let app = app.clone();
            tokio::spawn(async move {
                let token = app.login(&user.name).await;
                let onboarded = try_onboard(&app, &token, &user, 0..4).await;
                (token, onboarded)
            })
        })
        .collect();
    // Counted apart: steps refused (e.g. another user's progress in the way), answers
    // 503 (retried: a busy database, not a wrong result), and wrong-user results.
    let (mut refused, mut unavailable, mut wrong) = (Vec::new(), 0, Vec::new());
    let mut finished = Vec::new();
    for (user, task) in users.iter().zip(tasks) {
        match task.await.unwrap() {
            (token, Ok(n)) => {
                unavailable += n;
                finished.push((user, token));
            }
            (_, Err(e)) => refused.push(e),
        }
    }
    for (user, token) in finished {
        if let Err(e) = check_finished(&app, &vault, &token, user).await {
            wrong.push(e);
        }
    }
    println!(
        "50 concurrent onboardings: {} steps refused, {} wrong-user results, {unavailable} answers 503 (retried)",
        refused.len(),
        wrong.len()
    );
    assert!(
        refused.is_empty() && wrong.is_empty(),
        "{refused:#?}\n{wrong:#?}"
    );
}

async fn keys_are_encrypted_at_rest(backend: Backend) {
    let world = World::new(backend).await;
    let a = User::new("user-a", 0xa);
    let app = world.start(&[]);
    let token = app.login(&a.name).await;
    onboard(&app, &token, &a, 0..4).await;
    let stored = database_text(&world.db).await;
    // The scan sees the app's data, so it would see a key stored in plain text too.
    assert!(
        stored.contains(&a.website()),
        "the scan found none of the app's data"
    );
    for secret in [&a.gemini, &a.exa] {
        assert!(
            !stored.contains(secret.as_str()),
            "a key is stored in plain text"
        );
        assert!(
            !stored.contains(&hex(secret.as_bytes())),
            "a key is stored in plain text (hex)"
        );
    }
}

/// Everything the database holds, as text: the SQLite files' bytes (lossily), or every
/// row of every PostgreSQL table (`bytea` as hex).
async fn database_text(db: &TestDb) -> String {
    match db.backend {
        Backend::Sqlite => {
            let mut text = String::new();
            for suffix in ["", "-wal"] {
                let mut path = db.sqlite_path().as_os_str().to_owned();
                path.push(suffix);
                if let Ok(bytes) = std::fs::read(&path) {
                    text.push_str(&String::from_utf8_lossy(&bytes));
                }
            }
            text
        }
        #[cfg(feature = "postgres")]
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect_with(db.pg_options()).await.unwrap();
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            let mut text = String::new();
            for table in tables {
                let sql =
                    format!("SELECT coalesce(string_agg(t::text, '|'), '') FROM \"{table}\" t");
                text.push_str(
                    &sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql))
                        .fetch_one(&pool)
                        .await
                        .unwrap(),
                );
            }
            pool.close().await;
            text
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn a_legacy_file_is_imported_after_a_dry_run_and_backed_up(backend: Backend) {
    let world = World::new(backend).await;
    let vault = world.vault().await;
    let l = User::new("legacy-user", 0x1e);
    let cms_token = "cms-token-legacy-0123456789";
    let legacy = json!({
        "current_step": 3,
        "is_completed": false,
        "steps": [
            // The old app also kept copies of the keys under names that suggest nothing.
            { "step_number": 1, "completed": true, "data": {
                "api_keys": { "gemini": l.gemini, "exa": l.exa },
                "gemini": l.gemini, "credentials": { "search": l.exa } } },
            { "step_number": 2, "status": "completed", "data": {
                "website": l.website(), "cms_token": cms_token,
                "integrations": { "credentials": { "exa": l.exa }, "used": [l.gemini, "search"] } } },
            { "step_number": 3, "completed": false, "data": null },
        ],
    })
    .to_string();
    let file = world.dir.path().join(".onboarding_progress.json");
    std::fs::write(&file, &legacy).unwrap();
    let whose = ("ONBOARDING_LEGACY_USER", l.name.as_str());

    // The dry run: says what it would do, writes nothing, leaves the file alone.
    let app = world.start(&[whose]);
    assert!(
        app.output.contains("dry run: nothing written"),
        "{}",
        app.output
    );
    assert!(
        app.output
            .contains("progress: current step 3, completed steps [1, 2]"),
        "{}",
        app.output
    );
    assert!(
        !app.output.contains(&l.gemini) && !app.output.contains(cms_token),
        "{}",
        app.output
    );
    let token = app.login(&l.name).await;
    check_sees_nothing(&app, &token, &l.name).await;
    assert_eq!(std::fs::read_to_string(&file).unwrap(), legacy);
    assert_eq!(backups(world.dir.path()), Vec::<PathBuf>::new());
    drop(app);

    // The import: keys into the vault, progress into the app's tables, a backup kept.
    let app = world.start(&[whose, ("ONBOARDING_LEGACY_IMPORT", "apply")]);
    assert!(
        !app.output.contains(&l.gemini) && !app.output.contains(cms_token),
        "{}",
        app.output
    );
    let token = app.login(&l.name).await;
    let p = app.progress(&token).await;
    assert_eq!(
        (&p["current_step"], &p["completed"]),
        (&json!(3), &json!([1, 2]))
    );
    // The step data: the key step's as the app writes it, the others without the keys
    // (under any name) and without the secret-looking member.
    assert_eq!(
        p["data"],
        json!({
            "1": { "providers": ["gemini", "exa"] },
            "2": { "website": l.website(), "integrations": { "credentials": {}, "used": ["search"] } },
        })
    );
    for secret in [l.gemini.as_str(), &l.exa, cms_token] {
        assert!(!p.to_string().contains(secret), "a legacy secret is shown");
    }
    assert_eq!(
        vault
            .get(&l.name, "gemini")
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        l.gemini
    );
    assert_eq!(
        vault
            .get(&l.name, "exa")
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        l.exa
    );
    assert_eq!(app.get("/generate", &token).await.status, StatusCode::OK);
    assert!(!file.exists(), "the legacy file is still there");
    let backups = backups(world.dir.path());
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(std::fs::read_to_string(&backups[0]).unwrap(), legacy);
    let stored = database_text(&world.db).await;
    assert!(stored.contains(&l.website()));
    for secret in [l.gemini.as_str(), &l.exa, cms_token] {
        assert!(
            !stored.contains(secret),
            "a secret of the legacy file is in the database in plain text"
        );
    }
    // The user goes on from where the old app left them.
    onboard(&app, &token, &l, 2..4).await;
    let p = app.progress(&token).await;
    assert_eq!(p["done"], json!(true));
    let done_page = app.get("/onboarding", &token).await;
    assert!(done_page.body.contains(&l.website()), "{}", done_page.body);
    for secret in [l.gemini.as_str(), &l.exa, cms_token] {
        assert!(!done_page.body.contains(secret), "a legacy secret is shown");
    }
}

fn backups(dir: &Path) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path());
    entries
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".onboarding_progress.json.bak-")
        })
        .collect()
}

async fn an_uploaded_env_is_kept_for_one_hour(backend: Backend) {
    let world = World::new(backend).await;
    let vault = world.vault().await;
    let e = User::new("user-e", 0xe);
    let app = world.start(&[]);
    let token = app.login(&e.name).await;
    // Permanent keys first: the upload replaces them with ones that expire (README step 3).
    let permanent = User::new("permanent", 0x1f);
    let form = [
        ("gemini", permanent.gemini.as_str()),
        ("exa", &permanent.exa),
    ];
    let reply = app.post("/onboarding/keys", &token, &form).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let listed = vault.list(&e.name).await.unwrap();
    assert!(listed.iter().all(|k| k.expires_at.is_none()), "{listed:?}");

    let env = format!(
        "DEBUG=true\nGEMINI_API_KEY={}\nexport EXA_API_KEY=\"{}\"\n",
        e.gemini, e.exa
    );
    let before = SystemTime::now();
    let reply = app
        .post("/onboarding/keys/env", &token, &[("env", &env)])
        .await;
    let after = SystemTime::now();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(
        !reply.body.contains(&e.gemini) && !reply.body.contains(&e.exa),
        "{}",
        reply.body
    );
    let report = reply.json();
    assert_eq!(
        (&report["stored"], &report["skipped"]),
        (&json!(2), &json!(["DEBUG"]))
    );
    assert_eq!(report["progress"]["completed"], json!([1]));

    let listed = vault.list(&e.name).await.unwrap();
    assert_eq!(listed.len(), 2);
    let hour = app::ENV_KEYS_TTL;
    let slack = Duration::from_secs(1); // expiries are stored to the millisecond or second
    for key in &listed {
        let expires_at = key.expires_at.expect("an uploaded key expires");
        assert!(
            expires_at + slack >= before + hour && expires_at <= after + hour + slack,
            "{key:?}"
        );
    }
    assert_eq!(
        vault
            .get(&e.name, "gemini")
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        e.gemini
    );
    assert_eq!(app.get("/generate", &token).await.status, StatusCode::OK);

    // A malformed line is refused with its number, never its text, and stores nothing.
    let f = User::new("user-f", 0xf);
    let token = app.login(&f.name).await;
    let bad = format!("GEMINI_API_KEY={}\nEXA_API_KEY \"{}\n", f.gemini, f.exa);
    let reply = app
        .post("/onboarding/keys/env", &token, &[("env", &bad)])
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    assert!(reply.body.contains("line 2"), "{}", reply.body);
    assert!(
        !reply.body.contains(&f.gemini) && !reply.body.contains(&f.exa),
        "{}",
        reply.body
    );
    assert!(vault.list(&f.name).await.unwrap().is_empty());
}

/// Tokens: a forged, tampered or expired one is refused; no token reaches no user's data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused() {
    let world = World::new(Backend::Sqlite).await;
    let app = world.start(&[]);
    let token = app.login("user-a").await;
    assert_eq!(
        app.get("/onboarding/progress", &token).await.status,
        StatusCode::OK
    );

    let forged = auth::Tokens::new(b"another secret, also 32 bytes long!!").mint("user-a");
    let (payload, signature) = token.split_once('.').unwrap();
    let other_payload = auth::Tokens::new(TOKEN_SECRET.as_bytes()).mint("user-b");
    let swapped = format!("{}.{signature}", other_payload.split_once('.').unwrap().0);
    let truncated = format!("{payload}.{}", &signature[..signature.len() - 2]);
    let expired = {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        use base64::Engine as _;
        use hmac::{KeyInit as _, Mac as _};
        let payload = B64.encode(r#"{"sub":"user-a","exp":1}"#);
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(TOKEN_SECRET.as_bytes()).unwrap();
        mac.update(payload.as_bytes());
        format!("{payload}.{}", B64.encode(mac.finalize().into_bytes()))
    };
    for bad in [
        forged.as_str(),
        &swapped,
        &truncated,
        &expired,
        "garbage",
        &format!("{payload}."),
    ] {
        let reply = app.get("/onboarding/progress", bad).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{bad}: {}",
            reply.body
        );
    }
    for path in ["/onboarding/progress", "/onboarding", "/generate"] {
        assert_eq!(
            app.get(path, "").await.status,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
    assert_eq!(
        app.post("/login", "", &[("user", "no spaces")])
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
}

/// A browser whose cookie no longer verifies (here: the server restarted with another
/// secret) can still log in again: the cookie
/// counts as none and is cleared. A bad bearer token is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_cookie_never_locks_a_browser_out() {
    let world = World::new(Backend::Sqlite).await;
    let first = world.start(&[(
        "ONBOARDING_TOKEN_SECRET",
        "the secret of the first process, 32 bytes or more",
    )]);
    let login = first.post("/login", "", &[("user", "user-a")]).await;
    let stale = set_cookie(&login);
    let stale_token = login.json()["token"].as_str().unwrap().to_owned();
    let cookie = |c: &str| Some((header::COOKIE, c.to_owned()));
    let progress = first
        .send(Method::GET, "/onboarding/progress", cookie(&stale), &[])
        .await;
    assert_eq!(progress.status, StatusCode::OK, "{}", progress.body);
    drop(first);

    let app = world.start(&[]);
    let home = app.send(Method::GET, "/", cookie(&stale), &[]).await;
    assert_eq!(home.status, StatusCode::OK, "{}", home.body);
    assert_eq!(set_cookie(&home), "onboarding_token=");
    assert!(home.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let progress = app
        .send(Method::GET, "/onboarding/progress", cookie(&stale), &[])
        .await;
    assert_eq!(
        progress.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        progress.body
    );

    let login = app
        .send(
            Method::POST,
            "/login",
            cookie(&stale),
            &[("user", "user-a")],
        )
        .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    let fresh = set_cookie(&login);
    assert_ne!(fresh, stale);
    let progress = app
        .send(Method::GET, "/onboarding/progress", cookie(&fresh), &[])
        .await;
    assert_eq!(progress.status, StatusCode::OK, "{}", progress.body);

    // The same stale token as a bearer token: refused, cookie or not.
    for extra in [None, Some(fresh.as_str())] {
        let mut req = http::Request::builder()
            .uri(format!("http://{}/onboarding/progress", app.addr))
            .header(header::AUTHORIZATION, format!("Bearer {stale_token}"));
        if let Some(c) = extra {
            req = req.header(header::COOKIE, c);
        }
        let res = app
            .client
            .request(req.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "cookie: {extra:?}");
    }
}

/// The `name=value` part of a response's `Set-Cookie`.
fn set_cookie(reply: &Reply) -> String {
    let value = reply.headers[header::SET_COOKIE].to_str().unwrap();
    value.split(';').next().unwrap().to_owned()
}

/// Keys that fail the vault's checks are refused with the check's reason, never the key,
/// and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_failing_their_checks_are_refused() {
    let world = World::new(Backend::Sqlite).await;
    let app = world.start(&[]);
    let token = app.login("user-a").await;
    let (gemini, exa) = ("AIza-too-short-secret-0001", "not-a-uuid-secret-0002");
    let reply = app
        .post(
            "/onboarding/keys",
            &token,
            &[("gemini", gemini), ("exa", exa)],
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("a Google AI key starts with `AIza`"),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("an Exa key is a 36-character UUID"),
        "{}",
        reply.body
    );
    assert!(
        !reply.body.contains(gemini) && !reply.body.contains(exa),
        "{}",
        reply.body
    );
    assert_eq!(reply.json()["missing"], json!(["gemini", "exa"]));
    assert!(world.vault().await.list("user-a").await.unwrap().is_empty());

    // A user who has finished the key step still hears of a key that fails.
    let a = User::new("user-a", 0xa);
    onboard(&app, &token, &a, 0..1).await;
    let reply = app.post("/onboarding/keys", &token, &[("exa", exa)]).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    assert_eq!(reply.json()["missing"], json!([]));
}

/// "Your keys" and sign-out for API clients, and the same rejection as a page for a
/// browser (its `Accept` names `text/html`): a deleted key brings the gate back, whose
/// 428 is JSON for the API client and, for the browser, a page that names the provider
/// and links to the key step; sign-out clears the cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_brings_the_gate_back_as_json_or_as_a_page() {
    let world = World::new(Backend::Sqlite).await;
    let app = world.start(&[]);
    let a = User::new("user-a", 0xa);
    let login = app.post("/login", "", &[("user", &a.name)]).await;
    let (token, cookie) = (
        login.json()["token"].as_str().unwrap().to_owned(),
        set_cookie(&login),
    );
    onboard(&app, &token, &a, 0..1).await;
    let reply = app.post("/onboarding/keys/exa/delete", &token, &[]).await;
    assert_eq!(reply.json(), json!({ "deleted": true }), "{}", reply.body);

    let reply = app.get("/generate", &token).await;
    assert_eq!(reply.status, StatusCode::PRECONDITION_REQUIRED);
    assert_eq!(reply.json()["missing"], json!(["exa"]));
    let browser = [
        (header::COOKIE, cookie),
        (
            header::ACCEPT,
            "text/html,application/xhtml+xml,*/*;q=0.8".to_owned(),
        ),
    ];
    let page = app.send(Method::GET, "/generate", browser, &[]).await;
    assert_eq!(page.status, StatusCode::PRECONDITION_REQUIRED);
    assert_eq!(
        page.headers[header::CONTENT_TYPE],
        "text/html; charset=utf-8"
    );
    assert!(
        page.body.contains("your Exa key") && page.body.contains("href=/onboarding>"),
        "{}",
        page.body
    );
    assert!(page
        .body
        .contains("Signed in as <strong id=user>user-a</strong>"));

    let reply = app.post("/logout", "", &[]).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(set_cookie(&reply), "onboarding_token=");
}

/// Keys stored outside the app (the admin CLI, another instance) open the later steps
/// for a user who never did the key step here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_stored_elsewhere_open_the_later_steps() {
    let world = World::new(Backend::Sqlite).await;
    let g = User::new("user-g", 0x9);
    let vault = world.vault().await;
    vault.put(&g.name, "gemini", &g.gemini).await.unwrap();
    vault.put(&g.name, "exa", &g.exa).await.unwrap();
    let app = world.start(&[]);
    let token = app.login(&g.name).await;
    let page = app.get("/onboarding", &token).await;
    assert!(
        page.body.contains("<title>Step 2: Your website</title>"),
        "{}",
        page.body
    );
    onboard(&app, &token, &g, 1..4).await;
    assert_eq!(app.progress(&token).await["done"], json!(true));
}

/// The crate's own isolation kit (`test_util::IsolationCheck`, feature `test-util`) run
/// against the example's whole router, in process: users A and B get gemini and exa
/// keys, and `/generate` (behind the 428 gate, authenticated with the example's bearer
/// tokens) must show each of them only their own keys, masked; C must be shown none; and
/// so again after the app is rebuilt over the reopened vault. The app's progress tables
/// sit in a SQLite file of their own here, since the check supplies the vault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crate_isolation_check_passes_on_the_example() {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    use tower_byok::test_util::IsolationCheck;

    let dir = tempfile::tempdir().unwrap();
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("app.db"))
        .create_if_missing(true);
    let pool = SqlitePoolOptions::new()
        .connect_with(options)
        .await
        .unwrap();
    let db = db::Db::Sqlite(pool);
    db.migrate().await.unwrap();
    let tokens = auth::Tokens::new(TOKEN_SECRET.as_bytes());

    let make_app = |vault| {
        app::app(app::AppState {
            vault,
            db: db.clone(),
            tokens: tokens.clone(),
        })
    };
    let request = |user: &str| {
        http::Request::get("/generate")
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", tokens.mint(user)),
            )
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let report = IsolationCheck::new(make_app, request)
        .providers(app::REQUIRED)
        .run()
        .await;
    report.assert_ok();
}
