//! `apply [--settings FILE]`: the engine without the agent (being built).

use crate::host::Root;
use std::path::Path;

pub fn run(_root: &Root, _settings: Option<&Path>) -> i32 {
    eprintln!("ibdriver: apply is not available yet");
    crate::error::Code::Internal.exit_code()
}
