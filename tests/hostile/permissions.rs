//! Modes and links: every verb under umask 000 leaves no file others can read and no directory
//! others can write; a symlink (or FIFO, or hard link) planted at one of our paths is replaced
//! or refused, and what it points at stays byte for byte as it was; a symlinked data or log
//! directory is refused with 201; a status that cannot be written is exit 14.

use crate::common::*;
use serde_json::json;
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const HB: &str = "Standard_HB120rs_v3";
const PRECIOUS: &str = "precious: must stay as it is\n";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn umask0(mut c: Command) -> Command {
    // SAFETY: umask is async-signal-safe and touches no memory of the parent.
    unsafe {
        c.pre_exec(|| {
            nix::sys::stat::umask(nix::sys::stat::Mode::empty());
            Ok(())
        });
    }
    c
}

fn run0(w: &World, args: &[&str], seq: u64) -> Output {
    umask0(w.command(args, seq)).output().unwrap()
}

/// Every path under `dir` (links not followed) with its inode.
fn snapshot(dir: &Path) -> HashMap<PathBuf, u64> {
    let mut out = HashMap::new();
    fn walk(p: &Path, out: &mut HashMap<PathBuf, u64>) {
        for e in fs::read_dir(p).into_iter().flatten().flatten() {
            let path = e.path();
            let Ok(m) = fs::symlink_metadata(&path) else {
                continue;
            };
            out.insert(path.clone(), m.ino());
            if m.is_dir() {
                walk(&path, out);
            }
        }
    }
    walk(dir, &mut out);
    out
}

/// Files and directories created since `before` whose mode lets others read (files) or write
/// (directories). The documented system files (0644 so other programs read them) and the test
/// stubs' own call log are not ours to judge.
fn loose(w: &World, before: &HashMap<PathBuf, u64>) -> Vec<String> {
    let allowed = [
        "calls.log",
        "etc/modules-load.d/infiniband-driver-linux.conf",
        "etc/waagent.conf",
    ];
    let mut bad = Vec::new();
    for (path, ino) in snapshot(w.tmp.path()) {
        if before.get(&path) == Some(&ino) {
            continue;
        }
        let rel = path
            .strip_prefix(w.tmp.path())
            .unwrap()
            .display()
            .to_string();
        if allowed.iter().any(|a| rel.ends_with(a)) {
            continue;
        }
        let m = fs::symlink_metadata(&path).unwrap();
        let mode = m.permissions().mode() & 0o7777;
        if (m.is_file() && mode & 0o077 != 0) || (m.is_dir() && mode & 0o022 != 0) {
            bad.push(format!("{rel} {mode:o}"));
        }
    }
    bad.sort();
    bad
}

fn assert_tight(w: &World, before: &HashMap<PathBuf, u64>) {
    let bad = loose(w, before);
    assert!(bad.is_empty(), "too open under umask 000: {bad:?}");
}

fn success(w: &World, seq: u64) {
    let v = w.wait_terminal(seq, Duration::from_secs(30));
    assert_eq!(status_value(&v), "success", "{v}");
}

#[test]
fn umask0_install() {
    let w = World::new("hbv3", HB);
    let before = snapshot(w.tmp.path());
    assert_eq!(code(&run0(&w, &["install"], 0)), 0);
    assert!(w.data_dir().is_dir());
    assert!(w.root.join("var/log/azure/ib-vmext-status").is_file());
    assert_tight(&w, &before);
}

#[test]
fn umask0_enable_and_worker() {
    let w = World::new("hbv3", HB);
    w.settings(1, json!({}));
    let before = snapshot(w.tmp.path());
    assert_eq!(code(&run0(&w, &["enable"], 1)), 0);
    success(&w, 1);
    assert!(w.data_dir().join("state.json").is_file());
    assert_tight(&w, &before);
}

#[test]
fn umask0_enable_error() {
    let w = World::new("hbv3", HB);
    w.settings_raw(2, "{ not json");
    let before = snapshot(w.tmp.path());
    assert_eq!(code(&run0(&w, &["enable"], 2)), 1);
    assert_eq!(status_code(&w.status(2).unwrap()), 102);
    assert_tight(&w, &before);
}

