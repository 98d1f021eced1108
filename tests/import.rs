//! Legacy import on real databases: `.env`, users JSON and onboarding JSON files; dry
//! runs, idempotence, ambiguity, malformed input, conflicts, verification and source
//! removal. Every test runs on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use common::{keyring, Backend, TestDb};
use tower_byok::env_file::EnvMapping;
use tower_byok::import::{
    self, ApplyOptions, ImportPlan, KeyStatus, LegacyFormat, Outcome, SkipReason,
};
use tower_byok::{AuditAction, Error, ErrorKind, Vault};

per_backend!(
    dot_env_imports_one_users_keys_and_a_second_run_changes_nothing,
    users_json_imports_every_shape,
    onboarding_json_collects_the_keys_of_every_step,
    ambiguous_input_is_refused_and_nothing_is_written,
    malformed_input_names_the_place_never_the_secret,
    conflicts_are_left_alone_unless_replacing,
    removing_the_source_keeps_an_identical_backup,
    removal_is_refused_before_anything_is_written,
    every_key_is_verified_before_success,
);

fn write(dir: &Path, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, content).unwrap();
    path
}

fn secrets(keys: &tower_byok::UserKeys) -> BTreeMap<String, String> {
    keys.iter()
        .map(|k| (k.provider().to_owned(), k.expose_secret().to_owned()))
        .collect()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(p, s)| ((*p).to_owned(), (*s).to_owned()))
        .collect()
}

/// Backup files in `dir`.
fn backups(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".bak-"))
        .collect()
}

fn assert_hidden(text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!text.contains(secret), "{secret:?} leaked into: {text}");
    }
}

/// Rows of a plan as `(user, provider, status, origin)`.
fn rows(plan: &ImportPlan) -> Vec<(String, String, KeyStatus, String)> {
    plan.keys()
        .iter()
        .map(|k| {
            (
                k.user_id().to_owned(),
                k.provider().to_owned(),
                k.status(),
                k.origin().to_owned(),
            )
        })
        .collect()
}

fn row(
    user: &str,
    provider: &str,
    status: KeyStatus,
    origin: &str,
) -> (String, String, KeyStatus, String) {
    (user.into(), provider.into(), status, origin.into())
}

fn skipped(plan: &ImportPlan) -> Vec<(String, SkipReason)> {
    plan.skipped()
        .iter()
        .map(|s| (s.origin().to_owned(), s.reason()))
        .collect()
}

async fn audit_len(vault: &Vault, user: &str) -> usize {
    vault.audit_trail(user).await.unwrap().len()
}

const ENV: &str = "# the developer's keys\n\
DEBUG=true\n\
export OPENAI_API_KEY=\"sk-proj-env-openai-0001\"\n\
GEMINI_API_KEY='AIza-env-gemini-0002'\r\n\
GOOGLE_API_KEY=AIza-env-gemini-0002   # the same key: not ambiguous\n\
\n\
EXA_API_KEY = exa-env-0003 # a comment\n\
TAVILY_API_KEY=\n\
MY_HF=hf-env-0004\n\
OPENROUTER_API_KEY=or-env-0005\n";

const ENV_SECRETS: &[&str] = &[
    "sk-proj-env-openai-0001",
    "AIza-env-gemini-0002",
    "exa-env-0003",
    "hf-env-0004",
    "or-env-0005",
];

