//! The onboarding example (`examples/onboarding/`) in a real browser: Debian's Chromium,
//! driven through `chromedriver` over WebDriver, against the example started as a process
//! of its own on loopback with no settings at all (SQLite, development keyring and token
//! secret), as a new user would run it.
//!
//! Two users onboard through the forms, one typing keys and one pasting a `.env`; every
//! refused input shows its reason on the page; the 428 gate leads back to the key step;
//! sign-out then sign-in resumes; a restart keeps the session; no page source holds a
//! plaintext key. The key step's screenshot in the README is taken here.
//!
//! Needs `chromium` and `chromedriver` (Debian: `apt-get install chromium chromium-driver`;
//! `bash .ci/test` installs them as root): without them the test fails and says so, as
//! the PostgreSQL tests do without a server. `BYOK_TEST_CHROMEDRIVER` and
//! `BYOK_TEST_CHROMIUM` point at other binaries. When it fails (or with
//! `BYOK_TEST_SCREENSHOTS=1`), a screenshot of each step is in `target/onboarding-browser/`.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    dead_code,
    unreachable_pub,
    missing_docs
)]

mod onboarding_app;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

/// The README's picture of the key step, rewritten by every run.
const README_SHOT: &str = "docs/onboarding-key-step.png";

/// Not a test: the example's server, started by the test as a process of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "started by the browser test as a separate process"]
async fn child_server() {
    onboarding_app::serve_as_child().await;
}

/// A process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The example's server, in `dir` with no settings but its address and database (as
/// `cargo run --example onboarding` in a fresh checkout): a development keyring and
/// token secret are written on first start.
///
/// `BYOK_TEST_ONBOARDING_BIN` runs another build of the example instead (say, an older
/// one, to check that this test fails on it).
fn start_server(dir: &Path) -> (Process, SocketAddr) {
    let url = format!("sqlite://{}/data/onboarding.db?mode=rwc", dir.display());
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let mut command = match std::env::var_os("BYOK_TEST_ONBOARDING_BIN") {
        Some(bin) => Command::new(bin),
        None => onboarding_app::child_command(),
    };
    let (child, addr, _) = onboarding_app::start(
        command
            .current_dir(dir)
            .env_remove("ONBOARDING_TOKEN_SECRET")
            .env_remove("BYOK_MASTER_KEYS")
            .env("DATABASE_URL", url)
            .env("ONBOARDING_ADDR", "127.0.0.1:0"),
    );
    (Process(child), addr)
}

/// `name`'s path from the environment variable `var`, else the first of `candidates`
/// that exists, else a failure that says how to install it.
fn binary(var: &str, candidates: &[&str]) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        return path.into();
    }
    let found = candidates.iter().map(PathBuf::from).find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!(
            "{} not found (looked at {candidates:?}; set {var} to use another). This test \
             drives a real browser: run the suite with `bash .ci/test`, which installs \
             Debian's `chromium` and `chromium-driver` as root, or install them yourself \
             (`sudo apt-get install chromium chromium-driver`).",
            candidates[0]
        )
    })
}

/// `chromedriver` on a free loopback port, and a headless Chromium session on it.
async fn start_browser() -> (Process, Client) {
    let driver = binary(
        "BYOK_TEST_CHROMEDRIVER",
        &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
    );
    let chromium = binary("BYOK_TEST_CHROMIUM", &["/usr/bin/chromium"]);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let process = Process(
        Command::new(&driver)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display())),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let options = serde_json::json!({
        "binary": chromium,
        // --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=820,1400", "--no-first-run", "--disable-extensions",
                 "--lang=en-US"],
    });
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), options);
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap_or_else(|e| panic!("cannot start a Chromium session through chromedriver: {e}"));
    (process, client)
}

/// Where the screenshots of a failed run go: `target/onboarding-browser/`.
fn shots_dir() -> PathBuf {
    // The test binary is target/<profile>/deps/<name>.
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    target.join("onboarding-browser")
}

