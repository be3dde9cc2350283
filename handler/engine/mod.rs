//! The stages as one engine, shared by the agent's detached worker ([`crate::engine::worker`])
//! and `apply`: detect, plan, and run the stages not yet done with the checkpoint around each,
//! each with its context. The callers own status, heartbeat and exit codes.

pub mod checkpoint;
pub mod done;
pub mod files;
pub mod lock;
pub mod request;
pub mod spawn;
pub mod stop;
pub mod worker;

use crate::agent::settings::{RebootPolicy, Settings};
use crate::agent::status::{StatusValue, SubStatus};
use crate::engine::checkpoint::{Checkpoint, RunEnd, Stage, Store};
use crate::error::{Code, Failure};
use crate::host::{self, imds, Root};
use crate::plan::{self, Action, Plan};
use crate::stages::configure;
use crate::stages::install;
use crate::stages::verify::{self, HealthReport, PortWait};
use crate::sys::clock::SystemClock;
use crate::sys::logging;
use std::path::Path;
use std::time::Duration;

/// How long verify waits for ports to come up. An operator knob for image builds and slow
/// fabrics; the default covers a port that trains after a reboot.
fn verify_timeout() -> Duration {
    let secs = std::env::var("IBDRIVER_VERIFY_TIMEOUT_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(120)
        .min(3600);
    Duration::from_secs(secs)
}

/// Substatus entries, one per planned stage, from the checkpoint.
pub fn stage_substatus(cp: &Checkpoint, plan: &[Stage]) -> Vec<SubStatus> {
    plan.iter()
        .map(|s| {
            if cp.is_done(*s) {
                SubStatus::new(s.name(), StatusValue::Success, Code::Success, "done")
            } else if cp.current == Some(*s) {
                SubStatus::new(
                    s.name(),
                    StatusValue::Transitioning,
                    Code::Success,
                    "running",
                )
            } else if let (Some(err), None) = (&cp.last_error, cp.current) {
                if cp.next(plan) == Some(*s) {
                    SubStatus::new(s.name(), StatusValue::Error, err.code, err.message.clone())
                } else {
                    SubStatus::new(
                        s.name(),
                        StatusValue::Transitioning,
                        Code::Success,
                        "not started",
                    )
                }
            } else {
                SubStatus::new(
                    s.name(),
                    StatusValue::Transitioning,
                    Code::Success,
                    "pending",
                )
            }
        })
        .collect()
}

fn preflight(plan: &Plan) -> Result<(), Failure> {
    match &plan.action {
        Action::Refuse { failure } => Err(failure.clone()),
        Action::VerifyOnly { .. } | Action::Install { .. } => Ok(()),
    }
}

/// What the stages need, from the agent's worker or from `apply`.
pub struct Engine<'a> {
    /// `Enable` (the agent's worker) or `Apply`.
    pub operation: &'static str,
    /// Where the checkpoint lives.
    pub store: &'a Store,
    pub root: &'a Root,
    pub seq: u64,
    pub settings: &'a Settings,
    /// False once the work should leave at its next safe point.
    pub keep_going: &'a dyn Fn() -> bool,
    /// One progress line, with the stages' substatus so far.
    pub progress: &'a dyn Fn(&str, &[SubStatus]),
    /// The proxy variables downloads may use (`sys::runtime`).
    pub proxy_env: &'a std::collections::BTreeMap<String, String>,
}

impl Engine<'_> {
    /// How the summary log names this run.
    pub fn label(&self) -> String {
        match self.operation {
            "Enable" => format!("Enable seq={}", self.seq),
            other => other.to_string(),
        }
    }
}

/// How a run of the stages ended.
pub struct EngineEnd {
    pub end: Result<RunEnd, Failure>,
    pub cp: Checkpoint,
    pub stages: Vec<Stage>,
    pub report: HealthReport,
    pub notes: Vec<String>,
}

