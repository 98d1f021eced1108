//! `tower-byok`: the admin command line tool of the `tower-byok` crate.
//!
//! Generates and rotates master keys, stores, lists and deletes users' provider keys,
//! re-seals them after a rotation, verifies, purges expired keys, shows the audit trail
//! and imports legacy files. Run `tower-byok --help`.
//!
//! Secrets are read from standard input or a prompt without echo, never from arguments
//! (which land in shell history and process lists), and never printed: listings show
//! the masked form only. Key material is printed only when asked for with `--out -`.
// A command line tool reports on standard output: that is its job, unlike the library's.
#![allow(clippy::print_stdout)]

mod cli;
mod commands;
mod files;
mod secret;
mod table;
mod time;

use std::fmt;
use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(err) => return cli::usage_error(&err),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(fail) => {
            eprintln!("error: {fail}");
            ExitCode::FAILURE
        }
    }
}

/// Why a command failed: a message built only from the crate's errors (which never hold
/// a secret or a user id) and from text this tool wrote itself.
#[derive(Debug)]
pub(crate) struct Fail(String);

impl Fail {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// Puts what the tool was doing in front of the message.
    pub(crate) fn context(self, doing: &str) -> Self {
        Self(format!("{doing}: {}", self.0))
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<tower_byok::Error> for Fail {
    fn from(err: tower_byok::Error) -> Self {
        Self(err.to_string())
    }
}

/// The result of a command.
pub(crate) type CmdResult<T = ()> = Result<T, Fail>;
