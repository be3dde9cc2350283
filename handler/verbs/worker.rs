//! `worker`: the detached process enable starts (`engine::spawn`); not for operators.

use crate::agent::environment::AgentContext;
use crate::agent::invocation::{Invocation, Operation};
use std::path::Path;

pub fn run(handler_dir: &Path, seq: u64) -> i32 {
    let mut ctx = AgentContext::from_handler_dir(handler_dir);
    if let Ok(c) = &mut ctx {
        c.seq = seq;
    }
    match Invocation::open(ctx, Operation::Enable) {
        Ok(inv) => {
            tracing::info!(seq, pid = std::process::id(), "worker start");
            crate::test_panic("worker");
            let code = crate::engine::worker::run(&inv);
            tracing::info!(seq, exit = code, "worker end");
            code
        }
        Err(code) => code,
    }
}
