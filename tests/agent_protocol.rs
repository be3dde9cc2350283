//! The built binary driven through a fake agent tree exactly as HandlerManifest.json says.

mod common;
use common::*;
use serde_json::json;
use std::fs;
use std::time::{Duration, Instant};

const HB: &str = "Standard_HB120rs_v3";

#[test]
fn healthy_host_reaches_success_with_health_report_and_noop_after() {
    let w = World::new("hbv3", HB);
    assert_eq!(code(&w.run("install", 0)), 0);
    w.settings(1, json!({}));
    let t = Instant::now();
    let out = w.run("enable", 1);
    let took = t.elapsed();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(took < Duration::from_secs(10), "enable took {took:?}");
    let first = w.status(1).expect("status written before exit");
    assert!(["transitioning", "success"].contains(&status_value(&first).as_str()));

    let v = w.wait_terminal(1, Duration::from_secs(20));
    assert_eq!(status_value(&v), "success", "{v}");
    assert_eq!(status_code(&v), 0);
    assert!(
        message(&v).contains("1/1 InfiniBand port(s) ACTIVE (200 Gb/sec (4X HDR))"),
        "{}",
        message(&v)
    );
    let subs = v[0]["status"]["substatus"].as_array().unwrap();
    let names: Vec<&str> = subs.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["preflight", "repair", "configure", "verify", "health"]
    );
    let health: serde_json::Value =
        serde_json::from_str(subs[4]["formattedMessage"]["message"].as_str().unwrap()).unwrap();
    assert_eq!(health["healthy"], true);
    assert_eq!(health["hcas"][0]["name"], "mlx5_0");
    assert_eq!(health["hcas"][0]["ports"][0]["rate"], "200 Gb/sec (4X HDR)");
    assert_eq!(health["hcas"][0]["netdevs"][0]["name"], "ib0");
    assert_eq!(
        health["hcas"][0]["netdevs"][0]["addresses"][0],
        "172.16.1.4/16"
    );
    assert_eq!(
        health["hcas"].as_array().unwrap().len(),
        1,
        "the Ethernet AN function is skipped"
    );
    assert_eq!(health["stack"]["kind"], "inbox");
    assert_eq!(health["stack"]["version"], "39.0-1");
    assert_eq!(w.heartbeat()[0]["heartbeat"]["status"], "Ready");
    assert_eq!(w.mrseq().as_deref(), Some("1"));
    let summary = fs::read_to_string(w.root.join("var/log/azure/ib-vmext-status")).unwrap();
    assert!(summary.contains("Enable seq=1: success"), "{summary}");
    assert!(fs::read_dir(w.log_dir.join("events")).unwrap().count() >= 1);
    assert!(w.log_dir.join("ibdriver.log").exists());

    // Agent restart / reboot with the same N: no work, status untouched.
    let before = fs::read(w.status_path(1)).unwrap();
    let mtime = fs::metadata(w.status_path(1)).unwrap().modified().unwrap();
    let state_before = fs::read(w.data_dir().join("state.json")).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(code(&w.run("enable", 1)), 0);
    // A worker would exist by now: enable returns only after the worker's exec.
    assert!(no_worker_within(&w.handler_dir, Duration::from_secs(5)));
    assert_eq!(fs::read(w.status_path(1)).unwrap(), before);
    assert_eq!(
        fs::metadata(w.status_path(1)).unwrap().modified().unwrap(),
        mtime
    );
    assert_eq!(
        fs::read(w.data_dir().join("state.json")).unwrap(),
        state_before
    );

    // New settings: a new N runs again.
    w.settings(2, json!({"ipoib": "off"}));
    assert_eq!(code(&w.run("enable", 2)), 0);
    assert_eq!(
        status_value(&w.wait_terminal(2, Duration::from_secs(20))),
        "success"
    );
    assert_eq!(w.mrseq().as_deref(), Some("2"));
}

#[test]
fn files_we_create_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new("hbv3", HB);
    w.settings(0, json!({}));
    assert_eq!(code(&w.run("enable", 0)), 0);
    w.wait_terminal(0, Duration::from_secs(20));
    for p in [
        w.status_path(0),
        w.handler_dir.join("heartbeat.log"),
        w.handler_dir.join("mrseq"),
        w.data_dir().join("state.json"),
        w.log_dir.join("ibdriver.log"),
        w.root.join("var/log/azure/ib-vmext-status"),
    ] {
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o077;
        assert_eq!(mode, 0, "{} is readable by others", p.display());
    }
    let mode = fs::metadata(w.data_dir()).unwrap().permissions().mode() & 0o077;
    assert_eq!(mode, 0);
}

