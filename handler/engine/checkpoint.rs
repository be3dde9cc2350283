//! The resumable stage runner (docs/ARCHITECTURE.md, "The engine"). The checkpoint (`state.json` in the data
//! directory) is written atomically before and after every stage, so a worker killed at any
//! instant resumes where it stopped and never repeats a completed stage of the same sequence
//! number and settings. Transitions are pure methods on [`Checkpoint`]; [`run`] adds the I/O.

use crate::agent::status::StatusValue;
use crate::error::{Code, Failure};
pub use crate::plan::stage::Stage;
use crate::sys::fsutil;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub status: StatusValue,
    pub code: Code,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    pub settings: String,
    pub boot_id: String,
    pub current: Option<Stage>,
    pub completed: Vec<Stage>,
    pub attempts: u32,
    pub outcome: Option<Outcome>,
    pub last_error: Option<Failure>,
    /// Reboots requested for this sequence number (at most one: a second would be a loop).
    #[serde(default)]
    pub reboots: u32,
    /// The boot in which activation asked for a reboot; a different boot id means it happened.
    #[serde(default)]
    pub reboot_from_boot: Option<String>,
    /// The install stages this sequence number started, carried to their end on resume.
    #[serde(default)]
    pub install_stages: Option<Vec<Stage>>,
    /// An installer ran (not skipped as already done) for this sequence number.
    #[serde(default)]
    pub installer_ran: bool,
    /// The kernel the last success was verified on; enable's no-op check runs the stages again
    /// when the VM booted another (repair decides whether its modules drifted).
    #[serde(default)]
    pub verified_kernel: Option<String>,
    /// The stack the last success verified, so the no-op enable reports it without running
    /// `ofed_info` (and never guesses).
    #[serde(default)]
    pub verified_stack: Option<crate::host::stack::InstalledStack>,
    pub updated: String,
}

impl Checkpoint {
    pub fn fresh(seq: u64, settings: &str, boot_id: &str) -> Self {
        Checkpoint {
            seq,
            settings: settings.to_string(),
            boot_id: boot_id.to_string(),
            current: None,
            completed: Vec::new(),
            attempts: 0,
            outcome: None,
            last_error: None,
            reboots: 0,
            reboot_from_boot: None,
            install_stages: None,
            installer_ran: false,
            verified_kernel: None,
            verified_stack: None,
            updated: String::new(),
        }
    }

    /// Continue `prev` when it is the same work (sequence number and settings); otherwise start
    /// afresh. After a reboot, per-boot stages and any outcome are dropped so they run again.
    pub fn resume(prev: Option<Checkpoint>, seq: u64, settings: &str, boot_id: &str) -> Self {
        match prev {
            Some(mut cp) if cp.seq == seq && cp.settings == settings => {
                if cp.boot_id != boot_id {
                    cp.completed.retain(|s| !s.per_boot());
                    cp.outcome = None;
                    cp.boot_id = boot_id.to_string();
                }
                cp
            }
            _ => Checkpoint::fresh(seq, settings, boot_id),
        }
    }

    pub fn is_done(&self, stage: Stage) -> bool {
        self.completed.contains(&stage)
    }

    /// The first planned stage not yet completed.
    pub fn next(&self, plan: &[Stage]) -> Option<Stage> {
        plan.iter().copied().find(|s| !self.is_done(*s))
    }

    pub fn begin(&mut self, stage: Stage) {
        self.current = Some(stage);
        self.attempts += 1;
        self.outcome = None;
        self.last_error = None;
    }

    pub fn complete(&mut self, stage: Stage) {
        if !self.is_done(stage) {
            self.completed.push(stage);
        }
        self.current = None;
    }

    pub fn fail(&mut self, failure: Failure) {
        self.outcome = Some(Outcome {
            status: StatusValue::Error,
            code: failure.code,
            message: failure.message.clone(),
        });
        self.last_error = Some(failure);
        self.current = None;
    }

    pub fn succeed(&mut self, message: String) {
        self.outcome = Some(Outcome {
            status: StatusValue::Success,
            code: Code::Success,
            message,
        });
        self.current = None;
    }

    pub fn is_terminal_success(&self) -> bool {
        self.outcome
            .as_ref()
            .is_some_and(|o| o.status == StatusValue::Success)
    }
}

