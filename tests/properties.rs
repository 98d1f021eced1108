//! Property tests through the public API: the keyring text parser, the legacy import
//! parsers and the input validators never panic on arbitrary input, accept exactly what
//! their documented rules accept, and never echo key material in an error.
//!
//! 256 cases per property by default, so the file runs in seconds in CI; set
//! `PROPTEST_CASES` for a longer run. The `fuzz/` folder holds cargo-fuzz targets for
//! the same entry points.
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used)]

use std::error::Error as _;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use proptest::prelude::*;
use tower_byok::{ErrorKind, Keyring, MasterKey, ProviderKey, SqliteStore, Vault};

/// The default case count, unless `PROPTEST_CASES` says otherwise.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig::with_cases(cases)
}

/// Everything an error shows: `Display`, `Debug` and every source's `Display`.
fn shown(err: &tower_byok::Error) -> String {
    let mut text = format!("{err}\n{err:?}");
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(&format!("\n{s}\n{s:?}"));
        source = s.source();
    }
    text
}

fn assert_not_echoed(err: &tower_byok::Error, secret: &str) -> Result<(), TestCaseError> {
    let text = shown(err);
    prop_assert!(
        !text.contains(secret),
        "the error echoes the secret {secret:?}: {text}"
    );
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn vault() -> Vault {
    Vault::open(
        SqliteStore::in_memory().await.unwrap(),
        Keyring::new(MasterKey::generate("k1").unwrap()),
    )
    .await
    .unwrap()
}

/// A secret that looks like a provider key and appears nowhere by chance.
fn secret_like() -> impl Strategy<Value = String> {
    "[A-Za-z0-9]{24}".prop_map(|s| format!("sk-{s}"))
}

// --- keyring text --------------------------------------------------------------------

/// 32 bytes of key material, not all zeros, in standard base64 with or without padding.
fn key_b64() -> impl Strategy<Value = String> {
    (prop::array::uniform32(any::<u8>()), any::<bool>()).prop_map(|(mut bytes, pad)| {
        bytes[0] |= 1;
        if pad {
            STANDARD.encode(bytes)
        } else {
            STANDARD_NO_PAD.encode(bytes)
        }
    })
}

/// Ways to put a valid key into text that is still not a valid keyring.
fn malformed_keyring(b64: String) -> impl Strategy<Value = (String, String)> {
    let id = "[A-Za-z0-9_.-]{1,64}";
    let bad_id = prop_oneof![
        Just(String::new()),
        "[A-Za-z0-9_.-]{65,80}",
        "[A-Za-z0-9]{1,8}[ /@!;|][A-Za-z0-9]{1,8}",
        "[à-ÿ]{1,8}",
    ];
    let ws = "[ \t\n,]{0,3}";
    prop_oneof![
        // A bad key id in front of a good key.
        (bad_id, Just(b64.clone()), ws).prop_map(|(id, k, ws)| (format!("{ws}{id}:{k}{ws}"), k)),
        // No colon: the id and the key run together or are separated by a space.
        (id, Just(b64.clone()), "[ =]?").prop_map(|(id, k, sep)| (format!("{id}{sep}{k}"), k)),
        // A good key id twice.
        (id, Just(b64.clone())).prop_map(|(id, k)| (format!("{id}:{k}\n{id}:{k}"), k)),
        // The key cut short or made longer: not 32 bytes, or not base64 at all.
        (id, Just(b64.clone()), 1..40usize).prop_map(|(id, k, cut)| {
            let cut = cut.min(k.len() - 1);
            (format!("{id}:{}", &k[..cut]), k[..cut].to_owned())
        }),
        (id, Just(b64.clone()), "[A-Za-z0-9+/]{1,8}")
            .prop_map(|(id, k, more)| (format!("{id}:{k}{more}"), k)),
        (id, Just(b64.clone()), "[-_!*~]", 0..43usize).prop_map(|(id, k, junk, at)| {
            let at = at.min(k.len());
            (format!("{id}:{}{junk}{}", &k[..at], &k[at..]), k)
        }),
        // A good first entry and a bad second one that carries the key.
        (id, Just(b64)).prop_map(|(id, k)| (format!("{id}:{k},{id}!:{k}"), k)),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn keyring_parse_never_panics(text in any::<String>()) {
        match Keyring::parse(&text) {
            Ok(ring) => prop_assert!(ring.ids().count() >= 1),
            Err(e) => prop_assert_eq!(e.kind(), ErrorKind::InvalidKeyring),
        }
    }

    #[test]
    fn keyring_parse_never_panics_on_keyring_like_text(
        text in "([ \t#,\n]|[A-Za-z0-9_.-]{0,6}|:|[A-Za-z0-9+/=]{0,44}){0,12}"
    ) {
        if let Err(e) = Keyring::parse(&text) {
            prop_assert_eq!(e.kind(), ErrorKind::InvalidKeyring);
        }
    }

    #[test]
    fn keyring_errors_never_contain_the_key(
        (text, material) in key_b64().prop_flat_map(malformed_keyring)
    ) {
        let err = Keyring::parse(&text).unwrap_err();
        prop_assert_eq!(err.kind(), ErrorKind::InvalidKeyring);
        // Short fragments could match the message by chance; key material is long.
        if material.len() >= 8 {
            assert_not_echoed(&err, &material)?;
        }
    }

    #[test]
    fn keyring_text_round_trips(keys in prop::collection::vec(key_b64(), 1..5)) {
        let text: Vec<String> = keys.iter().enumerate().map(|(i, k)| format!("k{i}:{k}")).collect();
        let ring = Keyring::parse(&text.join(",")).unwrap();
        let again = Keyring::parse(&ring.expose_text()).unwrap();
        prop_assert_eq!(ring.ids().collect::<Vec<_>>(), again.ids().collect::<Vec<_>>());
        prop_assert_eq!(ring.ids().count(), keys.len());
    }
}

// --- validators ----------------------------------------------------------------------

/// The documented user id rule, written from the documentation rather than the code.
fn user_id_ok(id: &str) -> bool {
    (1..=255).contains(&id.len()) && !id.chars().any(char::is_control) && id.trim() == id
}

/// The documented provider rule: `[a-z0-9][a-z0-9_.-]{0,63}` after trim and lowercase.
fn provider_ok(name: &str) -> bool {
    let name = name.trim().to_ascii_lowercase();
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c))
        && name.len() <= 64
}

