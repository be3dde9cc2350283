//! What the agent hands us, made hostile: HandlerEnvironment.json, the folders it names, the
//! agent's variables, the names of the settings files and `mrseq`. Every case runs the built
//! binary and asserts the exact outcome: exit code, status (or its absence), and which files
//! exist afterwards.

use crate::common::*;
use serde_json::json;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

const HB: &str = "Standard_HB120rs_v3";

/// Run `cmd` to its end, failing the test (and killing it) if it takes longer than `limit`:
/// the cases here include files that would make a careless open block forever.
pub(crate) fn output_within(mut cmd: std::process::Command, limit: Duration) -> Output {
    cmd.stdin(std::process::Stdio::null());
    crate::common::output_within(cmd, limit)
}

fn env_path(w: &World) -> PathBuf {
    w.handler_dir.join("HandlerEnvironment.json")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn status_names(w: &World) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(w.handler_dir.join("status"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The environment the World wrote, with `edit` applied to its handlerEnvironment object.
fn env_with(w: &World, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(env_path(w)).unwrap()).unwrap();
    edit(&mut v[0]["handlerEnvironment"]);
    v.to_string()
}

/// Enable with HandlerEnvironment.json replaced by `text`: must be refused with exit 1 and
/// code 101 on stderr naming `detail`, write no status and not panic.
fn refused_env(text: impl AsRef<[u8]>, detail: &str) {
    let w = World::new("hbv3", HB);
    fs::write(env_path(&w), text).unwrap();
    refused_as_is(&w, detail);
}

fn refused_as_is(w: &World, detail: &str) {
    w.settings(0, json!({}));
    let out = output_within(w.command(&["enable"], 0), Duration::from_secs(10));
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(err.contains("[101 HandlerEnvironment]"), "{err}");
    assert!(err.contains(detail), "want {detail:?} in {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(status_names(w).is_empty(), "{:?}", status_names(w));
    assert!(
        !w.data_dir().exists(),
        "nothing is done without an environment"
    );
}

#[test]
fn env_missing() {
    let w = World::new("hbv3", HB);
    fs::remove_file(env_path(&w)).unwrap();
    refused_as_is(&w, "HandlerEnvironment.json not found");
}

#[test]
fn env_empty() {
    refused_env("", "is not a valid handler environment");
}

#[test]
fn env_whitespace_only() {
    refused_env(" \n\t ", "is not a valid handler environment");
}

#[test]
fn env_huge() {
    let mut text = vec![b' '; 2 * 1024 * 1024];
    text.extend_from_slice(b"[]");
    refused_env(text, "larger than 64 KiB");
}

#[test]
fn env_not_json() {
    refused_env(
        "handlerEnvironment = yes",
        "is not a valid handler environment",
    );
}

#[test]
fn env_not_utf8() {
    refused_env([b'[', 0xff, 0xfe, b']'], "not UTF-8");
}

#[test]
fn env_a_number() {
    refused_env("42", "expected an array");
}

#[test]
fn env_a_string() {
    refused_env("\"/var/lib/waagent\"", "expected an array");
}

#[test]
fn env_null() {
    refused_env("null", "expected an array");
}

#[test]
fn env_array_of_length_0() {
    refused_env("[]", "empty array");
}

#[test]
fn env_array_of_a_number() {
    refused_env("[1]", "is not a valid handler environment");
}

#[test]
fn env_without_handler_environment_key() {
    refused_env(r#"[{"name":"x"}]"#, "handlerEnvironment");
}

#[test]
fn env_missing_heartbeat_file() {
    let w = World::new("hbv3", HB);
    let text = env_with(&w, |h| {
        h.as_object_mut().unwrap().remove("heartbeatFile");
    });
    fs::write(env_path(&w), text).unwrap();
    refused_as_is(&w, "heartbeatFile");
}

#[test]
fn env_log_folder_wrong_type() {
    let w = World::new("hbv3", HB);
    let text = env_with(&w, |h| h["logFolder"] = json!(42));
    fs::write(env_path(&w), text).unwrap();
    refused_as_is(&w, "is not a valid handler environment");
}

#[test]
fn env_status_folder_an_array() {
    let w = World::new("hbv3", HB);
    let text = env_with(&w, |h| h["statusFolder"] = json!(["/a", "/b"]));
    fs::write(env_path(&w), text).unwrap();
    refused_as_is(&w, "is not a valid handler environment");
}

#[test]
fn env_name_wrong_type() {
    let w = World::new("hbv3", HB);
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(env_path(&w)).unwrap()).unwrap();
    v[0]["name"] = json!({"not": "a string"});
    fs::write(env_path(&w), v.to_string()).unwrap();
    refused_as_is(&w, "is not a valid handler environment");
}

#[test]
fn env_relative_log_folder() {
    let w = World::new("hbv3", HB);
    let text = env_with(&w, |h| h["logFolder"] = json!("log"));
    fs::write(env_path(&w), text).unwrap();
    refused_as_is(&w, "logFolder is not an absolute path");
    assert!(!w.handler_dir.join("log").exists());
}

#[test]
fn env_relative_status_folder() {
    let w = World::new("hbv3", HB);
    let text = env_with(&w, |h| h["statusFolder"] = json!("../status"));
    fs::write(env_path(&w), text).unwrap();
    refused_as_is(&w, "statusFolder is not an absolute path");
}

#[test]
fn env_relative_events_folder() {
    let w = World::new("hbv3", HB);
    let text = env_with(&w, |h| h["eventsFolder"] = json!("events"));
    fs::write(env_path(&w), text).unwrap();
    refused_as_is(&w, "eventsFolder is not an absolute path");
}

#[test]
fn env_nul_in_a_path() {
    let w = World::new("hbv3", HB);
    let status = w.handler_dir.join("status").display().to_string();
    let text = env_with(&w, |h| h["statusFolder"] = json!(format!("{status}\u{0}x")));
    fs::write(env_path(&w), text).unwrap();
    refused_as_is(&w, "statusFolder is not an absolute path");
}

#[test]
fn env_is_a_directory() {
    let w = World::new("hbv3", HB);
    fs::remove_file(env_path(&w)).unwrap();
    fs::create_dir(env_path(&w)).unwrap();
    refused_as_is(&w, "cannot read");
}

#[test]
fn env_is_a_fifo_and_does_not_hang() {
    let w = World::new("hbv3", HB);
    fs::remove_file(env_path(&w)).unwrap();
    nix::unistd::mkfifo(
        &env_path(&w),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    refused_as_is(&w, "is not a valid handler environment");
}

/// `install` with the environment `text`: accepted, logging into `log_dir`.
fn accepted_env(w: &World, text: &str, log_dir: &Path) {
    fs::write(env_path(w), text).unwrap();
    let out = w.run("install", 0);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let log = fs::read_to_string(log_dir.join("ibdriver.log")).unwrap();
    assert!(log.contains("installed"), "{log}");
}

#[test]
fn env_array_of_length_2_uses_the_first() {
    let w = World::new("hbv3", HB);
    let first: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(env_path(&w)).unwrap()).unwrap();
    let other_log = w.tmp.path().join("other-log");
    let mut second = first[0].clone();
    second["handlerEnvironment"]["logFolder"] = json!(other_log);
    let text = json!([first[0], second]).to_string();
    accepted_env(&w, &text, &w.log_dir);
    assert!(!other_log.exists());
}

#[test]
fn env_object_form_and_bom_are_accepted() {
    let w = World::new("hbv3", HB);
    let v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(env_path(&w)).unwrap()).unwrap();
    let text = format!("\u{feff}{}", v[0]);
    accepted_env(&w, &text, &w.log_dir);
}

#[test]
fn env_nonexistent_log_folder_is_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new("hbv3", HB);
    let fresh = w.tmp.path().join("fresh/log/dir");
    let text = env_with(&w, |h| h["logFolder"] = json!(fresh));
    accepted_env(&w, &text, &fresh);
    let mode = fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

#[test]
fn env_log_folder_is_a_file() {
    let w = World::new("hbv3", HB);
    let file = w.tmp.path().join("log-file");
    fs::write(&file, "precious").unwrap();
    let text = env_with(&w, |h| h["logFolder"] = json!(file));
    fs::write(env_path(&w), text).unwrap();
    let out = w.run("install", 0);
    let err = stderr(&out);
    assert_eq!(code(&out), 14, "{err}");
    assert!(err.contains("[201 StateIo]"), "{err}");
    assert!(err.contains("is not a directory"), "{err}");
    assert_eq!(fs::read_to_string(&file).unwrap(), "precious");
}

/// Enable for seq 3 whose settings are malformed (a fast, worker-free path that writes a status).
fn enable_bad_settings(w: &World) -> Output {
    w.settings_raw(3, "{ not json");
    w.run("enable", 3)
}

#[test]
fn env_status_folder_missing_is_exit_14() {
    let w = World::new("hbv3", HB);
    fs::remove_dir(w.handler_dir.join("status")).unwrap();
    let out = enable_bad_settings(&w);
    let err = stderr(&out);
    assert_eq!(code(&out), 14, "{err}");
    assert!(err.contains("[201 StateIo] cannot write"), "{err}");
    assert!(!w.handler_dir.join("status").exists());
    let log = fs::read_to_string(w.log_dir.join("ibdriver.log")).unwrap();
    assert!(log.contains("cannot write status"), "{log}");
}

#[test]
fn env_config_folder_missing_is_a_settings_error() {
    let w = World::new("hbv3", HB);
    fs::remove_dir_all(w.handler_dir.join("config")).unwrap();
    let out = w.run("enable", 3);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let v = w.status(3).unwrap();
    assert_eq!(status_value(&v), "error");
    assert_eq!(status_code(&v), 102);
}

#[test]
fn env_heartbeat_folder_missing_still_reports_status() {
    let w = World::new("hbv3", HB);
    let text = env_with(&w, |h| {
        h["heartbeatFile"] = json!(w.tmp.path().join("no/such/dir/heartbeat.log"))
    });
    fs::write(env_path(&w), text).unwrap();
    let out = enable_bad_settings(&w);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert_eq!(status_code(&w.status(3).unwrap()), 102);
    assert!(!w.tmp.path().join("no").exists());
}

/// Enable seq 3 with `ConfigExtensionName` = `name`: the name is ignored with a warning, so
/// `config/3.settings` is read and `status/3.status` written, and nothing appears anywhere else.
fn hostile_name(name: &str) {
    let w = World::new("hbv3", HB);
    let lib_before = fs::read_dir(&w.lib_dir).unwrap().count();
    let tmp_before = fs::read_dir(w.tmp.path()).unwrap().count();
    w.settings_raw(3, "{ not json");
    let out = w
        .command(&["enable"], 3)
        .env("ConfigExtensionName", name)
        .output()
        .unwrap();
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert_eq!(status_names(&w), ["3.status"]);
    assert_eq!(status_code(&w.status(3).unwrap()), 102);
    assert_eq!(fs::read_dir(&w.lib_dir).unwrap().count(), lib_before);
    assert_eq!(fs::read_dir(w.tmp.path()).unwrap().count(), tmp_before);
    let log = fs::read_to_string(w.log_dir.join("ibdriver.log")).unwrap();
    assert!(
        log.contains("agent variable ignored: ConfigExtensionName is not a plain name"),
        "{log}"
    );
}

#[test]
fn ext_name_parent() {
    hostile_name("../evil");
}

#[test]
fn ext_name_deep_escape() {
    hostile_name("../../../../../../tmp/ibdriver-evil");
}

#[test]
fn ext_name_with_slash() {
    hostile_name("a/b");
}

#[test]
fn ext_name_absolute() {
    hostile_name("/etc/passwd");
}

#[test]
fn ext_name_dot_dot() {
    hostile_name("..");
}

#[test]
fn ext_name_dot() {
    hostile_name(".");
}

#[test]
fn ext_name_escape_sequence() {
    hostile_name("ib\u{1b}[2J");
}

#[test]
fn ext_name_newline() {
    hostile_name("ib\nforged log line");
}

#[test]
fn ext_name_too_long() {
    hostile_name(&"n".repeat(300));
}

#[test]
fn ext_name_plain_is_used() {
    let w = World::new("hbv3", HB);
    fs::write(w.handler_dir.join("config/ib.3.settings"), "{ not json").unwrap();
    let out = w
        .command(&["enable"], 3)
        .env("ConfigExtensionName", "ib")
        .output()
        .unwrap();
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert_eq!(status_names(&w), ["ib.3.status"]);
}

/// Enable with `ConfigSequenceNumber` = `value`: refused (101, exit 1), no status anywhere.
fn bad_seq(value: &str) {
    let w = World::new("hbv3", HB);
    w.settings(1, json!({}));
    let out = w
        .command(&["enable"], 0)
        .env("ConfigSequenceNumber", value)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "{value:?}: {err}");
    assert!(
        err.contains("environment variable ConfigSequenceNumber has an invalid value"),
        "{err}"
    );
    assert!(status_names(&w).is_empty(), "{:?}", status_names(&w));
}

#[test]
fn seq_plus_one() {
    bad_seq("+1");
}

#[test]
fn seq_leading_zero() {
    bad_seq("01");
}

#[test]
fn seq_negative() {
    bad_seq("-1");
}

#[test]
fn seq_exponent() {
    bad_seq("1e3");
}

#[test]
fn seq_empty() {
    bad_seq("");
}

#[test]
fn seq_huge() {
    bad_seq("99999999999999999999999999");
}

#[test]
fn seq_padded() {
    bad_seq(" 1");
}

#[test]
fn seq_hex() {
    bad_seq("0x1");
}

#[test]
fn seq_zero_is_fine() {
    let w = World::new("hbv3", HB);
    w.settings_raw(0, "{ not json");
    let out = w.run("enable", 0);
    assert_eq!(code(&out), 1);
    assert_eq!(status_names(&w), ["0.status"]);
    assert_eq!(status_code(&w.status(0).unwrap()), 102);
}

/// Files in config/ named `names` (oldest first) with malformed content; enable without
/// `ConfigSequenceNumber` must pick `want` and report on `want.status`.
fn inferred(names: &[&str], want: u64) {
    let w = World::new("hbv3", HB);
    let cfg = w.handler_dir.join("config");
    let base = std::time::SystemTime::now() - Duration::from_secs(1000);
    for (i, n) in names.iter().enumerate() {
        let p = cfg.join(n);
        fs::write(&p, "{ not json").unwrap();
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(base + Duration::from_secs(10 * i as u64))
            .unwrap();
    }
    let out = w
        .command(&["enable"], 0)
        .env_remove("ConfigSequenceNumber")
        .output()
        .unwrap();
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert_eq!(status_names(&w), [format!("{want}.status")]);
    assert_eq!(status_code(&w.status(want).unwrap()), 102);
}

#[test]
fn settings_leading_zero_name_is_not_a_candidate() {
    inferred(&["1.settings", "05.settings"], 1);
}

#[test]
fn settings_plus_name_is_not_a_candidate() {
    inferred(&["1.settings", "+2.settings"], 1);
}

#[test]
fn settings_overflowing_name_is_not_a_candidate() {
    inferred(&["2.settings", "99999999999999999999999.settings"], 2);
}

#[test]
fn settings_odd_names_are_passed_over() {
    inferred(
        &[
            "0.settings",
            "00.settings",
            "-3.settings",
            "x.settings",
            "4.settings.bak",
        ],
        0,
    );
}

#[test]
fn settings_newest_plain_name_wins() {
    inferred(&["7.settings", "3.settings"], 3);
}

/// Run seq 1 to success, then put `garbage` in mrseq: the next enable must not take it for
/// "seq 1 done" and runs again, leaving a canonical mrseq.
fn garbage_mrseq(garbage: &[u8]) {
    let w = World::new("hbv3", HB);
    w.settings(1, json!({}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    assert_eq!(
        status_value(&w.wait_terminal(1, Duration::from_secs(30))),
        "success"
    );
    fs::write(w.handler_dir.join("mrseq"), garbage).unwrap();
    fs::remove_file(w.status_path(1)).unwrap();
    assert_eq!(code(&w.run("enable", 1)), 0);
    let v = w.wait_terminal(1, Duration::from_secs(30));
    assert_eq!(status_value(&v), "success", "{v}");
    assert_eq!(w.mrseq().as_deref(), Some("1"));
}

#[test]
fn mrseq_with_plus_sign() {
    garbage_mrseq(b"+1\n");
}

#[test]
fn mrseq_with_leading_zero() {
    garbage_mrseq(b"01");
}

#[test]
fn mrseq_binary() {
    garbage_mrseq(&[0xff, 0x00, b'1']);
}