/// Where the checkpoint lives.
pub struct Store {
    path: PathBuf,
}

impl Store {
    /// The agent's checkpoint.
    pub fn new(data_dir: &Path) -> Self {
        Store::named(data_dir, "state.json")
    }

    /// Another checkpoint in the data directory (`apply` keeps its own, so the two never reset
    /// each other's progress).
    pub fn named(data_dir: &Path, file: &str) -> Self {
        Store {
            path: data_dir.join(file),
        }
    }

    /// A missing or unreadable checkpoint reads as none: the work then starts over, which is
    /// safe because every stage is idempotent.
    pub fn load(&self) -> Option<Checkpoint> {
        let text = fsutil::read_text(&self.path).ok()?;
        match serde_json::from_str(&text) {
            Ok(cp) => Some(cp),
            Err(e) => {
                tracing::warn!(error = %e, path = %self.path.display(), "ignoring unreadable checkpoint");
                None
            }
        }
    }

    pub fn save(&self, cp: &mut Checkpoint) -> Result<(), Failure> {
        cp.updated = crate::sys::clock::now_rfc3339();
        let bytes =
            serde_json::to_vec_pretty(cp).map_err(|e| Failure::internal("checkpoint", e))?;
        if let Some(dir) = self.path.parent() {
            fsutil::create_private_dir(dir).map_err(|e| Failure::state_io(dir, e))?;
        }
        fsutil::write_atomic(&self.path, &bytes).map_err(|e| Failure::state_io(&self.path, e))
    }
}

/// Why [`run`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum RunEnd {
    Completed,
    /// A stage asked for a reboot (the message says what for); the work resumes after it.
    Rebooting(String),
    /// A newer sequence number or disable wants this run to end.
    Stopped(Stopped),
    Failed(Failure),
}

/// Where a stopped run noticed it was no longer wanted.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Between stages: nothing was interrupted.
    BetweenStages,
    /// Inside a stage that polls for it (a download, a lock wait); the message says where.
    InStage(String),
}

