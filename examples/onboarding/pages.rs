//! Small HTML pages: plain forms, no JavaScript. Everything a user entered, and every
//! message, is escaped before it is shown; a key never is, not even masked on an error.
//!
//! Every page for a signed-in user starts with "signed in as", links to the steps and
//! to "your keys", and a sign-out button. Error pages say what went wrong and link back.

use std::collections::BTreeMap;
use std::time::SystemTime;

use axum::response::Html;
use tower_byok::KeyInfo;

use super::app::{Step, PROVIDERS, STEPS};
use super::db::{unix, unix_now, Progress};

/// A page for an error, built where the error is known and rendered as HTML only for a
/// browser: it rides in the response's extensions, beside the JSON that API clients get
/// (see `app::negotiate`).
#[derive(Clone, Debug)]
pub(crate) struct ErrorPage {
    pub(crate) title: String,
    /// HTML: the reason (escaped) and a way back.
    pub(crate) body: String,
}

impl ErrorPage {
    /// A page with `reason` (plain text) and a link back to `back`.
    pub(crate) fn reason(title: &str, reason: &str, back: (&str, &str)) -> Self {
        Self {
            title: title.into(),
            body: format!(
                "<p role=alert class=error>{}</p><p><a href=\"{}\">{}</a></p>",
                escape(reason),
                back.0,
                escape(back.1)
            ),
        }
    }

    pub(crate) fn render(&self, user: Option<&str>) -> Html<String> {
        page(user, &self.title, &self.body)
    }
}

const STYLE: &str = "body{font-family:sans-serif;max-width:42em;margin:1.5em auto;padding:0 1em;\
     line-height:1.4}nav{border-bottom:1px solid #ccc;padding-bottom:.5em;margin-bottom:1em}\
     nav form{display:inline}label{font-weight:bold;display:block}input,textarea{width:100%;\
     box-sizing:border-box;padding:.3em;font:inherit}.hint{color:#555;font-size:.9em;margin:.2em 0}\
     .error{color:#a00;font-weight:bold}.ok{color:#070}fieldset{margin-bottom:1em}\
     ol.steps li.current{font-weight:bold}";

pub(crate) fn page(user: Option<&str>, title: &str, body: &str) -> Html<String> {
    let nav = match user {
        Some(user) => format!(
            "<nav>Signed in as <strong id=user>{}</strong> · <a href=/onboarding>Onboarding</a> · \
             <a href=/onboarding/keys>Your keys</a> · <form method=post action=/logout>\
             <button>Sign out</button></form></nav>",
            escape(user)
        ),
        None => String::new(),
    };
    Html(format!(
        "<!doctype html><html lang=en><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width\"><title>{title}</title>\
         <style>{STYLE}</style><body>{nav}<h1>{title}</h1>{body}</body></html>",
        title = escape(title)
    ))
}

pub(crate) fn home(user: Option<&str>) -> Html<String> {
    if user.is_some() {
        return page(
            user,
            "Onboarding",
            "<p><a href=/onboarding>Continue where you left off</a></p>",
        );
    }
    page(None, "Onboarding", SIGN_IN)
}

const SIGN_IN: &str = "<form method=post action=/login><label for=user>User name</label>\
     <p class=hint>1 to 64 letters, digits, <code>_ . @ -</code>. Sign in again with the \
     same name to come back to your progress.</p><input id=user name=user required \
     maxlength=64 autocomplete=username><p><button>Sign in</button></p></form>\
     <p class=hint>Demo sign-in: no password.</p>";

/// The page for the layer's `401`: the reason and the sign-in form.
pub(crate) fn unauthenticated() -> ErrorPage {
    ErrorPage {
        title: "Please sign in".into(),
        body: format!(
            "<p role=alert class=error>You are not signed in, or your sign-in has ended.</p>{SIGN_IN}"
        ),
    }
}

/// The page for the layer's `428`: which keys are missing, and the way to the key step.
pub(crate) fn missing_keys(missing: &[Box<str>]) -> ErrorPage {
    let names: Vec<&str> = missing.iter().map(|p| provider_name(p)).collect();
    ErrorPage {
        title: "Keys needed first".into(),
        body: format!(
            "<p role=alert class=error>This step needs your {} {}: you have none stored \
             (a key pasted from a <code>.env</code> is kept for one hour only).</p>\
             <p><a id=to-key-step href=/onboarding>Add your keys on the key step</a></p>",
            escape(&names.join(" and ")),
            if names.len() == 1 { "key" } else { "keys" }
        ),
    }
}

pub(crate) fn provider_name(id: &str) -> &str {
    PROVIDERS.iter().find(|p| p.id == id).map_or(id, |p| p.name)
}

