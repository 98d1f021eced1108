//! [`CommandKeyring`]: a keyring read from the standard output of a program, such as
//! `sops -d`, `gcloud kms decrypt` or `vault kv get`.

use std::borrow::Cow;
use std::ffi::OsString;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::source::{BoxFuture, KeyringSource};
use super::Keyring;
use crate::error::{Error, ErrorKind, Result};

/// The most a program may print: a keyring of a thousand keys is about 60 KiB.
const MAX_OUTPUT: u64 = 1024 * 1024;
/// How long a program may run by default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A keyring read from the standard output of a program, in the
/// [text format](Keyring#text-format), run again at each load.
///
/// This is how a keyring kept by a tool of its own reaches the vault without ever
/// sitting in an environment variable or a plain file: `sops -d keyring.enc`,
/// `gcloud kms decrypt ... --plaintext-file=-`, `vault kv get -field=keyring secret/byok`,
/// or a secrets manager's CLI.
///
/// - The program runs directly, without a shell, with the process's environment and
///   its standard input closed.
/// - Its standard output is read into memory that is zeroized, and its standard error is
///   discarded: neither reaches a log or an error message. A failure says which program
///   failed and how (it could not start, it exited with a status, it ran out of time, it
///   printed no valid keyring, naming the entry), never what it printed.
/// - It must finish within the [timeout](Self::timeout), 30 seconds by default, or it
///   is killed and the load fails with [`ErrorKind::Timeout`]. Only the program itself is
///   killed: a program that starts others should make them end with it.
/// - [`describe`](KeyringSource::describe) names the program, never its arguments.
///
/// ```
/// # #[cfg(unix)] {
/// use std::time::Duration;
/// use tower_byok::{CommandKeyring, KeyringSource};
///
/// let source = CommandKeyring::new("sops")
///     .args(["--decrypt", "/etc/byok/keyring.enc.txt"])
///     .timeout(Duration::from_secs(10));
/// assert_eq!(source.describe(), "command sops");
/// # }
/// ```
#[derive(Clone)]
pub struct CommandKeyring {
    program: OsString,
    args: Vec<OsString>,
    timeout: Duration,
}

impl CommandKeyring {
    /// Runs `program`, found on `PATH` unless it is a path.
    pub fn new(program: impl Into<OsString>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<I>(mut self, args: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// How long the program may run before it is killed. Default 30 seconds.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The program's name, without its directory: for messages.
    fn name(&self) -> Cow<'_, str> {
        Path::new(&self.program)
            .file_name()
            .unwrap_or(self.program.as_os_str())
            .to_string_lossy()
    }

    /// Runs the program and returns what it printed.
    fn run(&self) -> Result<Zeroizing<String>> {
        let name = self.name();
        let failed = |kind: ErrorKind, why: &str| {
            Error::new(kind).with_detail(format!("command `{name}` {why}"))
        };
        let deadline = Instant::now() + self.timeout;
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| failed(ErrorKind::KeyringSource, "could not be started").with_source(e))?;
        let Some(stdout) = child.stdout.take() else {
            return Err(failed(ErrorKind::KeyringSource, "has no standard output"));
        };
        // Read on a thread of its own, so that a program that never closes its output
        // cannot hold the load past the deadline.
        let (sender, printed) = mpsc::channel();
        std::thread::spawn(move || {
            let mut out = Zeroizing::new(Vec::new());
            let read = stdout.take(MAX_OUTPUT + 1).read_to_end(&mut out);
            let _ = sender.send(read.map(|_| out));
        });
        let kill = |child: &mut std::process::Child| {
            let _ = child.kill();
            let _ = child.wait();
        };
        let out = match printed.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                kill(&mut child);
                return Err(
                    failed(ErrorKind::KeyringSource, "output could not be read").with_source(e)
                );
            }
            Err(_) => {
                kill(&mut child);
                return Err(failed(
                    ErrorKind::Timeout,
                    &format!("did not finish within {:?}; it was killed", self.timeout),
                ));
            }
        };
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    kill(&mut child);
                    return Err(failed(
                        ErrorKind::Timeout,
                        &format!("did not finish within {:?}; it was killed", self.timeout),
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => {
                    kill(&mut child);
                    return Err(
                        failed(ErrorKind::KeyringSource, "could not be waited for").with_source(e)
                    );
                }
            }
        };
        if !status.success() {
            return Err(failed(
                ErrorKind::KeyringSource,
                &format!("failed ({status})"),
            ));
        }
        if out.len() as u64 > MAX_OUTPUT {
            return Err(failed(
                ErrorKind::InvalidKeyring,
                "printed more than 1 MiB, which is no keyring",
            ));
        }
        let text = std::str::from_utf8(&out).map_err(|_| {
            failed(
                ErrorKind::InvalidKeyring,
                "printed something that is not UTF-8",
            )
        })?;
        Ok(Zeroizing::new(text.to_owned()))
    }
}

impl KeyringSource for CommandKeyring {
    fn load(&self) -> BoxFuture<'_, Result<Keyring>> {
        let this = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let text = this.run()?;
                Keyring::parse_from(&text, &format!("the output of command `{}`", this.name()))
            })
            .await
            .unwrap_or_else(|join| {
                Err(Error::keyring_source(
                    ErrorKind::KeyringSource,
                    "the command runner stopped",
                    join,
                ))
            })
        })
    }

    fn describe(&self) -> Cow<'_, str> {
        Cow::Owned(format!("command {}", self.name()))
    }
}

impl std::fmt::Debug for CommandKeyring {
    // The arguments may name a secret's path or carry a token: the program only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandKeyring")
            .field("program", &self.name())
            .field("args", &format_args!("[{} hidden]", self.args.len()))
            .field("timeout", &self.timeout)
            .finish()
    }
}
