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
use crate::host::pci::PciFunction;
use crate::host::{self, imds, HostFacts, Root};
use crate::plan::distro::Family;
use crate::plan::{self, Action, Plan};
use crate::stages::configure;
use crate::stages::install;
use crate::stages::verify::{self, HealthReport, PortWait};
use crate::sys::clock::SystemClock;
use crate::sys::logging;
use std::path::{Path, PathBuf};
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
    let facts = host::detect(e.root, Some(&imds::Policy::default()), true);
    let (mut cp, plan) = resume(e, &facts);
    let mut run = Run::new(e, &facts, &plan);
    let end = checkpoint::run(
        e.store,
        &mut cp,
        &plan.stages,
        |stage, cp| run.stage(stage, cp),
        || !(e.keep_going)(),
    );
    run.finish(end, cp)
}

/// The checkpoint to go on from, and the plan for the host as it is now.
fn resume(e: &Engine, facts: &HostFacts) -> (Checkpoint, Plan) {
    let mut cp = Checkpoint::resume(
        e.store.load(),
        e.seq,
        &e.settings.fingerprint,
        &facts.boot_id,
    );
    // The worker judges the host again with the full probe (the installed stack too): what
    // enable's preflight saw may have changed, and a refusal here must not be skipped. Verify
    // always runs again: a worker never reports success on an old verdict.
    cp.completed.retain(|s| !s.runs_every_time());
    let plan = plan::decide_resuming(
        facts,
        &e.settings.public,
        e.settings.protected.package_url.as_ref(),
        cp.install_stages.is_some(),
    );
    if matches!(plan.action, Action::Install { .. }) {
        cp.install_stages = Some(plan.stages.clone());
    }
    (cp, plan)
}

/// One run of the planned stages: what each stage is given, and what the stages leave for
/// the run's end.
struct Run<'a> {
    e: &'a Engine<'a>,
    facts: &'a HostFacts,
    plan: &'a Plan,
    data: PathBuf,
    family: Option<Family>,
    functions: Vec<&'a PciFunction>,
    /// The stages' substatus when the running one began, sent with each progress line.
    subs: Vec<SubStatus>,
    /// What the verify stage saw last.
    report: Option<HealthReport>,
    /// What configure wants said in the success message.
    notes: Vec<String>,
}

impl<'a> Run<'a> {
    fn new(e: &'a Engine<'a>, facts: &'a HostFacts, plan: &'a Plan) -> Self {
        Run {
            e,
            facts,
            plan,
            data: e.root.data_dir(),
            family: facts.os.as_ref().and_then(crate::plan::recipe::family),
            functions: facts.infiniband_functions().collect(),
            subs: Vec::new(),
            report: None,
            notes: Vec::new(),
        }
    }

    /// Run `stage` (the checkpoint runner saves `cp` around it).
    fn stage(&mut self, stage: Stage, cp: &mut Checkpoint) -> Result<(), Failure> {
        self.subs = stage_substatus(cp, &self.plan.stages);
        self.progress(&format!("{}: running", stage.name()));
        match stage {
            Stage::Preflight => preflight(self.plan),
            Stage::WaitForLocks => self.with_install(stage, install::wait_for_locks),
            Stage::Prerequisites => self.with_install(stage, install::prerequisites),
            Stage::Fetch => self.with_install(stage, install::fetch_artifact),
            Stage::Install => self.with_install(stage, |ctx| {
                install::install(ctx, cp, &|c| self.e.store.save(c))
            }),
            Stage::PostInstall => self.with_install(stage, install::post_install),
            Stage::Activate => self.activate(cp),
            Stage::Repair => self.repair(),
            Stage::Configure => self.configure(),
            Stage::Verify => self.verify(),
        }
    }

    fn progress(&self, line: &str) {
        (self.e.progress)(line, &self.subs)
    }

    fn may_reboot(&self) -> bool {
        self.e.settings.public.reboot == RebootPolicy::IfRequired
    }

