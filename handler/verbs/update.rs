//! `update`: writes `update.json` (idempotent: a failed update retried writes it again) and
//! checks that the checkpoint is readable. Nothing has to be copied: the checkpoint lives in
//! the data directory outside the versioned handler directory, and the agent copies `mrseq`
//! and `status/` into the new one, so the new version's enable with unchanged settings finds
//! its sequence number done and does nothing. On a downgrade the agent runs the *installed*
//! (newer) version's update with `VERSION` = `AZURE_GUEST_AGENT_UPDATING_FROM_VERSION` = the
//! older version: the newer code, which knows both state formats, is the one that migrates.

use crate::agent::invocation::Invocation;
use crate::engine::checkpoint::Store;
use crate::engine::files;
use crate::error::Failure;
use crate::sys::{clock, fsutil, logging};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const UPDATE_MARKER: &str = files::UPDATE_MARKER;
/// An update marker older than this is stale (a failed update long ago) and ignored.
const UPDATE_MARKER_TTL_SECS: u64 = 3600;

#[derive(Debug, Serialize, Deserialize)]
struct UpdateMarker {
    from: String,
    to: String,
    at: u64,
}

/// Is this uninstall the old version's, in an update the new version recorded? Only the
/// version the marker says is being replaced keeps the state: a stale marker (an update whose
/// old-version uninstall never came) cannot turn a real uninstall of the new version into a
/// no-op.
pub fn update_in_progress(data: &Path, ours: &str) -> bool {
    let Some(m) = fsutil::read_regular(&data.join(UPDATE_MARKER), fsutil::MAX_READ)
        .ok()
        .and_then(|b| serde_json::from_slice::<UpdateMarker>(&b).ok())
    else {
        return false;
    };
    m.from == ours && clock::unix_seconds().saturating_sub(m.at) < UPDATE_MARKER_TTL_SECS
}

pub fn run(inv: &Invocation) -> i32 {
    let data = match super::prepare_data_dir(inv) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let ours = inv.agent.version();
    let to = inv
        .agent
        .vars
        .version
        .clone()
        .unwrap_or_else(|| ours.clone());
    let mut from = inv
        .agent
        .vars
        .updating_from_version
        .clone()
        .unwrap_or_default();
    if from == to && to != ours {
        // The agent's downgrade: this (newer, installed) version updates to the older one.
        tracing::info!(to = %to, "downgrade: the installed version runs the update");
        from = ours;
    }
    let marker = UpdateMarker {
        from,
        to,
        at: clock::unix_seconds(),
    };
    let bytes = serde_json::to_vec(&marker).expect("marker serializes");
    let path = data.join(UPDATE_MARKER);
    if let Err(e) = fsutil::write_atomic(&path, &bytes) {
        let f = Failure::state_io(&path, e);
        super::report(inv, &f);
        return f.code.exit_code();
    }
    // The version that enables next reads this checkpoint; one it could not read would make it
    // start its sequence number afresh (safe, the stages are idempotent, but slower).
    let state = data.join(files::STATE);
    if state.exists() && Store::new(&data).load().is_none() {
        tracing::warn!("the checkpoint is unreadable; the next enable starts its work afresh");
    }
    logging::summary(
        &inv.root,
        &format!("Update from {} to {}", marker.from, marker.to),
    );
    tracing::info!(from = %marker.from, to = %marker.to, "update recorded");
    0
}
