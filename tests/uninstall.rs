//! Uninstall and driver removal on fake hosts: the built binary, stub package managers that
//! record their calls, a fake `ofed_uninstall.sh` under the fake root, and the install marker
//! an earlier enable would have left in the data directory.

mod common;

use common::*;
use serde_json::json;
use std::fs;

const HB: &str = "Standard_HB120rs_v3";
const KERNEL: &str = "5.15.0-1073-azure";

/// A host where this extension installed DOCA-OFED on Ubuntu 22.04: the marker, DOCA's
/// packages with the shadowed distribution packages held, the DKMS order files, the stack's
/// uninstaller.
fn doca_on_apt(w: &World) {
    w.as_distro("ubuntu-22.04", KERNEL);
    w.set_file(
        "var/lib/infiniband-driver-linux/installed.json",
        r#"{"stack":"doca","version":"3.2.1","sha256":"ab"}"#,
    );
    w.set_file(
        "var/lib/dpkg/status",
        "Package: doca-host\nStatus: install ok installed\nVersion: 3.2.1\n\n\
         Package: doca-ofed\nStatus: install ok installed\nVersion: 3.2.1\n\n\
         Package: rdma-core\nStatus: hold ok installed\nVersion: 2510.0.9\n\n\
         Package: libibverbs1\nStatus: hold ok installed\nVersion: 2510.0.9\n\n\
         Package: bash\nStatus: hold ok installed\nVersion: 5.2\n",
    );
    w.set_file("etc/dkms/iser.conf", "BUILD_DEPENDS=\"mlnx-ofed-kernel\"\n");
    w.set_file(
        "etc/dkms/srp.conf",
        "MAKE=x\nBUILD_DEPENDS=\"mlnx-ofed-kernel\"\n",
    );
    uninstaller(w, 0);
    for prog in ["apt-get", "apt-mark"] {
        write_exec(
            &w.stubs.join(prog),
            &format!(
                "#!/bin/sh\necho \"{prog} $*\" >> '{}'\nexit 0\n",
                w.tmp.path().join("calls.log").display()
            ),
        );
    }
}

fn uninstaller(w: &World, exit: i32) {
    write_exec(
        &w.root.join("usr/sbin/ofed_uninstall.sh"),
        &format!(
            "#!/bin/sh\necho \"ofed_uninstall.sh $*\" >> '{}'\nexit {exit}\n",
            w.tmp.path().join("calls.log").display()
        ),
    );
}

fn lines(w: &World) -> Vec<String> {
    w.calls().lines().map(str::to_string).collect()
}

