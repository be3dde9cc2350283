//! The crash-point campaign: the worker dies (SIGKILL to itself, no destructors, no flush) at
//! each of its effects in turn (every file write before and after its rename, every append,
//! every child started, every stage boundary; `handler/sys/faultpoint.rs`), then enable runs again,
//! as the agent would, until the sequence number is done. Every run must converge to the same
//! final state: success, the installer started once and never again, one reboot, every
//! stage completed, staging cleaned, and a status file that parses at every moment.
//!
//! A clean run first learns the effects of each worker (the first one ends in the activation
//! reboot, the second finishes after it); then for every worker w and every k, a fresh world
//! whose w-th worker dies at its k-th effect. Built only with `--features fault-injection`.

#[path = "common/artifact_server.rs"]
mod artifact_server;
mod common;

use artifact_server::Server;
use common::*;
use ibdriver::sys::faultpoint::{AT_VAR, LOG_VAR};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Rounds of enable one sequence must converge in (a crash, the reboot, what follows).
const ROUNDS: usize = 8;
/// Worlds run at once: each is independent and mostly waits on its stubs.
const THREADS: usize = 4;

/// The artifact: 5 MiB, so that no read (at most 256 KiB) spans two of the 5 % progress steps
/// and the download always writes the same progress statuses, whatever the timing.
/// Made once (with its SHA-256) for every world.
fn artifact() -> &'static (Vec<u8>, String) {
    static ARTIFACT: OnceLock<(Vec<u8>, String)> = OnceLock::new();
    ARTIFACT.get_or_init(|| {
        let mut deb =
            b"!<arch>\ndebian-binary   crash campaign package ".repeat(5 * 1024 * 1024 / 46);
        deb.resize(5 * 1024 * 1024, b'.');
        let sha = Sha256::digest(&deb)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        (deb, sha)
    })
}

struct Case {
    w: World,
    _server: Server,
    fault_log: PathBuf,
}

/// The pids of the workers of this handler directory.
fn worker_pids(handler_dir: &Path) -> Vec<i32> {
    let needle = format!("worker --handler-dir {} ", handler_dir.display());
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let c = fs::read(e.path().join("cmdline")).ok()?;
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            c.contains(&needle)
                .then(|| e.file_name().to_string_lossy().parse().ok())
                .flatten()
        })
        .collect()
}

/// A DOCA install on Ubuntu 22.04 replacing loaded drivers (so it reboots once), with an
/// installer that logs its start and its end and runs long enough to outlive a worker killed
/// right after starting it. The simulated reboot ends every worker of this handler, loads the
/// new drivers and changes the boot id.
fn case() -> Case {
    let (deb, sha) = artifact();
    let server = Server::start(deb.clone());
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
            "#!/bin/sh\nR=\"$IBDRIVER_ROOT\"\necho \"apt-get $*\" >> '{c}'\n\
             case \"$*\" in *linux-headers-*) mkdir -p \"$R/usr/src/linux-headers-5.15.0-1073-azure\";; esac\n\
             case \"$*\" in *' doca-ofed'*) echo 'installer start' >> '{c}'; sleep 0.8; mkdir -p \"$R/usr/bin\" \"$R/opt/mellanox/doca\" \"$R/usr/lib/x86_64-linux-gnu\"; : > \"$R/usr/bin/ofed_info\"; : > \"$R/usr/lib/x86_64-linux-gnu/libibverbs.so.1\"; echo 'installer done' >> '{c}';; esac\nexit 0\n"
        ),
    );
    write_exec(
        &w.stubs.join("dpkg"),
        &format!("#!/bin/sh\necho \"dpkg $*\" >> '{c}'\nexit 0\n"),
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
        // the atomic test-and-set) and a request during the shutdown is a no-op. The workers
        // are found by their exact command line, which names this world's handler directory.
        &format!(
            "#!/bin/sh\necho \"systemctl $*\" >> '{c}'\nR=\"$IBDRIVER_ROOT\"\n\
             if [ \"$1\" = reboot ]; then\n\
               mkdir -p \"$R/run\"\n\
               mkdir \"$R/run/rebooting\" 2>/dev/null || exit 0\n\
               echo \"reboot requested from $(cat \"$R/proc/sys/kernel/random/boot_id\")\" >> '{c}'\n\
               for p in $(pgrep -f -- 'worker --handler-dir {hd} '); do kill -9 \"$p\" 2>/dev/null; done\n\
               {load}\n\
               cat /proc/sys/kernel/random/uuid > \"$R/proc/sys/kernel/random/boot_id\"\n\
               rmdir \"$R/run/rebooting\"\n\
             fi\nexit 0\n",
            hd = w.handler_dir.display()
        ),
    );
    w.settings(1, json!({"stack": "doca", "lockTimeoutSeconds": 5,
        "package": {"url": format!("{}/doca-host_3.2.1-044000-25.10-ubuntu2204_amd64.deb", server.base), "sha256": sha}}));
    let fault_log = w.tmp.path().join("effects.log");
    Case {
        w,
        _server: server,
        fault_log,
    }
}

