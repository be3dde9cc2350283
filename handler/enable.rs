//! `enable`: the synchronous part the agent waits for (no-op check, settings, a bounded
//! preflight, `transitioning`), and the detached worker that runs the remaining stages.

use crate::agent::{self, AgentContext};
use crate::clock::Deadline;
use crate::configure;
use crate::error::{Code, Failure};
use crate::events::{self, Level};
use crate::health::{self, HealthReport};
use crate::host::{self, imds, Root};
use crate::install;
use crate::lock::WorkerLock;
use crate::logging;
use crate::monitor;
use crate::plan::{self, Action, Plan};
use crate::runner::{self, Checkpoint, RunEnd, Stage, Store};
use crate::settings::{self, RebootPolicy, Settings};
use crate::status::{HeartbeatState, StatusReport, StatusValue, SubStatus};
use crate::{fsutil, status};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Everything a verb needs about where it runs.
pub struct Invocation {
    pub agent: AgentContext,
    pub root: Root,
    pub exe: PathBuf,
}

impl Invocation {
    pub fn name(&self) -> String {
        if self.agent.env.name.is_empty() {
            "InfiniBandDriverLinux".into()
        } else {
            self.agent.env.name.clone()
        }
    }

    pub fn write_status(&self, report: &StatusReport) {
        if let Err(f) = report.write(&self.agent.status_path()) {
            tracing::error!("cannot write status: {f}");
        }
    }

    pub fn heartbeat(&self, state: HeartbeatState, code: Code, message: &str) {
        if let Err(f) =
            status::write_heartbeat(&self.agent.env.heartbeat_file, state, code, message)
        {
            tracing::warn!("cannot write heartbeat: {f}");
        }
    }

    /// Record a terminal failure everywhere a user may look; returns the exit code.
    pub fn fail(&self, operation: &str, f: &Failure, subs: Vec<SubStatus>) -> i32 {
        tracing::error!(code = f.code.number(), "{operation} failed: {}", f.message);
        self.write_status(&StatusReport::failure(&self.name(), operation, f).with_substatus(subs));
        self.heartbeat(HeartbeatState::NotReady, f.code, &f.message);
        logging::summary(
            &self.root,
            &format!(
                "{operation} seq={}: error {} {}",
                self.agent.seq,
                f.code.number(),
                f.message
            ),
        );
        events::emit(
            self.agent.env.events_folder.as_deref(),
            &self.agent.version(),
            operation,
            Level::Error,
            &f.to_string(),
            &self.agent.seq.to_string(),
        );
        f.code.exit_code()
    }

    fn write_mrseq(&self) {
        let p = self.agent.mrseq_path();
        if let Err(e) = fsutil::write_atomic(&p, format!("{}\n", self.agent.seq).as_bytes()) {
            tracing::error!(path = %p.display(), error = %e, "cannot write mrseq");
        }
    }
}

/// What enable asks of the worker; the worker leaves at a safe point once this names another
/// sequence number or asks it to stop (disable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub seq: u64,
    #[serde(default)]
    pub stop: bool,
}

pub fn request_path(data_dir: &Path) -> PathBuf {
    data_dir.join("request.json")
}

pub fn read_request(data_dir: &Path) -> Option<Request> {
    serde_json::from_slice(&std::fs::read(request_path(data_dir)).ok()?).ok()
}

pub fn write_request(data_dir: &Path, req: &Request) -> Result<(), Failure> {
    let p = request_path(data_dir);
    fsutil::write_atomic(&p, &serde_json::to_vec(req).expect("request serializes"))
        .map_err(|e| Failure::state_io(&p, e))
}

/// The whole synchronous part of enable ends within this (the issue allows 10 s; the agent 300 s).
const ENABLE_BUDGET: Duration = Duration::from_secs(9);

