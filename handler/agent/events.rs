//! Telemetry events for the agent's `eventsFolder`: one JSON file per
//! event named `<epoch-ns>.json`, string fields only, within the agent's size and count limits.
//! See docs/PROTOCOL.md, "Telemetry events".

use crate::sys::fsutil;
use serde::Serialize;
use std::path::Path;

/// The agent collects at most 300 events per 5 minutes on 2.7 (360 on newer agents); we stay
/// well under and never fill the folder if the agent stops collecting.
pub const MAX_PENDING_FILES: usize = 100;
const MAX_MESSAGE_CHARS: usize = 3000;

#[derive(Debug, Clone, Copy)]
pub enum Level {
    Informational,
    Warning,
    Error,
}

#[derive(Serialize)]
struct Event<'a> {
    #[serde(rename = "Version")]
    version: &'a str,
    #[serde(rename = "Timestamp")]
    timestamp: String,
    #[serde(rename = "TaskName")]
    task_name: &'a str,
    #[serde(rename = "EventLevel")]
    event_level: &'static str,
    #[serde(rename = "Message")]
    message: String,
    #[serde(rename = "EventPid")]
    event_pid: String,
    #[serde(rename = "EventTid")]
    event_tid: String,
    #[serde(rename = "OperationId")]
    operation_id: String,
}

pub fn event_json(
    version: &str,
    task: &str,
    level: Level,
    message: &str,
    operation_id: &str,
    timestamp: String,
) -> Vec<u8> {
    let message: String = if message.is_empty() {
        "-".into()
    } else {
        message.chars().take(MAX_MESSAGE_CHARS).collect()
    };
    let ev = Event {
        version,
        timestamp,
        task_name: task,
        event_level: match level {
            Level::Informational => "Informational",
            Level::Warning => "Warning",
            Level::Error => "Error",
        },
        message,
        event_pid: std::process::id().to_string(),
        event_tid: "0".into(),
        operation_id: operation_id.to_string(),
    };
    serde_json::to_vec(&[ev]).expect("event serializes")
}

/// Drop one event into `folder` if the agent created it. Failures are logged, never fatal.
pub fn emit(
    folder: Option<&Path>,
    version: &str,
    task: &str,
    level: Level,
    message: &str,
    operation_id: &str,
) {
    // Only a real folder: events written through a symlinked one would land wherever it points.
    let Some(folder) = folder.filter(|f| fsutil::is_real_dir(f)) else {
        return;
    };
    if fsutil::dir_names(folder).len() >= MAX_PENDING_FILES {
        tracing::warn!("events folder holds {MAX_PENDING_FILES} files; event dropped");
        return;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let bytes = event_json(
        version,
        task,
        level,
        message,
        operation_id,
        crate::sys::clock::now_rfc3339(),
    );
    let path = folder.join(format!("{nanos}.json"));
    if let Err(e) = fsutil::write_atomic(&path, &bytes) {
        tracing::warn!(error = %e, "cannot write telemetry event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_has_every_required_string_field() {
        let v: serde_json::Value = serde_json::from_slice(&event_json(
            "1.0.0",
            "enable",
            Level::Error,
            &"x".repeat(5000),
            "3",
            "t".into(),
        ))
        .unwrap();
        let e = &v[0];
        for k in [
            "Version",
            "Timestamp",
            "TaskName",
            "EventLevel",
            "Message",
            "EventPid",
            "EventTid",
            "OperationId",
        ] {
            assert!(e[k].is_string(), "{k}");
        }
        assert_eq!(e["Message"].as_str().unwrap().len(), MAX_MESSAGE_CHARS);
    }

    #[test]
    fn emits_only_into_existing_folder_and_stops_at_cap() {
        let d = tempfile::tempdir().unwrap();
        emit(
            Some(&d.path().join("missing")),
            "1",
            "t",
            Level::Informational,
            "m",
            "0",
        );
        assert!(!d.path().join("missing").exists());
        for _ in 0..(MAX_PENDING_FILES + 5) {
            emit(Some(d.path()), "1", "t", Level::Informational, "m", "0");
        }
        let names = fsutil::dir_names(d.path());
        assert_eq!(names.len(), MAX_PENDING_FILES);
        let elsewhere = tempfile::tempdir().unwrap();
        let link = d.path().join("linked");
        std::os::unix::fs::symlink(elsewhere.path(), &link).unwrap();
        emit(Some(&link), "1", "t", Level::Informational, "m", "0");
        assert!(fsutil::dir_names(elsewhere.path()).is_empty());
        assert!(names
            .iter()
            .all(|n| n.ends_with(".json") && n[..n.len() - 5].chars().all(|c| c.is_ascii_digit())));
    }
}
