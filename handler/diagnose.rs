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

mod redact;

use crate::agent::{self, AgentContext, HandlerEnvironment, HANDLER_ENVIRONMENT};
use crate::error::Code;
use crate::fsutil::dir_names;
use crate::host::{imds, stack, Root};
use crate::{monitor, proc, protected, settings};
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

/// A path the agent wrote (absolute on the host) read under `IBDRIVER_ROOT` when it exists
/// there, as on a mounted image.
fn host_path(root: &Root, p: &Path) -> PathBuf {
    if root.base() == Path::new("/") || p.starts_with(root.base()) {
        return p.to_path_buf();
    }
    let rerooted = root.path(&p.to_string_lossy());
    if rerooted.exists() {
        rerooted
    } else {
        p.to_path_buf()
    }
}

/// The installed handler: `HandlerEnvironment.json` next to or one level above this binary,
/// else the newest `/var/lib/waagent/*InfiniBandDriverLinux*-*/` under the root.
fn find_handler(root: &Root) -> Result<(PathBuf, HandlerEnvironment), String> {
    let exe = std::env::current_exe().ok();
    let mut candidates = agent::candidate_paths(None, exe.as_deref());
    let waagent = root.path("var/lib/waagent");
    let mut installed: Vec<(std::time::SystemTime, String)> = dir_names(&waagent)
        .into_iter()
        .filter(|n| n.contains("InfiniBandDriverLinux") && n.contains('-'))
        .filter_map(|n| {
            let m = fs::metadata(waagent.join(&n).join(HANDLER_ENVIRONMENT)).ok()?;
            Some((m.modified().ok()?, n))
        })
        .collect();
    installed.sort();
    if let Some((_, newest)) = installed.last() {
        candidates.push(waagent.join(newest).join(HANDLER_ENVIRONMENT));
    }
    agent::load_handler_environment(&candidates).map_err(|e| match e {
        agent::AgentError::NotFound(_) => format!(
            "no {HANDLER_ENVIRONMENT} beside this binary or under {}/*InfiniBandDriverLinux*-*",
            waagent.display()
        ),
        other => other.to_string(),
    })
}

/// Learn every secret before anything is collected.
fn learn_secrets(
    redactor: &mut Redactor,
    root: &Root,
    handler: Option<&AgentContext>,
) -> Vec<String> {
    let mut notes = Vec::new();
    for key in SECRET_ENV {
        if let Some(v) = std::env::var(key).ok().filter(|v| !v.trim().is_empty()) {
            redactor.add(&v);
        }
    }
    if let Ok(conf) = fs::read_to_string(root.path("etc/waagent.conf")) {
        for line in conf.lines() {
            if let Some((k, v)) = line.split_once('=') {
                let k = k.trim();
                // `user:password@host`: the credentials go, the host stays readable.
                if k.starts_with("HttpProxy.") && v.contains('@') {
                    redactor.add(v.trim());
                }
            }
        }
    }
    let Some(ctx) = handler else { return notes };
    let cert_dir = ctx.certificate_dir();
    for name in dir_names(&ctx.env.config_folder) {
        if !name.ends_with(".settings") {
            continue;
        }
        let path = ctx.env.config_folder.join(&name);
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let Ok(raw) = settings::parse_settings_file(&text, &path) else {
            notes.push(format!(
                "{name} is not a settings document; only the structural rules apply to it"
            ));
            continue;
        };
        let Some(blob) = raw.protected_blob else {
            continue;
        };
        match protected::decrypt(&blob, raw.thumbprint.as_deref(), &cert_dir, PROGRAM_TIMEOUT) {
            Ok(plain) => {
                let plain = String::from_utf8_lossy(&plain).to_string();
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&plain) {
                    learn_strings(redactor, &v);
                    redactor.add(&serde_json::to_string(&v).unwrap_or_default());
                }
                redactor.add(&plain);
            }
            Err(e) => notes.push(format!(
                "protected settings of {name} could not be decrypted ({e}); their exact values are not scrubbed, the structural rules still apply"
            )),
        }
    }
    notes
}