fn secret_ok(secret: &str) -> bool {
    (1..=16 * 1024).contains(&secret.len())
}

fn user_id_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9@._-]{1,40}",
        any::<String>(),
        "[ \t\u{a0}\u{3000}]?[a-z\u{0}-\u{1f}\u{7f}-\u{9f}\u{2028}é ]{0,10}[ \t\u{a0}]?",
        "[a-z]{250,260}",
        "[é]{120,130}",
    ]
}

fn provider_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ \t]?[A-Za-z0-9][A-Za-z0-9_.-]{0,70}[ \t\n]?",
        "[a-z0-9_.\\- |/!é\u{212a}\u{130}]{0,12}",
        any::<String>(),
    ]
}

fn secret_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        secret_like(),
        any::<String>(),
        (16 * 1024 - 2..=16 * 1024 + 2usize).prop_map(|n| "s".repeat(n)),
        (16 * 1024 / 2 - 1..=16 * 1024 / 2 + 1usize).prop_map(|n| "é".repeat(n)),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn provider_key_accepts_exactly_the_documented_rules(
        provider in provider_strategy(),
        secret in secret_strategy(),
    ) {
        let expected = provider_ok(&provider) && secret_ok(&secret);
        match ProviderKey::from_secret(&provider, secret.clone()) {
            Ok(key) => {
                prop_assert!(expected, "accepted {provider:?} with a {}-byte secret", secret.len());
                prop_assert_eq!(key.provider(), provider.trim().to_ascii_lowercase());
                prop_assert_eq!(key.expose_secret(), secret.as_str());
                // As for errors below: a secret of a few characters (`"n"`) is found in
                // any text, so only one long enough to be told apart is looked for.
                if secret.len() >= 8 {
                    let debug = format!("{key:?}");
                    prop_assert!(!debug.contains(&secret));
                }
            }
            Err(e) => {
                prop_assert!(!expected, "refused {provider:?} with a {}-byte secret: {e}", secret.len());
                prop_assert!(matches!(e.kind(), ErrorKind::InvalidProvider | ErrorKind::InvalidSecret));
                if secret.len() >= 8 {
                    assert_not_echoed(&e, &secret)?;
                }
            }
        }
    }
}