async fn dot_env_imports_one_users_keys_and_a_second_run_changes_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = write(dir.path(), ".env", ENV);
    let format = || LegacyFormat::DotEnv {
        user_id: "alice".into(),
        vars: EnvMapping::new().map("huggingface", "MY_HF"),
    };

    let plan = import::plan(&vault, &env, format()).await.unwrap();
    assert_eq!(
        rows(&plan),
        [
            row("alice", "openai", KeyStatus::New, "line 3 (OPENAI_API_KEY)"),
            row("alice", "gemini", KeyStatus::New, "line 4 (GEMINI_API_KEY)"),
            row("alice", "exa", KeyStatus::New, "line 7 (EXA_API_KEY)"),
            row("alice", "huggingface", KeyStatus::New, "line 9 (MY_HF)"),
            row(
                "alice",
                "openrouter",
                KeyStatus::New,
                "line 10 (OPENROUTER_API_KEY)"
            ),
        ]
    );
    assert_eq!(
        skipped(&plan),
        [
            ("line 2 (DEBUG)".to_owned(), SkipReason::NotAProviderKey),
            ("line 5 (GOOGLE_API_KEY)".to_owned(), SkipReason::Duplicate),
            ("line 8 (TAVILY_API_KEY)".to_owned(), SkipReason::Empty),
        ]
    );
    assert_eq!(plan.keys()[0].masked(), "sk…01");
    let shown = format!("{plan}\n{plan:?}");
    assert!(
        shown.contains("sk…01") && shown.contains("line 9 (MY_HF)"),
        "{shown}"
    );
    assert_hidden(&shown, ENV_SECRETS);

    // The dry run wrote nothing.
    assert!(vault.list("alice").await.unwrap().is_empty());
    assert_eq!(audit_len(&vault, "alice").await, 0);

    let report = import::apply(&vault, &plan, ApplyOptions::new())
        .await
        .unwrap();
    assert_eq!(report.count(Outcome::Added), 5);
    assert_eq!(report.backup(), None);
    assert_hidden(&format!("{report}\n{report:?}"), ENV_SECRETS);
    assert_eq!(
        secrets(&vault.get_all("alice").await.unwrap()),
        map(&[
            ("exa", "exa-env-0003"),
            ("gemini", "AIza-env-gemini-0002"),
            ("huggingface", "hf-env-0004"),
            ("openai", "sk-proj-env-openai-0001"),
            ("openrouter", "or-env-0005"),
        ])
    );
    assert!(vault.get_all("bob").await.unwrap().is_empty());
    let trail = vault.audit_trail("alice").await.unwrap();
    assert_eq!(trail.len(), 5);
    assert!(trail
        .iter()
        .all(|r| r.actor == "import" && r.action == AuditAction::Put));

    // Running it again, in a new process: everything is identical, nothing is written.
    drop(vault);
    let vault = db.open(keyring()).await.unwrap();
    let again = import::plan(&vault, &env, format()).await.unwrap();
    assert_eq!(again.count(KeyStatus::Identical), 5);
    assert_eq!(again.count(KeyStatus::New), 0);
    let report = import::apply(&vault, &again, ApplyOptions::new())
        .await
        .unwrap();
    assert_eq!(report.count(Outcome::Unchanged), 5);
    assert_eq!(audit_len(&vault, "alice").await, 5);
    // Applying the first (now stale) plan again changes nothing either.
    let report = import::apply(&vault, &plan, ApplyOptions::new())
        .await
        .unwrap();
    assert_eq!(report.count(Outcome::Unchanged), 5);
    assert_eq!(audit_len(&vault, "alice").await, 5);

    // The source was only read.
    assert_eq!(fs::read(&env).unwrap(), ENV.as_bytes());
    assert!(backups(dir.path()).is_empty());
}