/// Detect, plan and run the stages not yet done for this sequence number and settings.
pub fn run_engine(e: &Engine) -> EngineEnd {
    let data = e.root.data_dir();
    let facts = host::detect(e.root, Some(&imds::Policy::default()), true);
    let ib_functions: Vec<&crate::host::pci::PciFunction> = facts.infiniband_functions().collect();
    let store = e.store;
    let seq = e.seq;
    let mut cp = Checkpoint::resume(store.load(), seq, &e.settings.fingerprint, &facts.boot_id);
    // The worker judges the host again with the full probe (the installed stack too): what
    // enable's preflight saw may have changed, and a refusal here must not be skipped. Verify
    // always runs again: a worker never reports success on an old verdict.
    cp.completed.retain(|s| !s.runs_every_time());
    let plan = plan::decide_resuming(
        &facts,
        &e.settings.public,
        e.settings.protected.package_url.as_ref(),
        cp.install_stages.is_some(),
    );
    if matches!(plan.action, Action::Install { .. }) {
        cp.install_stages = Some(plan.stages.clone());
    }
    let mut last_report = None;
    let mut configure_notes: Vec<String> = Vec::new();
    let last_subs = std::cell::RefCell::new(Vec::new());
    let progress = |line: &str| (e.progress)(line, &last_subs.borrow());
    let family = facts.os.as_ref().and_then(crate::plan::recipe::family);
    // Ask for the reboot a stage recorded; the work resumes after it.
    let reboot = |stage: &str, purpose: &str| -> Result<(), Failure> {
        progress(&format!(
            "{stage}: rebooting the VM {purpose}; the work resumes after the reboot"
        ));
        logging::summary(e.root, &format!("{}: rebooting {purpose}", e.label()));
        install::request_reboot()?;
        Err(Failure::new(
            Code::Rebooting,
            format!("rebooting {purpose}"),
        ))
    };
    let end = checkpoint::run(
        store,
        &mut cp,
        &plan.stages,
        |stage, cp| {
            *last_subs.borrow_mut() = stage_substatus(cp, &plan.stages);
            progress(&format!("{}: running", stage.name()));
            let install_ctx = match (&plan.install, family) {
                (Some(choice), Some(family)) => Some(install::Ctx {
                    root: e.root,
                    family,
                    kernel: &facts.kernel,
                    boot_id: &facts.boot_id,
                    choice,
                    settings: e.settings,
                    data_dir: &data,
                    keep_going: e.keep_going,
                    progress: &|line: &str| progress(&format!("{}: {line}", stage.name())),
                    loaded_modules: &facts.modules,
                    functions: &ib_functions,
                    proxy_env: e.proxy_env,
                }),
                _ => None,
            };
            let needs_ctx = || Failure::internal("install stage", "no install plan for this host");
            match stage {
                Stage::Preflight => preflight(&plan),
                Stage::WaitForLocks => {
                    install::wait_for_locks(install_ctx.as_ref().ok_or_else(needs_ctx)?)
                }
                Stage::Prerequisites => {
                    install::prerequisites(install_ctx.as_ref().ok_or_else(needs_ctx)?)
                }
                Stage::Fetch => {
                    install::fetch_artifact(install_ctx.as_ref().ok_or_else(needs_ctx)?)
                }
                Stage::Install => {
                    install::install(install_ctx.as_ref().ok_or_else(needs_ctx)?, cp, &|c| {
                        store.save(c)
                    })
                }
                Stage::PostInstall => {
                    install::post_install(install_ctx.as_ref().ok_or_else(needs_ctx)?)
                }
                Stage::Activate => {
                    let ctx = install_ctx.as_ref().ok_or_else(needs_ctx)?;
                    let may_reboot = e.settings.public.reboot == RebootPolicy::IfRequired;
                    match install::activate(ctx, cp, may_reboot)? {
                        install::Activation::Active => Ok(()),
                        install::Activation::Rebooting => {
                            // Record the reboot before asking for it: after it, enable resumes here.
                            store.save(cp)?;
                            reboot("activate", "to activate the drivers")
                        }
                    }
                }
                Stage::Repair => {
                    let Some(family) = family else {
                        return Ok(()); // refused in preflight already
                    };
                    // Facts as they are now: an install in this run changed modules and stack.
                    let now = host::detect(e.root, None, true);
                    let repaired = install::repair::repair(&install::repair::Ctx {
                        root: e.root,
                        family,
                        facts: &now,
                        lock_timeout: Duration::from_secs(e.settings.public.lock_timeout_seconds),
                        keep_going: e.keep_going,
                        progress: &|line: &str| progress(&format!("repair: {line}")),
                    })?;
                    let why = match repaired {
                        install::repair::Repaired::Ready => return Ok(()),
                        install::repair::Repaired::NeedsReboot(why) => why,
                    };
                    install::repair::record_reboot(
                        &data,
                        &now,
                        &why,
                        e.settings.public.reboot == RebootPolicy::IfRequired,
                    )?;
                    reboot(
                        "repair",
                        &format!("to load the stack's driver for kernel {}", now.kernel),
                    )
                }
                Stage::Configure => {
                    // Facts as they are now: an install or repair changed modules and devices.
                    let now = host::detect(e.root, None, false);
                    configure::run(&configure::Ctx {
                        root: e.root,
                        facts: &now,
                        settings: &e.settings.public,
                        data_dir: &data,
                        netdev_wait: verify_timeout().min(Duration::from_secs(60)),
                        keep_going: e.keep_going,
                        progress: &|line: &str| progress(&format!("configure: {line}")),
                    })
                    .map(|state| configure_notes = state.notes)
                }
                Stage::Verify => {
                    let wait = PortWait {
                        timeout: verify_timeout(),
                        every: Duration::from_secs(5),
                        slice: Duration::from_millis(200),
                    };
                    let r = verify::wait_until_healthy(&SystemClock, e.root, wait, e.keep_going);
                    last_report = Some(match &r {
                        Ok(rep) => rep.clone(),
                        Err(_) => verify::check(e.root),
                    });
                    r.map(|_| ())
                }
            }
        },
        || !(e.keep_going)(),
    );
    let report = last_report.unwrap_or_else(|| verify::check(e.root));
    if matches!(end, Ok(RunEnd::Completed)) {
        cp.verified_kernel = Some(facts.kernel.clone());
        cp.verified_stack = report.stack.clone();
    }
    EngineEnd {
        end,
        cp,
        stages: plan.stages,
        report,
        notes: configure_notes,
    }
}

/// Installed and verified: the downloaded artifacts (an unpacked MLNX_OFED bundle is over a
/// gigabyte) have served their purpose.
pub fn remove_downloads(data: &Path) {
    for dir in ["artifacts", "staging"] {
        let p = data.join(dir);
        if let Err(e) = std::fs::remove_dir_all(&p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %p.display(), error = %e, "cannot remove");
            }
        }
    }
}

/// The success line: the health summary, the IPoIB addresses configure set, its notes.
pub fn success_summary(health: &str, data: &Path, notes: &[String]) -> String {
    let mut out = health.to_string();
    if let Some(state) = configure::load_state(data) {
        if !state.assignments.is_empty() {
            let list: Vec<String> = state
                .assignments
                .iter()
                .map(|a| format!("{} {}", a.netdev, a.address))
                .collect();
            out.push_str(&format!("; IPoIB ({}): {}", state.ipoib, list.join(", ")));
        }
    }
    if !notes.is_empty() {
        out.push_str(&format!("; note: {}", notes.join("; ")));
    }
    out
}
