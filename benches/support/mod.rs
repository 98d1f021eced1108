//! Helpers shared by the end-to-end and memory benches (a folder, so cargo does not take
//! it for a bench of its own).

use std::str::FromStr;

/// A knob from the environment, or its default.
pub(crate) fn knob<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a valid value")),
        Err(_) => default,
    }
}

/// Three keys of realistic lengths: OpenAI (51), Gemini (39), Exa (36).
pub(crate) fn keys_of(n: usize) -> [(&'static str, String); 3] {
    [
        ("openai", format!("sk-proj-{n:0>43}")),
        ("gemini", format!("AIza{n:0>35}")),
        ("exa", format!("{n:0>8}-0000-4000-8000-{n:0>12}")),
    ]
}
