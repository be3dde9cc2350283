//! Our logs: a size-capped, rotated `tracing` log in the agent's `logFolder`, and one line per
//! outcome in `/var/log/azure/ib-vmext-status`, where users of the real extension look.
//! Nothing secret reaches either: secrets are typed ([`crate::agent::settings::Secret`]) and URLs are
//! passed through [`crate::net::url::redact_url`] before they are logged.

use crate::sys::fsutil;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const LOG_FILE: &str = "ibdriver.log";
pub const MAX_LOG_BYTES: u64 = 4 * 1024 * 1024;
pub const KEEP_ROTATED: usize = 3;
pub const SUMMARY_LOG: &str = "var/log/azure/ib-vmext-status";
const MAX_SUMMARY_BYTES: u64 = 1024 * 1024;

/// Appends to `path`; when it would pass `max_bytes`, shifts `path.1..path.N` and starts anew.
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    state: Mutex<Option<(File, u64)>>,
}

impl RotatingFile {
    pub fn new(path: PathBuf, max_bytes: u64, keep: usize) -> Self {
        RotatingFile {
            path,
            max_bytes,
            keep,
            state: Mutex::new(None),
        }
    }

    fn rotate(&self) -> io::Result<()> {
        // Renames move whatever is there (a planted link included) without following it.
        for i in (1..self.keep).rev() {
            let from = rotated(&self.path, i);
            if fs::symlink_metadata(&from).is_ok() {
                fs::rename(&from, rotated(&self.path, i + 1))?;
            }
        }
        if self.keep > 0 {
            fs::rename(&self.path, rotated(&self.path, 1))?;
        } else {
            fs::remove_file(&self.path)?;
        }
        Ok(())
    }

    pub fn append(&self, buf: &[u8]) -> io::Result<()> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let f = fsutil::open_append_private(&self.path)?;
            let len = f.metadata()?.len();
            *guard = Some((f, len));
        }
        let needs_rotation = guard
            .as_ref()
            .is_some_and(|(_, len)| *len > 0 && *len + buf.len() as u64 > self.max_bytes);
        if needs_rotation {
            *guard = None;
            // Another process may have rotated already; the next open starts a fresh file either way.
            let _ = self.rotate();
            let f = fsutil::open_append_private(&self.path)?;
            let len = f.metadata()?.len();
            *guard = Some((f, len));
        }
        let (f, len) = guard.as_mut().expect("opened above");
        f.write_all(buf)?;
        *len += buf.len() as u64;
        Ok(())
    }
}

