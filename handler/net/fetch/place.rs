//! Moving a verified result to its destination: an unpacked tree becomes the destination
//! directory or joins an existing one, a file goes into the destination directory. Unless the
//! destination is ours to replace, nothing already there is removed or replaced.

use super::error::{io_at, FetchError};
use super::request::Request;
use super::staging::Staging;
use crate::net::url::file_name;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Moves the verified (and unpacked) artifact to `dest` and returns where it now is: `dest`
/// itself for an archive, the file in `dest` otherwise.
pub(super) fn into_place(
    req: &Request,
    st: &Staging,
    dest: &Path,
    replace: bool,
) -> Result<PathBuf, FetchError> {
    crate::sys::faultpoint::hit("fetch moves into place", dest);
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        // 0755 whatever the umask; an existing directory (the user's DIR) is left as it is.
        crate::sys::fsutil::ensure_system_dir(parent).map_err(io_at(parent))?;
    }
    if req.extract {
        place_tree(st, dest, replace)?;
        Ok(dest.to_path_buf())
    } else {
        place_file(st, dest, &file_name(&req.url), replace)
    }
}

/// The unpacked tree, made 0755, becomes `dest`, or its entries join the directory there.
fn place_tree(st: &Staging, dest: &Path, replace: bool) -> Result<(), FetchError> {
    fs::set_permissions(&st.unpack, fs::Permissions::from_mode(0o755))
        .map_err(io_at(&st.unpack))?;
    if replace && fs::symlink_metadata(dest).is_ok() {
        fs::remove_dir_all(dest).map_err(io_at(dest))?;
    }
    if fs::symlink_metadata(dest).is_ok_and(|m| m.is_dir()) {
        merge_into(&st.unpack, dest)?;
    } else {
        move_new(&st.unpack, dest)?;
    }
    let _ = fs::remove_file(&st.part);
    Ok(())
}

/// An existing directory receives the entries, none of which may replace anything: all are
/// checked before the first moves, so a clash leaves DIR as it was.
fn merge_into(unpacked: &Path, dest: &Path) -> Result<(), FetchError> {
    let entries: Vec<_> = fs::read_dir(unpacked)
        .map_err(io_at(unpacked))?
        .collect::<Result<_, _>>()
        .map_err(io_at(unpacked))?;
    if let Some(clash) = entries
        .iter()
        .map(|e| dest.join(e.file_name()))
        .find(|t| fs::symlink_metadata(t).is_ok())
    {
        return Err(FetchError::Io {
            path: clash.display().to_string(),
            err: io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the archive has an entry of that name and it already exists; nothing was moved",
            ),
        });
    }
    for e in entries {
        move_new(&e.path(), &dest.join(e.file_name()))?;
    }
    let _ = fs::remove_dir(unpacked);
    Ok(())
}

/// The downloaded file, made 0644, goes into the directory `dest` (made 0755 if missing) as
/// `name`.
fn place_file(st: &Staging, dest: &Path, name: &str, replace: bool) -> Result<PathBuf, FetchError> {
    crate::sys::fsutil::ensure_system_dir(dest).map_err(io_at(dest))?;
    let target = dest.join(name);
    fs::set_permissions(&st.part, fs::Permissions::from_mode(0o644)).map_err(io_at(&st.part))?;
    if replace {
        fs::rename(&st.part, &target).map_err(io_at(&target))?;
    } else {
        move_new(&st.part, &target)?;
    }
    Ok(target)
}

/// Rename `from` to `to` only when nothing is at `to` (never replacing a user's file).
fn move_new(from: &Path, to: &Path) -> Result<(), FetchError> {
    use std::os::unix::ffi::OsStrExt;
    let exists = || FetchError::Exists {
        path: to.display().to_string(),
    };
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).ok();
    let (Some(cf), Some(ct)) = (c(from), c(to)) else {
        return Err(io_at(to)(io::Error::from(io::ErrorKind::InvalidInput)));
    };
    // The system call itself: glibc 2.17, the floor the release binary links against, has no
    // renameat2 wrapper.
    // SAFETY: two valid NUL-terminated paths; the call reads them and nothing else.
    let rc = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_renameat2,
            nix::libc::AT_FDCWD,
            cf.as_ptr(),
            nix::libc::AT_FDCWD,
            ct.as_ptr(),
            nix::libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(nix::libc::EEXIST) => Err(exists()),
        // A kernel before 3.15, or a filesystem without the flag: check, then rename.
        Some(nix::libc::ENOSYS) | Some(nix::libc::EINVAL) => {
            if fs::symlink_metadata(to).is_ok() {
                return Err(exists());
            }
            fs::rename(from, to).map_err(io_at(to))
        }
        _ => Err(io_at(to)(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_onto_anything_that_exists_is_refused_and_replaces_nothing() {
        let d = tempfile::tempdir().unwrap();
        let from = d.path().join("new");
        let to = d.path().join("theirs");
        fs::write(&from, b"ours").unwrap();
        fs::write(&to, b"theirs").unwrap();
        assert!(matches!(
            move_new(&from, &to),
            Err(FetchError::Exists { .. })
        ));
        assert_eq!(fs::read(&to).unwrap(), b"theirs");
        let free = d.path().join("free");
        move_new(&from, &free).unwrap();
        assert_eq!(fs::read(&free).unwrap(), b"ours");
        assert!(!from.exists());
    }
}
