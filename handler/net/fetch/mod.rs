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

mod error;
mod request;
mod staging;

pub use crate::net::http::RetryPolicy;
pub use crate::net::rate::Limits;
pub use error::FetchError;
pub use request::{Options, Outcome, Request};

use crate::net::rate::{Clock, POLL};
use crate::net::url::{file_name, redact_url};
use crate::net::{extract, http};
use error::io_at;
use sha2::{Digest, Sha256};
use staging::Staging;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};

const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the download and the extraction thread.
const IN_FLIGHT: usize = 8;
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Feeds the extraction thread from the bounded channel.
struct ChannelReader {
    rx: Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(next) => {
                    self.cur = next;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
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
    let r = match attempt(req, &st, opts, &clock) {
        // The server cannot resume a partial file we kept: start over once, from zero.
        Err(Restart) => {
            tracing::warn!(url = %redact_url(&req.url), "server ignored Range; downloading from the start");
            st.clear();
            attempt(req, &st, opts, &clock).unwrap_or_else(|_| {
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

/// Marker: the partial file cannot be resumed.
struct Restart;

struct Got {
    size: u64,
    transferred: u64,
    digest: String,
    files: u64,
    /// The archive inflated past the pre-verification bound: unpack it from the verified file.
    deferred: bool,
}

type Extracting = Result<extract::Extracted, extract::ExtractError>;
type Extractor = std::thread::JoinHandle<Extracting>;

/// Hands a chunk to the extractor. One that stopped is fed no more and its result kept in
/// `extracted` (an archive past the inflation bound is unpacked from the file once verified);
/// the download goes on either way, so the checksum, known in the end, decides whether an
/// archive error means a corrupt artifact or the wrong one, whatever the timing.
fn feed(
    chunk: &[u8],
    tx: &mut Option<SyncSender<Vec<u8>>>,
    extractor: &mut Option<Extractor>,
    extracted: &mut Option<Extracting>,
    deferred: &mut bool,
) {
    let Some(t) = tx else { return };
    if t.send(chunk.to_vec()).is_ok() {
        return;
    }
    *tx = None;
    let r = join(extractor.take());
    if matches!(r, Err(extract::ExtractError::InflationBound { .. })) {
        tracing::info!("archive inflates past the bound before verification; unpacking after it");
        *deferred = true;
    } else {
        *extracted = Some(r);
    }
}

fn join(h: Option<Extractor>) -> Extracting {
    match h {
        Some(h) => h
            .join()
            .unwrap_or_else(|_| Err(extract::ExtractError::Corrupt("extractor panicked".into()))),
        None => Err(extract::ExtractError::Corrupt("extractor gone".into())),
    }
}

fn attempt(
    req: &Request,
    st: &Staging,
    opts: &Options,
    clock: &Clock,
) -> Result<Result<Got, FetchError>, Restart> {
    let url_shown = redact_url(&req.url);
    let client = match http::client(opts.proxy.as_deref()) {
        Ok(a) => a,
        Err(e) => return Ok(Err(FetchError::Proxy(e))),
    };
    let mut file = match OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&st.part)
    {
        Ok(f) => f,
        Err(e) => return Ok(Err(io_at(&st.part)(e))),
    };
    let mut offset = file.metadata().map(|m| m.len()).unwrap_or(0);
    if req.size.is_some_and(|s| offset > s) {
        offset = 0;
        if let Err(e) = file.set_len(0) {
            return Ok(Err(io_at(&st.part)(e)));
        }
    }
    let _ = fs::remove_dir_all(&st.unpack);

    // The extraction thread, fed the same bytes as the file. Until the checksum is known it
    // may inflate only a bounded multiple of what it was given.
    let (mut tx, mut extractor): (Option<SyncSender<Vec<u8>>>, Option<Extractor>) = if req.extract {
        if let Err(e) = crate::sys::fsutil::create_private_dir(&st.unpack) {
            return Ok(Err(io_at(&st.unpack)(e)));
        }
        let (tx, rx): (SyncSender<Vec<u8>>, Receiver<Vec<u8>>) = sync_channel(IN_FLIGHT);
        let root = st.unpack.clone();
        let limits = extract::Limits {
            max_bytes: opts.max_extract,
            inflation: Some(extract::UNVERIFIED_INFLATION),
        };
        let handle = std::thread::spawn(move || {
            extract::untar_gz(
                ChannelReader {
                    rx,
                    cur: Vec::new(),
                    pos: 0,
                },
                &root,
                limits,
            )
        });
        (Some(tx), Some(handle))
    } else {
        (None, None)
    };
    let mut extracted: Option<Extracting> = None;
    let mut deferred = false;
    let mut hasher = Sha256::new();
    // Whatever an earlier run left: hash it and replay it to the extractor.
    if offset > 0 {
        let mut done = 0u64;
        let mut buf = vec![0u8; CHUNK];
        let _ = file.seek(SeekFrom::Start(0));
        while done < offset {
            let want = CHUNK.min((offset - done) as usize);
            if let Err(e) = file.read_exact(&mut buf[..want]) {
                return Ok(Err(io_at(&st.part)(e)));
            }
            hasher.update(&buf[..want]);
            feed(
                &buf[..want],
                &mut tx,
                &mut extractor,
                &mut extracted,
                &mut deferred,
            );
            done += want as u64;
        }
        tracing::info!(url = %url_shown, offset, "resuming a partial download");
    }
    if let Err(e) = file.seek(SeekFrom::Start(offset)) {
        return Ok(Err(io_at(&st.part)(e)));
    }

    let mut total = req.size;
    let mut transferred = 0u64;
    let mut last: Option<String> = None;
    let mut outcome: Option<Result<(), FetchError>> = None;
    // Failures in a row: an attempt that moved the transfer forward starts the count again,
    // so a link that resets every few hundred megabytes still finishes a large bundle (the
    // minimum-progress rule ends one that resets every few bytes).
    let mut try_no = 0u32;
    let mut progress_mark = transferred;
    'attempts: loop {
        try_no += 1;
        if try_no > opts.retry.attempts.max(1) {
            break;
        }
        if try_no > 1 {
            if let Err(e) = clock
                .pause(opts.retry.delay(try_no - 1), opts.keep_going, opts.sleep)
                .map_err(|b| FetchError::bound(&url_shown, b))
            {
                outcome = Some(Err(e));
                break;
            }
        }
        if let Err(e) = clock
            .check(opts.keep_going)
            .map_err(|b| FetchError::bound(&url_shown, b))
        {
            outcome = Some(Err(e));
            break;
        }
        let (etx, erx) = sync_channel::<http::Event>(IN_FLIGHT);
        clock.begin_attempt();
        http::spawn(
            &client,
            &req.url,
            offset,
            total,
            clock.remaining(),
            CHUNK,
            etx,
        );
        let step = loop {
            match erx.recv_timeout(POLL) {
                Ok(http::Event::Start { total: t }) => {
                    if t.is_some() {
                        total = t;
                    }
                }
                Ok(http::Event::Chunk(chunk)) => {
                    if let Err(e) = file.write_all(&chunk) {
                        return Ok(Err(io_at(&st.part)(e)));
                    }
                    hasher.update(&chunk);
                    offset += chunk.len() as u64;
                    transferred += chunk.len() as u64;
                    clock.got(chunk.len() as u64);
                    if let Some(expected) = req.size.filter(|s| offset > *s) {
                        outcome = Some(Err(FetchError::Size {
                            url: url_shown.clone(),
                            expected,
                            actual: offset,
                        }));
                        break 'attempts;
                    }
                    feed(
                        &chunk,
                        &mut tx,
                        &mut extractor,
                        &mut extracted,
                        &mut deferred,
                    );
                    (opts.progress)(offset, total);
                }
                Ok(http::Event::End(step)) => break step,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    break http::Step::Transient("download thread ended".into())
                }
            }
            if let Err(e) = clock
                .check(opts.keep_going)
                .map_err(|b| FetchError::bound(&url_shown, b))
            {
                outcome = Some(Err(e));
                break 'attempts;
            }
        };
        clock.end_attempt();
        match step {
            http::Step::Complete if total.is_none_or(|t| offset >= t) => {
                outcome = Some(Ok(()));
                break;
            }
            http::Step::CompleteAt(n) if n == offset => {
                outcome = Some(Ok(()));
                break;
            }
            http::Step::Complete | http::Step::CompleteAt(_) => {
                last = Some(format!("body ended at {offset} of {total:?} bytes"))
            }
            http::Step::Transient(detail) => last = Some(detail),
            http::Step::Permanent(detail) => {
                outcome = Some(Err(FetchError::Permanent {
                    url: url_shown.clone(),
                    detail,
                }));
                break;
            }
            http::Step::RangeIgnored => {
                drop(tx);
                if let Some(h) = extractor {
                    let _ = h.join();
                }
                return Err(Restart);
            }
        }
        tracing::warn!(url = %url_shown, attempt = try_no, offset, "transient download failure: {}", last.as_deref().unwrap_or(""));
        if transferred > progress_mark {
            progress_mark = transferred;
            try_no = 1;
        }
    }

    drop(tx);
    if extractor.is_some() {
        let r = join(extractor);
        if matches!(r, Err(extract::ExtractError::InflationBound { .. })) {
            deferred = true;
        } else {
            extracted = Some(r);
        }
    }
    let result = match outcome {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(e),
        None => Err(FetchError::Exhausted {
            url: url_shown.clone(),
            attempts: opts.retry.attempts,
            detail: last.unwrap_or_default(),
        }),
    };
    if let Err(e) = result {
        return Ok(Err(e));
    }
    let files = match extracted {
        Some(Ok(x)) => x.files,
        Some(Err(err)) => {
            // A wrong size or checksum explains a corrupt archive better than its error does.
            if let Err(e) = req.verify(offset, &hex(&hasher.finalize())) {
                return Ok(Err(e));
            }
            return Ok(Err(FetchError::Extract {
                url: url_shown,
                err,
            }));
        }
        None => 0,
    };
    if let Err(e) = file.sync_all() {
        return Ok(Err(io_at(&st.part)(e)));
    }
    Ok(Ok(Got {
        size: offset,
        transferred,
        digest: hex(&hasher.finalize()),
        files,
        deferred,
    }))
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
        // Verified: the archive is the one asked for, so only the total bound applies now.
        let _ = fs::remove_dir_all(&st.unpack);
        crate::sys::fsutil::create_private_dir(&st.unpack).map_err(io_at(&st.unpack))?;
        let f = File::open(&st.part).map_err(io_at(&st.part))?;
        got.files = extract::untar_gz(f, &st.unpack, extract::Limits::total(opts.max_extract))
            .map_err(|err| FetchError::Extract {
                url: url.clone(),
                err,
            })?
            .files;
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
    fn the_channel_reader_hands_on_every_byte_in_order_whatever_the_buffer() {
        let (tx, rx) = sync_channel(4);
        for chunk in [&b"abc"[..], b"", b"defgh", b"i"] {
            tx.send(chunk.to_vec()).unwrap();
        }
        drop(tx);
        let mut r = ChannelReader {
            rx,
            cur: Vec::new(),
            pos: 0,
        };
        let mut got = Vec::new();
        let mut buf = [0u8; 2];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"abcdefghi");
    }

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
