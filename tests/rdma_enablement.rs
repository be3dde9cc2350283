//! Issue 4: configure (modules, IPoIB native in a real network namespace, waagent.conf), self-
//! repair after a kernel update, and `apply` giving the same results and exit codes as enable.

mod common;

use common::*;
use serde_json::json;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const HB: &str = "Standard_HB120rs_v3";
const TIMEOUT: Duration = Duration::from_secs(30);

fn apply(w: &World, public: serde_json::Value) -> Output {
    let file = w.tmp.path().join("apply-settings.json");
    write(&file, public.to_string());
    w.command(&["apply", "--settings", file.to_str().unwrap()], 0)
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn apply_ends_like_enable_on_the_same_hosts() {
    type Setup = fn(&World);
    let scenarios: Vec<(&str, &str, serde_json::Value, Setup)> = vec![
        ("hbv3", HB, json!({}), |_| {}),
        ("hbv3", HB, json!({"ipoib": "off"}), |_| {}),
        ("hbv3-portdown", HB, json!({}), |_| {}),
        ("dseries", "Standard_D4s_v5", json!({}), |_| {}),
        ("nonazure", HB, json!({}), |_| {}),
        ("hbv3", HB, json!({"stack": "auto", "bogus": 1}), |_| {}),
        ("hbv3", HB, json!({}), |w| {
            w.as_distro("fedora-40", "6.8.5-301.fc40.x86_64")
        }),
    ];
    for (host, size, public, setup) in scenarios {
        let label = format!("{host} {public}");
        // The agent's way.
        let mut w = World::new(host, size);
        w.verify_timeout = 2;
        setup(&w);
        w.settings(1, public.clone());
        let enable_exit = code(&w.run("enable", 1));
        let v = w.wait_terminal(1, TIMEOUT);
        let (value, number) = (status_value(&v), status_code(&v));
        w.wait_worker_gone(TIMEOUT);
        // The same host, without the agent.
        let mut a = World::new(host, size);
        a.verify_timeout = 2;
        setup(&a);
        let out = apply(&a, public.clone());
        let (stdout, stderr) = text(&out);
        assert_eq!(
            code(&out),
            exit_for(number),
            "{label}: apply exit vs enable's status code {number}\n{stdout}\n{stderr}"
        );
        if enable_exit != 0 {
            // Refused before the worker: enable's own exit code.
            assert_eq!(code(&out), enable_exit, "{label}");
        }
        if value == "success" {
            assert!(
                stdout.starts_with("success: RDMA ready"),
                "{label}: {stdout}"
            );
            assert!(message(&v).starts_with("RDMA ready"), "{label}");
            // Progress went to stderr, stage by stage.
            for stage in ["preflight", "repair", "configure", "verify"] {
                assert!(
                    stderr.contains(&format!("ibdriver apply: {stage}: running")),
                    "{label}: no progress for {stage}\n{stderr}"
                );
            }
        } else {
            assert_eq!(value, "error", "{label}");
            assert!(
                stdout.starts_with(&format!("error {number} ")),
                "{label}: {stdout} vs {v}"
            );
        }
        assert!(!stdout.contains("panicked") && !stderr.contains("panicked"));
    }
}

#[test]
fn apply_twice_does_no_work_the_second_time() {
    let w = World::new("hbv3", HB);
    assert_eq!(code(&apply(&w, json!({"ipoib": "off"}))), 0);
    let state = fs::read_to_string(w.data_dir().join("apply-state.json")).unwrap();
    let again = apply(&w, json!({"ipoib": "off"}));
    assert_eq!(code(&again), 0, "{:?}", text(&again));
    let after: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(w.data_dir().join("apply-state.json")).unwrap())
            .unwrap();
    let before: serde_json::Value = serde_json::from_str(&state).unwrap();
    // Same checkpoint lineage: one attempt per per-boot stage again, nothing installed.
    assert_eq!(after["settings"], before["settings"]);
    assert_eq!(after["installer_ran"], false);
    let per_boot = ["preflight", "repair", "configure", "verify"];
    assert_eq!(before["completed"], json!(per_boot), "{before:#}");
    assert_eq!(after["completed"], json!(per_boot), "{after:#}");
    assert_eq!(before["attempts"], 4, "{before:#}");
    assert_eq!(
        after["attempts"], 8,
        "the second apply did not resume the first one's checkpoint: {after:#}"
    );
    assert_eq!(after["outcome"]["status"], "success");
    // The agent's checkpoint is not apply's.
    assert!(!w.data_dir().join("state.json").exists());
    assert!(!w.calls().contains("apt-get"), "{}", w.calls());
}

#[test]
fn apply_rejects_a_bad_secret_from_the_environment_without_echoing_it() {
    let w = World::new("hbv3", HB);
    let file = w.tmp.path().join("s.json");
    write(&file, "{}");
    let out = w
        .command(&["apply", "--settings", file.to_str().unwrap()], 0)
        .env("IBDRIVER_PACKAGE_URL", "ftp://host/x.tgz?sig=SECRETSIG")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(code(&out), 1, "{stdout}{stderr}");
    assert!(stdout.contains("IBDRIVER_PACKAGE_URL"), "{stdout}");
    assert!(!stdout.contains("SECRETSIG") && !stderr.contains("SECRETSIG"));
    assert!(!w.all_text().contains("SECRETSIG"));
}

const WAAGENT_CONF: &str = "# Microsoft Azure Linux Agent Configuration\n\
Provisioning.Agent=auto\n\
# Enable RDMA management and set up, should only be used in HPC images\n\
# OS.EnableRDMA=n\n\
HttpProxy.Host=None\n";

#[test]
fn waagent_mode_sets_the_switch_once_and_restarts_the_agent_once() {
    let w = World::new("hbv3", HB);
    w.set_file("etc/waagent.conf", WAAGENT_CONF);
    w.set_file("run/systemd/system/.keep", "");
    w.set_file("lib/systemd/system/walinuxagent.service", "[Unit]\n");
    let out = apply(&w, json!({"ipoib": "waagent"}));
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    let conf = fs::read_to_string(w.root.join("etc/waagent.conf")).unwrap();
    assert_eq!(
        conf,
        WAAGENT_CONF.replace("# OS.EnableRDMA=n", "OS.EnableRDMA=y"),
        "every other line kept"
    );
    let restarts = |w: &World| {
        w.calls()
            .lines()
            .filter(|l| l.contains("--no-block try-restart walinuxagent.service"))
            .count()
    };
    assert_eq!(restarts(&w), 1, "{}", w.calls());
    // Again: nothing to change, no restart.
    let out = apply(&w, json!({"ipoib": "waagent"}));
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    assert_eq!(
        fs::read_to_string(w.root.join("etc/waagent.conf")).unwrap(),
        conf
    );
    assert_eq!(restarts(&w), 1);
    // The modules IPoIB needs are loaded and listed for the next boot.
    let load = fs::read_to_string(
        w.root
            .join("etc/modules-load.d/infiniband-driver-linux.conf"),
    )
    .unwrap();
    for m in ["mlx5_ib", "ib_uverbs", "ib_umad", "rdma_ucm", "ib_ipoib"] {
        assert!(load.lines().any(|l| l == m), "{m} in {load}");
    }
}

