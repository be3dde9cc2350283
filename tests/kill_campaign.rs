//! The kill campaign: the worker is killed with SIGKILL at 52 points spread over every stage
//! (inside the download and inside the installer too), enable runs again each time, and every
//! run must converge to the same final state. An installer that finished is never run again,
//! and the status file parses at every moment.

#[path = "common/artifact_server.rs"]
mod artifact_server;
mod common;

use artifact_server::Server;
use common::*;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::fs;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KILL_POINTS: u64 = 52;
const STEP_MS: u64 = 22;

fn worker_pid(handler_dir: &std::path::Path) -> Option<i32> {
    let needle = handler_dir.to_string_lossy().to_string();
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let c = fs::read(e.path().join("cmdline")).ok()?;
        let c = String::from_utf8_lossy(&c);
        (c.contains("worker") && c.contains(&needle))
            .then(|| e.file_name().to_string_lossy().parse().ok())
            .flatten()
    })
}

/// A DOCA install on Ubuntu 22.04 whose steps take long enough to be hit: a paced download and
/// an installer that logs its start and its end. The simulated reboot also ends every worker
/// of this handler, as a real shutdown would.
fn world(server: &Server, deb: &[u8]) -> World {
    let w = World::new("hbv3-noverbs", "Standard_HB120rs_v3");
    let c = w.tmp.path().join("calls.log");
    let c = c.display();
    let fix = fixtures().join("hosts/hbv3");
    let dev = "sys/bus/pci/devices/0101:00:00.0";
    let load = format!(
        "cp -r '{f}/{dev}/infiniband' \"$R/{dev}/\" 2>/dev/null; mkdir -p \"$R/{dev}/net\"; cp -r '{f}/{dev}/net/ib0' \"$R/{dev}/net/\" 2>/dev/null; cp '{f}/proc/modules' \"$R/proc/modules\"",
        f = fix.display()
    );
    write_exec(
        &w.stubs.join("apt-get"),
        &format!(
            "#!/bin/sh\nR=\"$IBDRIVER_ROOT\"\necho \"apt-get $*\" >> '{c}'\nsleep 0.05\n\
             case \"$*\" in *linux-headers-*) mkdir -p \"$R/usr/src/linux-headers-5.15.0-1073-azure\";; esac\n\
             case \"$*\" in *' doca-ofed'*) echo 'installer start' >> '{c}'; sleep 0.3; mkdir -p \"$R/usr/bin\" \"$R/opt/mellanox/doca\" \"$R/usr/lib/x86_64-linux-gnu\"; : > \"$R/usr/bin/ofed_info\"; : > \"$R/usr/lib/x86_64-linux-gnu/libibverbs.so.1\"; echo 'installer done' >> '{c}';; esac\nexit 0\n"
        ),
    );
    write_exec(
        &w.stubs.join("dpkg"),
        &format!("#!/bin/sh\necho \"dpkg $*\" >> '{c}'\nsleep 0.05\nexit 0\n"),
    );
    write_exec(
        &w.stubs.join("dkms"),
        "#!/bin/sh\necho 'mlnx-ofed-kernel/25.10, 5.15.0-1073-azure, x86_64: installed'\n",
    );
    write_exec(
        &w.stubs.join("ofed_info"),
        "#!/bin/sh\necho 'OFED-internal-25.10-1.2.8:'\n",
    );
    write_exec(
        &w.stubs.join("systemctl"),
        // A reboot is one event: the first request starts it (the run/rebooting directory is
        // the atomic test-and-set) and any request during the shutdown is a no-op; it ends every
        // worker, loads the new drivers and changes the boot id, as a real reboot would.
        &format!(
            "#!/bin/sh\necho \"systemctl $*\" >> '{c}'\nR=\"$IBDRIVER_ROOT\"\n\
             if [ \"$1\" = reboot ]; then\n\
               mkdir -p \"$R/run\"\n\
               mkdir \"$R/run/rebooting\" 2>/dev/null || exit 0\n\
               echo \"reboot requested from $(cat \"$R/proc/sys/kernel/random/boot_id\")\" >> '{c}'\n\
               sleep 0.1\n\
               pkill -9 -f -- 'worker --handler-dir {hd} '\n\
               {load}\n\
               cat /proc/sys/kernel/random/uuid > \"$R/proc/sys/kernel/random/boot_id\"\n\
               rmdir \"$R/run/rebooting\"\n\
             fi\nexit 0\n",
            hd = w.handler_dir.display()
        ),
    );
    let sha: String = Sha256::digest(deb)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    w.settings(1, json!({"stack": "doca", "lockTimeoutSeconds": 5,
        "package": {"url": format!("{}/doca-host_3.2.1-044000-25.10-ubuntu2204_amd64.deb", server.base), "sha256": sha}}));
    w
}

