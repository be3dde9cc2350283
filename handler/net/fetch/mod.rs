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
//! paths of an artifact), `transfer` (the download with its retries and resume), `unpack` (the
//! extraction thread, and the unpack deferred until after verification) and `place` (moving the
//! verified result to its destination).

mod error;
mod place;
mod request;
mod staging;
mod transfer;
mod unpack;

pub use crate::net::http::RetryPolicy;
pub use crate::net::rate::Limits;
pub use error::FetchError;
pub use request::{Options, Outcome, Request};

use crate::net::rate::Clock;
use crate::net::url::redact_url;
use error::io_at;
use staging::Staging;
use std::fs;
use std::path::Path;
use transfer::{Got, Restart};

/// No driver bundle comes near this; a bigger one is a mistake or an attack.
pub const DEFAULT_MAX_EXTRACT: u64 = 16 * 1024 * 1024 * 1024;

pub use crate::net::url::is_tarball;

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

/// A complete download: verified, unpacked now if unpacking it alongside was deferred, then
/// moved into place.
fn finish(
    req: &Request,
    st: &Staging,
    dest: &Path,
    mut got: Got,
    opts: &Options,
) -> Result<Outcome, FetchError> {
    req.verify(got.size, &got.digest)?;
    if got.deferred {
        got.files = unpack::from_verified(st, opts.max_extract, &redact_url(&req.url))?;
    }
    let path = place::into_place(req, st, dest, opts.replace)?;
    Ok(Outcome {
        path,
        size: got.size,
        transferred: got.transferred,
        files: got.files,
    })
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
}