#[test]
fn empty_settings_file_means_defaults() {
    let w = World::new("hbv4", "Standard_HB176rs_v4");
    w.settings_raw(0, "");
    assert_eq!(code(&w.run("enable", 0)), 0);
    let v = w.wait_terminal(0, Duration::from_secs(20));
    assert_eq!(status_value(&v), "success", "{v}");
    assert!(message(&v).contains("400 Gb/sec (4X NDR)"));
}

#[test]
fn eight_port_ndv4_verifies_every_port() {
    let w = World::new("ndv4", "Standard_ND96asr_v4");
    w.settings(3, json!({"stack": "inbox"}));
    assert_eq!(code(&w.run("enable", 3)), 0);
    let v = w.wait_terminal(3, Duration::from_secs(20));
    assert_eq!(status_value(&v), "success", "{v}");
    assert!(
        message(&v).contains("8/8 InfiniBand port(s) ACTIVE"),
        "{}",
        message(&v)
    );
}

#[test]
fn connectx3_pro_host_verifies_with_mlx4_modules() {
    let w = World::new("nc24rsv3", "Standard_NC24rs_v3");
    w.settings(1, json!({}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    let v = w.wait_terminal(1, Duration::from_secs(20));
    assert_eq!(status_value(&v), "success", "{v}");
    let health = &v[0]["status"]["substatus"][4]["formattedMessage"]["message"];
    assert!(health.as_str().unwrap().contains("mlx4_ib"));
}

fn refused(host: &str, size: &str, setup: impl Fn(&World), want: u64) -> World {
    let w = World::new(host, size);
    setup(&w);
    w.settings(5, json!({}));
    let t = Instant::now();
    let out = w.run("enable", 5);
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(
        code(&out) as u64,
        want,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = w.status(5).expect("status written");
    assert_eq!(status_value(&v), "error");
    assert_eq!(status_code(&v), want, "{}", message(&v));
    assert!(!message(&v).is_empty() && !message(&v).contains('\n'));
    assert_eq!(w.heartbeat()[0]["heartbeat"]["status"], "NotReady");
    assert!(!worker_running(&w.handler_dir));
    w
}

#[test]
fn no_infiniband_device_is_code_11() {
    let w = refused("dseries", "Standard_D4s_v5", |_| {}, 11);
    assert!(message(&w.status(5).unwrap()).contains("Standard_D4s_v5"));
}

#[test]
fn not_hyperv_is_code_10() {
    refused("nonazure", "Standard_HB120rs_v3", |_| {}, 10);
}

#[test]
fn unsupported_os_is_code_12() {
    refused(
        "hbv3",
        HB,
        |w| {
            w.set_file(
                "etc/os-release",
                &fs::read_to_string(fixtures().join("os-release/fedora-40")).unwrap(),
            )
        },
        12,
    );
}

#[test]
fn network_direct_vm_is_code_13() {
    refused(
        "dseries",
        "Standard_H16r",
        |w| w.kvp(&[("NdDriverVersion", "142.0")]),
        13,
    );
}

/// Install-needed is judged by the worker, which probes the installed stack (enable's
/// synchronous part has no time for `ofed_info` or `rpm`). Here the package manager fails.
fn install_fails(host: &str, public: serde_json::Value) -> (World, serde_json::Value) {
    let w = World::new(host, HB);
    w.settings(5, public);
    assert_eq!(code(&w.run("enable", 5)), 0);
    let v = w.wait_terminal(5, Duration::from_secs(20));
    assert_eq!(status_value(&v), "error");
    assert_eq!(status_code(&v), 215, "{}", message(&v));
    assert_eq!(w.heartbeat()[0]["heartbeat"]["status"], "NotReady");
    assert_eq!(w.mrseq().as_deref(), Some("5"));
    (w, v)
}

#[test]
fn a_failing_package_manager_ends_in_a_clear_error() {
    let (w, v) = install_fails("hbv3-noverbs", json!({}));
    assert!(
        message(&v).contains("refresh package lists failed (exit code 1)"),
        "{}",
        message(&v)
    );
    let subs = v[0]["status"]["substatus"].as_array().unwrap();
    let prereq = subs.iter().find(|s| s["name"] == "prerequisites").unwrap();
    assert_eq!(prereq["status"], "error");
    assert!(w.calls().contains("apt-get update"));
}

#[test]
fn settings_for_another_stack_lead_to_an_install() {
    let (w, _) = install_fails("hbv3", json!({"stack": "doca"}));
    assert!(w.calls().contains("apt-get update"));
}

#[test]
fn port_down_ends_in_error_after_the_bounded_wait() {
    let mut w = World::new("hbv3-portdown", HB);
    w.verify_timeout = 1;
    w.settings(1, json!({}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    let v = w.wait_terminal(1, Duration::from_secs(30));
    assert_eq!(status_value(&v), "error");
    assert_eq!(status_code(&v), 220);
    assert!(
        message(&v).contains("mlx5_0/1 is DOWN (Polling)"),
        "{}",
        message(&v)
    );
    let hb = w.heartbeat();
    assert_eq!(hb[0]["heartbeat"]["status"], "NotReady");
    assert_eq!(hb[0]["heartbeat"]["code"], 220);
}

#[test]
fn imds_unreachable_is_not_fatal() {
    let mut w = World::new("hbv3", HB);
    w.imds_url = dead_url();
    w.settings(1, json!({}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    assert_eq!(
        status_value(&w.wait_terminal(1, Duration::from_secs(20))),
        "success"
    );
}

#[test]
fn malformed_settings_exit_1_with_their_code() {
    for (text, want) in [
        (
            r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"stack":"auto","bogus":1}}}]}"#,
            103,
        ),
        (
            r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"reboot":"always"}}}]}"#,
            103,
        ),
        ("{ not json", 102),
        (r#"{"runtimeSettings":[]}"#, 102),
    ] {
        let w = World::new("hbv3", HB);
        w.settings_raw(1, text);
        let out = w.run("enable", 1);
        assert_eq!(code(&out), 1, "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        let v = w.status(1).unwrap();
        assert_eq!(status_value(&v), "error");
        assert_eq!(status_code(&v), want, "{text}: {}", message(&v));
        if want == 103 && text.contains("bogus") {
            assert!(message(&v).contains("bogus"));
        }
    }
}