/// IMDS within enable: a short attempt, two quick retries, inside the remaining budget.
fn preflight_imds_policy(deadline: &Deadline) -> imds::Policy {
    imds::Policy {
        attempt_timeout: Duration::from_millis(1000),
        pauses: vec![Duration::from_millis(200), Duration::from_millis(500)],
        deadline: deadline.budget(Duration::from_secs(3)),
    }
}

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
                SubStatus::new(s.name(), StatusValue::Success, 0, "done")
            } else if cp.current == Some(*s) {
                SubStatus::new(s.name(), StatusValue::Transitioning, 0, "running")
            } else if let (Some(err), None) = (&cp.last_error, cp.current) {
                if cp.next(plan) == Some(*s) {
                    SubStatus::new(
                        s.name(),
                        StatusValue::Error,
                        err.code.number(),
                        err.message.clone(),
                    )
                } else {
                    SubStatus::new(s.name(), StatusValue::Transitioning, 0, "not started")
                }
            } else {
                SubStatus::new(s.name(), StatusValue::Transitioning, 0, "pending")
            }
        })
        .collect()
}

pub fn health_substatus(report: &HealthReport) -> SubStatus {
    let status = if report.healthy {
        StatusValue::Success
    } else {
        StatusValue::Error
    };
    let json = serde_json::to_string(report).expect("health report serializes");
    SubStatus::new("health", status, report.code.number(), json)
}

/// The cheap verdict for the no-op path: sysfs and file checks only, no IMDS, no processes.
fn quick_health(root: &Root, ip_timeout: Duration) -> HealthReport {
    let sysfs = host::read_sysfs(root);
    let verbs = host::stack::has_verbs_library(root);
    let stack = verbs.then_some(host::stack::InstalledStack {
        kind: host::stack::StackKind::Inbox,
        version: None,
        verbs_library: true,
    });
    let report = health::evaluate(
        &sysfs.kernel,
        &sysfs.mellanox,
        &sysfs.modules,
        stack.as_ref(),
        &Default::default(),
    );
    // What configure set up must still be there (after a reboot the addresses are gone until
    // something assigns them again). Asking `ip` costs a few milliseconds, only when needed.
    match crate::configure::load_state(&root.data_dir()) {
        Some(state) => {
            let (addresses, devs) = if state.assignments.is_empty() {
                (Default::default(), Vec::new())
            } else {
                (
                    health::addresses_within(ip_timeout),
                    crate::configure::netdevs(root),
                )
            };
            report.with_unmet(crate::configure::unmet(
                &state,
                &sysfs.modules,
                &addresses,
                &devs,
                &sysfs.mellanox,
            ))
        }
        None => report,
    }
}

