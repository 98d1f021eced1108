//! A vault on in-memory SQLite and a scratch file, shared by the import targets.

use std::path::PathBuf;
use std::sync::OnceLock;

use tower_byok::import::{self, LegacyFormat};
use tower_byok::{ErrorKind, Keyring, MasterKey, SqliteStore, Vault};

struct Env {
    rt: tokio::runtime::Runtime,
    vault: Vault,
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let vault = rt.block_on(async {
            let store = SqliteStore::in_memory().await.expect("store");
            let keyring = Keyring::new(MasterKey::generate("k1").expect("key"));
            Vault::open(store, keyring).await.expect("vault")
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("source");
        Env {
            rt,
            vault,
            _dir: dir,
            path,
        }
    })
}

/// The longest run of secret-looking characters in `data`: values the parsers could
/// take for a key.
fn secret_runs(data: &[u8]) -> impl Iterator<Item = &str> {
    data.split(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_')))
        .filter(|run| run.len() >= 20)
        .filter_map(|run| std::str::from_utf8(run).ok())
}

/// Plans `data` as `format`: never panics, fails only with an import or user id error,
/// and neither the error nor the plan's `Display` shows a secret-looking value of the
/// input that the parser read as a key.
pub fn plan(data: &[u8], format: LegacyFormat) {
    let env = env();
    std::fs::write(&env.path, data).expect("write");
    match env.rt.block_on(import::plan(&env.vault, &env.path, format)) {
        Ok(plan) => {
            let shown = format!("{plan} {plan:?}");
            for key in plan.keys() {
                assert!(key.masked().chars().count() <= 9, "mask too long");
                // A value read as a key must not be shown whole, unless the same text
                // is also a name the plan lists (a user id, a variable).
                for run in secret_runs(data) {
                    if shown.contains(run) {
                        assert!(
                            plan.keys().iter().any(|k| k.user_id().contains(run)
                                || k.origin().contains(run)
                                || k.provider().contains(run))
                                || plan.skipped().iter().any(|s| s.origin().contains(run)),
                            "the plan shows {run:?}"
                        );
                    }
                }
            }
        }
        Err(e) => {
            assert!(
                matches!(e.kind(), ErrorKind::Import | ErrorKind::InvalidUserId),
                "{e}"
            );
            let shown = format!("{e} {e:?}");
            for run in secret_runs(data) {
                // Variable names and providers may be named; key-sized values not,
                // unless the text is also a name or path segment in the input.
                if run.len() >= 32 && shown.contains(run) {
                    let as_name = data.windows(run.len() + 1).any(|w| {
                        &w[..run.len()] == run.as_bytes()
                            && matches!(w[run.len()], b'=' | b'"' | b':')
                    });
                    assert!(as_name, "the error echoes {run:?}: {shown}");
                }
            }
        }
    }
}
