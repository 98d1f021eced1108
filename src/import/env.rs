//! `.env` files: the variable to provider table and the line parser.

use zeroize::Zeroizing;

use super::collect::{Collector, Origin};
use super::{import_error, SkipReason};
use crate::error::Result;
use crate::validate;

/// The variables of a `.env` file that hold provider keys, and their providers.
///
/// [`EnvMapping::new`] (also the `Default`) maps:
///
/// | variable | provider |
/// |---|---|
/// | `OPENAI_API_KEY` | `openai` |
/// | `GEMINI_API_KEY`, `GOOGLE_API_KEY` | `gemini` |
/// | `EXA_API_KEY` | `exa` |
/// | `ANTHROPIC_API_KEY` | `anthropic` |
/// | `TAVILY_API_KEY` | `tavily` |
/// | `SERPER_API_KEY` | `serper` |
/// | `COPILOTKIT_API_KEY` | `copilotkit` |
/// | `MISTRAL_API_KEY` | `mistral` |
/// | `GROQ_API_KEY` | `groq` |
/// | `COHERE_API_KEY` | `cohere` |
///
/// and, by the suffix rule, any other `<NAME>_API_KEY` to the provider `<name>`
/// lowercased (`OPENROUTER_API_KEY` to `openrouter`). Other variables are skipped and
/// listed in the plan by name. Names match without regard to ASCII case.
///
/// When two variables of one provider (`GEMINI_API_KEY` and `GOOGLE_API_KEY`) are both
/// set, they must hold the same key, or the import is refused as ambiguous; if
/// `GOOGLE_API_KEY` is some other Google key, [`ignore`](Self::ignore) it.
///
/// ```
/// use tower_byok::import::EnvMapping;
///
/// let vars = EnvMapping::new().map("huggingface", "HF_TOKEN").ignore("GOOGLE_API_KEY");
/// assert_eq!(vars.provider_for("HF_TOKEN").as_deref(), Some("huggingface"));
/// assert_eq!(vars.provider_for("google_api_key"), None);
/// assert_eq!(vars.provider_for("OPENROUTER_API_KEY").as_deref(), Some("openrouter"));
/// assert_eq!(vars.provider_for("DATABASE_URL"), None);
/// ```
#[derive(Debug, Clone)]
pub struct EnvMapping {
    /// Upper-cased variable name, and its provider (`None`: ignored). Later entries win.
    vars: Vec<(String, Option<String>)>,
    suffix_rule: bool,
}

pub(super) const DEFAULT_VARS: &[(&str, &str)] = &[
    ("OPENAI_API_KEY", "openai"),
    ("GEMINI_API_KEY", "gemini"),
    ("GOOGLE_API_KEY", "gemini"),
    ("EXA_API_KEY", "exa"),
    ("ANTHROPIC_API_KEY", "anthropic"),
    ("TAVILY_API_KEY", "tavily"),
    ("SERPER_API_KEY", "serper"),
    ("COPILOTKIT_API_KEY", "copilotkit"),
    ("MISTRAL_API_KEY", "mistral"),
    ("GROQ_API_KEY", "groq"),
    ("COHERE_API_KEY", "cohere"),
];

impl Default for EnvMapping {
    fn default() -> Self {
        Self::new()
    }
}

impl EnvMapping {
    /// The default table above, with the `_API_KEY` suffix rule on.
    pub fn new() -> Self {
        Self {
            vars: DEFAULT_VARS
                .iter()
                .map(|(var, provider)| ((*var).to_owned(), Some((*provider).to_owned())))
                .collect(),
            suffix_rule: true,
        }
    }

    /// No variable mapped and the suffix rule off: only what [`map`](Self::map) adds.
    pub fn empty() -> Self {
        Self {
            vars: Vec::new(),
            suffix_rule: false,
        }
    }

    /// Imports the variable `var` as `provider`'s key, replacing any earlier mapping of
    /// `var`. The arguments come in the order of
    /// [`DevEnvFallback::provider`](crate::DevEnvFallback::provider).
    ///
    /// # Panics
    ///
    /// When `provider` is not a valid provider name: a programming error.
    pub fn map(mut self, provider: &str, var: &str) -> Self {
        let provider = match validate::provider(provider) {
            Ok(p) => p.into_owned(),
            Err(e) => panic!("EnvMapping::map: {e}"),
        };
        self.set(var, Some(provider));
        self
    }

    /// Skips the variable `var`, even if the table or the suffix rule maps it.
    pub fn ignore(mut self, var: &str) -> Self {
        self.set(var, None);
        self
    }

