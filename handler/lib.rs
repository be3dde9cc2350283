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

use agent::AgentContext;
use cli::Command;
use enable::Invocation;
use error::{Code, Failure};
use host::Root;

/// Run one command line; returns the process exit code. Never panics outward.
pub fn run(args: Vec<String>) -> i32 {
    let cmd = match cli::parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ibdriver: {e}\n{}", cli::USAGE);
            return Code::Usage.exit_code();
        }
    };
    match std::panic::catch_unwind(|| dispatch(cmd)) {
        Ok(code) => code,
        Err(_) => {
            // The panic hook already printed the location; keep the exit code honest.
            tracing::error!("internal error (panic); see stderr");
            Code::Internal.exit_code()
        }
    }
}

fn agent_invocation(ctx: Result<AgentContext, agent::AgentError>) -> Result<Invocation, i32> {
    let ctx = match ctx {
        Ok(c) => c,
        Err(e) => {
            // Without HandlerEnvironment.json there is no status folder to write to.
            let f: Failure = e.into();
            logging::init(None, false);
            eprintln!("ibdriver: {f}");
            tracing::error!("{f}");
            return Err(f.code.exit_code());
        }
    };
    logging::init(Some(&ctx.env.log_folder), false);
    for w in &ctx.vars.warnings {
        tracing::warn!("agent variable ignored: {w}");
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| ctx.handler_dir.join("bin/ibdriver"));
    Ok(Invocation {
        agent: ctx,
        root: Root::from_env(),
        exe,
    })
}

fn dispatch(cmd: Command) -> i32 {
    let agent_verb = |f: fn(&Invocation) -> i32, name: &str| -> i32 {
        match agent_invocation(AgentContext::discover()) {
            Ok(inv) => {
                tracing::info!(verb = name, seq = inv.agent.seq, version = %inv.agent.version(), "start");
                let code = f(&inv);
                tracing::info!(verb = name, exit = code, "end");
                code
            }
            Err(code) => code,
        }
    };
    match cmd {
        Command::Install => agent_verb(lifecycle::install, "install"),
        Command::Enable => agent_verb(enable::enable, "enable"),
        Command::Disable => agent_verb(lifecycle::disable, "disable"),
        Command::Uninstall => agent_verb(lifecycle::uninstall, "uninstall"),
        Command::Update => agent_verb(lifecycle::update, "update"),
        Command::Worker { handler_dir, seq } => {
            let mut ctx = AgentContext::from_handler_dir(&handler_dir);
            if let Ok(c) = &mut ctx {
                c.seq = seq;
            }
            match agent_invocation(ctx) {
                Ok(inv) => {
                    tracing::info!(seq, pid = std::process::id(), "worker start");
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
            let Ok(inv) = agent_invocation(Ok(ctx)) else {
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
                        eprintln!("ibdriver: {e}");
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
            println!("ibdriver {}", env!("IBDRIVER_VERSION"));
            0
        }
        Command::Help => {
            println!("{}", cli::USAGE);
            0
        }
    }
}
