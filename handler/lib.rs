//! Azure VM extension handler that installs and verifies InfiniBand/RDMA drivers.
//!
//! The pipeline, in module order:
//! argv ([`cli`]) -> agent environment ([`agent`]) -> settings ([`settings`], [`protected`])
//! -> host facts ([`host`]) -> plan ([`plan`]) -> stages ([`engine`], [`runner`], [`install`],
//! [`configure`], [`health`]) -> status ([`status`], [`events`], [`logging`]).
//! Around it: enable's synchronous part and the worker ([`enable`], [`worker`], [`lock`]), the
//! lifecycle verbs ([`lifecycle`]), the health monitor ([`monitor`]) and the operator verbs
//! ([`operator`], [`apply`], [`diagnose`]).

pub mod agent;
pub mod apply;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod configure;
pub mod diagnose;
pub mod enable;
pub mod engine;
pub mod error;
pub mod events;
pub mod faultpoint;
pub mod fetch;
pub mod fsutil;
pub mod health;
pub mod host;
pub mod install;
pub mod lifecycle;
pub mod lock;
pub mod logging;
pub mod monitor;
pub mod operator;
pub mod plan;
pub mod proc;
pub mod protected;
pub mod runner;
pub mod settings;
pub mod status;
pub mod worker;

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

use agent::AgentContext;
use cli::Command;
use enable::Invocation;
use error::{Code, Failure};
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
    let reported = status::report_panic(&location);
    tracing::error!(reported, "exiting after the panic");
    std::process::exit(Code::Internal.exit_code());
}

/// Test-only: built with the `fault-injection` feature, `IBDRIVER_TEST_PANIC=<verb>` panics
/// in that verb once its invocation is set up, so tests can drive the panic path with a real
/// panic. Release builds have no such feature, so no variable can trigger it.
#[cfg(feature = "fault-injection")]
fn test_panic(verb: &str) {
    if std::env::var("IBDRIVER_TEST_PANIC").is_ok_and(|v| v == verb) {
        panic!("IBDRIVER_TEST_PANIC");
    }
}

#[cfg(not(feature = "fault-injection"))]
fn test_panic(_verb: &str) {}

/// Set up logging and the invocation for an agent verb (`operation` as the status names it).
/// A log folder that is not a real directory is refused (code 201), reported in the status for
/// enable and on stderr for every verb.
fn agent_invocation(
    ctx: Result<AgentContext, agent::AgentError>,
    operation: &str,
) -> Result<Invocation, i32> {
    let ctx = match ctx {
        Ok(c) => c,
        Err(e) => {
            // Without HandlerEnvironment.json there is no status folder to write to.
            let f: Failure = e.into();
            logging::init(None, false);
            crate::tell!("ibdriver: {f}");
            tracing::error!("{f}");
            return Err(f.code.exit_code());
        }
    };
    let log_refused = logging::init_agent(&ctx.env.log_folder).err();
    for w in &ctx.vars.warnings {
        tracing::warn!("agent variable ignored: {w}");
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| ctx.handler_dir.join("bin/ibdriver"));
    let inv = Invocation {
        agent: ctx,
        root: Root::from_env(),
        exe,
    };
    status::set_panic_target(status::PanicTarget {
        status_path: inv.agent.status_path(),
        heartbeat_path: inv.agent.env.heartbeat_file.clone(),
        name: inv.name(),
        operation: operation.to_string(),
    });
    if let Some(e) = log_refused {
        let f = Failure::state_io(&inv.agent.env.log_folder, e);
        crate::tell!("ibdriver: {f}");
        if matches!(operation, "Disable" | "Uninstall") {
            // The extension must stay removable: these go on, logging to stderr only.
            logging::init(None, false);
            tracing::warn!("{f}; logging to stderr only");
            return Ok(inv);
        }
        let code = if operation == "Enable" {
            inv.fail(operation, &f, vec![])
        } else {
            inv.log_failure(operation, &f);
            f.code.exit_code()
        };
        return Err(code);
    }
    Ok(inv)
}

