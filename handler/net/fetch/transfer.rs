//! The download: the staging file reopened and what an earlier run left in it replayed, then
//! HTTP attempts, each resuming with `Range` where the last one stopped, until the body is
//! complete, the retries are spent or a bound ends it. Every byte goes to the file, the hash
//! and the extractor, in order.

use super::error::{io_at, FetchError};
use super::request::{Options, Request};
use super::staging::Staging;
use super::unpack::{Unpacked, Unpacker, IN_FLIGHT};
use crate::net::http;
use crate::net::rate::{self, Clock, POLL};
use crate::net::url::redact_url;
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::mpsc::{sync_channel, RecvTimeoutError};

/// Bytes per read of the partial file and per chunk of the response body.
const CHUNK: usize = 256 * 1024;

/// Marker: the partial file cannot be resumed.
pub(super) struct Restart;

/// A complete download, not verified yet.
pub(super) struct Got {
    pub(super) size: u64,
    pub(super) transferred: u64,
    /// SHA-256 of the staging file, lower-case hex.
    pub(super) digest: String,
    pub(super) files: u64,
    /// The archive inflated past the pre-verification bound: unpack it from the verified file.
    pub(super) deferred: bool,
}

/// Why the attempts ended short of a complete body.
enum Stop {
    /// The fetch fails with this once the extractor has finished.
    Fail(FetchError),
    /// Reading, writing or seeking the staging file failed: the fetch fails with it at once,
    /// and the extractor, its input closed with the transfer, ends on its own.
    Io(FetchError),
    /// The server ignored `Range`.
    Restart,
}

/// One download of a request into its staging file.
struct Transfer<'a> {
    req: &'a Request,
    opts: &'a Options<'a>,
    st: &'a Staging,
    clock: &'a Clock<'a>,
    /// The URL as it may be shown.
    url_shown: String,
    file: File,
    /// Bytes in the staging file, all of them hashed and fed to the extractor.
    offset: u64,
    /// The artifact's size, from the request or else from the server.
    total: Option<u64>,
    /// Bytes received over the network in this run.
    transferred: u64,
    hasher: Sha256,
    unpacker: Unpacker,
}

/// Download `req` into `st.part`, resuming from what is there, and unpack it alongside when
/// it is an archive. `Err(Restart)` when the server ignored `Range` and the partial file has
/// to go.
pub(super) fn run(
    req: &Request,
    st: &Staging,
    opts: &Options,
    clock: &Clock,
) -> Result<Result<Got, FetchError>, Restart> {
    let client = match http::client(opts.proxy.as_deref()) {
        Ok(a) => a,
        Err(e) => return Ok(Err(FetchError::Proxy(e))),
    };
    let mut t = match Transfer::open(req, st, opts, clock) {
        Ok(t) => t,
        Err(e) => return Ok(Err(e)),
    };
    let ended = match t.replay().and_then(|()| t.retry(&client)) {
        Ok(()) => Ok(()),
        Err(Stop::Fail(e)) => Err(e),
        Err(Stop::Io(e)) => return Ok(Err(e)),
        Err(Stop::Restart) => {
            t.unpacker.abandon();
            return Err(Restart);
        }
    };
    Ok(t.conclude(ended))
}

/// Opens (or creates) the partial staging file, never through a link, and says how much of the
/// artifact it holds. One longer than the known size cannot be its beginning: it is emptied.
fn open_part(part: &Path, size: Option<u64>) -> io::Result<(File, u64)> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(part)?;
    let offset = file.metadata().map(|m| m.len()).unwrap_or(0);
    if size.is_some_and(|s| offset > s) {
        file.set_len(0)?;
        return Ok((file, 0));
    }
    Ok((file, offset))
}