/// What the key page shows: the stored keys (masked), and the reasons for what was
/// refused, by field (`gemini`, `exa`, `env`).
pub(crate) struct KeyPage<'a> {
    pub(crate) user: &'a str,
    pub(crate) keys: &'a [KeyInfo],
    pub(crate) errors: &'a BTreeMap<&'static str, String>,
    /// Step 1 of onboarding (keys missing), or the "your keys" page.
    pub(crate) step: bool,
    pub(crate) progress: &'a Progress,
}

pub(crate) fn key_page(view: &KeyPage<'_>) -> Html<String> {
    let live = |id: &str| {
        view.keys
            .iter()
            .find(|k| k.provider == id && !k.is_expired())
    };
    let missing: Vec<&str> = (PROVIDERS.iter())
        .filter(|p| live(p.id).is_none())
        .map(|p| p.name)
        .collect();
    let mut body = steps_nav(view.progress, 1);
    if !view.errors.is_empty() {
        body.push_str(
            "<p role=alert class=error id=summary>Not everything was saved: see the reasons \
             below. Keys that passed their check are saved. The fields are empty again: a \
             key is never sent back to the page, so paste it again once fixed.</p>",
        );
    }
    body.push_str(&if missing.is_empty() {
        "<p class=ok>Both keys are stored. <a href=/onboarding>Continue onboarding</a></p>"
            .to_owned()
    } else {
        format!(
            "<p>Still needed: <strong id=missing>{}</strong>. Each key is checked, then stored \
             encrypted, for you alone; pages only ever show it masked.</p>",
            missing.join(", ")
        )
    });
    body.push_str("<form method=post action=/onboarding/keys>");
    for p in PROVIDERS {
        let status = match live(p.id) {
            Some(k) => format!(
                "<p class=ok id={id}-status>Stored: <code>{}</code>{}. Leave the field empty \
                 to keep it, or paste a new key to replace it.</p>{delete}",
                escape(&k.masked),
                expiry(k.expires_at),
                id = p.id,
                // A button of the key form that posts elsewhere: forms cannot nest.
                delete = if view.step {
                    String::new()
                } else {
                    format!(
                        "<p><button id=delete-{id} formmethod=post formnovalidate \
                         formaction=/onboarding/keys/{id}/delete>Delete this key</button></p>",
                        id = p.id
                    )
                },
            ),
            None => format!("<p id={}-status>Not stored yet.</p>", p.id),
        };
        let error = view.errors.get(p.id).map_or(String::new(), |e| {
            format!(
                "<p role=alert class=error id={}-error>{}</p>",
                p.id,
                escape(e)
            )
        });
        body.push_str(&format!(
            "<fieldset><label for={id}>{name} API key</label><p class=hint>{hint}</p>{status}\
             {error}<input type=password id={id} name={id} autocomplete=off \
             placeholder=\"{placeholder}\"></fieldset>",
            id = p.id,
            name = p.name,
            hint = p.hint,
            placeholder = p.placeholder,
        ));
    }
    body.push_str("<button>Save keys</button></form>");
    let names: Vec<String> = (PROVIDERS.iter())
        .flat_map(|p| p.env_names)
        .map(|n| format!("<code>{n}</code>"))
        .collect();
    let env_error = view.errors.get("env").map_or(String::new(), |e| {
        format!("<p role=alert class=error id=env-error>{}</p>", escape(e))
    });
    body.push_str(&format!(
        "<h2>Or paste a <code>.env</code></h2><form method=post action=/onboarding/keys/env>\
         <label for=env>Contents of your <code>.env</code> file</label><p class=hint id=env-names>\
         Read: {}. Other <code>NAME_API_KEY</code> lines are stored for provider <i>name</i>; \
         every other line is skipped. Keys pasted here <strong>expire one hour</strong> after \
         you paste them (as the old app's session did): save them above to keep them.</p>\
         {env_error}<textarea id=env name=env rows=5 autocomplete=off \
         placeholder=\"GEMINI_API_KEY=AIza...&#10;EXA_API_KEY=...\"></textarea>\
         <p><button>Use for one hour</button></p></form>",
        names.join(", ")
    ));
    if !view.step {
        body.push_str(&other_keys(view.keys));
    }
    let title = if view.step {
        "Step 1: your provider keys"
    } else {
        "Your keys"
    };
    page(Some(view.user), title, &body)
}