fn learn_strings(redactor: &mut Redactor, v: &serde_json::Value) {
    match v {
        serde_json::Value::String(s) => redactor.add(s),
        serde_json::Value::Array(items) => items.iter().for_each(|i| learn_strings(redactor, i)),
        serde_json::Value::Object(map) => map.values().for_each(|i| learn_strings(redactor, i)),
        _ => {}
    }
}

fn collect_handler(b: &mut Bundle, found: &Result<(PathBuf, AgentContext), String>) {
    let (source, ctx) = match found {
        Ok(f) => f,
        Err(why) => {
            for name in [
                "handler/HandlerEnvironment.json",
                "handler/log/",
                "handler/status/",
                "handler/config/",
                "handler/heartbeat.log",
            ] {
                b.missing(name, "HandlerEnvironment.json", why.clone());
            }
            return;
        }
    };
    b.file("handler/HandlerEnvironment.json", source);
    let env = &ctx.env;
    let log = &env.log_folder;
    for expected in [crate::logging::LOG_FILE, "CommandExecution.log"] {
        if !log.join(expected).exists() {
            b.missing(
                &format!("handler/log/{expected}"),
                &log.join(expected).display().to_string(),
                "not present",
            );
        }
    }
    b.dir_files("handler/log", log, |_| true, &[]);
    b.dir_files("handler/status", &env.status_folder, |_| true, &[]);
    collect_settings(b, &env.config_folder);
    b.file("handler/heartbeat.log", &env.heartbeat_file);
    b.file("handler/mrseq", &ctx.handler_dir.join("mrseq"));
}

fn collect_settings(b: &mut Bundle, config: &Path) {
    let names: Vec<String> = dir_names(config)
        .into_iter()
        .filter(|n| n.ends_with(".settings"))
        .collect();
    if names.is_empty() {
        b.missing(
            "handler/config/",
            &config.display().to_string(),
            "no settings files",
        );
    }
    for name in names {
        let path = config.join(&name);
        let member = format!("handler/config/{name}");
        match read_tail(&path, FILE_CAP) {
            Ok((bytes, None)) => {
                let text = String::from_utf8_lossy(&bytes);
                let doc = redact::settings_document(&text).unwrap_or_else(|| text.to_string());
                b.text(
                    &member,
                    &path.display().to_string(),
                    &doc,
                    State::Collected,
                    Some("protectedSettings replaced".into()),
                )
            }
            Ok((_, Some(len))) => b.missing(
                &member,
                &path.display().to_string(),
                format!("{len} bytes is larger than a settings file can be"),
            ),
            Err(e) => b.part(
                &member,
                &path.display().to_string(),
                State::Failed,
                Some(e.to_string()),
                0,
            ),
        }
    }
}

/// Port attributes from `/sys/class/infiniband`, else from the PCI devices' `infiniband/`.
fn ib_ports(root: &Root) -> Option<String> {
    let class = root.path("sys/class/infiniband");
    let mut devices: Vec<(String, PathBuf)> = dir_names(&class)
        .into_iter()
        .map(|n| (n.clone(), class.join(n)))
        .collect();
    if devices.is_empty() {
        let pci = root.path("sys/bus/pci/devices");
        for f in dir_names(&pci) {
            let ib = pci.join(&f).join("infiniband");
            devices.extend(dir_names(&ib).into_iter().map(|n| (n.clone(), ib.join(n))));
        }
    }
    if devices.is_empty() {
        return None;
    }
    let mut out = String::new();
    for (name, dir) in devices {
        for port in dir_names(&dir.join("ports")) {
            let p = dir.join("ports").join(&port);
            out.push_str(&format!("{name}/{port}"));
            for attr in ["state", "phys_state", "rate", "link_layer"] {
                let v = crate::fsutil::read_trimmed(&p.join(attr)).unwrap_or_else(|| "?".into());
                out.push_str(&format!(" {attr}=\"{v}\""));
            }
            out.push('\n');
        }
    }
    Some(out)
}

