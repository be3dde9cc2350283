//! What running the install commands involves beyond running a command. Each runs tracked: a
//! track file in the data directory names the run before it starts and its pid once it runs,
//! and the same name is a mark in its environment; a worker that replaces a killed one finds an
//! installer still running by either and waits for it instead of starting a second. And what
//! mlnxofedinstall's exit code means.

use crate::error::{Code, Failure};
use crate::plan::recipe;
use std::path::Path;
use std::time::Duration;

/// The track file, in the data directory.
pub(super) const TRACK_FILE: &str = "installer.pid";

/// The environment variable that marks an installer we started (its value: the track file).
const INSTALLER_MARK: &str = "IBDRIVER_INSTALLER_OF";

/// One tracked run of an install command.
pub(super) struct Track<'a> {
    path: &'a Path,
    nonce: String,
}

impl<'a> Track<'a> {
    /// Before the start: the track file says `pending <nonce>` and `env` gets the mark.
    pub(super) fn begin(path: &'a Path, env: &mut Vec<(String, String)>) -> Result<Self, Failure> {
        // This run's installer and everything it starts carry a mark in their environment that
        // names this run, recorded in `track` before the start: a worker that died before it
        // recorded the pid (or after the installer forked) still finds them, while what an
        // installer that finished left running (its track file is gone) is never waited for.
        let nonce = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        if let Err(e) =
            crate::sys::fsutil::write_atomic(path, format!("pending {nonce}\n").as_bytes())
        {
            return Err(Failure::state_io(path, e));
        }
        env.push((INSTALLER_MARK.into(), installer_mark(path, &nonce)));
        Ok(Track { path, nonce })
    }

    /// The child started: record its pid and start time. A failure only costs the quick
    /// answer; the mark still finds it.
    pub(super) fn record(&self, pid: u32) {
        let start = crate::engine::lock::start_time(pid).unwrap_or(0);
        let nonce = &self.nonce;
        let line = format!("{pid} {start} {nonce}\n");
        if let Err(e) = crate::sys::fsutil::write_atomic(self.path, line.as_bytes()) {
            tracing::warn!(error = %e, "cannot record the installer's pid");
        }
    }

    /// The child ended: nothing is left to wait for.
    pub(super) fn end(&self) {
        let _ = std::fs::remove_file(self.path);
    }
}

/// Wait for an installer an interrupted run left running (up to an hour); stopped while
/// waiting, the stage is superseded.
pub(super) fn wait_for_orphan(
    track: &Path,
    keep_going: &dyn Fn() -> bool,
    progress: &dyn Fn(&str),
) -> Result<(), Failure> {
    let Some(pid) = orphan_installer(track) else {
        return Ok(());
    };
    progress("waiting for the installer an interrupted run started");
    tracing::warn!(
        pid,
        "an installer from an interrupted run is still running; waiting for it"
    );
    let tick = Duration::from_millis(200);
    let (stopped, _) = crate::sys::clock::poll(Duration::from_secs(3600), tick, || {
        use crate::sys::clock::Look;
        if orphan_installer(track).is_none() {
            Look::Done(false)
        } else if !keep_going() {
            Look::Done(true)
        } else {
            Look::NotYet(false)
        }
    });
    if stopped {
        return Err(Failure::new(
            Code::Superseded,
            "superseded while waiting for the installer",
        ));
    }
    Ok(())
}

/// An installer a killed worker left running: its pid, while that process lives. The pid
/// record is the quick answer; the environment mark finds an installer whose worker died
/// before recording it, and the children of one whose main process already ended.
fn orphan_installer(track: &Path) -> Option<u32> {
    let text = crate::sys::fsutil::read_trimmed(track)?;
    let fields: Vec<&str> = text.split_whitespace().collect();
    let recorded = match fields[..] {
        [pid, start, _] => pid
            .parse::<u32>()
            .ok()
            .filter(|p| start.parse::<u64>().ok() == crate::engine::lock::start_time(*p)),
        _ => None,
    };
    let nonce = fields.last()?;
    recorded.or_else(|| {
        marked_process(&format!(
            "{INSTALLER_MARK}={}",
            installer_mark(track, nonce)
        ))
    })
}

/// The value of [`INSTALLER_MARK`] for one run of a tracked installer.
fn installer_mark(track: &Path, nonce: &str) -> String {
    format!("{}#{nonce}", track.display())
}

/// A live process (not this one) whose environment holds exactly `entry`. Real /proc: the
/// processes are real, whatever the host root.
fn marked_process(entry: &str) -> Option<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        if pid == me || crate::engine::lock::start_time(pid).is_none() {
            return None;
        }
        let environ = std::fs::read(e.path().join("environ")).ok()?;
        environ
            .split(|b| *b == 0)
            .any(|v| v == entry.as_bytes())
            .then_some(pid)
    })
}

/// A failed mlnxofedinstall, with what its exit code means.
pub(super) fn mlnxofedinstall_failed(f: Failure) -> Failure {
    let code = f.process_exit();
    let mut failure = Failure::new(
        Code::InstallerFailed,
        format!(
            "mlnxofedinstall exited {}: {}; {}",
            code.map(|c| c.to_string())
                .unwrap_or_else(|| "abnormally".into()),
            code.map(recipe::mlnxofedinstall_exit)
                .unwrap_or("the installer failed"),
            f.message
        ),
    );
    failure.cause = f.cause;
    failure
}
