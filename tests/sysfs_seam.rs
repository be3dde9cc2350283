//! The hardware seam: `IBDRIVER_SYSFS` moves where PCI, InfiniBand, net, VMBus and EFI facts
//! are read from while everything else stays on `IBDRIVER_ROOT`; enable hands it to its worker
//! and the health unit; `diagnose` records the tree and `plan --sysfs` replays it.

mod common;
use common::*;
use serde_json::json;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

const HB: &str = "Standard_HB120rs_v3";
const EFI: &str = "sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// A world on `host` whose `sys/` is moved out of the root to `<tmp>/recorded/sys`: the root
/// keeps /etc, /proc, /var and the rest, but has no hardware of its own.
fn world_without_sys(host: &str, vm_size: &str) -> (World, PathBuf) {
    let w = World::new(host, vm_size);
    let recorded = w.tmp.path().join("recorded/sys");
    fs::create_dir_all(recorded.parent().unwrap()).unwrap();
    fs::rename(w.root.join("sys"), &recorded).unwrap();
    (w, recorded)
}

fn plan_json(w: &World, args: &[&str], sysfs: Option<&Path>) -> (i32, serde_json::Value) {
    let mut cmd = w.command(args, 0);
    if let Some(dir) = sysfs {
        cmd.env("IBDRIVER_SYSFS", dir);
    }
    let out = cmd.output().unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code(&out), v)
}

