//! Crash points for the crash-point campaign (`tests/crash_points.rs`): every effect the worker
//! has (a file write before and after its rename, an append, a child started, a stage boundary)
//! calls [`hit`], and a test build can make the worker die at its k-th one, the way a real
//! crash would: SIGKILL to itself, no destructors, no flush.
//!
//! Only builds with the cargo feature `fault-injection` have any of this; the release package
//! does not enable it, so there `hit` is an empty function and no variable is read.
//!
//! With the feature, in a `worker` process only (enable, the monitor and the operator verbs
//! never count, so a test can aim at the worker through enable's environment):
//! - `IBDRIVER_FAULT_LOG=path` appends `<pid> <ordinal> <effect> <subject>` for each effect;
//! - `IBDRIVER_FAULT_AT=k` kills the worker at its k-th effect, after logging it with
//!   ` (crash)` at the end of the line.
//!
//! Only the main thread counts: the heartbeat thread's first write would otherwise race with
//! the stages' effects, and the same k would name another effect from run to run.

use std::path::Path;

/// The variable that names the effect to crash at (the release build's check looks for this
/// name in the binary: present only when the feature is compiled in).
#[cfg(feature = "fault-injection")]
pub const AT_VAR: &str = "IBDRIVER_FAULT_AT";
#[cfg(feature = "fault-injection")]
pub const LOG_VAR: &str = "IBDRIVER_FAULT_LOG";

/// One effect is about to happen (or just happened): `effect` says which, `subject` names the
/// file, program or stage (only its last component is logged, so logs compare across runs).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn hit(_effect: &str, _subject: impl AsRef<Path>) {}

#[cfg(feature = "fault-injection")]
pub fn hit(effect: &str, subject: impl AsRef<Path>) {
    armed::hit(effect, subject.as_ref());
}

#[cfg(feature = "fault-injection")]
mod armed {
    use std::fs::File;
    use std::io::Write;
    use std::path::Path;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    struct Config {
        at: Option<u64>,
        log: Option<File>,
    }

    static CONFIG: OnceLock<Option<Config>> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);

    fn config() -> Option<&'static Config> {
        CONFIG
            .get_or_init(|| {
                if std::env::args().nth(1).as_deref() != Some("worker") {
                    return None;
                }
                let at = std::env::var(super::AT_VAR)
                    .ok()
                    .and_then(|v| v.trim().parse().ok());
                let log = std::env::var_os(super::LOG_VAR).and_then(|p| {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                        .ok()
                });
                (at.is_some() || log.is_some()).then_some(Config { at, log })
            })
            .as_ref()
    }

    pub fn hit(effect: &str, subject: &Path) {
        let Some(cfg) = config() else {
            return;
        };
        if std::thread::current().name() != Some("main") {
            return;
        }
        let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
        let crash = cfg.at == Some(n);
        if let Some(mut log) = cfg.log.as_ref() {
            let name = subject
                .file_name()
                .unwrap_or(subject.as_os_str())
                .to_string_lossy();
            let line = format!(
                "{} {n} {effect} {name}{}\n",
                std::process::id(),
                if crash { " (crash)" } else { "" }
            );
            // One write(2) on an O_APPEND file: the line is in the file before the kill.
            let _ = log.write_all(line.as_bytes());
        }
        if crash {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            std::process::abort();
        }
    }
}
