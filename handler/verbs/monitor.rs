//! `monitor`: what the health timer runs every 5 minutes after enable has finished, so the
//! heartbeat stays fresh (the agent calls a handler Unresponsive once it is 600 s old) and
//! truthful. Between enables it also puts back what configure set up and was lost.

use crate::agent::environment::AgentContext;
use crate::agent::invocation::{Invocation, Operation};
use crate::agent::status::{self, HeartbeatState};
use crate::engine::lock::WorkerLock;
use crate::error::Code;
use crate::stages::{configure, verify};
use crate::sys::logging;
use std::path::Path;

/// Always exit 0: the timer's unit must not fail for what the heartbeat reports.
pub fn run(handler_dir: &Path) -> i32 {
    let Ok(ctx) = AgentContext::from_handler_dir(handler_dir) else {
        // The handler directory is gone (removed without uninstall): nothing to report to.
        return 0;
    };
    let Ok(inv) = Invocation::open(Ok(ctx), Operation::Monitor) else {
        return 0;
    };
    if WorkerLock::new(&inv.root.data_dir()).holder().is_some() {
        return 0; // the worker keeps the heartbeat itself
    }
    let mut report = verify::check(&inv.root);
    if !report.healthy {
        // Self-repair between enables: put back what configure set up and was lost.
        if let Some(state) = configure::load_state(&inv.root.data_dir()) {
            let done = configure::restore(&inv.root, &state);
            if !done.is_empty() {
                tracing::warn!("restored: {}", done.join("; "));
                logging::summary(&inv.root, &format!("Monitor: restored {}", done.join("; ")));
                report = verify::check(&inv.root);
            }
        }
    }
    write_heartbeat_for(&inv.agent, &report);
    0
}

pub fn write_heartbeat_for(agent: &AgentContext, report: &verify::HealthReport) {
    let (state, code) = if report.healthy {
        (HeartbeatState::Ready, Code::Success)
    } else {
        (HeartbeatState::NotReady, report.code)
    };
    if let Err(f) = status::write_heartbeat(&agent.env.heartbeat_file, state, code, &report.summary)
    {
        tracing::warn!("{f}");
    }
}