async fn users_json_imports_every_shape(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wrapped = r#"{
      "version": 2,
      "users": {
        "alice": {"password": "pbkdf2-hash", "api_keys": {"OpenAI": "sk-alice-0001", "gemini_api_key": "  AIza-alice-0002 ", "exa": ""}},
        "bob@example.com": {"api_keys": {"openai": "sk-bob-0003"}},
        "carol": {"email": "carol@example.com"}
      }
    }"#;
    let bare_map = r#"{"dave": {"username": "dave", "api_keys": {"EXA_API_KEY": "exa-dave-0004", "tavily": null}}}"#;
    let wrapped_list = r#"{"users": [
        {"username": "erin", "api_keys": {"openai": "sk-erin-0005"}},
        {"user_id": "frank", "username": "frank", "api_keys": {"groq": "gsk-frank-0006"}}
    ]}"#;
    let bare_list =
        "\u{feff}[{\"user_id\": \"gina\", \"api_keys\": {\"azure.openai-eu\": \"az-gina-0007\"}}]";
    let all_secrets = [
        "sk-alice-0001",
        "AIza-alice-0002",
        "sk-bob-0003",
        "exa-dave-0004",
        "sk-erin-0005",
        "gsk-frank-0006",
        "az-gina-0007",
        "pbkdf2-hash",
    ];

    let path = write(dir.path(), "users.json", wrapped);
    let plan = import::plan(&vault, &path, LegacyFormat::UsersJson)
        .await
        .unwrap();
    assert_eq!(
        rows(&plan),
        [
            row(
                "alice",
                "openai",
                KeyStatus::New,
                "$.users.alice.api_keys.OpenAI"
            ),
            row(
                "alice",
                "gemini",
                KeyStatus::New,
                "$.users.alice.api_keys.gemini_api_key"
            ),
            row(
                "bob@example.com",
                "openai",
                KeyStatus::New,
                r#"$.users["bob@example.com"].api_keys.openai"#
            ),
        ]
    );
    assert_eq!(
        skipped(&plan),
        [
            ("$.users.alice.api_keys.exa".to_owned(), SkipReason::Empty),
            ("$.users.carol".to_owned(), SkipReason::NoKeys),
        ]
    );
    assert_hidden(&format!("{plan}\n{plan:?}"), &all_secrets);
    let report = import::apply(&vault, &plan, ApplyOptions::new())
        .await
        .unwrap();
    assert_eq!(report.count(Outcome::Added), 3);
    assert_hidden(&format!("{report}\n{report:?}"), &all_secrets);

    for (name, text) in [
        ("bare_map.json", bare_map),
        ("wrapped_list.json", wrapped_list),
        ("bare_list.json", bare_list),
    ] {
        let path = write(dir.path(), name, text);
        let plan = import::plan(&vault, &path, LegacyFormat::UsersJson)
            .await
            .unwrap();
        assert!(
            plan.keys().iter().all(|k| k.status() == KeyStatus::New),
            "{name}"
        );
        import::apply(&vault, &plan, ApplyOptions::new())
            .await
            .unwrap();
        assert_eq!(fs::read(&path).unwrap(), text.as_bytes());
    }

    let expected = [
        (
            "alice",
            map(&[("gemini", "AIza-alice-0002"), ("openai", "sk-alice-0001")]),
        ),
        ("bob@example.com", map(&[("openai", "sk-bob-0003")])),
        ("carol", map(&[])),
        ("dave", map(&[("exa", "exa-dave-0004")])),
        ("erin", map(&[("openai", "sk-erin-0005")])),
        ("frank", map(&[("groq", "gsk-frank-0006")])),
        ("gina", map(&[("azure.openai-eu", "az-gina-0007")])),
    ];
    for (user, keys) in &expected {
        assert_eq!(
            &secrets(&vault.get_all(user).await.unwrap()),
            keys,
            "{user}"
        );
    }

    // A second run of the first file writes nothing.
    let before = audit_len(&vault, "alice").await;
    let again = import::plan(&vault, &path, LegacyFormat::UsersJson)
        .await
        .unwrap();
    assert_eq!(again.count(KeyStatus::Identical), 3);
    let report = import::apply(&vault, &again, ApplyOptions::new())
        .await
        .unwrap();
    assert_eq!(report.count(Outcome::Unchanged), 3);
    assert_eq!(audit_len(&vault, "alice").await, before);
    assert_eq!(before, 2);
}