pub fn enable(inv: &Invocation) -> i32 {
    let started = Instant::now();
    let deadline = Deadline::after(ENABLE_BUDGET);
    let seq = inv.agent.seq;
    let data = inv.root.data_dir();
    if let Err(e) = fsutil::create_private_dir(&data) {
        return inv.fail("Enable", &Failure::state_io(&data, e), vec![]);
    }
    let store = Store::new(&data);
    let prev = store.load();
    let lock = WorkerLock::new(&data);

    // A worker already busy with this sequence number: nothing to add.
    if lock.holder().is_some_and(|h| h.seq == seq)
        && read_request(&data).is_some_and(|r| r.seq == seq && !r.stop)
    {
        tracing::info!(seq, "a worker is already running for this sequence number");
        return 0;
    }
    // Same sequence number, finished successfully, host still verifies: no work.
    // A checkpoint from before verified_kernel existed says nothing about the kernel.
    let same_kernel = |cp: &Checkpoint| {
        cp.verified_kernel.as_deref().is_none_or(|k| {
            fsutil::read_trimmed(&inv.root.path("proc/sys/kernel/osrelease")).as_deref() == Some(k)
        })
    };
    let terminal = prev
        .as_ref()
        .is_some_and(|cp| cp.seq == seq && cp.is_terminal_success() && same_kernel(cp));
    if terminal && agent::read_mrseq(&inv.agent.mrseq_path()) == Some(seq) {
        let report = quick_health(&inv.root, deadline.budget(Duration::from_secs(2)));
        if report.healthy {
            tracing::info!(
                seq,
                "sequence number already applied and the host verifies; nothing to do"
            );
            if inv.root.systemd_running()
                && !monitor::is_current(&inv.root, &inv.exe, &inv.agent.handler_dir)
            {
                // After an update the timer still names the old version's binary.
                monitor::install(
                    &inv.root,
                    &inv.exe,
                    &inv.agent.handler_dir,
                    deadline.budget(Duration::from_secs(4)),
                );
            }
            inv.heartbeat(HeartbeatState::Ready, Code::Success, &report.summary);
            return 0;
        }
        tracing::warn!(
            seq,
            "host no longer verifies ({}); running again",
            report.summary
        );
    }
    // From here on this sequence number is the one wanted: an older worker leaves at its next
    // safe point, whatever happens below.
    if let Err(f) = write_request(&data, &Request { seq, stop: false }) {
        return inv.fail("Enable", &f, vec![]);
    }
    // A terminal failure without a worker: record it, and keep the heartbeat truthful.
    let finish_failed = |f: &Failure, subs: Vec<SubStatus>| -> i32 {
        inv.write_mrseq();
        let code = inv.fail("Enable", f, subs);
        monitor::install(
            &inv.root,
            &inv.exe,
            &inv.agent.handler_dir,
            deadline.budget(Duration::from_secs(2)),
        );
        code
    };

    let settings = match settings::load(&inv.agent, deadline.budget(Duration::from_secs(3))) {
        Ok(s) => s,
        Err(f) => return finish_failed(&f, vec![]),
    };
    let facts = host::detect(&inv.root, Some(&preflight_imds_policy(&deadline)), false);
    let refusal = plan::refusal(&facts);
    tracing::info!(seq, refused = refusal.is_some(), "preflight");

    let mut cp = Checkpoint::resume(prev, seq, &settings.fingerprint, &facts.boot_id);
    // Preflight judges the host as it is now, so it runs on every enable.
    cp.completed.retain(|s| *s != Stage::Preflight);
    let end = runner::run(
        &store,
        &mut cp,
        &[Stage::Preflight],
        |_, _| refusal.clone().map_or(Ok(()), Err),
        || false,
    );
    let stages = [
        Stage::Preflight,
        Stage::Repair,
        Stage::Configure,
        Stage::Verify,
    ];
    match end {
        Err(f) => return inv.fail("Enable", &f, vec![]),
        Ok(RunEnd::Failed(f)) => return finish_failed(&f, stage_substatus(&cp, &stages)),
        Ok(_) => {}
    }
    inv.write_status(
        &StatusReport::new(
            &inv.name(),
            "Enable",
            StatusValue::Transitioning,
            0,
            "preflight passed; worker starting",
        )
        .with_substatus(stage_substatus(&cp, &stages)),
    );
    inv.heartbeat(HeartbeatState::Ready, Code::Success, "enable in progress");
    if let Err(f) = crate::worker::spawn(inv, deadline.budget(Duration::from_secs(4))) {
        return inv.fail("Enable", &f, vec![]);
    }
    tracing::info!(
        seq,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "worker started; enable returns"
    );
    0
}

fn preflight(plan: &Plan) -> Result<(), Failure> {
    match &plan.action {
        Action::Refuse { failure } => Err(failure.clone()),
        Action::VerifyOnly { .. } | Action::Install { .. } => Ok(()),
    }
}