#[test]
fn ipoib_native_without_the_kvp_record_is_a_clear_error() {
    let w = World::new("hbv3", HB);
    let out = apply(&w, json!({"ipoib": "native"}));
    let (stdout, _) = text(&out);
    assert_eq!(code(&out), 14, "{stdout}");
    assert!(
        stdout.starts_with("error 224 IpoibNotConfigured"),
        "{stdout}"
    );
    assert!(stdout.contains("IPoIB_Data"), "{stdout}");
}

#[test]
fn nvidia_peermem_is_loaded_beside_a_gpu_driver() {
    let w = World::new("hbv3", HB);
    w.set_file("proc/driver/nvidia/version", "NVRM version: 550\n");
    // modprobe loads it, as the GPU driver's package provides it.
    write_exec(
        &w.stubs.join("modprobe"),
        &format!(
            "#!/bin/sh\necho \"modprobe $*\" >> '{}'\necho \"$1 16384 0 - Live 0x0\" >> '{}'\n",
            w.tmp.path().join("calls.log").display(),
            w.root.join("proc/modules").display()
        ),
    );
    let out = apply(&w, json!({"ipoib": "off"}));
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    assert!(
        w.calls().contains("modprobe nvidia_peermem"),
        "{}",
        w.calls()
    );
    let w = World::new("hbv3", HB);
    assert_eq!(code(&apply(&w, json!({"ipoib": "off"}))), 0);
    assert!(!w.calls().contains("nvidia_peermem"));
}

// ------------------------------------------------------------------ IPoIB in a network namespace

struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("ibdrv-test-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success();
        assert!(
            ok,
            "cannot create a network namespace: the IPoIB test needs root and iproute2"
        );
        Netns(name)
    }

    fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "ip"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn try_ip(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.0, "ip"])
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    /// IPv4 addresses per interface, as `ip` reports them.
    fn addresses(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        ibdriver::host::ip::parse_ip_json(&self.ip(&["-j", "-4", "addr", "show"]))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sysfs_netdev(root: &Path, name: &str, address: &str) {
    write(
        &root.join(format!("sys/class/net/{name}/address")),
        format!("{address}\n"),
    );
}

#[test]
fn ipoib_native_assigns_kvp_addresses_by_hardware_address_in_a_namespace() {
    let ns = Netns::new();
    // Stand-ins for the IPoIB netdevs: dummy interfaces, or veth pairs on kernels built
    // without the dummy driver (the development VM's).
    for (name, peer) in [("ib0", "ib0p"), ("eth7", "eth7p"), ("ib1", "ib1p")] {
        if !ns.try_ip(&["link", "add", name, "type", "dummy"]) {
            ns.ip(&["link", "add", name, "type", "veth", "peer", "name", peer]);
        }
    }
    ns.ip(&["link", "set", "dev", "eth7", "address", "00:15:5d:33:ff:2d"]);
    let w = World::new("hbv3", HB);
    // Real `ip` from here on: the one in the namespace.
    fs::remove_file(w.stubs.join("ip")).unwrap();
    // The fake sysfs: ib0 is the IPoIB netdev of the fixture HCA (20-byte address, GUID key
    // 00155d33ff2c); eth7 an Ethernet-backend IB netdev matched by its plain MAC; ib1 a decoy
    // whose name looks right but whose address matches nothing.
    sysfs_netdev(&w.root, "eth7", "00:15:5d:33:ff:2d");
    sysfs_netdev(
        &w.root,
        "ib1",
        "00:00:01:49:fe:80:00:00:00:00:00:00:00:15:5d:ff:fd:33:ff:99",
    );
    w.kvp(&[(
        "IPoIB_Data",
        "NUMPAIRS:2|00155D33FF2C:172.16.1.4|00155D33FF2D:172.16.1.5|",
    )]);
    let file = w.tmp.path().join("native.json");
    write(&file, json!({"ipoib": "native"}).to_string());
    let run = || {
        let c = w.command(&["apply", "--settings", file.to_str().unwrap()], 0);
        wrapped(&c, "ip", &["netns", "exec", &ns.0])
            .output()
            .unwrap()
    };
    for round in 1..=2 {
        let out = run();
        let (stdout, stderr) = text(&out);
        assert_eq!(code(&out), 0, "round {round}: {stdout}\n{stderr}");
        assert!(
            stdout.contains("IPoIB (native): eth7 172.16.1.5/16, ib0 172.16.1.4/16")
                || stdout.contains("IPoIB (native): ib0 172.16.1.4/16, eth7 172.16.1.5/16"),
            "round {round}: {stdout}"
        );
        let addrs = ns.addresses();
        assert_eq!(
            addrs["ib0"],
            vec!["172.16.1.4/16".to_string()],
            "round {round}: {addrs:?}"
        );
        assert_eq!(
            addrs["eth7"],
            vec!["172.16.1.5/16".to_string()],
            "round {round}"
        );
        assert!(
            addrs.get("ib1").is_none_or(|a| a.is_empty()),
            "decoy got {addrs:?}"
        );
        // Up, administratively.
        let link = ns.ip(&["-j", "link", "show", "dev", "ib0"]);
        assert!(link.contains("\"UP\""), "{link}");
    }
    // An address lost between enables: the health monitor (the systemd timer's job) puts it
    // back and reports Ready.
    ns.ip(&["addr", "del", "172.16.1.5/16", "dev", "eth7"]);
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns.0])
        .arg(bin())
        .args(["monitor", "--handler-dir", w.handler_dir.to_str().unwrap()])
        .env("PATH", w.path_var())
        .env("IBDRIVER_ROOT", &w.root)
        .env("IBDRIVER_IMDS_URL", &w.imds_url);
    let out = c.output().unwrap();
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    assert_eq!(ns.addresses()["eth7"], vec!["172.16.1.5/16".to_string()]);
    assert_eq!(
        w.heartbeat()[0]["heartbeat"]["status"],
        "Ready",
        "{}",
        w.heartbeat()
    );
    let summary = fs::read_to_string(w.root.join("var/log/azure/ib-vmext-status")).unwrap();
    assert!(
        summary.contains("Monitor: restored IPoIB 172.16.1.5/16 on eth7"),
        "{summary}"
    );
}

