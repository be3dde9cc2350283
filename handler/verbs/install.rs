//! `install`: prepares the data directory; the work happens in enable.

use crate::agent::invocation::Invocation;
use crate::sys::logging;

pub fn run(inv: &Invocation) -> i32 {
    if let Err(code) = super::prepare_data_dir(inv) {
        return code;
    }
    logging::summary(
        &inv.root,
        &format!("Install version {}", inv.agent.version()),
    );
    tracing::info!("installed");
    0
}