async fn onboarding_json_collects_the_keys_of_every_step(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    vault
        .put("someone-else", "gemini", "AIza-other-9999")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = r#"{
      "current_step": 4,
      "steps": [
        {"step_number": 1, "completed": true, "data": {"api_keys": {"gemini": "AIza-onb-0001", "exa": "exa-onb-0002"}}},
        {"step_number": 2, "completed": true, "data": {"website": "https://example.com"}},
        {"step_number": 3, "completed": false, "data": null},
        {"step_number": 4, "data": {"api_keys": {"GEMINI": "AIza-onb-0001", "copilotkit_api_key": "ck-onb-0003"}}}
      ]
    }"#;
    let path = write(dir.path(), ".onboarding_progress.json", text);

    let plan = import::plan(&vault, &path, LegacyFormat::onboarding_json("owner"))
        .await
        .unwrap();
    assert_eq!(
        rows(&plan),
        [
            row(
                "owner",
                "gemini",
                KeyStatus::New,
                "$.steps[0].data.api_keys.gemini"
            ),
            row(
                "owner",
                "exa",
                KeyStatus::New,
                "$.steps[0].data.api_keys.exa"
            ),
            row(
                "owner",
                "copilotkit",
                KeyStatus::New,
                "$.steps[3].data.api_keys.copilotkit_api_key"
            ),
        ]
    );
    assert_eq!(
        skipped(&plan),
        [(
            "$.steps[3].data.api_keys.GEMINI".to_owned(),
            SkipReason::Duplicate
        )]
    );
    assert!(vault.list("owner").await.unwrap().is_empty());

    let report = import::apply(&vault, &plan, ApplyOptions::new())
        .await
        .unwrap();
    assert_eq!(report.count(Outcome::Added), 3);
    assert_eq!(
        secrets(&vault.get_all("owner").await.unwrap()),
        map(&[
            ("copilotkit", "ck-onb-0003"),
            ("exa", "exa-onb-0002"),
            ("gemini", "AIza-onb-0001")
        ])
    );
    assert_eq!(
        secrets(&vault.get_all("someone-else").await.unwrap()),
        map(&[("gemini", "AIza-other-9999")])
    );
    assert_eq!(fs::read(&path).unwrap(), text.as_bytes());
}

/// Plans `text` as `format` and returns the error, checking that nothing leaked into it
/// and nothing was written.
async fn refused(
    vault: &Vault,
    dir: &Path,
    text: &[u8],
    format: LegacyFormat,
    hidden: &[&str],
) -> Error {
    let path = write(dir, "source", text);
    let e = import::plan(vault, &path, format).await.unwrap_err();
    assert_hidden(&format!("{e} {e:?}"), hidden);
    assert_eq!(fs::read(&path).unwrap(), text, "the source is untouched");
    e
}

async fn ambiguous_input_is_refused_and_nothing_is_written(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hidden = [
        "AIza-first-0001",
        "AIza-second-0002",
        "user-PLANTED-id",
        "other-PLANTED-id",
    ];
    let cases: Vec<(&str, LegacyFormat, &str, Vec<&str>)> = vec![
        (
            r#"{"steps": [
                {"step_number": 1, "data": {"api_keys": {"gemini": "AIza-first-0001"}}},
                {"step_number": 2, "data": {"api_keys": {"gemini": "AIza-second-0002"}}}
            ]}"#,
            LegacyFormat::onboarding_json("user-PLANTED-id"),
            "onboarding steps disagree",
            vec![
                "`$.steps[0].data.api_keys.gemini`",
                "`$.steps[1].data.api_keys.gemini`",
                "ambiguous",
            ],
        ),
        (
            "GEMINI_API_KEY=AIza-first-0001\nGOOGLE_API_KEY=AIza-second-0002\n",
            LegacyFormat::dot_env("user-PLANTED-id"),
            "GEMINI_API_KEY and GOOGLE_API_KEY disagree",
            vec![
                "line 1 (GEMINI_API_KEY)",
                "line 2 (GOOGLE_API_KEY)",
                "`gemini`",
            ],
        ),
        (
            "export EXA_API_KEY=AIza-first-0001\n# rotated\nEXA_API_KEY=\"AIza-second-0002\"\n",
            LegacyFormat::dot_env("user-PLANTED-id"),
            "one variable twice",
            vec!["line 1 (EXA_API_KEY)", "line 3 (EXA_API_KEY)"],
        ),
        (
            r#"{"users": {"other-PLANTED-id": {}, "user-PLANTED-id": {"api_keys": {"OpenAI": "AIza-first-0001", "openai": "AIza-second-0002"}}}}"#,
            LegacyFormat::UsersJson,
            "one provider under two spellings",
            vec![
                "`$.users.<2nd user>.api_keys.OpenAI`",
                "`$.users.<2nd user>.api_keys.openai`",
            ],
        ),
        (
            r#"[{"user_id": "user-PLANTED-id", "api_keys": {"exa": "AIza-first-0001"}},
                {"username": "user-PLANTED-id", "api_keys": {"exa": "AIza-second-0002"}}]"#,
            LegacyFormat::UsersJson,
            "one user in two entries",
            vec!["`$[0].api_keys.exa`", "`$[1].api_keys.exa`"],
        ),
        (
            r#"{"users": [{"user_id": "user-PLANTED-id", "username": "other-PLANTED-id", "api_keys": {"exa": "AIza-first-0001"}}]}"#,
            LegacyFormat::UsersJson,
            "user_id and username differ",
            vec!["`$.users[0]`", "`user_id` and `username` differ"],
        ),
        (
            r#"{"user-PLANTED-id": {"username": "other-PLANTED-id", "api_keys": {"exa": "AIza-first-0001"}}}"#,
            LegacyFormat::UsersJson,
            "entry name and username differ",
            vec!["`$.<1st user>`", "`username`"],
        ),
        (
            r#"{"user-PLANTED-id": {"api_keys": {"exa": "AIza-first-0001"}, "api_keys": {"exa": "AIza-second-0002"}}}"#,
            LegacyFormat::UsersJson,
            "a member twice",
            vec!["`$.<1st user>` has the member `api_keys` twice"],
        ),
        (
            r#"{"users": {"user-PLANTED-id": {"api_keys": {"exa": "AIza-first-0001"}}}, "other-PLANTED-id": {"api_keys": {"exa": "AIza-second-0002"}}}"#,
            LegacyFormat::UsersJson,
            "users beside a users member",
            vec!["both a `users` member and user entries"],
        ),
    ];
    for (text, format, case, wanted) in cases {
        let e = refused(&vault, dir.path(), text.as_bytes(), format, &hidden).await;
        assert_eq!(e.kind(), ErrorKind::Import, "{case}: {e}");
        let message = e.to_string();
        assert!(message.contains("ambiguous"), "{case}: {message}");
        for part in wanted {
            assert!(message.contains(part), "{case}: {part:?} not in {message}");
        }
    }
    for user in ["user-PLANTED-id", "other-PLANTED-id"] {
        assert!(vault.list(user).await.unwrap().is_empty());
        assert_eq!(audit_len(&vault, user).await, 0);
    }
}