#[test]
fn vault_put_accepts_exactly_the_documented_rules() {
    let rt = runtime();
    let vault = rt.block_on(vault());
    let mut runner = proptest::test_runner::TestRunner::new(config());
    let strategy = (user_id_strategy(), provider_strategy(), secret_strategy());
    runner
        .run(&strategy, |(user, provider, secret)| {
            let expected = user_id_ok(&user) && provider_ok(&provider) && secret_ok(&secret);
            match rt.block_on(vault.put(&user, &provider, &secret)) {
                Ok(_) => {
                    prop_assert!(expected, "accepted {user:?} / {provider:?}");
                    let got = rt.block_on(vault.get(&user, &provider)).unwrap().unwrap();
                    prop_assert_eq!(got.expose_secret(), secret.as_str());
                    rt.block_on(vault.delete(&user, &provider)).unwrap();
                }
                Err(e) => {
                    prop_assert!(!expected, "refused {user:?} / {provider:?}: {e}");
                    prop_assert!(matches!(
                        e.kind(),
                        ErrorKind::InvalidUserId
                            | ErrorKind::InvalidProvider
                            | ErrorKind::InvalidSecret
                    ));
                    if secret.len() >= 8 {
                        assert_not_echoed(&e, &secret)?;
                    }
                }
            }
            Ok(())
        })
        .unwrap();
}

// --- sealed blobs --------------------------------------------------------------------

/// The only public way to hand the crate a blob of our choosing is the hidden
/// `__bench` cipher (the store is behind the vault's own migrations); it is the same
/// `open` the vault calls on every stored row.
mod blobs {
    use super::*;
    use tower_byok::__bench::Cipher;

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn arbitrary_blobs_never_open(blob in prop::collection::vec(any::<u8>(), 0..200)) {
            let master = MasterKey::generate("k1").unwrap();
            let cipher = Cipher::derive(&master, "alice");
            prop_assert!(!cipher.open("alice", "openai", &blob));
        }

        #[test]
        fn any_change_to_a_sealed_blob_fails_to_open(
            secret in "[ -~]{1,64}",
            at in any::<prop::sample::Index>(),
            flip in 1..=255u8,
            cut in any::<prop::sample::Index>(),
        ) {
            let master = MasterKey::generate("k1").unwrap();
            let cipher = Cipher::derive(&master, "alice");
            let blob = cipher.seal("alice", "openai", secret.as_bytes());
            prop_assert!(cipher.open("alice", "openai", &blob));
            prop_assert!(!cipher.open("bob", "openai", &blob));
            prop_assert!(!cipher.open("alice", "gemini", &blob));
            let mut tampered = blob.clone();
            tampered[at.index(blob.len())] ^= flip;
            prop_assert!(!cipher.open("alice", "openai", &tampered));
            prop_assert!(!cipher.open("alice", "openai", &blob[..cut.index(blob.len())]));
        }
    }
}

// --- legacy import -------------------------------------------------------------------

#[cfg(feature = "import")]
mod import {
    use super::*;
    use tower_byok::import::{self, LegacyFormat};

    /// Plans `content` as `format` from a file, as the command line tool does.
    fn plan(
        rt: &tokio::runtime::Runtime,
        vault: &Vault,
        dir: &tempfile::TempDir,
        content: &[u8],
        format: LegacyFormat,
    ) -> tower_byok::Result<import::ImportPlan> {
        let path = dir.path().join("source");
        std::fs::write(&path, content).unwrap();
        rt.block_on(import::plan(vault, &path, format))
    }

    fn formats() -> [LegacyFormat; 3] {
        [
            LegacyFormat::dot_env("alice"),
            LegacyFormat::UsersJson,
            LegacyFormat::onboarding_json("alice"),
        ]
    }

