//! The status file and heartbeat file: typed documents in the exact shape the agent parses
//! (docs/PROTOCOL.md, "Status file" and "Heartbeat"), clamped to its 128 KiB limit and
//! written atomically.

use crate::error::{Code, Failure};
use crate::sys::clock;
use crate::sys::fsutil;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub const MAX_STATUS_BYTES: usize = 128 * 1024;
const TRUNCATED: &str = " ... [TRUNCATED]";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusValue {
    Transitioning,
    Warning,
    Error,
    Success,
}

impl StatusValue {
    pub fn is_terminal(self) -> bool {
        matches!(self, StatusValue::Success | StatusValue::Error)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormattedMessage {
    pub lang: String,
    pub message: String,
}

impl FormattedMessage {
    pub fn en(message: impl Into<String>) -> Self {
        FormattedMessage {
            lang: "en-US".into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubStatus {
    pub name: String,
    pub status: StatusValue,
    #[serde(with = "crate::error::as_number")]
    pub code: Code,
    #[serde(rename = "formattedMessage")]
    pub formatted_message: FormattedMessage,
}

impl SubStatus {
    pub fn new(name: &str, status: StatusValue, code: Code, message: impl Into<String>) -> Self {
        SubStatus {
            name: name.into(),
            status,
            code,
            formatted_message: FormattedMessage::en(message),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusBody {
    pub name: String,
    pub operation: String,
    pub status: StatusValue,
    #[serde(with = "crate::error::as_number")]
    pub code: Code,
    #[serde(rename = "formattedMessage")]
    pub formatted_message: FormattedMessage,
    #[serde(default)]
    pub substatus: Vec<SubStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusEntry {
    pub version: f64,
    #[serde(rename = "timestampUTC")]
    pub timestamp_utc: String,
    pub status: StatusBody,
}

/// What we write to `status/N.status`: a one-element array.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusReport {
    pub name: String,
    pub operation: String,
    pub status: StatusValue,
    pub code: Code,
    pub message: String,
    pub substatus: Vec<SubStatus>,
}

impl StatusReport {
    pub fn new(
        name: &str,
        operation: &str,
        status: StatusValue,
        code: Code,
        message: impl Into<String>,
    ) -> Self {
        StatusReport {
            name: name.into(),
            operation: operation.into(),
            status,
            code,
            message: message.into(),
            substatus: Vec::new(),
        }
    }

    pub fn failure(name: &str, operation: &str, f: &Failure) -> Self {
        Self::new(
            name,
            operation,
            StatusValue::Error,
            f.code,
            f.message.clone(),
        )
    }

    pub fn with_substatus(mut self, subs: Vec<SubStatus>) -> Self {
        self.substatus = subs;
        self
    }

    fn document(&self, timestamp: &str) -> Vec<StatusEntry> {
        vec![StatusEntry {
            version: 1.0,
            timestamp_utc: timestamp.to_string(),
            status: StatusBody {
                name: self.name.clone(),
                operation: self.operation.clone(),
                status: self.status,
                code: self.code,
                formatted_message: FormattedMessage::en(self.message.clone()),
                substatus: self.substatus.clone(),
            },
        }]
    }

    /// Serialize within the agent's 128 KiB: cut the messages the way the agent would, then drop
    /// trailing substatus entries until it fits.
    pub fn to_json(&self, timestamp: &str) -> Vec<u8> {
        let mut doc = self.document(timestamp);
        let fits = |d: &Vec<StatusEntry>| -> Option<Vec<u8>> {
            let bytes = serde_json::to_vec(d).expect("status serializes");
            (bytes.len() <= MAX_STATUS_BYTES).then_some(bytes)
        };
        if let Some(b) = fits(&doc) {
            return b;
        }
        let body = &mut doc[0].status;
        truncate(&mut body.formatted_message.message, 1024);
        for s in &mut body.substatus {
            truncate(&mut s.name, 10240);
            truncate(&mut s.formatted_message.message, 10240);
        }
        loop {
            if let Some(b) = fits(&doc) {
                return b;
            }
            if doc[0].status.substatus.pop().is_none() {
                // Cannot happen with a 1 KiB message; keep the invariant anyway.
                doc[0].status.formatted_message.message.truncate(0);
                return serde_json::to_vec(&doc).expect("status serializes");
            }
        }
    }

    /// Write the status file; `Err` (code 201, logged) when it cannot be written even after
    /// the old one was removed.
    pub fn write(&self, path: &Path) -> Result<(), Failure> {
        let bytes = self.to_json(&clock::now_rfc3339());
        write_replacing(path, &bytes, fsutil::write_atomic)
    }
}

/// Write `bytes` to `path` with `write`; when that fails, remove the old file and try once
/// more. On a disk with no room for the temp file beside the old one, removing the old file
/// frees its blocks. Even when that does not help, no old document stays behind to tell the
/// agent something that is no longer true: a missing status reads as "not reported yet".
fn write_replacing(
    path: &Path,
    bytes: &[u8],
    write: impl Fn(&Path, &[u8]) -> std::io::Result<()>,
) -> Result<(), Failure> {
    let first = match write(path, bytes) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    tracing::warn!(path = %path.display(), error = %first, "write failed; removing the old file and trying again");
    if std::fs::symlink_metadata(path).is_ok_and(|m| !m.is_dir()) {
        let _ = std::fs::remove_file(path);
    }
    write(path, bytes).map_err(|e| {
        let f = Failure::state_io(path, e);
        tracing::error!("{f}");
        f
    })
}

/// Where a panic is reported: the status and heartbeat of the invocation that panicked. Set
/// once, when the invocation is built; a panic before that (no agent environment yet) is only
/// logged.
#[derive(Debug, Clone)]
pub struct PanicTarget {
    pub status_path: PathBuf,
    pub heartbeat_path: PathBuf,
    pub name: String,
    pub operation: String,
}

static PANIC_TARGET: OnceLock<PanicTarget> = OnceLock::new();

pub fn set_panic_target(target: PanicTarget) {
    let _ = PANIC_TARGET.set(target);
}

/// The one-line status message for a panic at `location` (file:line). The panic's own text is
/// left out: it can quote any value the code held.
pub fn panic_message(location: &str) -> String {
    format!(
        "internal error (panic at {location}); run the operation again, and if it repeats \
         collect 'ibdriver diagnose --out FILE' for a support case"
    )
}

/// Report a panic at `location` where the user looks: an error status (code 200) and a
/// NotReady heartbeat, when an invocation has set its [`PanicTarget`]. Returns whether it did.
pub fn report_panic(location: &str) -> bool {
    let Some(t) = PANIC_TARGET.get() else {
        return false;
    };
    let message = panic_message(location);
    let f = Failure::new(Code::Internal, message);
    let status = StatusReport::failure(&t.name, &t.operation, &f).write(&t.status_path);
    let beat = write_heartbeat(
        &t.heartbeat_path,
        HeartbeatState::NotReady,
        f.code,
        &f.message,
    );
    status.is_ok() && beat.is_ok()
}

fn truncate(s: &mut String, max_chars: usize) {
    if s.chars().count() > max_chars {
        let cut: String = s.chars().take(max_chars).collect();
        *s = cut + TRUNCATED;
    }
}

/// Read back a status file we wrote (the worker and no-op checks need the last outcome).
pub fn read(path: &Path) -> Option<StatusEntry> {
    let text = fsutil::read_text(path).ok()?;
    let mut v: Vec<StatusEntry> = serde_json::from_str(&text).ok()?;
    (!v.is_empty()).then(|| v.swap_remove(0))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeartbeatState {
    Ready,
    NotReady,
}

#[derive(Debug, Serialize, Deserialize)]
struct HeartbeatBody {
    status: HeartbeatState,
    code: u32,
    #[serde(rename = "formattedMessage")]
    formatted_message: FormattedMessage,
}

#[derive(Debug, Serialize, Deserialize)]
struct HeartbeatEntry {
    version: f64,
    heartbeat: HeartbeatBody,
}

pub fn heartbeat_json(state: HeartbeatState, code: Code, message: &str) -> Vec<u8> {
    let mut message = message.to_string();
    truncate(&mut message, 1024);
    let doc = vec![HeartbeatEntry {
        version: 1.0,
        heartbeat: HeartbeatBody {
            status: state,
            code: code.number(),
            formatted_message: FormattedMessage::en(message),
        },
    }];
    serde_json::to_vec(&doc).expect("heartbeat serializes")
}

pub fn write_heartbeat(
    path: &Path,
    state: HeartbeatState,
    code: Code,
    message: &str,
) -> Result<(), Failure> {
    write_replacing(
        path,
        &heartbeat_json(state, code, message),
        fsutil::write_atomic,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_numbers_in_the_file_and_unknown_numbers_are_refused() {
        let sub = SubStatus::new("verify", StatusValue::Error, Code::PortsNotActive, "down");
        let v = serde_json::to_value(&sub).unwrap();
        assert_eq!(v["code"], 220);
        assert_eq!(serde_json::from_value::<SubStatus>(v).unwrap(), sub);
        let unknown = serde_json::json!({"name": "x", "status": "error", "code": 999,
            "formattedMessage": {"lang": "en-US", "message": "m"}});
        assert!(serde_json::from_value::<SubStatus>(unknown).is_err());
    }
    use serde_json::Value;

    #[test]
    fn exact_shape_with_lower_case_status() {
        let r = StatusReport::new("H", "Enable", StatusValue::Success, Code::Success, "ok")
            .with_substatus(vec![SubStatus::new(
                "verify",
                StatusValue::Success,
                Code::Success,
                "ports up",
            )]);
        let v: Value = serde_json::from_slice(&r.to_json("2026-01-01T00:00:00Z")).unwrap();
        let expected = serde_json::json!([{
            "version": 1.0, "timestampUTC": "2026-01-01T00:00:00Z",
            "status": {"name": "H", "operation": "Enable", "status": "success", "code": 0,
              "formattedMessage": {"lang": "en-US", "message": "ok"},
              "substatus": [{"name": "verify", "status": "success", "code": 0,
                 "formattedMessage": {"lang": "en-US", "message": "ports up"}}]}}]);
        assert_eq!(v, expected);
    }

    #[test]
    fn huge_reports_are_clamped() {
        let subs: Vec<SubStatus> = (0..40)
            .map(|i| {
                SubStatus::new(
                    &format!("s{i}"),
                    StatusValue::Warning,
                    Code::Usage,
                    "x".repeat(20_000),
                )
            })
            .collect();
        let r = StatusReport::new(
            "H",
            "Enable",
            StatusValue::Error,
            Code::PortsNotActive,
            "m".repeat(300_000),
        )
        .with_substatus(subs);
        let bytes = r.to_json("t");
        assert!(bytes.len() <= MAX_STATUS_BYTES, "{}", bytes.len());
        let v: Vec<StatusEntry> = serde_json::from_slice(&bytes).unwrap();
        let msg = &v[0].status.formatted_message.message;
        assert!(msg.ends_with(TRUNCATED));
        assert_eq!(msg.chars().count(), 1024 + TRUNCATED.len());
        assert!(!v[0].status.substatus.is_empty() && v[0].status.substatus.len() < 40);
        assert_eq!(v[0].status.status, StatusValue::Error);
    }

    #[test]
    fn small_reports_are_untouched() {
        let r = StatusReport::new(
            "H",
            "Enable",
            StatusValue::Success,
            Code::Success,
            "m".repeat(100_000),
        );
        let v: Vec<StatusEntry> = serde_json::from_slice(&r.to_json("t")).unwrap();
        assert_eq!(v[0].status.formatted_message.message.len(), 100_000);
    }

    #[test]
    fn heartbeat_shape() {
        let v: Value = serde_json::from_slice(&heartbeat_json(
            HeartbeatState::NotReady,
            Code::PortsNotActive,
            "port down",
        ))
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!([{"version": 1.0, "heartbeat": {"status": "NotReady", "code": 220,
                "formattedMessage": {"lang": "en-US", "message": "port down"}}}])
        );
    }

    #[test]
    fn written_file_reads_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("3.status");
        StatusReport::new(
            "H",
            "Enable",
            StatusValue::Transitioning,
            Code::Success,
            "working",
        )
        .write(&p)
        .unwrap();
        assert_eq!(read(&p).unwrap().status.status, StatusValue::Transitioning);
    }

    #[test]
    fn a_full_disk_is_retried_after_removing_the_old_file() {
        use std::cell::Cell;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("3.status");
        std::fs::write(&p, b"old success").unwrap();
        // No room for a second copy while the old one exists.
        let calls = Cell::new(0);
        let full_beside_old = |path: &Path, bytes: &[u8]| {
            calls.set(calls.get() + 1);
            if path.exists() {
                Err(std::io::Error::from_raw_os_error(nix::libc::ENOSPC))
            } else {
                fsutil::write_atomic(path, bytes)
            }
        };
        write_replacing(&p, b"new", full_beside_old).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(calls.get(), 2);

        // Still failing: an error with code 201, and the old (now untrue) document is gone.
        let never = |_: &Path, _: &[u8]| Err(std::io::Error::from_raw_os_error(nix::libc::ENOSPC));
        let f = write_replacing(&p, b"newer", never).unwrap_err();
        assert_eq!(f.code, Code::StateIo);
        assert!(f.message.contains("3.status"), "{}", f.message);
        assert!(!p.exists());
    }

    #[test]
    fn a_status_that_cannot_be_written_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let r = StatusReport::new(
            "H",
            "Enable",
            StatusValue::Transitioning,
            Code::Success,
            "working",
        );
        let f = r.write(&file.join("0.status")).unwrap_err();
        assert_eq!(f.code, Code::StateIo);
        let f = write_heartbeat(
            &file.join("heartbeat.log"),
            HeartbeatState::Ready,
            Code::Success,
            "m",
        )
        .unwrap_err();
        assert_eq!(f.code, Code::StateIo);
    }

    #[test]
    fn panic_message_is_one_line_without_the_payload() {
        let m = panic_message("handler/x.rs:3");
        assert!(!m.contains('\n'));
        assert!(m.contains("handler/x.rs:3"));
    }
}
