//! Races: many enables of one sequence number at once, enable against disable, two sequence
//! numbers at once, the health monitor and `apply` against a running worker. Each stage of the
//! worker runs once, one worker at a time, and the end is terminal, right, and stays put (the
//! next enable is a no-op).

use crate::common::*;
use crate::seqno::{port_up, wait_for_worker};
use crate::support::*;
use ibdriver::engine::lock::WAITING as LOCK_WAITING;
use serde_json::json;
use std::fs;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Start every command at the same instant (a barrier), each bounded; their runs in order.
fn together(w: &World, cmds: Vec<Command>) -> Vec<Run> {
    let barrier = Arc::new(Barrier::new(cmds.len()));
    std::thread::scope(|s| {
        let handles: Vec<_> = cmds
            .into_iter()
            .map(|c| {
                let b = barrier.clone();
                s.spawn(move || {
                    b.wait();
                    run_bounded(w, c, VERB_BOUND)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// How many times the worker started `stage` (the runner logs each start).
fn starts(w: &World, stage: &str) -> usize {
    our_log(w)
        .lines()
        .filter(|l| l.contains("stage started") && l.contains(&format!("\"{stage}\"")))
        .count()
}

/// The stage starts in our log for `stage`, by any spelling the log uses.
fn stage_starts(w: &World, stage: &str) -> usize {
    let log = our_log(w);
    log.lines()
        .filter(|l| {
            l.contains("stage started")
                && (l.contains(&format!("stage={stage} "))
                    || l.contains(&format!("stage={stage}\""))
                    || l.contains(&format!("\"stage\":\"{stage}\""))
                    || l.ends_with(&format!("stage={stage}")))
        })
        .count()
        .max(starts(w, stage))
}

/// Worker processes for this handler directory that are alive now.
fn workers_now(w: &World) -> usize {
    worker_pids(&w.handler_dir).len()
}

/// After the race, the same enable again is a no-op: exit 0, no worker, status bytes kept.
fn stays_put(w: &World, seq: u64) -> CaseResult {
    let before = fs::read(w.status_path(seq)).map_err(|e| e.to_string())?;
    let r = enable(w, seq);
    r.expect_exit(0)?;
    ensure!(
        !worker_running(&w.handler_dir),
        "the enable after the race started a worker: the race left the checkpoint behind"
    );
    ensure!(
        fs::read(w.status_path(seq)).unwrap() == before,
        "the enable after the race rewrote the status"
    );
    clean(w, &[&r])
}

fn many_enables(n: usize) -> Case {
    case(format!("same_number_{n}_enables_at_once"), move || {
        let w = hbv3();
        w.settings(1, json!({}));
        let runs = together(&w, (0..n).map(|_| w.command(&["enable"], 1)).collect());
        for (i, r) in runs.iter().enumerate() {
            r.expect_exit(0).map_err(|e| format!("enable #{i}: {e}"))?;
        }
        expect_status(&w, 1, "success", 0)?;
        for stage in ["repair", "configure", "verify"] {
            let k = stage_starts(&w, stage);
            ensure!(k == 1, "{stage} started {k} times\n{}", our_log(&w));
        }
        let refs: Vec<&Run> = runs.iter().collect();
        clean(&w, &refs)?;
        stays_put(&w, 1)
    })
}

fn enables_while_waiting(n: usize) -> Case {
    case(
        format!("same_number_{n}_enables_while_the_worker_waits"),
        move || {
            let mut w = World::new("hbv3-portdown", HB);
            w.verify_timeout = 30;
            w.settings(1, json!({}));
            enable(&w, 1).expect_exit(0)?;
            wait_for_worker(&w)?;
            let runs = together(&w, (0..n).map(|_| w.command(&["enable"], 1)).collect());
            for r in &runs {
                r.expect_exit(0)?;
            }
            let deadline = Instant::now() + Duration::from_millis(500);
            while Instant::now() < deadline {
                let k = workers_now(&w);
                ensure!(k <= 1, "{k} workers at once");
                std::thread::sleep(Duration::from_millis(20));
            }
            port_up(&w);
            expect_status(&w, 1, "success", 0)?;
            ensure!(stage_starts(&w, "verify") == 1, "verify restarted");
            let refs: Vec<&Run> = runs.iter().collect();
            clean(&w, &refs)?;
            stays_put(&w, 1)
        },
    )
}

/// Enable, then disable before the worker can be done: disable's NotReady heartbeat is the last
/// word, whatever the worker was doing.
fn enable_then_disable(i: usize, host: &'static str) -> Case {
    case(
        format!("enable_then_disable_at_once_{host}_{i}"),
        move || {
            let mut w = World::new(host, HB);
            w.verify_timeout = 20;
            w.settings(1, json!({}));
            let e = enable(&w, 1);
            e.expect_exit(0)?;
            let d = verb(&w, "disable", 1);
            d.expect_exit(0)?;
            // Enable returned after its worker's exec, so once none runs nothing can write.
            worker_gone(&w)?;
            let hb = heartbeat_state(&w);
            ensure!(
                hb.as_deref() == Some("NotReady"),
                "heartbeat after disable: {hb:?}"
            );
            clean(&w, &[&e, &d])
        },
    )
}

fn enable_and_disable_together(i: usize) -> Case {
    case(
        format!("enable_and_disable_started_together_{i}"),
        move || {
            let w = hbv3();
            w.settings(1, json!({}));
            let runs = together(
                &w,
                vec![w.command(&["enable"], 1), w.command(&["disable"], 1)],
            );
            for r in &runs {
                r.expect_exit(0)?;
            }
            worker_gone(&w)?;
            let refs: Vec<&Run> = runs.iter().collect();
            clean(&w, &refs)?;
            // Either order is allowed; the agent's next enable must then converge.
            let r = enable(&w, 1);
            r.expect_exit(0)?;
            expect_status(&w, 1, "success", 0)?;
            ensure!(
                heartbeat_state(&w).as_deref() == Some("Ready"),
                "the enable after disable reports Ready again"
            );
            clean(&w, &[&r])
        },
    )
}

fn numbers_together(name: &'static str, seqs: &'static [u64]) -> Case {
    case(format!("numbers_{name}_at_once"), move || {
        let w = hbv3();
        for &s in seqs {
            w.settings(s, json!({"ipoib": if s % 2 == 0 { "off" } else { "auto" }}));
        }
        let runs = together(
            &w,
            seqs.iter().map(|&s| w.command(&["enable"], s)).collect(),
        );
        for r in &runs {
            r.expect_exit(0)?;
        }
        worker_gone(&w)?;
        // The number the last enable recorded is the one wanted; it ends in success (a
        // superseded worker may have left without a terminal status).
        let req: serde_json::Value = serde_json::from_str(
            &fs::read_to_string(w.data_dir().join("request.json")).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let wanted = req["seq"].as_u64().ok_or("request.json without seq")?;
        ensure!(seqs.contains(&wanted), "request names {wanted}");
        let r = enable(&w, wanted);
        r.expect_exit(0)?;
        expect_status(&w, wanted, "success", 0)?;
        ensure!(
            w.mrseq() == Some(wanted.to_string()),
            "mrseq {:?}, wanted {wanted}",
            w.mrseq()
        );
        for &s in seqs {
            if let Some(v) = read_status(&w, s)? {
                ensure!(
                    status_value(&v) != "error",
                    "status {s} must not be an error: {v}"
                );
            }
        }
        let mut refs: Vec<&Run> = runs.iter().collect();
        refs.push(&r);
        clean(&w, &refs)
    })
}

pub fn cases() -> Vec<Case> {
    let mut v = vec![many_enables(2), many_enables(5), many_enables(20)];
    v.push(enables_while_waiting(5));
    v.push(case("same_number_5_enables_after_success", || {
        let w = hbv3();
        succeed(&w, 1, json!({}))?;
        let before = fs::read(w.status_path(1)).unwrap();
        let runs = together(&w, (0..5).map(|_| w.command(&["enable"], 1)).collect());
        for r in &runs {
            r.expect_exit(0)?;
        }
        ensure!(!worker_running(&w.handler_dir), "no worker for a no-op");
        ensure!(fs::read(w.status_path(1)).unwrap() == before, "status kept");
        let refs: Vec<&Run> = runs.iter().collect();
        clean(&w, &refs)
    }));
    for i in 0..3 {
        v.push(enable_then_disable(i, "hbv3"));
    }
    v.push(enable_then_disable(0, "hbv3-portdown"));
    for i in 0..2 {
        v.push(enable_and_disable_together(i));
    }
    v.push(case("disable_stops_a_worker_waiting_in_verify", || {
        let mut w = World::new("hbv3-portdown", HB);
        w.verify_timeout = 60;
        w.settings(1, json!({}));
        enable(&w, 1).expect_exit(0)?;
        wait_for_worker(&w)?;
        let t = Instant::now();
        let d = verb(&w, "disable", 1);
        d.expect_exit(0)?;
        worker_gone(&w)?;
        ensure!(
            t.elapsed() < Duration::from_secs(15),
            "the worker left at its next safe point, not after {:?}",
            t.elapsed()
        );
        let s = read_status(&w, 1)?.ok_or("no status")?;
        ensure!(status_value(&s) != "success", "no success claimed: {s}");
        let hb = fs::read_to_string(w.handler_dir.join("heartbeat.log")).unwrap_or_default();
        ensure!(
            heartbeat_state(&w).as_deref() == Some("NotReady"),
            "heartbeat after disable: {hb}"
        );
        clean(&w, &[&d])
    }));
    for after_success in [false, true] {
        let name = if after_success {
            "late_worker_after_success_and_disable_keeps_not_ready"
        } else {
            "late_worker_after_disable_keeps_not_ready"
        };
        v.push(case(name, move || {
            // What a transient unit slow to start runs after disable has returned.
            let w = hbv3();
            if after_success {
                succeed(&w, 1, json!({}))?;
            } else {
                w.settings(1, json!({}));
                verb(&w, "install", 1).expect_exit(0)?;
            }
            let status_before = fs::read(w.status_path(1)).ok();
            let d = verb(&w, "disable", 1);
            d.expect_exit(0)?;
            ensure!(
                heartbeat_state(&w).as_deref() == Some("NotReady"),
                "disable writes NotReady"
            );
            let mut c = w.command(&["worker", "--handler-dir"], 1);
            c.arg(&w.handler_dir).args(["--seq", "1"]);
            let late = run_bounded(&w, c, SETTLE);
            late.expect_exit(0)?;
            let hb = fs::read_to_string(w.handler_dir.join("heartbeat.log")).unwrap_or_default();
            ensure!(
                heartbeat_state(&w).as_deref() == Some("NotReady"),
                "the late worker overwrote disable's heartbeat: {hb}"
            );
            ensure!(
                fs::read(w.status_path(1)).ok() == status_before,
                "the late worker wrote a status"
            );
            clean(&w, &[&d, &late])
        }));
    }
    v.push(case("two_disables_at_once", || {
        let w = hbv3();
        succeed(&w, 1, json!({}))?;
        let runs = together(
            &w,
            vec![w.command(&["disable"], 1), w.command(&["disable"], 1)],
        );
        for r in &runs {
            r.expect_exit(0)?;
        }
        ensure!(
            heartbeat_state(&w).as_deref() == Some("NotReady"),
            "heartbeat"
        );
        let refs: Vec<&Run> = runs.iter().collect();
        clean(&w, &refs)
    }));
    v.push(numbers_together("1_and_2", &[1, 2]));
    v.push(numbers_together("2_and_1", &[2, 1]));
    v.push(numbers_together("1_to_3", &[1, 2, 3]));
    v.push(numbers_together("1_to_6", &[1, 2, 3, 4, 5, 6]));
    v.push(case("monitor_while_the_worker_runs", || {
        let mut w = World::new("hbv3-portdown", HB);
        w.verify_timeout = 30;
        w.settings(1, json!({}));
        enable(&w, 1).expect_exit(0)?;
        wait_for_worker(&w)?;
        let before = fs::read(w.status_path(1)).unwrap();
        let mut c = w.command(&["monitor", "--handler-dir"], 1);
        c.arg(&w.handler_dir);
        let m = run_bounded(&w, c, VERB_BOUND);
        m.expect_exit(0)?;
        let after = read_status(&w, 1)?.ok_or("status gone")?;
        ensure!(
            status_value(&after) == "transitioning"
                || fs::read(w.status_path(1)).unwrap() == before,
            "the monitor never writes the status: {after}"
        );
        ensure!(workers_now(&w) <= 1, "one worker");
        port_up(&w);
        expect_status(&w, 1, "success", 0)?;
        clean(&w, &[&m])
    }));
    v.push(case("five_monitors_at_once_after_success", || {
        let w = hbv3();
        succeed(&w, 1, json!({}))?;
        let before = fs::read(w.status_path(1)).unwrap();
        let runs = together(
            &w,
            (0..5)
                .map(|_| {
                    let mut c = w.command(&["monitor", "--handler-dir"], 1);
                    c.arg(&w.handler_dir);
                    c
                })
                .collect(),
        );
        for r in &runs {
            r.expect_exit(0)?;
        }
        ensure!(heartbeat_state(&w).as_deref() == Some("Ready"), "heartbeat");
        ensure!(fs::read(w.status_path(1)).unwrap() == before, "status kept");
        let refs: Vec<&Run> = runs.iter().collect();
        clean(&w, &refs)?;
        stays_put(&w, 1)
    }));
    for i in 0..2 {
        v.push(case(format!("apply_and_enable_together_{i}"), move || {
            let w = hbv3();
            w.settings(1, json!({}));
            let file = w.tmp.path().join("apply.json");
            write(&file, "{}");
            let runs = together(
                &w,
                vec![
                    w.command(&["apply", "--settings", file.to_str().unwrap()], 0),
                    w.command(&["enable"], 1),
                ],
            );
            runs[0].expect_exit(0)?;
            ensure!(runs[0].stdout.starts_with("success:"), "{}", runs[0].text());
            runs[1].expect_exit(0)?;
            expect_status(&w, 1, "success", 0)?;
            let refs: Vec<&Run> = runs.iter().collect();
            clean(&w, &refs)?;
            stays_put(&w, 1)
        }));
    }
    v.push(case(
        "enable_writes_no_checkpoint_while_another_holds_the_lock",
        || {
            let w = hbv3();
            succeed(&w, 1, json!({}))?;
            let state = w.data_dir().join("state.json");
            let before = fs::read(&state).unwrap();
            let held = hold_lock(&w);
            w.settings(2, json!({"ipoib": "off"}));
            let r = enable(&w, 2);
            r.expect_exit(0)?;
            // The worker waits for the lock; nothing may touch the checkpoint before that.
            ensure!(
                poll_for(SETTLE, || w.log().contains(LOCK_WAITING)),
                "the worker never waited for the lock: {}",
                w.log()
            );
            ensure!(
                fs::read(&state).unwrap() == before,
                "state.json written while another process holds the worker lock"
            );
            drop(held);
            expect_status(&w, 2, "success", 0)?;
            clean(&w, &[&r])
        },
    ));
    v.push(case(
        "apply_waits_for_the_lock_and_writes_nothing_before_it",
        || {
            let w = hbv3();
            let held = hold_lock(&w);
            let file = w.tmp.path().join("apply.json");
            write(&file, "{}");
            let c = w.command(&["apply", "--settings", file.to_str().unwrap()], 0);
            let cp = w.data_dir().join("apply-state.json");
            let r = std::thread::scope(|s| -> Result<Run, String> {
                let h = s.spawn(|| run_bounded(&w, c, SETTLE));
                let waiting = poll_for(SETTLE, || apply_log(&w).contains(LOCK_WAITING));
                let early = cp.exists();
                drop(held);
                let r = h.join().unwrap();
                ensure!(waiting, "apply never waited for the lock: {}", r.text());
                ensure!(
                    !early,
                    "apply-state.json written before apply held the lock"
                );
                Ok(r)
            })?;
            r.expect_exit(0)?;
            ensure!(r.stdout.starts_with("success:"), "{}", r.text());
            clean(&w, &[&r])
        },
    ));
    v.push(case("apply_while_the_worker_waits", || {
        let mut w = World::new("hbv3-portdown", HB);
        w.verify_timeout = 30;
        w.settings(1, json!({}));
        enable(&w, 1).expect_exit(0)?;
        wait_for_worker(&w)?;
        let file = w.tmp.path().join("apply.json");
        write(&file, "{}");
        let c = w.command(&["apply", "--settings", file.to_str().unwrap()], 0);
        let waiter = std::thread::scope(|s| {
            let h = s.spawn(|| run_bounded(&w, c, SETTLE));
            // Once apply waits for the worker's lock, the port comes up and the worker ends.
            let waiting = poll_for(SETTLE, || apply_log(&w).contains(LOCK_WAITING));
            port_up(&w);
            (waiting, h.join().unwrap())
        });
        let (waiting, waiter) = waiter;
        ensure!(
            waiting,
            "apply never waited for the lock: {}",
            waiter.text()
        );
        waiter.expect_exit(0)?;
        ensure!(waiter.stdout.starts_with("success:"), "{}", waiter.text());
        expect_status(&w, 1, "success", 0)?;
        clean(&w, &[&waiter])
    }));
    v
}

/// Take the worker lock from the test process, as a worker (or apply) would hold it.
/// apply's own log (it runs without the agent's log directory).
fn apply_log(w: &World) -> String {
    fs::read_to_string(w.data_dir().join("log/ibdriver.log")).unwrap_or_default()
}

fn hold_lock(w: &World) -> nix::fcntl::Flock<fs::File> {
    fs::create_dir_all(w.data_dir()).unwrap();
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(w.data_dir().join("worker.lock"))
        .unwrap();
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .expect("the lock is free")
}

#[test]
fn races() {
    run_table("concurrency", cases());
}
