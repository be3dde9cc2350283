//! Our own state in every bad shape: the checkpoint (`state.json`), the stop request, what
//! configure set up, apply's checkpoint, the worker lock and its holder record, each empty,
//! truncated, not JSON, of the wrong shape, huge, a directory or a FIFO (which must not hang
//! us); old and future fields; and full disks (a tiny tmpfs in a private mount namespace, a file
//! standing where a directory must be). Each time the next run converges or fails with
//! StateIo (201, exit 14), the status file parses and nothing panics.

use crate::common::*;
use crate::support::*;
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Clone, Copy, Debug)]
enum Bad {
    Empty,
    Truncated,
    NotJson,
    WrongShape,
    WrongTypes,
    Null,
    Binary,
    Huge,
    Dir,
    Fifo,
}

const ALL: [Bad; 10] = [
    Bad::Empty,
    Bad::Truncated,
    Bad::NotJson,
    Bad::WrongShape,
    Bad::WrongTypes,
    Bad::Null,
    Bad::Binary,
    Bad::Huge,
    Bad::Dir,
    Bad::Fifo,
];

fn bad_name(b: Bad) -> &'static str {
    match b {
        Bad::Empty => "empty",
        Bad::Truncated => "truncated",
        Bad::NotJson => "not_json",
        Bad::WrongShape => "wrong_shape",
        Bad::WrongTypes => "wrong_types",
        Bad::Null => "null",
        Bad::Binary => "binary",
        Bad::Huge => "huge",
        Bad::Dir => "directory",
        Bad::Fifo => "fifo",
    }
}