/// The verify stage: wait (bounded) for every InfiniBand port to be ACTIVE.
fn verify(
    root: &Root,
    timeout: Duration,
    poll: Duration,
    keep_going: impl Fn() -> bool,
) -> Result<HealthReport, Failure> {
    let deadline = Instant::now() + timeout;
    loop {
        let report = monitor::check(root);
        if report.healthy {
            return Ok(report);
        }
        if !keep_going() {
            return Err(Failure::new(
                Code::Superseded,
                "superseded by a newer sequence number or disable",
            ));
        }
        // Missing software will not fix itself; a link may still come up, and the agent may
        // still be assigning IPoIB addresses (ipoib waagent).
        let may_improve = matches!(report.code, Code::PortsNotActive | Code::IpoibNotConfigured);
        if !may_improve || Instant::now() >= deadline {
            return Err(report.failure().expect("unhealthy report has a failure"));
        }
        tracing::info!("waiting for ports: {}", report.summary);
        // Sleep in slices so a newer sequence number or disable is noticed quickly.
        let wake = Instant::now() + poll.min(deadline.saturating_duration_since(Instant::now()));
        while Instant::now() < wake && keep_going() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// What the stages need, from the agent's worker or from `apply`.
pub struct Engine<'a> {
    pub root: &'a Root,
    pub seq: u64,
    pub settings: &'a Settings,
    /// False once the work should leave at its next safe point.
    pub keep_going: &'a dyn Fn() -> bool,
    /// One progress line, with the stages' substatus so far.
    pub progress: &'a dyn Fn(&str, &[SubStatus]),
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
    let store = Store::new(&data);
    let seq = e.seq;
    let mut cp = Checkpoint::resume(store.load(), seq, &e.settings.fingerprint, &facts.boot_id);
    // The worker judges the host again with the full probe (the installed stack too): what
    // enable's preflight saw may have changed, and a refusal here must not be skipped. Verify
    // always runs again: a worker never reports success on an old verdict.
    cp.completed.retain(|s| {
        !matches!(
            s,
            Stage::Preflight | Stage::Repair | Stage::Configure | Stage::Verify
        )
    });
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
    let family = facts.os.as_ref().and_then(install::recipe::family);
    let end = runner::run(
        &store,
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
                Stage::Install => install::install(install_ctx.as_ref().ok_or_else(needs_ctx)?, cp),
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
                            progress("activate: rebooting the VM to load the new drivers; enable resumes after the reboot");
                            logging::summary(
                                e.root,
                                &format!("Enable seq={seq}: rebooting to activate drivers"),
                            );
                            install::request_reboot()?;
                            Err(Failure::new(
                                Code::Rebooting,
                                "rebooting to activate the drivers",
                            ))
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
                    if repaired == install::repair::Repaired::Ready {
                        return Ok(());
                    }
                    // One reboot per kernel: a second would be a loop.
                    if cp.repair_reboot.as_deref() == Some(now.kernel.as_str()) {
                        return Err(Failure::new(
                            Code::RebootLoop,
                            format!(
                                "the stack's modules were rebuilt for kernel {} and the VM rebooted, but the distribution's driver still loads; run diagnose",
                                now.kernel
                            ),
                        ));
                    }
                    if e.settings.public.reboot != RebootPolicy::IfRequired {
                        return Err(Failure::new(
                            Code::RebootRequired,
                            format!(
                                "the stack's modules were rebuilt for kernel {}; reboot the VM to load them (settings say reboot: never)",
                                now.kernel
                            ),
                        ));
                    }
                    cp.repair_reboot = Some(now.kernel.clone());
                    store.save(cp)?;
                    progress("repair: rebooting the VM to load the rebuilt drivers; enable resumes after the reboot");
                    logging::summary(
                        e.root,
                        &format!(
                            "Enable seq={seq}: rebooting to load the drivers rebuilt for kernel {}",
                            now.kernel
                        ),
                    );
                    install::request_reboot()?;
                    Err(Failure::new(
                        Code::Rebooting,
                        "rebooting to load the rebuilt drivers",
                    ))
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
                    let r = verify(
                        e.root,
                        verify_timeout(),
                        Duration::from_secs(5),
                        e.keep_going,
                    );
                    last_report = Some(match &r {
                        Ok(rep) => rep.clone(),
                        Err(_) => monitor::check(e.root),
                    });
                    r.map(|_| ())
                }
            }
        },
        || !(e.keep_going)(),
    );
    let report = last_report.unwrap_or_else(|| monitor::check(e.root));
    if matches!(end, Ok(RunEnd::Completed)) {
        cp.verified_kernel = Some(facts.kernel.clone());
    }
    EngineEnd {
        end,
        cp,
        stages: plan.stages,
        report,
        notes: configure_notes,
    }
}