/// The user's keys for other providers (from a `.env`), each with a delete button, on
/// the "your keys" page.
fn other_keys(keys: &[KeyInfo]) -> String {
    let rows: String = (keys.iter())
        .filter(|k| !k.is_expired() && !PROVIDERS.iter().any(|p| p.id == k.provider))
        .map(|k| {
            format!(
                "<li><code>{p}</code>: <code>{m}</code>{e} <form method=post style=display:inline \
                 action=/onboarding/keys/{p}/delete><button id=delete-{p}>Delete</button></form></li>",
                p = escape(&k.provider),
                m = escape(&k.masked),
                e = expiry(k.expires_at)
            )
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    format!(
        "<h2>Your other keys</h2><p class=hint>From a pasted <code>.env</code>.</p><ul>{rows}</ul>"
    )
}

/// `", expires 14:05 UTC (in 59 minutes)"` for a key that expires.
fn expiry(at: Option<SystemTime>) -> String {
    let Some(at) = at else {
        return String::new();
    };
    let secs = unix(at);
    let minutes = (secs - unix_now()).max(0) / 60;
    format!(
        ", <strong class=expires>expires {:02}:{:02} UTC (in {minutes} minutes)</strong>",
        secs / 3600 % 24,
        secs / 60 % 60
    )
}

/// The list of steps: done ones link to their page, so that one can go back and edit.
fn steps_nav(progress: &Progress, showing: i64) -> String {
    let items: String = (STEPS.iter())
        .map(|s| {
            let done = progress.steps.contains_key(&s.number);
            let href = if s.number == 1 {
                "/onboarding/keys".to_owned()
            } else {
                format!("/onboarding?step={}", s.number)
            };
            let class = if s.number == showing {
                " class=current"
            } else {
                ""
            };
            let reachable = done || s.number <= progress.current_step.max(1);
            let mark = if done { " ✓" } else { "" };
            if reachable && s.number != showing {
                format!("<li{class}><a href=\"{href}\">{}</a>{mark}</li>", s.title)
            } else {
                format!("<li{class}>{}{mark}</li>", s.title)
            }
        })
        .collect();
    format!("<ol class=steps>{items}</ol>")
}

pub(crate) fn step(
    user: &str,
    step: &Step,
    progress: &Progress,
    entered: Option<&BTreeMap<String, String>>,
    error: Option<(&str, &str)>,
) -> Html<String> {
    let saved = progress.steps.get(&step.number);
    let inputs: String = (step.fields.iter())
        .map(|f| {
            let value = match entered {
                Some(form) => form.get(f.name).map(String::as_str),
                None => saved.and_then(|d| d[f.name].as_str()),
            };
            let error = match error {
                Some((field, reason)) if field == f.name => format!(
                    "<p role=alert class=error id={}-error>{}</p>",
                    f.name,
                    escape(reason)
                ),
                _ => String::new(),
            };
            format!(
                "<p><label for={n}>{label}</label><span class=hint>{hint}</span>{error}\
                 <input id={n} name={n} value=\"{v}\" placeholder=\"{ph}\" required maxlength=200></p>",
                n = f.name,
                label = f.label,
                hint = f.hint,
                ph = f.placeholder,
                v = escape(value.unwrap_or_default()),
            )
        })
        .collect();
    let revisit = if step.number < progress.current_step {
        "<p class=hint>You finished this step before: saving keeps your later steps.</p>"
    } else {
        ""
    };
    let button = if step.number == 4 {
        "Finish"
    } else {
        "Save and continue"
    };
    let intro = step.intro;
    page(
        Some(user),
        &format!("Step {}: {}", step.number, step.title),
        &format!(
            "{}<p>{intro}</p>{revisit}<form method=post action=/onboarding/step/{}>{inputs}\
             <button>{button}</button></form>",
            steps_nav(progress, step.number),
            step.number
        ),
    )
}

pub(crate) fn done(user: &str, progress: &Progress, keys: &[KeyInfo]) -> Html<String> {
    let mut rows = String::new();
    for s in STEPS.iter().filter(|s| s.number > 1) {
        let data = progress.steps.get(&s.number);
        let fields: String = (s.fields.iter())
            .map(|f| {
                let v = data.and_then(|d| d[f.name].as_str()).unwrap_or("—");
                format!("<br>{}: {}", f.label, escape(v))
            })
            .collect();
        rows.push_str(&format!(
            "<li><a href=\"/onboarding?step={}\">{}</a>{fields}</li>",
            s.number, s.title
        ));
    }
    let key_rows: String = (keys.iter())
        .filter(|k| !k.is_expired())
        .map(|k| {
            format!(
                "<li>{}: <code>{}</code>{}</li>",
                escape(provider_name(&k.provider)),
                escape(&k.masked),
                expiry(k.expires_at)
            )
        })
        .collect();
    let expiring = keys
        .iter()
        .any(|k| k.expires_at.is_some() && !k.is_expired());
    let note = if expiring {
        "<p id=expiry-note>Keys pasted from a <code>.env</code> expire after one hour; then \
         you will be asked for them again. To keep one, save it on \
         <a href=/onboarding/keys>your keys</a>.</p>"
    } else {
        ""
    };
    page(
        Some(user),
        "All set",
        &format!(
            "<p>You finished onboarding. Click a step to change it.</p>\
             <ol start=2>{rows}</ol><h2>Your keys</h2><ul>{key_rows}</ul>{note}\
             <p><a href=/onboarding/keys>Change or delete your keys</a> · \
             <a href=/generate>Try it</a></p>"
        ),
    )
}

pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
