//! The real `warren` binary as a child process: started on a port and data dir, killed with
//! SIGKILL, restarted on the same data dir (crash tests).

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

/// A running `warren serve` child; dropped, it is killed.
pub struct Process {
    child: Child,
    port: u16,
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Starts the binary on `port` with `dir` as its data dir and waits until it accepts.
pub async fn start(dir: &Path, port: u16) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_warren"));
    command.args(serve_args(dir, port));
    start_command(command, port).await
}

/// The `warren serve` arguments for `port` and `dir`, for a caller that wraps the binary (in a
/// shell that sets limits, in a namespace).
pub fn serve_args(dir: &Path, port: u16) -> Vec<OsString> {
    vec![
        "serve".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}").into(),
        // Tests run side by side: each API and metrics endpoint takes a port of its own.
        "--management-listen".into(),
        "127.0.0.1:0".into(),
        "--prometheus-listen".into(),
        "127.0.0.1:0".into(),
        "--log-level".into(),
        "warn".into(),
        "--data-dir".into(),
        dir.into(),
    ]
}

/// Starts the binary like [`start`], with its management API on `http`.
pub async fn start_with_http(dir: &Path, port: u16, http: u16) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_warren"));
    let mut args = serve_args(dir, port);
    set_arg(
        &mut args,
        "--management-listen",
        &format!("127.0.0.1:{http}"),
    );
    command.args(args);
    start_command(command, port).await
}

/// Starts the binary like [`start`], with its log (standard output) kept for [`Process::log`].
pub async fn start_logged(dir: &Path, port: u16) -> Process {
    start_logged_with(dir, port, &[]).await
}

/// [`start_logged`] with more `warren serve` arguments, logging at `info` (what an operator
/// sees by default) rather than the tests' usual `warn`.
pub async fn start_logged_with(dir: &Path, port: u16, extra: &[&str]) -> Process {
    let mut args = serve_args(dir, port);
    set_arg(&mut args, "--log-level", "info");
    args.extend(extra.iter().map(OsString::from));
    start_logged_args(args, port).await
}

/// Sets the value of a flag [`serve_args`] gives.
pub fn set_arg(args: &mut [OsString], flag: &str, value: &str) {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag} is one of serve_args"));
    args[i + 1] = value.into();
}

/// Starts the binary with `args` (ending in `warren serve` on `port`), its log kept for
/// [`Process::log`].
pub async fn start_logged_args(args: Vec<OsString>, port: u16) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_warren"));
    command.args(args).stdout(Stdio::piped());
    spawn(command, port).await
}

/// Spawns `command` (which ends in `warren serve` on `port`, by exec) and waits until it accepts.
pub async fn start_command(mut command: Command, port: u16) -> Process {
    command.stdout(Stdio::null());
    spawn(command, port).await
}

async fn spawn(mut command: Command, port: u16) -> Process {
    let child = command
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn warren");
    let process = Process { child, port };
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return process;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("warren did not start on port {port}");
}

impl Process {
    /// Its AMQP URI as guest.
    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Its AMQP address.
    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A lapin connection as guest.
    pub async fn connect(&self) -> Connection {
        Connection::connect(&self.uri(), ConnectionProperties::default())
            .await
            .expect("connect")
    }

    /// SIGTERM, then waits (10 s at most) for the exit status; `None` if it did not exit.
    pub fn terminate(mut self) -> Option<std::process::ExitStatus> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..400 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    }

    /// Sends it a signal by name (`HUP`, `TERM`...).
    pub fn signal(&self, name: &str) {
        let _ = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status();
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(self) {
        drop(self);
    }

    /// Kills it and returns everything it logged (started with [`start_logged`]).
    pub fn log(mut self) -> Vec<u8> {
        let _ = self.child.kill();
        let mut log = Vec::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = std::io::Read::read_to_end(&mut out, &mut log);
        }
        log
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
