//! Wrapped keyrings unwrapped by AWS KMS (issue 21), against moto's KMS server on
//! loopback (`.ci/test` starts it and exports `BYOK_TEST_KMS_URL`; without it these
//! tests print a notice and pass). Wrap then open, a vault serving over real HTTP on
//! SQLite and PostgreSQL, and each failure with its own error kind: a disabled key, a
//! denied call, a stopped server, a corrupt or moved ciphertext, a failed refresh.
#![cfg(all(feature = "aws-kms", feature = "sqlite", feature = "axum", unix))]
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use common::{master, Backend, TestDb};
use tower_byok::{AwsKms, ErrorKind, Keyring, KeyringSource, WrappedKeyring, WrappedKeyringSource};

per_backend!(
    a_wrapped_keyring_opens_a_vault_serving_over_http,
    a_disabled_key_keeps_the_vault_closed,
    a_failed_refresh_keeps_the_keys_and_says_so,
);

/// moto's endpoint, or `None` (with a notice) when `.ci/test` did not start one.
fn kms_url() -> Option<String> {
    match std::env::var("BYOK_TEST_KMS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("BYOK_TEST_KMS_URL is not set: skipping (bash .ci/test starts moto)");
            None
        }
    }
}

/// A client for the KMS at `url`, signing as `access`/`secret`, that gives up fast.
fn client_as(url: &str, access: &str, secret: &str) -> aws_sdk_kms::Client {
    let config = aws_sdk_kms::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(access, secret, None, None, "test"))
        .endpoint_url(url)
        .retry_config(aws_sdk_kms::config::retry::RetryConfig::standard().with_max_attempts(2))
        .timeout_config(
            aws_sdk_kms::config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_timeout(Duration::from_secs(20))
                .build(),
        )
        .build();
    aws_sdk_kms::Client::from_conf(config)
}

fn client(url: &str) -> aws_sdk_kms::Client {
    client_as(url, "testing", "testing")
}

/// A fresh symmetric KMS key: its ARN.
async fn create_key(client: &aws_sdk_kms::Client) -> String {
    let out = client.create_key().send().await.unwrap();
    out.key_metadata().unwrap().arn().unwrap().to_owned()
}

