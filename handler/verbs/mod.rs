//! The commands: the agent's verbs (install, enable, disable, uninstall, update), the
//! timer's (monitor) and the operator's (plan, health, fetch, apply, diagnose).

pub mod apply;
pub mod diagnose;
pub mod disable;
pub mod enable;
pub mod fetch;
pub mod health;
pub mod install;
pub mod monitor;
pub mod plan;
pub mod uninstall;
pub mod update;
pub mod worker;

use crate::agent::invocation::Invocation;
use crate::error::Failure;
use crate::sys::fsutil;
use std::path::PathBuf;

/// Create the data directory; on failure log it and give the exit code.
pub(crate) fn prepare_data_dir(inv: &Invocation) -> Result<PathBuf, i32> {
    let data = inv.root.data_dir();
    fsutil::create_private_dir(&data).map_err(|e| {
        let f = Failure::state_io(&data, e);
        tracing::error!("{}: {f}", inv.operation.as_str());
        f.code.exit_code()
    })?;
    Ok(data)
}

/// Report a failure of install, disable, uninstall or update where users look: stderr (the
/// agent puts it into the handler status message), our log, the summary log and a telemetry
/// event. The settings status is left alone: it describes the last enable, which this failure
/// does not change.
pub(crate) fn report(inv: &Invocation, f: &Failure) {
    crate::tell!("ibdriver {}: {f}", inv.operation.as_str().to_lowercase());
    inv.log_failure(f);
}

/// `version` and `help`: one text to stdout.
pub(crate) fn print(text: &str) -> i32 {
    crate::say!("{text}");
    0
}
