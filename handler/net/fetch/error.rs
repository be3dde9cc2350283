//! How a fetch fails: [`FetchError`], the status code and hint each variant maps to, and the
//! two ways the other steps build one (a time bound that ended the download, an I/O error on
//! a staging or destination path).

use crate::error::{Code, Failure};
use crate::net::extract;
use crate::net::rate;
use std::io;
use std::path::Path;
use thiserror::Error;

/// Every way a fetch can fail; a URL in it is always the redacted one.
#[derive(Debug, Error)]
pub enum FetchError {
    #[error("download of {url} failed: {detail}")]
    Permanent { url: String, detail: String },
    #[error("download of {url} still failing after {attempts} attempts: {detail}")]
    Exhausted {
        url: String,
        attempts: u32,
        detail: String,
    },
    #[error("download of {url} too slow: {window_bytes} bytes in the last {window_s} s ({received} bytes in {elapsed_s} s in all), below the required {min_rate} bytes/s")]
    TooSlow {
        url: String,
        received: u64,
        elapsed_s: u64,
        window_bytes: u64,
        window_s: u64,
        min_rate: u64,
    },
    #[error("download of {url} did not finish within {limit_s} s: {received} bytes received")]
    Deadline {
        url: String,
        received: u64,
        limit_s: u64,
    },
    #[error("download of {url} stopped: superseded by a newer sequence number or disable")]
    Stopped { url: String },
    #[error("checksum mismatch for {url}: expected {expected}, got {actual}")]
    Checksum {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("size mismatch for {url}: expected {expected} bytes, got {actual}")]
    Size {
        url: String,
        expected: u64,
        actual: u64,
    },
    #[error("cannot unpack {url}: {err}")]
    Extract {
        url: String,
        err: extract::ExtractError,
    },
    #[error("staging error at {path}: {err}")]
    Io { path: String, err: io::Error },
    #[error("{path} already exists; nothing was replaced")]
    Exists { path: String },
    #[error("{0}")]
    Proxy(String),
}

impl FetchError {
    /// The time bound that ended a download of `url` (shown redacted).
    pub(super) fn bound(url: &str, b: rate::Bound) -> FetchError {
        let url = url.to_string();
        match b {
            rate::Bound::Stopped => FetchError::Stopped { url },
            rate::Bound::Deadline { received, limit_s } => FetchError::Deadline {
                url,
                received,
                limit_s,
            },
            rate::Bound::TooSlow {
                received,
                elapsed_s,
                window_bytes,
                window_s,
                min_rate,
            } => FetchError::TooSlow {
                url,
                received,
                elapsed_s,
                window_bytes,
                window_s,
                min_rate,
            },
        }
    }

    /// The status code and one-line message: what went wrong, then what to do about it.
    pub fn failure(&self) -> Failure {
        let (code, hint) = match self {
            FetchError::Checksum { .. } | FetchError::Size { .. } => (
                Code::ChecksumMismatch,
                "the artifact is not the one the catalog or settings name; check package/mirror settings",
            ),
            FetchError::Io { .. } => (Code::StateIo, "check free space under /var/lib"),
            FetchError::Extract { .. } => (Code::DownloadFailed, "the archive is corrupt or unsafe"),
            FetchError::Stopped { .. } => (Code::Superseded, "the newer work goes on"),
            FetchError::Exists { .. } => (Code::StateIo, "move it away or choose another directory"),
            _ => (Code::DownloadFailed, "check network access, proxy and mirror settings"),
        };
        Failure::new(code, format!("{self}; {hint}"))
    }
}

/// Turns an I/O error on `path` into [`FetchError::Io`] naming it.
pub(super) fn io_at(path: &Path) -> impl Fn(io::Error) -> FetchError + '_ {
    move |err| FetchError::Io {
        path: path.display().to_string(),
        err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_names_its_code_and_what_to_do() {
        let cases = [
            (
                FetchError::Io {
                    path: "/p".into(),
                    err: io::Error::from(io::ErrorKind::StorageFull),
                },
                Code::StateIo,
                "check free space",
            ),
            (
                FetchError::Extract {
                    url: "u".into(),
                    err: extract::ExtractError::Corrupt("bad".into()),
                },
                Code::DownloadFailed,
                "corrupt or unsafe",
            ),
            (
                FetchError::Exists { path: "/p".into() },
                Code::StateIo,
                "move it away",
            ),
            (
                FetchError::Stopped { url: "u".into() },
                Code::Superseded,
                "newer work",
            ),
            (
                FetchError::Checksum {
                    url: "u".into(),
                    expected: "a".into(),
                    actual: "b".into(),
                },
                Code::ChecksumMismatch,
                "not the one",
            ),
            (
                FetchError::Proxy("no proxy".into()),
                Code::DownloadFailed,
                "check network access",
            ),
        ];
        for (e, code, hint) in cases {
            let f = e.failure();
            assert_eq!(f.code, code, "{e}");
            assert!(f.message.contains(hint), "{}", f.message);
            assert!(f.message.starts_with(&e.to_string()), "{}", f.message);
        }
    }
}
