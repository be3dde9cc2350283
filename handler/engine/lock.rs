//! One worker at a time: an exclusive `flock` on `worker.lock` in the data directory, and a
//! record (`worker.pid`: pid, start time, sequence number) of who holds it. Others read the
//! record, never probe the lock (a probe would itself take the lock for an instant), and only
//! a process whose start time still matches counts, so disable stops exactly our own worker,
//! never one found by name or a recycled pid.

use crate::sys::clock::{poll as poll_wait, Look};
use crate::sys::fsutil;
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct WorkerLock {
    path: PathBuf,
    owner: PathBuf,
}

/// The lock, held until dropped.
pub struct Held {
    _lock: Flock<File>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub seq: u64,
}

/// Logged once when a lock taker starts waiting: an operator sees why nothing moves.
pub const WAITING: &str = "waiting for the worker lock: another worker or apply holds it";

impl WorkerLock {
    pub fn new(data_dir: &Path) -> Self {
        WorkerLock {
            path: data_dir.join("worker.lock"),
            owner: data_dir.join("worker.pid"),
        }
    }

    /// Take the lock now for sequence number `seq`, or `Ok(None)` when someone holds it.
    pub fn try_acquire(&self, seq: u64) -> std::io::Result<Option<Held>> {
        // Never through a link planted at the lock's path: that would create or lock its target.
        let file = fsutil::open_private_rw(&self.path)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                let pid = std::process::id();
                let me = format!("{pid} {} {seq}\n", start_time(pid).unwrap_or(0));
                fsutil::write_atomic(&self.owner, me.as_bytes())?;
                Ok(Some(Held { _lock: lock }))
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(std::io::Error::from(e)),
        }
    }

    /// Poll for the lock until `timeout`, giving up early when `give_up` says so.
    pub fn acquire(
        &self,
        seq: u64,
        timeout: Duration,
        poll: Duration,
        give_up: impl Fn() -> bool,
    ) -> std::io::Result<Option<Held>> {
        let mut said = false;
        poll_wait(timeout, poll, || match self.try_acquire(seq) {
            Ok(None) if !give_up() => {
                if !std::mem::replace(&mut said, true) {
                    tracing::info!(
                        seq,
                        holder = ?self.holder().map(|h| h.pid),
                        "{WAITING}"
                    );
                }
                Look::NotYet(Ok(None))
            }
            other => Look::Done(other),
        })
        .0
    }

    /// The worker holding the lock, if that process still runs (same pid and start time).
    /// Never names the calling process.
    pub fn holder(&self) -> Option<Holder> {
        let text = fsutil::read_trimmed(&self.owner)?;
        parse_holder(&text)
            .filter(|(h, start)| h.pid != std::process::id() && start_time(h.pid) == Some(*start))
            .map(|(h, _)| h)
    }
}

fn parse_holder(text: &str) -> Option<(Holder, u64)> {
    let mut it = text.split_whitespace();
    let pid = it.next()?.parse().ok()?;
    let start = it.next()?.parse().ok()?;
    let seq = it.next()?.parse().ok()?;
    Some((Holder { pid, seq }, start))
}

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks since boot) of a live process;
/// `None` for a zombie, which holds no lock and does no work (its parent may never reap it).
/// The comm field may hold spaces and parentheses, so parse after the last `)`.
/// Real /proc: processes are real.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    if matches!(fields.next()?, "Z" | "X" | "x") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_and_released_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let l = WorkerLock::new(d.path());
        let held = l.try_acquire(3).unwrap().expect("free");
        assert!(l.try_acquire(3).unwrap().is_none());
        // We hold it ourselves: holder() never names the caller.
        assert_eq!(l.holder(), None);
        drop(held);
        let waited = l
            .acquire(
                4,
                Duration::from_millis(50),
                Duration::from_millis(5),
                || false,
            )
            .unwrap();
        assert!(waited.is_some());
    }

    #[test]
    fn holder_must_be_alive_with_the_same_start_time() {
        let d = tempfile::tempdir().unwrap();
        let l = WorkerLock::new(d.path());
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = start_time(pid).unwrap();
        std::fs::write(d.path().join("worker.pid"), format!("{pid} {start} 7\n")).unwrap();
        assert_eq!(l.holder(), Some(Holder { pid, seq: 7 }));
        // A recycled pid has another start time.
        std::fs::write(
            d.path().join("worker.pid"),
            format!("{pid} {} 7\n", start + 1),
        )
        .unwrap();
        assert_eq!(l.holder(), None);
        std::fs::write(d.path().join("worker.pid"), format!("{pid} {start} 7\n")).unwrap();
        child.kill().unwrap();
        // Not yet reaped: a zombie is no holder.
        let zombie = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        };
        let (_, dead) =
            crate::sys::clock::poll(Duration::from_secs(30), Duration::from_millis(10), || {
                crate::sys::clock::Look::when(zombie())
            });
        assert!(dead, "the killed child never became a zombie");
        assert_eq!(l.holder(), None);
        child.wait().unwrap();
        assert_eq!(l.holder(), None);
        std::fs::write(d.path().join("worker.pid"), "garbage").unwrap();
        assert_eq!(l.holder(), None);
    }

    #[test]
    fn a_symlink_at_the_lock_path_is_refused_and_its_target_untouched() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::os::unix::fs::symlink(&victim, d.path().join("worker.lock")).unwrap();
        let e = WorkerLock::new(d.path())
            .try_acquire(1)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(!victim.exists());
        assert!(!d.path().join("worker.pid").exists());
    }

    #[test]
    fn own_start_time_is_readable() {
        assert!(start_time(std::process::id()).is_some());
        assert_eq!(start_time(u32::MAX), None);
    }
}
