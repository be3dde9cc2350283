//! What a fetch is asked for ([`Request`], [`Options`]), what it reports ([`Outcome`]), and
//! whether what arrived is what was asked for.

use super::error::FetchError;
use crate::net::http::RetryPolicy;
use crate::net::rate::Limits;
use crate::net::url::redact_url;
use std::path::PathBuf;
use std::time::Duration;

/// What to fetch. `url` may carry a SAS token: only [`redact_url`] of it is ever shown.
#[derive(Debug, Clone)]
pub struct Request {
    pub url: String,
    pub sha256: String,
    pub size: Option<u64>,
    /// Unpack a `.tar.gz` into the destination instead of storing the file.
    pub extract: bool,
}

/// How to fetch: the network's settings and bounds, and the caller's callbacks.
pub struct Options<'a> {
    pub proxy: Option<String>,
    pub retry: RetryPolicy,
    pub max_extract: u64,
    pub limits: Limits,
    pub sleep: &'a dyn Fn(Duration),
    /// Called with (bytes so far, total if known) as the download advances.
    pub progress: &'a dyn Fn(u64, Option<u64>),
    /// Polled while downloading and between retries: false stops the fetch
    /// ([`FetchError::Stopped`]) within a fraction of a second.
    pub keep_going: &'a dyn Fn() -> bool,
    /// `dest` is ours (the handler's data directory): a previous result there is replaced
    /// once the new one is verified. Otherwise nothing at `dest` is ever removed or replaced.
    pub replace: bool,
}

/// A fetch that succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The extracted directory, or the downloaded file.
    pub path: PathBuf,
    pub size: u64,
    /// Bytes received over the network in this run (a resume counts only what was missing).
    pub transferred: u64,
    pub files: u64,
}

impl Request {
    /// Are `size` bytes hashing to `digest` (lower-case hex) the artifact asked for? A wrong
    /// size is named before a wrong checksum.
    pub(super) fn verify(&self, size: u64, digest: &str) -> Result<(), FetchError> {
        if let Some(expected) = self.size.filter(|s| *s != size) {
            return Err(FetchError::Size {
                url: redact_url(&self.url),
                expected,
                actual: size,
            });
        }
        let expected = self.sha256.to_ascii_lowercase();
        if digest != expected {
            return Err(FetchError::Checksum {
                url: redact_url(&self.url),
                expected,
                actual: digest.to_string(),
            });
        }
        Ok(())
    }
}