fn addresses(facts: &serde_json::Value) -> Vec<String> {
    facts["mellanox"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["address"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn plan_reads_the_hardware_from_ibdriver_sysfs_and_the_rest_from_the_root() {
    let reference = World::new("hbv3", HB);
    let (_, want) = plan_json(&reference, &["plan", "--json"], None);
    // A root with another identity and no sys/ of its own; the hardware is hbv3's.
    let (w, _) = world_without_sys("dseries", "Standard_D4s_v5");
    let hbv3_sys = w.tmp.path().join("hbv3-sys");
    copy_tree(&fixtures().join("hosts/hbv3/sys"), &hbv3_sys);
    let (rc, v) = plan_json(&w, &["plan", "--json"], Some(&hbv3_sys));
    assert_eq!(rc, 0, "{v:#}");
    assert_eq!(v["facts"]["mellanox"], want["facts"]["mellanox"]);
    assert_eq!(v["facts"]["vmbus"], want["facts"]["vmbus"]);
    assert_eq!(addresses(&v["facts"]), ["0101:00:00.0", "6c6b:00:02.0"]);
    // The root's own facts: dseries' boot id, not hbv3's.
    let boot_id = fs::read_to_string(w.root.join("proc/sys/kernel/random/boot_id")).unwrap();
    assert_eq!(v["facts"]["boot_id"], boot_id.trim());
    assert_ne!(v["facts"]["boot_id"], want["facts"]["boot_id"]);
    // Without the variable the root has no hardware at all.
    let (rc, v) = plan_json(&w, &["plan", "--json"], None);
    assert_eq!(rc, 10, "{v:#}");
    assert!(addresses(&v["facts"]).is_empty());
}

#[test]
fn enable_hands_ibdriver_sysfs_to_its_systemd_worker_and_to_the_health_unit() {
    let (w, recorded) = world_without_sys("hbv3", HB);
    // Like systemd: the worker sees only what --setenv gave it, so a worker that did not get
    // IBDRIVER_SYSFS would find no hardware under the root and fail.
    w.fake_systemd("", true);
    w.settings(1, json!({"ipoib": "off"}));
    let out = w
        .command(&["enable"], 1)
        .env("IBDRIVER_SYSFS", &recorded)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let v = w.wait_terminal(1, Duration::from_secs(30));
    assert_eq!(status_value(&v), "success", "{v}");
    let calls = w.calls();
    let run = calls
        .lines()
        .find(|l| l.starts_with("systemd-run"))
        .expect("the worker was started with systemd-run");
    let setenv = format!("--setenv=IBDRIVER_SYSFS={}", recorded.display());
    assert!(run.contains(&setenv), "{run}");
    let unit =
        fs::read_to_string(w.root.join("etc/systemd/system/ibdriver-health.service")).unwrap();
    let env = format!("Environment=\"IBDRIVER_SYSFS={}\"", recorded.display());
    assert!(unit.lines().any(|l| l == env), "{unit}");
    // The monitor run with the unit's environment sees the same ports.
    let beat = w
        .command(
            &["monitor", "--handler-dir", &w.handler_dir.to_string_lossy()],
            1,
        )
        .env("IBDRIVER_SYSFS", &recorded)
        .output()
        .unwrap();
    assert_eq!(code(&beat), 0);
    assert_eq!(w.heartbeat()[0]["heartbeat"]["status"], "Ready");
}

/// Make `sys/` look like the kernel's: the PCI functions live under `devices/` and
/// `bus/pci/devices/*`, `class/net/*` and `class/infiniband/*` are symbolic links to them.
fn linkify(sys: &Path) {
    let bus = sys.join("bus/pci/devices");
    let devices = sys.join("devices/pci0000:00");
    fs::create_dir_all(&devices).unwrap();
    for class in ["class/net", "class/infiniband"] {
        fs::create_dir_all(sys.join(class)).unwrap();
    }
    for e in fs::read_dir(&bus).unwrap().flatten() {
        let real = devices.join(e.file_name());
        fs::rename(e.path(), &real).unwrap();
        symlink(&real, e.path()).unwrap();
        for (sub, class) in [("net", "class/net"), ("infiniband", "class/infiniband")] {
            for n in fs::read_dir(real.join(sub)).into_iter().flatten().flatten() {
                symlink(n.path(), sys.join(class).join(n.file_name())).unwrap();
            }
        }
    }
}

/// The bundle unpacked into `to` (as `tar xzf` would); returns its `sysfs/`.
fn unpack_bundle(bundle: &Path, to: &Path) -> PathBuf {
    let gz = flate2::read::GzDecoder::new(fs::File::open(bundle).unwrap());
    tar::Archive::new(gz).unpack(to).unwrap();
    to.join("ibdriver-diagnose/sysfs")
}

/// Every entry under `dir`: plain directories 0700 and regular files 0600, no links.
fn assert_plain_private_tree(dir: &Path) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let m = fs::symlink_metadata(e.path()).unwrap();
        let mode = m.permissions().mode() & 0o777;
        if m.is_dir() {
            assert_eq!(mode, 0o700, "{}", e.path().display());
            assert_plain_private_tree(&e.path());
        } else {
            assert!(m.is_file(), "{} is not a plain file", e.path().display());
            assert_eq!(mode, 0o600, "{}", e.path().display());
        }
    }
}

#[test]
fn a_diagnose_bundle_replays_to_the_same_hardware_on_another_host() {
    // Another machine with its own (different) hardware under its root: --sysfs must win.
    let elsewhere = World::new("dseries", "Standard_D4s_v5");
    for (host, size) in [
        ("hbv3", HB),
        ("ndv4", "Standard_ND96asr_v4"),
        ("nc24rsv3", "Standard_NC24rs_v3"),
        ("hbv4", "Standard_HB176rs_v4"),
    ] {
        let w = World::new(host, size);
        write(&w.root.join(EFI), [6u8, 0, 0, 0, 1]);
        if host == "hbv3" {
            linkify(&w.root.join("sys"));
        }
        let (_, want) = plan_json(&w, &["plan", "--json"], None);
        assert!(!addresses(&want["facts"]).is_empty(), "{host}");
        let bundle = w.tmp.path().join("bundle.tgz");
        let out = w
            .command(&["diagnose", "--out", &bundle.to_string_lossy()], 0)
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
        let unpacked = elsewhere.tmp.path().join(format!("unpacked-{host}"));
        let sysfs = unpack_bundle(&bundle, &unpacked);
        assert_plain_private_tree(&sysfs);
        let arg = sysfs.to_string_lossy().to_string();
        // The decision may differ (the other host's distribution and kernel), the facts not.
        let (rc, got) = plan_json(&elsewhere, &["plan", "--json", "--sysfs", &arg], None);
        assert_ne!(rc, 1, "{host}: {got:#}");
        for fact in ["mellanox", "vmbus", "hyperv", "secure_boot"] {
            assert_eq!(got["facts"][fact], want["facts"][fact], "{host}: {fact}");
        }
        assert_eq!(got["replayed_sysfs"], arg);
        // Replaying asks no IMDS: its answer would be about this machine.
        assert!(want["facts"]["imds"].is_object(), "{host}");
        assert!(got["facts"]["imds"].is_null(), "{host}: {got:#}");
    }
}

#[test]
fn bad_sysfs_values_are_one_line_usage_errors() {
    let w = World::new("hbv3", HB);
    let file = w.tmp.path().join("a-file");
    write(&file, "x\n");
    let empty = w.tmp.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    let bundle_top = w.tmp.path().join("unpacked");
    fs::create_dir_all(bundle_top.join("ibdriver-diagnose/sysfs/bus")).unwrap();
    let missing = w.tmp.path().join("missing");
    for (dir, why) in [
        (&missing, "no such directory".to_string()),
        (&file, "not a directory".to_string()),
        (&empty, "not a sysfs tree".to_string()),
        (
            &bundle_top,
            format!(
                "did you mean {}?",
                bundle_top.join("ibdriver-diagnose/sysfs").display()
            ),
        ),
    ] {
        let out = w
            .command(&["plan", "--sysfs", &dir.to_string_lossy()], 0)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(code(&out), 1, "{}: {stderr}", dir.display());
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("ibdriver: plan --sysfs "), "{stderr}");
        assert!(stderr.contains(&why), "{stderr}");
        assert!(out.stdout.is_empty());
    }
    // No value, or on a verb that has no such option: the usage text.
    for args in [&["plan", "--sysfs"][..], &["health", "--sysfs", "/sys"]] {
        let out = w.command(args, 0).output().unwrap();
        assert_eq!(code(&out), 1, "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
    }
}