    /// Runs `check` on every format against inputs of `strategy`.
    fn run<S: Strategy>(
        strategy: S,
        check: impl Fn(
            &[u8],
            &S::Value,
            Result<import::ImportPlan, tower_byok::Error>,
        ) -> Result<(), TestCaseError>,
        bytes: impl Fn(&S::Value) -> Vec<u8>,
    ) {
        let rt = runtime();
        let vault = rt.block_on(vault());
        let dir = tempfile::tempdir().unwrap();
        let mut runner = proptest::test_runner::TestRunner::new(config());
        runner
            .run(&strategy, |value| {
                let content = bytes(&value);
                for format in formats() {
                    check(&content, &value, plan(&rt, &vault, &dir, &content, format))?;
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        run(
            prop::collection::vec(any::<u8>(), 0..300),
            |_, _, result| {
                if let Err(e) = result {
                    prop_assert!(matches!(
                        e.kind(),
                        ErrorKind::Import | ErrorKind::InvalidUserId
                    ));
                }
                Ok(())
            },
            Clone::clone,
        );
    }

    /// One `.env` line, the secret only ever in a value.
    fn env_line(secret: String) -> impl Strategy<Value = String> {
        let name = "[A-Z_]{1,6}(_API_KEY)?|OPENAI_API_KEY|GEMINI_API_KEY|EXA_API_KEY";
        prop_oneof![
            (name, Just(secret.clone())).prop_map(|(n, s)| format!("{n}={s}")),
            (name, Just(secret.clone())).prop_map(|(n, s)| format!("export {n}=\"{s}")),
            (name, Just(secret.clone())).prop_map(|(n, s)| format!("{n}='{s}")),
            (name, Just(secret.clone())).prop_map(|(n, s)| format!("{n}=\"{s}\" junk")),
            (name, Just(secret.clone())).prop_map(|(n, s)| format!("{n} {s}")),
            (name, Just(secret.clone()), "[a-z]{1,4}").prop_map(|(n, s, x)| format!("{n}={s}{x}")),
            Just(format!("={secret}")),
            Just(format!("9X={secret}")),
            Just("gAAAAA".to_owned() + &"A".repeat(100))
                .prop_map(|f| format!("OPENAI_API_KEY={f}")),
            "[ -~\t]{0,30}",
            Just("# comment".to_owned()),
        ]
    }

    /// A JSON-ish document: valid shapes of the users and onboarding files, with the
    /// secret as a value, and breakage spliced in.
    fn json_doc(secret: String) -> impl Strategy<Value = String> {
        let provider = "[a-z_]{1,8}(_API_KEY)?";
        let value = prop_oneof![
            Just(format!("\"{secret}\"")),
            Just(format!("\"{secret}")),
            Just(secret.clone()),
            Just(format!("[\"{secret}\"]")),
            Just(format!("{{\"v\": \"{secret}\"}}")),
            Just("null".to_owned()),
            Just("12".to_owned()),
            Just("\"\"".to_owned()),
        ];
        let keys = prop::collection::vec((provider, value), 0..4).prop_map(|members| {
            let members: Vec<String> = members
                .into_iter()
                .map(|(p, v)| format!("\"{p}\": {v}"))
                .collect();
            format!("{{{}}}", members.join(", "))
        });
        let user = "[a-z]{1,6}|\"\"|\"[ \u{0}-\u{1f}a]{1,3}\"";
        prop_oneof![
            (user, keys.clone()).prop_map(|(u, k)| format!("{{\"users\": {{\"{u}\": {{\"api_keys\": {k}}}}}}}")),
            (user, keys.clone()).prop_map(|(u, k)| format!("{{\"{u}\": {{\"api_keys\": {k}, \"password\": \"x\"}}}}")),
            (user, user, keys.clone()).prop_map(|(u, n, k)| format!("[{{\"user_id\": \"{u}\", \"username\": \"{n}\", \"api_keys\": {k}}}]")),
            (user, keys.clone()).prop_map(|(u, k)| format!("{{\"users\": [{{\"username\": \"{u}\", \"api_keys\": {k}}}, {{\"username\": \"{u}\", \"api_keys\": {k}}}]}}")),
            (keys.clone(), keys.clone()).prop_map(|(a, b)| format!("{{\"steps\": [{{\"step_number\": 1, \"data\": {{\"api_keys\": {a}}}}}, {{\"data\": {{\"api_keys\": {b}}}}}]}}")),
            (keys, 0..80usize).prop_map(|(k, cut)| {
                let doc = format!("{{\"steps\": [{{\"data\": {{\"api_keys\": {k}}}}}]}}");
                let mut cut = cut.min(doc.len());
                while !doc.is_char_boundary(cut) { cut -= 1; }
                doc[..cut].to_owned()
            }),
        ]
    }

    fn planted() -> impl Strategy<Value = (String, String)> {
        secret_like().prop_flat_map(|secret| {
            let env = prop::collection::vec(env_line(secret.clone()), 0..6)
                .prop_map(|lines| lines.join("\n"));
            let doc = prop_oneof![env, json_doc(secret.clone())];
            (doc, Just(secret))
        })
    }

    #[test]
    fn errors_and_plans_never_echo_a_planted_secret() {
        run(
            planted(),
            |_, (_, secret), result| {
                match result {
                    Err(e) => {
                        prop_assert!(matches!(
                            e.kind(),
                            ErrorKind::Import | ErrorKind::InvalidUserId
                        ));
                        assert_not_echoed(&e, secret)?;
                    }
                    Ok(plan) => {
                        let text = format!("{plan}\n{plan:?}");
                        prop_assert!(
                            !text.contains(secret.as_str()),
                            "the plan shows the secret: {text}"
                        );
                        for key in plan.keys() {
                            prop_assert!(!key.masked().contains(secret.as_str()));
                            let debug = format!("{key:?}");
                            prop_assert!(!debug.contains(secret.as_str()));
                        }
                    }
                }
                Ok(())
            },
            |(doc, _)| doc.clone().into_bytes(),
        );
    }
}
