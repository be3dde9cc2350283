//! `apply [--settings FILE]`: the engine without the agent, for Batch start tasks, image builds
//! and cloud-init (README, "Operator verbs"). The same stages, checkpoint, lock and exit codes
//! as the agent's worker; progress goes to stderr, the result line to stdout, the log to
//! `<data dir>/log/`. Secrets come only from the environment (`IBDRIVER_PACKAGE_URL`,
//! `IBDRIVER_PROXY`), never from the command line.
//!
//! apply keeps its own checkpoint ([`CHECKPOINT`], sequence number [`SEQ`], a fingerprint of the
//! settings), so running the same `apply` again (a start task after a reboot, a retried image
//! build) resumes or only re-checks. It shares the worker lock with the extension: an enable's
//! worker waits for apply to finish, and apply leaves at its next safe point, never halfway
//! through an installer, when the extension's disable asks.

use crate::agent::settings::{self, Settings};
use crate::engine::checkpoint::{Checkpoint, RunEnd, Stopped, Store};
use crate::engine::lock::{Held, WorkerLock};
use crate::engine::request::read_request;
use crate::engine::{remove_downloads, run_engine, success_summary, Engine, EngineEnd};
use crate::error::{Code, Failure};
use crate::host::Root;
use crate::sys::fsutil;
use crate::sys::logging;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// apply's own sequence number, in the checkpoint, the worker lock and `request.json`: never one
/// the agent uses, so an enable is never mistaken for apply's work or the other way round.
pub const SEQ: u64 = u64::MAX;
/// apply's own checkpoint beside the agent's `state.json`: neither resets the other's progress,
/// and the agent's no-op enable is not undone by a start task's apply.
pub const CHECKPOINT: &str = "apply-state.json";

/// Where apply takes its secrets from, and the protected setting each one is.
const SECRET_VARS: [(&str, &str); 2] = [
    ("IBDRIVER_PACKAGE_URL", "packageUrl"),
    ("IBDRIVER_PROXY", "proxy"),
];
/// Names (by number only) the pipe through which apply hands the secrets to itself across
/// its re-exec.
pub const SECRETS_FD_VAR: &str = "IBDRIVER_APPLY_SECRETS_FD";

/// What fits in a pipe's buffer on every kernel, so the write before the exec never blocks.
const SECRETS_MAX: usize = 16 * 1024;

/// The kernel keeps a process's initial environment in `/proc/<pid>/environ` for its whole
/// life (`remove_var` only changes our copy), readable by every process of the same user. So
/// when a secret arrives in the environment, apply moves the secrets into a pipe and
/// execs itself again without them. Returns only if there was nothing to move, or on failure.
fn reexec_without_secrets() -> Result<(), Failure> {
    use std::io::Write;
    use std::os::fd::IntoRawFd;
    use std::os::unix::process::CommandExt;
    if SECRET_VARS
        .iter()
        .all(|(var, _)| std::env::var_os(var).is_none())
    {
        return Ok(());
    }
    let mut secrets = serde_json::Map::new();
    for (var, key) in SECRET_VARS {
        if let Some(v) = std::env::var_os(var) {
            let v = v.to_string_lossy();
            if !v.trim().is_empty() {
                secrets.insert(key.into(), serde_json::Value::String(v.into_owned()));
            }
        }
    }
    let cannot = |e: &dyn std::fmt::Display| {
        Failure::new(
            Code::Internal,
            format!("cannot restart apply without the secrets in its environment ({e}); check that /proc is mounted"),
        )
    };
    // A pipe (memfd_create is not in glibc 2.17, the release floor): the secrets are written
    // into its buffer and its write end closed before the exec; the read end, without
    // close-on-exec, is inherited by the new image, which reads them to the end.
    let bytes = serde_json::Value::Object(secrets).to_string().into_bytes();
    if bytes.len() > SECRETS_MAX {
        return Err(Failure::new(
            Code::SettingsInvalid,
            format!(
                "{} and {} together must stay under {SECRETS_MAX} bytes",
                SECRET_VARS[0].0, SECRET_VARS[1].0
            ),
        ));
    }
    let (read_end, write_end) = nix::unistd::pipe().map_err(|e| cannot(&e))?;
    std::fs::File::from(write_end)
        .write_all(&bytes)
        .map_err(|e| cannot(&e))?;
    let file = std::fs::File::from(read_end);
    let mut argv = std::env::args_os();
    let mut cmd = std::process::Command::new("/proc/self/exe");
    if let Some(arg0) = argv.next() {
        cmd.arg0(arg0);
    }
    cmd.args(argv);
    for (var, _) in SECRET_VARS {
        cmd.env_remove(var);
    }
    let raw = file.into_raw_fd();
    cmd.env(SECRETS_FD_VAR, raw.to_string());
    let err = cmd.exec();
    let _ = nix::unistd::close(raw);
    Err(cannot(&err))
}