/// SHA-256 digest bytes as lower-case hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl<'a> Transfer<'a> {
    /// The staging file opened and the extractor started on an empty directory.
    fn open(
        req: &'a Request,
        st: &'a Staging,
        opts: &'a Options<'a>,
        clock: &'a Clock,
    ) -> Result<Transfer<'a>, FetchError> {
        let (file, offset) = open_part(&st.part, req.size).map_err(io_at(&st.part))?;
        let _ = fs::remove_dir_all(&st.unpack);
        let unpacker = if req.extract {
            Unpacker::start(&st.unpack, opts.max_extract).map_err(io_at(&st.unpack))?
        } else {
            Unpacker::none()
        };
        Ok(Transfer {
            req,
            opts,
            st,
            clock,
            url_shown: redact_url(&req.url),
            file,
            offset,
            total: req.size,
            transferred: 0,
            hasher: Sha256::new(),
            unpacker,
        })
    }

    /// Whatever an earlier run left: hash it and replay it to the extractor, then write on
    /// after it.
    fn replay(&mut self) -> Result<(), Stop> {
        if self.offset > 0 {
            let mut done = 0u64;
            let mut buf = vec![0u8; CHUNK];
            let _ = self.file.seek(SeekFrom::Start(0));
            while done < self.offset {
                let want = CHUNK.min((self.offset - done) as usize);
                self.file
                    .read_exact(&mut buf[..want])
                    .map_err(|e| self.io(e))?;
                self.hasher.update(&buf[..want]);
                self.unpacker.feed(&buf[..want]);
                done += want as u64;
            }
            tracing::info!(url = %self.url_shown, offset = self.offset, "resuming a partial download");
        }
        self.file
            .seek(SeekFrom::Start(self.offset))
            .map_err(|e| self.io(e))?;
        Ok(())
    }

    /// Attempts until the body is complete. Only failures in a row count against the retries:
    /// an attempt that moved the transfer forward starts the count again, so a link that
    /// resets every few hundred megabytes still finishes a large bundle (the minimum-progress
    /// rule ends one that resets every few bytes).
    fn retry(&mut self, client: &http::Client) -> Result<(), Stop> {
        let mut last = String::new();
        let mut try_no = 0u32;
        let mut progress_mark = self.transferred;
        loop {
            try_no += 1;
            if try_no > self.opts.retry.attempts.max(1) {
                return Err(Stop::Fail(FetchError::Exhausted {
                    url: self.url_shown.clone(),
                    attempts: self.opts.retry.attempts,
                    detail: last,
                }));
            }
            if try_no > 1 {
                let delay = self.opts.retry.delay(try_no - 1);
                self.clock
                    .pause(delay, self.opts.keep_going, self.opts.sleep)
                    .map_err(|b| self.bound(b))?;
            }
            self.check()?;
            last = match self.attempt(client)? {
                http::Step::Complete if self.total.is_none_or(|t| self.offset >= t) => {
                    return Ok(())
                }
                http::Step::CompleteAt(n) if n == self.offset => return Ok(()),
                http::Step::Complete | http::Step::CompleteAt(_) => {
                    format!("body ended at {} of {:?} bytes", self.offset, self.total)
                }
                http::Step::Transient(detail) => detail,
                http::Step::Permanent(detail) => {
                    return Err(Stop::Fail(FetchError::Permanent {
                        url: self.url_shown.clone(),
                        detail,
                    }))
                }
                http::Step::RangeIgnored => return Err(Stop::Restart),
            };
            tracing::warn!(url = %self.url_shown, attempt = try_no, offset = self.offset, "transient download failure: {last}");
            if self.transferred > progress_mark {
                progress_mark = self.transferred;
                try_no = 1;
            }
        }
    }

    /// One attempt: a request from `offset` on a thread of its own, its events received until
    /// it ends, the time bounds checked at every event and every poll in between.
    fn attempt(&mut self, client: &http::Client) -> Result<http::Step, Stop> {
        let (etx, erx) = sync_channel::<http::Event>(IN_FLIGHT);
        self.clock.begin_attempt();
        http::spawn(
            client,
            &self.req.url,
            self.offset,
            self.total,
            self.clock.remaining(),
            CHUNK,
            etx,
        );
        let step = loop {
            match erx.recv_timeout(POLL) {
                Ok(http::Event::Start { total }) => {
                    if total.is_some() {
                        self.total = total;
                    }
                }
                Ok(http::Event::Chunk(chunk)) => self.take(&chunk)?,
                Ok(http::Event::End(step)) => break step,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    break http::Step::Transient("download thread ended".into())
                }
            }
            self.check()?;
        };
        self.clock.end_attempt();
        Ok(step)
    }

    /// One chunk of the body: to the file, the hash and the extractor, then the progress
    /// callback. A body longer than the known size ends the fetch.
    fn take(&mut self, chunk: &[u8]) -> Result<(), Stop> {
        self.file.write_all(chunk).map_err(|e| self.io(e))?;
        self.hasher.update(chunk);
        self.offset += chunk.len() as u64;
        self.transferred += chunk.len() as u64;
        self.clock.got(chunk.len() as u64);
        if let Some(expected) = self.req.size.filter(|s| self.offset > *s) {
            return Err(Stop::Fail(FetchError::Size {
                url: self.url_shown.clone(),
                expected,
                actual: self.offset,
            }));
        }
        self.unpacker.feed(chunk);
        (self.opts.progress)(self.offset, self.total);
        Ok(())
    }

    /// The attempts are over: the extractor is waited for, then the verdict. An archive error
    /// is reported only when size and checksum are right: a wrong artifact explains a corrupt
    /// archive better than its error does.
    fn conclude(self, ended: Result<(), FetchError>) -> Result<Got, FetchError> {
        let Unpacked {
            extracted,
            deferred,
        } = self.unpacker.finish();
        ended?;
        let files = match extracted {
            Some(Ok(x)) => x.files,
            Some(Err(err)) => {
                self.req
                    .verify(self.offset, &hex(&self.hasher.finalize()))?;
                return Err(FetchError::Extract {
                    url: self.url_shown,
                    err,
                });
            }
            None => 0,
        };
        self.file.sync_all().map_err(io_at(&self.st.part))?;
        Ok(Got {
            size: self.offset,
            transferred: self.transferred,
            digest: hex(&self.hasher.finalize()),
            files,
            deferred,
        })
    }

    /// The deadline, the minimum rate and the stop callback, checked now.
    fn check(&self) -> Result<(), Stop> {
        self.clock
            .check(self.opts.keep_going)
            .map_err(|b| self.bound(b))
    }

    fn bound(&self, b: rate::Bound) -> Stop {
        Stop::Fail(FetchError::bound(&self.url_shown, b))
    }

    fn io(&self, e: io::Error) -> Stop {
        Stop::Io(io_at(&self.st.part)(e))
    }
}
