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

/// The fields of `/proc/<pid>/stat` we read: state, parent, command name, start time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// One letter: `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: String,
    pub ppid: u32,
    /// `comm`: at most 15 bytes, may itself hold spaces and parentheses.
    pub comm: String,
    /// Field 22: clock ticks since boot.
    pub start: u64,
}

impl ProcStat {
    /// A zombie or a dead task holds no lock and does no work (its parent may never reap it).
    pub fn is_gone(&self) -> bool {
        matches!(self.state.as_str(), "Z" | "X" | "x")
    }
}

/// Parses one `/proc/<pid>/stat` line. The comm sits between the first `(` and the last `)`,
/// so a name such as `a) (b` cannot shift the fields after it.
pub fn parse_stat(stat: &str) -> Option<ProcStat> {
    let close = stat.rfind(')')?;
    let comm = stat.get(stat.find('(')? + 1..close)?.to_string();
    let mut fields = stat[close + 1..].split_whitespace();
    let state = fields.next()?.to_string();
    let ppid = fields.next()?.parse().ok()?;
    // Fields 5..21 lie between the parent (4) and the start time (22).
    let start = fields.nth(17)?.parse().ok()?;
    Some(ProcStat {
        state,
        ppid,
        comm,
        start,
    })
}

/// `/proc/<pid>/stat` of `pid`, parsed. Real /proc: processes are real.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The start time of a live process; `None` for a zombie or a process that is gone.
pub fn start_time(pid: u32) -> Option<u64> {
    proc_stat(pid).filter(|s| !s.is_gone()).map(|s| s.start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_a_command_name_with_parentheses_and_spaces() {
        // Fields 1-22 of a real line, the comm made hostile.
        let line = "4242 (a) (b c) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 \
                    1234 56 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.comm, "a) (b c");
        assert_eq!((s.state.as_str(), s.ppid, s.start), ("S", 17, 987654));
        assert!(!s.is_gone());
        for gone in ["Z", "X", "x"] {
            let z = parse_stat(&line.replace(") S ", &format!(") {gone} "))).unwrap();
            assert!(z.is_gone(), "{gone}");
        }
        for cut in ["4242 a S 17", "4242 (x) S", "4242 (x) S 17 1 2 3"] {
            assert_eq!(parse_stat(cut), None, "{cut}");
        }
        let me = proc_stat(std::process::id()).unwrap();
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        assert_eq!(Some(me.start), start_time(std::process::id()));
    }

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
        let zombie = || proc_stat(pid).is_some_and(|s| s.state == "Z");
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
