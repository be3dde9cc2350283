//! Where one artifact is staged before it is verified: its partial download and the directory
//! it is unpacked into, named by its checksum in a staging directory of ours.

use std::fs;
use std::path::{Path, PathBuf};

/// The staging paths of one artifact. Named by the checksum, so a later run finds the partial
/// file it can resume from, and two artifacts never share one.
pub(super) struct Staging {
    /// `<sha256>.part`: the bytes downloaded so far, kept across runs.
    pub(super) part: PathBuf,
    /// `<sha256>.unpack`: what the archive unpacked to, never kept unverified.
    pub(super) unpack: PathBuf,
}

impl Staging {
    pub(super) fn new(dir: &Path, sha256: &str) -> Staging {
        let key = sha256.to_ascii_lowercase();
        Staging {
            part: dir.join(format!("{key}.part")),
            unpack: dir.join(format!("{key}.unpack")),
        }
    }

    /// Removes both, whatever they hold.
    pub(super) fn clear(&self) {
        let _ = fs::remove_file(&self.part);
        let _ = fs::remove_dir_all(&self.unpack);
    }
}
