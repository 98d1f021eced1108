//! The first-start import of the old app's shared `.onboarding_progress.json`.
//!
//! Its keys go into the vault through the crate's importer (`tower_byok::import`): a
//! dry run first, which writes nothing; then, when asked, the import, which verifies
//! every key and keeps a backup of the file before removing it. The rest of the file
//! (the current step, the completed steps and their data) goes into the app's tables,
//! without the key step's data (it holds the keys, under whatever names the old app
//! chose), without any value equal to one of the file's keys, and without every
//! secret-looking member. A file that cannot be imported with
//! certainty (malformed, or keys that differ from the user's stored ones) stops the
//! start with the importer's error, which names places in the file, never values.

use std::error::Error;
use std::path::Path;

use serde_json::{json, Value};
use tower_byok::import::{self, ApplyOptions, LegacyFormat};

use super::app::{AppState, DONE, REQUIRED, STEPS};
use super::db::Progress;

/// Imports `path` if it exists, for `user`: the old app shared one file, so it names no
/// user. Without `apply`, a dry run that writes nothing. Prints what it does (keys
/// masked, never in full).
pub(crate) async fn import_on_start(
    state: &AppState,
    path: &Path,
    user: Option<&str>,
    apply: bool,
) -> Result<(), Box<dyn Error>> {
    if !path.exists() {
        return Ok(());
    }
    let Some(user) = user else {
        println!(
            "found {}: set ONBOARDING_LEGACY_USER to the user whose progress it holds to import it",
            path.display()
        );
        return Ok(());
    };
    let plan = import::plan(&state.vault, path, LegacyFormat::onboarding_json(user)).await?;
    let progress = read_progress(path)?;
    println!("{plan}");
    let completed: Vec<&i64> = progress.steps.keys().collect();
    println!(
        "progress: current step {}, completed steps {completed:?}",
        progress.current_step
    );
    if !apply {
        println!("dry run: nothing written. Set ONBOARDING_LEGACY_IMPORT=apply to import.");
        return Ok(());
    }
    // Progress first: if it fails, the file is still there for the next attempt.
    if !state.db.import_progress(user, &progress).await? {
        println!("progress: the user already has progress here; kept as it is");
    }
    let report =
        import::apply(&state.vault, &plan, ApplyOptions::new().remove_source(true)).await?;
    println!("{report}");
    if let Some(backup) = report.backup() {
        println!(
            "the file was moved to {}: it holds the plaintext keys, delete it once satisfied",
            backup.display()
        );
    }
    Ok(())
}

/// The progress part of the file: `current_step`, and each completed step's `data`
/// without secrets. Steps this app does not have are left out.
fn read_progress(path: &Path) -> Result<Progress, Box<dyn Error>> {
    let root: Value = serde_json::from_slice(&std::fs::read(path)?)?;
    let mut keys = Vec::new();
    collect_keys(&root, &mut keys);
    let mut progress = Progress::default();
    for step in root["steps"].as_array().into_iter().flatten() {
        let completed = step["completed"] == true || step["status"] == "completed";
        let number = step["step_number"].as_i64().unwrap_or(0);
        if completed && STEPS.iter().any(|s| s.number == number) {
            let data = match &step["data"] {
                // The key step: what `finish_key_step` writes, never the old data.
                _ if number == 1 => json!({ "providers": REQUIRED }),
                Value::Null => Value::Object(serde_json::Map::new()),
                data => without_secrets(data, &keys),
            };
            progress.steps.insert(number, data);
        }
    }
    let contiguous = (1..).take_while(|n| progress.steps.contains_key(n)).count();
    let default = i64::try_from(contiguous).unwrap_or(0) + 1;
    progress.current_step = root["current_step"]
        .as_i64()
        .unwrap_or(default)
        .clamp(1, DONE);
    Ok(progress)
}

/// Every string under an `api_keys` member of the file, at any depth: the keys the
/// importer takes, so that no copy of one stays in the step data.
fn collect_keys<'a>(value: &'a Value, keys: &mut Vec<&'a str>) {
    match value {
        Value::Object(members) => {
            for (name, value) in members {
                if name == "api_keys" {
                    collect_strings(value, keys);
                } else {
                    collect_keys(value, keys);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_keys(v, keys)),
        _ => {}
    }
}

fn collect_strings<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(s) if !s.trim().is_empty() => out.push(s.trim()),
        Value::Object(members) => members.values().for_each(|v| collect_strings(v, out)),
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

/// `data` without any member whose name suggests a secret, and without any string equal
/// to one of `keys`, at any depth.
fn without_secrets(data: &Value, keys: &[&str]) -> Value {
    const SECRET_WORDS: [&str; 4] = ["key", "secret", "token", "password"];
    let is_key = |v: &Value| v.as_str().is_some_and(|s| keys.contains(&s.trim()));
    match data {
        Value::Object(members) => Value::Object(
            (members.iter())
                .filter(|(name, value)| {
                    let name = name.to_ascii_lowercase();
                    !SECRET_WORDS.iter().any(|w| name.contains(w)) && !is_key(value)
                })
                .map(|(name, value)| (name.clone(), without_secrets(value, keys)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            (items.iter())
                .filter(|v| !is_key(v))
                .map(|v| without_secrets(v, keys))
                .collect(),
        ),
        other => other.clone(),
    }
}
