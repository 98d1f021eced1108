//! Wrapped keyrings: `keyring wrap`, `keyring rotate`, unwrapping one for the other
//! commands, and retiring a key from one.

use std::path::Path;

use tower_byok::{Keyring, Vault, WrappedKeyring};

use crate::files::{self, Written};
use crate::{CmdResult, Fail};

/// The KMS a wrapped keyring names, from the standard `AWS_*` environment variables.
#[cfg(feature = "aws-kms")]
fn kms_for(wrapped_scheme: &str) -> CmdResult<tower_byok::AwsKms> {
    if wrapped_scheme != "aws-kms" {
        return Err(Fail::new(format!(
            "the wrapped keyring's scheme `{wrapped_scheme}` is not one this tool knows (aws-kms)"
        )));
    }
    Ok(tower_byok::AwsKms::from_env()?)
}

/// Unwraps `wrapped` through its KMS, once, for a command that opens the vault.
pub(super) async fn unwrap(wrapped: &WrappedKeyring) -> CmdResult<Keyring> {
    #[cfg(feature = "aws-kms")]
    {
        let kms = kms_for(wrapped.scheme())?;
        wrapped
            .unwrap(&kms)
            .await
            .map_err(|e| Fail::from(e).context("unwrapping the keyring"))
    }
    #[cfg(not(feature = "aws-kms"))]
    Err(Fail::new(format!(
        "the keyring is wrapped ({}), and this tower-byok was built without the \
         `aws-kms` feature",
        wrapped.scheme()
    )))
}

fn write_wrapped(wrapped: &WrappedKeyring, out: &Path) -> CmdResult<Written> {
    files::write_key_material(out, &wrapped.to_text())
}

fn report(written: &Written, out: &Path, what: &str) {
    match written {
        Written::File => println!("{what}: wrote it to {} (mode 0600)", out.display()),
        // Standard output holds the keyring: keep it clean for `$(...)`.
        Written::Stdout => eprintln!("{what}: the text above"),
    }
}

#[cfg(feature = "aws-kms")]
pub(super) async fn run(
    command: crate::cli::KeyringCommand,
    keyring_file: Option<&Path>,
) -> CmdResult {
    use crate::cli::KeyringCommand;
    match command {
        KeyringCommand::Wrap { kms_key, out } => {
            if super::read_wrapped(keyring_file)?.is_some() {
                return Err(Fail::new("the keyring is already wrapped"));
            }
            let plain = super::load_keyring(keyring_file)?;
            let kms = kms_for("aws-kms")?;
            let wrapped = WrappedKeyring::wrap(&plain, &kms, &kms_key).await?;
            let written = write_wrapped(&wrapped, &out)?;
            let ids: Vec<&str> = wrapped.ids().collect();
            report(
                &written,
                &out,
                &format!(
                    "wrapped {} under the KMS key; `{}` stays active. Use it as the keyring \
                     (--keyring-file or BYOK_MASTER_KEYS), then delete the plain keyring",
                    super::quoted_list(&ids),
                    ids[0]
                ),
            );
            Ok(())
        }
        KeyringCommand::Rotate {
            new: crate::cli::NewKey { id, out },
        } => {
            let Some(current) = super::read_wrapped(keyring_file)? else {
                return Err(Fail::new(
                    "the keyring is not wrapped: `tower-byok rotate` rotates a plain keyring, \
                     `tower-byok keyring wrap` wraps it",
                ));
            };
            let kms = kms_for(current.scheme())?;
            let next = current.rotate(&kms, &id).await?;
            let written = write_wrapped(&next, &out)?;
            report(
                &written,
                &out,
                &format!(
                    "added `{id}` (new, active) before {}, wrapped; deploy it, then \
                     `tower-byok rewrap`, `verify` and `retire` as after any rotation",
                    super::quoted_list(&current.ids().collect::<Vec<_>>())
                ),
            );
            Ok(())
        }
    }
}

/// `retire` on a vault opened from a wrapped keyring: `--out` writes the wrapped keyring
/// without the key, still wrapped.
pub(super) async fn retire(
    vault: &Vault,
    wrapped: &WrappedKeyring,
    key_id: &str,
    out: Option<&Path>,
) -> CmdResult {
    vault.retire_master_key(key_id).await?;
    let Some(out) = out else {
        println!(
            "retired `{key_id}`: no stored key needs it. Remove it from the wrapped keyring \
             and deploy (or run again with --out PATH to write the wrapped keyring without it)"
        );
        return Ok(());
    };
    let written = write_wrapped(&wrapped.without(key_id)?, out)?;
    report(
        &written,
        out,
        &format!("retired `{key_id}`: the wrapped keyring without it, deploy it"),
    );
    Ok(())
}
