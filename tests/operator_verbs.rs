//! `plan --json` and `health --json` against fake hosts.

mod common;
use common::*;

fn json_out(w: &World, args: &[&str]) -> (i32, serde_json::Value) {
    let out = w.command(args, 0).output().unwrap();
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (code(&out), v)
}

#[test]
fn plan_reports_facts_and_decision() {
    let w = World::new("hbv3", "Standard_HB120rs_v3");
    w.kvp(&[("IPoIB_Data", "NUMPAIRS:1|00155D33FF2C:172.16.1.4|")]);
    // EFI variable: 4 attribute bytes, then 1 = Secure Boot on.
    let efi = [6u8, 0, 0, 0, 1];
    write(
        &w.root
            .join("sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"),
        efi,
    );
    let (rc, v) = json_out(&w, &["plan", "--json"]);
    assert_eq!(rc, 0);
    let f = &v["facts"];
    assert_eq!(f["os"]["id"], "ubuntu");
    assert_eq!(f["imds"]["vmSize"], "Standard_HB120rs_v3");
    assert_eq!(f["secure_boot"], "enabled");
    assert_eq!(f["kvp"]["ipoib"][0]["ipv4"], "172.16.1.4");
    assert_eq!(f["kvp"]["ipoib"][0]["mac"], "00155d33ff2c");
    assert_eq!(f["hyperv"], true);
    assert_eq!(v["plan"]["action"]["kind"], "verify-only");
    assert_eq!(
        v["plan"]["stages"],
        serde_json::json!(["preflight", "repair", "configure", "verify"])
    );
    assert_eq!(v["settings"]["stack"], "auto");
}

#[test]
fn plan_detects_ofed_with_ofed_info() {
    let w = World::new("ndv4", "Standard_ND96asr_v4");
    write(&w.root.join("usr/bin/ofed_info"), "");
    write_exec(
        &w.stubs.join("ofed_info"),
        "#!/bin/sh\necho 'MLNX_OFED_LINUX-24.10-1.1.4.0:'\n",
    );
    let (rc, v) = json_out(&w, &["plan", "--json"]);
    assert_eq!(rc, 0);
    assert_eq!(v["facts"]["stack"]["kind"], "mlnx-ofed");
    assert_eq!(v["facts"]["stack"]["version"], "24.10-1.1.4.0");
    // DOCA installs the same ofed_info; its directory tells them apart.
    std::fs::create_dir_all(w.root.join("opt/mellanox/doca")).unwrap();
    let (_, v) = json_out(&w, &["plan", "--json"]);
    assert_eq!(v["facts"]["stack"]["kind"], "doca");
}

