//! Unpacking the archive: on a thread of its own, fed the downloaded bytes through a bounded
//! channel as they arrive and allowed only a bounded inflation until the checksum is known; or,
//! for an archive that went past that bound, from the staging file once it is verified.

use super::error::{io_at, FetchError};
use super::staging::Staging;
use crate::net::extract::{self, ExtractError, Extracted};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Chunks in flight between the download and the extraction thread.
pub(super) const IN_FLIGHT: usize = 8;

type Extracting = Result<Extracted, ExtractError>;

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

/// The extraction thread of one transfer, fed the same bytes as the staging file, and what
/// became of it once it stopped.
pub(super) struct Unpacker {
    tx: Option<SyncSender<Vec<u8>>>,
    extractor: Option<JoinHandle<Extracting>>,
    extracted: Option<Extracting>,
    deferred: bool,
}

/// What the extraction alongside the download came to.
pub(super) struct Unpacked {
    /// `None` when there was none, or when it was deferred.
    pub(super) extracted: Option<Extracting>,
    /// The archive inflated past the pre-verification bound: unpack it from the verified file.
    pub(super) deferred: bool,
}

impl Unpacker {
    /// Nothing to unpack: what is fed is dropped.
    pub(super) fn none() -> Unpacker {
        Unpacker {
            tx: None,
            extractor: None,
            extracted: None,
            deferred: false,
        }
    }

    /// Makes `root` (private) and starts unpacking into it what [`Unpacker::feed`] hands on.
    /// Until the checksum is known it may inflate only a bounded multiple of what it was given.
    pub(super) fn start(root: &Path, max_extract: u64) -> io::Result<Unpacker> {
        crate::sys::fsutil::create_private_dir(root)?;
        let (tx, rx): (SyncSender<Vec<u8>>, Receiver<Vec<u8>>) = sync_channel(IN_FLIGHT);
        let root = root.to_path_buf();
        let limits = extract::Limits {
            max_bytes: max_extract,
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
        Ok(Unpacker {
            tx: Some(tx),
            extractor: Some(handle),
            extracted: None,
            deferred: false,
        })
    }

    /// Hands a chunk to the extractor. One that stopped is fed no more and its result kept
    /// (an archive past the inflation bound is unpacked from the file once verified); the
    /// download goes on either way, so the checksum, known in the end, decides whether an
    /// archive error means a corrupt artifact or the wrong one, whatever the timing.
    pub(super) fn feed(&mut self, chunk: &[u8]) {
        let Some(tx) = &self.tx else { return };
        if tx.send(chunk.to_vec()).is_ok() {
            return;
        }
        self.tx = None;
        let r = join(self.extractor.take());
        self.keep(r);
        if self.deferred {
            tracing::info!(
                "archive inflates past the bound before verification; unpacking after it"
            );
        }
    }

    /// The transfer starts over: the extractor is told the input ended and waited for, and
    /// what it made is dropped with it.
    pub(super) fn abandon(self) {
        drop(self);
    }

    /// The download is over: the extractor is told the input ended and waited for.
    pub(super) fn finish(mut self) -> Unpacked {
        self.tx = None;
        if self.extractor.is_some() {
            let r = join(self.extractor.take());
            self.keep(r);
        }
        Unpacked {
            extracted: self.extracted.take(),
            deferred: self.deferred,
        }
    }

    /// Keeps the extractor's result; the inflation bound only defers the unpacking.
    fn keep(&mut self, r: Extracting) {
        if matches!(r, Err(ExtractError::InflationBound { .. })) {
            self.deferred = true;
        } else {
            self.extracted = Some(r);
        }
    }
}

/// The extractor's result; a thread that panicked or was never started gives a corrupt one.
impl Drop for Unpacker {
    /// Every way out of a transfer, an early staging-file error included, ends the extraction
    /// thread before the caller removes what was unpacked: no thread is left writing into a
    /// directory being deleted. Closing the channel ends the thread's input, so this is bounded.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(h) = self.extractor.take() {
            let _ = h.join();
        }
    }
}

fn join(h: Option<JoinHandle<Extracting>>) -> Extracting {
    match h {
        Some(h) => h
            .join()
            .unwrap_or_else(|_| Err(ExtractError::Corrupt("extractor panicked".into()))),
        None => Err(ExtractError::Corrupt("extractor gone".into())),
    }
}

/// Unpacks the verified staging file into a fresh `st.unpack` and returns the number of files:
/// the archive is the one asked for, so only the total bound applies now.
pub(super) fn from_verified(
    st: &Staging,
    max_extract: u64,
    url_shown: &str,
) -> Result<u64, FetchError> {
    let _ = fs::remove_dir_all(&st.unpack);
    crate::sys::fsutil::create_private_dir(&st.unpack).map_err(io_at(&st.unpack))?;
    let f = File::open(&st.part).map_err(io_at(&st.part))?;
    let done =
        extract::untar_gz(f, &st.unpack, extract::Limits::total(max_extract)).map_err(|err| {
            FetchError::Extract {
                url: url_shown.to_string(),
                err,
            }
        })?;
    Ok(done.files)
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
}