async fn malformed_input_names_the_place_never_the_secret(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    const SECRET: &str = "sk-PLANTED-9f8e7d6c5b4a";
    const USER: &str = "user-PLANTED-id";
    let hidden = [SECRET, USER, "PLANTED"];
    let fernet = format!("gAAAAAB{}", "Zm9v".repeat(30));
    let huge = format!(
        "{{\"steps\": [{{\"data\": {{\"api_keys\": {{\"exa\": \"{SECRET}{}\"}}}}}}]}}",
        "x".repeat(17 * 1024)
    );
    let env = || LegacyFormat::dot_env(USER);
    let users = || LegacyFormat::UsersJson;
    let onboarding = || LegacyFormat::onboarding_json(USER);
    let cases: Vec<(Vec<u8>, LegacyFormat, &str)> = vec![
        (format!("DEBUG=1\n\n{SECRET}\n").into(), env(), "line 3: expected NAME=value"),
        (format!("DEBUG=1\nexport {SECRET}\n").into(), env(), "line 2: expected NAME=value"),
        (format!("OPENAI API KEY={SECRET}\n").into(), env(), "line 1: expected NAME=value"),
        (format!("A=1\nOPENAI_API_KEY=\"{SECRET}\n").into(), env(), "line 2: unterminated quoted value"),
        (format!("OPENAI_API_KEY='{SECRET}' {SECRET}\n").into(), env(), "line 1: unexpected text after the closing quote"),
        ([b"A=1\nOPENAI_API_KEY=", SECRET.as_bytes(), b"\xff\n"].concat(), env(), "line 2: not valid UTF-8"),
        (format!("{{\n  \"{USER}\": {{\n    \"api_keys\": {{\"openai\": \"{SECRET}\" \"exa\": 1}}\n  }}\n}}").into(), users(), "line 3, column"),
        (format!("{{\"{USER}\": {{\"api_keys\": {{\"openai\": \"{SECRET}").into(), users(), "unexpected end of JSON"),
        (format!("{{\"users\": {{\"{USER}\": {{\"api_keys\": {{\"openai\": {{\"key\": \"{SECRET}\"}}}}}}}}}}").into(), users(), "`$.users.<1st user>.api_keys.openai`: expected a string, found an object"),
        (format!("{{\"users\": {{\"{USER}\": {{\"api_keys\": [\"{SECRET}\"]}}}}}}").into(), users(), "`$.users.<1st user>.api_keys`: expected an object, found an array"),
        (format!("{{\"users\": {{\"{USER}\": {{\"api_keys\": {{\"exa\": \"e\", \"{SECRET} !\": \"x\"}}}}}}}}").into(), users(), "`$.users.<1st user>.api_keys`: the name of the 2nd member is not a valid provider name"),
        (format!("{{\"users\": {{\"{USER}\": \"{SECRET}\"}}}}").into(), users(), "`$.users.<1st user>`: expected an object, found a string"),
        (format!("{{\"users\": [{{\"api_keys\": {{\"openai\": \"{SECRET}\"}}}}]}}").into(), users(), "`$.users[0]`: expected a `user_id` or `username` string"),
        (format!("{{\"users\": [{{\"user_id\": 42, \"api_keys\": {{\"openai\": \"{SECRET}\"}}}}]}}").into(), users(), "`$.users[0].user_id`: expected a string, found a number"),
        (format!("{{\"users\": [{{\"user_id\": \"\", \"api_keys\": {{\"openai\": \"{SECRET}\"}}}}]}}").into(), users(), "`$.users[0]`: a user id must be 1 to 255 bytes"),
        (format!("\"{SECRET}\"").into(), users(), "`$`: expected an object or an array, found a string"),
        (format!("{{\"users\": {{\"{USER}\": {{\"api_keys\": {{\"openai\": \"{fernet}\"}}}}}}}}").into(), users(), "`$.users.<1st user>.api_keys.openai`: the value looks encrypted"),
        (format!("{{\"steps\": {{\"data\": {{\"api_keys\": {{\"exa\": \"{SECRET}\"}}}}}}}}").into(), onboarding(), "`$.steps`: expected an array, found an object"),
        (format!("{{\"api_keys\": {{\"exa\": \"{SECRET}\"}}}}").into(), onboarding(), "`$`: expected a `steps` array"),
        (format!("{{\"steps\": [{{\"data\": {{\"api_keys\": {{\"exa\": \"{SECRET}\", \"gemini\": true}}}}}}]}}").into(), onboarding(), "`$.steps[0].data.api_keys.gemini`: expected a string, found a boolean"),
        (huge.into(), onboarding(), "`$.steps[0].data.api_keys.exa`: the key is longer than 16 KiB"),
    ];
    for (text, format, wanted) in cases {
        let e = refused(&vault, dir.path(), &text, format, &hidden).await;
        assert_eq!(e.kind(), ErrorKind::Import, "{e}");
        assert!(e.to_string().contains(wanted), "{wanted:?} not in {e}");
    }

    // Unusable user ids and missing files are refused too.
    let path = write(dir.path(), "source", format!("OPENAI_API_KEY={SECRET}\n"));
    let e = import::plan(&vault, &path, LegacyFormat::dot_env(""))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidUserId);
    let e = import::plan(&vault, dir.path().join("missing.env"), env())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Import);
    assert!(e.to_string().contains("cannot read the source file"), "{e}");
    let e = import::plan(&vault, dir.path(), env()).await.unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");

    assert!(vault.list(USER).await.unwrap().is_empty());
    assert_eq!(audit_len(&vault, USER).await, 0);
}

