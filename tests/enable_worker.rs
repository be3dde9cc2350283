//! Enable and its worker, end to end through the agent's files: what the verify wait does with
//! time, which runs count as finished, how a waiting or duplicate worker leaves, and what the
//! no-op enable checks. Each test names the behaviour it would catch going missing.

mod common;

use common::*;
use serde_json::json;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

const HB: &str = "Standard_HB120rs_v3";
const PORT: &str = "sys/bus/pci/devices/0101:00:00.0/infiniband/mlx5_0/ports/1";

fn summary_log(w: &World) -> String {
    fs::read_to_string(w.root.join("var/log/azure/ib-vmext-status")).unwrap_or_default()
}

fn port_up(w: &World) {
    w.set_file(&format!("{PORT}/state"), "4: ACTIVE\n");
    w.set_file(&format!("{PORT}/phys_state"), "5: LinkUp\n");
}

fn substatus<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v[0]["status"]["substatus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no {name} substatus in {v}"))
}

fn worker_command(w: &World, seq: u64) -> Command {
    let hd = w.handler_dir.to_string_lossy().to_string();
    w.command(
        &["worker", "--handler-dir", &hd, "--seq", &seq.to_string()],
        seq,
    )
}

/// Run a worker by hand and wait (bounded) for it to exit; None if it was still running at
/// `timeout` (it is killed then).
fn run_worker_within(w: &World, seq: u64, timeout: Duration) -> Option<i32> {
    let mut child = worker_command(w, seq).spawn().unwrap();
    wait_exit(&mut child, timeout).map(|st| st.code().unwrap_or(-1))
}

/// A port-down host whose worker sits in verify for up to `verify_timeout` seconds.
fn worker_in_verify(verify_timeout: u64) -> World {
    let mut w = World::new("hbv3-portdown", HB);
    w.verify_timeout = verify_timeout;
    w.settings(1, json!({"ipoib": "off"}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    wait_for("the worker in verify", Duration::from_secs(30), || {
        w.status(1)
            .is_some_and(|v| message(&v).contains("verify: running"))
    });
    w
}

/// Take the worker lock the way a worker does, so the next worker waits for it.
fn hold_worker_lock(w: &World) -> nix::fcntl::Flock<fs::File> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let data = w.data_dir();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&data)
        .unwrap();
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(data.join("worker.lock"))
        .unwrap();
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .expect("the worker lock is free")
}

#[test]
fn a_failure_names_the_extension_and_reaches_the_summary_log_and_events() {
    let w = World::new("dseries", "Standard_D4s_v5");
    w.settings(5, json!({}));
    assert_eq!(code(&w.run("enable", 5)), 11);
    let v = w.status(5).unwrap();
    assert_eq!(v[0]["status"]["name"], NAME, "{v}");
    assert_eq!(status_code(&v), 11);
    let summary = summary_log(&w);
    assert!(summary.contains("Enable seq=5: error 11 "), "{summary}");
    let events: Vec<String> = fs::read_dir(w.log_dir.join("events"))
        .unwrap()
        .flatten()
        .map(|e| fs::read_to_string(e.path()).unwrap())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e.contains("\"EventLevel\":\"Error\"") && e.contains("Enable")),
        "{events:?}"
    );
}

#[test]
fn verify_polls_the_ports_at_its_interval_until_its_timeout() {
    let mut w = World::new("hbv3-portdown", HB);
    w.verify_timeout = 3;
    w.settings(1, json!({"ipoib": "off"}));
    let started = Instant::now();
    assert_eq!(code(&w.run("enable", 1)), 0);
    let v = w.wait_terminal(1, Duration::from_secs(30));
    assert_eq!(status_code(&v), 220, "{v}");
    // Verify began after enable did and waits its whole timeout (3 s): a lower bound only,
    // which load can lengthen but never break.
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "verify gave up after {:?}",
        started.elapsed()
    );
    // One check, then a sleep to the deadline: not a loop that checks without sleeping.
    let waits = w.log().matches("waiting for ports").count();
    assert!((1..=3).contains(&waits), "{waits} port checks logged");
}

