//! Waiting for cloud-init and for the package manager's locks before touching packages
//! (docs/DOMAIN.md, "Package locks and cloud-init"): bounded by `lockTimeoutSeconds`, then a
//! dedicated code. Locks are only observed (fcntl F_GETLK, pid files), never taken.

use crate::engine::lock::proc_stat;
use crate::error::{Code, Failure};
use crate::host::Root;
use crate::plan::recipe::Family;
use std::path::Path;
use std::time::{Duration, Instant};

/// Is a write lock held on `path` by another process? dpkg, apt and rpm use fcntl locks.
pub fn fcntl_locked(path: &Path) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new().read(true).open(path).ok()?;
    let mut fl = nix::libc::flock {
        l_type: nix::libc::F_WRLCK as i16,
        l_whence: nix::libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    // SAFETY: F_GETLK only fills `fl`, which lives for the whole call.
    let rc = unsafe { nix::libc::fcntl(f.as_raw_fd(), nix::libc::F_GETLK, &mut fl) };
    (rc == 0 && fl.l_type != nix::libc::F_UNLCK as i16).then_some(fl.l_pid)
}

/// A pid file naming a live process (zypper, dnf).
fn pid_file_alive(path: &Path) -> Option<i32> {
    let pid: i32 = crate::sys::fsutil::read_trimmed(path)?.parse().ok()?;
    (pid > 0 && crate::engine::lock::start_time(pid as u32).is_some()).then_some(pid)
}

/// The cloud-init process we run under, if any (`ibdriver apply` from user-data's `runcmd`):
/// cloud-init cannot finish before we do, so waiting for it would only run out the clock.
/// Walks our own ancestors (never more than 64 of them) for a process named `cloud-init`.
pub fn cloud_init_ancestor() -> Option<u32> {
    let mut pid = proc_stat(std::process::id())?.ppid;
    for _ in 0..64 {
        if pid <= 1 {
            return None;
        }
        let stat = proc_stat(pid)?;
        if stat.comm == "cloud-init" {
            return Some(pid);
        }
        pid = stat.ppid;
    }
    None
}

/// What is busy right now, in words; `None` when the way is clear. `under_cloud_init`: we are
/// cloud-init's own child, so it is not waited for (the package locks still are).
pub fn busy(root: &Root, f: Family, under_cloud_init: bool) -> Option<String> {
    // cloud-init's generator writes run/cloud-init/enabled when it will run this boot (and
    // `disabled` when not); result.json marks the end of its last stage.
    let ci = root.path("run/cloud-init");
    if !under_cloud_init
        && ci.join("enabled").exists()
        && !ci.join("disabled").exists()
        && !ci.join("result.json").exists()
    {
        return Some("cloud-init has not finished".into());
    }
    let fcntl_files: &[&str] = match f {
        Family::Apt => &[
            "var/lib/dpkg/lock-frontend",
            "var/lib/dpkg/lock",
            "var/lib/apt/lists/lock",
            "var/cache/apt/archives/lock",
        ],
        Family::Dnf | Family::Yum | Family::Tdnf | Family::Zypper => &["var/lib/rpm/.rpm.lock"],
    };
    for rel in fcntl_files {
        if let Some(pid) = fcntl_locked(&root.path(rel)) {
            return Some(format!("/{rel} is locked by process {pid}"));
        }
    }
    let pid_files: &[&str] = match f {
        Family::Zypper => &["run/zypp.pid"],
        Family::Dnf | Family::Yum => &[
            "var/cache/dnf/metadata_lock.pid",
            "var/lib/dnf/rpmdb_lock.pid",
            "var/run/yum.pid",
        ],
        Family::Tdnf => &["var/run/.tdnf-instance-lockfile"],
        Family::Apt => &[],
    };
    for rel in pid_files {
        if let Some(pid) = pid_file_alive(&root.path(rel)) {
            return Some(format!("/{rel} names running process {pid}"));
        }
    }
    None
}

/// Wait until nothing is busy, at most `timeout`, checking every `poll`.
pub fn wait(
    root: &Root,
    f: Family,
    timeout: Duration,
    poll: Duration,
    keep_going: impl Fn() -> bool,
) -> Result<(), Failure> {
    let start = Instant::now();
    let mut logged = false;
    let parent = cloud_init_ancestor();
    if let Some(pid) = parent {
        tracing::info!(
            pid,
            "running under cloud-init: not waiting for it to finish, only for the package locks"
        );
    }
    let (result, _) = crate::sys::clock::poll(timeout, poll, || {
        use crate::sys::clock::Look;
        let Some(what) = busy(root, f, parent.is_some()) else {
            if logged {
                tracing::info!(
                    waited_s = start.elapsed().as_secs(),
                    "package manager is free"
                );
            }
            return Look::Done(Ok(()));
        };
        if !keep_going() {
            return Look::Done(Err(Failure::new(
                Code::Superseded,
                "superseded while waiting for locks",
            )));
        }
        if !logged {
            tracing::info!("waiting: {what}");
            logged = true;
        }
        // What the wait ends with if the lock is still held when the time is up.
        Look::NotYet(Err(Failure::new(
            Code::LockTimeout,
            format!(
                "waited {} s and {what}; let it finish (unattended upgrades, cloud-init or another extension) \
                 or raise lockTimeoutSeconds, then run enable again",
                timeout.as_secs()
            ),
        )))
    });
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn sees_an_fcntl_lock_held_by_another_process() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::new(d.path());
        let lock = root.path("var/lib/dpkg/lock-frontend");
        std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
        std::fs::write(&lock, "").unwrap();
        assert_eq!(busy(&root, Family::Apt, false), None);
        let mut holder = Command::new("python3")
            .args(["-c", "import fcntl,sys,time; f=open(sys.argv[1],'w'); fcntl.lockf(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(30)"])
            .arg(&lock)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        let what = busy(&root, Family::Apt, false).expect("lock seen");
        assert!(
            what.contains("lock-frontend") && what.contains(&holder.id().to_string()),
            "{what}"
        );
        let e = wait(
            &root,
            Family::Apt,
            Duration::from_millis(300),
            Duration::from_millis(50),
            || true,
        )
        .unwrap_err();
        assert_eq!(e.code, Code::LockTimeout);
        holder.kill().unwrap();
        holder.wait().unwrap();
        wait(
            &root,
            Family::Apt,
            Duration::from_millis(300),
            Duration::from_millis(50),
            || true,
        )
        .unwrap();
    }

    #[test]
    fn cloud_init_and_pid_files() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::new(d.path());
        std::fs::create_dir_all(root.path("run/cloud-init")).unwrap();
        // Present but disabled (or never enabled): not waited for.
        assert_eq!(busy(&root, Family::Zypper, false), None);
        std::fs::write(root.path("run/cloud-init/enabled"), "").unwrap();
        assert!(busy(&root, Family::Zypper, false)
            .unwrap()
            .contains("cloud-init"));
        // cloud-init's own child does not wait for cloud-init.
        assert_eq!(busy(&root, Family::Zypper, true), None);
        std::fs::write(root.path("run/cloud-init/result.json"), "{}").unwrap();
        assert_eq!(busy(&root, Family::Zypper, false), None);
        std::fs::write(root.path("run/zypp.pid"), std::process::id().to_string()).unwrap();
        assert!(busy(&root, Family::Zypper, false)
            .unwrap()
            .contains("zypp.pid"));
        std::fs::write(root.path("run/zypp.pid"), "999999999").unwrap();
        assert_eq!(busy(&root, Family::Zypper, false), None);
    }
}