async fn conflicts_are_left_alone_unless_replacing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    vault
        .put("alice", "openai", "sk-stored-old-0001")
        .await
        .unwrap();
    vault
        .put("alice", "gemini", "AIza-same-0002")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = "OPENAI_API_KEY=sk-file-new-0003\nGEMINI_API_KEY=AIza-same-0002\nEXA_API_KEY=exa-file-0004\nGROQ_API_KEY=gsk-file-0005\n";
    let env = write(dir.path(), ".env", text);
    let statuses = |plan: &ImportPlan| plan.keys().iter().map(|k| k.status()).collect::<Vec<_>>();
    let outcomes = |report: &import::ImportReport| {
        report
            .entries()
            .iter()
            .map(|e| (e.provider().to_owned(), e.outcome()))
            .collect::<Vec<_>>()
    };

    let plan = import::plan(&vault, &env, LegacyFormat::dot_env("alice"))
        .await
        .unwrap();
    assert_eq!(
        statuses(&plan),
        [
            KeyStatus::Different,
            KeyStatus::Identical,
            KeyStatus::New,
            KeyStatus::New
        ]
    );
    // Someone stores a groq key between the plan and its application: not overwritten.
    vault
        .put("alice", "groq", "gsk-typed-in-0006")
        .await
        .unwrap();
    assert_eq!(audit_len(&vault, "alice").await, 3);

    let report = import::apply(&vault, &plan, ApplyOptions::new())
        .await
        .unwrap();
    assert_eq!(
        outcomes(&report),
        [
            ("openai".to_owned(), Outcome::Conflict),
            ("gemini".to_owned(), Outcome::Unchanged),
            ("exa".to_owned(), Outcome::Added),
            ("groq".to_owned(), Outcome::Conflict),
        ]
    );
    assert_eq!(
        secrets(&vault.get_all("alice").await.unwrap()),
        map(&[
            ("exa", "exa-file-0004"),
            ("gemini", "AIza-same-0002"),
            ("groq", "gsk-typed-in-0006"),
            ("openai", "sk-stored-old-0001"),
        ])
    );
    assert_eq!(audit_len(&vault, "alice").await, 4);

    let plan = import::plan(&vault, &env, LegacyFormat::dot_env("alice"))
        .await
        .unwrap();
    assert_eq!(
        statuses(&plan),
        [
            KeyStatus::Different,
            KeyStatus::Identical,
            KeyStatus::Identical,
            KeyStatus::Different
        ]
    );
    let report = import::apply(&vault, &plan, ApplyOptions::new().replace_different(true))
        .await
        .unwrap();
    assert_eq!(report.count(Outcome::Replaced), 2);
    assert_eq!(report.count(Outcome::Unchanged), 2);
    assert_eq!(
        secrets(&vault.get_all("alice").await.unwrap()),
        map(&[
            ("exa", "exa-file-0004"),
            ("gemini", "AIza-same-0002"),
            ("groq", "gsk-file-0005"),
            ("openai", "sk-file-new-0003"),
        ])
    );
    let trail = vault.audit_trail("alice").await.unwrap();
    assert_eq!(trail.len(), 6);
    assert!(trail[4..]
        .iter()
        .all(|r| r.actor == "import" && r.action == AuditAction::Replace));

    let plan = import::plan(&vault, &env, LegacyFormat::dot_env("alice"))
        .await
        .unwrap();
    assert_eq!(plan.count(KeyStatus::Identical), 4);
    assert_eq!(fs::read(&env).unwrap(), text.as_bytes());
}

