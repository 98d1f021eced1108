//! Master keys without a database: generating a keyring.

use std::process::{Command, Stdio};

use tower_byok::Keyring;

use crate::{mode, Out, BIN};

#[test]
fn keygen_writes_an_owner_only_file_and_never_prints_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let keygen = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .current_dir(dir.path())
            .env_remove("BYOK_MASTER_KEYS")
            .env_remove("BYOK_DATABASE_URL")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        Out {
            code: out.status.code(),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    };

    let out = keygen(&["keygen", "--id", "main-1", "--out", "master.keys"]).ok();
    let path = dir.path().join("master.keys");
    assert_eq!(mode(&path), 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    let keyring = Keyring::from_file(&path).unwrap();
    assert_eq!(keyring.ids().collect::<Vec<_>>(), ["main-1"]);
    let line = keyring.active().expose_keyring_line();
    let (_, b64) = line.split_once(':').unwrap();
    assert!(text.contains(b64));
    for printed in [&out.stdout, &out.stderr] {
        assert!(!printed.contains(b64), "the key was printed: {out:#?}");
    }
    out.says("master.keys").says("mode 0600");

    // Never overwritten.
    let again = keygen(&["keygen", "--out", "master.keys"]).fails(1, "already exists");
    assert!(!again.stderr.contains(b64) && !again.stdout.contains(b64));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);

    // `--out -` is the explicit way to see the key: the keyring line, alone, on stdout.
    let shown = keygen(&["keygen", "--id", "k9", "--out", "-"]).ok();
    let printed = Keyring::parse(&shown.stdout).unwrap();
    assert_eq!(printed.ids().collect::<Vec<_>>(), ["k9"]);
    assert_eq!(shown.stdout.lines().count(), 1);
    assert!(!dir.path().join("-").exists());

    // A destination is required; a bad id is refused.
    keygen(&["keygen"]).fails(2, "--out");
    keygen(&["keygen", "--id", "bad id", "--out", "x.keys"]).fails(1, "key id");
    assert!(!dir.path().join("x.keys").exists());
}
