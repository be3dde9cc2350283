//! Hostile command lines and standard streams: every case has its exact exit code and nothing
//! panics.

use crate::common::*;
use std::process::{Command, Output, Stdio};

const HB: &str = "Standard_HB120rs_v3";
const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// `ibdriver args...` in `w`, its standard streams rearranged by the shell `redirect`
/// (e.g. `>&-`), so the binary sees exactly what a careless caller would give it.
fn run_with(w: &World, args: &[&str], redirect: &str) -> Output {
    let inner = w.command(args, 0);
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(format!("exec \"$0\" \"$@\" {redirect}"))
        .arg(inner.get_program())
        .args(inner.get_args())
        .current_dir(&w.handler_dir);
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            sh.env(k, v);
        }
    }
    sh.stdout(Stdio::piped()).stderr(Stdio::piped());
    sh.output().unwrap()
}

/// `ibdriver args...` with stdout a pipe whose reader is already gone.
fn run_broken_pipe(w: &World, args: &[&str]) -> Output {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let mut c = w.command(args, 0);
    c.stdout(Stdio::from(write)).stderr(Stdio::piped());
    c.output().unwrap()
}

fn check_out(out: &Output, what: &str, exit: i32) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked at"), "{what}: {stderr}");
    assert_eq!(code(out), exit, "{what}: {stderr}");
}

fn check(w: &World, args: &[&str], redirect: &str, exit: i32, says: &str) {
    let out = run_with(w, args, redirect);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let shown: Vec<String> = args.iter().map(|a| a.chars().take(40).collect()).collect();
    assert!(
        !stderr.contains("panicked at"),
        "{shown:?} {redirect}: {stderr}"
    );
    assert_eq!(code(&out), exit, "{shown:?} {redirect}: {stderr}");
    assert!(
        stderr.contains(says),
        "{shown:?} {redirect}: stderr lacks {says:?}: {}",
        stderr.chars().take(500).collect::<String>()
    );
}

#[test]
fn bad_command_lines_are_usage_errors() {
    let w = World::new("hbv3", HB);
    let dir = w.tmp.path().to_string_lossy().into_owned();
    let long = "x".repeat(100_000);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![], "no verb given"),
        (vec!["frobnicate"], "unknown verb frobnicate"),
        (vec![""], "unknown verb"),
        (vec!["ENABLE"], "unknown verb ENABLE"),
        (vec!["--"], "unknown verb --"),
        (vec!["-x"], "unknown verb -x"),
        (vec![&long], "unknown verb"),
        (vec!["enable", "extra"], "enable takes no arguments"),
        (vec!["enable", ""], "enable takes no arguments"),
        (vec!["enable", "--json"], "enable takes no arguments"),
        (
            vec!["install", "--settings", "x"],
            "install takes no arguments",
        ),
        (vec!["version", "--"], "version takes no arguments"),
        (vec!["plan", "--bogus"], "plan: unknown option --bogus"),
        (vec!["plan", "--settings"], "--settings needs a value"),
        (vec!["plan", "--"], "plan: unknown option --"),
        (
            vec!["plan", "--handler-dir", &dir],
            "plan: unknown option --handler-dir",
        ),
        (
            vec!["health", "--settings", "x"],
            "health: unknown option --settings",
        ),
        (vec!["apply", "--settings"], "--settings needs a value"),
        (
            vec!["apply", "--settings", "a", "b"],
            "usage: apply [--settings FILE]",
        ),
        (vec!["apply", "--json"], "usage: apply [--settings FILE]"),
        (
            vec!["apply", "--", "--settings", "x"],
            "usage: apply [--settings FILE]",
        ),
        (vec!["diagnose"], "usage: diagnose --out FILE"),
        (vec!["diagnose", "--out"], "usage: diagnose --out FILE"),
        (
            vec!["diagnose", "--out", "a", "--out", "b"],
            "usage: diagnose --out FILE",
        ),
        (vec!["fetch"], "fetch needs --sha256"),
        (
            vec![
                "fetch",
                "https://x.example/p",
                "--sha256",
                "abc",
                "--into",
                &dir,
            ],
            "--sha256 needs 64 hexadecimal digits",
        ),
        (
            vec![
                "fetch",
                "https://x.example/p",
                "--sha256",
                SHA,
                "--into",
                &dir,
                "--size",
                "-5",
            ],
            "--size needs a number",
        ),
        (
            vec![
                "fetch",
                "https://x.example/p",
                "https://y.example/q",
                "--sha256",
                SHA,
                "--into",
                &dir,
            ],
            "fetch takes one URL",
        ),
        (
            vec![
                "fetch",
                "--",
                "https://x.example/p",
                "--sha256",
                SHA,
                "--into",
                &dir,
            ],
            "fetch: unknown option --",
        ),
        (
            vec!["fetch", "https://x.example/p", "--sha256", SHA],
            "fetch needs --into",
        ),
        (
            vec!["fetch", "--sha256", SHA, "--into", &dir],
            "fetch needs a URL",
        ),
        (vec!["worker", "--handler-dir", &dir], "worker needs --seq"),
        (
            vec!["worker", "--handler-dir", &dir, "--seq", "-1"],
            "--seq needs a sequence number",
        ),
        (
            vec![
                "worker",
                "--handler-dir",
                &dir,
                "--seq",
                "99999999999999999999999",
            ],
            "--seq needs a sequence number",
        ),
        (vec!["worker", "--seq", "1"], "worker needs --handler-dir"),
        (vec!["worker", "--json"], "worker: unknown option --json"),
        (vec!["monitor"], "monitor needs --handler-dir"),
    ];
    assert!(cases.len() >= 25);
    for (args, says) in &cases {
        check(&w, args, "", 1, says);
        if !args.is_empty() {
            // The usage text follows every usage error.
            assert!(
                String::from_utf8_lossy(&run_with(&w, args, "").stderr).contains("usage: ibdriver")
            );
        }
    }
}

