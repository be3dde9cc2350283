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
