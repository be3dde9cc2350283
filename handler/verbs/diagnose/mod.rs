//! `diagnose --out FILE`: a support bundle, a `.tar.gz` of text files under `ibdriver-diagnose/`
//! with a `MANIFEST.json` that lists every part collected and every part missing and why.
//!
//! What goes in: our state (top-level files of the data directory; downloaded artifacts and
//! staging trees stay out), our logs (the summary log and the handler's `logFolder`), the
//! agent's view (`HandlerEnvironment.json`, `status/`, `config/*.settings`, heartbeat,
//! `waagent.log`, `CommandExecution.log`, `waagent.conf`), the host (kernel, os-release,
//! `/proc/modules`, every InfiniBand port, `ip -j addr`, the health report, the installed stack,
//! `ofed_info -s`, `dkms status`) and IMDS compute metadata. A part that is absent, a program
//! that is not on PATH or an IMDS that does not answer is recorded, never fatal.
//!
//! Every member passes through [`redact::Redactor::redact`] (see that module for the rules)
//! after the structural passes: `protectedSettings` blobs are replaced, and IMDS loses
//! `customData`, `userData`, `publicKeys`, tag values and `adminUsername`. The redactor learns
//! the exact secrets first: the decrypted protected settings of every `config/*.settings` (with
//! the agent's certificates, as enable decrypts them), the values of `IBDRIVER_PACKAGE_URL`,
//! `IBDRIVER_PROXY`, `http(s)_proxy`/`HTTP(S)_PROXY`/`all_proxy`, and the credentials in
//! `HttpProxy.Host` of `waagent.conf`.
//!
//! Each file is capped at [`FILE_CAP`] (logs keep their tail), the bundle at [`BUNDLE_CAP`]
//! before compression. The bundle is written atomically (temp file beside it, fsync, rename)
//! with mode 0600.

mod collect;
mod redact;

use collect::{collect_handler, collect_host, find_handler, host_path, learn_secrets};

use crate::agent::environment::{AgentContext, HandlerEnvironment, HANDLER_ENVIRONMENT};
use crate::agent::protected;
use crate::agent::settings;
use crate::error::Code;
use crate::host::{imds, stack, Root};
use crate::sys::fsutil::dir_names;
use crate::sys::proc;
use serde::Serialize;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use redact::Redactor;

