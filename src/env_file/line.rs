//! The `.env` line grammar of [the module docs](super), one line at a time.
//!
//! Hand-written rather than dotenvy, whose grammar is close (`export`, both quotes,
//! comments, multi-line quoted values) but which, for secrets, does three things we must
//! not: it expands `$VAR` and `${VAR}` in unquoted and double-quoted values, from the
//! process environment first and else the file, and an unknown name becomes the empty
//! string, so a key containing `$` is silently changed; its parse error
//! (`Error::LineParse`) carries the whole line, i.e. the secret, into its `Display`; and
//! its values are plain `String`s, not zeroized. Escapes differ too: dotenvy refuses a
//! backslash before a character outside its short list and reads backslashes in
//! unquoted values as escapes, where python-dotenv (the usual writer for a Python app
//! like the old one) keeps them. `tests/env_file.rs` checks each rule of ours.

use zeroize::Zeroizing;

/// What is wrong with a line that is neither blank, a comment nor an assignment.
const EXPECTED_ASSIGNMENT: &str = "expected NAME=value";

/// One `NAME=value` line of a `.env` text, its value with quotes and escapes resolved.
pub(crate) struct Assignment<'a> {
    /// 1-based.
    pub(crate) line: usize,
    pub(crate) name: &'a str,
    pub(crate) value: Zeroizing<String>,
}

/// A line that cannot be read: its number and what is wrong, never its text.
pub(crate) struct LineError {
    pub(crate) line: usize,
    pub(crate) what: &'static str,
}

/// The assignments of `text` in order, skipping blank and comment lines; an `Err` for
/// each malformed line. A leading byte order mark is ignored; lines end with `\n` or
/// `\r\n`.
pub(crate) fn assignments(text: &str) -> impl Iterator<Item = Result<Assignment<'_>, LineError>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.split('\n').enumerate().filter_map(|(i, line)| {
        let line_no = i + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        match parse_line(line) {
            Ok(None) => None,
            Ok(Some((name, value))) => Some(Ok(Assignment {
                line: line_no,
                name,
                value,
            })),
            Err(what) => Some(Err(LineError {
                line: line_no,
                what,
            })),
        }
    })
}

/// One line of a `.env` file: `None` for blank and comment lines, else the variable
/// name and its value with quotes and escapes resolved. The error says what is wrong
/// without quoting the line.
pub(super) fn parse_line(line: &str) -> Result<Option<(&str, Zeroizing<String>)>, &'static str> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let line = match line.strip_prefix("export") {
        Some(rest) if rest.starts_with([' ', '\t']) => rest.trim_start(),
        _ => line,
    };
    let (name, rest) = line.split_once('=').ok_or(EXPECTED_ASSIGNMENT)?;
    let name = name.trim_end();
    let mut bytes = name.bytes();
    let name_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.'));
    if !name_ok {
        return Err(EXPECTED_ASSIGNMENT);
    }
    let raw = rest;
    let rest = raw.trim_start_matches([' ', '\t']);
    let value = if let Some(quoted) = rest.strip_prefix('"') {
        // Room for the whole value up front: a reallocation would leave a copy behind.
        let mut value = Zeroizing::new(String::with_capacity(quoted.len()));
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated quoted value"),
                Some((i, '"')) => break i + 1,
                Some((_, '\\')) => match chars.next() {
                    None => return Err("unterminated quoted value"),
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 'r')) => value.push('\r'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, c @ ('"' | '\\' | '\''))) => value.push(c),
                    Some((_, c)) => {
                        value.push('\\');
                        value.push(c);
                    }
                },
                Some((_, c)) => value.push(c),
            }
        };
        after_quote(&quoted[end..])?;
        value
    } else if let Some(quoted) = rest.strip_prefix('\'') {
        let end = quoted.find('\'').ok_or("unterminated quoted value")?;
        after_quote(&quoted[end + 1..])?;
        Zeroizing::new(quoted[..end].to_owned())
    } else {
        // `#` starts a comment only after a blank, so `a#b` and `=#b` are values. The
        // scan runs over the value before its leading blanks are trimmed, so the blank
        // between `=` and `#` counts: `= #b` is a comment and the value is empty.
        let bytes = raw.as_bytes();
        let end = (1..bytes.len())
            .find(|&i| bytes[i] == b'#' && matches!(bytes[i - 1], b' ' | b'\t'))
            .unwrap_or(bytes.len());
        Zeroizing::new(raw[..end].trim().to_owned())
    };
    Ok(Some((name, value)))
}

fn after_quote(rest: &str) -> Result<(), &'static str> {
    let rest = rest.trim_start();
    if rest.is_empty() || rest.starts_with('#') {
        Ok(())
    } else {
        Err("unexpected text after the closing quote")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn line(s: &str) -> Option<(String, String)> {
        parse_line(s)
            .unwrap()
            .map(|(name, value)| (name.to_owned(), value.as_str().to_owned()))
    }

    fn pair(name: &str, value: &str) -> Option<(String, String)> {
        Some((name.to_owned(), value.to_owned()))
    }

    #[test]
    fn env_lines_parse_like_dotenv() {
        assert_eq!(line(""), None);
        assert_eq!(line("   "), None);
        assert_eq!(line("# OPENAI_API_KEY=sk-old"), None);
        assert_eq!(line("  #x"), None);
        assert_eq!(line("A=b"), pair("A", "b"));
        assert_eq!(line("export A=b"), pair("A", "b"));
        assert_eq!(line("export\tA = b "), pair("A", "b"));
        assert_eq!(line("exportA=b"), pair("exportA", "b"));
        assert_eq!(line("A="), pair("A", ""));
        assert_eq!(line("A=b # comment"), pair("A", "b"));
        assert_eq!(line("A=b#c"), pair("A", "b#c"));
        assert_eq!(line("A=#b"), pair("A", "#b"));
        assert_eq!(line("A= #b"), pair("A", ""));
        assert_eq!(line("A =\t#b"), pair("A", ""));
        assert_eq!(line("A=\"b c\" # comment"), pair("A", "b c"));
        assert_eq!(line("A=\"b#c\""), pair("A", "b#c"));
        assert_eq!(
            line(r#"A="q\"uote\\d\nx\z""#),
            pair("A", "q\"uote\\d\nx\\z")
        );
        assert_eq!(line(r"A='raw\n #x'"), pair("A", r"raw\n #x"));
        assert_eq!(line("A=''"), pair("A", ""));
        assert_eq!(line("a.b_C9=1"), pair("a.b_C9", "1"));
    }

    #[test]
    fn malformed_env_lines_are_refused() {
        for bad in [
            "sk-proj-0123456789",
            "=value",
            "9A=b",
            "A B=c",
            "A-B=c",
            "export",
            "A=\"open",
            "A='open",
            "A=\"ends\\",
            "A=\"x\" y",
            "A='x'y",
        ] {
            assert!(parse_line(bad).is_err(), "{bad:?}");
        }
    }
}