// ------------------------------------------------------------------ kernel update and repair

const K1: &str = "5.15.0-1073-azure";
const K2: &str = "5.15.0-1075-azure";

/// Stubs that behave like the host: apt-get installs the extra-modules package by creating its
/// module file; modprobe loads mlx5_ib only when the running kernel has the file, and then the
/// kernel registers the HCA again.
fn kernel_stubs(w: &World) {
    let root = w.root.display();
    let calls = w.tmp.path().join("calls.log");
    let saved = w.tmp.path().join("saved-infiniband");
    write_exec(
        &w.stubs.join("apt-get"),
        &format!(
            r#"#!/bin/sh
echo "apt-get $*" >> '{calls}'
case "$*" in
  *update*) exit 0 ;;
  *install*linux-headers-{K2}*) exit 0 ;;
  *linux-modules-extra-{K2}*)
    mkdir -p '{root}/lib/modules/{K2}/kernel/drivers/infiniband/hw/mlx5'
    : > '{root}/lib/modules/{K2}/kernel/drivers/infiniband/hw/mlx5/mlx5_ib.ko'
    exit 0 ;;
esac
exit 1
"#,
            calls = calls.display()
        ),
    );
    write_exec(
        &w.stubs.join("modprobe"),
        &format!(
            r#"#!/bin/sh
echo "modprobe $*" >> '{calls}'
k=$(cat '{root}/proc/sys/kernel/osrelease')
for m in "$@"; do
  if [ "$m" = mlx5_ib ]; then
    [ -n "$(find '{root}'/lib/modules/$k -name 'mlx5_ib.ko*' 2>/dev/null)" ] || {{ echo "modprobe: FATAL: Module mlx5_ib not found in directory /lib/modules/$k" >&2; exit 1; }}
    grep -q '^mlx5_ib ' '{root}/proc/modules' || printf 'mlx5_ib 462848 0 - Live 0x0\nmlx5_core 2088960 1 mlx5_ib, Live 0x0\n' >> '{root}/proc/modules'
    [ -d '{saved}' ] && cp -r '{saved}' '{root}/sys/bus/pci/devices/0101:00:00.0/infiniband'
  fi
done
exit 0
"#,
            calls = calls.display(),
            saved = saved.display()
        ),
    );
}

/// The VM reboots into `kernel`, which has no RDMA driver module: nothing loads it, the HCA is
/// not registered.
fn reboot_into(w: &World, kernel: &str) {
    w.set_file("proc/sys/kernel/osrelease", &format!("{kernel}\n"));
    w.set_file(
        "proc/sys/kernel/random/boot_id",
        "9d9c3c1e-0000-4000-8000-00000000b002\n",
    );
    let modules = fs::read_to_string(w.root.join("proc/modules")).unwrap();
    let kept: String = modules
        .lines()
        .filter(|l| !l.starts_with("mlx5_ib ") && !l.starts_with("mlx5_core "))
        .map(|l| format!("{l}\n"))
        .collect();
    w.set_file("proc/modules", &kept);
    let ib = w.root.join("sys/bus/pci/devices/0101:00:00.0/infiniband");
    let saved = w.tmp.path().join("saved-infiniband");
    if !saved.exists() {
        copy_tree(&ib, &saved);
    }
    fs::remove_dir_all(&ib).unwrap();
}

