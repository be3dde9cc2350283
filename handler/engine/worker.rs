//! The detached worker for one sequence number: takes the worker lock (a duplicate leaves,
//! an older worker is waited for), runs the engine with the heartbeat refreshed, and writes
//! the final status, mrseq, heartbeat and event. Started by enable through `engine::spawn`.

use crate::agent::events::Level;
use crate::agent::heartbeat::Heartbeat;
use crate::agent::invocation::Invocation;
use crate::agent::settings::{self, Settings};
use crate::agent::status::{HeartbeatState, StatusValue, SubStatus};
use crate::engine::checkpoint::{Checkpoint, RunEnd, Store};
use crate::engine::done::{finished_here, health_substatus, quick_health, restore_success_status};
use crate::engine::lock::{Held, WorkerLock};
use crate::engine::request::wants;
use crate::engine::{
    files, remove_downloads, run_engine, stage_substatus, success_summary, Engine, EngineEnd,
};
use crate::error::{Code, Failure};
use crate::sys::logging;
use crate::sys::systemd;
use std::time::Duration;

/// How long a worker waits for an older one to reach a safe point and leave.
const LOCK_WAIT: Duration = Duration::from_secs(900);
const LOCK_POLL: Duration = Duration::from_millis(200);

/// The worker's exit code.
pub fn run(inv: &Invocation) -> i32 {
    let seq = inv.agent.seq;
    let data = inv.root.data_dir();
    // First of all, so the proxy credentials enable left spend as little time on disk as can be.
    let proxy_env = crate::sys::runtime::take_worker_proxy(&data);
    let _held = match take_lock(inv) {
        Ok(Some(h)) => h,
        Ok(None) => return 0,
        Err(code) => return code,
    };
    // Checked again under the lock: a disable or a newer sequence number that came while this
    // worker was starting has the last word, so its heartbeat and status stay as it wrote them.
    if !wants(&data, seq) {
        tracing::info!(
            seq,
            "no longer wanted (disabled or superseded) before starting"
        );
        return 0;
    }
    // Another worker of this sequence number finished while this one waited for the lock
    // (concurrent enables): the work is done, each stage ran once.
    if let Some(done) = finished_here(inv, Store::new(&data).load().as_ref()) {
        let report = quick_health(&inv.root, &done, Duration::from_secs(2));
        if report.healthy {
            tracing::info!(
                seq,
                "another worker completed this sequence number; nothing to do"
            );
            return match restore_success_status(inv, &done, &report) {
                Ok(()) => 0,
                Err(f) => inv.fail(&f, vec![]),
            };
        }
    }
    let beat = Heartbeat::start(inv.agent.env.heartbeat_file.clone(), {
        let data = data.clone();
        move || wants(&data, seq)
    });
    let settings: Settings = match settings::load(&inv.agent, Duration::from_secs(30)) {
        Ok(s) => s,
        Err(f) => return inv.fail(&f, vec![]),
    };
    let progress = |line: &str, subs: &[SubStatus]| {
        // A progress line that cannot be written is logged (status.rs); the final status
        // decides the exit code.
        let report = inv.report(StatusValue::Transitioning, line);
        let _ = inv.write_status(&report.with_substatus(subs.to_vec()));
        beat.set_message(&format!("enable in progress: {line}"));
    };
    let keep_going = || wants(&data, seq);
    let end = run_engine(&Engine {
        operation: "Enable",
        store: &Store::new(&data),
        root: &inv.root,
        seq,
        settings: &settings,
        keep_going: &keep_going,
        progress: &progress,
        proxy_env: &proxy_env,
    });
    beat.stop();
    finish(inv, end)
}

