//! The onboarding example's modules compiled into a test, and the example's server run
//! as a process of its own: this test binary started again in server mode, so that it
//! runs the example's own start-up code. Shared by `tests/onboarding.rs` (over HTTP)
//! and `tests/onboarding_browser.rs` (in a browser).

#[path = "../../examples/onboarding/app.rs"]
pub(crate) mod app;
#[path = "../../examples/onboarding/auth.rs"]
pub(crate) mod auth;
#[path = "../../examples/onboarding/db.rs"]
pub(crate) mod db;
#[path = "../../examples/onboarding/legacy.rs"]
pub(crate) mod legacy;
#[path = "../../examples/onboarding/pages.rs"]
pub(crate) mod pages;
#[path = "../../examples/onboarding/server.rs"]
pub(crate) mod server;

use std::io::{BufRead, BufReader, Read as _};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// Set in a server process: what it serves is in the usual `DATABASE_URL` etc.
const CHILD: &str = "ONBOARDING_TEST_CHILD";

/// The body of each test binary's ignored `child_server` test: serves until killed or
/// until its standard input closes (its test has ended).
pub(crate) async fn serve_as_child() {
    std::env::var(CHILD).expect("started by a test");
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    });
    tokio::select! {
        result = server::run(server::Config::from_env()) => result.unwrap(),
        _ = stdin_closed => {}
    }
}

/// This test binary, to be started as the example's server (its `child_server` test).
pub(crate) fn child_command() -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--ignored", "--exact", "child_server", "--nocapture"])
        .env(CHILD, "1");
    command
}

/// Starts `command` (a server of the example) and waits until it listens: the process,
/// its address, and what it printed before (e.g. the legacy import's dry run).
pub(crate) fn start(command: &mut Command) -> (Child, SocketAddr, String) {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut output = Vec::new();
    let addr = loop {
        let Some(line) = lines.next() else {
            panic!(
                "the server exited before listening; it printed:\n{}",
                output.join("\n")
            )
        };
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("onboarding example listening on http://") {
            break rest.split(' ').next().unwrap().parse().unwrap();
        }
        output.push(line);
    };
    // Keep reading, so that the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr, output.join("\n"))
}