#[test]
fn a_failure_that_waiting_cannot_fix_ends_verify_at_once() {
    let mut w = World::new("hbv3", HB);
    w.verify_timeout = 60;
    // ib_umad is not loaded; loading it (configure) also takes the verbs library away, so
    // verify finds software missing, which no wait for the link can fix.
    let modules = fs::read_to_string(w.root.join("proc/modules")).unwrap();
    let kept: String = modules
        .lines()
        .filter(|l| !l.starts_with("ib_umad "))
        .map(|l| format!("{l}\n"))
        .collect();
    w.set_file("proc/modules", &kept);
    let root = w.root.display().to_string();
    write_exec(
        &w.stubs.join("modprobe"),
        &format!(
            "#!/bin/sh\necho \"modprobe $*\" >> '{calls}'\n\
             grep -q '^ib_umad ' '{root}/proc/modules' || echo 'ib_umad 36864 0 - Live 0x0' >> '{root}/proc/modules'\n\
             rm -f '{root}/usr/lib/x86_64-linux-gnu/libibverbs.so.1'\nexit 0\n",
            calls = w.tmp.path().join("calls.log").display()
        ),
    );
    w.settings(1, json!({"ipoib": "off"}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    // verify_timeout is 60 s: a terminal status within 25 s means verify did not wait.
    let v = w.wait_terminal(1, Duration::from_secs(25));
    assert_eq!(status_code(&v), 210, "{v}");
    assert_eq!(substatus(&v, "verify")["status"], "error", "{v}");
    assert!(!w.log().contains("waiting for ports"), "verify waited");
}

#[test]
fn the_success_message_has_only_the_parts_there_are() {
    let w = World::new("hbv3", HB);
    w.settings(1, json!({"ipoib": "off"}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    let v = w.wait_terminal(1, Duration::from_secs(30));
    assert_eq!(status_value(&v), "success", "{v}");
    let m = message(&v);
    assert!(m.contains("1/1 InfiniBand port(s) ACTIVE"), "{m}");
    assert!(!m.contains("IPoIB (") && !m.contains("note:"), "{m}");
    // Nothing was downloaded: removing the download directories found nothing to warn about.
    assert!(!w.log().contains("cannot remove"), "{}", w.log());

    // Default settings on a host with neither the IPoIB record nor the agent's switch: a note.
    w.settings(2, json!({}));
    assert_eq!(code(&w.run("enable", 2)), 0);
    let v = w.wait_terminal(2, Duration::from_secs(30));
    assert_eq!(status_value(&v), "success", "{v}");
    let m = message(&v);
    assert!(m.contains("; note: no IPoIB_Data record"), "{m}");
    assert!(!m.contains("IPoIB ("), "{m}");
}

#[test]
fn a_verbs_library_gone_after_success_is_not_a_noop() {
    let w = World::new("hbv3", HB);
    w.settings(1, json!({"ipoib": "off"}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    assert_eq!(
        status_value(&w.wait_terminal(1, Duration::from_secs(30))),
        "success"
    );
    fs::remove_file(w.root.join("usr/lib/x86_64-linux-gnu/libibverbs.so.1")).unwrap();
    assert_eq!(code(&w.run("enable", 1)), 0);
    // The host is judged again, and the verdict names what is missing.
    let v = w.wait_terminal(1, Duration::from_secs(30));
    assert_eq!(status_value(&v), "error", "{v}");
    assert!(message(&v).contains("libibverbs"), "{}", message(&v));
}

#[test]
fn a_noop_enable_points_a_stale_health_timer_at_this_binary() {
    let w = World::new("hbv3", HB);
    w.fake_systemd("", false);
    w.settings(1, json!({"ipoib": "off"}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    assert_eq!(
        status_value(&w.wait_terminal(1, Duration::from_secs(30))),
        "success"
    );
    let service = w.root.join("etc/systemd/system/ibdriver-health.service");
    let unit = fs::read_to_string(&service).unwrap();
    // The timer is current: the no-op does not touch systemd.
    let before = w.calls();
    assert_eq!(code(&w.run("enable", 1)), 0);
    assert_eq!(w.calls(), before, "the no-op reinstalled a current timer");
    // An update left the unit naming the old version's binary: the no-op puts it right.
    fs::write(&service, unit.replace("ibdriver", "ibdriver-old")).unwrap();
    assert_eq!(code(&w.run("enable", 1)), 0);
    assert!(!worker_running(&w.handler_dir));
    assert_eq!(fs::read_to_string(&service).unwrap(), unit);
    let after = w.calls()[before.len()..].to_string();
    assert!(after.contains("systemctl daemon-reload"), "{after}");
}

#[test]
fn a_worker_leaves_a_current_running_health_timer_alone_and_restarts_a_stopped_one() {
    let w = World::new("hbv3", HB);
    w.fake_systemd("", false);
    w.settings(1, json!({"ipoib": "off"}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    assert_eq!(
        status_value(&w.wait_terminal(1, Duration::from_secs(30))),
        "success"
    );
    assert!(
        w.calls().contains("systemctl daemon-reload"),
        "{}",
        w.calls()
    );
    // A success with systemd saying the timer is enabled and `active`; the calls it made.
    let success_with = |seq: u64, active: &str| -> String {
        w.systemctl_says(&[
            ("is-enabled", "ibdriver-health.timer", "enabled"),
            ("is-active", "ibdriver-health.timer", active),
        ]);
        let before = w.calls().len();
        w.settings(seq, json!({"ipoib": "off", "lockTimeoutSeconds": 60 + seq}));
        assert_eq!(code(&w.run("enable", seq)), 0);
        assert_eq!(
            status_value(&w.wait_terminal(seq, Duration::from_secs(30))),
            "success"
        );
        w.calls()[before..].to_string()
    };
    // Running: left alone.
    let after = success_with(2, "active");
    assert!(
        after.contains("systemctl is-active ibdriver-health.timer"),
        "{after}"
    );
    assert!(!after.contains("daemon-reload"), "{after}");
    assert!(!after.contains("enable --now"), "{after}");
    // Stopped (an operator's `systemctl stop`): the next success starts it again, with no reload.
    let after = success_with(3, "inactive");
    assert!(
        after.contains("systemctl enable --now ibdriver-health.timer"),
        "{after}"
    );
    assert!(!after.contains("daemon-reload"), "{after}");
}

#[test]
fn a_resumed_enable_shows_done_stages_and_a_worker_waiting_for_the_lock_leaves_on_disable() {
    let mut w = World::new("hbv3-portdown", HB);
    w.verify_timeout = 1;
    w.settings(1, json!({"ipoib": "off"}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    assert_eq!(
        status_code(&w.wait_terminal(1, Duration::from_secs(30))),
        220
    );
    // Another worker holds the lock: the next one waits, writing nothing, so the status read
    // below is enable's own.
    let lock = hold_worker_lock(&w);
    assert_eq!(code(&w.run("enable", 1)), 0);
    wait_for("the worker to start", Duration::from_secs(10), || {
        worker_running(&w.handler_dir)
    });
    let v = w.status(1).unwrap();
    assert_eq!(status_value(&v), "transitioning", "{v}");
    for stage in ["preflight", "repair", "configure"] {
        assert_eq!(substatus(&v, stage)["status"], "success", "{stage}: {v}");
    }
    let status_before = fs::read(w.status_path(1)).unwrap();
    // Disable while it waits: it leaves without a word of its own.
    assert_eq!(code(&w.run("disable", 1)), 0);
    w.wait_worker_gone(Duration::from_secs(10));
    assert_eq!(fs::read(w.status_path(1)).unwrap(), status_before);
    assert_eq!(w.heartbeat()[0]["heartbeat"]["status"], "NotReady");
    drop(lock);
}

#[test]
fn a_second_worker_for_the_running_sequence_number_leaves_at_once() {
    let w = worker_in_verify(60);
    assert_eq!(
        run_worker_within(&w, 1, Duration::from_secs(10)),
        Some(0),
        "the second worker did not leave while the first one runs"
    );
    assert!(worker_running(&w.handler_dir), "the first worker is gone");
    assert!(
        w.log()
            .contains("another worker already runs this sequence number"),
        "{}",
        w.log()
    );
    assert_eq!(code(&w.run("disable", 1)), 0);
    w.wait_worker_gone(Duration::from_secs(10));
}

#[test]
fn an_error_is_not_final_the_same_sequence_number_runs_again() {
    let mut w = World::new("hbv3-portdown", HB);
    w.verify_timeout = 1;
    w.settings(1, json!({"ipoib": "off"}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    assert_eq!(
        status_code(&w.wait_terminal(1, Duration::from_secs(30))),
        220
    );
    assert_eq!(w.mrseq().as_deref(), Some("1"));
    port_up(&w);
    assert_eq!(code(&w.run("enable", 1)), 0);
    wait_for("success after the rerun", Duration::from_secs(30), || {
        w.status(1).is_some_and(|v| status_value(&v) == "success")
    });
    w.wait_worker_gone(Duration::from_secs(10));
    let v = w.status(1).unwrap();
    assert!(
        message(&v).contains("1/1 InfiniBand port(s) ACTIVE"),
        "{}",
        message(&v)
    );
    let state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(w.data_dir().join("state.json")).unwrap())
            .unwrap();
    assert_eq!(state["outcome"]["status"], "success", "{state}");
}

#[test]
fn an_oversized_status_file_is_not_taken_for_ours() {
    let w = World::new("hbv3", HB);
    w.settings(1, json!({"ipoib": "off"}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    assert_eq!(
        status_value(&w.wait_terminal(1, Duration::from_secs(30))),
        "success"
    );
    let good = fs::read_to_string(w.status_path(1)).unwrap();
    // Valid JSON saying success, but bigger than any status we write.
    let padded = format!("{good}{}", " ".repeat(300 * 1024));
    fs::write(w.status_path(1), &padded).unwrap();
    assert_eq!(code(&w.run("enable", 1)), 0);
    let len = fs::metadata(w.status_path(1)).unwrap().len();
    assert!(len <= 128 * 1024, "status left at {len} bytes");
    assert_eq!(status_value(&w.status(1).unwrap()), "success");
}

#[test]
fn a_worker_lock_that_cannot_be_opened_is_an_error_naming_it() {
    let w = World::new("hbv3", HB);
    w.settings(1, json!({"ipoib": "off"}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    assert_eq!(
        status_value(&w.wait_terminal(1, Duration::from_secs(30))),
        "success"
    );
    let lock = w.data_dir().join("worker.lock");
    fs::remove_file(&lock).unwrap();
    fs::create_dir(&lock).unwrap();
    w.settings(2, json!({"ipoib": "off"}));
    assert_eq!(code(&w.run("enable", 2)), 0);
    let v = w.wait_terminal(2, Duration::from_secs(30));
    assert_eq!(status_code(&v), 201, "{v}");
    assert!(message(&v).contains("worker.lock"), "{}", message(&v));
}

#[test]
fn the_workers_heartbeat_carries_its_progress() {
    // The first refresh comes 30 s after the worker started; verify waits longer than that.
    let w = worker_in_verify(60);
    wait_for(
        "a heartbeat naming the stage",
        Duration::from_secs(45),
        || {
            fs::read_to_string(w.handler_dir.join("heartbeat.log"))
                .is_ok_and(|t| t.contains("enable in progress: verify"))
        },
    );
    assert_eq!(w.heartbeat()[0]["heartbeat"]["status"], "Ready");
    assert_eq!(code(&w.run("disable", 1)), 0);
    w.wait_worker_gone(Duration::from_secs(10));
}

/// Unload ib_umad from the fake host and make modprobe (configure's) block until the returned
/// file exists (at most 60 s), then run `then` (shell) and succeed.
fn hold_modprobe(w: &World, then: &str) -> std::path::PathBuf {
    let modules = fs::read_to_string(w.root.join("proc/modules")).unwrap();
    let kept: String = modules
        .lines()
        .filter(|l| !l.starts_with("ib_umad "))
        .map(|l| format!("{l}\n"))
        .collect();
    w.set_file("proc/modules", &kept);
    let release = w.tmp.path().join("release-modprobe");
    write_exec(
        &w.stubs.join("modprobe"),
        &format!(
            "#!/bin/sh\necho \"modprobe $*\" >> '{calls}'\ni=0\n\
             while [ ! -e '{release}' ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n\
             {then}\nexit 0\n",
            calls = w.tmp.path().join("calls.log").display(),
            release = release.display()
        ),
    );
    release
}

#[test]
fn a_worker_stuck_in_a_long_step_leaves_a_newer_refusals_heartbeat_alone() {
    let w = World::new("hbv3", HB);
    // ib_umad is not loaded, and loading it (configure) takes until the test lets it go.
    let release = hold_modprobe(&w, "");
    w.settings(1, json!({"ipoib": "off"}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    wait_for("configure's modprobe", Duration::from_secs(20), || {
        w.calls().contains("modprobe ib_umad")
    });
    // A newer sequence number is refused: its NotReady heartbeat is the truth from now on.
    w.settings_raw(
        2,
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"bogus":1}}}]}"#,
    );
    assert_eq!(code(&w.run("enable", 2)), 1);
    assert_eq!(w.heartbeat()[0]["heartbeat"]["status"], "NotReady");
    // The old worker's next beat (30 s after it started) finds the heartbeat no longer its
    // own and ends the refresh, leaving the refusal's heartbeat as it was.
    wait_for(
        "the old worker's heartbeat to yield",
        Duration::from_secs(60),
        || w.log().contains(ibdriver::agent::heartbeat::YIELDED),
    );
    assert_eq!(
        w.heartbeat()[0]["heartbeat"]["status"],
        "NotReady",
        "the old worker's heartbeat landed on the refusal's"
    );
    fs::write(&release, "").unwrap();
    w.wait_worker_gone(Duration::from_secs(20));
    assert_eq!(w.heartbeat()[0]["heartbeat"]["status"], "NotReady");
    assert_eq!(status_value(&w.status(1).unwrap()), "transitioning");
}

#[test]
fn enable_takes_back_a_sequence_number_whose_worker_was_leaving() {
    let w = World::new("hbv3", HB);
    // ib_umad is not loaded; loading it (configure) takes until the test lets it go.
    let root = w.root.display().to_string();
    let release = hold_modprobe(
        &w,
        &format!(
            "grep -q '^ib_umad ' '{root}/proc/modules' || echo 'ib_umad 36864 0 - Live 0x0' >> '{root}/proc/modules'"
        ),
    );
    w.settings(1, json!({"ipoib": "off"}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    wait_for("configure's modprobe", Duration::from_secs(20), || {
        w.calls().contains("modprobe ib_umad")
    });
    // A newer sequence number (refused) asks the worker to leave; it is still in modprobe
    // when the agent goes back to sequence number 1.
    w.settings_raw(
        2,
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"bogus":1}}}]}"#,
    );
    assert_eq!(code(&w.run("enable", 2)), 1);
    assert_eq!(code(&w.run("enable", 1)), 0);
    fs::write(&release, "").unwrap();
    // The worker that was leaving is wanted again and finishes the work.
    wait_for("success for 1", Duration::from_secs(30), || {
        w.status(1).is_some_and(|v| status_value(&v) == "success")
    });
    w.wait_worker_gone(Duration::from_secs(20));
    assert_eq!(w.mrseq().as_deref(), Some("1"));
}

#[test]
fn a_worker_under_systemd_gets_the_proxy_through_a_private_file_never_its_command_line() {
    let w = World::new("hbv3", HB);
    // Like systemd: the worker starts in a clean environment with only what --setenv gave;
    // the stub keeps what the worker will find in proxy-env.json.
    w.fake_systemd(
        &format!(
            "cp -p '{}' '{}' 2>/dev/null",
            w.data_dir().join("proxy-env.json").display(),
            w.tmp.path().join("proxy-env.seen").display()
        ),
        true,
    );
    w.settings(1, json!({"ipoib": "off"}));
    let proxy = "http://proxyuser:ProxyPw31@127.0.0.1:9";
    let out = w
        .command(&["enable"], 1)
        .env("https_proxy", proxy)
        .env("NO_PROXY", "169.254.169.254")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        status_value(&w.wait_terminal(1, Duration::from_secs(30))),
        "success"
    );
    let calls = w.calls();
    let run = calls
        .lines()
        .find(|l| l.starts_with("systemd-run"))
        .expect("the worker was started with systemd-run");
    assert!(run.contains("--setenv=PATH="), "{run}");
    assert!(run.contains("--setenv=IBDRIVER_ROOT="), "{run}");
    // Unset, the hardware seam is not passed: the worker reads <root>/sys like enable.
    assert!(!run.contains("IBDRIVER_SYSFS"), "{run}");
    assert!(
        !run.contains("ProxyPw31") && !run.contains("proxy"),
        "{run}"
    );
    // What the worker found when systemd-run started it: private, and the proxies in it.
    let seen = w.tmp.path().join("proxy-env.seen");
    let mode = fs::metadata(&seen).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
    let vars: serde_json::Value = serde_json::from_slice(&fs::read(&seen).unwrap()).unwrap();
    assert_eq!(vars["https_proxy"], proxy);
    assert_eq!(vars["NO_PROXY"], "169.254.169.254");
    // The worker took them: nothing of the credentials stays on disk.
    let saved = w.data_dir().join("proxy-env.json");
    assert!(!saved.exists());
    // Without proxies in the environment, enable leaves none for the next worker.
    fs::remove_file(&seen).unwrap();
    w.settings(2, json!({"ipoib": "off"}));
    assert_eq!(code(&w.run("enable", 2)), 0);
    assert_eq!(
        status_value(&w.wait_terminal(2, Duration::from_secs(30))),
        "success"
    );
    assert!(!seen.exists() && !saved.exists());
}