    /// Whether a variable `<NAME>_API_KEY` the table does not mention is imported as
    /// provider `<name>`. On in [`new`](Self::new), off in [`empty`](Self::empty).
    pub fn suffix_rule(mut self, on: bool) -> Self {
        self.suffix_rule = on;
        self
    }

    /// The provider whose key the variable `var` holds, if any.
    pub fn provider_for(&self, var: &str) -> Option<String> {
        if let Some((_, provider)) = self
            .vars
            .iter()
            .rev()
            .find(|(name, _)| name.eq_ignore_ascii_case(var))
        {
            return provider.clone();
        }
        if !self.suffix_rule {
            return None;
        }
        strip_api_key_suffix(var)
            .and_then(|name| validate::provider(name).ok())
            .map(|p| p.into_owned())
    }

    pub(super) fn set(&mut self, var: &str, provider: Option<String>) {
        let var = var.trim().to_ascii_uppercase();
        self.vars.retain(|(name, _)| *name != var);
        self.vars.push((var, provider));
    }
}

/// `name` without a trailing `_API_KEY` (any case), if it has one and something before.
pub(super) fn strip_api_key_suffix(name: &str) -> Option<&str> {
    const SUFFIX: &str = "_api_key";
    let cut = name
        .len()
        .checked_sub(SUFFIX.len())
        .filter(|&cut| cut > 0)?;
    let suffix = name.get(cut..)?;
    suffix.eq_ignore_ascii_case(SUFFIX).then(|| &name[..cut])
}

// --- .env ---------------------------------------------------------------------------

pub(super) const EXPECTED_ASSIGNMENT: &str = "expected NAME=value";

pub(super) fn parse_dotenv(
    text: &str,
    user_id: &str,
    vars: &EnvMapping,
    found: &mut Collector,
) -> Result<()> {
    for (i, line) in text.split('\n').enumerate() {
        let n = i + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        // The error names the line by number only: the line may hold a secret.
        let parsed =
            parse_env_line(line).map_err(|what| import_error(format!("line {n}: {what}")))?;
        let Some((name, value)) = parsed else {
            continue;
        };
        let origin = Origin::Line {
            line: n,
            var: name.to_owned(),
        };
        match vars.provider_for(name) {
            Some(provider) => found.add(user_id, provider, &value, origin)?,
            None => found.skip(&origin, SkipReason::NotAProviderKey),
        }
    }
    Ok(())
}

/// One line of a `.env` file: `None` for blank and comment lines, else the variable
/// name and its value with quotes and escapes resolved. The error says what is wrong
/// without quoting the line.
pub(super) fn parse_env_line(
    line: &str,
) -> Result<Option<(&str, Zeroizing<String>)>, &'static str> {
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
    let rest = rest.trim_start_matches([' ', '\t']);
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
        // `#` starts a comment only after whitespace, so `a#b` is a value.
        let bytes = rest.as_bytes();
        let end = (1..bytes.len())
            .find(|&i| bytes[i] == b'#' && matches!(bytes[i - 1], b' ' | b'\t'))
            .unwrap_or(bytes.len());
        Zeroizing::new(rest[..end].trim().to_owned())
    };
    Ok(Some((name, value)))
}

pub(super) fn after_quote(rest: &str) -> Result<(), &'static str> {
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
        parse_env_line(s)
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
            assert!(parse_env_line(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mapping_follows_table_suffix_and_overrides() {
        let vars = EnvMapping::new();
        assert_eq!(
            vars.provider_for("GOOGLE_API_KEY").as_deref(),
            Some("gemini")
        );
        assert_eq!(
            vars.provider_for("openai_api_key").as_deref(),
            Some("openai")
        );
        assert_eq!(
            vars.provider_for("FIRECRAWL_API_KEY").as_deref(),
            Some("firecrawl")
        );
        assert_eq!(vars.provider_for("_API_KEY"), None);
        assert_eq!(vars.provider_for("__X_API_KEY"), None);
        assert_eq!(vars.provider_for("API_KEY"), None);
        assert_eq!(vars.provider_for("DEBUG"), None);
        let vars = EnvMapping::empty().map("OpenAI", "MY_OPENAI");
        assert_eq!(vars.provider_for("my_openai").as_deref(), Some("openai"));
        assert_eq!(vars.provider_for("EXA_API_KEY"), None);
        let vars = EnvMapping::new()
            .ignore("exa_api_key")
            .map("google", "GOOGLE_API_KEY");
        assert_eq!(vars.provider_for("EXA_API_KEY"), None);
        assert_eq!(
            vars.provider_for("GOOGLE_API_KEY").as_deref(),
            Some("google")
        );
    }
}