/// Run the planned stages not yet completed, saving the checkpoint around each.
pub fn run(
    store: &Store,
    cp: &mut Checkpoint,
    plan: &[Stage],
    mut exec: impl FnMut(Stage, &mut Checkpoint) -> Result<(), Failure>,
    stop: impl Fn() -> bool,
) -> Result<RunEnd, Failure> {
    while let Some(stage) = cp.next(plan) {
        if stop() {
            return Ok(RunEnd::Stopped(Stopped::BetweenStages));
        }
        crate::sys::faultpoint::hit("stage begin", stage.name());
        cp.begin(stage);
        store.save(cp)?;
        // The count of stage starts for this sequence number, over every stage and boot.
        tracing::info!(
            stage = stage.name(),
            stage_starts = cp.attempts,
            "stage started"
        );
        match exec(stage, &mut *cp) {
            Ok(()) => {
                crate::sys::faultpoint::hit("stage executed", stage.name());
                cp.complete(stage);
                store.save(cp)?;
                crate::sys::faultpoint::hit("stage completed", stage.name());
                tracing::info!(stage = stage.name(), "stage completed");
            }
            Err(f) => {
                tracing::error!(
                    stage = stage.name(),
                    code = f.code.number(),
                    "stage failed: {}",
                    f.message
                );
                cp.fail(f.clone());
                store.save(cp)?;
                return Ok(match f.code {
                    Code::Rebooting => RunEnd::Rebooting(f.message),
                    Code::Superseded => RunEnd::Stopped(Stopped::InStage(f.message)),
                    _ => RunEnd::Failed(f),
                });
            }
        }
    }
    Ok(RunEnd::Completed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: [Stage; 2] = [Stage::Preflight, Stage::Verify];

    #[test]
    fn resume_rules() {
        let mut cp = Checkpoint::fresh(3, "h", "boot-a");
        cp.complete(Stage::Preflight);
        cp.complete(Stage::Verify);
        cp.succeed("ok".into());
        // Same seq, settings, boot: everything kept.
        let same = Checkpoint::resume(Some(cp.clone()), 3, "h", "boot-a");
        assert_eq!(same.next(&PLAN), None);
        assert!(same.is_terminal_success());
        // New boot: verify runs again, preflight stays done.
        let rebooted = Checkpoint::resume(Some(cp.clone()), 3, "h", "boot-b");
        assert_eq!(rebooted.next(&PLAN), Some(Stage::Verify));
        assert!(rebooted.outcome.is_none());
        // New settings or seq: start over.
        assert_eq!(
            Checkpoint::resume(Some(cp.clone()), 3, "other", "boot-a").next(&PLAN),
            Some(Stage::Preflight)
        );
        assert_eq!(
            Checkpoint::resume(Some(cp), 4, "h", "boot-a").completed,
            vec![]
        );
    }

    #[test]
    fn runs_only_missing_stages_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let mut cp = Checkpoint::fresh(1, "h", "b");
        cp.complete(Stage::Preflight);
        let mut ran = Vec::new();
        let end = run(
            &store,
            &mut cp,
            &PLAN,
            |s, _| {
                ran.push(s);
                Ok(())
            },
            || false,
        )
        .unwrap();
        assert_eq!(end, RunEnd::Completed);
        assert_eq!(ran, vec![Stage::Verify]);
        assert_eq!(store.load().unwrap().completed, PLAN.to_vec());
    }

    #[test]
    fn failure_is_recorded_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let mut cp = Checkpoint::fresh(1, "h", "b");
        let f = Failure::new(Code::PortsNotActive, "down");
        let end = run(
            &store,
            &mut cp,
            &PLAN,
            |s, _| match s {
                Stage::Verify => Err(f.clone()),
                _ => Ok(()),
            },
            || false,
        )
        .unwrap();
        assert_eq!(end, RunEnd::Failed(f.clone()));
        let saved = store.load().unwrap();
        assert_eq!(saved.completed, vec![Stage::Preflight]);
        assert_eq!(saved.outcome.as_ref().unwrap().code, Code::PortsNotActive);
        assert_eq!(saved.last_error, Some(f));
        assert_eq!(saved.attempts, 2);
        // The next attempt starts clean: no stale error shown beside a running stage.
        let mut again = Checkpoint::resume(Some(saved), 1, "h", "b");
        again.begin(Stage::Verify);
        assert_eq!(again.last_error, None);
    }

    #[test]
    fn a_reboot_or_a_stop_inside_a_stage_is_its_own_ending_not_a_failure() {
        for (code, want) in [
            (
                Code::Rebooting,
                RunEnd::Rebooting("rebooting to load the new drivers".into()),
            ),
            (
                Code::Superseded,
                RunEnd::Stopped(Stopped::InStage("rebooting to load the new drivers".into())),
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::new(dir.path());
            let mut cp = Checkpoint::fresh(1, "h", "b");
            let f = Failure::new(code, "rebooting to load the new drivers");
            let end = run(
                &store,
                &mut cp,
                &PLAN,
                |s, _| match s {
                    Stage::Verify => Err(f.clone()),
                    _ => Ok(()),
                },
                || false,
            )
            .unwrap();
            assert_eq!(end, want);
            // The checkpoint records it as before, so a resumed run knows where it was.
            assert_eq!(store.load().unwrap().outcome.unwrap().code, code);
        }
    }

    #[test]
    fn a_crash_mid_stage_leaves_it_to_rerun() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let mut cp = Checkpoint::fresh(1, "h", "b");
        cp.begin(Stage::Preflight);
        store.save(&mut cp).unwrap(); // the worker dies here
        let resumed = Checkpoint::resume(store.load(), 1, "h", "b");
        assert_eq!(resumed.current, Some(Stage::Preflight));
        assert_eq!(resumed.next(&PLAN), Some(Stage::Preflight));
    }

    #[test]
    fn stop_request_is_honoured_between_stages() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let mut cp = Checkpoint::fresh(1, "h", "b");
        let n = std::cell::Cell::new(0);
        let end = run(
            &store,
            &mut cp,
            &PLAN,
            |_, _| {
                n.set(n.get() + 1);
                Ok(())
            },
            || n.get() >= 1,
        )
        .unwrap();
        assert_eq!(end, RunEnd::Stopped(Stopped::BetweenStages));
        assert_eq!(cp.completed, vec![Stage::Preflight]);
    }

    #[test]
    fn corrupt_checkpoint_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.json"), "{not json").unwrap();
        assert_eq!(Store::new(dir.path()).load(), None);
    }
}