/// A fresh KMS key at `url`, and a keyring of the one key `k1` (bytes `byte`) wrapped
/// under it: the KMS, the key's ARN and the wrapped keyring.
async fn wrapped_k1(url: &str, byte: u8) -> (AwsKms, String, WrappedKeyring) {
    let kms = AwsKms::new(client(url));
    let arn = create_key(&client(url)).await;
    let wrapped = WrappedKeyring::wrap(&Keyring::new(master("k1", byte)), &kms, &arn)
        .await
        .unwrap();
    (kms, arn, wrapped)
}

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Wrap a plain keyring, open a vault from the wrapped file, serve over HTTP; rotate
/// the wrapped keyring (a new active key) and refresh without a restart.
async fn a_wrapped_keyring_opens_a_vault_serving_over_http(backend: Backend) {
    let Some(url) = kms_url() else { return };
    let kms = AwsKms::new(client(&url));
    let arn = create_key(&client(&url)).await;
    let plain = Keyring::new(master("k1", 1));
    let wrapped = WrappedKeyring::wrap(&plain, &kms, &arn).await.unwrap();
    let text = wrapped.to_text();
    assert!(text.starts_with("tower-byok wrapped-keyring v1\nscheme aws-kms\n"));
    assert!(
        !text.contains(&*master("k1", 1).expose_keyring_line()),
        "{text}"
    );
    let shown = format!("{wrapped:?} {kms:?}");
    assert!(!shown.contains(text.lines().last().unwrap()), "{shown}");
    assert_eq!(
        wrapped
            .unwrap(&kms)
            .await
            .unwrap()
            .ids()
            .collect::<Vec<_>>(),
        ["k1"]
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyring.wrapped");
    write(&path, &text);
    let db = TestDb::new(backend).await;
    let source = WrappedKeyringSource::file(&path, kms.clone());
    let vault = db.open_from(source, None).await.unwrap();
    let status = vault.keyring_status();
    assert!(status.source.contains("wrapped keyring"), "{status:?}");
    assert_eq!(status.ids, ["k1"]);
    vault
        .put("alice", "openai", "sk-alice-under-kms-0123")
        .await
        .unwrap();
    let server = common::http::Server::serve_openai(&vault).await;
    let (code, _, body) = server.get("/", Some("alice")).await;
    assert_eq!(
        (code.as_u16(), body.as_str()),
        (200, "sk-alice-under-kms-0123")
    );

    // Rotation of the wrapped file: a new active key, then a refresh, no restart.
    let rotated = WrappedKeyring::parse(&std::fs::read_to_string(&path).unwrap())
        .unwrap()
        .rotate(&kms, "k2")
        .await
        .unwrap();
    assert_eq!(rotated.ids().collect::<Vec<_>>(), ["k2", "k1"]);
    write(&path, &rotated.to_text());
    vault.refresh_keyring().await.unwrap();
    assert_eq!(vault.keyring_status().active, "k2");
    vault
        .put("bob", "openai", "sk-bob-under-rotated-01")
        .await
        .unwrap();
    for (user, key) in [
        ("alice", "sk-alice-under-kms-0123"),
        ("bob", "sk-bob-under-rotated-01"),
    ] {
        let (code, _, body) = server.get("/", Some(user)).await;
        assert_eq!((code.as_u16(), body.as_str()), (200, key));
    }
    assert_eq!(
        common::usage(&vault).await,
        [("k1".into(), 1), ("k2".into(), 1)]
    );
}

/// A refresh that fails (here: the KMS stopped) keeps the keys already unwrapped: the
/// vault still serves, `keyring_status` and the metric show the failure, and a new
/// instance does not open.
async fn a_failed_refresh_keeps_the_keys_and_says_so(backend: Backend) {
    let Some(mut moto) = OwnMoto::start() else {
        return;
    };
    let (kms, _, wrapped) = wrapped_k1(&moto.url, 3).await;
    let db = TestDb::new(backend).await;
    let source = || WrappedKeyringSource::new(wrapped.clone(), kms.clone());
    let vault = db.open_from(source(), None).await.unwrap();
    vault
        .put("carol", "openai", "sk-carol-before-the-stop")
        .await
        .unwrap();
    let before = refreshes("kms_unreachable");

    moto.stop();
    let err = vault.refresh_keyring().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KmsUnreachable, "{err}");
    let status = vault.keyring_status();
    assert_eq!(status.last_error, Some(ErrorKind::KmsUnreachable));
    assert_eq!((status.consecutive_failures, status.ids.len()), (1, 1));
    assert!(!status.is_healthy());
    vault.forget_cached("carol");
    assert_eq!(
        common::served(&vault, "carol").await.as_deref(),
        Some("sk-carol-before-the-stop")
    );
    if let Some(before) = before {
        // At least: the other backend's test may count one at the same time.
        assert!(refreshes("kms_unreachable").unwrap() > before);
    }
    let err = db.open_from(source(), None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KmsUnreachable, "{err}");
}

/// A disabled KMS key: `KmsKeyDisabled`, and the vault does not open.
///
/// moto 5 accepts `DisableKey` but still decrypts under the disabled key (checked
/// here, so that a moto that starts refusing shows up). So AWS's answer for a disabled
/// key or a key pending deletion, as the KMS API reference gives it (HTTP 400,
/// `{"__type": "DisabledException", ...}`), comes from a loopback HTTP server that
/// answers every call with it, to the real SDK client.
async fn a_disabled_key_keeps_the_vault_closed(backend: Backend) {
    let Some(url) = kms_url() else { return };
    let admin = client(&url);
    let (kms, arn, wrapped) = wrapped_k1(&url, 3).await;
    // moto's DisableKey takes the key id, not the ARN.
    let key_id = arn.rsplit('/').next().unwrap();
    admin.disable_key().key_id(key_id).send().await.unwrap();
    let state = admin.describe_key().key_id(key_id).send().await.unwrap();
    assert!(!state.key_metadata().unwrap().enabled());
    assert!(
        wrapped.unwrap(&kms).await.is_ok(),
        "moto now refuses a disabled key: test it against moto itself"
    );

    let db = TestDb::new(backend).await;
    for code in ["DisabledException", "KMSInvalidStateException"] {
        let aws = answering(code).await;
        let kms = AwsKms::new(client(&aws));
        let err = db
            .open_from(WrappedKeyringSource::new(wrapped.clone(), kms), None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::KmsKeyDisabled, "{code}: {err}");
        assert!(!format!("{err} {err:?}").contains(&arn), "{err:?}");
    }
}

