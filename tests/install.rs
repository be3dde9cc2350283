//! The install engine on fake hosts: stub package managers and installers that record their
//! calls and change the fake root the way the real ones would change a VM, a loopback artifact
//! server, and simulated reboots (a new boot id, the new drivers loaded).

#[path = "common/artifact_server.rs"]
mod artifact_server;
mod common;

use artifact_server::Server;
use common::*;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::fs;
use std::time::Duration;

const HB: &str = "Standard_HB120rs_v3";

fn sha(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Shell that makes the fake root look like drivers got loaded (what a reboot or modprobe does
/// on a VM): the hbv3 fixture's InfiniBand device and netdev, its module list, a new boot id
/// when `reboot` is set.
fn load_drivers_sh(reboot: bool) -> String {
    let fix = fixtures().join("hosts/hbv3");
    let dev = "sys/bus/pci/devices/0101:00:00.0";
    let mut s = format!(
        "R=\"$IBDRIVER_ROOT\"\ncp -r '{fix}/{dev}/infiniband' \"$R/{dev}/\"\nmkdir -p \"$R/{dev}/net\"\ncp -r '{fix}/{dev}/net/ib0' \"$R/{dev}/net/\"\ncp '{fix}/proc/modules' \"$R/proc/modules\"\n",
        fix = fix.display()
    );
    if reboot {
        s.push_str("cat /proc/sys/kernel/random/uuid > \"$R/proc/sys/kernel/random/boot_id\"\n");
    }
    s
}

/// Stubs every family shares: `dkms` reporting `module` built, `ofed_info` for DOCA, a
/// `systemctl reboot` that reboots into loaded drivers, and `modprobe` that loads them.
fn shared_stubs(w: &World, dkms_module: &str, kernel: &str) {
    let c = w.tmp.path().join("calls.log");
    let c = c.display();
    write_exec(
        &w.stubs.join("dkms"),
        &format!("#!/bin/sh\necho \"dkms $*\" >> '{c}'\necho '{dkms_module}/25.10, {kernel}, x86_64: installed'\n"),
    );
    write_exec(
        &w.stubs.join("ofed_info"),
        "#!/bin/sh\necho 'OFED-internal-25.10-1.2.8:'\n",
    );
    write_exec(
        &w.stubs.join("systemctl"),
        &format!("#!/bin/sh\necho \"systemctl $*\" >> '{c}'\nif [ \"$1\" = reboot ]; then\n{}fi\nexit 0\n", load_drivers_sh(true)),
    );
    write_exec(
        &w.stubs.join("modprobe"),
        &format!(
            "#!/bin/sh\necho \"modprobe $*\" >> '{c}'\n{}exit 0\n",
            load_drivers_sh(false)
        ),
    );
}

/// Stubs for an apt host: headers, DOCA and inbox installs change the fake root.
fn apt_stubs(w: &World, kernel: &str) {
    let calls = w.tmp.path().join("calls.log");
    let c = calls.display();
    write_exec(
        &w.stubs.join("apt-get"),
        &format!(
            "#!/bin/sh\necho \"apt-get $*\" >> '{c}'\nR=\"$IBDRIVER_ROOT\"\n\
             case \"$*\" in *linux-headers-{kernel}*) mkdir -p \"$R/usr/src/linux-headers-{kernel}\";; esac\n\
             case \"$*\" in *' doca-ofed'*|*' rdma-core'*) mkdir -p \"$R/usr/lib/x86_64-linux-gnu\"; : > \"$R/usr/lib/x86_64-linux-gnu/libibverbs.so.1\";; esac\n\
             case \"$*\" in *' doca-ofed'*) mkdir -p \"$R/usr/bin\" \"$R/opt/mellanox/doca\" \"$R/var/lib/dpkg\"; : > \"$R/usr/bin/ofed_info\"; \
               printf 'Package: rdma-core\\nStatus: install ok installed\\nVersion: 2510.0.9\\n\\nPackage: libibverbs1\\nStatus: install ok installed\\nVersion: 2510.0.9\\n\\n' >> \"$R/var/lib/dpkg/status\";; esac\n\
             exit 0\n"
        ),
    );
    write_exec(
        &w.stubs.join("apt-mark"),
        &format!("#!/bin/sh\necho \"apt-mark $*\" >> '{c}'\nexit 0\n"),
    );
    write_exec(
        &w.stubs.join("dpkg"),
        &format!("#!/bin/sh\necho \"dpkg $*\" >> '{c}'\nexit 0\n"),
    );
    write_exec(
        &w.stubs.join("apt-cache"),
        &format!("#!/bin/sh\necho \"apt-cache $*\" >> '{c}'\nexit 0\n"),
    );
    shared_stubs(w, "mlnx-ofed-kernel", kernel);
}

/// How many recorded calls contain `needle`.
fn count(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|l| l.contains(needle)).count()
}

fn call_lines(w: &World) -> Vec<String> {
    w.calls()
        .lines()
        .filter(|l| !l.starts_with("ip "))
        .map(str::to_string)
        .collect()
}

fn position(lines: &[String], needle: &str) -> usize {
    lines
        .iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no call with {needle:?} in {lines:#?}"))
}

/// A DOCA host package as the catalog would name it, served from loopback.
fn doca_package(w: &World) -> (Server, serde_json::Value) {
    let deb = b"!<arch>\ndebian-binary   doca-host test package".repeat(100);
    let server = Server::start(deb.clone());
    let public = json!({
        "stack": "doca",
        "package": {"url": format!("{}/doca-host_3.2.1-044000-25.10-ubuntu2204_amd64.deb", server.base), "sha256": sha(&deb)},
        "lockTimeoutSeconds": 5,
    });
    let _ = w;
    (server, public)
}

#[test]
fn doca_on_ubuntu_2204_installs_reboots_once_and_resumes() {
    let w = World::new("hbv3-noverbs", HB);
    let kernel = "5.15.0-1073-azure";
    apt_stubs(&w, kernel);
    let (_server, public) = doca_package(&w);
    w.settings(1, public);
    assert_eq!(code(&w.run("enable", 1)), 0);
    // The worker installs, records the reboot and asks for it; then it is gone.
    wait_reboot_request(&w, 1);
    w.wait_worker_gone(Duration::from_secs(10));
    let v = w.status(1).unwrap();
    assert_eq!(status_value(&v), "transitioning", "{v}");
    assert!(message(&v).contains("rebooting"), "{}", message(&v));

    let lines = call_lines(&w);
    let headers = position(&lines, &format!("linux-headers-{kernel}"));
    let dpkg = position(&lines, "dpkg -i");
    let doca = position(&lines, " doca-ofed");
    let dkms = position(&lines, &format!("dkms status -k {kernel}"));
    let reboot = position(&lines, "systemctl reboot");
    assert!(position(&lines, "apt-get update") < headers);
    assert!(
        headers < dpkg && dpkg < doca && doca < dkms && dkms < reboot,
        "{lines:#?}"
    );
    assert!(
        lines[dpkg].contains("/var/lib/infiniband-driver-linux/artifacts/"),
        "{}",
        lines[dpkg]
    );
    assert!(lines[headers].contains("build-essential") && lines[headers].contains("dkms"));

    // The agent runs enable again after the reboot, with the same sequence number.
    assert_eq!(code(&w.run("enable", 1)), 0);
    let v = w.wait_terminal(1, Duration::from_secs(30));
    assert_eq!(status_value(&v), "success", "{v}");
    assert_eq!(w.mrseq().as_deref(), Some("1"));
    let after = call_lines(&w);
    assert_eq!(count(&after, " doca-ofed"), 1, "the installer ran again");
    assert_eq!(count(&after, "systemctl reboot"), 1);
    let state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(w.data_dir().join("state.json")).unwrap())
            .unwrap();
    assert_eq!(state["reboots"], 1);
    assert!(
        !w.data_dir().join("artifacts").exists(),
        "artifacts are removed after success"
    );
    let hold = position(&after, "apt-mark hold");
    assert_eq!(after[hold], "apt-mark hold rdma-core libibverbs1");
    assert!(position(&after, &format!("dkms status -k {kernel}")) < hold);
    assert!(
        position(&after, &format!("update-initramfs -u -k {kernel}"))
            < position(&after, "systemctl reboot")
    );
    for m in ["iser", "isert", "srp"] {
        let conf = fs::read_to_string(w.root.join(format!("etc/dkms/{m}.conf"))).unwrap();
        assert_eq!(conf, "BUILD_DEPENDS=\"mlnx-ofed-kernel\"\n");
    }
    let health = &v[0]["status"]["substatus"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["formattedMessage"]["message"];
    assert!(
        health.as_str().unwrap().contains("\"kind\":\"doca\""),
        "{health}"
    );
}

#[test]
fn reboot_never_ends_in_a_clear_status_and_finishes_after_the_users_reboot() {
    let w = World::new("hbv3-noverbs", HB);
    apt_stubs(&w, "5.15.0-1073-azure");
    let (_server, mut public) = doca_package(&w);
    public["reboot"] = json!("never");
    w.settings(2, public);
    assert_eq!(code(&w.run("enable", 2)), 0);
    let v = w.wait_terminal(2, Duration::from_secs(30));
    assert_eq!(status_code(&v), 218, "{}", message(&v));
    assert!(message(&v).contains("reboot the VM"));
    assert!(!w.calls().contains("systemctl reboot"));
    // The user reboots: new boot id, drivers loaded.
    let sh = format!(
        "IBDRIVER_ROOT='{}'\n{}",
        w.root.display(),
        load_drivers_sh(true)
    );
    assert!(std::process::Command::new("sh")
        .args(["-c", &sh])
        .status()
        .unwrap()
        .success());
    assert_eq!(code(&w.run("enable", 2)), 0);
    let v = w.wait_terminal(2, Duration::from_secs(30));
    assert_eq!(status_value(&v), "success", "{v}");
    assert_eq!(count(&call_lines(&w), " doca-ofed"), 1);
}

#[test]
fn a_second_reboot_for_the_same_sequence_number_is_refused_as_a_loop() {
    let w = World::new("hbv3-noverbs", HB);
    apt_stubs(&w, "5.15.0-1073-azure");
    // The reboot happens (new boot id, drivers loaded) but the system still asks for another.
    let c = w.tmp.path().join("calls.log");
    write_exec(
        &w.stubs.join("systemctl"),
        &format!(
            "#!/bin/sh\necho \"systemctl $*\" >> '{}'\nif [ \"$1\" = reboot ]; then\n{}mkdir -p \"$R/run\"; : > \"$R/run/reboot-required\"\nfi\nexit 0\n",
            c.display(),
            load_drivers_sh(true)
        ),
    );
    let (_server, public) = doca_package(&w);
    w.settings(3, public);
    assert_eq!(code(&w.run("enable", 3)), 0);
    wait_reboot_request(&w, 1);
    w.wait_worker_gone(Duration::from_secs(10));
    // The agent's enable after the reboot: the boot id changed, the work resumes at activate.
    assert_eq!(code(&w.run("enable", 3)), 0);
    let v = w.wait_terminal(3, Duration::from_secs(30));
    assert_eq!(status_code(&v), 219, "{}", message(&v));
    assert_eq!(count(&call_lines(&w), "systemctl reboot"), 1);
    assert_eq!(count(&call_lines(&w), " doca-ofed"), 1);
    // Another enable for the same sequence number still does not reboot.
    assert_eq!(code(&w.run("enable", 3)), 0);
    w.wait_terminal(3, Duration::from_secs(30));
    assert_eq!(count(&call_lines(&w), "systemctl reboot"), 1);
}

#[test]
fn inbox_on_debian_12_installs_packages_and_loads_modules_without_reboot() {
    let w = World::new("hbv3-noverbs", HB);
    w.as_distro("debian-12", "6.1.0-28-cloud-amd64");
    // The inbox path loads modules; the mlx5_core already loaded must not force a reboot.
    apt_stubs(&w, "6.1.0-28-cloud-amd64");
    w.settings(1, json!({}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    let v = w.wait_terminal(1, Duration::from_secs(30));
    assert_eq!(status_value(&v), "success", "{v}");
    let lines = call_lines(&w);
    let install = position(&lines, "apt-get install");
    assert!(lines[install].contains("rdma-core") && lines[install].contains("infiniband-diags"));
    assert!(
        !lines.iter().any(|l| l.contains("linux-headers")),
        "inbox needs no headers"
    );
    assert!(position(&lines, "modprobe") > install);
    assert!(!w.calls().contains("systemctl reboot"));
}

#[test]
fn missing_exact_headers_stop_before_anything_is_built() {
    let w = World::new("hbv3-noverbs", HB);
    apt_stubs(&w, "5.15.0-1073-azure");
    let c = w.tmp.path().join("calls.log");
    write_exec(
        &w.stubs.join("apt-get"),
        &format!("#!/bin/sh\necho \"apt-get $*\" >> '{}'\ncase \"$*\" in *linux-headers-*) echo 'E: Unable to locate package linux-headers-5.15.0-1073-azure' >&2; exit 100;; esac\nexit 0\n", c.display()),
    );
    write_exec(
        &w.stubs.join("apt-cache"),
        &format!(
            "#!/bin/sh\necho \"apt-cache $*\" >> '{}'\nexit 100\n",
            c.display()
        ),
    );
    let (_server, public) = doca_package(&w);
    w.settings(1, public);
    assert_eq!(code(&w.run("enable", 1)), 0);
    let v = w.wait_terminal(1, Duration::from_secs(30));
    assert_eq!(status_code(&v), 214, "{}", message(&v));
    assert!(message(&v).contains("5.15.0-1073-azure"));
    assert!(!w.calls().contains("dpkg -i") && !w.calls().contains(" doca-ofed"));
}

#[test]
fn a_held_dpkg_lock_is_waited_for_then_times_out() {
    use std::io::BufRead;
    let w = World::new("hbv3-noverbs", HB);
    apt_stubs(&w, "5.15.0-1073-azure");
    let lock = w.root.join("var/lib/dpkg/lock-frontend");
    write(&lock, "");
    let mut holder = std::process::Command::new("python3")
        .args(["-c", "import fcntl,sys,time; f=open(sys.argv[1],'w'); fcntl.lockf(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"])
        .arg(&lock)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(holder.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let (_server, mut public) = doca_package(&w);
    public["lockTimeoutSeconds"] = json!(3);
    w.settings(1, public.clone());
    let start = std::time::Instant::now();
    assert_eq!(code(&w.run("enable", 1)), 0);
    let v = w.wait_terminal(1, Duration::from_secs(30));
    assert!(start.elapsed() >= Duration::from_secs(3));
    assert_eq!(status_code(&v), 213, "{}", message(&v));
    assert!(
        message(&v).contains("lock-frontend is locked by process"),
        "{}",
        message(&v)
    );
    assert!(
        !w.calls().contains("apt-get"),
        "nothing may touch packages while the lock is held"
    );

    // Released within the wait: the install goes ahead.
    holder.kill().unwrap();
    holder.wait().unwrap();
    w.settings(2, public);
    assert_eq!(code(&w.run("enable", 2)), 0);
    wait_reboot_request(&w, 2);
}

#[test]
fn secure_boot_prefers_signed_inbox_modules() {
    let w = World::new("hbv3-noverbs", HB);
    write(
        &w.root
            .join("sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"),
        [6u8, 0, 0, 0, 1],
    );
    let out = w.command(&["plan", "--json"], 0).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["plan"]["install"]["source"], "inbox");
    assert!(v["plan"]["install"]["reason"]
        .as_str()
        .unwrap()
        .contains("Secure Boot"));
    // Asking for DOCA explicitly is refused before anything changes.
    let s = w.tmp.path().join("s.json");
    write(&s, r#"{"stack":"doca"}"#);
    let out = w
        .command(&["plan", "--json", "--settings", &s.to_string_lossy()], 0)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["plan"]["action"]["failure"]["code"], "SecureBootBlocks");
}

/// Stubs for the rpm families: `pm` is dnf, zypper or tdnf.
fn rpm_stubs(w: &World, pm: &str, kernel: &str) {
    let c = w.tmp.path().join("calls.log");
    let c = c.display();
    write_exec(
        &w.stubs.join(pm),
        &format!(
            "#!/bin/sh\necho \"{pm} $*\" >> '{c}'\nR=\"$IBDRIVER_ROOT\"\n\
             case \"$*\" in *kernel-devel-{kernel}*|*-devel-*) mkdir -p \"$R/usr/src/kernels/{kernel}\" \"$R/lib/modules/{kernel}/build\";; esac\n\
             case \"$*\" in *' doca-ofed'*|*' rdma-core'*) mkdir -p \"$R/usr/lib64\"; : > \"$R/usr/lib64/libibverbs.so.1\";; esac\n\
             case \"$*\" in *' doca-ofed'*) mkdir -p \"$R/usr/bin\" \"$R/opt/mellanox/doca\"; : > \"$R/usr/bin/ofed_info\";; esac\n\
             exit 0\n"
        ),
    );
    write_exec(
        &w.stubs.join("rpm"),
        &format!("#!/bin/sh\necho \"rpm $*\" >> '{c}'\nexit 0\n"),
    );
    shared_stubs(w, "mlnx-ofa_kernel", kernel);
}

/// Wait (bounded) for the worker of `seq` to ask for the reboot.
fn wait_reboot_request(w: &World, seq: u64) {
    assert!(
        poll_for(Duration::from_secs(30), || w
            .calls()
            .contains("systemctl reboot")),
        "no reboot requested: {:?} {:?}",
        w.calls(),
        w.status(seq)
    );
}

fn run_to_success(w: &World, seq: u64) -> serde_json::Value {
    /// Where the first worker left the run: at its end, or waiting for the reboot it asked for.
    enum Then {
        Ended(serde_json::Value),
        Rebooting,
    }
    assert_eq!(code(&w.run("enable", seq)), 0);
    let then = wait_value(
        &format!("an outcome for {seq}"),
        Duration::from_secs(40),
        || {
            let v = w.status(seq)?;
            if matches!(status_value(&v).as_str(), "success" | "error") {
                return Some(Then::Ended(v));
            }
            (w.calls().contains("systemctl reboot")
                && !worker_running(&w.handler_dir)
                && message(&v).contains("rebooting"))
            .then_some(Then::Rebooting)
        },
    );
    match then {
        Then::Ended(v) => {
            w.wait_worker_gone(Duration::from_secs(10));
            v
        }
        Then::Rebooting => {
            // The agent's enable after the reboot.
            assert_eq!(code(&w.run("enable", seq)), 0);
            w.wait_terminal(seq, Duration::from_secs(30))
        }
    }
}

#[test]
fn doca_on_almalinux_810_uses_rpm_and_dnf() {
    let w = World::new("hbv3-noverbs", HB);
    let kernel = "4.18.0-553.el8_10.x86_64";
    w.as_distro("almalinux-8.10", kernel);
    rpm_stubs(&w, "dnf", kernel);
    let repo = "[baseos]\nname=AlmaLinux 8.10 - BaseOS\nmirrorlist=https://mirrors.almalinux.org/mirrorlist/8.10/baseos\n\n[appstream]\nname=AlmaLinux 8.10 - AppStream\n";
    w.set_file("etc/yum.repos.d/almalinux-baseos.repo", repo);
    let rpm = b"\xed\xab\xee\xdb doca-host rpm".repeat(100);
    let server = Server::start(rpm.clone());
    w.settings(1, json!({"stack": "doca", "lockTimeoutSeconds": 5,
        "package": {"url": format!("{}/doca-host-3.2.1-044000_25.10_rhel8.x86_64.rpm", server.base), "sha256": sha(&rpm)}}));
    let v = run_to_success(&w, 1);
    assert_eq!(status_value(&v), "success", "{v}");
    let lines = call_lines(&w);
    let headers = position(&lines, &format!("kernel-devel-{kernel}"));
    let add = position(&lines, "rpm -Uvh --replacepkgs");
    let doca = position(&lines, "dnf install -y -q doca-ofed");
    let dkms = position(&lines, "dkms status");
    assert!(headers < add && add < doca && doca < dkms, "{lines:#?}");
    assert!(lines[headers].contains("elfutils-libelf-devel"));
    let repo = fs::read_to_string(w.root.join("etc/yum.repos.d/almalinux-baseos.repo")).unwrap();
    assert!(repo.contains("mirrorlist=https://mirrors.almalinux.org/mirrorlist/8.10/baseos\nexclude=rdma-core* libibverbs*"), "{repo}");
    assert!(
        repo.ends_with("[appstream]\nname=AlmaLinux 8.10 - AppStream\n"),
        "{repo}"
    );
}

#[test]
fn inbox_on_sles_and_azure_linux() {
    for (osf, pm, kernel, expect) in [
        (
            "sles-15-sp5",
            "zypper",
            "5.14.21-150500.55.65-azure",
            "zypper --non-interactive install --no-recommends rdma-core",
        ),
        (
            "azurelinux-3.0",
            "tdnf",
            "6.6.57.1-7.azl3",
            "tdnf install -y -q rdma-core",
        ),
    ] {
        let w = World::new("hbv3-noverbs", HB);
        w.as_distro(osf, kernel);
        rpm_stubs(&w, pm, kernel);
        w.settings(1, json!({}));
        let v = run_to_success(&w, 1);
        assert_eq!(status_value(&v), "success", "{osf}: {v}");
        let lines = call_lines(&w);
        assert!(
            lines.iter().any(|l| l.starts_with(expect)),
            "{osf}: {lines:#?}"
        );
        assert!(!w.calls().contains("systemctl reboot"), "{osf}");
    }
}

/// A MLNX_OFED bundle whose installer records its arguments and installs into the fake root.
fn ofed_bundle(exit_code: i32) -> Vec<u8> {
    use std::io::Write;
    let script = format!(
        "#!/bin/sh\necho \"mlnxofedinstall $*\" >> \"$IBDRIVER_TEST_CALLS\"\n[ {exit_code} -eq 0 ] || exit {exit_code}\nR=\"$IBDRIVER_ROOT\"\nmkdir -p \"$R/usr/bin\" \"$R/usr/lib/x86_64-linux-gnu\"\n: > \"$R/usr/bin/ofed_info\"\n: > \"$R/usr/lib/x86_64-linux-gnu/libibverbs.so.1\"\nexit 0\n"
    );
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(script.len() as u64);
    h.set_mode(0o755);
    h.set_cksum();
    b.append_data(
        &mut h,
        "MLNX_OFED_LINUX-4.9-6.0.6.0-ubuntu20.04-x86_64/mlnxofedinstall",
        script.as_bytes(),
    )
    .unwrap();
    let raw = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    gz.finish().unwrap()
}

fn cx3_world(exit_code: i32) -> (World, Server) {
    let w = World::new("nc24rsv3", "Standard_NC24rs_v3");
    // The same VM without drivers: no user space, no registered device.
    fs::remove_file(w.root.join("var/lib/dpkg/status")).unwrap();
    fs::remove_file(w.root.join("usr/lib/x86_64-linux-gnu/libibverbs.so.1")).unwrap();
    fs::remove_dir_all(w.root.join("sys/bus/pci/devices/0002:00:02.0/infiniband")).unwrap();
    apt_stubs(&w, "5.4.0-1109-azure");
    write_exec(
        &w.stubs.join("ofed_info"),
        "#!/bin/sh\necho 'MLNX_OFED_LINUX-4.9-6.0.6.0:'\n",
    );
    let fix = fixtures().join("hosts/nc24rsv3");
    let dev = "sys/bus/pci/devices/0002:00:02.0";
    let c = w.tmp.path().join("calls.log");
    write_exec(
        &w.stubs.join("systemctl"),
        &format!(
            "#!/bin/sh\necho \"systemctl $*\" >> '{}'\nif [ \"$1\" = reboot ]; then cp -r '{}/{dev}/infiniband' \"$IBDRIVER_ROOT/{dev}/\"; cat /proc/sys/kernel/random/uuid > \"$IBDRIVER_ROOT/proc/sys/kernel/random/boot_id\"; fi\nexit 0\n",
            c.display(),
            fix.display()
        ),
    );
    let bundle = ofed_bundle(exit_code);
    let server = Server::start(bundle.clone());
    w.settings(1, json!({"stack": "mlnx-ofed", "version": "4.9-6.0.6.0", "lockTimeoutSeconds": 5,
        "package": {"url": format!("{}/MLNX_OFED_LINUX-4.9-6.0.6.0-ubuntu20.04-x86_64.tgz", server.base), "sha256": sha(&bundle)}}));
    (w, server)
}

#[test]
fn mlnx_ofed_49_for_connectx3_pro_on_ubuntu_2004() {
    let (w, _server) = cx3_world(0);
    let out = w
        .command(&["enable"], 1)
        .env("IBDRIVER_TEST_CALLS", w.tmp.path().join("calls.log"))
        .output()
        .unwrap();
    assert_eq!(code(&out), 0);
    wait_reboot_request(&w, 1);
    w.wait_worker_gone(Duration::from_secs(10));
    let lines = call_lines(&w);
    let ofed = position(&lines, "mlnxofedinstall");
    assert!(
        lines[ofed].contains("--without-fw-update"),
        "{}",
        lines[ofed]
    );
    assert!(lines[ofed].contains("--add-kernel-support --kernel 5.4.0-1109-azure --kernel-sources /usr/src/linux-headers-5.4.0-1109-azure"));
    assert!(position(&lines, "linux-headers-5.4.0-1109-azure") < ofed);
    assert_eq!(
        code(
            &w.command(&["enable"], 1)
                .env("IBDRIVER_TEST_CALLS", w.tmp.path().join("calls.log"))
                .output()
                .unwrap()
        ),
        0
    );
    let v = w.wait_terminal(1, Duration::from_secs(30));
    assert_eq!(status_value(&v), "success", "{v}");
    assert_eq!(count(&call_lines(&w), "mlnxofedinstall"), 1);
}

#[test]
fn mlnxofedinstall_exit_codes_are_named() {
    let (w, _server) = cx3_world(172);
    let out = w
        .command(&["enable"], 1)
        .env("IBDRIVER_TEST_CALLS", w.tmp.path().join("calls.log"))
        .output()
        .unwrap();
    assert_eq!(code(&out), 0);
    let v = w.wait_terminal(1, Duration::from_secs(30));
    assert_eq!(status_code(&v), 216, "{}", message(&v));
    assert!(
        message(&v).contains("mlnxofedinstall exited 172: prerequisites are not met"),
        "{}",
        message(&v)
    );
}

#[test]
fn doca_on_ubuntu_2404_rocky_95_and_rhel_810() {
    for (osf, kernel, pm, pkg) in [
        (
            "ubuntu-24.04",
            "6.8.0-1021-azure",
            "apt-get",
            "doca-host_3.2.3-019000-25.10-ubuntu2404_amd64.deb",
        ),
        (
            "rocky-9.5",
            "5.14.0-503.el9_5.x86_64",
            "dnf",
            "doca-host-3.2.2-035000_25.10_rhel9.x86_64.rpm",
        ),
        (
            "rhel-8.10",
            "4.18.0-553.el8_10.x86_64",
            "dnf",
            "doca-host-3.2.1-044000_25.10_rhel8.x86_64.rpm",
        ),
    ] {
        let w = World::new("hbv3-noverbs", HB);
        w.as_distro(osf, kernel);
        if pm == "apt-get" {
            apt_stubs(&w, kernel);
        } else {
            rpm_stubs(&w, pm, kernel);
        }
        let body = format!("{pkg} contents").repeat(500).into_bytes();
        let server = Server::start(body.clone());
        w.settings(
            1,
            json!({"stack": "doca", "lockTimeoutSeconds": 5,
            "package": {"url": format!("{}/{pkg}", server.base), "sha256": sha(&body)}}),
        );
        let v = run_to_success(&w, 1);
        assert_eq!(status_value(&v), "success", "{osf}: {v}");
        let lines = call_lines(&w);
        let install = position(&lines, " doca-ofed");
        let headers = if pm == "apt-get" {
            format!("linux-headers-{kernel}")
        } else {
            format!("kernel-devel-{kernel}")
        };
        assert!(position(&lines, &headers) < install, "{osf}: {lines:#?}");
        assert!(
            lines[position(&lines, pkg)].contains("/artifacts/"),
            "{osf}"
        );
        assert_eq!(count(&lines, "systemctl reboot"), 1, "{osf}");
    }
}

#[test]
fn an_unfinished_install_is_carried_on_not_mistaken_for_success() {
    // The kernel's own module already registers the device (as on stock images), so the host
    // "looks ready" once ofed_info exists; a DKMS failure must still not end in success.
    let w = World::new("hbv3", HB);
    let kernel = "5.15.0-1073-azure";
    apt_stubs(&w, kernel);
    let c = w.tmp.path().join("calls.log");
    write_exec(&w.stubs.join("dkms"), &format!("#!/bin/sh\necho \"dkms $*\" >> '{}'\necho 'mlnx-ofed-kernel/25.10, {kernel}, x86_64: built'\n", c.display()));
    w.set_file(
        "var/lib/dkms/mlnx-ofed-kernel/25.10/build/make.log",
        "  CC [M]  build/mlx5_core.o\nbuild/mlx5_core.c:24:2: error: #error \"no compile\"\n\
         make[1]: *** [Makefile.build:255: mlx5_core.o] Error 1\nmake: Leaving directory '/usr/src/h'\n",
    );
    let (_server, public) = doca_package(&w);
    w.settings(1, public);
    assert_eq!(code(&w.run("enable", 1)), 0);
    let v = w.wait_terminal(1, Duration::from_secs(30));
    assert_eq!(status_code(&v), 217, "{}", message(&v));
    // The compiler's line first (kbuild's log ends with make's noise), then the log's end.
    assert!(
        message(&v).contains(&format!("DKMS did not build mlnx-ofed-kernel for kernel {kernel}; first error: build/mlx5_core.c:24:2: error: #error \"no compile\"; make.log ends: ")),
        "{}",
        message(&v)
    );
    assert!(
        message(&v).ends_with("make: Leaving directory '/usr/src/h'"),
        "{}",
        message(&v)
    );
    // enable again with the same sequence number: the install is resumed, not skipped.
    assert_eq!(code(&w.run("enable", 1)), 0);
    let v = w.wait_terminal(1, Duration::from_secs(30));
    assert_eq!(status_code(&v), 217, "{}", message(&v));
    // DKMS fixed: the install finishes, activates (one reboot) and verifies.
    shared_stubs(&w, "mlnx-ofed-kernel", kernel);
    let v = run_to_success(&w, 1);
    assert_eq!(status_value(&v), "success", "{v}");
    let lines = call_lines(&w);
    assert_eq!(count(&lines, " doca-ofed"), 1, "{lines:#?}");
    assert_eq!(count(&lines, "systemctl reboot"), 1);
}

#[test]
fn the_same_choice_under_a_new_sequence_number_neither_reinstalls_nor_reboots() {
    let w = World::new("hbv3-noverbs", HB);
    apt_stubs(&w, "5.15.0-1073-azure");
    let (_server, public) = doca_package(&w);
    w.settings(1, public.clone());
    assert_eq!(status_value(&run_to_success(&w, 1)), "success");
    w.settings(2, public);
    let v = run_to_success(&w, 2);
    assert_eq!(status_value(&v), "success", "{v}");
    let lines = call_lines(&w);
    assert_eq!(count(&lines, " doca-ofed"), 1, "{lines:#?}");
    assert_eq!(count(&lines, "systemctl reboot"), 1, "{lines:#?}");
}

#[test]
fn twenty_enables_of_one_sequence_number_at_once_run_each_stage_once() {
    let w = World::new("hbv3-noverbs", HB);
    w.as_distro("debian-12", "6.1.0-28-cloud-amd64");
    apt_stubs(&w, "6.1.0-28-cloud-amd64");
    w.settings(1, json!({}));
    let enables: Vec<_> = (0..20)
        .map(|_| {
            w.command(&["enable"], 1)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for e in enables {
        let out = e.wait_with_output().unwrap();
        assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    }
    let v = w.wait_terminal(1, Duration::from_secs(60));
    assert_eq!(status_value(&v), "success", "{v}");
    w.wait_worker_gone(Duration::from_secs(60));
    let lines = call_lines(&w);
    assert_eq!(count(&lines, "apt-get install"), 1, "{lines:#?}");
    // One begin per planned stage: no stage ran twice, and no enable put back an older
    // checkpoint over the worker's.
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(w.data_dir().join("state.json")).unwrap()).unwrap();
    let planned = state["install_stages"].as_array().unwrap().len();
    assert_eq!(
        state["attempts"].as_u64().unwrap() as usize,
        planned,
        "{state:#}"
    );
    assert_eq!(state["completed"].as_array().unwrap().len(), planned);
    assert_eq!(status_value(&w.status(1).unwrap()), "success");
}

#[test]
fn enable_never_writes_the_checkpoint_itself() {
    // Refused in preflight: enable's own verdict; only a worker (under its lock) writes state.json.
    let w = World::new("dseries", "Standard_D4s_v5");
    w.settings(1, json!({}));
    assert_eq!(code(&w.run("enable", 1)), 11);
    assert_eq!(status_code(&w.status(1).unwrap()), 11);
    assert!(!w.data_dir().join("state.json").exists());
}

#[test]
fn the_summary_log_names_the_run_that_asks_for_the_reboot() {
    let w = World::new("hbv3-noverbs", HB);
    apt_stubs(&w, "5.15.0-1073-azure");
    let (_server, public) = doca_package(&w);
    w.settings(1, public);
    assert_eq!(code(&w.run("enable", 1)), 0);
    wait_reboot_request(&w, 1);
    w.wait_worker_gone(Duration::from_secs(10));
    let summary = fs::read_to_string(w.root.join("var/log/azure/ib-vmext-status")).unwrap();
    assert!(
        summary.contains("Enable seq=1: rebooting to activate the drivers"),
        "{summary}"
    );
}

/// `ibdriver apply` from cloud-init's `runcmd` (user-data at first boot): cloud-init cannot
/// finish before its own child does, so apply must not wait for it, or it runs out
/// `lockTimeoutSeconds` and fails with 213 on every first boot. Outside cloud-init it waits.
#[test]
fn apply_under_cloud_init_does_not_wait_for_cloud_init_to_finish() {
    let w = World::new("hbv3-noverbs", HB);
    apt_stubs(&w, "5.15.0-1073-azure");
    w.set_file("run/cloud-init/enabled", "");
    let (_server, mut public) = doca_package(&w);
    public["lockTimeoutSeconds"] = json!(2);
    let file = w.tmp.path().join("apply-settings.json");
    write(&file, public.to_string());
    // A parent process named cloud-init, as cloud-init's runcmd script is.
    let cloud_init = w.tmp.path().join("bin/cloud-init");
    write_exec(&cloud_init, "#!/bin/sh\n\"$@\"\n");
    let apply = |under_cloud_init: bool| {
        let c = w.command(&["apply", "--settings", file.to_str().unwrap()], 0);
        let mut run = if under_cloud_init {
            wrapped(&c, &cloud_init, &[])
        } else {
            c
        };
        run.output().unwrap()
    };

    let out = apply(false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), 14, "{stdout}");
    assert!(
        stdout.contains("213") && stdout.contains("cloud-init has not finished"),
        "{stdout}"
    );
    assert!(!w.calls().contains("apt-get"), "{}", w.calls());

    let out = apply(true);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!stdout.contains("213"), "{stdout}\n{stderr}");
    assert!(
        w.calls().contains("apt-get"),
        "{}\n{stdout}\n{stderr}",
        w.calls()
    );
    // apply keeps its log in the data directory.
    let log = fs::read_to_string(w.data_dir().join("log/ibdriver.log")).unwrap_or_default();
    assert!(log.contains("running under cloud-init"), "{log}");
}
