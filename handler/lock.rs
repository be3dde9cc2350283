//! One worker at a time: an exclusive `flock` on `worker.lock` in the data directory, plus a
//! record of the holder's pid and start time so disable can stop exactly our own process,
//! never one found by name.

use crate::fsutil;
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct WorkerLock {
    path: PathBuf,
    owner: PathBuf,
}

pub struct Held {
    _lock: Flock<File>,
}

impl WorkerLock {
    pub fn new(data_dir: &Path) -> Self {
        WorkerLock {
            path: data_dir.join("worker.lock"),
            owner: data_dir.join("worker.pid"),
        }
    }

    fn open(&self) -> std::io::Result<File> {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&self.path)
    }

    /// Take the lock now or say it is held (`Ok(None)`).
    pub fn try_acquire(&self) -> std::io::Result<Option<Held>> {
        let file = self.open()?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                let me = format!(
                    "{} {}\n",
                    std::process::id(),
                    start_time(std::process::id()).unwrap_or(0)
                );
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
        timeout: Duration,
        poll: Duration,
        give_up: impl Fn() -> bool,
    ) -> std::io::Result<Option<Held>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(h) = self.try_acquire()? {
                return Ok(Some(h));
            }
            if give_up() || Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(poll);
        }
    }

    pub fn is_held(&self) -> bool {
        match self.open() {
            Ok(f) => match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                Ok(_released_on_drop) => false,
                Err((_, e)) => e == nix::errno::Errno::EWOULDBLOCK,
            },
            Err(_) => false,
        }
    }

    /// The recorded holder, if that process still runs with the same start time.
    pub fn holder(&self) -> Option<u32> {
        let text = fsutil::read_trimmed(&self.owner)?;
        let mut it = text.split_whitespace();
        let pid: u32 = it.next()?.parse().ok()?;
        let start: u64 = it.next()?.parse().ok()?;
        (start_time(pid) == Some(start) && pid != std::process::id()).then_some(pid)
    }
}

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks since boot). The comm field may
/// hold spaces and parentheses, so parse after the last `)`. Real /proc: processes are real.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_and_released_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let l = WorkerLock::new(d.path());
        assert!(!l.is_held());
        let held = l.try_acquire().unwrap().expect("free");
        assert!(l.is_held());
        assert!(l.try_acquire().unwrap().is_none());
        // We hold it ourselves: holder() never names the caller.
        assert_eq!(l.holder(), None);
        drop(held);
        assert!(!l.is_held());
        let waited = l
            .acquire(Duration::from_millis(50), Duration::from_millis(5), || {
                false
            })
            .unwrap();
        assert!(waited.is_some());
    }

    #[test]
    fn own_start_time_is_readable() {
        assert!(start_time(std::process::id()).is_some());
        assert_eq!(start_time(u32::MAX), None);
    }
}
