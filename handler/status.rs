//! The status file and heartbeat file: typed documents in the exact shape the agent parses
//! (PROTOCOL.md sections 4-5), clamped to its 128 KiB limit and written atomically.

use crate::clock;
use crate::error::{Code, Failure};
use crate::fsutil;
use serde::{Deserialize, Serialize};
use std::path::Path;

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
    pub code: u32,
    #[serde(rename = "formattedMessage")]
    pub formatted_message: FormattedMessage,
}

impl SubStatus {
    pub fn new(name: &str, status: StatusValue, code: u32, message: impl Into<String>) -> Self {
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
    pub code: u32,
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
    pub code: u32,
    pub message: String,
    pub substatus: Vec<SubStatus>,
}

impl StatusReport {
    pub fn new(
        name: &str,
        operation: &str,
        status: StatusValue,
        code: u32,
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
            f.code.number(),
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

    pub fn write(&self, path: &Path) -> Result<(), Failure> {
        let bytes = self.to_json(&clock::now_rfc3339());
        fsutil::write_atomic(path, &bytes).map_err(|e| Failure::state_io(path, e))
    }
}

fn truncate(s: &mut String, max_chars: usize) {
    if s.chars().count() > max_chars {
        let cut: String = s.chars().take(max_chars).collect();
        *s = cut + TRUNCATED;
    }
}

/// Read back a status file we wrote (the worker and no-op checks need the last outcome).
pub fn read(path: &Path) -> Option<StatusEntry> {
    let text = std::fs::read_to_string(path).ok()?;
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
    fsutil::write_atomic(path, &heartbeat_json(state, code, message))
        .map_err(|e| Failure::state_io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn exact_shape_with_lower_case_status() {
        let r =
            StatusReport::new("H", "Enable", StatusValue::Success, 0, "ok").with_substatus(vec![
                SubStatus::new("verify", StatusValue::Success, 0, "ports up"),
            ]);
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
                    1,
                    "x".repeat(20_000),
                )
            })
            .collect();
        let r = StatusReport::new("H", "Enable", StatusValue::Error, 220, "m".repeat(300_000))
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
        let r = StatusReport::new("H", "Enable", StatusValue::Success, 0, "m".repeat(100_000));
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
        StatusReport::new("H", "Enable", StatusValue::Transitioning, 0, "working")
            .write(&p)
            .unwrap();
        assert_eq!(read(&p).unwrap().status.status, StatusValue::Transitioning);
    }
}
