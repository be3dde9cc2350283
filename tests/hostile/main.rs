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

mod concurrency;
mod secrets;
mod seqno;
mod state;
// Written in parallel by other engineers; enabled at merge.
// mod archives;
// mod servers;
// mod agent_env;
// mod permissions;
// mod settings;
// mod argv;

/// Cases whose expected outcome waits for a fix being made in parallel: they report "pending"
/// instead of failing, and the lead removes each entry once its fix is merged. The races
/// (`same_number_*`, `enable_then_disable_*`, `disable_stops_*`) hit their defect only now and
/// then and may pass by luck today; each has a deterministic twin listed beside it.
pub const PENDING: &[&str] = &[
    // A status that cannot be written: exit 14, code 201 (today enable exits 0).
    "full_disk_status_folder",
    "status_folder_is_a_file",
    // Found by this suite, not yet on anyone's list: a FIFO where we read our own files blocks
    // the reader forever (the bounded run kills it), and RLIMIT_FSIZE kills us with SIGXFSZ
    // instead of failing the write with EFBIG.
    "mrseq_fifo_after_success",
    "settings_file_for_the_number_is_a_fifo",
    "state.json_fifo_after_success",
    "state.json_fifo_before_first_enable",
    "configure.json_fifo_after_success",
    "apply-state.json_fifo",
    "worker.pid_fifo_before_first_enable",
    "file_size_limit_on_the_enable",
];
