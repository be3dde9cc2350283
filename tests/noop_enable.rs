//! The no-op enable (same sequence number, already successful, host still verifies) tells the
//! truth: it puts back a status file that went missing or bad, reports the stack that is
//! installed, and a worker that comes after disable leaves disable's heartbeat alone.

mod common;

use common::*;
use serde_json::json;
use std::fs;
use std::time::Duration;

const HB: &str = "Standard_HB120rs_v3";

/// A host that already runs DOCA-OFED (what `ofed_info -s` and /opt/mellanox/doca say), with
/// one enable run to success.
fn doca_host_after_success() -> World {
    let w = World::new("hbv3", HB);
    w.set_file("usr/bin/ofed_info", "");
    fs::create_dir_all(w.root.join("opt/mellanox/doca")).unwrap();
    let calls = w.tmp.path().join("calls.log");
    write_exec(
        &w.stubs.join("ofed_info"),
        &format!(
            "#!/bin/sh\necho \"ofed_info $*\" >> '{}'\necho 'OFED-internal-25.10-1.2.8:'\n",
            calls.display()
        ),
    );
    w.settings(1, json!({"ipoib": "off"}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    let v = w.wait_terminal(1, Duration::from_secs(30));
    assert_eq!(status_value(&v), "success", "{v}");
    w
}

fn heartbeat_message(w: &World) -> String {
    w.heartbeat()[0]["heartbeat"]["formattedMessage"]["message"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn the_noop_enable_reports_the_installed_stack_without_asking_the_host_again() {
    let w = doca_host_after_success();
    assert!(
        heartbeat_message(&w).contains("doca 25.10-1.2.8"),
        "{}",
        heartbeat_message(&w)
    );
    let asked = w.calls().matches("ofed_info").count();
    // The heartbeat file goes away so the no-op's own heartbeat is what is read below.
    fs::remove_file(w.handler_dir.join("heartbeat.log")).unwrap();
    assert_eq!(code(&w.run("enable", 1)), 0);
    assert!(!worker_running(&w.handler_dir));
    let hb = w.heartbeat();
    assert_eq!(hb[0]["heartbeat"]["status"], "Ready");
    let msg = heartbeat_message(&w);
    assert!(msg.contains("doca 25.10-1.2.8"), "{msg}");
    assert!(!msg.contains("inbox"), "{msg}");
    assert_eq!(
        w.calls().matches("ofed_info").count(),
        asked,
        "the no-op ran ofed_info"
    );
}

/// What the no-op enable must repair at the status path, and how to plant it.
fn plant(w: &World, how: &str) {
    let p = w.status_path(1);
    match how {
        "missing" => fs::remove_file(&p).unwrap(),
        "empty" => fs::write(&p, "").unwrap(),
        "truncated" => {
            let text = fs::read(&p).unwrap();
            fs::write(&p, &text[..text.len() / 2]).unwrap();
        }
        "not-json" => fs::write(&p, "\u{0}\u{1}garbage").unwrap(),
        "empty-array" => fs::write(&p, "[]").unwrap(),
        "transitioning" => {
            let text = fs::read_to_string(&p).unwrap();
            fs::write(&p, text.replace("\"success\"", "\"transitioning\"")).unwrap();
        }
        "directory" => {
            fs::remove_file(&p).unwrap();
            fs::create_dir_all(p.join("inner")).unwrap();
            fs::write(p.join("inner/file"), "x").unwrap();
        }
        "fifo" => {
            fs::remove_file(&p).unwrap();
            nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        }
        "symlink" => {
            let target = w.tmp.path().join("elsewhere");
            fs::write(&target, "keep me").unwrap();
            fs::remove_file(&p).unwrap();
            std::os::unix::fs::symlink(&target, &p).unwrap();
        }
        other => panic!("unknown plant {other}"),
    }
}

#[test]
fn the_noop_enable_rewrites_a_missing_corrupt_or_foreign_status_file() {
    let w = doca_host_after_success();
    let good = w.status(1).unwrap();
    let summary = message(&good);
    for how in [
        "missing",
        "empty",
        "truncated",
        "not-json",
        "empty-array",
        "transitioning",
        "directory",
        "fifo",
        "symlink",
    ] {
        plant(&w, how);
        let before = w.calls();
        assert_eq!(code(&w.run("enable", 1)), 0, "{how}");
        assert!(!worker_running(&w.handler_dir), "{how}: a worker started");
        assert_eq!(w.calls(), before, "{how}: the no-op ran programs");
        let meta = fs::symlink_metadata(w.status_path(1)).unwrap();
        assert!(meta.is_file(), "{how}: status path is not a file");
        let v = w.status(1).unwrap();
        assert_eq!(status_value(&v), "success", "{how}: {v}");
        assert_eq!(status_code(&v), 0, "{how}");
        assert_eq!(message(&v), summary, "{how}");
        let subs = v[0]["status"]["substatus"].as_array().unwrap();
        assert!(
            subs.iter()
                .any(|s| s["name"] == "verify" && s["status"] == "success"),
            "{how}: {v}"
        );
        assert!(subs.iter().any(|s| s["name"] == "health"), "{how}: {v}");
    }
    assert_eq!(
        fs::read_to_string(w.tmp.path().join("elsewhere")).unwrap(),
        "keep me",
        "the symlink's target was written through"
    );
}

#[test]
fn a_valid_status_file_is_left_byte_for_byte() {
    let w = doca_host_after_success();
    let before = fs::read(w.status_path(1)).unwrap();
    assert_eq!(code(&w.run("enable", 1)), 0);
    assert_eq!(fs::read(w.status_path(1)).unwrap(), before);
}

#[test]
fn a_worker_that_starts_after_disable_leaves_disables_heartbeat_and_status() {
    let w = doca_host_after_success();
    // A newer sequence number is wanted, then disabled before its worker got going.
    w.settings(2, json!({"ipoib": "off"}));
    assert_eq!(code(&w.run("disable", 2)), 0);
    let hb = fs::read(w.handler_dir.join("heartbeat.log")).unwrap();
    assert!(String::from_utf8_lossy(&hb).contains("NotReady"));
    let handler_dir = w.handler_dir.to_string_lossy().to_string();
    let out = w
        .command(&["worker", "--handler-dir", &handler_dir, "--seq", "2"], 2)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        fs::read(w.handler_dir.join("heartbeat.log")).unwrap(),
        hb,
        "the late worker overwrote disable's heartbeat"
    );
    assert!(w.status(2).is_none(), "the late worker wrote a status");
}
