//! The names of what we keep in the data directory (`/var/lib/infiniband-driver-linux`, 0700), in one
//! place. Every file there is ours, written with `fsutil` (0600, temp + rename, no link
//! followed) and read with `fsutil::read_regular` (regular files only, bounded).

/// The enable checkpoint: stages done, attempts, outcome (`engine::checkpoint`).
pub const STATE: &str = "state.json";
/// The operator `apply` verb's checkpoint, kept apart from the agent's.
pub const APPLY_STATE: &str = "apply-state.json";
/// What enable asks of the worker: which sequence number, or stop (`engine::request`).
pub const REQUEST: &str = "request.json";
/// The worker's flock; held for the worker's whole life.
pub const WORKER_LOCK: &str = "worker.lock";
/// Who holds the lock: pid, process start time, sequence number.
pub const WORKER_PID: &str = "worker.pid";
/// What configure set up, for restore and removal (`stages::configure`).
pub const CONFIGURE_STATE: &str = "configure.json";
/// An installer is (or was) running: what it installs, so a crash is noticed.
pub const INSTALLING: &str = "installing.json";
/// The installer's pid and start time, or `pending <nonce>` before it is spawned.
pub const INSTALLER_PID: &str = "installer.pid";
/// A repair asked for one reboot; it is never asked twice for the same kernel.
pub const REPAIR_REBOOT: &str = "repair-reboot.json";
/// Update's hand-over note to the new version's uninstall and enable.
pub const UPDATE_MARKER: &str = "update.json";
/// Verified artifacts, one directory per SHA-256.
pub const ARTIFACTS: &str = "artifacts";
/// Partial downloads, resumed by the next attempt.
pub const STAGING: &str = "staging";
/// The proxy variables enable saw, for a worker that systemd-run started clean
/// (`sys::runtime`).
pub const PROXY_ENV: &str = "proxy-env.json";