/// The secrets as a protected-settings object: from the pipe the re-exec left, which is
/// closed at once so no child inherits it.
fn take_secrets() -> Result<serde_json::Map<String, serde_json::Value>, Failure> {
    let Some(fd) = std::env::var_os(SECRETS_FD_VAR) else {
        return Ok(serde_json::Map::new());
    };
    std::env::remove_var(SECRETS_FD_VAR);
    let lost = || {
        Failure::new(
            Code::Internal,
            format!("{SECRETS_FD_VAR} does not name apply's secrets; unset it and run apply again"),
        )
    };
    let fd: i32 = fd
        .to_str()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n > 2)
        .ok_or_else(lost)?;
    // The pipe's read end; its write end was closed before the exec, so this ends.
    let text = {
        use std::io::Read;
        use std::os::fd::FromRawFd;
        // SAFETY: the variable was set by our own re-exec to the read end it left open, and
        // nothing else in this process owns that descriptor.
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        let mut buf = Vec::new();
        f.by_ref()
            .take(SECRETS_MAX as u64 + 1)
            .read_to_end(&mut buf)
            .map(|_| buf)
    };
    let value: serde_json::Value =
        serde_json::from_slice(&text.map_err(|_| lost())?).map_err(|_| lost())?;
    match value {
        serde_json::Value::Object(m) => Ok(m),
        _ => Err(lost()),
    }
}

/// Progress to stderr, the result line to stdout: a closed or full stream loses the line but
/// never the work or the exit code.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "ibdriver apply: {line}");
}

fn result_line(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}").and_then(|_| out.flush());
}

/// Public settings from the file (or defaults), protected ones from the environment.
pub fn settings_from(file: Option<&Path>) -> Result<Settings, Failure> {
    let public = match file {
        None => settings::PublicSettings::default(),
        Some(p) => settings::read_public_settings(p).map_err(Failure::from)?,
    };
    let protected = take_secrets()?;
    let present: Vec<String> = protected.keys().cloned().collect();
    let protected_json = serde_json::Value::Object(protected).to_string();
    let protected = settings::parse_protected(protected_json.as_bytes()).map_err(|e| {
        let f: Failure = e.into();
        Failure::new(
            f.code,
            format!("{} (from IBDRIVER_PACKAGE_URL / IBDRIVER_PROXY)", f.message),
        )
    })?;
    // The fingerprint covers the public settings and which secrets are set, never a secret's
    // value, not even hashed (the checkpoint is in support bundles). A new artifact comes with
    // a new package.sha256, which is public.
    let mut h = Sha256::new();
    h.update(b"apply\0");
    h.update(serde_json::to_vec(&public).expect("settings serialize"));
    h.update(b"\0");
    h.update(present.join(",").as_bytes());
    let fingerprint = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Settings {
        public,
        protected,
        fingerprint,
    })
}

fn fail(f: &Failure) -> i32 {
    tracing::error!(code = f.code.number(), "apply failed: {}", f.message);
    result_line(&format!(
        "error {} {}: {}",
        f.code.number(),
        f.code.name(),
        f.message
    ));
    f.code.exit_code()
}

pub fn run(root: &Root, settings_file: Option<&Path>) -> i32 {
    let data = match start_log(root) {
        Ok(data) => data,
        Err(f) => return fail(&f),
    };
    tracing::info!(version = env!("IBDRIVER_VERSION"), "apply start");
    let settings = match settings_from(settings_file) {
        Ok(s) => s,
        Err(f) => return fail(&f),
    };
    let _held = match take_lock(&data) {
        Ok(held) => held,
        Err(f) => return fail(&f),
    };
    let apply = Apply {
        root,
        store: Store::named(&data, CHECKPOINT),
        data,
    };
    let end = apply.run_stages(&settings);
    apply.finish(end)
}