#[test]
fn doca_we_installed_is_removed_when_the_settings_ask() {
    let w = World::new("hbv3", HB);
    doca_on_apt(&w);
    w.settings(2, json!({"removeDriversOnUninstall": true}));
    assert_eq!(code(&w.run("uninstall", 2)), 0);
    let calls = lines(&w);
    let pos = |needle: &str| {
        calls
            .iter()
            .position(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no {needle} in {calls:?}"))
    };
    // Only our holds are released (bash stays held); only DOCA's packages are purged.
    let unhold = pos("apt-mark unhold rdma-core libibverbs1");
    assert_eq!(calls[unhold], "apt-mark unhold rdma-core libibverbs1");
    let purge = pos("apt-get purge -y -q");
    assert!(
        calls[purge].ends_with(" doca-host doca-ofed"),
        "{}",
        calls[purge]
    );
    let uninstall = pos("ofed_uninstall.sh --force");
    // The stack's rdma-core went with it: the distribution's is put back before the initramfs.
    let inbox = pos("apt-get install -y -q");
    assert!(
        calls[inbox].ends_with(" rdma-core ibverbs-providers libibverbs1 ibverbs-utils librdmacm1 rdmacm-utils libibumad3 infiniband-diags"),
        "{}",
        calls[inbox]
    );
    let initramfs = pos(&format!("update-initramfs -u -k {KERNEL}"));
    assert!(unhold < purge && purge < uninstall && uninstall < inbox && inbox < initramfs);
    // Our DKMS lines are gone, the file we created with them too; other lines stay.
    assert!(!w.root.join("etc/dkms/iser.conf").exists());
    assert_eq!(
        fs::read_to_string(w.root.join("etc/dkms/srp.conf")).unwrap(),
        "MAKE=x\n"
    );
    assert!(!w.data_dir().exists());
    let summary = fs::read_to_string(w.root.join("var/log/azure/ib-vmext-status")).unwrap();
    assert!(summary.contains("doca 3.2.1 removed"), "{summary}");
}

#[test]
fn under_systemd_the_initramfs_rebuild_outlives_uninstall() {
    // The agent kills uninstall at 300 s, and update-initramfs alone took longer on a slow VM:
    // under systemd it runs in a transient unit and uninstall returns without waiting for it.
    // This update-initramfs finishes only once the test releases it, after uninstall returned;
    // run in uninstall's own time it would give up and fail it.
    let w = World::new("hbv3", HB);
    doca_on_apt(&w);
    w.fake_systemd("", false);
    let release = w.tmp.path().join("release");
    write_exec(
        &w.stubs.join("update-initramfs"),
        &format!(
            "#!/bin/sh\necho \"update-initramfs $*\" >> '{log}'\n\
             for i in $(seq 300); do [ -e '{rel}' ] && {{ echo 'update-initramfs finished' >> '{log}'; exit 0; }}; sleep 0.1; done\n\
             echo 'update-initramfs gave up' >> '{log}'; exit 1\n",
            log = w.tmp.path().join("calls.log").display(),
            rel = release.display()
        ),
    );
    w.settings(2, json!({"removeDriversOnUninstall": true}));
    assert_eq!(code(&w.run("uninstall", 2)), 0, "{}", w.log());
    let calls = w.calls();
    let unit_call = calls
        .lines()
        .find(|l| l.starts_with("systemd-run --unit=ibdriver-initramfs-"))
        .unwrap_or_else(|| panic!("no transient unit for the initramfs: {calls}"));
    assert!(
        unit_call.ends_with(&format!(" update-initramfs -u -k {KERNEL}")),
        "{unit_call}"
    );
    assert!(!calls.contains("update-initramfs finished"), "{calls}");
    assert!(w
        .log()
        .contains("in the transient unit ibdriver-initramfs-"));
    fs::write(&release, "").unwrap();
    wait_for(
        "the detached update-initramfs to finish",
        std::time::Duration::from_secs(30),
        || w.calls().contains("update-initramfs finished"),
    );
}

#[test]
fn drivers_stay_by_default_when_settings_are_unreadable_or_not_ours() {
    // Default settings: nothing is removed, only our state.
    let w = World::new("hbv3", HB);
    doca_on_apt(&w);
    w.settings(2, json!({}));
    assert_eq!(code(&w.run("uninstall", 2)), 0);
    assert!(!w.calls().contains("purge"), "{}", w.calls());
    assert!(!w.calls().contains("ofed_uninstall"));
    assert!(!w.data_dir().exists());
    assert!(w.root.join("etc/dkms/iser.conf").exists());

    // Settings that cannot be read keep the drivers.
    let w = World::new("hbv3", HB);
    doca_on_apt(&w);
    w.settings_raw(2, "{not json");
    assert_eq!(code(&w.run("uninstall", 2)), 0);
    assert!(!w.calls().contains("ofed_uninstall"), "{}", w.calls());
    let log = fs::read_to_string(w.log_dir.join("ibdriver.log")).unwrap();
    assert!(log.contains("keeping the drivers"), "{log}");

    // The inbox stack, and a stack without our marker, belong to someone else.
    for marker in [
        Some(r#"{"stack":"inbox","version":"","sha256":"inbox"}"#),
        None,
    ] {
        let w = World::new("hbv3", HB);
        doca_on_apt(&w);
        let path = w.data_dir().join("installed.json");
        match marker {
            Some(m) => fs::write(&path, m).unwrap(),
            None => fs::remove_file(&path).unwrap(),
        }
        w.settings(2, json!({"removeDriversOnUninstall": true}));
        assert_eq!(code(&w.run("uninstall", 2)), 0);
        assert!(!w.calls().contains("purge"), "{marker:?}: {}", w.calls());
        assert!(!w.calls().contains("ofed_uninstall"), "{marker:?}");
    }
}

#[test]
fn a_failed_removal_keeps_the_marker_and_says_so() {
    let w = World::new("hbv3", HB);
    doca_on_apt(&w);
    uninstaller(&w, 3);
    w.settings(2, json!({"removeDriversOnUninstall": true}));
    w.set_file("var/lib/infiniband-driver-linux/state.json", "{}");
    let out = w.run("uninstall", 2);
    assert_eq!(code(&out), 14);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[215 PackageInstallFailed]"), "{err}");
    // What we installed stays known; the rest of our state is gone.
    assert_eq!(
        ibdriver::sys::fsutil::dir_names(&w.data_dir()),
        ["installed.json"]
    );
}

#[test]
fn mlnx_ofed_on_dnf_runs_its_uninstaller_and_dracut() {
    let w = World::new("hbv3", HB);
    w.as_distro("almalinux-8.10", "4.18.0-553.el8_10.x86_64");
    w.set_file(
        "var/lib/infiniband-driver-linux/installed.json",
        r#"{"stack":"mlnx-ofed","version":"23.10-3.2.2.0","sha256":"cd"}"#,
    );
    w.set_file(
        "etc/yum.repos.d/almalinux.repo",
        "[baseos]\nname=BaseOS\nexclude=kernel*\n",
    );
    uninstaller(&w, 0);
    write_exec(
        &w.stubs.join("rpm"),
        "#!/bin/sh\nprintf 'mlnx-ofed-all\\nrdma-core\\n'\n",
    );
    write_exec(
        &w.stubs.join("dnf"),
        &format!(
            "#!/bin/sh\necho \"dnf $*\" >> '{}'\n",
            w.tmp.path().join("calls.log").display()
        ),
    );
    w.settings(0, json!({"removeDriversOnUninstall": true}));
    assert_eq!(code(&w.run("uninstall", 0)), 0);
    let calls = w.calls();
    assert!(calls.contains("ofed_uninstall.sh --force"), "{calls}");
    assert!(
        calls.contains("dnf install -y -q rdma-core libibverbs libibverbs-utils librdmacm librdmacm-utils infiniband-diags"),
        "{calls}"
    );
    assert!(
        calls.contains("dracut -f --kver 4.18.0-553.el8_10.x86_64"),
        "{calls}"
    );
    assert!(!calls.contains("dnf remove"), "{calls}");
    // MLNX_OFED added no excludes: the repository file is untouched.
    assert_eq!(
        fs::read_to_string(w.root.join("etc/yum.repos.d/almalinux.repo")).unwrap(),
        "[baseos]\nname=BaseOS\nexclude=kernel*\n"
    );
}

#[test]
fn disable_that_cannot_stop_the_health_timer_fails_with_205_and_keeps_the_units() {
    let w = World::new("hbv3", HB);
    fs::create_dir_all(w.root.join("run/systemd/system")).unwrap();
    w.set_file("etc/systemd/system/ibdriver-health.timer", "[Timer]\n");
    w.set_file("etc/systemd/system/ibdriver-health.service", "[Service]\n");
    write_exec(
        &w.stubs.join("systemctl"),
        "#!/bin/sh\necho 'Failed to disable unit: Access denied' >&2\nexit 1\n",
    );
    w.settings(1, json!({}));
    let out = w.run("disable", 1);
    assert_eq!(code(&out), 14);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[205 DisableFailed]"), "{err}");
    assert!(err.contains("Access denied"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(w
        .root
        .join("etc/systemd/system/ibdriver-health.timer")
        .exists());
    let summary = fs::read_to_string(w.root.join("var/log/azure/ib-vmext-status")).unwrap();
    assert!(summary.contains("error 205"), "{summary}");
    // No status file for a disable: the last enable's outcome stands.
    assert!(w.status(1).is_none());
    // The heartbeat carries the cause (2.15 agents show its message as the handler's).
    let hb = w.heartbeat();
    assert_eq!(hb[0]["heartbeat"]["status"], "NotReady");
    assert_eq!(hb[0]["heartbeat"]["code"], 205);
    let msg = hb[0]["heartbeat"]["formattedMessage"]["message"]
        .as_str()
        .unwrap();
    assert!(
        msg.contains("systemctl status ibdriver-health.timer"),
        "{msg}"
    );

    // Once systemd cooperates, disable succeeds and says so in the heartbeat.
    write_exec(&w.stubs.join("systemctl"), "#!/bin/sh\nexit 0\n");
    assert_eq!(code(&w.run("disable", 1)), 0);
    assert!(!w
        .root
        .join("etc/systemd/system/ibdriver-health.timer")
        .exists());
    let hb = w.heartbeat();
    assert_eq!(hb[0]["heartbeat"]["status"], "NotReady");
    assert!(hb[0]["heartbeat"]["formattedMessage"]["message"]
        .as_str()
        .unwrap()
        .starts_with("disabled"));
}

#[test]
fn a_failed_update_is_retried_and_a_downgrade_keeps_state_too() {
    let w = World::new("hbv3", HB);
    w.settings(1, json!({}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    w.wait_terminal(1, std::time::Duration::from_secs(20));
    let state = fs::read(w.data_dir().join("state.json")).unwrap();
    // The marker cannot be written: update fails with StateIo (the agent shows 1008).
    fs::create_dir_all(w.data_dir().join("update.json/x")).unwrap();
    let update = |from: &str, to: &str| w.update(from, to, 1);
    assert_eq!(code(&update("0.9.0", VERSION)), 14);
    fs::remove_dir_all(w.data_dir().join("update.json")).unwrap();
    // Retried: twice is as good as once.
    assert_eq!(code(&update("0.9.0", VERSION)), 0);
    assert_eq!(code(&update("0.9.0", VERSION)), 0);
    // The replaced version's uninstall (the agent runs the old version's command).
    assert_eq!(code(&w.run_as("uninstall", 1, "0.9.0")), 0);
    assert_eq!(fs::read(w.data_dir().join("state.json")).unwrap(), state);
    assert!(!w.data_dir().join("update.json").exists());

    // Downgrade: this (installed) version's update runs with VERSION = UPDATING_FROM = older.
    assert_eq!(code(&update("0.9.0", "0.9.0")), 0);
    let marker: serde_json::Value =
        serde_json::from_slice(&fs::read(w.data_dir().join("update.json")).unwrap()).unwrap();
    assert_eq!(marker["from"], VERSION);
    assert_eq!(marker["to"], "0.9.0");
    assert_eq!(code(&w.run("uninstall", 1)), 0);
    assert_eq!(fs::read(w.data_dir().join("state.json")).unwrap(), state);
    // Without an update in progress, uninstall removes the state.
    assert_eq!(code(&w.run("uninstall", 1)), 0);
    assert!(!w.data_dir().exists());
}