#[test]
fn plan_refusal_exit_codes_and_settings_file() {
    let w = World::new("dseries", "Standard_D4s_v5");
    let (rc, v) = json_out(&w, &["plan", "--json"]);
    assert_eq!(rc, 11);
    assert_eq!(v["plan"]["action"]["failure"]["code"], "NoInfiniBand");
    let bad = w.tmp.path().join("bad.json");
    write(&bad, r#"{"stack":"auto","nope":true}"#);
    let out = w
        .command(&["plan", "--settings", &bad.to_string_lossy()], 0)
        .output()
        .unwrap();
    assert_eq!(code(&out), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}

#[test]
fn health_exit_code_follows_the_ports() {
    let w = World::new("hbv3", "Standard_HB120rs_v3");
    let (rc, v) = json_out(&w, &["health", "--json"]);
    assert_eq!(rc, 0);
    assert_eq!(v["healthy"], true);
    assert_eq!(v["hcas"][0]["netdevs"][0]["addresses"][0], "172.16.1.4/16");
    let w = World::new("hbv3-portdown", "Standard_HB120rs_v3");
    let (rc, v) = json_out(&w, &["health", "--json"]);
    assert_eq!(rc, 14);
    assert_eq!(v["code"], "PortsNotActive");
}

#[test]
fn usage_errors_exit_1() {
    let w = World::new("hbv3", "Standard_HB120rs_v3");
    for args in [&["frobnicate"][..], &["enable", "extra"], &[]] {
        let out = w.command(args, 0).output().unwrap();
        assert_eq!(code(&out), 1, "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
    }
}

#[test]
fn plan_shows_what_would_be_installed() {
    let w = World::new("hbv3-noverbs", "Standard_HB120rs_v3");
    let (rc, v) = json_out(&w, &["plan", "--json"]);
    assert_eq!(rc, 0);
    assert_eq!(v["plan"]["action"]["kind"], "install");
    let install = &v["plan"]["install"];
    assert_eq!(install["source"], "artifact");
    assert_eq!(install["stack"], "doca");
    assert_eq!(install["version"], "3.2.1");
    assert!(install["url"]
        .as_str()
        .unwrap()
        .ends_with("ubuntu2204_amd64.deb"));
    assert_eq!(install["sha256"].as_str().unwrap().len(), 64);
    let summary = v["plan"]["summary"].as_str().unwrap();
    assert!(
        summary.contains("install doca 3.2.1 (doca-host_3.2.1"),
        "{summary}"
    );
    assert_eq!(v["plan"]["stages"].as_array().unwrap().len(), 10);
}

#[test]
fn connectx3_pro_on_a_new_kernel_is_refused_before_anything_changes() {
    let w = World::new("nc24rsv3", "Standard_NC24rs_v3");
    // The same VM on Ubuntu 22.04 (kernel 5.15) without drivers: MLNX_OFED 4.9 cannot build.
    w.as_distro("ubuntu-22.04", "5.15.0-1073-azure");
    std::fs::remove_file(w.root.join("var/lib/dpkg/status")).unwrap();
    std::fs::remove_file(w.root.join("usr/lib/x86_64-linux-gnu/libibverbs.so.1")).unwrap();
    let (rc, v) = json_out(&w, &["plan", "--json"]);
    assert_eq!(rc, 12);
    assert_eq!(v["plan"]["action"]["failure"]["code"], "StackUnavailable");
    assert!(v["plan"]["summary"]
        .as_str()
        .unwrap()
        .contains("MLNX_OFED 4.9"));
}

/// apply takes its secrets from the environment, but no process (apply itself included) keeps
/// them in /proc/<pid>/environ or cmdline while it runs, and no output or file repeats them.
#[test]
fn apply_keeps_its_secrets_out_of_every_environ() {
    use std::process::Stdio;
    use std::time::Duration;
    let w = World::new("hbv3", "Standard_HB120rs_v3");
    let sas = "SAS1SECRETb64";
    let pass = "PROXYPASS9";
    let package_url = format!("https://acct.blob.core.windows.net/c/pkg.tgz?sv=2024&sig={sas}");
    let proxy = format!("http://user:{pass}@127.0.0.1:3128");
    let dir = w.tmp.path();
    let (pid_file, go) = (dir.join("ip.pid"), dir.join("go"));
    // `ip` (the health check's) holds apply mid-run until the test has looked.
    write_exec(
        &w.stubs.join("ip"),
        &format!(
            "#!/bin/sh\necho \"$$ $PPID\" > '{pid}.tmp' && mv '{pid}.tmp' '{pid}'\ni=0\nwhile [ ! -e '{go}' ] && [ $i -lt 6000 ]; do sleep 0.01; i=$((i+1)); done\necho '[{{\"ifname\":\"ib0\",\"addr_info\":[{{\"family\":\"inet\",\"local\":\"172.16.1.4\",\"prefixlen\":16}}]}}]'\n",
            pid = pid_file.display(),
            go = go.display()
        ),
    );
    let child = w
        .command(&["apply"], 0)
        .env("IBDRIVER_PACKAGE_URL", &package_url)
        .env("IBDRIVER_PROXY", &proxy)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let apply_pid = child.id();
    let (stub_pid, stub_parent) = wait_value("apply to run ip", Duration::from_secs(120), || {
        let t = std::fs::read_to_string(&pid_file).ok()?;
        let mut it = t.split_whitespace().map(|n| n.parse::<u32>().unwrap());
        Some((it.next().unwrap(), it.next().unwrap()))
    });
    assert_eq!(stub_parent, apply_pid, "ip is apply's own child");
    let mut seen = Vec::new();
    for pid in [apply_pid, stub_pid] {
        for part in ["environ", "cmdline"] {
            let bytes = std::fs::read(format!("/proc/{pid}/{part}")).unwrap();
            assert!(!bytes.is_empty() || part == "cmdline", "{pid}/{part} empty");
            seen.push((format!("{pid}/{part}"), bytes));
        }
    }
    write(&go, "");
    let out = child.wait_with_output().unwrap();
    for (what, bytes) in &seen {
        let text = String::from_utf8_lossy(bytes);
        for secret in [sas, pass] {
            assert!(
                !text.contains(secret),
                "/proc/{what} holds a secret: {text}"
            );
        }
    }
    // The environ apply was started with did carry them; the scan above would have seen them.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 0, "{stdout}\n{stderr}");
    let files = w.all_text();
    for secret in [sas, pass] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{stdout}{stderr}"
        );
        assert!(!files.contains(secret), "a file holds {secret}");
    }
    assert!(w.data_dir().join("log").exists(), "apply wrote its log");
    // The secrets do reach apply across its re-exec: a bad one is refused by name.
    let out = w
        .command(&["apply"], 0)
        .env("IBDRIVER_PROXY", format!("not a url {pass}"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), 1, "{stdout}");
    assert!(
        stdout.contains("error 103 SettingsInvalid: protected settings error: protected setting proxy must be an http or https URL"),
        "{stdout}"
    );
    assert!(!stdout.contains(pass) && !String::from_utf8_lossy(&out.stderr).contains(pass));
}
