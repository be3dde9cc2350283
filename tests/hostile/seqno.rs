//! Sequence numbers in every position: the agent's `ConfigSequenceNumber` against the settings
//! files, `mrseq` in every bad shape, missing settings, a newer number while an older worker
//! runs, numbers going backwards, 0 and `u64::MAX`, and the status file present or not.

use crate::common::*;
use crate::support::*;
use serde_json::json;
use std::fs;
use std::time::Duration;

fn status_files(w: &World) -> Vec<String> {
    fs::read_dir(w.handler_dir.join("status"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `ConfigSequenceNumber` values the agent never sends: a usage-class error before anything.
fn bad_variable(name: &'static str, value: &'static str) -> Case {
    case(format!("config_sequence_number_{name}"), move || {
        let w = hbv3();
        w.settings(1, json!({}));
        let mut c = w.command(&["enable"], 1);
        c.env("ConfigSequenceNumber", value);
        let r = run_bounded(&w, c, VERB_BOUND);
        r.expect_exit(1)?;
        ensure!(
            r.stderr.contains("ConfigSequenceNumber"),
            "stderr must name the variable: {}",
            r.text()
        );
        ensure!(
            status_files(&w).is_empty(),
            "no status without a sequence number: {:?}",
            status_files(&w)
        );
        ensure!(!w.data_dir().join("state.json").exists(), "no checkpoint");
        ensure!(w.mrseq().is_none(), "no mrseq");
        clean(&w, &[&r])
    })
}

/// Forms Rust's integer parser accepts after trimming: they name sequence number `want`.
fn accepted_variable(name: &'static str, value: &'static str, want: u64) -> Case {
    case(format!("config_sequence_number_{name}"), move || {
        let w = hbv3();
        w.settings(want, json!({}));
        let mut c = w.command(&["enable"], want);
        c.env("ConfigSequenceNumber", value);
        let r = run_bounded(&w, c, VERB_BOUND);
        r.expect_exit(0)?;
        expect_status(&w, want, "success", 0)?;
        ensure!(w.mrseq() == Some(want.to_string()), "mrseq {:?}", w.mrseq());
        clean(&w, &[&r])
    })
}

/// After a success for 1, `mrseq` is replaced by `plant`; the next enable of 1 must not trust
/// it: it runs again and ends in success, with `mrseq` naming 1 when it can be written.
fn mrseq_case(name: &'static str, plant: fn(&World), mrseq_after: Option<&'static str>) -> Case {
    case(format!("mrseq_{name}_after_success"), move || {
        let w = hbv3();
        succeed(&w, 1, json!({}))?;
        plant(&w);
        let r = enable(&w, 1);
        r.expect_exit(0)?;
        expect_status(&w, 1, "success", 0)?;
        if let Some(want) = mrseq_after {
            ensure!(
                w.mrseq().as_deref() == Some(want),
                "mrseq {:?}, want {want}",
                w.mrseq()
            );
        }
        clean(&w, &[&r])
    })
}

fn set_mrseq(w: &World, text: &str) {
    let p = w.handler_dir.join("mrseq");
    let _ = fs::remove_dir_all(&p);
    fs::write(p, text).unwrap();
}

pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (name, bad) in [
        ("letters", "abc"),
        ("negative", "-1"),
        ("fraction", "1.5"),
        ("hex", "0x1f"),
        ("u64_max_plus_one", "18446744073709551616"),
        ("huge", "99999999999999999999999"),
        ("empty", ""),
        ("two_numbers", "1 2"),
        ("exponent", "1e3"),
        ("arabic_digit", "\u{0663}"),
    ] {
        v.push(bad_variable(name, bad));
    }
    // Only the canonical spelling names a sequence number: "007", "+4" and " 3 " could name
    // other files than the agent meant.
    v.push(bad_variable("padded", " 3 \n"));
    v.push(bad_variable("leading_zero", "007"));
    v.push(bad_variable("plus_sign", "+4"));
    v.push(accepted_variable("zero", "0", 0));

    v.push(case("agent_number_wins_over_newer_settings_file", || {
        let w = hbv3();
        w.settings(2, json!({}));
        w.settings(5, json!({"bogus": true}));
        set_mtime(
            &w,
            2,
            std::time::SystemTime::now() - Duration::from_secs(60),
        );
        let r = enable(&w, 2);
        r.expect_exit(0)?;
        expect_status(&w, 2, "success", 0)?;
        ensure!(read_status(&w, 5)?.is_none(), "5 is not the agent's number");
        ensure!(w.mrseq().as_deref() == Some("2"), "mrseq {:?}", w.mrseq());
        clean(&w, &[&r])
    }));
    v.push(case("inferred_number_ignores_odd_file_names", || {
        let w = hbv3();
        w.settings(3, json!({}));
        for odd in [
            "x.settings",
            "9.settings.bak",
            "-4.settings",
            "1.5.settings",
        ] {
            write(&w.handler_dir.join("config").join(odd), "{}");
        }
        let mut c = w.command(&["enable"], 0);
        c.env_remove("ConfigSequenceNumber");
        let r = run_bounded(&w, c, VERB_BOUND);
        r.expect_exit(0)?;
        expect_status(&w, 3, "success", 0)?;
        ensure!(w.mrseq().as_deref() == Some("3"), "mrseq {:?}", w.mrseq());
        clean(&w, &[&r])
    }));
    v.push(case("inferred_number_ties_go_to_the_highest", || {
        let w = hbv3();
        w.settings(4, json!({}));
        w.settings(11, json!({}));
        let t = fs::metadata(w.handler_dir.join("config/4.settings"))
            .unwrap()
            .modified()
            .unwrap();
        for n in [4, 11] {
            let f = fs::File::options()
                .write(true)
                .open(w.handler_dir.join(format!("config/{n}.settings")))
                .unwrap();
            f.set_modified(t).unwrap();
        }
        let mut c = w.command(&["enable"], 0);
        c.env_remove("ConfigSequenceNumber");
        let r = run_bounded(&w, c, VERB_BOUND);
        r.expect_exit(0)?;
        expect_status(&w, 11, "success", 0)?;
        clean(&w, &[&r])
    }));
    v.push(case(
        "no_number_and_no_settings_is_zero_with_defaults",
        || {
            let w = hbv3();
            let mut c = w.command(&["enable"], 0);
            c.env_remove("ConfigSequenceNumber");
            let r = run_bounded(&w, c, VERB_BOUND);
            r.expect_exit(0)?;
            expect_status(&w, 0, "success", 0)?;
            clean(&w, &[&r])
        },
    ));

    v.push(mrseq_case(
        "garbage",
        |w| set_mrseq(w, "garbage\n"),
        Some("1"),
    ));
    v.push(mrseq_case("empty", |w| set_mrseq(w, ""), Some("1")));
    v.push(mrseq_case("negative", |w| set_mrseq(w, "-1\n"), Some("1")));
    v.push(mrseq_case(
        "huge",
        |w| set_mrseq(w, "99999999999999999999999\n"),
        Some("1"),
    ));
    v.push(mrseq_case("newer", |w| set_mrseq(w, "2\n"), Some("1")));
    v.push(mrseq_case("older", |w| set_mrseq(w, "0\n"), Some("1")));
    v.push(mrseq_case(
        "binary",
        |w| fs::write(w.handler_dir.join("mrseq"), [0xff, 0x00, 0x31]).unwrap(),
        Some("1"),
    ));
    v.push(mrseq_case(
        "missing",
        |w| fs::remove_file(w.handler_dir.join("mrseq")).unwrap(),
        Some("1"),
    ));
    v.push(mrseq_case(
        "directory",
        |w| make_dir(&w.handler_dir.join("mrseq")),
        None,
    ));
    v.push(mrseq_case(
        "fifo",
        |w| mkfifo(&w.handler_dir.join("mrseq")),
        None,
    ));
    v.push(case("mrseq_with_spaces_still_means_done", || {
        let w = hbv3();
        succeed(&w, 1, json!({}))?;
        set_mrseq(&w, "  1  \n\n");
        let before = fs::read(w.status_path(1)).unwrap();
        let r = enable(&w, 1);
        r.expect_exit(0)?;
        ensure!(
            !worker_running(&w.handler_dir),
            "the no-op starts no worker"
        );
        ensure!(
            fs::read(w.status_path(1)).unwrap() == before,
            "the no-op leaves the status as it is"
        );
        clean(&w, &[&r])
    }));
    v.push(case("mrseq_garbage_before_the_first_enable", || {
        let w = hbv3();
        set_mrseq(&w, "not a number");
        succeed(&w, 1, json!({}))?;
        ensure!(w.mrseq().as_deref() == Some("1"), "mrseq {:?}", w.mrseq());
        Ok(())
    }));

    v.push(case("settings_missing_for_nonzero_number", || {
        let w = hbv3();
        let r = enable(&w, 4);
        r.expect_exit(1)?;
        let s = read_status(&w, 4)?.ok_or("no status 4")?;
        ensure!(
            status_value(&s) == "error" && status_code(&s) == 102,
            "status {s}"
        );
        ensure!(!worker_running(&w.handler_dir), "no worker");
        clean(&w, &[&r])
    }));
    v.push(case("settings_missing_for_zero_means_defaults", || {
        let w = hbv3();
        let r = enable(&w, 0);
        r.expect_exit(0)?;
        expect_status(&w, 0, "success", 0)?;
        clean(&w, &[&r])
    }));
    v.push(case("settings_file_for_the_number_is_a_directory", || {
        let w = hbv3();
        make_dir(&w.handler_dir.join("config/6.settings"));
        let r = enable(&w, 6);
        r.expect_exit(1)?;
        let s = read_status(&w, 6)?.ok_or("no status 6")?;
        ensure!(status_code(&s) == 102, "status {s}");
        clean(&w, &[&r])
    }));
    v.push(case("settings_file_for_the_number_is_a_fifo", || {
        let w = hbv3();
        mkfifo(&w.handler_dir.join("config/6.settings"));
        let r = enable(&w, 6);
        ensure!(r.took < Duration::from_secs(10), "took {:?}", r.took);
        r.expect_exit(1)?;
        let s = read_status(&w, 6)?.ok_or("no status 6")?;
        ensure!(status_code(&s) == 102, "status {s}");
        clean(&w, &[&r])
    }));
    v.push(case("settings_only_for_another_number", || {
        let w = hbv3();
        w.settings(3, json!({}));
        let r = enable(&w, 8);
        r.expect_exit(1)?;
        let s = read_status(&w, 8)?.ok_or("no status 8")?;
        ensure!(status_code(&s) == 102, "status {s}");
        ensure!(read_status(&w, 3)?.is_none(), "3 untouched");
        clean(&w, &[&r])
    }));

    v.push(case("refused_newer_number_while_older_worker_runs", || {
        let mut w = World::new("hbv3-portdown", HB);
        w.verify_timeout = 30;
        w.settings(1, json!({}));
        let r1 = enable(&w, 1);
        r1.expect_exit(0)?;
        wait_for_worker(&w)?;
        w.settings(2, json!({"ipoib": "sometimes"}));
        let r2 = enable(&w, 2);
        r2.expect_exit(1)?;
        let s2 = read_status(&w, 2)?.ok_or("no status 2")?;
        ensure!(
            status_value(&s2) == "error" && status_code(&s2) == 103,
            "{s2}"
        );
        worker_gone(&w)?;
        let s1 = read_status(&w, 1)?.ok_or("no status 1")?;
        ensure!(
            status_value(&s1) == "transitioning",
            "the superseded worker writes nothing terminal: {s1}"
        );
        ensure!(w.mrseq().as_deref() == Some("2"), "mrseq {:?}", w.mrseq());
        clean(&w, &[&r1, &r2])
    }));
    v.push(case("newer_number_supersedes_a_running_worker", || {
        let mut w = World::new("hbv3-portdown", HB);
        w.verify_timeout = 30;
        w.settings(1, json!({}));
        let r1 = enable(&w, 1);
        r1.expect_exit(0)?;
        wait_for_worker(&w)?;
        w.settings(2, json!({}));
        let r2 = enable(&w, 2);
        r2.expect_exit(0)?;
        port_up(&w);
        expect_status(&w, 2, "success", 0)?;
        let s1 = read_status(&w, 1)?.ok_or("no status 1")?;
        ensure!(status_value(&s1) == "transitioning", "{s1}");
        ensure!(w.mrseq().as_deref() == Some("2"), "mrseq {:?}", w.mrseq());
        clean(&w, &[&r1, &r2])
    }));
    v.push(case("number_going_backwards_runs_that_number", || {
        let w = hbv3();
        succeed(&w, 5, json!({}))?;
        succeed(&w, 3, json!({"ipoib": "off"}))?;
        ensure!(w.mrseq().as_deref() == Some("3"), "mrseq {:?}", w.mrseq());
        let s5 = read_status(&w, 5)?.ok_or("no status 5")?;
        ensure!(status_value(&s5) == "success", "5 left as it was");
        Ok(())
    }));
    v.push(case("back_to_the_newer_number_runs_again", || {
        let w = hbv3();
        succeed(&w, 5, json!({}))?;
        succeed(&w, 3, json!({"ipoib": "off"}))?;
        let r = enable(&w, 5);
        r.expect_exit(0)?;
        expect_status(&w, 5, "success", 0)?;
        ensure!(w.mrseq().as_deref() == Some("5"), "mrseq {:?}", w.mrseq());
        let cp = checkpoint(&w)?;
        ensure!(cp["seq"] == 5, "checkpoint {cp}");
        clean(&w, &[&r])
    }));
    v.push(case(
        "checkpoint_of_a_newer_number_is_not_taken_for_this_one",
        || {
            let w = hbv3();
            succeed(&w, 9, json!({}))?;
            fs::remove_file(w.handler_dir.join("mrseq")).unwrap();
            succeed(&w, 1, json!({}))?;
            let cp = checkpoint(&w)?;
            ensure!(cp["seq"] == 1, "checkpoint {cp}");
            Ok(())
        },
    ));
    for (name, n) in [
        ("zero", 0u64),
        ("u64_max", u64::MAX),
        ("u64_max_minus_one", u64::MAX - 1),
        ("u32_max_plus_one", u32::MAX as u64 + 1),
    ] {
        v.push(case(format!("number_{name}_round_trips"), move || {
            let w = hbv3();
            succeed(&w, n, json!({}))?;
            ensure!(
                w.status_path(n).is_file(),
                "status named {}",
                w.status_path(n).display()
            );
            ensure!(w.mrseq() == Some(n.to_string()), "mrseq {:?}", w.mrseq());
            // And the no-op after it.
            let before = fs::read(w.status_path(n)).unwrap();
            let r = enable(&w, n);
            r.expect_exit(0)?;
            ensure!(
                fs::read(w.status_path(n)).unwrap() == before,
                "no-op keeps status"
            );
            clean(&w, &[&r])
        }));
    }

    // The status file for the number after its success: the no-op must leave a good one alone
    // and rewrite one that is gone or broken from the checkpoint's outcome.
    v.push(case("status_present_and_good_is_left_alone", || {
        let w = hbv3();
        succeed(&w, 1, json!({}))?;
        let before = fs::read(w.status_path(1)).unwrap();
        let r = enable(&w, 1);
        r.expect_exit(0)?;
        ensure!(fs::read(w.status_path(1)).unwrap() == before, "rewritten");
        clean(&w, &[&r])
    }));
    type Plant = fn(&World);
    let broken: [(&str, Plant); 4] = [
        ("missing", |w| fs::remove_file(w.status_path(1)).unwrap()),
        ("corrupt", |w| {
            fs::write(w.status_path(1), "[{\"status\": ").unwrap()
        }),
        ("empty", |w| fs::write(w.status_path(1), "").unwrap()),
        ("a_directory", |w| {
            fs::remove_file(w.status_path(1)).unwrap();
            make_dir(&w.status_path(1));
        }),
    ];
    for (name, plant) in broken {
        v.push(case(
            format!("status_{name}_after_success_is_rewritten"),
            move || {
                let w = hbv3();
                succeed(&w, 1, json!({}))?;
                plant(&w);
                let r = enable(&w, 1);
                r.expect_exit(0)?;
                let s = poll_value(Duration::from_secs(10), || {
                    read_status(&w, 1)
                        .ok()
                        .flatten()
                        .filter(|s| status_value(s) == "success")
                });
                let Some(s) = s else {
                    return Err(format!("status 1 not rewritten: {:?}", read_status(&w, 1)));
                };
                ensure!(status_code(&s) == 0, "{s}");
                worker_gone(&w)?;
                clean(&w, &[&r])
            },
        ));
    }
    v.push(case("noop_heartbeat_names_the_installed_stack", || {
        // DOCA-OFED installed (what `ofed_info` and /opt/mellanox/doca say): the no-op's
        // heartbeat must name the stack the worker found, never invent the inbox one.
        let w = hbv3();
        write_exec(
            &w.stubs.join("ofed_info"),
            "#!/bin/sh\necho 'OFED-internal-25.10-1.2.8:'\n",
        );
        w.set_file("usr/bin/ofed_info", "");
        fs::create_dir_all(w.root.join("opt/mellanox/doca")).unwrap();
        succeed(&w, 1, json!({}))?;
        let worker_says = heartbeat_message(&w);
        let r = enable(&w, 1);
        r.expect_exit(0)?;
        let noop_says = heartbeat_message(&w);
        ensure!(
            worker_says.contains("doca 25.10-1.2.8"),
            "the worker's heartbeat {worker_says:?}"
        );
        ensure!(
            noop_says.contains("doca 25.10-1.2.8") && !noop_says.contains("inbox"),
            "no-op heartbeat {noop_says:?}, the worker's {worker_says:?}"
        );
        clean(&w, &[&r])
    }));
    v.push(case("noop_heartbeat_on_the_inbox_stack", || {
        let w = hbv3();
        succeed(&w, 1, json!({}))?;
        let r = enable(&w, 1);
        r.expect_exit(0)?;
        let says = heartbeat_message(&w);
        ensure!(
            says.starts_with("RDMA ready") && says.contains("inbox"),
            "no-op heartbeat {says:?}"
        );
        ensure!(heartbeat_state(&w).as_deref() == Some("Ready"), "Ready");
        clean(&w, &[&r])
    }));
    v.push(case("stale_transitioning_status_without_checkpoint_runs", || {
        let w = hbv3();
        write(
            &w.status_path(1),
            r#"[{"version":1.0,"timestampUTC":"2020-01-01T00:00:00Z","status":{"name":"x","operation":"Enable","status":"transitioning","code":0,"formattedMessage":{"lang":"en-US","message":"old"}}}]"#,
        );
        succeed(&w, 1, json!({}))?;
        Ok(())
    }));
    v
}

fn checkpoint(w: &World) -> Result<serde_json::Value, String> {
    let t = fs::read_to_string(w.data_dir().join("state.json")).map_err(|e| e.to_string())?;
    serde_json::from_str(&t).map_err(|e| format!("checkpoint not JSON: {e}"))
}

fn set_mtime(w: &World, seq: u64, t: std::time::SystemTime) {
    fs::File::options()
        .write(true)
        .open(w.handler_dir.join(format!("config/{seq}.settings")))
        .unwrap()
        .set_modified(t)
        .unwrap();
}

fn heartbeat_message(w: &World) -> String {
    let t = fs::read_to_string(w.handler_dir.join("heartbeat.log")).unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&t)
        .ok()
        .and_then(|v| {
            v[0]["heartbeat"]["formattedMessage"]["message"]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_default()
}

pub fn wait_for_worker(w: &World) -> CaseResult {
    ensure!(
        poll_for(Duration::from_secs(15), || worker_running(&w.handler_dir)),
        "worker did not start"
    );
    Ok(())
}

pub fn port_up(w: &World) {
    let p = "sys/bus/pci/devices/0101:00:00.0/infiniband/mlx5_0/ports/1";
    w.set_file(&format!("{p}/state"), "4: ACTIVE\n");
    w.set_file(&format!("{p}/phys_state"), "5: LinkUp\n");
}

#[test]
fn sequence_numbers() {
    run_table("seqno", cases());
}
