//! Master keys: generating, rotating and retiring them.

use std::path::Path;
use std::time::SystemTime;

use tower_byok::{Keyring, MasterKey, Vault};
use zeroize::Zeroizing;

use super::{quoted_list, KEYRING_VAR};
use crate::files::{self, Written};
use crate::{time, CmdResult, Fail};

/// The keyring as the text of a new file, with a comment saying what it is.
fn keyring_file_text(keyring: &Keyring) -> Zeroizing<String> {
    let mut text = Zeroizing::new(format!(
        "# tower-byok master keyring, written {}.\n\
         # The first key seals new secrets; every key opens the secrets sealed under it.\n",
        time::format(SystemTime::now())
    ));
    text.push_str(&keyring.expose_text());
    text
}

/// The keyring as one line, `id:key,id:key`, as `BYOK_MASTER_KEYS` takes it.
fn keyring_line(keyring: &Keyring) -> Zeroizing<String> {
    let mut line = Zeroizing::new(String::new());
    for key in keyring.ids().filter_map(|id| keyring.get(id)) {
        if !line.is_empty() {
            line.push(',');
        }
        line.push_str(&key.expose_keyring_line());
    }
    line.push('\n');
    line
}

fn write_keyring(keyring: &Keyring, out: &Path) -> CmdResult<Written> {
    if out == Path::new("-") {
        files::write_key_material(out, &keyring_line(keyring))
    } else {
        files::write_key_material(out, &keyring_file_text(keyring))
    }
}

pub(super) fn keygen(id: &str, out: &Path) -> CmdResult {
    let keyring = Keyring::new(MasterKey::generate(id)?);
    match write_keyring(&keyring, out)? {
        Written::Stdout => eprintln!(
            "the line above is master key `{id}`: keep it in a secret manager; \
             secrets sealed under it cannot be opened without it"
        ),
        Written::File => {
            let path = out.display();
            println!("wrote master key `{id}` to {path} (mode 0600)");
            println!(
                "use it with --keyring-file {path}, or put its contents in {KEYRING_VAR}; \
                 keep a backup: secrets sealed under it cannot be opened without it"
            );
        }
    }
    Ok(())
}

pub(super) fn rotate(current: &Keyring, id: &str, out: &Path) -> CmdResult {
    if current.get(id).is_some() {
        return Err(Fail::new(format!(
            "the keyring already holds a key `{id}`: choose another --id"
        )));
    }
    let mut next = Keyring::new(MasterKey::generate(id)?);
    for old in current.ids().filter_map(|old| current.get(old)) {
        next = next.with_key(old.clone())?;
    }
    let written = write_keyring(&next, out)?;
    let old_ids: Vec<&str> = current.ids().collect();
    let (keyring_opt, where_) = match written {
        Written::File => (
            format!("--keyring-file {}", out.display()),
            format!("wrote the new keyring to {} (mode 0600)", out.display()),
        ),
        Written::Stdout => (
            String::new(),
            "the line above is the new keyring".to_owned(),
        ),
    };
    let opt = if keyring_opt.is_empty() {
        String::new()
    } else {
        format!(" {keyring_opt}")
    };
    let steps = format!(
        "{where_}: `{id}` (new, active) first, then {}.\n\
         next steps:\n  \
         1. deploy it to every instance (as {KEYRING_VAR} or its file): new keys are then sealed \
         under `{id}`, and keys sealed under the old ones still open\n  \
         2. tower-byok{opt} rewrap     (re-seals every key under `{id}`, then verifies)\n  \
         3. tower-byok{opt} verify\n  \
         4. {}, then remove the retired keys from the keyring and deploy again",
        quoted_list(&old_ids),
        old_ids
            .iter()
            .map(|old| format!("tower-byok{opt} retire --key-id {old}"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    match written {
        Written::File => println!("{steps}"),
        // Standard output holds the keyring: keep it clean for `$(...)`.
        Written::Stdout => eprintln!("{steps}"),
    }
    Ok(())
}

pub(super) async fn retire(vault: &Vault, key_id: &str, out: Option<&Path>) -> CmdResult {
    vault.retire_master_key(key_id).await?;
    let keyring = vault.keyring();
    let rest: Vec<&MasterKey> = keyring
        .ids()
        .filter(|id| *id != key_id)
        .filter_map(|id| keyring.get(id))
        .collect();
    let Some(out) = out else {
        println!(
            "retired `{key_id}`: no stored key needs it. Remove it from the keyring and deploy \
             (or run again with --out PATH to write the keyring without it)"
        );
        return Ok(());
    };
    let mut remaining = rest.iter().map(|k| (*k).clone());
    let Some(first) = remaining.next() else {
        return Err(Fail::new("internal error: the keyring has no key left"));
    };
    let mut without = Keyring::new(first);
    for key in remaining {
        without = without.with_key(key)?;
    }
    let written = write_keyring(&without, out)?;
    let message = match written {
        Written::File => format!(
            "retired `{key_id}`: wrote the keyring without it to {} (mode 0600); deploy it",
            out.display()
        ),
        Written::Stdout => {
            format!("retired `{key_id}`: the line above is the keyring without it; deploy it")
        }
    };
    match written {
        Written::File => println!("{message}"),
        Written::Stdout => eprintln!("{message}"),
    }
    Ok(())
}