fn rotated(path: &Path, i: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

#[derive(Clone)]
pub struct LogWriter(Arc<RotatingFile>);

impl Write for LogWriter {
    /// A log line that cannot be written (disk full, a file-size limit) is dropped, said once
    /// on stderr, and never an error: tracing's own report of a failed write goes through a
    /// printing macro that panics when stderr fails as well.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if let Err(e) = self.0.append(buf) {
            if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                crate::tell!("ibdriver: cannot write our log ({e}); going on without it");
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Send `tracing` output to `<log_folder>/ibdriver.log`, or to stderr for operator verbs.
/// Logging must never stop the handler, so failures fall back to stderr.
pub fn init(log_folder: Option<&Path>, verbose: bool) {
    let file = log_folder.and_then(|dir| open_log(dir, fsutil::create_private_dir).ok());
    install(file, verbose);
}

/// [`init`] for the agent's `logFolder`: a folder that is not a real directory (a symlink, a
/// file) is refused with the reason, and the caller reports it (code 201) with the log on
/// stderr. A log file that cannot be opened (a FIFO or a hard link planted there) leaves the
/// log on stderr with a warning; a symlink there is replaced.
pub fn init_agent(log_folder: &Path) -> io::Result<()> {
    if let Err(e) = fsutil::ensure_dir(log_folder, fsutil::PRIVATE_DIR_MODE) {
        install(None, false);
        return Err(e);
    }
    let file = match open_log(log_folder, |_| Ok(())) {
        Ok(w) => Some(w),
        Err(e) => {
            crate::tell!(
                "ibdriver: logging to stderr: cannot open {}: {e}",
                log_folder.join(LOG_FILE).display()
            );
            None
        }
    };
    install(file, false);
    Ok(())
}

fn open_log(dir: &Path, prepare: impl Fn(&Path) -> io::Result<()>) -> io::Result<LogWriter> {
    prepare(dir)?;
    let rf = RotatingFile::new(dir.join(LOG_FILE), MAX_LOG_BYTES, KEEP_ROTATED);
    rf.append(b"")?;
    Ok(LogWriter(Arc::new(rf)))
}

fn install(file: Option<LogWriter>, verbose: bool) {
    use tracing_subscriber::fmt;
    let level = if verbose {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    let builder = fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_target(false);
    let _ = match file {
        Some(w) => builder.with_writer(move || w.clone()).try_init(),
        None => builder
            .with_max_level(tracing::Level::WARN)
            .with_writer(io::stderr)
            .try_init(),
    };
}

/// Append one line to the compatible summary log under `root`. Best effort: a summary log that
/// cannot be written is a warning in our own log.
pub fn summary(root: &crate::host::Root, line: &str) {
    if let Err(e) = append_summary(&root.path(SUMMARY_LOG), line) {
        tracing::warn!(error = %e, "cannot append to the summary log");
    }
}

fn append_summary(path: &Path, line: &str) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fsutil::ensure_dir(dir, fsutil::SYSTEM_DIR_MODE)?;
    }
    if fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.len() > MAX_SUMMARY_BYTES) {
        fs::rename(path, rotated(path, 1))?;
    }
    let text = format!(
        "{} {}\n",
        crate::sys::clock::now_rfc3339(),
        line.replace('\n', " ")
    );
    fsutil::open_append_private(path)?.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_at_cap_and_keeps_n() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.log");
        let rf = RotatingFile::new(p.clone(), 100, 2);
        for _ in 0..20 {
            rf.append(&[b'a'; 40]).unwrap();
        }
        let total: u64 = fsutil::dir_names(d.path())
            .iter()
            .map(|n| fs::metadata(d.path().join(n)).unwrap().len())
            .sum();
        assert_eq!(
            fsutil::dir_names(d.path()),
            vec!["x.log", "x.log.1", "x.log.2"]
        );
        assert!(total <= 300, "{total}");
        assert!(fs::metadata(&p).unwrap().len() <= 100);
    }

    #[test]
    fn summary_log_replaces_a_planted_link_and_refuses_a_linked_folder() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let root = crate::host::Root::new(d.path());
        let victim = d.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let path = root.path(SUMMARY_LOG);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        symlink(&victim, &path).unwrap();
        summary(&root, "Install version 1");
        assert!(fs::read_to_string(&path)
            .unwrap()
            .ends_with("Install version 1\n"));
        assert!(!fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());

        let d2 = tempfile::tempdir().unwrap();
        let root2 = crate::host::Root::new(d2.path());
        fs::create_dir_all(d2.path().join("var/log")).unwrap();
        symlink(d.path(), d2.path().join("var/log/azure")).unwrap();
        summary(&root2, "x");
        assert!(!d.path().join("ib-vmext-status").exists());
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn agent_log_folder_must_be_a_real_directory() {
        let d = tempfile::tempdir().unwrap();
        let link = d.path().join("log");
        std::os::unix::fs::symlink(d.path(), &link).unwrap();
        let e = init_agent(&link).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(!d.path().join(LOG_FILE).exists());
    }

    #[test]
    fn rotation_moves_planted_links_without_following_them() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let p = d.path().join("x.log");
        std::os::unix::fs::symlink(&victim, rotated(&p, 1)).unwrap();
        let rf = RotatingFile::new(p.clone(), 100, 2);
        for _ in 0..10 {
            rf.append(&[b'a'; 40]).unwrap();
        }
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(fs::metadata(&p).unwrap().len() <= 100);
    }
}