/// A loopback HTTP server that answers every KMS call with AWS's error `code`.
async fn answering(code: &'static str) -> String {
    let app = axum::Router::new().fallback(move || async move {
        (
            http::StatusCode::BAD_REQUEST,
            [("content-type", "application/x-amz-json-1.1")],
            format!(
                r#"{{"__type":"{code}","message":"arn:aws:kms:us-east-1:123456789012:key/x is disabled."}}"#
            ),
        )
    });
    let server = common::http::Server::start(app).await;
    format!("http://{}", server.addr)
}

/// How many keyring refreshes ended with `result`, from a recorder installed once for
/// this test binary; `None` without the `metrics` feature.
fn refreshes(result: &str) -> Option<u64> {
    #[cfg(feature = "metrics")]
    {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
        use std::sync::OnceLock;
        static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
        let snapshotter = SNAPSHOTTER.get_or_init(|| {
            let recorder = DebuggingRecorder::new();
            let snapshotter = recorder.snapshotter();
            recorder
                .install()
                .expect("the only recorder of this test binary");
            snapshotter
        });
        // A snapshot reads counters without resetting them.
        let total = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| {
                key.key().name() == "tower_byok_keyring_refreshes_total"
                    && key
                        .key()
                        .labels()
                        .any(|l| l.key() == "result" && l.value() == result)
            })
            .map(|(.., value)| match value {
                DebugValue::Counter(n) => n,
                _ => 0,
            })
            .sum();
        Some(total)
    }
    #[cfg(not(feature = "metrics"))]
    {
        let _ = result;
        None
    }
}

/// A ciphertext flipped, or moved to another key id: `WrappedKeyCorrupt`, and the
/// vault does not open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_moved_ciphertext_does_not_unwrap() {
    let Some(url) = kms_url() else { return };
    let kms = AwsKms::new(client(&url));
    let arn = create_key(&client(&url)).await;
    let plain = Keyring::new(master("k2", 5))
        .with_key(master("k1", 4))
        .unwrap();
    let text = WrappedKeyring::wrap(&plain, &kms, &arn)
        .await
        .unwrap()
        .to_text();
    let lines: Vec<&str> = text.lines().collect();
    let (k2, k1) = (lines[3], lines[4]);
    let (_, c2) = k2.split_once(' ').unwrap();
    let (_, c1) = k1.split_once(' ').unwrap();

    // k1's ciphertext under the id k2 and the other way round: the encryption context
    // binds each to its id.
    let moved = format!(
        "{}\n{}\n{}\nk2 {c1}\nk1 {c2}\n",
        lines[0], lines[1], lines[2]
    );
    // One byte of k1's ciphertext changed.
    let mut bytes = base64_decode(c1);
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let flipped = text.replace(c1, &base64_encode(&bytes));
    let db = TestDb::new(Backend::Sqlite).await;
    for bad in [moved, flipped] {
        let source = WrappedKeyringSource::new(WrappedKeyring::parse(&bad).unwrap(), kms.clone());
        let err = source.load().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WrappedKeyCorrupt, "{err}");
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(c1) && !shown.contains(&arn), "{shown}");
        let err = db.open_from(source, None).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WrappedKeyCorrupt, "{err}");
    }
    // The untouched text opens.
    let keyring = WrappedKeyring::parse(&text)
        .unwrap()
        .unwrap(&kms)
        .await
        .unwrap();
    assert_eq!(keyring.ids().collect::<Vec<_>>(), ["k2", "k1"]);
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A moto server of this test's own, killed on drop.
struct OwnMoto {
    child: Child,
    url: String,
}

