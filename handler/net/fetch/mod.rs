//! The fetch pipeline: download, verify, extract, overlapped on two cores. The download thread
//! writes the artifact to a staging file and hashes it (SHA-256 with the CPU's SHA instructions)
//! while an extraction thread inflates and unpacks the same bytes into a staging directory. The
//! result is moved into place only when size and checksum match; on a mismatch everything staged
//! is deleted. An interrupted transfer resumes with HTTP `Range`, within one run (after a reset)
//! and across runs (from the partial staging file). Memory stays flat: a few 256 KiB chunks in
//! flight, whatever the artifact size. Before the checksum is known the extractor may inflate
//! at most 4 bytes per compressed byte (plus 1 MiB); an archive that inflates more is unpacked
//! from the file after verification instead. Every download has a deadline, a minimum rate and
//! a stop callback, checked while it waits on the network as well as between attempts.
//!
//! This file runs the steps in order and holds the cleanup rules. The pieces: `request` (what
//! is asked for and what comes of it), `error` ([`FetchError`]), `staging` (the two staging
//! paths of an artifact), `transfer` (the download with its retries and resume) and `unpack` (the
//! extraction thread, and the unpack deferred until after verification).

mod error;
mod request;
mod staging;
mod transfer;
mod unpack;

pub use crate::net::http::RetryPolicy;
pub use crate::net::rate::Limits;
pub use error::FetchError;
pub use request::{Options, Outcome, Request};

use crate::net::rate::Clock;
use crate::net::url::{file_name, redact_url};
use error::io_at;
use staging::Staging;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use transfer::{Got, Restart};

/// No driver bundle comes near this; a bigger one is a mistake or an attack.
pub const DEFAULT_MAX_EXTRACT: u64 = 16 * 1024 * 1024 * 1024;

/// Does this URL name a gzip'd tarball?
pub fn is_tarball(url: &str) -> bool {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    path.ends_with(".tgz") || path.ends_with(".tar.gz")
}

/// Fetch `req` into `dest` (a directory for tarballs, else a directory to put the file in),
/// staging under `staging` (a directory of ours: its `<sha256>.part` and `<sha256>.unpack`
/// are replaced freely). Nothing reaches `dest` before size and checksum match; unless
/// `opts.replace`, nothing already at `dest` is removed or replaced (an existing empty
/// directory receives the result).
pub fn fetch(
    req: &Request,
    staging: &Path,
    dest: &Path,
    opts: &Options,
) -> Result<Outcome, FetchError> {
    crate::sys::fsutil::create_private_dir(staging).map_err(io_at(staging))?;
    let st = Staging::new(staging, &req.sha256);
    let clock = Clock::new(opts.limits);
    let r = match transfer::run(req, &st, opts, &clock) {
        // The server cannot resume a partial file we kept: start over once, from zero.
        Err(Restart) => {
            tracing::warn!(url = %redact_url(&req.url), "server ignored Range; downloading from the start");
            st.clear();
            transfer::run(req, &st, opts, &clock).unwrap_or_else(|_| {
                Err(FetchError::Permanent {
                    url: redact_url(&req.url),
                    detail: "the server restarted the transfer twice".into(),
                })
            })
        }
        Ok(r) => r,
    }
    .and_then(|got| finish(req, &st, dest, got, opts));
    if let Err(e) = &r {
        // What was unpacked is never kept unverified; the partial download is, to resume,
        // unless it is known to be wrong.
        let _ = fs::remove_dir_all(&st.unpack);
        if matches!(
            e,
            FetchError::Checksum { .. }
                | FetchError::Size { .. }
                | FetchError::Extract { .. }
                | FetchError::Permanent { .. }
                | FetchError::Exists { .. }
        ) {
            st.clear();
        }
    }
    r
}

fn finish(
    req: &Request,
    st: &Staging,
    dest: &Path,
    mut got: Got,
    opts: &Options,
) -> Result<Outcome, FetchError> {
    req.verify(got.size, &got.digest)?;
    let url = redact_url(&req.url);
    if got.deferred {
        got.files = unpack::from_verified(st, opts.max_extract, &url)?;
    }
    // Verified (and unpacked): move into place.
    crate::sys::faultpoint::hit("fetch moves into place", dest);
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        // 0755 whatever the umask; an existing directory (the user's DIR) is left as it is.
        crate::sys::fsutil::ensure_system_dir(parent).map_err(io_at(parent))?;
    }
    let path = if req.extract {
        fs::set_permissions(&st.unpack, fs::Permissions::from_mode(0o755))
            .map_err(io_at(&st.unpack))?;
        if opts.replace && fs::symlink_metadata(dest).is_ok() {
            fs::remove_dir_all(dest).map_err(io_at(dest))?;
        }
        if fs::symlink_metadata(dest).is_ok_and(|m| m.is_dir()) {
            // An existing directory receives the entries, none of which may replace anything:
            // all are checked before the first moves, so a clash leaves DIR as it was.
            let entries: Vec<_> = fs::read_dir(&st.unpack)
                .map_err(io_at(&st.unpack))?
                .collect::<Result<_, _>>()
                .map_err(io_at(&st.unpack))?;
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
            let _ = fs::remove_dir(&st.unpack);
        } else {
            move_new(&st.unpack, dest)?;
        }
        let _ = fs::remove_file(&st.part);
        dest.to_path_buf()
    } else {
        crate::sys::fsutil::ensure_system_dir(dest).map_err(io_at(dest))?;
        let target = dest.join(file_name(&req.url));
        fs::set_permissions(&st.part, fs::Permissions::from_mode(0o644))
            .map_err(io_at(&st.part))?;
        if opts.replace {
            fs::rename(&st.part, &target).map_err(io_at(&target))?;
        } else {
            move_new(&st.part, &target)?;
        }
        target
    };
    Ok(Outcome {
        path,
        size: got.size,
        transferred: got.transferred,
        files: got.files,
    })
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

/// A progress callback that calls `emit(percent, done, total)` each time the download crosses
/// another `step` percent (the status file and stderr need no more than that).
pub fn progress_every(step: u64, emit: impl Fn(u64, u64, u64)) -> impl Fn(u64, Option<u64>) {
    let last = std::cell::Cell::new(u64::MAX);
    move |done, total| {
        if let Some(t) = total.filter(|t| *t > 0) {
            let pct = done * 100 / t;
            if pct / step != last.get() / step {
                last.set(pct);
                emit(pct, done, t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_told_once_per_step_crossed() {
        let seen = std::cell::RefCell::new(Vec::new());
        let p = progress_every(10, |pct, _, _| seen.borrow_mut().push(pct));
        for done in [0u64, 5, 9, 10, 19, 20, 100] {
            p(done, Some(100));
        }
        p(50, None);
        p(50, Some(0));
        assert_eq!(*seen.borrow(), [0, 10, 20, 100]);
    }

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
