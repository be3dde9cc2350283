//! Atomic, private file writes and small read helpers.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Write `bytes` to `path` so a reader sees the old content or the new, never a mix:
/// a private temp file in the same directory, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // tempfile creates the file with mode 0600.
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    crate::faultpoint::hit("write before rename", path);
    tmp.persist(path).map_err(|e| e.error)?;
    crate::faultpoint::hit("write after rename", path);
    if let Ok(d) = File::open(dir) {
        // Some filesystems refuse fsync on directories; the rename is still atomic.
        let _ = d.sync_all();
    }
    Ok(())
}

/// [`write_atomic`] for a system configuration file (`/etc/waagent.conf`, a repository file,
/// `/etc/modules-load.d/...`): it keeps the mode the file had, 0644 for a new one, since other
/// programs read it. Never for our own state or anything with a secret in it.
pub fn write_system_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    write_atomic(path, bytes)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Create a directory (and parents) readable by root only.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Open a file for appending, created with mode 0600.
pub fn open_append_private(path: &Path) -> io::Result<File> {
    crate::faultpoint::hit("append", path);
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Read a small sysfs/procfs-style text file, trimmed; `None` when absent or unreadable.
pub fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// Names of the entries of a directory, sorted; empty when it does not exist.
pub fn dir_names(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(path) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_replaces_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.status");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temp files left behind.
        assert_eq!(dir_names(dir.path()), vec!["x.status".to_string()]);
    }

    #[test]
    fn dir_names_of_missing_dir_is_empty() {
        assert!(dir_names(Path::new("/nonexistent/really")).is_empty());
    }
}