/// One logged effect: `<pid> <ordinal> <effect> <subject>[ (crash)]`.
#[derive(Debug, Clone)]
struct Effect {
    pid: String,
    label: String,
    crash: bool,
}

fn effects(log: &Path) -> Vec<Effect> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ' ');
            let pid = it.next()?.to_string();
            it.next()?;
            let rest = it.next()?;
            let (label, crash) = match rest.strip_suffix(" (crash)") {
                Some(r) => (r.to_string(), true),
                None => (rest.to_string(), false),
            };
            Some(Effect {
                pid,
                label: timeless(&label),
                crash,
            })
        })
        .collect()
}

/// Event files are named by their timestamp: one name for all of them, so runs compare.
fn timeless(label: &str) -> String {
    label
        .split(' ')
        .map(|w| match w.split_once('.') {
            Some((stem, ext)) if stem.len() >= 10 && stem.bytes().all(|b| b.is_ascii_digit()) => {
                format!("<time>.{ext}")
            }
            _ => w.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run enable until the sequence number is terminal, as the agent would (after each worker
/// exit, the reboot included, it runs enable again). The worker started by enable number
/// `fault.0` (from 1) dies at its effect number `fault.1`. Returns the final status and the
/// number of enables it took.
fn converge(
    case: &Case,
    fault: Option<(usize, u64)>,
) -> Result<(serde_json::Value, usize), String> {
    let w = &case.w;
    for round in 1..=ROUNDS {
        // The agent starts again only once the reboot is over.
        let rebooting = w.root.join("run/rebooting");
        if !poll_for(Duration::from_secs(20), || !rebooting.exists()) {
            return Err("the simulated reboot never finished".into());
        }
        let mut cmd = w.command(&["enable"], 1);
        cmd.env(LOG_VAR, &case.fault_log);
        if let Some((_, k)) = fault.filter(|(at, _)| *at == round) {
            cmd.env(AT_VAR, k.to_string());
        }
        let out = cmd.output().unwrap();
        if code(&out) != 0 {
            return Err(format!(
                "enable {round} exited {}: {}",
                code(&out),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // Worker gone without a terminal status: it crashed or the VM rebooted. It counts once
        // no worker shows for five looks in a row, as a reboot requested by a worker that just
        // died may still be starting one.
        let mut quiet = 0;
        let seen = poll_value(Duration::from_secs(60), || {
            let gone = worker_pids(&w.handler_dir).is_empty();
            let status = w.status(1);
            match (gone, status.as_ref().map(status_value).as_deref()) {
                (true, Some("success" | "error")) => return status.map(Some),
                (true, Some("transitioning")) => quiet += 1,
                _ => quiet = 0,
            }
            (quiet >= 5).then_some(None)
        });
        match seen {
            Some(Some(terminal)) => return Ok((terminal, round)),
            Some(None) => {}
            None => {
                return Err(format!(
                    "no progress after enable {round}: {:?}",
                    w.status(1)
                ))
            }
        }
    }
    Err(format!(
        "did not converge in {ROUNDS} enables: {:?}",
        case.w.status(1)
    ))
}

/// Everything a converged run must show; `Err` says what is wrong.
fn check(case: &Case, status: &serde_json::Value) -> Result<(), String> {
    let w = &case.w;
    if status_value(status) != "success" {
        return Err(format!("ended in {status}"));
    }
    let calls = w.calls();
    // Once an installer run finished, it never starts again.
    let done_at = calls
        .find("installer done")
        .ok_or_else(|| format!("the installer never finished\n{calls}"))?;
    if calls[done_at..].contains("installer start") {
        return Err(format!("the installer ran again after finishing\n{calls}"));
    }
    // Nor while it still runs: an installer that outlived a crashed worker is waited for.
    if calls.matches("installer start").count() > 1 {
        return Err(format!("the installer was started twice\n{calls}"));
    }
    // One reboot for the sequence number: every request came from the first boot (a request
    // repeated by a worker that replaced a crashed one, before the reboot happened, is the
    // same reboot).
    let boots: BTreeSet<&str> = calls
        .lines()
        .filter_map(|l| l.strip_prefix("reboot requested from "))
        .collect();
    if boots.len() != 1 {
        return Err(format!(
            "reboots requested from {} boots\n{calls}",
            boots.len()
        ));
    }
    let state: serde_json::Value = fs::read_to_string(w.data_dir().join("state.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or("state.json missing or unreadable")?;
    let completed = state["completed"].as_array().map_or(0, Vec::len);
    if completed != 10 {
        return Err(format!("{completed} stages completed: {state}"));
    }
    if w.data_dir()
        .join("staging")
        .read_dir()
        .is_ok_and(|mut d| d.next().is_some())
    {
        return Err("staging left behind".into());
    }
    if w.mrseq().as_deref() != Some("1") {
        return Err(format!("mrseq is {:?} after success", w.mrseq()));
    }
    Ok(())
}

/// Parses the status file continuously until stopped; counts the reads that did not parse.
struct Reader {
    stop: Arc<AtomicBool>,
    bad: Arc<AtomicUsize>,
    handle: std::thread::JoinHandle<()>,
}

impl Reader {
    fn start(path: PathBuf) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let bad = Arc::new(AtomicUsize::new(0));
        let (s, b) = (stop.clone(), bad.clone());
        let handle = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(600);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok(text) = fs::read_to_string(&path) {
                    if serde_json::from_str::<serde_json::Value>(&text).is_err() {
                        b.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(3));
            }
        });
        Reader { stop, bad, handle }
    }

    fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap();
        self.bad.load(Ordering::Relaxed)
    }
}

/// One crash run: `Err` names what went wrong.
/// What a converged run may show without being wrong, to report: temp files a crash left
/// before their rename.
fn notes(case: &Case) -> Vec<String> {
    fn temps(dir: &Path, out: &mut Vec<String>, base: &Path) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                temps(&p, out, base);
            } else if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let rel = p.parent().unwrap().strip_prefix(base).unwrap_or(&p);
                out.push(format!("temp file left in {}", rel.display()));
            }
        }
    }
    let mut out = Vec::new();
    temps(case.w.tmp.path(), &mut out, case.w.tmp.path());
    out.sort();
    out.dedup();
    out
}

fn crash_run(worker: usize, k: u64, label: &str) -> Result<Vec<String>, String> {
    let case = case();
    let reader = Reader::start(case.w.status_path(1));
    let result = converge(&case, Some((worker, k)));
    let bad = reader.finish();
    let crashed = effects(&case.fault_log).into_iter().find(|e| e.crash);
    let (status, _) = result?;
    match crashed {
        None => return Err("the worker never reached this effect (the run diverged)".into()),
        Some(e) if e.label != label => {
            return Err(format!("the run diverged: effect {k} was {}", e.label))
        }
        Some(_) => {}
    }
    if bad > 0 {
        return Err(format!("a reader saw a half-written status {bad} times"));
    }
    check(&case, &status)?;
    Ok(notes(&case))
}

#[test]
fn a_crash_at_every_effect_converges() {
    let started = Instant::now();
    // The clean run: which effects each worker has.
    let clean = case();
    let (status, enables) = converge(&clean, None).unwrap_or_else(|e| panic!("clean run: {e}"));
    check(&clean, &status).unwrap_or_else(|e| panic!("clean run: {e}"));
    let log = effects(&clean.fault_log);
    let mut pids: Vec<&str> = Vec::new();
    for e in &log {
        if !pids.contains(&e.pid.as_str()) {
            pids.push(&e.pid);
        }
    }
    assert_eq!(
        pids.len(),
        enables,
        "one worker per enable in the clean run: {pids:?}"
    );
    let per_worker: Vec<Vec<String>> = pids
        .iter()
        .map(|p| {
            log.iter()
                .filter(|e| e.pid == *p)
                .map(|e| e.label.clone())
                .collect()
        })
        .collect();
    // Every kind of effect is a crash point (the campaign means nothing without them).
    let all = per_worker.concat().join("\n");
    for needle in [
        "write before rename state.json",
        "write after rename 1.status",
        "append ",
        "child started apt-get",
        "child started systemctl",
        "stage begin install",
        "stage executed fetch",
        "stage completed verify",
        "fetch moves into place",
    ] {
        assert!(all.contains(needle), "no effect {needle:?} in\n{all}");
    }
    let targets: Vec<(usize, u64, String)> = per_worker
        .iter()
        .enumerate()
        .flat_map(|(i, labels)| {
            labels
                .iter()
                .enumerate()
                .map(move |(k, l)| (i + 1, k as u64 + 1, l.clone()))
        })
        .collect();
    let n = targets.len();
    let clean_time = started.elapsed();

    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::<String>::new());
    let noted = Mutex::new(std::collections::BTreeMap::<String, Vec<String>>::new());
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((worker, k, label)) = targets.get(i) else {
                    break;
                };
                match crash_run(*worker, *k, label) {
                    Ok(notes) => {
                        let mut m = noted.lock().unwrap();
                        for note in notes {
                            m.entry(note).or_default().push(format!("{worker}/{k}"));
                        }
                    }
                    Err(e) => failures
                        .lock()
                        .unwrap()
                        .push(format!("worker {worker} effect k={k} ({label}): {e}")),
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    for (note, at) in noted.into_inner().unwrap() {
        eprintln!(
            "note: {note}: after crashes at worker/effect {}",
            at.join(" ")
        );
    }
    eprintln!(
        "crash points: {n} ({} per worker), clean run {:.1} s, campaign {:.1} s",
        per_worker
            .iter()
            .map(|w| w.len().to_string())
            .collect::<Vec<_>>()
            .join(" + "),
        clean_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {n} crash points did not converge:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
