//! Which variables of a `.env` file hold which provider's key.

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
/// listed by name ([`EnvKeys::skipped`](super::EnvKeys::skipped), or the import plan). Names match without regard to ASCII case.
///
/// When two variables of one provider (`GEMINI_API_KEY` and `GOOGLE_API_KEY`) are both
/// set, they must hold the same key, or the text is refused as ambiguous; if
/// `GOOGLE_API_KEY` is some other Google key, [`ignore`](Self::ignore) it.
///
/// ```
/// use tower_byok::env_file::EnvMapping;
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

const DEFAULT_VARS: &[(&str, &str)] = &[
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

    fn set(&mut self, var: &str, provider: Option<String>) {
        let var = var.trim().to_ascii_uppercase();
        self.vars.retain(|(name, _)| *name != var);
        self.vars.push((var, provider));
    }
}

/// `name` without a trailing `_API_KEY` (any case), if it has one and something before.
pub(crate) fn strip_api_key_suffix(name: &str) -> Option<&str> {
    const SUFFIX: &str = "_api_key";
    let cut = name
        .len()
        .checked_sub(SUFFIX.len())
        .filter(|&cut| cut > 0)?;
    let suffix = name.get(cut..)?;
    suffix.eq_ignore_ascii_case(SUFFIX).then(|| &name[..cut])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