/// Put `bad` where `p` is. A truncated file keeps the first half of what was there.
fn plant(p: &Path, bad: Bad) {
    let old =
        fs::read(p).unwrap_or_else(|_| br#"{"seq": 1, "stop": false, "completed": []}"#.to_vec());
    let _ = fs::remove_dir_all(p);
    let _ = fs::remove_file(p);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    match bad {
        Bad::Empty => fs::write(p, b"").unwrap(),
        Bad::Truncated => fs::write(p, &old[..old.len() / 2]).unwrap(),
        Bad::NotJson => fs::write(p, b"this is not { json").unwrap(),
        Bad::WrongShape => fs::write(p, b"[1, 2, 3]").unwrap(),
        Bad::WrongTypes => fs::write(
            p,
            br#"{"seq": "one", "stop": "maybe", "completed": 7, "modules": 3, "settings": []}"#,
        )
        .unwrap(),
        Bad::Null => fs::write(p, b"null").unwrap(),
        Bad::Binary => fs::write(p, [0u8, 0xff, 0xfe, 0x7b, 0x00, 0x22]).unwrap(),
        Bad::Huge => {
            // 16 MiB of nesting that never closes: a parser must not recurse or hold it long.
            let mut v = vec![b'['; 16 << 20];
            v[0] = b'{';
            fs::write(p, v).unwrap()
        }
        Bad::Dir => make_dir(p),
        Bad::Fifo => mkfifo(p),
    }
}

#[derive(Clone, Copy, Debug)]
enum Want {
    /// Exit 0 and a success status (or apply's `success:` line).
    Converges,
    /// Exit with the code's exit and an error status with this code (apply: `error <code>`).
    Fails(u64),
    /// Enable exits 0 (the worker is started), the worker ends in an error status with this code.
    WorkerFails(u64),
}

fn want_for(b: Bad, dir: Option<Want>) -> Want {
    match (b, dir) {
        (Bad::Dir, Some(w)) => w,
        _ => Want::Converges,
    }
}

/// Enable 1 after the planting; the outcome must be `want`.
fn check_enable(w: &World, want: Want) -> CaseResult {
    let r = enable(w, 1);
    match want {
        Want::Converges => {
            r.expect_exit(0)?;
            expect_status(w, 1, "success", 0)?;
        }
        Want::Fails(code) => {
            r.expect_exit(exit_for(code))?;
            let v = expect_status(w, 1, "error", code)?;
            ensure!(
                !message(&v).contains('\n'),
                "one-line message: {}",
                message(&v)
            );
        }
        Want::WorkerFails(code) => {
            r.expect_exit(0)?;
            let v = expect_status(w, 1, "error", code)?;
            ensure!(
                !message(&v).contains('\n'),
                "one-line message: {}",
                message(&v)
            );
        }
    }
    worker_gone(w)?;
    clean(w, &[&r])
}

fn data(w: &World, file: &str) -> PathBuf {
    w.data_dir().join(file)
}

/// The file is corrupted after a success of 1; the same enable again.
fn after_success(file: &'static str, bad: Bad, dir_code: Option<Want>) -> Case {
    case(
        format!("{file}_{}_after_success", bad_name(bad)),
        move || {
            let w = hbv3();
            succeed(&w, 1, json!({}))?;
            plant(&data(&w, file), bad);
            check_enable(&w, want_for(bad, dir_code))?;
            if file == "state.json" && matches!(want_for(bad, dir_code), Want::Converges) {
                let cp = checkpoint(&w)?;
                ensure!(
                    cp["seq"] == 1 && cp["outcome"]["status"] == "success",
                    "checkpoint rewritten: {cp}"
                );
            }
            Ok(())
        },
    )
}

/// The file is there, bad, before the first enable.
fn before_first(file: &'static str, bad: Bad, dir_code: Option<Want>) -> Case {
    before_first_as(file, bad, dir_code, false)
}

/// [`before_first`]; `refused` makes `dir_code` the outcome for this kind of bad file too.
fn before_first_as(file: &'static str, bad: Bad, dir_code: Option<Want>, refused: bool) -> Case {
    case(
        format!("{file}_{}_before_first_enable", bad_name(bad)),
        move || {
            let w = hbv3();
            plant(&data(&w, file), bad);
            w.settings(1, json!({}));
            let want = match (refused, dir_code) {
                (true, Some(code)) => code,
                _ => want_for(bad, dir_code),
            };
            check_enable(&w, want)
        },
    )
}

fn apply_case(bad: Bad) -> Case {
    case(format!("apply-state.json_{}", bad_name(bad)), move || {
        let w = hbv3();
        let first = apply(&w, &json!({}), &[]);
        first.expect_exit(0)?;
        plant(&data(&w, "apply-state.json"), bad);
        let r = apply(&w, &json!({}), &[]);
        match want_for(bad, Some(Want::Fails(201))) {
            Want::Converges => {
                r.expect_exit(0)?;
                ensure!(r.stdout.starts_with("success:"), "{}", r.text());
            }
            Want::Fails(code) | Want::WorkerFails(code) => {
                r.expect_exit(exit_for(code))?;
                ensure!(
                    r.stdout.starts_with(&format!("error {code} ")),
                    "{}",
                    r.text()
                );
            }
        }
        // The extension's checkpoint is apply's business never.
        ensure!(!data(&w, "state.json").exists(), "apply wrote state.json");
        clean(&w, &[&first, &r])
    })
}

fn checkpoint(w: &World) -> Result<Value, String> {
    let t = fs::read_to_string(data(w, "state.json")).map_err(|e| format!("checkpoint: {e}"))?;
    serde_json::from_str(&t).map_err(|e| format!("checkpoint not JSON: {e}"))
}

/// Rewrite the checkpoint after a success of 1 with `edit`, then enable 1 again.
fn edited_checkpoint(name: &'static str, edit: fn(&mut Value), noop: bool) -> Case {
    case(format!("state.json_{name}"), move || {
        let w = hbv3();
        succeed(&w, 1, json!({}))?;
        let mut cp = checkpoint(&w)?;
        edit(&mut cp);
        fs::write(data(&w, "state.json"), cp.to_string()).unwrap();
        let before = fs::read(w.status_path(1)).unwrap();
        let r = enable(&w, 1);
        r.expect_exit(0)?;
        expect_status(&w, 1, "success", 0)?;
        if noop {
            ensure!(
                fs::read(w.status_path(1)).unwrap() == before,
                "a readable success checkpoint is a no-op"
            );
        } else {
            let cp = checkpoint(&w)?;
            ensure!(
                cp["outcome"]["status"] == "success" && cp["seq"] == 1,
                "ran again: {cp}"
            );
        }
        clean(&w, &[&r])
    })
}

/// Run `ibdriver <args>` in a private mount namespace where `full` is a tiny tmpfs filled to
/// the last byte (the real filesystem is never touched; the namespace ends with its processes).
fn on_full_disk(w: &World, full: &Path, seq: u64) -> Run {
    fs::create_dir_all(full).unwrap();
    let inner = w.command(&["enable"], seq);
    let mut c = Command::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(
            "mount -t tmpfs -o size=16k,mode=0700 ibfull \"$1\" || exit 99; \
             head -c 1000000 /dev/zero > \"$1/.fill\" 2>/dev/null; shift; exec \"$@\"",
        )
        .arg("sh")
        .arg(full)
        .arg(inner.get_program());
    c.args(inner.get_args());
    c.current_dir(inner.get_current_dir().unwrap());
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    run_bounded(w, c, VERB_BOUND)
}

fn full_disk(name: &'static str, where_: fn(&World) -> PathBuf, want: Want, after: bool) -> Case {
    case(format!("full_disk_{name}"), move || {
        let w = hbv3();
        let seq = if after {
            succeed(&w, 1, json!({}))?;
            2
        } else {
            1
        };
        w.settings(seq, json!({}));
        let r = on_full_disk(&w, &where_(&w), seq);
        ensure!(r.exit != Some(99), "tmpfs mount failed: {}", r.text());
        match want {
            Want::Converges => {
                r.expect_exit(0)?;
                expect_status(&w, seq, "success", 0)?;
            }
            Want::Fails(code) | Want::WorkerFails(code) => {
                r.expect_exit(exit_for(code))?;
                if let Some(v) = read_status(&w, seq)? {
                    worker_gone(&w)?;
                    let v = read_status(&w, seq)?.unwrap_or(v);
                    ensure!(
                        status_value(&v) == "error" && status_code(&v) == code,
                        "status {v}"
                    );
                } else {
                    ensure!(
                        r.stderr.contains(&code.to_string()) || r.stderr.contains("StateIo"),
                        "without a status, stderr must say: {}",
                        r.text()
                    );
                }
            }
        }
        worker_gone(&w)?;
        clean(&w, &[&r])
    })
}

pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for b in ALL {
        v.push(after_success("state.json", b, Some(Want::WorkerFails(201))));
        v.push(after_success("configure.json", b, None));
    }
    for b in [Bad::NotJson, Bad::Dir, Bad::Fifo, Bad::Huge] {
        v.push(before_first("state.json", b, Some(Want::WorkerFails(201))));
    }
    for b in ALL {
        v.push(before_first("request.json", b, Some(Want::Fails(201))));
    }
    for b in [Bad::Empty, Bad::NotJson, Bad::Binary, Bad::Dir, Bad::Fifo] {
        v.push(before_first("worker.pid", b, Some(Want::WorkerFails(201))));
        // A lock that is not a plain file is refused rather than replaced: two workers must
        // never hold locks on different files.
        v.push(before_first_as(
            "worker.lock",
            b,
            Some(Want::WorkerFails(201)),
            matches!(b, Bad::Fifo),
        ));
    }
    for b in ALL {
        v.push(apply_case(b));
    }
    v.push(edited_checkpoint(
        "future_fields",
        |cp| {
            cp["schema"] = json!(7);
            cp["futureStageData"] = json!({"gpuDirect": {"enabled": true}});
        },
        true,
    ));
    v.push(edited_checkpoint(
        "old_format_without_later_fields",
        |cp| {
            let o = cp.as_object_mut().unwrap();
            for k in [
                "reboots",
                "reboot_from_boot",
                "install_stages",
                "installer_ran",
                "verified_kernel",
            ] {
                o.remove(k);
            }
        },
        true,
    ));
    v.push(edited_checkpoint(
        "unknown_stage_name",
        |cp| cp["completed"] = json!(["preflight", "teleport", "verify"]),
        false,
    ));
    v.push(edited_checkpoint(
        "success_for_other_settings",
        |cp| cp["settings"] = json!("0000000000000000"),
        false,
    ));
    v.push(edited_checkpoint(
        "success_for_another_boot",
        |cp| cp["boot_id"] = json!("00000000-0000-0000-0000-000000000000"),
        false,
    ));
    v.push(edited_checkpoint(
        "success_on_another_kernel",
        |cp| cp["verified_kernel"] = json!("0.0.1-other"),
        false,
    ));
    v.push(edited_checkpoint(
        "error_outcome_for_this_number",
        |cp| cp["outcome"] = json!({"status": "error", "code": "PortsNotActive", "message": "old"}),
        false,
    ));
    v.push(case("request.json_garbled_while_the_worker_runs", || {
        let mut w = World::new("hbv3-portdown", HB);
        w.verify_timeout = 30;
        w.settings(1, json!({}));
        let r1 = enable(&w, 1);
        r1.expect_exit(0)?;
        crate::seqno::wait_for_worker(&w)?;
        fs::write(data(&w, "request.json"), "{\"seq\": ").unwrap();
        // A request nobody can read asks for nothing: the worker leaves at its next safe point.
        worker_gone(&w)?;
        crate::seqno::port_up(&w);
        let r2 = enable(&w, 1);
        r2.expect_exit(0)?;
        expect_status(&w, 1, "success", 0)?;
        clean(&w, &[&r1, &r2])
    }));
    v.push(case("request.json_stop_left_by_disable", || {
        let w = hbv3();
        write(&data(&w, "request.json"), r#"{"seq":1,"stop":true}"#);
        succeed(&w, 1, json!({}))?;
        Ok(())
    }));

    v.push(full_disk(
        "data_dir_first_enable",
        |w| w.data_dir(),
        Want::Fails(201),
        false,
    ));
    v.push(full_disk(
        "data_dir_new_number",
        |w| w.data_dir(),
        Want::Fails(201),
        true,
    ));
    v.push(full_disk(
        "status_folder",
        |w| w.handler_dir.join("status"),
        Want::Fails(201),
        false,
    ));
    v.push(full_disk(
        "log_folder",
        |w| w.log_dir.clone(),
        Want::Converges,
        false,
    ));
    v.push(case("data_dir_is_a_file", || {
        let w = hbv3();
        write(&w.data_dir(), "not a directory");
        w.settings(1, json!({}));
        check_enable(&w, Want::Fails(201))?;
        ensure!(
            fs::read_to_string(w.data_dir()).unwrap() == "not a directory",
            "the file standing there is left alone"
        );
        Ok(())
    }));
    v.push(case("var_lib_is_a_file", || {
        let w = hbv3();
        let _ = fs::remove_dir_all(w.root.join("var/lib"));
        write(&w.root.join("var/lib"), "x");
        w.settings(1, json!({}));
        check_enable(&w, Want::Fails(201))
    }));
    v.push(case("status_folder_is_a_file", || {
        let w = hbv3();
        let s = w.handler_dir.join("status");
        fs::remove_dir_all(&s).unwrap();
        fs::write(&s, "x").unwrap();
        w.settings(1, json!({}));
        let r = enable(&w, 1);
        r.expect_exit(14)?;
        ensure!(
            r.stderr.contains("201") || r.stderr.to_lowercase().contains("status"),
            "stderr says what failed: {}",
            r.text()
        );
        worker_gone(&w)?;
        clean(&w, &[&r])
    }));
    v.push(case("file_size_limit_on_the_enable", || {
        let w = hbv3();
        w.settings(1, json!({}));
        let inner = w.command(&["enable"], 1);
        let mut c = Command::new("prlimit");
        c.arg("--fsize=64").arg("--").arg(inner.get_program());
        c.args(inner.get_args());
        c.current_dir(inner.get_current_dir().unwrap());
        for (k, v) in inner.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        let r = run_bounded(&w, c, VERB_BOUND);
        // Writes fail with EFBIG (not a SIGXFSZ death): a clean StateIo failure.
        r.expect_exit(14)?;
        worker_gone(&w)?;
        clean(&w, &[&r])
    }));
    v
}

#[test]
fn corrupt_state_and_full_disks() {
    run_table("state", cases());
}