#[test]
fn odd_but_valid_command_lines() {
    let w = World::new("hbv3", HB);
    check(&w, &["help", "anything", "--at-all"], "", 0, "");
    check(&w, &["--help"], "", 0, "");
    check(&w, &["--version"], "", 0, "");
    check(&w, &["plan", "--json", "--json"], "", 0, "");
    let out = run_with(&w, &["version"], "");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ibdriver "));
}

#[test]
fn bad_settings_files_for_the_operator_verbs() {
    let w = World::new("hbv3", HB);
    let dir = w.tmp.path().to_string_lossy().into_owned();
    let missing = w
        .tmp
        .path()
        .join("missing.json")
        .to_string_lossy()
        .into_owned();
    for args in [
        vec!["plan", "--settings", &dir],
        vec!["plan", "--settings", &missing],
        vec!["plan", "--settings", ""],
        vec!["apply", "--settings", &dir],
        vec!["apply", "--settings", &missing],
        vec!["apply", "--settings", ""],
    ] {
        check(&w, &args, "", 1, "");
    }
}

#[test]
fn closed_and_odd_standard_streams() {
    let w = World::new("hbv3", HB);
    // A closed stdin (a cron job, a careless wrapper) changes nothing.
    check(&w, &["plan", "--json"], "<&-", 0, "");
    check(&w, &["health", "--json"], "<&- >&- 2>&-", 0, "");
    // Closed stdout: the result is lost, the exit code still tells the truth.
    check(&w, &["version"], ">&-", 0, "");
    check(&w, &["frobnicate"], ">&- 2>&-", 1, "");
    check(&w, &["health", "--json"], ">&-", 0, "");
    // apply's result line to a full disk: the work and its exit code stand.
    check(&w, &["apply"], ">/dev/full", 0, "");
    check(
        &w,
        &["apply", "--settings", "/nonexistent"],
        ">/dev/full",
        1,
        "",
    );
}

/// Output that cannot be written is never a panic; a verb whose product is its output then
/// fails (exit 14), a usage error stays 1.
#[test]
fn unwritable_stdout_and_stderr_are_not_panics() {
    let w = World::new("hbv3", HB);
    check(&w, &["version"], ">/dev/full", 14, "");
    check(&w, &["plan", "--json"], ">/dev/full", 14, "");
    check(&w, &["health"], ">/dev/full", 14, "");
    check(&w, &["frobnicate"], "2>/dev/full", 1, "");
    check_out(
        &run_broken_pipe(&w, &["plan", "--json"]),
        "plan --json | (gone)",
        14,
    );
    check_out(&run_broken_pipe(&w, &["version"]), "version | (gone)", 14);
}

#[test]
fn non_utf8_argv_is_a_usage_error() {
    let w = World::new("hbv3", HB);
    check(
        &w,
        &["plan", "--settings"],
        "\"$(printf '\\377\\376')\"",
        1,
        "",
    );
}
