//! Input limits shared by the vault and the layer, and the masked display form.

use std::borrow::Cow;

use crate::error::{Error, ErrorKind, Result};

/// The longest user id accepted, in bytes.
pub const MAX_USER_ID_LEN: usize = 255;
/// The longest provider name accepted, in bytes.
pub const MAX_PROVIDER_LEN: usize = 64;
/// The largest secret accepted, in bytes: room for a cloud service-account JSON file.
pub const MAX_SECRET_LEN: usize = 16 * 1024;

/// A user id is 1 to 255 bytes with no control character (NUL included: PostgreSQL
/// cannot store it) and no whitespace at either end (`"alice "` would be another user
/// than `"alice"`, which invites mix-ups).
pub(crate) fn user_id(id: &str) -> Result<&str> {
    let bad = |why: &'static str| Error::new(ErrorKind::InvalidUserId).with_detail(why);
    if id.is_empty() || id.len() > MAX_USER_ID_LEN {
        return Err(bad("a user id must be 1 to 255 bytes"));
    }
    let bytes = id.as_bytes();
    if bytes.is_ascii() {
        // Nearly every id: one pass over bytes, and the only whitespace that is not a
        // control character is the space.
        if bytes.iter().any(|&b| b < 0x20 || b == 0x7f) {
            return Err(bad("a user id must not contain control characters"));
        }
        if bytes[0] == b' ' || bytes[bytes.len() - 1] == b' ' {
            return Err(bad("a user id must not start or end with whitespace"));
        }
        return Ok(id);
    }
    if has_control(id) {
        return Err(bad("a user id must not contain control characters"));
    }
    let edge = |c: Option<char>| c.is_some_and(char::is_whitespace);
    if edge(id.chars().next()) || edge(id.chars().next_back()) {
        return Err(bad("a user id must not start or end with whitespace"));
    }
    Ok(id)
}

/// `s.chars().any(char::is_control)`, on bytes: this runs on every request. The control
/// characters are U+0000–U+001F and U+007F (one byte each) and U+0080–U+009F (`C2 80`
/// to `C2 9F` in UTF-8).
fn has_control(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| {
        b < 0x20 || b == 0x7f || (b == 0xc2 && bytes.get(i + 1).is_some_and(|&n| n <= 0x9f))
    })
}

/// Lowercases a provider name and checks it against `[a-z0-9][a-z0-9_.-]{0,63}`.
///
/// Borrows when the name is already normalized, so the common case does not allocate.
pub(crate) fn provider(name: &str) -> Result<Cow<'_, str>> {
    let bad = || {
        Error::new(ErrorKind::InvalidProvider)
            .with_detail("a provider name must match [a-z0-9][a-z0-9_.-]{0,63}")
    };
    let name = name.trim();
    if name.is_empty() || name.len() > MAX_PROVIDER_LEN {
        return Err(bad());
    }
    let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    };
    let bytes = name.as_bytes();
    let first_ok = bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit();
    let rest_ok = bytes[1..]
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'));
    if first_ok && rest_ok {
        Ok(name)
    } else {
        Err(bad())
    }
}

pub(crate) fn secret(secret: &str) -> Result<()> {
    if secret.is_empty() || secret.len() > MAX_SECRET_LEN {
        return Err(
            Error::new(ErrorKind::InvalidSecret).with_detail("a secret must be 1 byte to 16 KiB")
        );
    }
    Ok(())
}

/// The display form of a secret: at most its first and last four characters.
///
/// Shorter secrets show less: an eighth of their characters at each end, rounded down,
/// so at most a quarter of a secret is ever shown and one under 8 characters shows none, and surrounding whitespace is ignored so
/// a JSON credential does not show its braces and newlines.
pub(crate) fn mask(secret: &str) -> String {
    // Slices of the secret itself: no copy of it is left behind in memory.
    let secret = secret.trim();
    let len = secret.chars().count();
    let shown = (len / 8).min(4);
    let head_end = secret
        .char_indices()
        .nth(shown)
        .map_or(secret.len(), |(i, _)| i);
    let tail_start = if shown == 0 {
        secret.len()
    } else {
        secret
            .char_indices()
            .rev()
            .nth(shown - 1)
            .map_or(0, |(i, _)| i)
    };
    let printable = |s: &str| !s.chars().any(char::is_control);
    let (head, tail) = (&secret[..head_end], &secret[tail_start..]);
    let mut out = String::with_capacity(head.len() + tail.len() + 3);
    if printable(head) {
        out.push_str(head);
    }
    out.push('…');
    if printable(tail) {
        out.push_str(tail);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_checks_agree_with_the_char_definitions() {
        // Every char up to U+0800 and a few beyond, alone and between other chars: the
        // request path's byte scans must give exactly what the plain definitions give.
        let chars = (0..0x800u32)
            .chain([0x2028, 0x3000, 0xfeff, 0x1_f600])
            .filter_map(char::from_u32);
        for c in chars {
            for id in [
                c.to_string(),
                format!("a{c}b"),
                format!("{c}ab"),
                format!("ab{c}"),
            ] {
                let control = id.chars().any(char::is_control);
                assert_eq!(has_control(&id), control, "{:?}", c as u32);
                let expected = !control && id.trim() == id;
                assert_eq!(user_id(&id).is_ok(), expected, "{:?} in {id:?}", c as u32);
            }
        }
    }

    #[test]
    fn providers_are_normalized_and_checked() {
        assert_eq!(provider(" OpenAI ").unwrap(), "openai");
        assert!(matches!(provider("gemini").unwrap(), Cow::Borrowed(_)));
        assert_eq!(provider("azure.openai-eu_1").unwrap(), "azure.openai-eu_1");
        assert_eq!(provider(&"a".repeat(64)).unwrap().len(), 64);
        for bad in ["", "-x", "_x", "a|b", "a b", "ключ", &"a".repeat(65)] {
            assert_eq!(
                provider(bad).unwrap_err().kind(),
                ErrorKind::InvalidProvider,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn user_ids_and_secrets_have_limits() {
        assert!(user_id(&"u".repeat(255)).is_ok());
        assert_eq!(user_id("").unwrap_err().kind(), ErrorKind::InvalidUserId);
        assert_eq!(
            user_id(&"u".repeat(256)).unwrap_err().kind(),
            ErrorKind::InvalidUserId
        );
        assert!(secret(&"s".repeat(MAX_SECRET_LEN)).is_ok());
        assert_eq!(secret("").unwrap_err().kind(), ErrorKind::InvalidSecret);
        assert_eq!(
            secret(&"s".repeat(MAX_SECRET_LEN + 1)).unwrap_err().kind(),
            ErrorKind::InvalidSecret
        );
    }

    #[test]
    fn masks_show_at_most_four_and_four() {
        assert_eq!(mask("sk-proj-abcdefghijklmnop1234abcd"), "sk-p…abcd");
        assert_eq!(mask("sk-proj-abcdefghijklmnop1234"), "sk-…234");
        assert_eq!(mask("abcdefghij"), "a…j");
        assert_eq!(mask("abcdefg"), "…");
        assert_eq!(mask("abc"), "…");
        assert_eq!(mask("{\n \"type\": \"service_account\"\n}\n"), "…");
        assert_eq!(mask("ключ-секрет-длинный"), "кл…ый");
    }
}