/// Run enable until the sequence number is terminal, as the agent would (after each worker
/// exit, including a reboot, it runs enable again).
fn converge(w: &World) -> serde_json::Value {
    for _ in 0..6 {
        // The agent starts again only once the reboot is over.
        let rebooting = w.root.join("run/rebooting");
        let deadline = Instant::now() + Duration::from_secs(10);
        while rebooting.exists() {
            assert!(Instant::now() < deadline, "reboot never finished");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(code(&w.run("enable", 1)), 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(v) = w.status(1) {
                let s = status_value(&v);
                if (s == "success" || s == "error") && worker_pid(&w.handler_dir).is_none() {
                    return v;
                }
            }
            if worker_pid(&w.handler_dir).is_none()
                && w.status(1)
                    .is_some_and(|v| status_value(&v) == "transitioning")
            {
                // Worker gone without a terminal status: rebooted (or killed); enable again.
                std::thread::sleep(Duration::from_millis(100));
                if worker_pid(&w.handler_dir).is_none() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "no progress: {:?}", w.status(1));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("did not converge: {:?}", w.status(1));
}

#[test]
fn killed_at_52_points_every_run_converges() {
    let deb = b"!<arch>\ndebian-binary   kill campaign package ".repeat(40_000); // ~1.7 MB
    let server = Server::start_paced(deb.clone(), Duration::from_millis(8));
    let mut killed_in = std::collections::BTreeMap::<String, u32>::new();
    for i in 0..KILL_POINTS {
        let w = world(&server, &deb);
        // Parse the status file continuously while this run goes on.
        let stop = Arc::new(AtomicBool::new(false));
        let bad = Arc::new(AtomicUsize::new(0));
        let reader = {
            let (stop, bad, path) = (stop.clone(), bad.clone(), w.status_path(1));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(text) = fs::read_to_string(&path) {
                        if serde_json::from_str::<serde_json::Value>(&text).is_err() {
                            bad.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        assert_eq!(code(&w.run("enable", 1)), 0);
        std::thread::sleep(Duration::from_millis(i * STEP_MS));
        if let Some(pid) = worker_pid(&w.handler_dir) {
            let stage = fs::read_to_string(w.data_dir().join("state.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v["current"].as_str().map(str::to_string))
                .unwrap_or_else(|| "between stages".into());
            std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .unwrap();
            *killed_in.entry(stage).or_default() += 1;
        } else {
            *killed_in.entry("after the worker".into()).or_default() += 1;
        }
        let v = converge(&w);
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap();
        assert_eq!(status_value(&v), "success", "kill point {i}: {v}");
        assert_eq!(
            bad.load(Ordering::Relaxed),
            0,
            "kill point {i}: a reader saw a half-written status"
        );
        let calls = w.calls();
        // Once an installer run finished, it never starts again.
        let done_at = calls.find("installer done").expect("installer finished");
        assert!(
            !calls[done_at..].contains("installer start"),
            "kill point {i}: installer ran again after finishing\n{calls}"
        );
        // One reboot per sequence number: every request came from the first boot (a request
        // repeated by a worker that replaced a killed one, before the reboot happened, is the
        // same reboot).
        let boots: std::collections::BTreeSet<&str> = calls
            .lines()
            .filter_map(|l| l.strip_prefix("reboot requested from "))
            .collect();
        assert_eq!(
            boots.len(),
            1,
            "kill point {i}: reboots from several boots\n{calls}"
        );
        let state: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(w.data_dir().join("state.json")).unwrap())
                .unwrap();
        assert_eq!(
            state["completed"].as_array().unwrap().len(),
            10,
            "kill point {i}: {state}"
        );
        assert!(
            !w.data_dir()
                .join("staging")
                .read_dir()
                .is_ok_and(|mut d| d.next().is_some()),
            "kill point {i}: staging left behind"
        );
    }
    eprintln!("kill points by stage: {killed_in:?}");
    for stage in ["fetch", "install"] {
        assert!(
            killed_in.get(stage).copied().unwrap_or(0) >= 2,
            "too few kills inside {stage}: {killed_in:?}"
        );
    }
    assert!(
        killed_in.len() >= 6,
        "kills not spread over the stages: {killed_in:?}"
    );
}