fn imds_compute() -> Result<String, String> {
    let url = format!(
        "{}/metadata/instance/compute?api-version=2021-02-01&format=json",
        imds::base_url().trim_end_matches('/')
    );
    // ureq uses no proxy unless told to: IMDS is reached directly.
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(IMDS_TIMEOUT)
        .timeout(IMDS_TIMEOUT)
        .redirects(0)
        .build();
    match agent.get(&url).set("Metadata", "true").call() {
        Ok(resp) => resp
            .into_string()
            .map_err(|e| format!("reading the IMDS answer: {e}")),
        Err(ureq::Error::Status(code, _)) => Err(format!("IMDS answered HTTP {code}")),
        Err(e) => Err(format!("IMDS unreachable: {}", e.kind())),
    }
}

fn collect_host(b: &mut Bundle, root: &Root) {
    let osrelease = root.path("proc/sys/kernel/osrelease");
    if osrelease.exists() {
        b.file("host/kernel.txt", &osrelease);
    } else {
        b.program("host/kernel.txt", "uname", &["-a"]);
    }
    b.file("host/os-release", &root.path("etc/os-release"));
    b.file("host/waagent.conf", &root.path("etc/waagent.conf"));
    b.file("host/proc-modules", &root.path("proc/modules"));
    match ib_ports(root) {
        Some(text) => b.text(
            "host/ib-ports.txt",
            "/sys/class/infiniband/*/ports/*",
            &text,
            State::Collected,
            None,
        ),
        None => b.missing(
            "host/ib-ports.txt",
            "/sys/class/infiniband",
            "no InfiniBand device registered",
        ),
    }
    b.program("host/ip-addr.json", "ip", &["-j", "addr"]);
    let report = monitor::check(root);
    b.text(
        "host/health.json",
        "ibdriver health --json",
        &to_json(&report),
        State::Collected,
        None,
    );
    let stacks = serde_json::json!({
        "detected": stack::detect(root),
        "installed_by_us": stack::read_marker(root),
    });
    b.text(
        "host/stack.json",
        "installed stack detection",
        &to_json(&stacks),
        State::Collected,
        None,
    );
    b.program("host/ofed_info.txt", "ofed_info", &["-s"]);
    b.program("host/dkms-status.txt", "dkms", &["status"]);
    let source = format!("{}/metadata/instance/compute", imds::base_url());
    match imds_compute() {
        Ok(body) => match redact::imds_compute(&body) {
            Some((doc, changed)) => {
                let detail =
                    (!changed.is_empty()).then(|| format!("redacted: {}", changed.join(", ")));
                b.text(
                    "host/imds-compute.json",
                    &source,
                    &doc,
                    State::Collected,
                    detail,
                )
            }
            None => b.part(
                "host/imds-compute.json",
                &source,
                State::Failed,
                Some("IMDS answered with something other than JSON".into()),
                0,
            ),
        },
        Err(e) => b.part("host/imds-compute.json", &source, State::Failed, Some(e), 0),
    }
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
        &root.path(crate::logging::SUMMARY_LOG),
    );
    let rotated = root.path(&format!("{}.1", crate::logging::SUMMARY_LOG));
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
        created: crate::clock::now_rfc3339(),
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
            eprintln!(
                "ibdriver: cannot write the bundle to {}: {e}",
                out.display()
            );
            return Code::Usage.exit_code();
        }
    };
    let (members, collected, missing) = gather(root);
    match write_bundle(tmp, out, &members) {
        Ok(size) => {
            println!("{}", out.display());
            println!(
                "diagnose: {collected} parts collected, {missing} missing or failed (listed in MANIFEST.json), {size} bytes compressed, secrets redacted"
            );
            0
        }
        Err(e) => {
            eprintln!(
                "ibdriver: cannot write the bundle to {}: {e}",
                out.display()
            );
            Code::Internal.exit_code()
        }
    }
}
