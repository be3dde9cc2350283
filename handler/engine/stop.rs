//! Stopping the worker (disable, uninstall): ask through `request.json`, wait, and as a last
//! resort signal exactly the recorded process (pid and start time, never by name).

use crate::engine::lock::WorkerLock;
use crate::engine::request::{read_request, write_request, Request};
use crate::error::{Code, Failure};
use crate::sys::clock::{poll, Look};
use crate::sys::fsutil;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::time::Duration;

/// How long stopping the worker waits at each step: for the worker to leave by itself after
/// the stop request, after SIGTERM, after SIGKILL.
#[derive(Debug, Clone, Copy)]
pub struct StopWaits {
    pub request: Duration,
    pub term: Duration,
    pub kill: Duration,
}

pub const DISABLE_WAITS: StopWaits = StopWaits {
    request: Duration::from_secs(60),
    term: Duration::from_secs(10),
    kill: Duration::from_secs(5),
};

pub const UNINSTALL_WAITS: StopWaits = StopWaits {
    request: Duration::from_secs(30),
    term: Duration::from_secs(10),
    kill: Duration::from_secs(5),
};

/// Ask the worker to stop, wait for it, and as a last resort stop exactly that process.
/// The request is written even when no worker holds the lock yet: one that was just started
/// reads it before it takes the lock and leaves. Fails when the worker outlives SIGKILL
/// (for example stuck in the kernel).
pub fn stop_worker(data: &Path, waits: StopWaits) -> Result<(), Failure> {
    let seq = read_request(data).map(|r| r.seq).unwrap_or(0);
    // Never through a symlinked data directory: the request would land where it points.
    if fsutil::is_real_dir(data) {
        if let Err(f) = write_request(data, &Request { seq, stop: true }) {
            tracing::warn!("cannot ask the worker to stop: {f}");
        }
    }
    let lock = WorkerLock::new(data);
    let gone_within = |wait: Duration, pid: Option<u32>| {
        poll(wait, Duration::from_millis(50), || {
            let alive = lock
                .holder()
                .is_some_and(|h| pid.is_none_or(|p| p == h.pid));
            Look::when(!alive)
        })
        .1
    };
    if gone_within(waits.request, None) {
        return Ok(());
    }
    let Some(holder) = lock.holder() else {
        return Ok(());
    };
    let pid = holder.pid;
    tracing::warn!(pid, "worker did not stop in time; sending SIGTERM");
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    if gone_within(waits.term, Some(pid)) {
        return Ok(());
    }
    tracing::warn!(pid, "worker ignored SIGTERM; sending SIGKILL");
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    if gone_within(waits.kill, Some(pid)) {
        return Ok(());
    }
    Err(Failure::new(
        Code::DisableFailed,
        format!(
            "the worker (pid {pid}) is still running after SIGTERM and SIGKILL; see what holds it \
             with 'ps -o pid,stat,wchan -p {pid}', then disable or remove the extension again"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> StopWaits {
        StopWaits {
            request: Duration::from_millis(100),
            term: Duration::from_millis(300),
            kill: Duration::from_secs(2),
        }
    }

    /// A shell that runs `traps`, says it is ready, then `body`; it is registered as the worker.
    fn pretend_worker(data: &Path, traps: &str, body: &str) -> std::process::Child {
        let ready = data.join("ready");
        let child = std::process::Command::new("sh")
            .args(["-c", &format!("{traps}\n: > \"$0\"\n{body}")])
            .arg(&ready)
            .spawn()
            .unwrap();
        // It is signalled only once its traps are set.
        let (_, ready) =
            crate::sys::clock::poll(Duration::from_secs(30), Duration::from_millis(10), || {
                crate::sys::clock::Look::when(ready.exists())
            });
        assert!(ready, "the pretend worker never started");
        let start = crate::engine::lock::start_time(child.id()).unwrap();
        std::fs::write(
            data.join("worker.pid"),
            format!("{} {start} 3\n", child.id()),
        )
        .unwrap();
        child
    }

    #[test]
    fn no_worker_is_stopped_at_once_and_asked_to_stay_stopped() {
        let d = tempfile::tempdir().unwrap();
        stop_worker(d.path(), tiny()).unwrap();
        assert!(crate::engine::request::read_request(d.path()).unwrap().stop);
    }

    #[test]
    fn a_worker_that_ignores_the_request_and_sigterm_is_killed() {
        let d = tempfile::tempdir().unwrap();
        let mut child = pretend_worker(d.path(), "trap '' TERM", "while :; do sleep 0.1; done");
        stop_worker(d.path(), tiny()).unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
    }

    #[test]
    fn a_worker_that_leaves_on_sigterm_is_not_killed() {
        let d = tempfile::tempdir().unwrap();
        let mut child = pretend_worker(d.path(), "", "sleep 30");
        stop_worker(d.path(), tiny()).unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(15));
    }
}
