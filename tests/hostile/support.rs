//! The table runner and the checks every hostile case shares: a bounded run of the binary
//! (a hang is an outcome, not a stuck test), no panic anywhere, status files that parse.

use crate::common::*;
use crate::PENDING;
use serde_json::Value;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const HB: &str = "Standard_HB120rs_v3";

/// Longest a single synchronous verb may take before the case calls it a hang.
pub const VERB_BOUND: Duration = Duration::from_secs(15);
/// Longest a worker may take to reach a terminal status on the fixture hosts.
pub const SETTLE: Duration = Duration::from_secs(40);

pub type CaseResult = Result<(), String>;

/// One hostile case: a name that failures carry, and the scenario with its exact expectations.
pub struct Case {
    pub name: String,
    pub run: Box<dyn Fn() -> CaseResult + Send + Sync>,
}

pub fn case(name: impl Into<String>, run: impl Fn() -> CaseResult + Send + Sync + 'static) -> Case {
    Case {
        name: name.into(),
        run: Box::new(run),
    }
}

/// `Err(message)` unless `cond`.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Run a table: cases in a few threads (each World is its own directory), every outcome printed
/// with its case name, and one failure listing every failed case. A case named in `PENDING`
/// reports "pending" instead of failing.
pub fn run_table(class: &str, mut cases: Vec<Case>) {
    // HOSTILE_ONLY=<part of a name> runs only the matching cases (for debugging one).
    if let Ok(only) = std::env::var("HOSTILE_ONLY") {
        cases.retain(|c| c.name.contains(&only));
    }
    let mut seen = std::collections::BTreeSet::new();
    for c in &cases {
        assert!(
            seen.insert(c.name.clone()),
            "duplicate case name {}",
            c.name
        );
    }
    let jobs: usize = std::env::var("HOSTILE_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(String, CaseResult, Duration)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(c) = cases.get(i) else { break };
                let t = Instant::now();
                let r = match catch_unwind(AssertUnwindSafe(|| (c.run)())) {
                    Ok(r) => r,
                    Err(p) => Err(format!(
                        "the test itself panicked: {}",
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default()
                    )),
                };
                results
                    .lock()
                    .unwrap()
                    .push((c.name.clone(), r, t.elapsed()));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by(|a, b| a.0.cmp(&b.0));
    let mut failed = Vec::new();
    for (name, r, took) in &results {
        let pending = PENDING.contains(&name.as_str());
        match (r, pending) {
            (Ok(()), false) => println!("{class}/{name}: ok ({} ms)", took.as_millis()),
            (Ok(()), true) => println!(
                "{class}/{name}: PENDING, passed this run; remove it from PENDING once its fix is merged (a race may pass by luck) ({} ms)",
                took.as_millis()
            ),
            (Err(e), true) => println!("{class}/{name}: pending: {e}"),
            (Err(e), false) => {
                println!("{class}/{name}: FAILED: {e}");
                failed.push(format!("{name}: {e}"));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} {class} case(s) failed:\n{}",
        failed.len(),
        results.len(),
        failed.join("\n")
    );
}

/// What one bounded run of the binary showed.
#[derive(Debug)]
pub struct Run {
    pub exit: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub hung: bool,
    pub took: Duration,
}

impl Run {
    pub fn text(&self) -> String {
        format!(
            "exit {:?}{}\nstdout: {}\nstderr: {}",
            self.exit,
            if self.hung { " (hung, killed)" } else { "" },
            self.stdout.trim(),
            self.stderr.trim()
        )
    }

    pub fn expect_exit(&self, want: i32) -> CaseResult {
        ensure!(
            !self.hung && self.exit == Some(want),
            "want exit {want}, got {}",
            self.text()
        );
        Ok(())
    }
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

/// Run `cmd` with its output in files (a detached worker keeping a pipe open cannot block us)
/// and kill it after `bound`.
pub fn run_bounded(w: &World, mut cmd: Command, bound: Duration) -> Run {
    let n = RUNS.fetch_add(1, Ordering::SeqCst);
    let dir = w.tmp.path().join("runs");
    fs::create_dir_all(&dir).unwrap();
    let (o, e) = (dir.join(format!("{n}.out")), dir.join(format!("{n}.err")));
    let t = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(fs::File::create(&o).unwrap())
        .stderr(fs::File::create(&e).unwrap())
        .spawn()
        .unwrap();
    let exit = wait_exit(&mut child, bound);
    let hung = exit.is_none();
    let exit = exit.and_then(|st| st.code());
    let took = t.elapsed();
    let read = |p: &Path| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
    Run {
        exit,
        stdout: read(&o),
        stderr: read(&e),
        hung,
        took,
    }
}

/// The agent's `verb` for sequence number `seq`, bounded.
pub fn verb(w: &World, name: &str, seq: u64) -> Run {
    run_bounded(w, w.command(&[name], seq), VERB_BOUND)
}

pub fn enable(w: &World, seq: u64) -> Run {
    verb(w, "enable", seq)
}

/// `apply --settings <file with public>`, bounded (it runs the whole engine in the foreground).
pub fn apply(w: &World, public: &Value, env: &[(&str, &str)]) -> Run {
    let file = w.tmp.path().join("apply-settings.json");
    write(&file, public.to_string());
    let mut c = w.command(&["apply", "--settings", file.to_str().unwrap()], 0);
    for (k, v) in env {
        c.env(k, v);
    }
    run_bounded(w, c, SETTLE)
}

/// A World on the healthy HBv3 host with a short verify wait.
pub fn hbv3() -> World {
    let mut w = World::new("hbv3", HB);
    w.verify_timeout = 3;
    w
}

/// The status for `seq` once terminal (bounded), then no worker left.
pub fn settle(w: &World, seq: u64) -> Result<Value, String> {
    let terminal = poll_value(SETTLE, || match read_status(w, seq) {
        Ok(Some(v)) => {
            matches!(v[0]["status"]["status"].as_str(), Some("success" | "error")).then_some(Ok(v))
        }
        Ok(None) => None,
        Err(e) => Some(Err(e)),
    });
    let v = terminal.unwrap_or_else(|| {
        Err(format!(
            "status {seq} not terminal within {SETTLE:?}: {:?}",
            read_status(w, seq)
        ))
    })?;
    worker_gone(w)?;
    Ok(v)
}

pub fn worker_gone(w: &World) -> CaseResult {
    ensure!(
        no_worker_within(&w.handler_dir, SETTLE),
        "a worker still runs after {SETTLE:?}"
    );
    Ok(())
}

/// The status file for `seq`: absent is `None`; present must be the agent's JSON shape.
pub fn read_status(w: &World, seq: u64) -> Result<Option<Value>, String> {
    let p = w.status_path(seq);
    if !p.is_file() {
        return Ok(None);
    }
    let text = fs::read_to_string(&p).map_err(|e| format!("status {seq} unreadable: {e}"))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| format!("status {seq} is not JSON ({e}): {text:?}"))?;
    ensure!(
        v[0]["status"]["status"].is_string() && v[0]["status"]["code"].is_u64(),
        "status {seq} lacks status/code: {v}"
    );
    Ok(Some(v))
}

/// Status `seq` is terminal with exactly this value and code.
pub fn expect_status(w: &World, seq: u64, value: &str, code: u64) -> Result<Value, String> {
    let v = settle(w, seq)?;
    ensure!(
        status_value(&v) == value && status_code(&v) == code,
        "want status {value} {code} for {seq}, got {} {}: {}",
        status_value(&v),
        status_code(&v),
        message(&v)
    );
    Ok(v)
}

/// The heartbeat's state (`Ready`/`NotReady`), when the file parses.
pub fn heartbeat_state(w: &World) -> Option<String> {
    let text = fs::read_to_string(w.handler_dir.join("heartbeat.log")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v[0]["heartbeat"]["status"].as_str().map(str::to_string)
}

/// No "panicked at" in the run's output or in any log, and every status file parses.
pub fn clean(w: &World, runs: &[&Run]) -> CaseResult {
    for r in runs {
        ensure!(
            !r.stderr.contains("panicked") && !r.stdout.contains("panicked"),
            "a panic: {}",
            r.text()
        );
    }
    let logs = [
        w.log_dir.clone(),
        w.root.join("var/log/azure"),
        w.data_dir().join("log"),
    ];
    for dir in logs {
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_file() {
                let t = String::from_utf8_lossy(&fs::read(&p).unwrap_or_default()).into_owned();
                ensure!(
                    !t.contains("panicked at"),
                    "a panic logged in {}",
                    p.display()
                );
            }
        }
    }
    for e in fs::read_dir(w.handler_dir.join("status"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = e.path();
        if p.is_file() && p.extension().is_some_and(|x| x == "status") {
            let t = fs::read_to_string(&p).unwrap_or_default();
            ensure!(
                serde_json::from_str::<Value>(&t).is_ok(),
                "{} does not parse: {t:?}",
                p.display()
            );
        }
    }
    Ok(())
}

/// Enable `seq` (settings written as `public`), wait for its terminal status, exit 0 and success.
pub fn succeed(w: &World, seq: u64, public: Value) -> Result<Value, String> {
    w.settings(seq, public);
    let r = enable(w, seq);
    r.expect_exit(0)?;
    let v = expect_status(w, seq, "success", 0)?;
    // The worker writes mrseq after the status; the case goes on once it is there.
    ensure!(
        poll_for(SETTLE, || w.mrseq() == Some(seq.to_string())),
        "mrseq {:?} after success of {seq}",
        w.mrseq()
    );
    worker_gone(w)?;
    clean(w, &[&r])?;
    Ok(v)
}

/// Make `p` a FIFO (nobody writes it: a reader that opens it blocks).
pub fn mkfifo(p: &Path) {
    let _ = fs::remove_file(p);
    let _ = fs::remove_dir_all(p);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    let st = Command::new("mkfifo").arg(p).status().unwrap();
    assert!(st.success(), "mkfifo {}", p.display());
}

/// Replace whatever is at `p` with a directory holding one file.
pub fn make_dir(p: &Path) {
    let _ = fs::remove_file(p);
    fs::create_dir_all(p.join("x")).unwrap();
}

/// Our own log file's text (all rotations).
pub fn our_log(w: &World) -> String {
    let mut out = String::new();
    for e in fs::read_dir(&w.log_dir).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with("ibdriver.log") {
            out.push_str(&fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    out
}