    /// Run an install stage's `step` with its context; a host without an install plan has
    /// none (preflight refuses it first).
    fn with_install<T>(
        &self,
        stage: Stage,
        step: impl FnOnce(&install::Ctx) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let (Some(choice), Some(family)) = (self.plan.install(), self.family) else {
            return Err(Failure::internal(
                "install stage",
                "no install plan for this host",
            ));
        };
        step(&install::Ctx {
            root: self.e.root,
            family,
            kernel: &self.facts.kernel,
            boot_id: &self.facts.boot_id,
            choice,
            settings: self.e.settings,
            data_dir: &self.data,
            keep_going: self.e.keep_going,
            progress: &|line: &str| self.progress(&format!("{}: {line}", stage.name())),
            loaded_modules: &self.facts.modules,
            functions: &self.functions,
            proxy_env: self.e.proxy_env,
        })
    }

    fn activate(&self, cp: &mut Checkpoint) -> Result<(), Failure> {
        let activation = self.with_install(Stage::Activate, |ctx| {
            install::activate(ctx, cp, self.may_reboot())
        })?;
        match activation {
            install::Activation::Active => Ok(()),
            install::Activation::Rebooting => {
                // Record the reboot before asking for it: after it, enable resumes here.
                self.e.store.save(cp)?;
                self.reboot("activate", "to activate the drivers")
            }
        }
    }

    fn repair(&self) -> Result<(), Failure> {
        let Some(family) = self.family else {
            return Ok(()); // refused in preflight already
        };
        // Facts as they are now: an install in this run changed modules and stack.
        let now = host::detect(self.e.root, None, true);
        let repaired = install::repair::repair(&install::repair::Ctx {
            root: self.e.root,
            family,
            facts: &now,
            lock_timeout: Duration::from_secs(self.e.settings.public.lock_timeout_seconds),
            keep_going: self.e.keep_going,
            progress: &|line: &str| self.progress(&format!("repair: {line}")),
        })?;
        let why = match repaired {
            install::repair::Repaired::Ready => return Ok(()),
            install::repair::Repaired::NeedsReboot(why) => why,
        };
        install::repair::record_reboot(&self.data, &now, &why, self.may_reboot())?;
        self.reboot(
            "repair",
            &format!("to load the stack's driver for kernel {}", now.kernel),
        )
    }

    fn configure(&mut self) -> Result<(), Failure> {
        // Facts as they are now: an install or repair changed modules and devices.
        let now = host::detect(self.e.root, None, false);
        let state = configure::run(&configure::Ctx {
            root: self.e.root,
            facts: &now,
            settings: &self.e.settings.public,
            data_dir: &self.data,
            netdev_wait: verify_timeout().min(Duration::from_secs(60)),
            keep_going: self.e.keep_going,
            progress: &|line: &str| self.progress(&format!("configure: {line}")),
        })?;
        self.notes = state.notes;
        Ok(())
    }

    fn verify(&mut self) -> Result<(), Failure> {
        let wait = PortWait {
            timeout: verify_timeout(),
            every: Duration::from_secs(5),
            slice: Duration::from_millis(200),
        };
        let r = verify::wait_until_healthy(&SystemClock, self.e.root, wait, self.e.keep_going);
        self.report = Some(match &r {
            Ok(rep) => rep.clone(),
            Err(_) => verify::check(self.e.root),
        });
        r.map(|_| ())
    }

    /// Ask for the reboot a stage recorded; the work resumes after it.
    fn reboot(&self, stage: &str, purpose: &str) -> Result<(), Failure> {
        self.progress(&format!(
            "{stage}: rebooting the VM {purpose}; the work resumes after the reboot"
        ));
        logging::summary(
            self.e.root,
            &format!("{}: rebooting {purpose}", self.e.label()),
        );
        install::request_reboot()?;
        Err(Failure::new(
            Code::Rebooting,
            format!("rebooting {purpose}"),
        ))
    }

    /// The run's end, with the health report (a fresh one when verify did not run) and, on
    /// success, the kernel and stack it was verified on.
    fn finish(self, end: Result<RunEnd, Failure>, mut cp: Checkpoint) -> EngineEnd {
        let report = self.report.unwrap_or_else(|| verify::check(self.e.root));
        if matches!(end, Ok(RunEnd::Completed)) {
            cp.verified_kernel = Some(self.facts.kernel.clone());
            cp.verified_stack = report.stack.clone();
        }
        EngineEnd {
            end,
            cp,
            stages: self.plan.stages.clone(),
            report,
            notes: self.notes,
        }
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
