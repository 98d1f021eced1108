//! Small HTML pages, one per step: plain forms, no JavaScript. Everything a user entered
//! is escaped before it is shown.

use axum::response::Html;

use super::app::{Step, REQUIRED};
use super::db::Progress;

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><meta charset=utf-8><title>{title}</title>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:2em auto\">\
         <h1>{title}</h1>{body}</body>"
    ))
}

pub(crate) fn home() -> Html<String> {
    page(
        "Onboarding",
        "<form method=post action=/login><label>User name <input name=user required></label> \
         <button>Sign in</button></form><p>Demo sign-in: no password.</p>",
    )
}

pub(crate) fn key_step(missing: &[&str]) -> Html<String> {
    let inputs: String = REQUIRED
        .iter()
        .map(|p| format!("<p><label>{p} key <input type=password name={p}></label></p>"))
        .collect();
    page(
        "Step 1: your provider keys",
        &format!(
            "<p>Needed: {}. Keys are checked, then stored encrypted for you alone.</p>\
             <form method=post action=/onboarding/keys>{inputs}<button>Save keys</button></form>\
             <h2>Or paste a <code>.env</code></h2><p>Its keys are kept for one hour.</p>\
             <form method=post action=/onboarding/keys/env><textarea name=env rows=6 cols=60>\
             </textarea><p><button>Use for this session</button></p></form>",
            missing.join(", ")
        ),
    )
}

pub(crate) fn step(step: &Step, progress: &Progress) -> Html<String> {
    let saved = progress.steps.get(&step.number);
    let inputs: String = (step.fields.iter())
        .map(|f| {
            let value = saved.and_then(|d| d[*f].as_str()).unwrap_or_default();
            format!(
                "<p><label>{f} <input name={f} value=\"{}\" required></label></p>",
                escape(value)
            )
        })
        .collect();
    page(
        &format!("Step {}: {}", step.number, step.title),
        &format!(
            "<form method=post action=/onboarding/step/{}>{inputs}<button>Continue</button></form>",
            step.number
        ),
    )
}

pub(crate) fn done(progress: &Progress) -> Html<String> {
    let rows: String = (progress.steps.iter())
        .map(|(n, data)| {
            format!(
                "<li>step {n}: <code>{}</code></li>",
                escape(&data.to_string())
            )
        })
        .collect();
    page(
        "All set",
        &format!("<ul>{rows}</ul><p><a href=/generate>Try it</a></p>"),
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