#[test]
fn umask0_enable_with_systemd_units() {
    let w = World::new("hbv3", HB);
    fs::create_dir_all(w.root.join("run/systemd/system")).unwrap();
    write_exec(
        &w.stubs.join("systemd-run"),
        "#!/bin/sh\nwhile [ $# -gt 0 ]; do case \"$1\" in --*) shift;; *) break;; esac; done\nsetsid \"$@\" </dev/null >/dev/null 2>&1 &\nexit 0\n",
    );
    w.settings(1, json!({}));
    let before = snapshot(w.tmp.path());
    assert_eq!(code(&run0(&w, &["enable"], 1)), 0);
    success(&w, 1);
    assert!(w
        .root
        .join("etc/systemd/system/ibdriver-health.timer")
        .is_file());
    assert_tight(&w, &before);
}

#[test]
fn umask0_disable_and_uninstall() {
    let w = World::new("hbv3", HB);
    w.settings(1, json!({}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    success(&w, 1);
    let before = snapshot(w.tmp.path());
    assert_eq!(code(&run0(&w, &["disable"], 1)), 0);
    assert_tight(&w, &before);
    assert_eq!(code(&run0(&w, &["uninstall"], 1)), 0);
    assert!(!w.data_dir().exists());
    assert_tight(&w, &before);
}

#[test]
fn umask0_update() {
    let w = World::new("hbv3", HB);
    let before = snapshot(w.tmp.path());
    let out = umask0(w.command(&["update"], 0))
        .env("AZURE_GUEST_AGENT_UPDATING_FROM_VERSION", "0.9.0")
        .env("VERSION", VERSION)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(w.data_dir().join("update.json").is_file());
    assert_tight(&w, &before);
}

#[test]
fn umask0_monitor() {
    let w = World::new("hbv3", HB);
    let before = snapshot(w.tmp.path());
    let hd = w.handler_dir.display().to_string();
    assert_eq!(code(&run0(&w, &["monitor", "--handler-dir", &hd], 0)), 0);
    assert_eq!(w.heartbeat()[0]["heartbeat"]["status"], "Ready");
    assert_tight(&w, &before);
}

#[test]
fn umask0_apply() {
    let w = World::new("hbv3", HB);
    let before = snapshot(w.tmp.path());
    let out = run0(&w, &["apply"], 0);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stdout));
    assert!(w.data_dir().join("apply-state.json").is_file());
    assert_tight(&w, &before);
}