/// A screenshot (PNG) and the name of its step.
type Shot = (String, Vec<u8>);

/// The browser, and what it has seen.
#[derive(Clone)]
struct Browser {
    client: Client,
    base: String,
    /// Every key the test typed or pasted, refused ones included.
    secrets: Arc<Mutex<Vec<String>>>,
    /// A screenshot after each step, written out if the test fails.
    shots: Arc<Mutex<Vec<Shot>>>,
}

impl Browser {
    fn secret(&self, key: &str) -> String {
        self.secrets.lock().unwrap().push(key.to_owned());
        key.to_owned()
    }

    async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap();
    }

    /// Takes the step's screenshot, checks that the page holds no key the test entered,
    /// and returns the page's title.
    async fn seen(&self, step: &str) -> String {
        let png = self.client.screenshot().await.unwrap();
        let n = self.shots.lock().unwrap().len();
        self.shots
            .lock()
            .unwrap()
            .push((format!("{n:02}-{step}"), png));
        let source = self.client.source().await.unwrap();
        for secret in self.secrets.lock().unwrap().iter() {
            // The first 12 characters are more than any mask shows (4 + 4).
            let probe = &secret[..secret.len().min(12)];
            assert!(
                !source.contains(secret.as_str()) && !source.contains(probe),
                "{step}: the page source holds a key the user entered"
            );
        }
        self.client.title().await.unwrap()
    }

    /// Types into the form field named `name`.
    async fn fill(&self, name: &str, text: &str) {
        let css = format!("[name={name}]");
        let field = self.client.find(Locator::Css(&css)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// Sets a field's value directly (for text too long to type).
    async fn set(&self, name: &str, text: &str) {
        let script = "document.getElementsByName(arguments[0])[0].value = arguments[1];";
        self.client
            .execute(script, vec![name.into(), text.into()])
            .await
            .unwrap();
    }

    /// Submits the form that holds the field named `name`.
    async fn submit(&self, name: &str) {
        let script = "document.getElementsByName(arguments[0])[0].form.requestSubmit();";
        self.client
            .execute(script, vec![name.into()])
            .await
            .unwrap();
        self.wait_loaded().await;
    }

    async fn click(&self, css: &str) {
        let element = self.client.find(Locator::Css(css)).await.unwrap();
        element.click().await.unwrap();
        self.wait_loaded().await;
    }

    async fn wait_loaded(&self) {
        // A form post or link replaces the document; wait for the new one to be complete.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.client
            .wait()
            .for_element(Locator::Css("body"))
            .await
            .unwrap();
    }

    async fn text(&self, id: &str) -> String {
        match self.client.find(Locator::Id(id)).await {
            Ok(element) => element.text().await.unwrap(),
            Err(_) => String::new(),
        }
    }

    async fn body(&self) -> String {
        self.text_of("body").await
    }

    async fn text_of(&self, css: &str) -> String {
        let element = self.client.find(Locator::Css(css)).await.unwrap();
        element.text().await.unwrap()
    }

    async fn sign_in(&self, user: &str) {
        self.fill("user", user).await;
        self.submit("user").await;
    }

    async fn sign_out(&self) {
        self.click("nav button").await;
        assert_eq!(self.seen("signed-out").await, "Onboarding");
        let nav = self.client.find(Locator::Css("nav")).await;
        assert!(nav.is_err(), "still signed in after signing out");
    }

    /// Fills and submits a step's form, expecting the next page's title.
    async fn step(&self, fields: &[(&str, &str)], next: &str) {
        for (id, value) in fields {
            self.fill(id, value).await;
        }
        let first = fields.first().map_or("finish", |f| f.0);
        if fields.is_empty() {
            self.click("form[action^='/onboarding/step'] button").await;
        } else {
            self.submit(first).await;
        }
        let title = self.seen(&format!("after-{first}")).await;
        assert_eq!(title, next, "{}", self.body().await);
    }
}

fn gemini_key(seed: char) -> String {
    format!("AIzaSy{}", seed.to_string().repeat(33))
}

fn exa_key(seed: char) -> String {
    let s = seed.to_string();
    format!(
        "{}-{}-4{}-8{}-{}",
        s.repeat(8),
        s.repeat(4),
        s.repeat(3),
        s.repeat(3),
        s.repeat(12)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_onboard_in_a_real_browser() {
    let (_driver, client) = start_browser().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = start_server(dir.path());
    let browser = Browser {
        client: client.clone(),
        base: format!("http://{addr}"),
        secrets: Arc::default(),
        shots: Arc::default(),
    };
    let run = tokio::spawn(scenario(browser.clone(), dir.path().to_owned(), server));
    let result = run.await;
    // BYOK_TEST_SCREENSHOTS=1 keeps them after a pass too, to look the pages over.
    if result.is_err() || std::env::var_os("BYOK_TEST_SCREENSHOTS").is_some() {
        if let Ok(png) = client.screenshot().await {
            browser.shots.lock().unwrap().push(("failed".into(), png));
        }
        let out = shots_dir();
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        for (name, png) in browser.shots.lock().unwrap().iter() {
            std::fs::write(out.join(format!("{name}.png")), png).unwrap();
        }
        println!("screenshots of each step: {}", out.display());
    }
    let _ = client.close().await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn scenario(b: Browser, dir: PathBuf, server: Process) {
    b.goto("/").await;
    assert_eq!(b.seen("home").await, "Onboarding");

    // An invalid user name: the reason, and a way back.
    b.sign_in("no spaces").await;
    assert_eq!(
        b.seen("bad-user-name").await,
        "Please check what you entered"
    );
    assert!(b.body().await.contains("a user name is 1 to 64"));
    b.click("a[href='/']").await;

    // Alice types her keys; each refused input shows its reason beside its field.
    b.sign_in("alice").await;
    assert_eq!(b.seen("alice-key-step").await, "Step 1: your provider keys");
    assert_eq!(b.text("user").await, "alice");
    let hints = b.body().await;
    assert!(hints.contains("Starts with AIza, 39 characters"), "{hints}");
    assert!(
        b.text("env-names").await.contains("GEMINI_API_KEY")
            && b.text("env-names").await.contains("EXA_API_KEY")
            && b.text("env-names").await.contains("expire one hour"),
    );

    b.submit("gemini").await; // both empty
    assert_eq!(b.seen("both-empty").await, "Step 1: your provider keys");
    assert!(b
        .text("gemini-error")
        .await
        .contains("Enter your Gemini key"));
    assert!(b.text("exa-error").await.contains("Enter your Exa key"));

    let short = b.secret("AIzaTooShort");
    let alice_exa = b.secret(&exa_key('a'));
    b.fill("gemini", &short).await;
    b.fill("exa", &alice_exa).await;
    b.submit("gemini").await;
    assert_eq!(b.seen("too-short").await, "Step 1: your provider keys");
    let reason = b.text("gemini-error").await;
    assert!(reason.contains("starts with `AIza` and has 39"), "{reason}");
    assert_eq!(b.text("exa-error").await, "");
    assert!(
        b.text("exa-status").await.starts_with("Stored: "),
        "the Exa key was kept"
    );
    assert_eq!(b.text("missing").await, "Gemini");
    save_readme_shot(&b).await;

    let huge = b.secret(&format!("AIza{}", "x".repeat(100 * 1024)));
    b.set("gemini", &huge).await;
    b.submit("gemini").await;
    assert_eq!(b.seen("huge").await, "Step 1: your provider keys");
    assert!(
        !b.text("gemini-error").await.is_empty(),
        "no reason for a 100 KB key"
    );
    assert!(b.text("exa-status").await.starts_with("Stored: "));

    for (name, env, reason) in [
        ("empty-env", "", "No key found"),
        ("unknown-env", "SOME_SETTING=1\n", "skipped: SOME_SETTING"),
        (
            "malformed-env",
            "GEMINI_API_KEY=\"unterminated\n",
            "malformed .env text: line 1",
        ),
    ] {
        b.set("env", env).await;
        b.submit("env").await;
        assert_eq!(b.seen(name).await, "Step 1: your provider keys");
        let shown = b.text("env-error").await;
        assert!(shown.contains(reason), "{name}: {shown}");
    }

    let alice_gemini = b.secret(&gemini_key('a'));
    b.fill("gemini", &alice_gemini).await;
    b.submit("gemini").await;
    assert_eq!(b.seen("alice-keys-saved").await, "Step 2: Your website");

    // Skipping ahead: the reason and a way back.
    b.client
        .execute(
            "document.querySelector('form[action^=\"/onboarding/step\"]').action = \
             '/onboarding/step/4'; document.getElementById('website').value = 'x';",
            vec![],
        )
        .await
        .unwrap();
    b.submit("website").await;
    assert_eq!(b.seen("skip-ahead").await, "Not yet");
    assert!(b.body().await.contains("finish step 2 first"));
    b.click("a[href='/onboarding']").await;

    // A blank website passes the browser's `required` but not the server.
    b.step(&[("website", "   ")], "Step 2: Your website").await;
    assert!(b
        .text("website-error")
        .await
        .contains("enter 1 to 200 characters"));
    b.steps_2_to_4("https://alice.example", "thorough", "rust, security")
        .await;

    // Going back to step 2 keeps step 3.
    b.click("a[href='/onboarding?step=2']").await;
    assert_eq!(b.seen("alice-edit-2").await, "Step 2: Your website");
    assert_eq!(b.field_value("website").await, "https://alice.example");
    b.step(&[("website", "https://alice.example/blog")], "All set")
        .await;
    let done = b.body().await;
    assert!(
        done.contains("https://alice.example/blog") && done.contains("rust, security"),
        "{done}"
    );

    // Bob: the gate sends him to the key step; he pastes a `.env`.
    b.sign_out().await;
    b.sign_in("bob").await;
    b.goto("/generate").await;
    assert_eq!(b.seen("bob-gate").await, "Keys needed first");
    assert!(b.body().await.contains("Gemini and Exa"));
    b.click("#to-key-step").await;
    assert_eq!(b.seen("bob-key-step").await, "Step 1: your provider keys");
    let (bob_gemini, bob_exa) = (b.secret(&gemini_key('b')), b.secret(&exa_key('b')));
    b.set(
        "env",
        &format!("# bob's\nGEMINI_API_KEY={bob_gemini}\nEXA_API_KEY=\"{bob_exa}\"\nDEBUG=1\n"),
    )
    .await;
    b.submit("env").await;
    assert_eq!(b.seen("bob-env").await, "Step 2: Your website");
    b.steps_2_to_4("https://bob.example", "quick", "cooking")
        .await;
    let done = b.body().await;
    assert!(done.contains("expire after one hour"), "{done}");
    assert!(
        done.contains(" UTC (in 59 minutes)") || done.contains(" UTC (in 60 minutes)"),
        "{done}"
    );
    assert!(!done.contains("alice"), "{done}");

    // Sign-out, then sign-in from the 401 page (met with a garbage cookie, which the
    // server clears), resumes where Alice was.
    b.sign_out().await;
    b.goto("/onboarding").await;
    assert_eq!(b.seen("signed-out-401").await, "Please sign in");
    // (Signed out, the HttpOnly cookie is gone, so a script may set one of that name.)
    let script = "document.cookie = 'onboarding_token=not.a-token; path=/';";
    b.client.execute(script, vec![]).await.unwrap();
    let cookies = b.client.execute("return document.cookie;", vec![]).await;
    assert_eq!(cookies.unwrap(), "onboarding_token=not.a-token");
    b.goto("/onboarding").await;
    assert_eq!(b.seen("bad-cookie-401").await, "Please sign in");
    let cookies = b.client.execute("return document.cookie;", vec![]).await;
    assert_eq!(cookies.unwrap(), "", "the garbage cookie was not cleared");
    assert!(b.body().await.contains("your sign-in has ended"));
    b.sign_in("alice").await;
    assert_eq!(b.seen("alice-resumes").await, "All set");
    assert!(b.body().await.contains("https://alice.example/blog"));

    // A restart keeps the session.
    drop(server);
    let (server, addr) = start_server(&dir);
    let b = Browser {
        base: format!("http://{addr}"),
        ..b
    };
    b.goto("/onboarding").await;
    assert_eq!(b.seen("after-restart").await, "All set");
    assert_eq!(b.text("user").await, "alice");

    // Her keys, masked: replace one, delete the other, and the gate asks again.
    b.click("a[href='/onboarding/keys']").await;
    assert_eq!(b.seen("alice-keys").await, "Your keys");
    let before = b.text("gemini-status").await;
    let replaced = b.secret(&gemini_key('c'));
    b.fill("gemini", &replaced).await;
    b.submit("gemini").await;
    b.goto("/onboarding/keys").await;
    let after = b.text("gemini-status").await;
    assert!(
        after.starts_with("Stored: ") && after != before,
        "{before} / {after}"
    );
    b.click("#delete-exa").await;
    assert_eq!(b.seen("exa-deleted").await, "Your keys");
    assert_eq!(b.text("exa-status").await, "Not stored yet.");
    b.goto("/generate").await;
    assert_eq!(b.seen("alice-gate").await, "Keys needed first");
    b.click("#to-key-step").await;
    assert_eq!(b.seen("alice-back").await, "Step 1: your provider keys");
    drop(server);
}

impl Browser {
    /// Steps 2, 3 and 4, from the page of step 2 to "All set".
    async fn steps_2_to_4(&self, website: &str, depth: &str, topics: &str) {
        self.step(&[("website", website)], "Step 3: Research preferences")
            .await;
        self.step(&[("depth", depth), ("topics", topics)], "Step 4: Finish")
            .await;
        self.step(&[], "All set").await;
    }

    async fn field_value(&self, id: &str) -> String {
        let field = self.client.find(Locator::Id(id)).await.unwrap();
        field.prop("value").await.unwrap().unwrap_or_default()
    }
}

/// The README's screenshot: the key step with a refused key's reason beside its field
/// and the other key kept, as this run shows it.
async fn save_readme_shot(b: &Browser) {
    let png = b.client.screenshot().await.unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(README_SHOT);
    // A packaged or read-only checkout keeps the committed one.
    if let Err(e) = std::fs::write(&path, &png) {
        println!("not updating {}: {e}", path.display());
    }
}

/// Without a browser the test fails and says how to install one.
#[test]
#[should_panic(expected = "sudo apt-get install chromium chromium-driver")]
fn a_missing_browser_says_how_to_install_it() {
    binary("BYOK_TEST_NO_SUCH_VARIABLE", &["/nonexistent/chromedriver"]);
}

/// The README shows the key step's screenshot this test takes, and it is there, a PNG,
/// small enough for the package.
#[test]
fn the_readme_shows_the_key_step_screenshot() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    // An absolute address: relative ones break on crates.io (see .ci/package).
    let url = "https://github.com/tower-byok/tower-byok/raw/main/";
    assert!(
        readme.contains(&format!("]({url}{README_SHOT})")),
        "README.md does not show {README_SHOT}"
    );
    let png = std::fs::read(root.join(README_SHOT)).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{README_SHOT} is not a PNG"
    );
    assert!(
        png.len() < 200 * 1024,
        "{README_SHOT} is {} bytes",
        png.len()
    );
}