#[test]
fn missing_settings_file_for_nonzero_seq_is_an_error() {
    let w = World::new("hbv3", HB);
    let out = w.run("enable", 4);
    assert_eq!(code(&out), 1);
    assert_eq!(status_code(&w.status(4).unwrap()), 102);
}

#[test]
fn missing_handler_environment_exits_1_without_panic() {
    let w = World::new("hbv3", HB);
    fs::remove_file(w.handler_dir.join("HandlerEnvironment.json")).unwrap();
    let out = w.run("enable", 1);
    assert_eq!(code(&out), 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("HandlerEnvironment.json not found"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
}

#[test]
fn sequence_number_is_inferred_from_newest_settings_file() {
    let w = World::new("hbv3", HB);
    w.settings(7, json!({}));
    let out = w
        .command(&["enable"], 0)
        .env_remove("ConfigSequenceNumber")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0);
    assert_eq!(
        status_value(&w.wait_terminal(7, Duration::from_secs(20))),
        "success"
    );
}

#[test]
fn protected_settings_decrypt_with_3des_and_aes() {
    for cipher in ["-des3", "-aes256"] {
        let w = World::new("hbv3", HB);
        let (thumb, crt) = w.certificate(true);
        let secret = "http://user:S3cretPw@127.0.0.1:3128";
        let blob = w.encrypt(&json!({"proxy": secret}).to_string(), &crt, cipher);
        w.protected_settings(1, json!({}), &blob, &thumb);
        let out = w.run("enable", 1);
        assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
        let v = w.wait_terminal(1, Duration::from_secs(20));
        assert_eq!(status_value(&v), "success", "{cipher}: {v}");
        assert!(
            !w.all_text().contains("S3cretPw"),
            "secret leaked with {cipher}"
        );
    }
}

#[test]
fn unreadable_protected_settings_have_their_own_codes_and_leak_nothing() {
    let secret = "S3cretPw-never-print";
    // Each case builds (protected settings blob, thumbprint) in its world.
    type Make<'a> = Box<dyn Fn(&World) -> (String, String) + 'a>;
    let cases: Vec<(&str, Make<'_>, u64)> = vec![
        (
            "wrong thumbprint",
            Box::new(|w: &World| {
                let (_, crt_a) = w.certificate(false);
                let (thumb_b, _) = w.certificate(true);
                (
                    w.encrypt(
                        &json!({"proxy": format!("http://u:{secret}@127.0.0.1:1")}).to_string(),
                        &crt_a,
                        "-des3",
                    ),
                    thumb_b,
                )
            }),
            105,
        ),
        (
            "missing key",
            Box::new(|w: &World| {
                let (thumb, crt) = w.certificate(true);
                fs::remove_file(w.lib_dir.join(format!("{thumb}.prv"))).unwrap();
                (
                    w.encrypt(
                        &json!({"proxy": format!("http://u:{secret}@127.0.0.1:1")}).to_string(),
                        &crt,
                        "-des3",
                    ),
                    thumb,
                )
            }),
            104,
        ),
        (
            "unknown certificate",
            Box::new(|w: &World| {
                let (_, crt) = w.certificate(false);
                (
                    w.encrypt(
                        &json!({"proxy": format!("http://u:{secret}@127.0.0.1:1")}).to_string(),
                        &crt,
                        "-des3",
                    ),
                    "AB".repeat(20),
                )
            }),
            104,
        ),
        (
            "bad base64",
            Box::new(|w: &World| {
                let (thumb, _) = w.certificate(true);
                (format!("!!{secret}!!"), thumb)
            }),
            106,
        ),
        (
            "non-JSON plaintext",
            Box::new(|w: &World| {
                let (thumb, crt) = w.certificate(true);
                (
                    w.encrypt(&format!("proxy={secret}"), &crt, "-aes256"),
                    thumb,
                )
            }),
            106,
        ),
        (
            "unknown protected key",
            Box::new(|w: &World| {
                let (thumb, crt) = w.certificate(true);
                (
                    w.encrypt(&json!({"password": secret}).to_string(), &crt, "-aes256"),
                    thumb,
                )
            }),
            103,
        ),
    ];
    for (name, make, want) in cases {
        let w = World::new("hbv3", HB);
        let (blob, thumb) = make(&w);
        w.protected_settings(1, json!({}), &blob, &thumb);
        let out = w.run("enable", 1);
        assert_eq!(code(&out), 1, "{name}");
        let v = w.status(1).unwrap();
        assert_eq!(status_value(&v), "error", "{name}");
        assert_eq!(status_code(&v), want, "{name}: {}", message(&v));
        let everything = format!(
            "{}{}{}",
            w.all_text().replace(&blob, ""),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!everything.contains(secret), "{name}: secret leaked");
        assert!(!everything.contains("panicked"), "{name}");
    }
}

#[test]
fn disable_and_uninstall_remove_our_state_but_keep_logs() {
    let w = World::new("hbv3", HB);
    w.fake_systemd("", false);
    w.settings(1, json!({}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    assert_eq!(
        status_value(&w.wait_terminal(1, Duration::from_secs(20))),
        "success"
    );
    let calls = w.calls();
    assert!(
        calls.contains("systemd-run --unit=ibdriver-worker-1-"),
        "{calls}"
    );
    assert!(
        calls.contains("systemctl enable --now ibdriver-health.timer"),
        "{calls}"
    );
    let unit =
        fs::read_to_string(w.root.join("etc/systemd/system/ibdriver-health.service")).unwrap();
    assert!(unit.contains("monitor --handler-dir"), "{unit}");
    assert!(w
        .root
        .join("etc/systemd/system/ibdriver-health.timer")
        .exists());

    // The monitor the timer runs: healthy, then a port goes down.
    let beat = w
        .command(
            &["monitor", "--handler-dir", &w.handler_dir.to_string_lossy()],
            1,
        )
        .output()
        .unwrap();
    assert_eq!(code(&beat), 0);
    assert_eq!(w.heartbeat()[0]["heartbeat"]["status"], "Ready");
    w.set_file(
        "sys/bus/pci/devices/0101:00:00.0/infiniband/mlx5_0/ports/1/state",
        "1: DOWN\n",
    );
    w.command(
        &["monitor", "--handler-dir", &w.handler_dir.to_string_lossy()],
        1,
    )
    .output()
    .unwrap();
    let hb = w.heartbeat();
    assert_eq!(hb[0]["heartbeat"]["status"], "NotReady");
    assert!(hb[0]["heartbeat"]["formattedMessage"]["message"]
        .as_str()
        .unwrap()
        .contains("DOWN"));

    assert_eq!(code(&w.run("disable", 1)), 0);
    assert!(w
        .calls()
        .contains("systemctl disable --now ibdriver-health.timer"));
    assert!(!w
        .root
        .join("etc/systemd/system/ibdriver-health.timer")
        .exists());
    assert!(!w
        .root
        .join("etc/systemd/system/ibdriver-health.service")
        .exists());
    assert_eq!(code(&w.run("uninstall", 1)), 0);
    assert!(!w.data_dir().exists());
    assert!(w.root.join("var/log/azure/ib-vmext-status").exists());
    assert!(!worker_running(&w.handler_dir));
}

#[test]
fn uninstall_during_update_keeps_state() {
    let w = World::new("hbv3", HB);
    w.settings(1, json!({}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    w.wait_terminal(1, Duration::from_secs(20));
    assert_eq!(code(&w.update("0.9.0", VERSION, 1)), 0);
    // The old version's uninstall (the agent runs it after the new version's update).
    assert_eq!(code(&w.run_as("uninstall", 1, "0.9.0")), 0);
    assert!(w.data_dir().join("state.json").exists());
    // The new version's enable with the same N does no work.
    let before = fs::read(w.status_path(1)).unwrap();
    assert_eq!(code(&w.run("enable", 1)), 0);
    // No worker was started (enable returns only after a worker's exec), so none can write.
    assert!(no_worker_within(&w.handler_dir, Duration::from_secs(5)));
    assert_eq!(fs::read(w.status_path(1)).unwrap(), before);
}

#[test]
fn a_stale_update_marker_does_not_keep_state_from_a_real_uninstall() {
    let w = World::new("hbv3", HB);
    w.settings(1, json!({}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    w.wait_terminal(1, Duration::from_secs(20));
    w.wait_worker_gone(Duration::from_secs(20));
    assert_eq!(code(&w.update("0.9.0", VERSION, 1)), 0);
    // The old version's uninstall never came; later the new version itself is uninstalled.
    assert_eq!(code(&w.run("disable", 1)), 0);
    assert_eq!(code(&w.run("uninstall", 1)), 0);
    assert!(!w.data_dir().exists());
}

#[test]
fn same_seq_while_worker_runs_is_a_noop_and_newer_seq_supersedes() {
    let mut w = World::new("hbv3-portdown", HB);
    w.verify_timeout = 60;
    w.settings(1, json!({}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    // Wait until the worker is in verify (it polls for the port).
    wait_for(
        "the worker to reach verify",
        Duration::from_secs(30),
        || {
            w.status(1)
                .is_some_and(|v| message(&v).contains("verify: running"))
        },
    );
    let pids = || worker_pids(&w.handler_dir).len();
    // The worker is in verify and writes no status while it waits for the port, so a second
    // enable that did anything (a status of its own, a second worker) changes what is seen here.
    let status_before = fs::read(w.status_path(1)).unwrap();
    let out = w.run("enable", 1);
    assert_eq!(code(&out), 0);
    assert_eq!(
        fs::read(w.status_path(1)).unwrap(),
        status_before,
        "a second enable with the same N wrote a status"
    );
    assert!(
        fs::read_to_string(w.log_dir.join("ibdriver.log"))
            .unwrap_or_default()
            .contains("a worker is already running for this sequence number"),
        "the second enable did not see the running worker"
    );
    assert_eq!(
        pids(),
        1,
        "a second enable with the same N started another worker"
    );
    assert_eq!(status_value(&w.status(1).unwrap()), "transitioning");

    // A newer N takes over at the next safe point; then the port comes up.
    w.settings(2, json!({}));
    assert_eq!(code(&w.run("enable", 2)), 0);
    wait_for(
        "the old worker to leave for the new one",
        Duration::from_secs(30),
        || pids() == 1 && w.status(2).is_some(),
    );
    assert_eq!(status_value(&w.status(2).unwrap()), "transitioning");
    w.set_file(
        "sys/bus/pci/devices/0101:00:00.0/infiniband/mlx5_0/ports/1/state",
        "4: ACTIVE\n",
    );
    w.set_file(
        "sys/bus/pci/devices/0101:00:00.0/infiniband/mlx5_0/ports/1/phys_state",
        "5: LinkUp\n",
    );
    let v = w.wait_terminal(2, Duration::from_secs(30));
    assert_eq!(status_value(&v), "success");
    assert_eq!(w.mrseq().as_deref(), Some("2"));
    // The superseded worker never wrote a terminal status for N=1.
    assert_eq!(status_value(&w.status(1).unwrap()), "transitioning");
}

#[test]
fn status_files_have_the_agents_shape() {
    let w = World::new("hbv3", HB);
    w.settings(1, json!({}));
    w.run("enable", 1);
    let v = w.wait_terminal(1, Duration::from_secs(20));
    let e = &v[0];
    assert_eq!(e["version"], 1.0);
    assert!(e["timestampUTC"].as_str().unwrap().ends_with('Z'));
    let s = &e["status"];
    assert_eq!(s["operation"], "Enable");
    assert_eq!(s["formattedMessage"]["lang"], "en-US");
    for sub in s["substatus"].as_array().unwrap() {
        assert!(["transitioning", "warning", "error", "success"]
            .contains(&sub["status"].as_str().unwrap()));
        assert!(
            sub["formattedMessage"]["lang"].is_string()
                && sub["formattedMessage"]["message"].is_string()
        );
    }
    assert!(fs::read(w.status_path(1)).unwrap().len() <= 128 * 1024);
}

#[test]
fn killed_worker_resumes_on_the_next_enable_with_the_same_seq() {
    let mut w = World::new("hbv3-portdown", HB);
    w.verify_timeout = 60;
    w.settings(1, json!({}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    let pid = wait_value("the worker to start", Duration::from_secs(10), || {
        worker_pids(&w.handler_dir).first().copied()
    });
    // Let it reach the verify stage, then kill it hard.
    wait_for(
        "the worker to reach verify",
        Duration::from_secs(10),
        || {
            fs::read_to_string(w.data_dir().join("state.json"))
                .unwrap_or_default()
                .contains("\"current\": \"verify\"")
        },
    );
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    w.wait_worker_gone(Duration::from_secs(5));
    assert_eq!(status_value(&w.status(1).unwrap()), "transitioning");
    assert_eq!(w.mrseq(), None);

    w.set_file(
        "sys/bus/pci/devices/0101:00:00.0/infiniband/mlx5_0/ports/1/state",
        "4: ACTIVE\n",
    );
    w.set_file(
        "sys/bus/pci/devices/0101:00:00.0/infiniband/mlx5_0/ports/1/phys_state",
        "5: LinkUp\n",
    );
    assert_eq!(code(&w.run("enable", 1)), 0);
    let v = w.wait_terminal(1, Duration::from_secs(20));
    assert_eq!(status_value(&v), "success");
    let state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(w.data_dir().join("state.json")).unwrap())
            .unwrap();
    assert_eq!(
        state["completed"],
        json!(["preflight", "repair", "configure", "verify"])
    );
    assert_eq!(state["seq"], 1);
}

#[test]
fn a_refused_newer_seq_still_stops_the_older_worker() {
    let mut w = World::new("hbv3-portdown", HB);
    w.verify_timeout = 60;
    w.settings(1, json!({}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    wait_for("the worker to start", Duration::from_secs(10), || {
        worker_running(&w.handler_dir)
    });
    w.settings_raw(
        2,
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"bogus":1}}}]}"#,
    );
    assert_eq!(code(&w.run("enable", 2)), 1);
    w.wait_worker_gone(Duration::from_secs(5));
    assert_eq!(
        w.mrseq().as_deref(),
        Some("2"),
        "the old worker must not claim its N"
    );
    assert_eq!(status_value(&w.status(1).unwrap()), "transitioning");
    assert_eq!(w.heartbeat()[0]["heartbeat"]["status"], "NotReady");
}

#[test]
fn a_worker_started_after_disable_does_nothing() {
    let w = World::new("hbv3", HB);
    w.settings(1, json!({}));
    assert_eq!(code(&w.run("install", 1)), 0);
    assert_eq!(code(&w.run("disable", 1)), 0);
    // What a transient unit that was slow to start would run after disable returned.
    let out = w
        .command(
            &[
                "worker",
                "--handler-dir",
                &w.handler_dir.to_string_lossy(),
                "--seq",
                "1",
            ],
            1,
        )
        .output()
        .unwrap();
    assert_eq!(code(&out), 0);
    assert!(w.status(1).is_none());
    assert_eq!(w.mrseq(), None);
}

#[test]
fn a_rerun_after_success_verifies_again() {
    let mut w = World::new("hbv3", HB);
    w.verify_timeout = 1;
    w.settings(1, json!({}));
    assert_eq!(code(&w.run("enable", 1)), 0);
    assert_eq!(
        status_value(&w.wait_terminal(1, Duration::from_secs(20))),
        "success"
    );
    // The port drops; the next enable (agent restart) must not repeat the old verdict.
    w.set_file(
        "sys/bus/pci/devices/0101:00:00.0/infiniband/mlx5_0/ports/1/state",
        "1: DOWN\n",
    );
    assert_eq!(code(&w.run("enable", 1)), 0);
    let v = wait_value("an error status for 1", Duration::from_secs(20), || {
        w.status(1).filter(|v| status_value(v) == "error")
    });
    assert_eq!(status_code(&v), 220, "{}", message(&v));
}

#[test]
fn non_utf8_arguments_are_a_usage_error_not_a_panic() {
    use std::os::unix::ffi::OsStrExt;
    let w = World::new("hbv3", HB);
    let out = w
        .command(&["fetch"], 0)
        .arg(std::ffi::OsStr::from_bytes(b"http://127.0.0.1/\xff"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 1, "{stderr}");
    assert!(stderr.contains("argument 2 is not valid UTF-8"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Without the `fault-injection` feature (every release build) the test trigger does nothing.
#[cfg(not(feature = "fault-injection"))]
#[test]
fn the_test_panic_trigger_is_absent_from_normal_builds() {
    let w = World::new("hbv3", HB);
    let out = w
        .command(&["install"], 0)
        .env("IBDRIVER_TEST_PANIC", "install")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
}

/// A real panic in `verb`: exit 14, an error status with code 200 and a one-line message
/// naming where, a NotReady heartbeat, and the panic in our log.
#[cfg(feature = "fault-injection")]
fn panics_in(verb: &str, args: &[&str]) {
    let w = World::new("hbv3", HB);
    w.settings(1, json!({}));
    let out = w
        .command(args, 1)
        .env("IBDRIVER_TEST_PANIC", verb)
        .output()
        .unwrap();
    let v = if verb == "worker" {
        assert_eq!(code(&out), 0, "enable itself does not panic");
        w.wait_terminal(1, Duration::from_secs(20))
    } else {
        assert_eq!(code(&out), 14, "{}", String::from_utf8_lossy(&out.stderr));
        w.status(1).expect("a status for the panic")
    };
    assert_eq!(status_value(&v), "error", "{v}");
    assert_eq!(status_code(&v), 200);
    let m = message(&v);
    assert!(
        m.contains("internal error (panic at handler/lib.rs:"),
        "{m}"
    );
    assert!(
        !m.contains('\n') && !m.contains("IBDRIVER_TEST_PANIC"),
        "{m}"
    );
    assert_eq!(w.heartbeat()[0]["heartbeat"]["status"], "NotReady");
    assert_eq!(w.heartbeat()[0]["heartbeat"]["code"], 200);
    let log = fs::read_to_string(w.log_dir.join("ibdriver.log")).unwrap();
    assert!(
        log.contains("internal error: panic: IBDRIVER_TEST_PANIC"),
        "{log}"
    );
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_panic_in_enable_is_reported_and_exits_14() {
    panics_in("enable", &["enable"]);
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_panic_in_the_worker_is_reported() {
    panics_in("worker", &["enable"]);
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_panic_in_the_worker_process_exits_14() {
    let w = World::new("hbv3", HB);
    w.settings(1, json!({}));
    let hd = w.handler_dir.display().to_string();
    let out = w
        .command(&["worker", "--handler-dir", &hd, "--seq", "1"], 1)
        .env("IBDRIVER_TEST_PANIC", "worker")
        .output()
        .unwrap();
    assert_eq!(code(&out), 14);
    assert_eq!(status_code(&w.status(1).unwrap()), 200);
}