#[test]
fn a_kernel_update_is_repaired_after_the_reboot_and_then_nothing_is_done() {
    let w = World::new("hbv3", HB);
    w.set_file(
        &format!("lib/modules/{K1}/kernel/drivers/infiniband/hw/mlx5/mlx5_ib.ko"),
        "",
    );
    kernel_stubs(&w);
    w.settings(1, json!({"ipoib": "off"}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    let v = w.wait_terminal(1, TIMEOUT);
    assert_eq!(status_value(&v), "success", "{v}");
    w.wait_worker_gone(TIMEOUT);
    assert!(
        !w.calls().contains("apt-get"),
        "no repair needed: {}",
        w.calls()
    );

    // Nothing changed: enable does no work (no worker, no program run, status untouched).
    let before = w.calls();
    let status_before = fs::read(w.status_path(1)).unwrap();
    assert_eq!(code(&w.run("enable", 1)), 0);
    assert_eq!(w.calls(), before);
    assert_eq!(fs::read(w.status_path(1)).unwrap(), status_before);

    // Unattended upgrades installed K2 and the VM rebooted into it.
    reboot_into(&w, K2);
    assert_eq!(code(&w.run("enable", 1)), 0);
    w.wait_worker_gone(TIMEOUT);
    let v = w.status(1).unwrap();
    assert_eq!(status_value(&v), "success", "{v}\n{}", w.calls());
    let calls = w.calls();
    assert!(
        calls.contains(&format!("linux-modules-extra-{K2}")),
        "{calls}"
    );
    assert!(calls.contains(&format!("depmod -a {K2}")), "{calls}");
    let repaired: Vec<&str> = calls.lines().skip(before.lines().count()).collect();
    assert!(
        repaired.iter().any(|l| l.starts_with("modprobe mlx5_ib")),
        "{repaired:?}"
    );
    assert!(message(&v).contains("1/1 InfiniBand port(s) ACTIVE"), "{v}");

    // And once repaired, the next enable (agent restart) does nothing again.
    let before = w.calls();
    assert_eq!(code(&w.run("enable", 1)), 0);
    assert_eq!(w.calls(), before);
}

#[test]
fn a_new_kernel_whose_modules_cannot_be_installed_fails_with_code_226() {
    let w = World::new("hbv3", HB);
    kernel_stubs(&w);
    w.settings(1, json!({"ipoib": "off"}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    assert_eq!(status_value(&w.wait_terminal(1, TIMEOUT)), "success");
    w.wait_worker_gone(TIMEOUT);
    // A kernel for which the package does not exist (the stub fails every other install).
    reboot_into(&w, "6.2.0-9999-azure");
    assert_eq!(code(&w.run("enable", 1)), 0);
    w.wait_worker_gone(TIMEOUT);
    let v = w.status(1).unwrap();
    assert_eq!(status_value(&v), "error", "{v}");
    assert_eq!(status_code(&v), 226, "{v}");
    assert!(message(&v).contains("6.2.0-9999-azure"), "{v}");
}

#[test]
fn stable_hca_names_are_set_once_and_kept() {
    let w = World::new("hbv3", HB);
    let calls = w.tmp.path().join("calls.log");
    let devices = w.root.join("sys/bus/pci/devices");
    let dev = devices.join("0101:00:00.0/infiniband");
    // `rdma dev set OLD name NEW` renames the device the kernel registered.
    write_exec(
        &w.stubs.join("rdma"),
        &format!(
            "#!/bin/sh\necho \"rdma $*\" >> '{}'\n[ \"$1 $2 $4\" = \"dev set name\" ] || exit 1\nfor d in '{}'/*/infiniband; do [ -d \"$d/$3\" ] && mv \"$d/$3\" \"$d/$5\"; done\nexit 0\n",
            calls.display(),
            devices.display()
        ),
    );
    let out = apply(&w, json!({"ipoib": "off", "hcaNaming": "stable"}));
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    assert!(dev.join("mlx5_ib0").is_dir());
    assert_eq!(
        w.calls()
            .matches("rdma dev set mlx5_0 name mlx5_ib0")
            .count(),
        1
    );
    // The accelerated-networking (Ethernet) function gets the `an` name.
    assert_eq!(
        w.calls()
            .matches("rdma dev set mlx5_1 name mlx5_an0")
            .count(),
        1
    );
    let out = apply(&w, json!({"ipoib": "off", "hcaNaming": "stable"}));
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    assert_eq!(w.calls().matches("rdma ").count(), 2, "{}", w.calls());
    let state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(w.data_dir().join("configure.json")).unwrap())
            .unwrap();
    assert_eq!(state["hca_names"]["0101:00:00.0"], "mlx5_ib0");
}

/// hbv3 with DOCA-OFED installed for K1 (ofed_info, /opt/mellanox/doca, its DKMS module built
/// for K1), the distribution's module for K2, and a dkms stub that builds for K2.
fn doca_world() -> World {
    let w = World::new("hbv3", HB);
    // DOCA-OFED is installed: ofed_info, /opt/mellanox/doca, its DKMS module registered and
    // built for the running kernel.
    w.set_file("usr/bin/ofed_info", "");
    w.set_file("opt/mellanox/doca/.keep", "");
    w.set_file(
        "var/lib/dkms/mlnx-ofed-kernel/25.10.OFED.25.10.1.2.8.1/.keep",
        "",
    );
    w.set_file(&format!("lib/modules/{K1}/updates/dkms/mlx5_ib.ko"), "");
    // The distribution's module is there for the new kernel, but it is not DOCA's.
    w.set_file(
        &format!("lib/modules/{K2}/kernel/drivers/infiniband/hw/mlx5/mlx5_ib.ko"),
        "",
    );
    write_exec(
        &w.stubs.join("ofed_info"),
        "#!/bin/sh\necho 'OFED-internal-25.10-1.2.8:'\n",
    );
    kernel_stubs(&w);
    let root = w.root.display().to_string();
    write_exec(
        &w.stubs.join("dkms"),
        &format!(
            "#!/bin/sh\necho \"dkms $*\" >> '{}'\n[ \"$1 $2 $3\" = \"autoinstall -k {K2}\" ] || exit 1\nmkdir -p '{root}/lib/modules/{K2}/updates/dkms'\n: > '{root}/lib/modules/{K2}/updates/dkms/mlx5_ib.ko'\n",
            w.tmp.path().join("calls.log").display()
        ),
    );
    w
}

#[test]
fn a_kernel_update_under_doca_rebuilds_the_dkms_modules() {
    let w = doca_world();
    w.settings(1, json!({"ipoib": "off"}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    let v = w.wait_terminal(1, TIMEOUT);
    assert_eq!(status_value(&v), "success", "{v}");
    assert!(message(&v).contains("doca"), "{v}");
    w.wait_worker_gone(TIMEOUT);
    assert!(!w.calls().contains("dkms"), "{}", w.calls());

    reboot_into(&w, K2);
    assert_eq!(code(&w.run("enable", 1)), 0);
    w.wait_worker_gone(TIMEOUT);
    let v = w.status(1).unwrap();
    let calls = w.calls();
    assert_eq!(status_value(&v), "success", "{v}\n{calls}");
    let order: Vec<usize> = [
        format!("linux-headers-{K2}"),
        format!("dkms autoinstall -k {K2}"),
        format!("update-initramfs -u -k {K2}"),
        format!("depmod -a {K2}"),
        "modprobe mlx5_ib".to_string(),
    ]
    .iter()
    .map(|needle| {
        calls
            .find(needle.as_str())
            .unwrap_or_else(|| panic!("{needle} not run:\n{calls}"))
    })
    .collect();
    assert!(
        order.windows(2).all(|p| p[0] < p[1]),
        "order {order:?}\n{calls}"
    );
    // No reinstall: DOCA's packages were not touched.
    assert!(!calls.contains("doca-ofed"), "{calls}");
}

#[test]
fn uninstall_removes_the_configuration_we_own_and_keeps_the_agent_switch() {
    let w = World::new("hbv3", HB);
    w.set_file("etc/waagent.conf", WAAGENT_CONF);
    w.settings(1, json!({"ipoib": "waagent"}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    assert_eq!(status_value(&w.wait_terminal(1, TIMEOUT)), "success");
    w.wait_worker_gone(TIMEOUT);
    let load = w
        .root
        .join("etc/modules-load.d/infiniband-driver-linux.conf");
    assert!(load.exists());
    assert!(w.data_dir().join("configure.json").exists());
    let conf = fs::read_to_string(w.root.join("etc/waagent.conf")).unwrap();
    assert!(conf.contains("\nOS.EnableRDMA=y\n"));
    assert_eq!(code(&w.run("disable", 1)), 0);
    assert_eq!(code(&w.run("uninstall", 1)), 0);
    assert!(!load.exists());
    assert!(!w.data_dir().exists());
    assert_eq!(
        fs::read_to_string(w.root.join("etc/waagent.conf")).unwrap(),
        conf
    );
}

/// The loaded mlx5_ib's srcversion (sysfs; `None`: the kernel's own module, which has none
/// in sysfs on Debian's and Ubuntu's kernels) and `modinfo` reporting DOCA's build's.
fn loaded_driver(w: &World, srcversion: Option<&str>) {
    let path = w.root.join("sys/module/mlx5_ib/srcversion");
    match srcversion {
        Some(s) => w.set_file("sys/module/mlx5_ib/srcversion", &format!("{s}\n")),
        None => {
            let _ = fs::remove_file(&path);
        }
    }
    write_exec(
        &w.stubs.join("modinfo"),
        "#!/bin/sh\ncase \"$3\" in */updates/dkms/mlx5_ib.ko) echo DOCA0SRCVERSION ;; *) echo INTREESRCVERSION ;; esac\n",
    );
}

/// The VM reboots into K2 (after `before_boot` changes its files) and the distribution's
/// mlx5_ib loads: the HCA is registered, on the wrong driver.
fn boot_distribution_driver(w: &World, before_boot: impl Fn(&World)) {
    reboot_into(w, K2);
    before_boot(w);
    let modules = fs::read_to_string(w.root.join("proc/modules")).unwrap();
    w.set_file(
        "proc/modules",
        &format!("mlx5_ib 462848 0 - Live 0x0\nmlx5_core 2088960 1 mlx5_ib, Live 0x0\n{modules}"),
    );
    copy_tree(
        &w.tmp.path().join("saved-infiniband"),
        &w.root.join("sys/bus/pci/devices/0101:00:00.0/infiniband"),
    );
    loaded_driver(w, None);
}

#[test]
fn a_kernel_update_that_boots_the_distribution_driver_under_doca_rebuilds_and_reboots_once() {
    let w = doca_world();
    w.settings(1, json!({"ipoib": "off"}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    assert_eq!(status_value(&w.wait_terminal(1, TIMEOUT)), "success");
    w.wait_worker_gone(TIMEOUT);
    // K2 boots with the distribution's mlx5_ib loaded and the HCA registered: it works, but
    // on the wrong driver.
    boot_distribution_driver(&w, |_| {});
    let before = w.calls().len();
    assert_eq!(code(&w.run("enable", 1)), 0);
    w.wait_worker_gone(TIMEOUT);
    let calls = w.calls()[before..].to_string();
    assert!(
        calls.contains(&format!("dkms autoinstall -k {K2}")),
        "{calls}"
    );
    assert_eq!(calls.matches("systemctl reboot").count(), 1, "{calls}");
    let v = w.status(1).unwrap();
    assert_eq!(status_value(&v), "transitioning", "{v}");
    // The reboot: DOCA's module (updates/dkms) loads now. Nothing is rebuilt or rebooted.
    w.set_file(
        "proc/sys/kernel/random/boot_id",
        "9d9c3c1e-0000-4000-8000-00000000b003\n",
    );
    loaded_driver(&w, Some("DOCA0SRCVERSION"));
    let before = w.calls().len();
    assert_eq!(code(&w.run("enable", 1)), 0);
    w.wait_worker_gone(TIMEOUT);
    let v = w.status(1).unwrap();
    assert_eq!(status_value(&v), "success", "{v}");
    let calls = w.calls()[before..].to_string();
    assert!(
        !calls.contains("reboot") && !calls.contains("dkms"),
        "{calls}"
    );
}

#[test]
fn the_distribution_driver_loading_again_after_the_repair_reboot_is_a_loop_not_a_success() {
    let w = doca_world();
    w.settings(1, json!({"ipoib": "off"}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    assert_eq!(status_value(&w.wait_terminal(1, TIMEOUT)), "success");
    w.wait_worker_gone(TIMEOUT);
    // DOCA's module is built for K2 already, but the distribution's loads (initramfs).
    boot_distribution_driver(&w, |w| {
        w.set_file(&format!("lib/modules/{K2}/updates/dkms/mlx5_ib.ko"), "")
    });
    assert_eq!(code(&w.run("enable", 1)), 0);
    w.wait_worker_gone(TIMEOUT);
    assert_eq!(
        w.calls().matches("systemctl reboot").count(),
        1,
        "{}",
        w.calls()
    );
    assert!(
        !w.calls().contains("dkms autoinstall"),
        "nothing to rebuild"
    );
    // After the reboot the distribution's driver loads again: an error, not another reboot,
    // and never a success on the wrong driver.
    w.set_file(
        "proc/sys/kernel/random/boot_id",
        "9d9c3c1e-0000-4000-8000-00000000b004\n",
    );
    assert_eq!(code(&w.run("enable", 1)), 0);
    w.wait_worker_gone(TIMEOUT);
    let v = w.status(1).unwrap();
    assert_eq!(status_value(&v), "error", "{v}");
    assert_eq!(status_code(&v), 219, "{v}");
    assert_eq!(w.calls().matches("systemctl reboot").count(), 1);
    // A new sequence number does not reset the per-kernel record.
    w.settings(2, json!({"ipoib": "off", "lockTimeoutSeconds": 60}));
    assert_eq!(code(&w.run("enable", 2)), 0);
    w.wait_worker_gone(TIMEOUT);
    assert_eq!(status_code(&w.status(2).unwrap()), 219);
    assert_eq!(w.calls().matches("systemctl reboot").count(), 1);
}

#[test]
fn waagent_mode_restarts_an_agent_that_has_the_switch_but_not_the_addresses() {
    let conf = "OS.EnableRDMA=y\n";
    for (ip, restarts, exit) in [("172.16.1.4", 0, 0), ("172.16.1.9", 1, 14)] {
        let mut w = World::new("hbv3", HB);
        w.verify_timeout = 2;
        w.set_file("etc/waagent.conf", conf);
        w.set_file("run/systemd/system/.keep", "");
        w.set_file("usr/lib/systemd/system/waagent.service", "[Unit]\n");
        // The `ip` stub shows 172.16.1.4 on ib0.
        w.kvp(&[("IPoIB_Data", &format!("NUMPAIRS:1|00155D33FF2C:{ip}|"))]);
        let out = apply(&w, json!({"ipoib": "waagent"}));
        let (stdout, _) = text(&out);
        assert_eq!(code(&out), exit, "{ip}: {stdout}");
        // Again in the same boot: the agent is not restarted a second time.
        assert_eq!(code(&apply(&w, json!({"ipoib": "waagent"}))), exit);
        assert_eq!(
            w.calls()
                .matches("systemctl --no-block try-restart waagent.service")
                .count(),
            restarts,
            "{ip}: {}",
            w.calls()
        );
        if exit != 0 {
            assert!(stdout.starts_with("error 224"), "{stdout}");
            assert!(
                stdout.contains(&format!("{ip}/16 is not on ib0")),
                "{stdout}"
            );
        }
        assert_eq!(
            fs::read_to_string(w.root.join("etc/waagent.conf")).unwrap(),
            conf
        );
    }
}

#[test]
fn diagnose_after_apply_carries_apply_log_and_configure_state() {
    let w = World::new("hbv3", HB);
    assert_eq!(code(&apply(&w, json!({"ipoib": "off"}))), 0);
    let out_file = w.tmp.path().join("bundle.tar.gz");
    let out = w
        .command(&["diagnose", "--out", out_file.to_str().unwrap()], 0)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(
        fs::File::open(&out_file).unwrap(),
    ));
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "data/configure.json",
        "data/apply-state.json",
        "data/log/ibdriver.log",
    ] {
        assert!(
            names.iter().any(|n| n.ends_with(want)),
            "{want} not in {names:?}"
        );
    }
}

#[test]
fn a_start_task_apply_does_not_undo_the_extensions_no_op_enable() {
    let w = World::new("hbv3", HB);
    w.settings(1, json!({"ipoib": "off"}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    assert_eq!(status_value(&w.wait_terminal(1, TIMEOUT)), "success");
    w.wait_worker_gone(TIMEOUT);
    assert_eq!(code(&apply(&w, json!({"ipoib": "off"}))), 0);
    // The agent restarts and runs enable with the same sequence number: nothing to do.
    let before = w.calls();
    let status = fs::read(w.status_path(1)).unwrap();
    assert_eq!(code(&w.run("enable", 1)), 0);
    assert_eq!(w.calls(), before);
    assert_eq!(fs::read(w.status_path(1)).unwrap(), status);
}

// ------------------------------------------------------------------ apply and configure, edge by edge

#[test]
fn apply_leaves_at_a_safe_point_when_the_extension_is_disabled_during_the_run() {
    use std::process::Stdio;
    let w = World::new("hbv3", HB);
    let calls = w.tmp.path().join("calls.log");
    let (held, go) = (w.tmp.path().join("rdma.held"), w.tmp.path().join("go"));
    // The HCA rename (configure) holds apply until the test lets it go.
    write_exec(
        &w.stubs.join("rdma"),
        &format!(
            "#!/bin/sh\necho \"rdma $*\" >> '{}'\n: > '{}'\ni=0\nwhile [ ! -e '{}' ] && [ $i -lt 6000 ]; do sleep 0.01; i=$((i+1)); done\nexit 0\n",
            calls.display(),
            held.display(),
            go.display()
        ),
    );
    let file = w.tmp.path().join("s.json");
    write(
        &file,
        json!({"ipoib": "off", "hcaNaming": "stable"}).to_string(),
    );
    let apply = w
        .command(&["apply", "--settings", file.to_str().unwrap()], 0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("apply renaming an HCA", TIMEOUT, || held.exists());
    // The agent's disable, while apply runs: it asks the worker (here apply) to leave.
    w.settings(1, json!({"ipoib": "off"}));
    let disable = w.command(&["disable"], 1).spawn().unwrap();
    wait_for("disable's stop request", TIMEOUT, || {
        fs::read_to_string(w.data_dir().join("request.json"))
            .is_ok_and(|t| t.contains("\"stop\":true"))
    });
    write(&go, "");
    let out = apply.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(
        code(&out),
        exit_for(203),
        "apply ran on after disable: {stdout}\n{stderr}"
    );
    assert!(stdout.starts_with("error 203 Superseded"), "{stdout}");
    let disable = disable.wait_with_output().unwrap();
    assert_eq!(code(&disable), 0);
    // Left before verify: the checkpoint does not say verify ran.
    let cp: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(w.data_dir().join("apply-state.json")).unwrap())
            .unwrap();
    assert!(!cp["completed"].to_string().contains("verify"), "{cp:#}");
}

#[test]
fn a_stop_request_older_than_apply_does_not_stop_it() {
    let w = World::new("hbv3", HB);
    assert_eq!(code(&apply(&w, json!({"ipoib": "off"}))), 0);
    w.settings(1, json!({"ipoib": "off"}));
    // The extension was disabled before this apply started (a start task after the disable).
    assert_eq!(code(&w.run("disable", 1)), 0);
    let request = fs::read_to_string(w.data_dir().join("request.json")).unwrap();
    assert!(request.contains("\"stop\":true"), "{request}");
    let out = apply(&w, json!({"ipoib": "off"}));
    let (stdout, stderr) = text(&out);
    assert_eq!(code(&out), 0, "{stdout}\n{stderr}");
    assert!(stdout.starts_with("success: "), "{stdout}");
}

#[test]
fn apply_that_needs_a_reboot_says_so_and_exits_zero() {
    let w = doca_world();
    assert_eq!(code(&apply(&w, json!({"ipoib": "off"}))), 0);
    boot_distribution_driver(&w, |_| {});
    let out = apply(&w, json!({"ipoib": "off"}));
    let (stdout, stderr) = text(&out);
    assert_eq!(code(&out), 0, "{stdout}\n{stderr}");
    assert!(stdout.starts_with("rebooting: "), "{stdout}");
    assert!(
        stderr.contains("run apply again after the boot"),
        "{stderr}"
    );
    assert_eq!(
        w.calls().matches("systemctl reboot").count(),
        1,
        "{}",
        w.calls()
    );
}

#[test]
fn a_failed_apply_shows_the_health_problems_on_stderr() {
    let mut w = World::new("hbv3-portdown", HB);
    w.verify_timeout = 2;
    let out = apply(&w, json!({"ipoib": "off"}));
    let (stdout, stderr) = text(&out);
    assert_ne!(code(&out), 0, "{stdout}");
    assert!(stdout.starts_with("error "), "{stdout}");
    let health = stderr
        .lines()
        .find(|l| l.starts_with("ibdriver apply: health: "))
        .unwrap_or_else(|| panic!("no health line:\n{stderr}"));
    assert!(health.len() > "ibdriver apply: health: ".len(), "{health}");
}

#[test]
fn apply_never_reads_a_standard_stream_as_its_secrets() {
    let w = World::new("hbv3", HB);
    for fd in ["0", "1", "2", "x"] {
        let mut c = w.command(&["apply"], 0);
        c.env("IBDRIVER_APPLY_SECRETS_FD", fd);
        // stdin and stderr are pipes the child itself holds open: reading one would block.
        c.stdin(std::process::Stdio::piped());
        let out = output_within(c, TIMEOUT);
        let (stdout, stderr) = text(&out);
        assert_eq!(code(&out), exit_for(200), "fd {fd}: {stdout}\n{stderr}");
        assert!(
            stdout.starts_with("error 200 Internal")
                && stdout.contains("IBDRIVER_APPLY_SECRETS_FD does not name apply's secrets"),
            "fd {fd}: {stdout}"
        );
    }
}

const WAAGENT_OFF: &str = "Provisioning.Agent=auto\n# OS.EnableRDMA=n\n";

/// The agent's unit, systemd running, and `/etc/waagent.conf` with the switch off.
fn with_agent(w: &World) {
    w.set_file("etc/waagent.conf", WAAGENT_OFF);
    w.set_file("run/systemd/system/.keep", "");
    w.set_file("lib/systemd/system/walinuxagent.service", "[Unit]\n");
    // The `ip` stub shows 172.16.1.4 on ib0, whose hardware address gives 00155d33ff2c.
    w.kvp(&[("IPoIB_Data", "NUMPAIRS:1|00155D33FF2C:172.16.1.4|")]);
}

#[test]
fn ipoib_auto_with_the_record_turns_the_agents_switch_on_and_native_leaves_it() {
    let w = World::new("hbv3", HB);
    with_agent(&w);
    let out = apply(&w, json!({"ipoib": "auto"}));
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    let state = load_configure(&w);
    assert_eq!(state["ipoib"], "native", "{state:#}");
    assert_eq!(
        fs::read_to_string(w.root.join("etc/waagent.conf")).unwrap(),
        WAAGENT_OFF.replace("# OS.EnableRDMA=n", "OS.EnableRDMA=y")
    );
    // Consistency only: the agent is not restarted for it.
    assert!(!w.calls().contains("try-restart"), "{}", w.calls());

    let w = World::new("hbv3", HB);
    with_agent(&w);
    let out = apply(&w, json!({"ipoib": "native"}));
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    assert_eq!(load_configure(&w)["ipoib"], "native");
    assert_eq!(
        fs::read_to_string(w.root.join("etc/waagent.conf")).unwrap(),
        WAAGENT_OFF,
        "native mode changed the agent's switch"
    );
}

fn load_configure(w: &World) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(w.data_dir().join("configure.json")).unwrap()).unwrap()
}

#[test]
fn ipoib_auto_without_record_or_agent_leaves_ipoib_alone_but_waagent_mode_needs_the_agent() {
    let w = World::new("hbv3", HB);
    let out = apply(&w, json!({"ipoib": "auto"}));
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    let state = load_configure(&w);
    assert_eq!(state["ipoib"], "off", "{state:#}");
    assert!(
        state["notes"].to_string().contains("IPoIB left alone"),
        "{state:#}"
    );
    assert!(!w.root.join("etc/waagent.conf").exists());

    // With the agent's configuration but no record, auto is the agent's mode.
    let w = World::new("hbv3", HB);
    w.set_file("etc/waagent.conf", WAAGENT_OFF);
    let out = apply(&w, json!({"ipoib": "auto"}));
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    assert_eq!(load_configure(&w)["ipoib"], "waagent");
    assert!(fs::read_to_string(w.root.join("etc/waagent.conf"))
        .unwrap()
        .contains("\nOS.EnableRDMA=y\n"));

    // Asked for explicitly, waagent mode without the agent is an error that says so.
    let w = World::new("hbv3", HB);
    let out = apply(&w, json!({"ipoib": "waagent"}));
    let (stdout, _) = text(&out);
    assert_eq!(code(&out), exit_for(225), "{stdout}");
    assert!(stdout.starts_with("error 225 ConfigureFailed"), "{stdout}");
    assert!(
        stdout.contains("ipoib waagent needs the Azure guest agent"),
        "{stdout}"
    );
}

/// `modprobe` that fails for the modules in `failing` and otherwise loads the module (lists it
/// in the fake /proc/modules).
fn modprobe_failing(w: &World, failing: &[&str]) {
    let cases: String = failing
        .iter()
        .map(|m| format!("  {m}) echo \"modprobe: FATAL: Module {m} not found\" >&2; exit 1 ;;\n"))
        .collect();
    write_exec(
        &w.stubs.join("modprobe"),
        &format!(
            "#!/bin/sh\necho \"modprobe $*\" >> '{}'\ncase \"$1\" in\n{cases}esac\necho \"$1 16384 0 - Live 0x0\" >> '{}'\n",
            w.tmp.path().join("calls.log").display(),
            w.root.join("proc/modules").display()
        ),
    );
}

/// The fake /proc/modules without `module`.
fn unload(w: &World, module: &str) {
    let modules = fs::read_to_string(w.root.join("proc/modules")).unwrap();
    let kept: String = modules
        .lines()
        .filter(|l| l.split_whitespace().next() != Some(module))
        .map(|l| format!("{l}\n"))
        .collect();
    w.set_file("proc/modules", &kept);
}

fn load_file(w: &World) -> Vec<String> {
    fs::read_to_string(
        w.root
            .join("etc/modules-load.d/infiniband-driver-linux.conf"),
    )
    .unwrap()
    .lines()
    .filter(|l| !l.starts_with('#'))
    .map(str::to_string)
    .collect()
}

#[test]
fn a_module_that_will_not_load_fails_configure_naming_it() {
    let w = World::new("hbv3", HB);
    unload(&w, "rdma_ucm");
    modprobe_failing(&w, &["rdma_ucm"]);
    let out = apply(&w, json!({"ipoib": "off"}));
    let (stdout, _) = text(&out);
    assert_eq!(code(&out), exit_for(225), "{stdout}");
    assert!(
        stdout.starts_with("error 225 ConfigureFailed: RDMA module(s) would not load: rdma_ucm: "),
        "{stdout}"
    );
    assert!(stdout.contains("Module rdma_ucm not found"), "{stdout}");
    assert!(w.calls().contains("modprobe rdma_ucm"), "{}", w.calls());
    // Only what was missing was loaded.
    assert_eq!(w.calls().matches("modprobe ").count(), 1, "{}", w.calls());
}

#[test]
fn nvidia_peermem_that_will_not_load_is_a_note_and_stays_out_of_the_boot_list() {
    // It loads: it is listed for the next boot too.
    let w = World::new("hbv3", HB);
    w.set_file("proc/driver/nvidia/version", "NVRM version: 550\n");
    modprobe_failing(&w, &[]);
    assert_eq!(code(&apply(&w, json!({"ipoib": "off"}))), 0);
    assert!(load_file(&w).contains(&"nvidia_peermem".to_string()));
    assert!(load_configure(&w)["modules"]
        .to_string()
        .contains("nvidia_peermem"));

    // It does not: configure succeeds with a note, and nothing fails at boot.
    let w = World::new("hbv3", HB);
    w.set_file("proc/driver/nvidia/version", "NVRM version: 550\n");
    modprobe_failing(&w, &["nvidia_peermem"]);
    let out = apply(&w, json!({"ipoib": "off"}));
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    let listed = load_file(&w);
    assert!(
        !listed.contains(&"nvidia_peermem".to_string()),
        "{listed:?}"
    );
    for m in ["ib_umad", "ib_uverbs", "mlx5_ib", "rdma_ucm"] {
        assert!(listed.contains(&m.to_string()), "{m} in {listed:?}");
    }
    let state = load_configure(&w);
    assert!(
        state["notes"]
            .to_string()
            .contains("nvidia_peermem did not load"),
        "{state:#}"
    );
    assert!(!state["modules"].to_string().contains("nvidia_peermem"));
}

#[test]
fn configure_enables_the_vendor_stacks_openibd_service() {
    let w = World::new("hbv3", HB);
    w.set_file("usr/lib/systemd/system/openibd.service", "[Unit]\n");
    assert_eq!(code(&apply(&w, json!({"ipoib": "off"}))), 0);
    assert_eq!(
        w.calls()
            .matches("systemctl enable openibd.service")
            .count(),
        1,
        "{}",
        w.calls()
    );
    let w = World::new("hbv3", HB);
    assert_eq!(code(&apply(&w, json!({"ipoib": "off"}))), 0);
    assert!(!w.calls().contains("openibd"), "{}", w.calls());
}

#[test]
fn configure_leaves_an_enabled_openibd_alone() {
    let w = World::new("hbv3", HB);
    w.set_file("usr/lib/systemd/system/openibd.service", "[Unit]\n");
    w.systemctl_says(&[("is-enabled", "openibd.service", "enabled")]);
    assert_eq!(code(&apply(&w, json!({"ipoib": "off"}))), 0);
    let calls = w.calls();
    assert!(
        calls.contains("systemctl is-enabled openibd.service"),
        "{calls}"
    );
    assert!(!calls.contains("systemctl enable openibd"), "{calls}");
    // Disabled (systemctl says so and exits 1): enabled.
    let w = World::new("hbv3", HB);
    w.set_file("usr/lib/systemd/system/openibd.service", "[Unit]\n");
    w.systemctl_says(&[]);
    assert_eq!(code(&apply(&w, json!({"ipoib": "off"}))), 0);
    assert!(
        w.calls().contains("systemctl enable openibd.service"),
        "{}",
        w.calls()
    );
}

#[test]
fn the_monitor_loads_a_lost_module_and_renames_an_hca_back() {
    let w = World::new("hbv3", HB);
    let calls = w.tmp.path().join("calls.log");
    let devices = w.root.join("sys/bus/pci/devices");
    write_exec(
        &w.stubs.join("rdma"),
        &format!(
            "#!/bin/sh\necho \"rdma $*\" >> '{}'\n[ \"$1 $2 $4\" = \"dev set name\" ] || exit 1\nfor d in '{}'/*/infiniband; do [ -d \"$d/$3\" ] && mv \"$d/$3\" \"$d/$5\"; done\nexit 0\n",
            calls.display(),
            devices.display()
        ),
    );
    modprobe_failing(&w, &[]);
    let out = apply(&w, json!({"ipoib": "off", "hcaNaming": "stable"}));
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    // The host loses a module and the HCA's stable name (a driver reload).
    unload(&w, "rdma_ucm");
    let dev = devices.join("0101:00:00.0/infiniband");
    fs::rename(dev.join("mlx5_ib0"), dev.join("mlx5_0")).unwrap();
    let before = w.calls().len();
    let out = w
        .command(
            &["monitor", "--handler-dir", w.handler_dir.to_str().unwrap()],
            0,
        )
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    let calls = w.calls()[before..].to_string();
    let repairs: Vec<&str> = calls
        .lines()
        .filter(|l| l.starts_with("modprobe ") || l.starts_with("rdma "))
        .collect();
    assert_eq!(
        repairs,
        ["modprobe rdma_ucm", "rdma dev set mlx5_0 name mlx5_ib0"],
        "only what was lost is put back"
    );
    let summary = fs::read_to_string(w.root.join("var/log/azure/ib-vmext-status")).unwrap();
    let line = summary
        .lines()
        .find(|l| l.contains("Monitor: restored"))
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(
        line.ends_with("Monitor: restored loaded rdma_ucm; HCA mlx5_0 renamed mlx5_ib0"),
        "{line}"
    );
    assert!(dev.join("mlx5_ib0").is_dir());
    assert_eq!(
        w.heartbeat()[0]["heartbeat"]["status"],
        "Ready",
        "{}",
        w.heartbeat()
    );
}

/// An `ip` whose `addr add` fails with `answer`; with `agent_wins`, the address shows on ib0
/// from that moment on (the guest agent assigned it in between).
fn ip_whose_add_fails(w: &World, answer: &str, agent_wins: bool) {
    let state = w.tmp.path().join("agent-assigned");
    write_exec(
        &w.stubs.join("ip"),
        &format!(
            "#!/bin/sh\necho \"ip $*\" >> '{calls}'\n\
             case \"$*\" in\n\
             *'addr add'*) {win} echo 'RTNETLINK answers: {answer}' >&2; exit 2;;\n\
             *'link set'*) exit 0;;\n\
             esac\n\
             if [ -e '{state}' ]; then echo '[{{\"ifname\":\"ib0\",\"addr_info\":[{{\"family\":\"inet\",\"local\":\"172.16.1.4\",\"prefixlen\":16}}]}}]'; \
             else echo '[{{\"ifname\":\"ib0\",\"addr_info\":[]}}]'; fi\n",
            calls = w.tmp.path().join("calls.log").display(),
            win = if agent_wins {
                format!(": > '{}';", state.display())
            } else {
                String::new()
            },
            state = state.display(),
        ),
    );
}

#[test]
fn ipoib_native_reports_a_failed_address_add_and_accepts_one_the_agent_made_meanwhile() {
    // `ip addr add` refused and the address is not there: configure says why.
    let mut w = World::new("hbv3", HB);
    w.verify_timeout = 1;
    w.kvp(&[("IPoIB_Data", "NUMPAIRS:1|00155D33FF2C:172.16.1.4|")]);
    ip_whose_add_fails(&w, "Operation not permitted", false);
    let out = apply(&w, json!({"ipoib": "native"}));
    let (stdout, _) = text(&out);
    assert_eq!(code(&out), 14, "{stdout}");
    assert!(
        stdout.contains("RTNETLINK answers: Operation not permitted"),
        "{stdout}"
    );
    // Refused because the agent put the same address there first: that is success.
    let w = World::new("hbv3", HB);
    w.kvp(&[("IPoIB_Data", "NUMPAIRS:1|00155D33FF2C:172.16.1.4|")]);
    ip_whose_add_fails(&w, "File exists", true);
    let out = apply(&w, json!({"ipoib": "native"}));
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    assert!(
        w.calls().contains("ip addr add 172.16.1.4/16 dev ib0"),
        "{}",
        w.calls()
    );
}
