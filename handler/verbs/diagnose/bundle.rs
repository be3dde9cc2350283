//! The bundle being built: its members, the index of every part (collected, truncated,
//! missing, failed, skipped) and the caps.

use super::redact::Redactor;
use crate::sys::fsutil::dir_names;
use crate::sys::proc;
use serde::Serialize;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

pub const FILE_CAP: u64 = 5 * 1024 * 1024;
pub const BUNDLE_CAP: u64 = 64 * 1024 * 1024;
/// The bundle's top directory: every member is below it.
pub const TOP: &str = "ibdriver-diagnose";
pub(super) const PROGRAM_TIMEOUT: Duration = Duration::from_secs(15);
pub(super) const IMDS_TIMEOUT: Duration = Duration::from_secs(3);
pub(super) const SECRET_ENV: [&str; 8] = [
    "IBDRIVER_PACKAGE_URL",
    "IBDRIVER_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "http_proxy",
    "HTTP_PROXY",
    "all_proxy",
    "ALL_PROXY",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum State {
    Collected,
    Truncated,
    Missing,
    Failed,
    /// Left out on purpose (downloads, staging trees, telemetry).
    Skipped,
}

#[derive(Debug, Serialize)]
pub(super) struct Part {
    pub(super) name: String,
    pub(super) source: String,
    pub(super) state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) detail: Option<String>,
    pub(super) bytes: u64,
}

/// Members and their index, filled in collection order.
pub(super) struct Bundle {
    pub(super) redactor: Redactor,
    pub(super) parts: Vec<Part>,
    pub(super) members: Vec<(String, Vec<u8>)>,
    pub(super) total: u64,
}

impl Bundle {
    pub(super) fn part(
        &mut self,
        name: &str,
        source: &str,
        state: State,
        detail: Option<String>,
        bytes: u64,
    ) {
        self.parts.push(Part {
            name: name.to_string(),
            source: self.redactor.redact(source),
            state,
            detail: detail.map(|d| self.redactor.redact(&d)),
            bytes,
        });
    }

    pub(super) fn missing(&mut self, name: &str, source: &str, why: impl Into<String>) {
        self.part(name, source, State::Missing, Some(why.into()), 0);
    }

    /// Add `text` as a member (redacted); `detail` notes truncation or an exit code.
    pub(super) fn text(
        &mut self,
        name: &str,
        source: &str,
        text: &str,
        state: State,
        detail: Option<String>,
    ) {
        let clean = self.redactor.redact(text).into_bytes();
        let len = clean.len() as u64;
        if self.total + len > BUNDLE_CAP {
            self.missing(name, source, "left out: the bundle size cap was reached");
            return;
        }
        self.total += len;
        self.members.push((format!("{TOP}/{name}"), clean));
        self.part(name, source, state, detail, len);
    }

    /// A directory member (`name/`, written 0700), before what is in it.
    pub(super) fn dir(&mut self, name: &str) {
        self.members.push((format!("{TOP}/{name}/"), Vec::new()));
    }

    /// A member with no part of its own (the files of a tree whose part says what it holds):
    /// text is redacted, other bytes (the EFI variable) are kept. `false`: the size cap was
    /// reached, nothing was added.
    pub(super) fn member(&mut self, name: &str, bytes: &[u8]) -> bool {
        let clean = match std::str::from_utf8(bytes) {
            Ok(text) => self.redactor.redact(text).into_bytes(),
            Err(_) => bytes.to_vec(),
        };
        let len = clean.len() as u64;
        if self.total + len > BUNDLE_CAP {
            return false;
        }
        self.total += len;
        self.members.push((format!("{TOP}/{name}"), clean));
        true
    }

    /// A host file, its tail when longer than [`FILE_CAP`].
    pub(super) fn file(&mut self, name: &str, path: &Path) {
        let source = path.display().to_string();
        match read_tail(path, FILE_CAP) {
            Ok((bytes, None)) => self.text(
                name,
                &source,
                &String::from_utf8_lossy(&bytes),
                State::Collected,
                None,
            ),
            Ok((bytes, Some(full))) => self.text(
                name,
                &source,
                &String::from_utf8_lossy(&bytes),
                State::Truncated,
                Some(format!("last {} of {full} bytes", bytes.len())),
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.missing(name, &source, "not present")
            }
            Err(e) => self.part(name, &source, State::Failed, Some(e.to_string()), 0),
        }
    }

    /// The top-level regular files of `dir` under `prefix/`; subdirectories are noted, not read.
    /// The files of `dir` that `keep` accepts; subdirectories are noted as skipped, except
    /// those named in `descend`, whose files are collected too.
    pub(super) fn dir_files(
        &mut self,
        prefix: &str,
        dir: &Path,
        keep: impl Fn(&str) -> bool + Copy,
        descend: &[&str],
    ) {
        if !dir.is_dir() {
            self.missing(
                &format!("{prefix}/"),
                &dir.display().to_string(),
                "not present",
            );
            return;
        }
        for name in dir_names(dir) {
            let path = dir.join(&name);
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_file() && keep(&name) => {
                    self.file(&format!("{prefix}/{name}"), &path)
                }
                Ok(m) if m.is_dir() && descend.contains(&name.as_str()) => {
                    self.dir_files(&format!("{prefix}/{name}"), &path, keep, &[])
                }
                Ok(m) if m.is_dir() => self.part(
                    &format!("{prefix}/{name}/"),
                    &path.display().to_string(),
                    State::Skipped,
                    Some(
                        "directory not collected (downloads, staging trees and telemetry stay out)"
                            .into(),
                    ),
                    0,
                ),
                _ => {}
            }
        }
    }

    /// Run a program by argv with a timeout; its absence is recorded.
    pub(super) fn program(&mut self, name: &str, program: &str, args: &[&str]) {
        let source = format!("{program} {}", args.join(" "));
        if !proc::on_path(program) {
            self.missing(name, &source, format!("{program} is not on PATH"));
            return;
        }
        match proc::run(program, args, None, PROGRAM_TIMEOUT) {
            Ok(out) if out.success() => self.text(
                name,
                &source,
                &String::from_utf8_lossy(&out.stdout),
                State::Collected,
                None,
            ),
            Ok(out) => {
                let text = format!(
                    "{}\n--- stderr ---\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                self.text(
                    name,
                    &source,
                    &text,
                    State::Failed,
                    Some(out.describe_exit()),
                )
            }
            Err(e) => self.part(name, &source, State::Failed, Some(e.to_string()), 0),
        }
    }
}

/// Read a file, or only its last `cap` bytes from a line start; `Some(len)` when cut.
pub(super) fn read_tail(path: &Path, cap: u64) -> io::Result<(Vec<u8>, Option<u64>)> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut buf = Vec::new();
    if len <= cap {
        f.take(cap).read_to_end(&mut buf)?;
        return Ok((buf, None));
    }
    f.seek(SeekFrom::Start(len - cap))?;
    f.take(cap).read_to_end(&mut buf)?;
    // Start at a whole line, so no secret is cut into a piece the redactor cannot recognise.
    let from = buf.iter().position(|b| *b == b'\n').map_or(0, |p| p + 1);
    Ok((buf.split_off(from), Some(len)))
}

pub(super) fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}
