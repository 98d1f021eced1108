//! Wrapped keyrings through the binary, against moto's KMS on loopback (`.ci/test` sets
//! `BYOK_TEST_KMS_URL`; without it this prints a notice and passes): `keyring wrap`,
//! every vault command from the wrapped keyring (a file or BYOK_MASTER_KEYS), `keyring
//! rotate`, `rewrap` and `retire`, and the failures with what each says.
#![cfg(feature = "aws-kms")]

use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use tower_byok::WrappedKeyring;

use crate::common::Backend;
use crate::{mode, Env};

crate::per_backend!(wrap_rotate_and_retire_a_wrapped_keyring);

async fn create_key(url: &str) -> String {
    let config = aws_sdk_kms::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .endpoint_url(url)
        .build();
    let out = aws_sdk_kms::Client::from_conf(config)
        .create_key()
        .send()
        .await
        .unwrap();
    out.key_metadata().unwrap().arn().unwrap().to_owned()
}

fn wrapped(env: &Env, name: &str) -> WrappedKeyring {
    WrappedKeyring::parse(&std::fs::read_to_string(env.path(name)).unwrap()).unwrap()
}

async fn wrap_rotate_and_retire_a_wrapped_keyring(backend: Backend) {
    let Ok(url) = std::env::var("BYOK_TEST_KMS_URL") else {
        eprintln!("BYOK_TEST_KMS_URL is not set: skipping (bash .ci/test starts moto)");
        return;
    };
    let arn = create_key(&url).await;
    let env = Env::new(backend).await;
    let aws = [
        ("AWS_ENDPOINT_URL", url.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
    ];
    let run = |args: &[&str]| env.run_with_env(args, None, &aws);
    env.keygen("k1", "k1.keys");
    env.put("k1.keys", "alice", "openai", "sk-proj-alice-kms-0123456789");

    // Wrap: a new owner-only file, the plain key nowhere in it or in the output.
    run(&[
        "--keyring-file",
        "k1.keys",
        "keyring",
        "wrap",
        "--kms-key",
        &arn,
        "--out",
        "keys.wrapped",
    ])
    .ok()
    .says("keys.wrapped");
    assert_eq!(mode(&env.path("keys.wrapped")), 0o600);
    let text = std::fs::read_to_string(env.path("keys.wrapped")).unwrap();
    for secret in env.secrets.lock().unwrap().iter() {
        assert!(!text.contains(secret.as_str()), "{text}");
    }
    let first = wrapped(&env, "keys.wrapped");
    assert_eq!((first.scheme(), first.kms_key()), ("aws-kms", arn.as_str()));
    assert_eq!(first.ids().collect::<Vec<_>>(), ["k1"]);

    // Every vault command takes it, from a file or from BYOK_MASTER_KEYS.
    run(&["--keyring-file", "keys.wrapped", "list", "--user", "alice"])
        .ok()
        .says("openai");
    let in_var = [aws.as_slice(), &[("BYOK_MASTER_KEYS", text.as_str())]].concat();
    env.run_with_env(&["list", "--user", "alice"], None, &in_var)
        .ok()
        .says("openai");

    // The plain `rotate` would write the keys in the clear: refused.
    run(&[
        "--keyring-file",
        "keys.wrapped",
        "rotate",
        "--id",
        "k2",
        "--out",
        "plain.keys",
    ])
    .fails(1, "keyring rotate");
    assert!(!env.path("plain.keys").exists());

    // keyring rotate: k2 first, wrapped, then the usual rewrap, verify and retire.
    run(&[
        "--keyring-file",
        "keys.wrapped",
        "keyring",
        "rotate",
        "--id",
        "k2",
        "--out",
        "k2.wrapped",
    ])
    .ok()
    .says("k2.wrapped");
    assert_eq!(
        wrapped(&env, "k2.wrapped").ids().collect::<Vec<_>>(),
        ["k2", "k1"]
    );
    run(&["--keyring-file", "k2.wrapped", "rewrap"]).ok();
    run(&["--keyring-file", "k2.wrapped", "verify"]).ok();
    run(&["--keyring-file", "k2.wrapped", "usage"])
        .ok()
        .says("k2");
    run(&[
        "--keyring-file",
        "k2.wrapped",
        "retire",
        "--key-id",
        "k1",
        "--out",
        "k2-only.wrapped",
    ])
    .ok();
    assert_eq!(
        wrapped(&env, "k2-only.wrapped").ids().collect::<Vec<_>>(),
        ["k2"]
    );
    run(&[
        "--keyring-file",
        "k2-only.wrapped",
        "list",
        "--user",
        "alice",
    ])
    .ok()
    .says("openai");

    // Failures say what failed.
    let no_credentials = [aws.as_slice(), &[("AWS_ACCESS_KEY_ID", "")]].concat();
    env.run_with_env(
        &["--keyring-file", "k2-only.wrapped", "verify"],
        None,
        &no_credentials,
    )
    .fails(1, "AWS_ACCESS_KEY_ID is not set");
    let unreachable = [
        aws.as_slice(),
        &[("AWS_ENDPOINT_URL", "http://127.0.0.1:9")],
    ]
    .concat();
    env.run_with_env(
        &["--keyring-file", "k2-only.wrapped", "verify"],
        None,
        &unreachable,
    )
    .fails(1, "could not be reached");
    run(&[
        "--keyring-file",
        "k2-only.wrapped",
        "keyring",
        "wrap",
        "--kms-key",
        &arn,
        "--out",
        "again.wrapped",
    ])
    .fails(1, "already wrapped");
}

/// README "AWS KMS": the quickstart's development keyring wrapped with `keyring wrap`,
/// then the quickstart run from the wrapped keyring in BYOK_MASTER_KEYS, serving the key
/// stored before. Runs the quickstart example that `cargo test` built beside the binary
/// (skipped with a notice when only this test target was built).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_runs_from_a_wrapped_keyring() {
    let Ok(url) = std::env::var("BYOK_TEST_KMS_URL") else {
        eprintln!("BYOK_TEST_KMS_URL is not set: skipping (bash .ci/test starts moto)");
        return;
    };
    let quickstart = std::path::Path::new(crate::BIN)
        .with_file_name("examples")
        .join("quickstart");
    if !quickstart.exists() {
        eprintln!("{} was not built: skipping", quickstart.display());
        return;
    }
    let arn = create_key(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let aws = [
        ("AWS_ENDPOINT_URL", url.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
    ];
    let serve = |keyring: Option<&str>| {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = std::process::Command::new(&quickstart);
        cmd.current_dir(dir.path())
            .env("PORT", port.to_string())
            .env_remove("BYOK_MASTER_KEYS")
            .env_remove("BYOK_DATABASE")
            .envs(aws)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(keyring) = keyring {
            cmd.env("BYOK_MASTER_KEYS", keyring);
        }
        Quickstart::start(cmd, port)
    };

    let first = serve(None);
    let stored = first.request(
        "PUT /keys/openai",
        "alice-token",
        "sk-alice-demo-wrapped-0001",
    );
    assert!(stored.starts_with("HTTP/1.1 201"), "{stored}");
    drop(first);

    let wrap = std::process::Command::new(crate::BIN)
        .current_dir(dir.path())
        .args(["--keyring-file", "byok-dev-keyring.txt", "keyring", "wrap"])
        .args(["--kms-key", &arn, "--out", "byok-keyring.wrapped"])
        .envs(aws)
        .env_remove("BYOK_MASTER_KEYS")
        .output()
        .unwrap();
    assert!(wrap.status.success(), "{wrap:?}");
    std::fs::remove_file(dir.path().join("byok-dev-keyring.txt")).unwrap();
    let wrapped = std::fs::read_to_string(dir.path().join("byok-keyring.wrapped")).unwrap();

    let second = serve(Some(&wrapped));
    let chat = second.request("POST /chat", "alice-token", "");
    assert!(chat.starts_with("HTTP/1.1 200"), "{chat}");
    assert!(chat.contains("\"would_call\":\"openai\""), "{chat}");
    assert!(
        !dir.path().join("byok-dev-keyring.txt").exists(),
        "the quickstart fell back to a development keyring"
    );
}

/// The quickstart example as a process, killed on drop.
struct Quickstart {
    child: std::process::Child,
    port: u16,
}

impl Quickstart {
    fn start(mut cmd: std::process::Command, port: u16) -> Self {
        let mut child = cmd.spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the quickstart exited: {status}");
            }
            assert!(std::time::Instant::now() < deadline, "no quickstart");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Self { child, port }
    }

    /// One HTTP/1.1 request as the bearer `token`: the whole response.
    fn request(&self, line: &str, token: &str, body: &str) -> String {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            stream,
            "{line} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
             Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
