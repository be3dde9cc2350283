//! Atomic, private file writes and small read helpers.
//!
//! Every file we create or append to goes through here, so a link planted at one of our paths
//! (by anyone who can write to a folder we use) is replaced by a rename or refused by
//! `O_NOFOLLOW`, never written through, and every file and directory gets its mode explicitly,
//! whatever the umask of the process that started us.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of the files we create: our state, status and logs are root's business only.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of the directories holding our state.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of the system directories we may have to create (`/etc/modules-load.d`,
/// `/var/log/azure`, `/etc/systemd/system`): what the distributions ship them with.
pub const SYSTEM_DIR_MODE: u32 = 0o755;

/// Write `bytes` to `path` so a reader sees the old content or the new, never a mix:
/// a private temp file in the same directory, fsync, rename, fsync of the directory.
/// The rename replaces whatever is at `path` (a planted symlink included) without following it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, bytes, PRIVATE_FILE_MODE)
}

/// [`write_atomic`] with the file's mode set on the temp file before the rename, so no path
/// lookup after it can be swapped for a link.
fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // tempfile creates with O_EXCL and 0600 (less under a stricter umask): set it exactly.
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    crate::sys::faultpoint::hit("write before rename", path);
    tmp.persist(path).map_err(|e| e.error)?;
    crate::sys::faultpoint::hit("write after rename", path);
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
    // The mode of the file itself, not of what a link there points at.
    let mode = fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.file_type().is_file())
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    write_atomic_mode(path, bytes, mode)
}

fn refused(path: &Path, what: &str) -> io::Error {
    io::Error::other(format!(
        "{} {what}; refusing to use it (remove it and run the command again)",
        path.display()
    ))
}

/// Make sure `path` is a real directory (not a symlink to one), creating it and its missing
/// parents with `mode` set exactly, whatever the umask. An existing directory keeps its mode.
pub fn ensure_dir(path: &Path, mode: u32) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => return Err(refused(path, "is a symbolic link")),
        Ok(m) if !m.is_dir() => return Err(refused(path, "exists and is not a directory")),
        Ok(_) => return Ok(()),
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if fs::symlink_metadata(parent).is_err() {
            // Missing parents are system directories (`/var/log/azure`), readable by all.
            ensure_dir(parent, SYSTEM_DIR_MODE)?;
        }
    }
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => fs::set_permissions(path, fs::Permissions::from_mode(mode)),
        // Another process made it in the meantime: check what it is.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => ensure_dir(path, mode),
        Err(e) => Err(e),
    }
}

/// A system directory (`/etc/modules-load.d`, `/etc/systemd/system`, `/etc/dkms`) that may be
/// missing on a minimal image: created 0755 whatever the umask. It is the distribution's, not
/// ours, so an existing one is taken as it is, even through a symlink.
pub fn ensure_system_dir(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    ensure_dir(path, SYSTEM_DIR_MODE)
}

/// A directory of our own state, readable by root only: created 0700 (and any missing parents
/// 0755, as system directories are), a symlink there refused, and an existing one that others
/// can read or write made 0700 again.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if fs::symlink_metadata(parent).is_err() {
            ensure_dir(parent, SYSTEM_DIR_MODE)?;
        }
    }
    ensure_dir(path, PRIVATE_DIR_MODE)?;
    let m = fs::symlink_metadata(path)?;
    if m.permissions().mode() & 0o7777 != PRIVATE_DIR_MODE {
        fs::set_permissions(path, fs::Permissions::from_mode(PRIVATE_DIR_MODE))?;
    }
    Ok(())
}

fn open_append_nofollow(path: &Path, create_new: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.append(true).mode(PRIVATE_FILE_MODE);
    if create_new {
        o.create_new(true);
    } else {
        o.create(true);
    }
    // O_NONBLOCK: a FIFO planted at the path must not hang us (it is refused below).
    o.custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)
}

/// Open a file of ours for appending, created with mode 0600. A symlink at `path` is replaced
/// by a new file (the link's target is never opened); anything else that is not a plain file
/// of ours (a FIFO, a device, a hard link to some other file) is refused. An existing file
/// that others may read is made 0600.
pub fn open_append_private(path: &Path) -> io::Result<File> {
    crate::sys::faultpoint::hit("append", path);
    let f = match open_append_nofollow(path, false) {
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            fs::remove_file(path)?;
            // create_new: if a link is planted again in between, this fails instead of following.
            open_append_nofollow(path, true)?
        }
        other => other?,
    };
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(refused(path, "is not a regular file"));
    }
    if m.nlink() > 1 {
        return Err(refused(path, "has other hard links"));
    }
    if m.permissions().mode() & 0o077 != 0 {
        f.set_permissions(fs::Permissions::from_mode(PRIVATE_FILE_MODE))?;
    }
    Ok(f)
}

/// Open (creating it 0600) a file of ours for reading and writing without truncating it, e.g.
/// a lock file. Anything but a plain file at `path`, a symlink included, is refused.
pub fn open_private_rw(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(PRIVATE_FILE_MODE)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                refused(path, "is a symbolic link")
            } else {
                e
            }
        })?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(refused(path, "is not a regular file"));
    }
    if m.nlink() > 1 {
        return Err(refused(path, "has other hard links"));
    }
    if m.permissions().mode() & 0o077 != 0 {
        f.set_permissions(fs::Permissions::from_mode(PRIVATE_FILE_MODE))?;
    }
    Ok(f)
}

