//! The hostile-input suite: settings, the agent's environment, sequence numbers, corrupt state
//! and full disks, races, IMDS and artifact servers, archives, secrets, permissions under umask
//! 000 and command-line oddities. Every case states its exact outcome (exit, status and code,
//! files left untouched) and no case may see a panic, a hang past its bound or a leaked secret.

#[path = "../common/artifact_server.rs"]
mod artifact_server;
#[path = "../common/mod.rs"]
mod common;
#[macro_use]
mod support;

mod agent_env;
mod archives;
mod argv;
mod concurrency;
mod permissions;
mod secrets;
mod seqno;
mod servers;
mod settings;
mod state;

/// Cases whose expected outcome waits for a fix being made in parallel: they report "pending"
/// instead of failing, and the lead removes each entry once its fix is merged. The races
/// (`same_number_*`, `enable_then_disable_*`, `disable_stops_*`) hit their defect only now and
/// then and may pass by luck today; each has a deterministic twin listed beside it.
pub const PENDING: &[&str] = &[];