pub const FILE_CAP: u64 = 5 * 1024 * 1024;
pub const BUNDLE_CAP: u64 = 64 * 1024 * 1024;
const TOP: &str = "ibdriver-diagnose";
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(15);
const IMDS_TIMEOUT: Duration = Duration::from_secs(3);
const SECRET_ENV: [&str; 8] = [
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
enum State {
    Collected,
    Truncated,
    Missing,
    Failed,
    /// Left out on purpose (downloads, staging trees, telemetry).
    Skipped,
}

#[derive(Debug, Serialize)]
struct Part {
    name: String,
    source: String,
    state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    bytes: u64,
}

/// Members and their index, filled in collection order.
struct Bundle {
    redactor: Redactor,
    parts: Vec<Part>,
    members: Vec<(String, Vec<u8>)>,
    total: u64,
}

impl Bundle {
    fn part(&mut self, name: &str, source: &str, state: State, detail: Option<String>, bytes: u64) {
        self.parts.push(Part {
            name: name.to_string(),
            source: self.redactor.redact(source),
            state,
            detail: detail.map(|d| self.redactor.redact(&d)),
            bytes,
        });
    }

    fn missing(&mut self, name: &str, source: &str, why: impl Into<String>) {
        self.part(name, source, State::Missing, Some(why.into()), 0);
    }

    /// Add `text` as a member (redacted); `detail` notes truncation or an exit code.
    fn text(&mut self, name: &str, source: &str, text: &str, state: State, detail: Option<String>) {
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

    /// A host file, its tail when longer than [`FILE_CAP`].
    fn file(&mut self, name: &str, path: &Path) {
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
    fn dir_files(
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
    fn program(&mut self, name: &str, program: &str, args: &[&str]) {
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
fn read_tail(path: &Path, cap: u64) -> io::Result<(Vec<u8>, Option<u64>)> {
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

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

#[derive(Serialize)]
struct Manifest<'a> {
    tool: String,
    created: String,
    root: String,
    handler: Option<String>,
    exact_values_scrubbed: usize,
    notes: &'a [String],
    parts: &'a [Part],
}

/// Gather everything (the redactor first), returning the members with the manifest first.
fn gather(root: &Root) -> (Vec<(String, Vec<u8>)>, usize, usize) {
    let found = find_handler(root).map(|(dir, env)| {
        let env = HandlerEnvironment {
            log_folder: host_path(root, &env.log_folder),
            config_folder: host_path(root, &env.config_folder),
            status_folder: host_path(root, &env.status_folder),
            heartbeat_file: host_path(root, &env.heartbeat_file),
            events_folder: env.events_folder.as_deref().map(|p| host_path(root, p)),
            name: env.name,
        };
        let ctx = AgentContext {
            handler_dir: dir.clone(),
            env,
            vars: Default::default(),
            seq: 0,
        };
        (dir.join(HANDLER_ENVIRONMENT), ctx)
    });
    let mut redactor = Redactor::default();
    let notes = learn_secrets(&mut redactor, root, found.as_ref().ok().map(|f| &f.1));
    let mut b = Bundle {
        redactor,
        parts: Vec::new(),
        members: Vec::new(),
        total: 0,
    };
    // With apply's own log (there is no agent log folder when apply runs on its own).
    b.dir_files("data", &root.data_dir(), |_| true, &["log"]);
    b.file(
        "logs/ib-vmext-status",
        &root.path(crate::sys::logging::SUMMARY_LOG),
    );
    let rotated = root.path(&format!("{}.1", crate::sys::logging::SUMMARY_LOG));
    if rotated.exists() {
        b.file("logs/ib-vmext-status.1", &rotated);
    }
    b.file("logs/waagent.log", &root.path("var/log/waagent.log"));
    collect_handler(&mut b, &found);
    collect_host(&mut b, root);
    let missing = b
        .parts
        .iter()
        .filter(|p| matches!(p.state, State::Missing | State::Failed))
        .count();
    let collected = b.members.len();
    let manifest = Manifest {
        tool: format!("ibdriver {} diagnose", env!("IBDRIVER_VERSION")),
        created: crate::sys::clock::now_rfc3339(),
        root: root.base().display().to_string(),
        handler: found
            .as_ref()
            .ok()
            .map(|f| f.1.handler_dir.display().to_string()),
        exact_values_scrubbed: b.redactor.exact_values(),
        notes: &notes,
        parts: &b.parts,
    };
    let text = b.redactor.redact(&to_json(&manifest));
    let mut members = vec![(format!("{TOP}/MANIFEST.json"), text.into_bytes())];
    members.append(&mut b.members);
    (members, collected, missing)
}

/// Write the members as a gzip'd tar into `tmp`, then move it to `out`.
fn write_bundle(
    tmp: tempfile::NamedTempFile,
    out: &Path,
    members: &[(String, Vec<u8>)],
) -> io::Result<u64> {
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let gz = flate2::write::GzEncoder::new(tmp.as_file(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_mtime(mtime);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.append_data(&mut h, name, data.as_slice())?;
    }
    tar.into_inner()?.finish()?.flush()?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o600))?;
    tmp.as_file().sync_all()?;
    let size = tmp.as_file().metadata()?.len();
    tmp.persist(out).map_err(|e| e.error)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(size)
}

pub fn run(root: &Root, out: &Path) -> i32 {
    crate::sys::logging::init(None, false);
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = if out.is_dir() {
        Err(io::Error::other("it is a directory"))
    } else {
        tempfile::Builder::new()
            .prefix(".ibdriver-diagnose-")
            .suffix(".tmp")
            .tempfile_in(dir)
    };
    let tmp = match tmp {
        Ok(t) => t,
        Err(e) => {
            crate::tell!(
                "ibdriver: cannot write the bundle to {}: {e}",
                out.display()
            );
            return Code::Usage.exit_code();
        }
    };
    let (members, collected, missing) = gather(root);
    match write_bundle(tmp, out, &members) {
        Ok(size) => {
            crate::say!("{}", out.display());
            crate::say!(
                "diagnose: {collected} parts collected, {missing} missing or failed (listed in MANIFEST.json), {size} bytes compressed, secrets redacted"
            );
            0
        }
        Err(e) => {
            crate::tell!(
                "ibdriver: cannot write the bundle to {}: {e}",
                out.display()
            );
            Code::Internal.exit_code()
        }
    }
}