/// Leave the secrets out of the environment (a re-exec), then log into the data directory;
/// what fails before that directory exists is logged to stderr only.
fn start_log(root: &Root) -> Result<PathBuf, Failure> {
    if let Err(f) = reexec_without_secrets() {
        logging::init(None, false);
        return Err(f);
    }
    let data = root.data_dir();
    if let Err(e) = fsutil::create_private_dir(&data) {
        logging::init(None, false);
        return Err(Failure::state_io(&data, e));
    }
    logging::init(Some(&data.join("log")), false);
    Ok(data)
}

/// The worker lock, shared with the extension: its worker leaves at a safe point, so this
/// waits at most 15 minutes.
fn take_lock(data: &Path) -> Result<Held, Failure> {
    let lock = WorkerLock::new(data);
    match lock.acquire(
        SEQ,
        Duration::from_secs(900),
        Duration::from_millis(200),
        || false,
    ) {
        Ok(Some(held)) => Ok(held),
        Ok(None) => Err(Failure::new(
            Code::WorkerStart,
            "the extension's worker held the lock for 15 minutes; run apply again later",
        )),
        Err(e) => Err(Failure::state_io(
            &data.join(crate::engine::files::WORKER_LOCK),
            e,
        )),
    }
}

/// Where apply works, under the worker lock: the root, the data directory and apply's own
/// checkpoint.
struct Apply<'a> {
    root: &'a Root,
    data: PathBuf,
    store: Store,
}

impl Apply<'_> {
    /// The engine under apply's sequence number, with its progress on stderr.
    fn run_stages(&self, settings: &Settings) -> EngineEnd {
        // apply leaves at a safe point when the extension's disable asks after apply started
        // (a stop request written earlier is not for us). The extension's enable waits for
        // the lock.
        let at_start = read_request(&self.data);
        let wanted = || {
            let now = read_request(&self.data);
            now == at_start || !now.is_some_and(|r| r.stop)
        };
        let last = std::cell::RefCell::new(String::new());
        let progress = |line: &str, _: &[crate::agent::status::SubStatus]| {
            // The download reports often; repeat nothing.
            if *last.borrow() != line {
                say(line);
                *last.borrow_mut() = line.to_string();
            }
        };
        run_engine(&Engine {
            operation: "Apply",
            store: &self.store,
            root: self.root,
            seq: SEQ,
            settings,
            keep_going: &wanted,
            progress: &progress,
            proxy_env: &crate::sys::runtime::Runtime::from_env().proxy,
        })
    }

    /// Say how the run ended; returns apply's exit code.
    fn finish(&self, end: EngineEnd) -> i32 {
        let EngineEnd {
            end,
            cp,
            report,
            notes,
            ..
        } = end;
        match end {
            Err(f) => fail(&f),
            Ok(RunEnd::Rebooting(why)) => {
                say("the VM reboots to activate the drivers; run apply again after the boot (a Batch start task does) and it resumes");
                result_line(&format!("rebooting: {why}"));
                0
            }
            Ok(RunEnd::Stopped(at)) => fail(&Failure::new(
                Code::Superseded,
                match at {
                    Stopped::BetweenStages => {
                        "the extension was disabled while apply ran; apply left at a safe point"
                            .into()
                    }
                    Stopped::InStage(message) => message,
                },
            )),
            Ok(RunEnd::Failed(f)) => {
                if !report.problems.is_empty() {
                    say(&format!("health: {}", report.problems.join("; ")));
                }
                fail(&f)
            }
            Ok(RunEnd::Completed) => {
                self.succeed(cp, success_summary(&report.summary, &self.data, &notes))
            }
        }
    }

    /// The checkpoint records the success before the downloads go and the result is said.
    fn succeed(&self, mut cp: Checkpoint, summary: String) -> i32 {
        cp.succeed(summary.clone());
        if let Err(f) = self.store.save(&mut cp) {
            return fail(&f);
        }
        remove_downloads(&self.data);
        logging::summary(self.root, &format!("Apply: success {summary}"));
        tracing::info!("apply succeeded: {summary}");
        result_line(&format!("success: {summary}"));
        0
    }
}
