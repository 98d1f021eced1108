//! Reading a secret: from piped standard input, or a prompt that does not echo.

use std::io::{IsTerminal as _, Read as _};

use tower_byok::MAX_SECRET_LEN;
use zeroize::Zeroizing;

use crate::{CmdResult, Fail};

/// Reads one secret: all of standard input when it is not a terminal (dropping one
/// trailing newline), otherwise from a prompt on the terminal without echo.
///
/// The text is zeroized on drop. Its length is checked by the vault.
pub(crate) fn read(prompt: &str) -> CmdResult<Zeroizing<String>> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let typed = Zeroizing::new(
            rpassword::prompt_password(prompt)
                .map_err(|e| Fail::new(format!("could not read the secret at the prompt: {e}")))?,
        );
        return Ok(typed);
    }
    // Room for the longest secret the vault takes and more, reserved up front so the
    // buffer never moves (a move would leave a copy of the secret behind unzeroized);
    // reading stops a little past the limit, and the vault refuses what is too long.
    let limit = MAX_SECRET_LEN + 8;
    let mut text = Zeroizing::new(String::with_capacity(limit + 64));
    stdin
        .lock()
        .take(limit as u64)
        .read_to_string(&mut text)
        .map_err(|e| {
            Fail::new(format!(
                "could not read the secret from standard input: {}",
                match e.kind() {
                    std::io::ErrorKind::InvalidData => "it is not valid UTF-8".to_owned(),
                    _ => e.to_string(),
                }
            ))
        })?;
    let newline = if text.ends_with("\r\n") {
        2
    } else {
        usize::from(text.ends_with('\n'))
    };
    let len = text.len() - newline;
    text.truncate(len);
    if text.is_empty() {
        return Err(Fail::new(
            "no secret on standard input: pipe it in (e.g. `tower-byok put ... < keyfile`), \
             or run from a terminal to be prompted",
        ));
    }
    Ok(text)
}