fn dispatch(cmd: Command) -> i32 {
    let agent_verb = |f: fn(&Invocation) -> i32, name: &str, operation: &str| -> i32 {
        match agent_invocation(AgentContext::discover(), operation) {
            Ok(inv) => {
                tracing::info!(verb = name, seq = inv.agent.seq, version = %inv.agent.version(), "start");
                test_panic(name);
                let code = f(&inv);
                tracing::info!(verb = name, exit = code, "end");
                code
            }
            Err(code) => code,
        }
    };
    match cmd {
        Command::Install => agent_verb(lifecycle::install, "install", "Install"),
        Command::Enable => agent_verb(enable::enable, "enable", "Enable"),
        Command::Disable => agent_verb(lifecycle::disable, "disable", "Disable"),
        Command::Uninstall => agent_verb(lifecycle::uninstall, "uninstall", "Uninstall"),
        Command::Update => agent_verb(lifecycle::update, "update", "Update"),
        Command::Worker { handler_dir, seq } => {
            let mut ctx = AgentContext::from_handler_dir(&handler_dir);
            if let Ok(c) = &mut ctx {
                c.seq = seq;
            }
            match agent_invocation(ctx, "Enable") {
                Ok(inv) => {
                    tracing::info!(seq, pid = std::process::id(), "worker start");
                    test_panic("worker");
                    let code = enable::worker(&inv);
                    tracing::info!(seq, exit = code, "worker end");
                    code
                }
                Err(code) => code,
            }
        }
        Command::Monitor { handler_dir } => {
            let Ok(ctx) = AgentContext::from_handler_dir(&handler_dir) else {
                // The handler directory is gone (removed without uninstall): nothing to report to.
                return 0;
            };
            let Ok(inv) = agent_invocation(Ok(ctx), "Monitor") else {
                return 0;
            };
            if lock::WorkerLock::new(&inv.root.data_dir())
                .holder()
                .is_some()
            {
                return 0; // the worker keeps the heartbeat itself
            }
            let mut report = monitor::check(&inv.root);
            if !report.healthy {
                // Self-repair between enables: put back what configure set up and was lost.
                if let Some(state) = configure::load_state(&inv.root.data_dir()) {
                    let done = configure::restore(&inv.root, &state);
                    if !done.is_empty() {
                        tracing::warn!("restored: {}", done.join("; "));
                        logging::summary(
                            &inv.root,
                            &format!("Monitor: restored {}", done.join("; ")),
                        );
                        report = monitor::check(&inv.root);
                    }
                }
            }
            monitor::write_heartbeat_for(&inv.agent, &report);
            0
        }
        Command::Plan { json, settings } => {
            logging::init(None, false);
            let public = match settings {
                None => settings::PublicSettings::default(),
                Some(p) => match operator::read_public_settings(&p) {
                    Ok(s) => s,
                    Err(e) => {
                        crate::tell!("ibdriver: {e}");
                        return Code::SettingsInvalid.exit_code();
                    }
                },
            };
            operator::plan(&Root::from_env(), &public, json)
        }
        Command::Fetch {
            url,
            sha256,
            into,
            size,
            extract,
        } => {
            logging::init(None, false);
            let req = fetch::Request {
                extract: extract.unwrap_or_else(|| fetch::is_tarball(&url)),
                url,
                sha256,
                size,
            };
            operator::fetch(&req, &into)
        }
        Command::Apply { settings } => apply::run(&Root::from_env(), settings.as_deref()),
        Command::Diagnose { out } => {
            logging::init(None, false);
            diagnose::run(&Root::from_env(), &out)
        }
        Command::Health { json } => {
            logging::init(None, false);
            operator::health(&Root::from_env(), json)
        }
        Command::Version => {
            crate::say!("ibdriver {}", env!("IBDRIVER_VERSION"));
            0
        }
        Command::Help => {
            crate::say!("{}", cli::USAGE);
            0
        }
    }
}
