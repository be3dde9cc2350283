//! `request.json`: what enable asks of the worker. The worker leaves at a safe point once this
//! names another sequence number or asks it to stop (disable).

use crate::engine::files;
use crate::error::Failure;
use crate::sys::fsutil;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub seq: u64,
    #[serde(default)]
    pub stop: bool,
}

impl Request {
    /// Run sequence number `seq`.
    pub fn run(seq: u64) -> Request {
        Request { seq, stop: false }
    }
}

pub fn request_path(data_dir: &Path) -> PathBuf {
    data_dir.join(files::REQUEST)
}

pub fn read_request(data_dir: &Path) -> Option<Request> {
    serde_json::from_slice(&fsutil::read_regular(&request_path(data_dir), fsutil::MAX_READ).ok()?)
        .ok()
}

/// Is sequence number `seq` still the one wanted (not superseded, not stopped)?
pub fn wants(data_dir: &Path, seq: u64) -> bool {
    read_request(data_dir).is_some_and(|r| r.seq == seq && !r.stop)
}

pub fn write_request(data_dir: &Path, req: &Request) -> Result<(), Failure> {
    let p = request_path(data_dir);
    fsutil::write_atomic(&p, &serde_json::to_vec(req).expect("request serializes"))
        .map_err(|e| Failure::state_io(&p, e))
}
