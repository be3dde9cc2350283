//! Azure VM extension handler that installs and verifies InfiniBand/RDMA drivers.
//!
//! The pipeline, in module order:
//! argv ([`cli`]) -> agent environment and settings ([`agent`]) -> host facts ([`host`]) ->
//! plan ([`plan`]) -> stages ([`stages`], run by [`engine`]) -> status, heartbeat and events
//! ([`agent`]). Around it: one file per verb ([`verbs`]), downloads ([`net`]), the OS ([`sys`])
//! and the codes ([`error`]). docs/ARCHITECTURE.md describes each layer.

pub mod agent;
pub mod cli;
pub mod engine;
pub mod error;
pub mod host;
pub mod net;
pub mod plan;
pub mod stages;
pub mod sys;
pub mod verbs;

/// A line to stdout that never panics: a full disk, a closed pipe or a reader that went away
/// is remembered ([`output_lost`]) so a verb whose product is its output can fail for it.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { $crate::write_line(false, format_args!($($arg)*)) };
}

/// A line to stderr that never panics; a lost message there cannot be reported anywhere.
#[macro_export]
macro_rules! tell {
    ($($arg:tt)*) => { $crate::write_line(true, format_args!($($arg)*)) };
}

static OUTPUT_LOST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[doc(hidden)]
pub fn write_line(to_stderr: bool, args: std::fmt::Arguments) {
    use std::io::Write;
    if to_stderr {
        let _ = writeln!(std::io::stderr(), "{args}");
    } else {
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{args}").and_then(|_| out.flush()).is_err() {
            OUTPUT_LOST.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Some of what this process printed to stdout could not be written.
pub fn output_lost() -> bool {
    OUTPUT_LOST.load(std::sync::atomic::Ordering::Relaxed)
}

use agent::environment::AgentContext;
use agent::invocation::{Invocation, Operation};
use cli::Command;
use error::Code;
use host::Root;

/// Run one command line (the arguments after the program name); returns the process exit
/// code. Never panics outward: a panic anywhere, in any thread, ends the process with exit 14
/// after it is logged and reported in the status (see [`panic_hook`]).
pub fn run(args: Vec<std::ffi::OsString>) -> i32 {
    let cmd = match cli::utf8_args(args).and_then(|a| cli::parse(&a)) {
        Ok(c) => c,
        Err(e) => {
            crate::tell!("ibdriver: {e}\n{}", cli::USAGE);
            return Code::Usage.exit_code();
        }
    };
    std::panic::set_hook(Box::new(panic_hook));
    // A write past a file-size limit fails with EFBIG (reported like any write error) instead
    // of killing us with SIGXFSZ half-way through.
    // SAFETY: SIG_IGN installs no handler code; nothing else in the process sets this signal.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGXFSZ,
            nix::sys::signal::SigHandler::SigIgn,
        )
    };
    // The verbs whose product is what they print fail when it cannot be written.
    let reports = matches!(
        cmd,
        Command::Plan { .. } | Command::Health { .. } | Command::Version | Command::Help
    );
    match std::panic::catch_unwind(|| dispatch(cmd)) {
        Ok(0) if reports && output_lost() => Code::Internal.exit_code(),
        Ok(code) => code,
        // The hook exits first; this only keeps the exit code honest should it return.
        Err(_) => Code::Internal.exit_code(),
    }
}

/// A panic is a bug: log where it happened, tell the user through the status and heartbeat
/// (code 200, no panic text: it may quote any value), and exit 14 at once, whichever thread
/// panicked, so a half-dead worker never goes on holding the lock.
fn panic_hook(info: &std::panic::PanicHookInfo) {
    let location = info
        .location()
        .map(|l| format!("{}:{}", l.file(), l.line()))
        .unwrap_or_else(|| "an unknown place".into());
    // Only a fixed message is logged: a formatted one (an `unwrap` on an error, a slice out
    // of range) may quote any value, a secret included.
    let payload = match info.payload().downcast_ref::<&'static str>() {
        Some(s) => s.chars().take(500).collect::<String>(),
        None => "a formatted message, not logged (it may quote a value)".to_string(),
    };
    tracing::error!(location = %location, "internal error: panic: {payload}");
    crate::tell!("ibdriver: internal error: panic at {location}");
    let reported = agent::status::report_panic(&location);
    tracing::error!(reported, "exiting after the panic");
    std::process::exit(Code::Internal.exit_code());
}

/// Test-only: built with the `fault-injection` feature, `IBDRIVER_TEST_PANIC=<verb>` panics
/// in that verb once its invocation is set up, so tests can drive the panic path with a real
/// panic. Release builds have no such feature, so no variable can trigger it.
#[cfg(feature = "fault-injection")]
pub(crate) fn test_panic(verb: &str) {
    if std::env::var("IBDRIVER_TEST_PANIC").is_ok_and(|v| v == verb) {
        panic!("IBDRIVER_TEST_PANIC");
    }
}

#[cfg(not(feature = "fault-injection"))]
pub(crate) fn test_panic(_verb: &str) {}

/// The verb table: one line a verb, each verb's `run` in its own file under `verbs/`. The agent's
/// verbs get their invocation from `HandlerEnvironment.json` first; the others take their
/// command line's values.
fn dispatch(cmd: Command) -> i32 {
    match cmd {
        Command::Install => agent_verb(Operation::Install, verbs::install::run),
        Command::Enable => agent_verb(Operation::Enable, verbs::enable::run),
        Command::Disable => agent_verb(Operation::Disable, verbs::disable::run),
        Command::Uninstall => agent_verb(Operation::Uninstall, verbs::uninstall::run),
        Command::Update => agent_verb(Operation::Update, verbs::update::run),
        Command::Worker { handler_dir, seq } => verbs::worker::run(&handler_dir, seq),
        Command::Monitor { handler_dir } => verbs::monitor::run(&handler_dir),
        Command::Plan {
            json,
            settings,
            sysfs,
        } => verbs::plan::run(settings.as_deref(), sysfs.as_deref(), json),
        Command::Fetch {
            url,
            sha256,
            into,
            size,
            extract,
        } => verbs::fetch::run(url, sha256, size, extract, &into),
        Command::Apply { settings } => verbs::apply::run(&Root::from_env(), settings.as_deref()),
        Command::Diagnose { out } => verbs::diagnose::run(&Root::from_env(), &out),
        Command::Health { json } => verbs::health::run(json),
        Command::Version => verbs::print(&format!("ibdriver {}", env!("IBDRIVER_VERSION"))),
        Command::Help => verbs::print(cli::USAGE),
    }
}

/// An agent verb: the invocation from the agent's environment, then the verb, logged.
fn agent_verb(operation: Operation, run: fn(&Invocation) -> i32) -> i32 {
    match Invocation::open(AgentContext::discover(), operation) {
        Ok(inv) => {
            let name = operation.as_str().to_lowercase();
            tracing::info!(verb = %name, seq = inv.agent.seq, version = %inv.agent.version(), "start");
            test_panic(&name);
            let code = run(&inv);
            tracing::info!(verb = %name, exit = code, "end");
            code
        }
        Err(code) => code,
    }
}
