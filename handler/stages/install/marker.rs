//! What this handler records of an install in its data directory: `installed.json` (the stack
//! it installed, read back by [`stack::read_marker`]) and, while an installer runs,
//! `installing.json` (which install an interrupted run was doing). From them and the host: is
//! the chosen stack already in, or did an interrupted run's installer finish it?

use crate::error::Failure;
use crate::host::stack::{self, StackKind};
use crate::host::Root;
use crate::plan::catalog::Choice;
use std::path::{Path, PathBuf};

/// Written before an installer starts: which install an interrupted run was doing.
const INSTALLING: &str = "installing.json";

/// What the marker records for `choice`.
fn marker_for(choice: &Choice) -> stack::InstalledMarker {
    match choice {
        Choice::Inbox { .. } => stack::InstalledMarker {
            stack: StackKind::Inbox,
            version: String::new(),
            sha256: "inbox".into(),
        },
        Choice::Artifact {
            stack,
            version,
            sha256,
            ..
        } => stack::InstalledMarker {
            stack: stack.kind(),
            version: version.clone(),
            sha256: sha256.to_ascii_lowercase(),
        },
    }
}

/// Is the chosen stack already in place? Inbox: the host has the verbs library. A vendor
/// artifact: this handler installed exactly it (a DOCA version cannot be read back from the
/// host, and a preinstalled stack of another version must be replaced when one is pinned).
pub(super) fn already_installed(root: &Root, choice: &Choice) -> bool {
    match choice {
        Choice::Inbox { .. } => {
            stack::detect(root).is_some_and(|h| h.kind == StackKind::Inbox && h.verbs_library)
        }
        Choice::Artifact { .. } => {
            stack::read_marker(root).is_some_and(|m| m == marker_for(choice))
                && stack::detect(root).is_some()
        }
    }
}

/// The two marker files of one install of the chosen stack.
pub(super) struct Markers {
    installed: PathBuf,
    started: PathBuf,
    mine: stack::InstalledMarker,
}

impl Markers {
    pub(super) fn new(data_dir: &Path, choice: &Choice) -> Markers {
        Markers {
            installed: data_dir.join(stack::MARKER),
            started: data_dir.join(INSTALLING),
            mine: marker_for(choice),
        }
    }

    /// Did an earlier run of ours start this very install?
    pub(super) fn started_by_us(&self) -> bool {
        crate::sys::fsutil::read_regular(&self.started, crate::sys::fsutil::MAX_READ)
            .ok()
            .and_then(|b| serde_json::from_slice::<stack::InstalledMarker>(&b).ok())
            .is_some_and(|m| m == self.mine)
    }

    /// The installer is about to run.
    pub(super) fn begin(&self) -> Result<(), Failure> {
        self.write(&self.started)
    }

    /// The stack is in: recorded as installed, the install no longer in progress.
    pub(super) fn complete(&self) -> Result<(), Failure> {
        self.write(&self.installed)?;
        let _ = std::fs::remove_file(&self.started);
        Ok(())
    }

    fn write(&self, path: &Path) -> Result<(), Failure> {
        let bytes = serde_json::to_vec(&self.mine).expect("marker serializes");
        crate::sys::fsutil::write_atomic(path, &bytes).map_err(|e| Failure::state_io(path, e))
    }
}