async fn removing_the_source_keeps_an_identical_backup(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = r#"{"steps": [{"step_number": 1, "data": {"api_keys": {"gemini": "AIza-rm-0001", "exa": "exa-rm-0002"}}}]}"#;
    let path = write(dir.path(), ".onboarding_progress.json", text);
    let plan = import::plan(&vault, &path, LegacyFormat::onboarding_json("owner"))
        .await
        .unwrap();

    let report = import::apply(&vault, &plan, ApplyOptions::new().remove_source(true))
        .await
        .unwrap();
    assert_eq!(report.count(Outcome::Added), 2);
    assert!(!path.exists(), "the source is removed");
    let backup = report.backup().unwrap();
    assert_eq!(backups(dir.path()), [backup]);
    assert!(backup
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with(".onboarding_progress.json.bak-"));
    assert_eq!(fs::read(backup).unwrap(), text.as_bytes());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(backup).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert_eq!(
        secrets(&vault.get_all("owner").await.unwrap()),
        map(&[("exa", "exa-rm-0002"), ("gemini", "AIza-rm-0001")])
    );
    assert!(report.to_string().contains("backup at"), "{report}");
}

async fn removal_is_refused_before_anything_is_written(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = "OPENAI_API_KEY=sk-keep-0001\nEXA_API_KEY=exa-keep-0002\n";
    let env = write(dir.path(), ".env", text);
    let remove = ApplyOptions::new().remove_source(true);
    let refused_with = |e: Error, wanted: &str| {
        assert_eq!(e.kind(), ErrorKind::Import, "{e}");
        let message = e.to_string();
        assert!(
            message.contains(wanted) && message.contains("nothing was written"),
            "{message}"
        );
        assert_hidden(&format!("{e} {e:?}"), &["sk-keep-0001", "exa-keep-0002"]);
    };

    // The backup's name is taken (for this second and the next few).
    let plan = import::plan(&vault, &env, LegacyFormat::dot_env("alice"))
        .await
        .unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let taken: Vec<PathBuf> = (now..now + 5)
        .map(|s| write(dir.path(), &format!(".env.bak-{s}"), "older backup"))
        .collect();
    refused_with(
        import::apply(&vault, &plan, remove).await.unwrap_err(),
        "the backup file already exists",
    );
    for path in &taken {
        assert_eq!(fs::read(path).unwrap(), b"older backup");
        fs::remove_file(path).unwrap();
    }

    // The file changed since it was planned.
    let changed = format!("{text}GROQ_API_KEY=gsk-new-0003\n");
    fs::write(&env, &changed).unwrap();
    refused_with(
        import::apply(&vault, &plan, remove).await.unwrap_err(),
        "the file changed since the plan was made",
    );
    assert_eq!(fs::read(&env).unwrap(), changed.as_bytes());
    fs::write(&env, text).unwrap();

    // A key of the file conflicts with the stored one and would be lost with the file.
    vault
        .put("alice", "openai", "sk-typed-in-0004")
        .await
        .unwrap();
    refused_with(
        import::apply(&vault, &plan, remove).await.unwrap_err(),
        "differ from the stored ones",
    );

    assert_eq!(fs::read(&env).unwrap(), text.as_bytes());
    assert!(backups(dir.path()).is_empty());
    assert_eq!(
        secrets(&vault.get_all("alice").await.unwrap()),
        map(&[("openai", "sk-typed-in-0004")])
    );
    assert_eq!(audit_len(&vault, "alice").await, 1);

    // Replacing resolves it: then the file goes, with its backup.
    let report = import::apply(&vault, &plan, remove.replace_different(true))
        .await
        .unwrap();
    assert!(!env.exists());
    assert_eq!(fs::read(report.backup().unwrap()).unwrap(), text.as_bytes());
    assert_eq!(
        secrets(&vault.get_all("alice").await.unwrap()),
        map(&[("exa", "exa-keep-0002"), ("openai", "sk-keep-0001")])
    );
}

