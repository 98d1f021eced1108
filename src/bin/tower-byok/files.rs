//! Writing key material: to a new file only the owner can read, or to standard output
//! when the operator asked for it with `-`.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;

use crate::{CmdResult, Fail};

/// Where key material went.
pub(crate) enum Written {
    /// A new file, mode 0600.
    File,
    /// Standard output (`--out -`).
    Stdout,
}

/// Writes `text` (key material) to `out`: a new file created with mode 0600 (an existing
/// file is never overwritten), or standard output when `out` is `-`.
pub(crate) fn write_key_material(out: &Path, text: &str) -> CmdResult<Written> {
    if out == Path::new("-") {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(|e| Fail::new(format!("could not write to standard output: {e}")))?;
        return Ok(Written::Stdout);
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let shown = out.display();
    let mut file = options.open(out).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Fail::new(format!(
                "{shown} already exists: a key file is never overwritten; choose another --out"
            ))
        } else {
            Fail::new(format!("could not create {shown}: {e}"))
        }
    })?;
    if let Err(e) = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
    {
        drop(file);
        let _ = std::fs::remove_file(out);
        return Err(Fail::new(format!("could not write {shown}: {e}")));
    }
    Ok(Written::File)
}

/// Warns when a keyring file can be read by others than its owner.
pub(crate) fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                eprintln!(
                    "warning: the keyring file {} can be read by others than its owner \
                     (mode {mode:04o}): `chmod 600` it",
                    path.display()
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}