impl OwnMoto {
    /// `None`, with a notice, when `.ci/test` did not start moto.
    fn start() -> Option<Self> {
        kms_url()?;
        let Ok(bin) = std::env::var("BYOK_TEST_MOTO_SERVER") else {
            eprintln!("BYOK_TEST_MOTO_SERVER is not set: skipping (bash .ci/test sets it)");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A raw request to moto: (status line, body).
    async fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let host = self.url.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    /// Creates an IAM user with an access key and no policy: its (id, secret).
    async fn user_without_rights(&self) -> (String, String) {
        let iam = [
            ("Content-Type", "application/x-www-form-urlencoded"),
            (
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
            ),
        ];
        let created = self
            .post(
                "/",
                &iam,
                "Action=CreateUser&UserName=nobody&Version=2010-05-08",
            )
            .await;
        assert!(created.contains("<UserName>nobody</UserName>"), "{created}");
        let key = self
            .post(
                "/",
                &iam,
                "Action=CreateAccessKey&UserName=nobody&Version=2010-05-08",
            )
            .await;
        let field = |name: &str| {
            let open = format!("<{name}>");
            let start = key.find(&open).unwrap() + open.len();
            let end = start + key[start..].find('<').unwrap();
            key[start..end].to_owned()
        };
        (field("AccessKeyId"), field("SecretAccessKey"))
    }
}

impl Drop for OwnMoto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// On a moto of the test's own: a caller IAM does not allow (moto's IAM mode, switched
/// on after the setup) gets `KmsAccessDenied`; then the server is stopped and the same
/// keyring gets `KmsUnreachable`. Neither opens a vault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_call_and_a_stopped_server_each_say_what_failed() {
    let Some(mut moto) = OwnMoto::start() else {
        return;
    };
    let (kms, arn, wrapped) = wrapped_k1(&moto.url, 9).await;
    let (id, secret) = moto.user_without_rights().await;
    // From now on moto authenticates and authorizes every call as IAM would.
    let reset = moto.post("/moto-api/reset-auth", &[], "0").await;
    assert!(reset.contains("\"ok\""), "{reset}");

    let db = TestDb::new(Backend::Sqlite).await;
    let denied = AwsKms::new(client_as(&moto.url, &id, &secret));
    let stranger = AwsKms::new(client_as(&moto.url, "AKIAUNKNOWN000000000", "nope"));
    for kms in [denied, stranger] {
        let source = WrappedKeyringSource::new(wrapped.clone(), kms);
        let err = source.load().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::KmsAccessDenied, "{err}");
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(&arn) && !shown.contains(&id), "{shown}");
        let err = db.open_from(source, None).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::KmsAccessDenied, "{err}");
    }

    moto.stop();
    let source = WrappedKeyringSource::new(wrapped.clone(), kms.clone());
    let err = source.load().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KmsUnreachable, "{err}");
    let err = db.open_from(source, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KmsUnreachable, "{err}");
}

/// The Python check: `tests/kms_unwrap.py`, written from docs/FORMAT.md alone with
/// boto3, unwraps a wrapped keyring the crate wrote, through the same moto, and prints
/// the plain keyring: the same keys, in the same order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_from_format_md_unwraps_what_the_crate_wrapped() {
    let Some(url) = kms_url() else { return };
    let python = std::env::var("BYOK_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_boto3 = Command::new(&python)
        .args(["-c", "import boto3"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_boto3 {
        eprintln!("{python} with boto3 not found: skipping (bash .ci/test installs it)");
        return;
    }
    let kms = AwsKms::new(client(&url));
    let arn = create_key(&client(&url)).await;
    let plain = Keyring::new(tower_byok::MasterKey::generate("k-new").unwrap())
        .with_key(master("k.old_1", 8))
        .unwrap();
    let wrapped = WrappedKeyring::wrap(&plain, &kms, &arn).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyring.wrapped");
    write(&path, &wrapped.to_text());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kms_unwrap.py");
    let out = Command::new(&python)
        .arg(script)
        .arg(&path)
        .env("AWS_ENDPOINT_URL", &url)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), *plain.expose_text());
}