async fn every_key_is_verified_before_success(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    vault.put("alice", "openai", "sk-same-0001").await.unwrap();
    // The stored key is damaged; its fingerprint still says it is the file's key.
    let mut blob = db.blob("alice", "openai").await;
    let last = blob.len() - 1;
    blob[last] ^= 1;
    db.set_blob("alice", "openai", &blob).await;

    let dir = tempfile::tempdir().unwrap();
    let text = "OPENAI_API_KEY=sk-same-0001\nEXA_API_KEY=exa-new-0002\n";
    let env = write(dir.path(), ".env", text);
    let plan = import::plan(&vault, &env, LegacyFormat::dot_env("alice"))
        .await
        .unwrap();
    assert_eq!(plan.keys()[0].status(), KeyStatus::Identical);

    let e = import::apply(&vault, &plan, ApplyOptions::new().remove_source(true))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Decrypt, "{e}");
    assert!(
        e.to_string()
            .contains("verifying the 1st key of the plan (provider `openai`)"),
        "{e}"
    );
    assert_hidden(
        &format!("{e} {e:?}"),
        &["sk-same-0001", "exa-new-0002", "alice"],
    );
    // No success, so the source stays and no backup was made.
    assert_eq!(fs::read(&env).unwrap(), text.as_bytes());
    assert!(backups(dir.path()).is_empty());

    // Once the key is stored again, the import verifies and completes.
    vault.put("alice", "openai", "sk-same-0001").await.unwrap();
    let report = import::apply(&vault, &plan, ApplyOptions::new())
        .await
        .unwrap();
    assert_eq!(report.count(Outcome::Unchanged), 2);
}