/// Take the worker lock: `Ok(None)` when this worker has nothing to do (a duplicate of the
/// running sequence number, or superseded while waiting), `Err` with the exit code.
fn take_lock(inv: &Invocation) -> Result<Option<Held>, i32> {
    let seq = inv.agent.seq;
    let data = inv.root.data_dir();
    let lock = WorkerLock::new(&data);
    let lock_failed = |e| {
        inv.fail(
            &Failure::state_io(&data.join(files::WORKER_LOCK), e),
            vec![],
        )
    };
    let same_seq_holds = || lock.holder().is_some_and(|h| h.seq == seq);
    // A second worker for the same sequence number (enable ran twice before the first one
    // took the lock) leaves at once; an older one leaves at its next safe point, so wait.
    match lock.try_acquire(seq).map_err(lock_failed)? {
        Some(h) => return Ok(Some(h)),
        None if same_seq_holds() => {
            tracing::info!(seq, "another worker already runs this sequence number");
            return Ok(None);
        }
        None => {}
    }
    // The holder may not have written its record yet when the lock was tried: it is looked at
    // again while waiting, so a duplicate of this sequence number leaves.
    let give_up = || !wants(&data, seq) || same_seq_holds();
    match lock.acquire(seq, LOCK_WAIT, LOCK_POLL, give_up) {
        Ok(Some(h)) => Ok(Some(h)),
        Ok(None) if !wants(&data, seq) => {
            tracing::info!(seq, "superseded before starting");
            Ok(None)
        }
        Ok(None) if same_seq_holds() => {
            tracing::info!(seq, "another worker already runs this sequence number");
            Ok(None)
        }
        Ok(None) => {
            let f = Failure::new(
                Code::WorkerStart,
                "another worker held the lock for 15 minutes; run enable again",
            );
            Err(inv.fail(&f, vec![]))
        }
        Err(e) => Err(lock_failed(e)),
    }
}

/// Report how the engine's run ended; returns the worker's exit code.
fn finish(inv: &Invocation, end: EngineEnd) -> i32 {
    let seq = inv.agent.seq;
    let EngineEnd {
        end,
        cp,
        stages,
        report,
        notes,
    } = end;
    let mut subs = stage_substatus(&cp, &stages);
    subs.push(health_substatus(&report));
    match end {
        Ok(RunEnd::Rebooting(why)) => {
            tracing::info!(seq, "worker ends: {why}");
            0
        }
        Ok(RunEnd::Stopped(at)) => {
            tracing::info!(seq, ?at, "stopping at a safe point: superseded or disabled");
            0
        }
        Ok(RunEnd::Failed(f)) => {
            inv.write_mrseq();
            let code = inv.fail(&f, subs);
            install_monitor(inv);
            code
        }
        Err(f) => inv.fail(&f, subs),
        Ok(RunEnd::Completed) => {
            let summary = success_summary(&report.summary, &inv.root.data_dir(), &notes);
            succeed(inv, cp, summary, subs)
        }
    }
}

/// The engine completed: checkpoint, mrseq, status, heartbeat, monitor, summary and event,
/// in that order (a status that says success always has its checkpoint and mrseq).
fn succeed(inv: &Invocation, mut cp: Checkpoint, summary: String, subs: Vec<SubStatus>) -> i32 {
    let data = inv.root.data_dir();
    cp.succeed(summary.clone());
    if let Err(f) = Store::new(&data).save(&mut cp) {
        return inv.fail(&f, subs);
    }
    remove_downloads(&data);
    inv.write_mrseq();
    // The checkpoint says success; a status that cannot say so is this run's failure (exit
    // 14, 201), and the next enable writes it again from the checkpoint.
    let report = inv.report(StatusValue::Success, summary.clone());
    if let Err(f) = inv.write_status(&report.with_substatus(subs.clone())) {
        return inv.fail(&f, subs);
    }
    inv.heartbeat(HeartbeatState::Ready, Code::Success, &summary);
    install_monitor(inv);
    logging::summary(
        &inv.root,
        &format!("Enable seq={}: success {summary}", inv.agent.seq),
    );
    inv.event(Level::Informational, &summary);
    0
}

fn install_monitor(inv: &Invocation) {
    systemd::install(
        &inv.root,
        &inv.exe,
        &inv.agent.handler_dir,
        systemd::SYSTEMCTL_TIMEOUT,
    );
}