#[test]
fn umask0_diagnose() {
    let w = World::new("hbv3", HB);
    let before = snapshot(w.tmp.path());
    let out_file = w.tmp.path().join("bundle.tar.gz");
    let out = run0(
        &w,
        &["diagnose", "--out", &out_file.display().to_string()],
        0,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(out_file.is_file());
    assert_tight(&w, &before);
}

/// A file outside everything we own, that links planted at our paths point at.
fn victim(w: &World) -> PathBuf {
    let p = w.tmp.path().join("victim");
    fs::write(&p, PRECIOUS).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    p
}

fn untouched(victim: &Path) {
    let m = fs::symlink_metadata(victim).unwrap();
    assert!(m.is_file());
    assert_eq!(m.permissions().mode() & 0o7777, 0o644);
    assert_eq!(fs::read_to_string(victim).unwrap(), PRECIOUS);
}

/// `path` holds a regular file of ours now (the planted link was replaced), mode 0600.
fn replaced(path: &Path) {
    let m = fs::symlink_metadata(path).unwrap();
    assert!(m.is_file(), "{} is not a plain file", path.display());
    assert_eq!(m.permissions().mode() & 0o777, 0o600, "{}", path.display());
}

fn plant(link: &Path, target: &Path) {
    fs::create_dir_all(link.parent().unwrap()).unwrap();
    symlink(target, link).unwrap();
}

#[test]
fn link_at_status_file_is_replaced() {
    let w = World::new("hbv3", HB);
    let v = victim(&w);
    plant(&w.status_path(3), &v);
    w.settings_raw(3, "{ not json");
    assert_eq!(code(&w.run("enable", 3)), 1);
    replaced(&w.status_path(3));
    assert_eq!(status_code(&w.status(3).unwrap()), 102);
    untouched(&v);
}

#[test]
fn link_at_heartbeat_is_replaced() {
    let w = World::new("hbv3", HB);
    let v = victim(&w);
    plant(&w.handler_dir.join("heartbeat.log"), &v);
    w.settings_raw(3, "{ not json");
    assert_eq!(code(&w.run("enable", 3)), 1);
    replaced(&w.handler_dir.join("heartbeat.log"));
    assert_eq!(w.heartbeat()[0]["heartbeat"]["status"], "NotReady");
    untouched(&v);
}

#[test]
fn link_at_mrseq_is_replaced() {
    let w = World::new("hbv3", HB);
    let v = victim(&w);
    plant(&w.handler_dir.join("mrseq"), &v);
    w.settings_raw(3, "{ not json");
    assert_eq!(code(&w.run("enable", 3)), 1);
    replaced(&w.handler_dir.join("mrseq"));
    assert_eq!(w.mrseq().as_deref(), Some("3"));
    untouched(&v);
}

#[test]
fn dangling_link_at_heartbeat_creates_no_target() {
    let w = World::new("hbv3", HB);
    let ghost = w.tmp.path().join("ghost");
    plant(&w.handler_dir.join("heartbeat.log"), &ghost);
    w.settings_raw(3, "{ not json");
    assert_eq!(code(&w.run("enable", 3)), 1);
    replaced(&w.handler_dir.join("heartbeat.log"));
    assert!(!ghost.exists());
}

#[test]
fn link_at_our_log_is_replaced() {
    let w = World::new("hbv3", HB);
    let v = victim(&w);
    plant(&w.log_dir.join("ibdriver.log"), &v);
    assert_eq!(code(&w.run("install", 0)), 0);
    replaced(&w.log_dir.join("ibdriver.log"));
    assert!(fs::read_to_string(w.log_dir.join("ibdriver.log"))
        .unwrap()
        .contains("installed"));
    untouched(&v);
}

#[test]
fn link_at_a_rotated_log_is_moved_not_followed() {
    let w = World::new("hbv3", HB);
    let v = victim(&w);
    // A full log: the next line rotates it onto the planted ibdriver.log.1.
    fs::write(w.log_dir.join("ibdriver.log"), vec![b'x'; 4 * 1024 * 1024]).unwrap();
    fs::set_permissions(
        w.log_dir.join("ibdriver.log"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    plant(&w.log_dir.join("ibdriver.log.1"), &v);
    assert_eq!(code(&w.run("install", 0)), 0);
    replaced(&w.log_dir.join("ibdriver.log.1"));
    assert!(fs::metadata(w.log_dir.join("ibdriver.log")).unwrap().len() < 1024 * 1024);
    untouched(&v);
}

#[test]
fn fifo_at_our_log_does_not_hang() {
    let w = World::new("hbv3", HB);
    nix::unistd::mkfifo(
        &w.log_dir.join("ibdriver.log"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let out = crate::agent_env::output_within(w.command(&["install"], 0), Duration::from_secs(10));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("logging to stderr"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn link_at_summary_log_is_replaced() {
    let w = World::new("hbv3", HB);
    let v = victim(&w);
    let summary = w.root.join("var/log/azure/ib-vmext-status");
    plant(&summary, &v);
    assert_eq!(code(&w.run("install", 0)), 0);
    replaced(&summary);
    assert!(fs::read_to_string(&summary)
        .unwrap()
        .contains("Install version"));
    untouched(&v);
}

#[test]
fn hard_link_at_summary_log_is_refused() {
    let w = World::new("hbv3", HB);
    let v = victim(&w);
    let summary = w.root.join("var/log/azure/ib-vmext-status");
    fs::create_dir_all(summary.parent().unwrap()).unwrap();
    fs::hard_link(&v, &summary).unwrap();
    assert_eq!(code(&w.run("install", 0)), 0);
    untouched(&v);
    let log = fs::read_to_string(w.log_dir.join("ibdriver.log")).unwrap();
    assert!(log.contains("cannot append to the summary log"), "{log}");
}

#[test]
fn link_at_rotated_summary_log_is_moved_not_followed() {
    let w = World::new("hbv3", HB);
    let v = victim(&w);
    let summary = w.root.join("var/log/azure/ib-vmext-status");
    fs::create_dir_all(summary.parent().unwrap()).unwrap();
    fs::write(&summary, vec![b'x'; 1024 * 1024 + 1]).unwrap();
    fs::set_permissions(&summary, fs::Permissions::from_mode(0o600)).unwrap();
    plant(&w.root.join("var/log/azure/ib-vmext-status.1"), &v);
    assert_eq!(code(&w.run("install", 0)), 0);
    replaced(&w.root.join("var/log/azure/ib-vmext-status.1"));
    untouched(&v);
}

#[test]
fn symlinked_summary_log_folder_is_not_written_through() {
    let w = World::new("hbv3", HB);
    let elsewhere = w.tmp.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    plant(&w.root.join("var/log/azure"), &elsewhere);
    assert_eq!(code(&w.run("install", 0)), 0);
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
}

/// Plant a link to the victim at `name` in the data directory, run enable for seq 1 to its end.
fn link_in_data_dir(name: &str) -> (World, PathBuf, serde_json::Value) {
    let w = World::new("hbv3", HB);
    let v = victim(&w);
    fs::create_dir_all(w.data_dir()).unwrap();
    plant(&w.data_dir().join(name), &v);
    w.settings(1, json!({}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    let st = w.wait_terminal(1, Duration::from_secs(30));
    untouched(&v);
    (w, v, st)
}

#[test]
fn link_at_request_is_replaced() {
    let (w, _, st) = link_in_data_dir("request.json");
    assert_eq!(status_value(&st), "success", "{st}");
    replaced(&w.data_dir().join("request.json"));
}

#[test]
fn link_at_checkpoint_is_replaced() {
    let (w, _, st) = link_in_data_dir("state.json");
    assert_eq!(status_value(&st), "success", "{st}");
    replaced(&w.data_dir().join("state.json"));
}

#[test]
fn link_at_holder_record_is_replaced() {
    let (w, _, st) = link_in_data_dir("worker.pid");
    assert_eq!(status_value(&st), "success", "{st}");
    replaced(&w.data_dir().join("worker.pid"));
}

#[test]
fn link_at_configure_record_is_replaced() {
    let (w, _, st) = link_in_data_dir("configure.json");
    assert_eq!(status_value(&st), "success", "{st}");
    replaced(&w.data_dir().join("configure.json"));
}

#[test]
fn link_at_worker_lock_is_refused() {
    let (w, _, st) = link_in_data_dir("worker.lock");
    assert_eq!(status_value(&st), "error", "{st}");
    assert_eq!(status_code(&st), 201);
    assert!(message(&st).contains("worker.lock"), "{}", message(&st));
    assert!(message(&st).contains("symbolic link"), "{}", message(&st));
    assert!(fs::symlink_metadata(w.data_dir().join("worker.lock"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn dangling_link_at_worker_lock_creates_no_target() {
    let w = World::new("hbv3", HB);
    let ghost = w.tmp.path().join("ghost");
    fs::create_dir_all(w.data_dir()).unwrap();
    plant(&w.data_dir().join("worker.lock"), &ghost);
    w.settings(1, json!({}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    let st = w.wait_terminal(1, Duration::from_secs(30));
    assert_eq!(status_code(&st), 201, "{st}");
    assert!(!ghost.exists());
}

#[test]
fn fifo_at_worker_lock_is_refused() {
    let w = World::new("hbv3", HB);
    fs::create_dir_all(w.data_dir()).unwrap();
    nix::unistd::mkfifo(
        &w.data_dir().join("worker.lock"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    w.settings(1, json!({}));
    let out = crate::agent_env::output_within(w.command(&["enable"], 1), Duration::from_secs(10));
    assert_eq!(code(&out), 0);
    let st = w.wait_terminal(1, Duration::from_secs(30));
    assert_eq!(status_code(&st), 201, "{st}");
    assert!(
        message(&st).contains("not a regular file"),
        "{}",
        message(&st)
    );
}

#[test]
fn link_at_update_marker_is_replaced() {
    let w = World::new("hbv3", HB);
    let v = victim(&w);
    fs::create_dir_all(w.data_dir()).unwrap();
    plant(&w.data_dir().join("update.json"), &v);
    assert_eq!(code(&w.update("0.9.0", VERSION, 0)), 0);
    replaced(&w.data_dir().join("update.json"));
    untouched(&v);
}

#[test]
fn symlinked_events_folder_gets_no_events() {
    let w = World::new("hbv3", HB);
    let elsewhere = w.tmp.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::remove_dir(w.log_dir.join("events")).unwrap();
    symlink(&elsewhere, w.log_dir.join("events")).unwrap();
    w.settings_raw(3, "{ not json");
    assert_eq!(code(&w.run("enable", 3)), 1);
    assert_eq!(status_code(&w.status(3).unwrap()), 102);
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
}

/// The data directory is a symlink to a folder holding one file: refused or removed as a link,
/// never written through.
fn linked_data_dir() -> (World, PathBuf) {
    let w = World::new("hbv3", HB);
    let elsewhere = w.tmp.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::write(elsewhere.join("keep"), PRECIOUS).unwrap();
    plant(&w.data_dir(), &elsewhere);
    (w, elsewhere)
}

fn elsewhere_untouched(elsewhere: &Path) {
    let names: Vec<_> = fs::read_dir(elsewhere)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["keep"]);
    assert_eq!(
        fs::read_to_string(elsewhere.join("keep")).unwrap(),
        PRECIOUS
    );
}

#[test]
fn linked_data_dir_install() {
    let (w, elsewhere) = linked_data_dir();
    let out = w.run("install", 0);
    let err = stderr(&out);
    assert_eq!(code(&out), 14, "{err}");
    let log = fs::read_to_string(w.log_dir.join("ibdriver.log")).unwrap();
    assert!(
        log.contains("[201 StateIo]") && log.contains("is a symbolic link"),
        "{log}"
    );
    elsewhere_untouched(&elsewhere);
}

#[test]
fn linked_data_dir_enable() {
    let (w, elsewhere) = linked_data_dir();
    w.settings(1, json!({}));
    assert_eq!(code(&w.run("enable", 1)), 14);
    let st = w.status(1).unwrap();
    assert_eq!(status_value(&st), "error");
    assert_eq!(status_code(&st), 201);
    assert!(
        message(&st).contains("is a symbolic link"),
        "{}",
        message(&st)
    );
    elsewhere_untouched(&elsewhere);
}

#[test]
fn linked_data_dir_update() {
    let (w, elsewhere) = linked_data_dir();
    let out = w.update("0.9.0", VERSION, 0);
    assert_eq!(code(&out), 14, "{}", stderr(&out));
    elsewhere_untouched(&elsewhere);
}

#[test]
fn linked_data_dir_disable() {
    let (w, elsewhere) = linked_data_dir();
    assert_eq!(code(&w.run("disable", 0)), 0);
    elsewhere_untouched(&elsewhere);
}

#[test]
fn linked_data_dir_uninstall_removes_only_the_link() {
    let (w, elsewhere) = linked_data_dir();
    assert_eq!(code(&w.run("uninstall", 0)), 0);
    assert!(fs::symlink_metadata(w.data_dir()).is_err());
    elsewhere_untouched(&elsewhere);
}

#[test]
fn linked_data_dir_apply() {
    let (w, elsewhere) = linked_data_dir();
    let out = w.run("apply", 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), 14, "{stdout}");
    assert!(stdout.contains("error 201 StateIo"), "{stdout}");
    elsewhere_untouched(&elsewhere);
}

/// The agent's log folder is a symlink: refused with 201, nothing logged where it points.
fn linked_log_dir() -> (World, PathBuf) {
    let w = World::new("hbv3", HB);
    let elsewhere = w.tmp.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::write(elsewhere.join("keep"), PRECIOUS).unwrap();
    let events = w.log_dir.join("events");
    fs::remove_dir(&events).unwrap();
    fs::remove_dir(&w.log_dir).unwrap();
    symlink(&elsewhere, &w.log_dir).unwrap();
    (w, elsewhere)
}

#[test]
fn linked_log_dir_install() {
    let (w, elsewhere) = linked_log_dir();
    let out = w.run("install", 0);
    let err = stderr(&out);
    assert_eq!(code(&out), 14, "{err}");
    assert!(
        err.contains("[201 StateIo]") && err.contains("is a symbolic link"),
        "{err}"
    );
    elsewhere_untouched(&elsewhere);
}

#[test]
fn linked_log_dir_enable() {
    let (w, elsewhere) = linked_log_dir();
    w.settings(1, json!({}));
    let out = w.run("enable", 1);
    assert_eq!(code(&out), 14, "{}", stderr(&out));
    let st = w.status(1).unwrap();
    assert_eq!(status_code(&st), 201);
    assert!(
        message(&st).contains("is a symbolic link"),
        "{}",
        message(&st)
    );
    assert!(!w.data_dir().exists(), "refused before any work");
    elsewhere_untouched(&elsewhere);
}

#[test]
fn linked_log_dir_still_lets_disable_and_uninstall_remove_the_extension() {
    let (w, elsewhere) = linked_log_dir();
    fs::create_dir_all(w.data_dir()).unwrap();
    for verb in ["disable", "uninstall"] {
        let out = w.run(verb, 0);
        let err = stderr(&out);
        assert_eq!(code(&out), 0, "{verb}: {err}");
        assert!(err.contains("is a symbolic link"), "{verb}: {err}");
    }
    assert!(!w.data_dir().exists(), "uninstall left the data directory");
    elsewhere_untouched(&elsewhere);
}

#[test]
fn status_folder_is_a_file() {
    let w = World::new("hbv3", HB);
    let status = w.handler_dir.join("status");
    fs::remove_dir(&status).unwrap();
    fs::write(&status, PRECIOUS).unwrap();
    w.settings_raw(3, "{ not json");
    let out = w.run("enable", 3);
    let err = stderr(&out);
    assert_eq!(code(&out), 14, "{err}");
    assert!(err.contains("[201 StateIo] cannot write"), "{err}");
    assert_eq!(fs::read_to_string(&status).unwrap(), PRECIOUS);
    let log = fs::read_to_string(w.log_dir.join("ibdriver.log")).unwrap();
    assert!(log.contains("cannot write status"), "{log}");
}

#[test]
fn full_disk_removes_the_stale_status_and_exits_14() {
    let w = World::new("hbv3", HB);
    w.settings_raw(3, "{ not json");
    // What an earlier run left: it must not stay to tell the agent "success".
    fs::write(w.status_path(3), r#"[{"status":{"status":"success"}}]"#).unwrap();
    let mut c = w.command(&["enable"], 3);
    // SAFETY: signal and setrlimit are async-signal-safe; no memory of the parent is touched.
    unsafe {
        c.pre_exec(|| {
            // No file may grow: every write fails with EFBIG, as on a full disk.
            nix::libc::signal(nix::libc::SIGXFSZ, nix::libc::SIG_IGN);
            let none = nix::libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if nix::libc::setrlimit(nix::libc::RLIMIT_FSIZE, &none) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = c.output().unwrap();
    let err = stderr(&out);
    assert_eq!(code(&out), 14, "{err}");
    assert!(err.contains("[201 StateIo] cannot write"), "{err}");
    assert!(err.contains("3.status"), "{err}");
    assert!(!w.status_path(3).exists());
}

/// The same on enable's main path: the `transitioning` status cannot be written, so enable
/// must not start a worker that reports nowhere. Needs enable() to propagate write_status.
#[test]
fn status_folder_is_a_file_on_the_main_path() {
    let w = World::new("hbv3", HB);
    let status = w.handler_dir.join("status");
    fs::remove_dir(&status).unwrap();
    fs::write(&status, PRECIOUS).unwrap();
    w.settings(1, json!({}));
    let out = w.run("enable", 1);
    let err = stderr(&out);
    assert_eq!(code(&out), 14, "{err}");
    assert!(!worker_running(&w.handler_dir));
    assert_eq!(fs::read_to_string(&status).unwrap(), PRECIOUS);
    let log = fs::read_to_string(w.log_dir.join("ibdriver.log")).unwrap();
    assert!(log.contains("cannot write status"), "{log}");
}
