//! `diagnose --out FILE`: a support bundle, a `.tar.gz` of text files under `ibdriver-diagnose/`
//! with a `MANIFEST.json` that lists every part collected and every part missing and why.
//!
//! What goes in: our state (top-level files of the data directory; downloaded artifacts and
//! staging trees stay out), our logs (the summary log and the handler's `logFolder`), the
//! agent's view (`HandlerEnvironment.json`, `status/`, `config/*.settings`, heartbeat,
//! `waagent.log`, `CommandExecution.log`, `waagent.conf`), the host (kernel, os-release,
//! `/proc/modules`, every InfiniBand port, `ip -j addr`, the health report, the installed stack,
//! `ofed_info -s`, `dkms status`), IMDS compute metadata, and under `sysfs/` a plain-file
//! copy of the hardware facts the handler reads, for `plan --sysfs` ([`sysfs`] has its
//! rules). A part that is absent, a program that is not on PATH or an IMDS that does not
//! answer is recorded, never fatal.
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
//! with mode 0600; its members are regular files (0600) and, for `sysfs/`, directories
//! (0700), never links.

mod bundle;
mod collect;
mod redact;
mod sysfs;

use collect::{collect_handler, collect_host, find_handler, host_path, learn_secrets};

use crate::agent::environment::{AgentContext, HandlerEnvironment, HANDLER_ENVIRONMENT};
use crate::error::Code;
use crate::host::Root;
use serde::Serialize;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use bundle::{to_json, Bundle, Part, State};
pub use bundle::{BUNDLE_CAP, FILE_CAP, TOP};
pub use redact::Redactor;
pub use sysfs::SYSFS;

#[derive(Serialize)]
struct Manifest<'a> {
    tool: String,
    created: String,
    root: String,
    /// The directory the hardware facts were read from (`IBDRIVER_SYSFS`, default `<root>/sys`).
    sysfs: String,
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
    sysfs::collect(&mut b, root);
    let missing = b
        .parts
        .iter()
        .filter(|p| matches!(p.state, State::Missing | State::Failed))
        .count();
    let collected = b
        .parts
        .iter()
        .filter(|p| matches!(p.state, State::Collected | State::Truncated))
        .count();
    let manifest = Manifest {
        tool: format!("ibdriver {} diagnose", env!("IBDRIVER_VERSION")),
        created: crate::sys::clock::now_rfc3339(),
        root: root.base().display().to_string(),
        sysfs: root.sysfs_dir().display().to_string(),
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
        h.set_mtime(mtime);
        if name.ends_with('/') {
            h.set_mode(0o700);
            h.set_entry_type(tar::EntryType::Directory);
        } else {
            h.set_mode(0o600);
            h.set_entry_type(tar::EntryType::Regular);
        }
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