/// Is `path` a real directory (a symlink to one does not count)?
pub fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// The most any of our state, settings or sysfs/procfs reads take in.
pub const MAX_READ: u64 = 8 * 1024 * 1024;

/// Read a file that must be a regular file, at most `max` bytes. Opened non-blocking, so a
/// FIFO (or a device) planted where we keep state is an error at once, never a wait; bigger
/// than `max` is an error too, so a planted huge file cannot exhaust memory.
pub fn read_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(refused(path, "is not a regular file"));
    }
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(refused(path, &format!("is larger than {max} bytes")));
    }
    Ok(buf)
}

/// [`read_regular`] of a text file (bounded by [`MAX_READ`]).
pub fn read_text(path: &Path) -> io::Result<String> {
    String::from_utf8(read_regular(path, MAX_READ)?).map_err(|_| refused(path, "is not UTF-8 text"))
}

/// Read a small sysfs/procfs-style text file, trimmed; `None` when absent or unreadable.
pub fn read_trimmed(path: &Path) -> Option<String> {
    read_text(path).ok().map(|s| s.trim().to_string())
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
    use std::os::unix::fs::symlink;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn atomic_write_replaces_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.status");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(mode(&p), 0o600);
        // No temp files left behind.
        assert_eq!(dir_names(dir.path()), vec!["x.status".to_string()]);
    }

    /// The umask itself is exercised through the binary (tests/hostile/permissions.rs): changing
    /// it here would race with the other test threads.
    #[test]
    fn files_and_dirs_get_their_documented_mode() {
        let dir = tempfile::tempdir().unwrap();
        let l = dir.path().join("l.log");
        open_append_private(&l).unwrap();
        assert_eq!(mode(&l), 0o600);
        let d = dir.path().join("d1/d2/data");
        create_private_dir(&d).unwrap();
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&dir.path().join("d1")), 0o755);
        assert_eq!(mode(&dir.path().join("d1/d2")), 0o755);
        let s = dir.path().join("s1/s2");
        ensure_dir(&s, SYSTEM_DIR_MODE).unwrap();
        assert_eq!(mode(&s), 0o755);
        let e = dir.path().join("etc/modules-load.d");
        ensure_system_dir(&e).unwrap();
        assert_eq!(mode(&e), 0o755);
        assert_eq!(mode(&dir.path().join("etc")), 0o755);
        // An existing data directory others could enter is closed again; an existing log
        // file others could read too.
        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        create_private_dir(&open).unwrap();
        assert_eq!(mode(&open), 0o700);
        fs::set_permissions(&l, fs::Permissions::from_mode(0o644)).unwrap();
        open_append_private(&l).unwrap();
        assert_eq!(mode(&l), 0o600);
    }

    #[test]
    fn a_symlink_at_our_path_is_replaced_or_refused_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();

        let status = dir.path().join("0.status");
        symlink(&victim, &status).unwrap();
        write_atomic(&status, b"new").unwrap();
        assert!(!fs::symlink_metadata(&status)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(&status).unwrap(), b"new");

        let log = dir.path().join("ibdriver.log");
        symlink(&victim, &log).unwrap();
        open_append_private(&log)
            .unwrap()
            .write_all(b"line\n")
            .unwrap();
        assert_eq!(fs::read(&log).unwrap(), b"line\n");
        assert_eq!(mode(&log), 0o600);

        // A dangling link must not create its target either.
        let ghost = dir.path().join("ghost");
        let log2 = dir.path().join("other.log");
        symlink(&ghost, &log2).unwrap();
        open_append_private(&log2).unwrap();
        assert!(!ghost.exists());

        let lock = dir.path().join("worker.lock");
        symlink(&victim, &lock).unwrap();
        let e = open_private_rw(&lock).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");

        let sysf = dir.path().join("etc.conf");
        symlink(&victim, &sysf).unwrap();
        write_system_file(&sysf, b"conf").unwrap();
        assert_eq!(mode(&sysf), 0o644);

        for d in ["data", "logs"] {
            let p = dir.path().join(d);
            symlink(dir.path(), &p).unwrap();
            let e = create_private_dir(&p).unwrap_err();
            assert!(e.to_string().contains("is a symbolic link"), "{e}");
            assert!(ensure_dir(&p, SYSTEM_DIR_MODE).is_err());
        }
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(mode(&victim), 0o644);
        assert!(!dir.path().join("ghost").exists());
    }

    #[test]
    fn fifos_hard_links_and_files_in_the_way_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(open_append_private(&fifo).is_err());
        assert!(open_private_rw(&fifo).is_err());
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let hard = dir.path().join("hard.log");
        fs::hard_link(&victim, &hard).unwrap();
        assert!(open_append_private(&hard).is_err());
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        let file = dir.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(create_private_dir(&file).is_err());
        assert!(!is_real_dir(&file));
    }

    #[test]
    fn dir_names_of_missing_dir_is_empty() {
        assert!(dir_names(Path::new("/nonexistent/really")).is_empty());
    }
}