/// The detached worker for sequence number `inv.agent.seq`.
pub fn worker(inv: &Invocation) -> i32 {
    let seq = inv.agent.seq;
    let data = inv.root.data_dir();
    let wanted = || read_request(&data).is_some_and(|r| r.seq == seq && !r.stop);
    let lock = WorkerLock::new(&data);
    // A second worker for the same sequence number (enable ran twice before the first one
    // took the lock) leaves at once; an older one leaves at its next safe point, so wait.
    let first_try = match lock.try_acquire(seq) {
        Ok(h) => h,
        Err(e) => return inv.fail("Enable", &Failure::state_io(&lock_path(&data), e), vec![]),
    };
    let held = match first_try {
        Some(h) => h,
        None if lock.holder().is_some_and(|h| h.seq == seq) => {
            tracing::info!(seq, "another worker already runs this sequence number");
            return 0;
        }
        None => match lock.acquire(
            seq,
            Duration::from_secs(900),
            Duration::from_millis(200),
            || !wanted(),
        ) {
            Ok(Some(h)) => h,
            Ok(None) if !wanted() => {
                tracing::info!(seq, "superseded before starting");
                return 0;
            }
            Ok(None) => {
                let f = Failure::new(
                    Code::WorkerStart,
                    "another worker held the lock for 15 minutes; run enable again",
                );
                return inv.fail("Enable", &f, vec![]);
            }
            Err(e) => return inv.fail("Enable", &Failure::state_io(&lock_path(&data), e), vec![]),
        },
    };
    let _held = held;
    let beat = crate::worker::Heartbeat::start(inv.agent.env.heartbeat_file.clone());

    let settings: Settings = match settings::load(&inv.agent, Duration::from_secs(30)) {
        Ok(s) => s,
        Err(f) => return inv.fail("Enable", &f, vec![]),
    };
    let status_name = inv.name();
    let progress = |line: &str, subs: &[SubStatus]| {
        inv.write_status(
            &StatusReport::new(&status_name, "Enable", StatusValue::Transitioning, 0, line)
                .with_substatus(subs.to_vec()),
        );
        beat.set_message(&format!("enable in progress: {line}"));
    };
    let EngineEnd {
        end,
        mut cp,
        stages,
        report,
        notes: configure_notes,
    } = run_engine(&Engine {
        root: &inv.root,
        seq,
        settings: &settings,
        keep_going: &wanted,
        progress: &progress,
    });
    beat.stop();
    let mut subs = stage_substatus(&cp, &stages);
    subs.push(health_substatus(&report));
    match end {
        Ok(RunEnd::Failed(Failure {
            code: Code::Rebooting,
            ..
        })) => {
            tracing::info!(seq, "worker ends: the VM reboots");
            0
        }
        Ok(RunEnd::Stopped)
        | Ok(RunEnd::Failed(Failure {
            code: Code::Superseded,
            ..
        })) => {
            tracing::info!(seq, "stopping at a safe point: superseded or disabled");
            0
        }
        Ok(RunEnd::Failed(f)) => {
            inv.write_mrseq();
            let code = inv.fail("Enable", &f, subs);
            monitor::install(
                &inv.root,
                &inv.exe,
                &inv.agent.handler_dir,
                monitor::SYSTEMCTL_TIMEOUT,
            );
            code
        }
        Err(f) => inv.fail("Enable", &f, subs),
        Ok(RunEnd::Completed) => {
            let summary = success_summary(&report.summary, &data, &configure_notes);
            cp.succeed(summary.clone());
            if let Err(f) = Store::new(&data).save(&mut cp) {
                return inv.fail("Enable", &f, subs);
            }
            remove_downloads(&data);
            inv.write_status(
                &StatusReport::new(
                    &status_name,
                    "Enable",
                    StatusValue::Success,
                    0,
                    summary.clone(),
                )
                .with_substatus(subs),
            );
            inv.write_mrseq();
            inv.heartbeat(HeartbeatState::Ready, Code::Success, &summary);
            monitor::install(
                &inv.root,
                &inv.exe,
                &inv.agent.handler_dir,
                monitor::SYSTEMCTL_TIMEOUT,
            );
            logging::summary(&inv.root, &format!("Enable seq={seq}: success {summary}"));
            events::emit(
                inv.agent.env.events_folder.as_deref(),
                &inv.agent.version(),
                "Enable",
                Level::Informational,
                &summary,
                &seq.to_string(),
            );
            0
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

fn lock_path(data: &Path) -> PathBuf {
    data.join("worker.lock")
}
