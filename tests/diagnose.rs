//! `diagnose --out FILE`: the support bundle from a fake host with secrets planted everywhere
//! a real one could leak them.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const SAS: &str = "https://acct.blob.core.windows.net/c/doca.tgz?sv=2024-01-01&sig=PLANTEDSIG123";
const PROXY: &str = "http://user:PlantedPw9@127.0.0.1:3128";
const ENV_SAS: &str = "https://acct.blob.core.windows.net/c/env.tgz?sv=2024-01-01&sig=ENVSIG456";
const ENV_PROXY: &str = "http://envuser:EnvPw42@10.0.0.1:8080";

/// Members of the bundle by name (without the top directory).
fn unpack(path: &Path) -> BTreeMap<String, String> {
    let gz = flate2::read::GzDecoder::new(fs::File::open(path).unwrap());
    let mut archive = tar::Archive::new(gz);
    let mut out = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().to_string();
        let name = name
            .strip_prefix("ibdriver-diagnose/")
            .unwrap_or_else(|| panic!("{name} outside the top directory"))
            .to_string();
        let mut text = String::new();
        entry.read_to_string(&mut text).unwrap();
        out.insert(name, text);
    }
    out
}

fn manifest_part<'a>(m: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    m["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in the manifest: {m:#}"))
}

/// Make the agent's handler directory findable the way diagnose looks for it.
fn install_handler_environment(w: &World) {
    let dir = w
        .root
        .join("var/lib/waagent")
        .join(format!("{NAME}-{VERSION}"));
    write(
        &dir.join("HandlerEnvironment.json"),
        fs::read(w.handler_dir.join("HandlerEnvironment.json")).unwrap(),
    );
}

#[test]
fn bundle_has_every_part_and_no_secret() {
    let mut w = World::new("hbv3", "Standard_HB120rs_v3");
    let plaintext = serde_json::json!({"packageUrl": SAS, "proxy": PROXY}).to_string();
    let (thumb, crt) = w.certificate(true);
    let blob = w.encrypt(&plaintext, &crt, "-aes256");
    w.protected_settings(
        0,
        serde_json::json!({"stack": "doca", "package": {"sha256": "a".repeat(64)}}),
        &blob,
        &thumb,
    );
    install_handler_environment(&w);
    let leak = format!(
        "fetching {SAS} via {PROXY}\nsig=PLANTEDSIG123 PlantedPw9\nsettings {plaintext}\n\
         env {ENV_SAS} {ENV_PROXY}\nconf ConfOnlyPw5\n"
    );
    write(&w.log_dir.join("ibdriver.log"), &leak);
    write(&w.log_dir.join("CommandExecution.log"), &leak);
    write(
        &w.handler_dir.join("status/0.status"),
        format!("[{{\"message\":\"{SAS}\"}}]"),
    );
    write(&w.handler_dir.join("heartbeat.log"), "[{\"heartbeat\":{}}]");
    w.set_file("var/log/azure/ib-vmext-status", &leak);
    w.set_file(
        "etc/waagent.conf",
        "Provisioning.Agent=auto\nHttpProxy.Host=proxyuser:ConfOnlyPw5@proxy.corp\nHttpProxy.Port=3128\n",
    );
    let data = w.data_dir();
    write(&data.join("state.json"), r#"{"seq":0,"current":"fetch"}"#);
    write(&data.join("request.json"), format!("{{\"url\":\"{SAS}\"}}"));
    write(&data.join("artifacts/abc/doca.tgz"), "downloaded artifact");
    write(&data.join("staging/part"), "staging tree");
    // The proxy variables enable left for its worker: collected, their credentials redacted.
    let saved_proxy = "saveduser:SavedPw77@10.1.1.1:3128";
    write(
        &data.join("proxy-env.json"),
        serde_json::json!({ "HTTPS_PROXY": saved_proxy }).to_string(),
    );
    w.set_file("var/log/waagent.log", &format!("{leak}saved SavedPw77\n"));
    let imds = Imds::serve(
        r#"{"vmSize":"Standard_HB120rs_v3","location":"eastus","tags":"owner:PlantedTag1",
        "customData":"PlantedCustom1","userData":"PlantedUser1",
        "publicKeys":[{"keyData":"ssh-rsa AAAAPlantedKey","path":"/home/u/.ssh/authorized_keys"}]}"#
            .to_string(),
    );
    w.imds_url = imds.url.clone();

    let out = w.tmp.path().join("bundle.tgz");
    let run = w
        .command(&["diagnose", "--out", &out.to_string_lossy()], 0)
        .env("IBDRIVER_PACKAGE_URL", ENV_SAS)
        .env("https_proxy", ENV_PROXY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).to_string();
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    assert_eq!(code(&run), 0, "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0], out.to_string_lossy());
    assert!(lines[1].contains("parts collected"), "{stdout}");

    // (3) private.
    let mode = fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Written atomically: nothing but the bundle is left beside it.
    assert!(!fs::read_dir(w.tmp.path()).unwrap().flatten().any(|e| e
        .file_name()
        .to_string_lossy()
        .starts_with(".ibdriver-diagnose")));

    // (1) every part.
    let members = unpack(&out);
    for name in [
        "MANIFEST.json",
        "data/state.json",
        "data/request.json",
        "logs/ib-vmext-status",
        "logs/waagent.log",
        "handler/HandlerEnvironment.json",
        "handler/log/ibdriver.log",
        "handler/log/CommandExecution.log",
        "handler/status/0.status",
        "handler/config/0.settings",
        "handler/heartbeat.log",
        "host/kernel.txt",
        "host/os-release",
        "host/waagent.conf",
        "host/proc-modules",
        "host/ib-ports.txt",
        "host/ip-addr.json",
        "host/health.json",
        "host/stack.json",
        "host/dkms-status.txt",
        "host/imds-compute.json",
    ] {
        assert!(
            members.contains_key(name),
            "{name} missing; have {:?}",
            members.keys()
        );
    }
    assert!(
        !members
            .keys()
            .any(|n| n.contains("artifacts") || n.contains("staging")),
        "{:?}",
        members.keys()
    );
    assert!(members["host/ib-ports.txt"].contains("state=\"4: ACTIVE\""));
    assert!(members["host/ip-addr.json"].contains("172.16.1.4"));
    let health: serde_json::Value = serde_json::from_str(&members["host/health.json"]).unwrap();
    assert_eq!(health["healthy"], true);
    let imds_doc: serde_json::Value =
        serde_json::from_str(&members["host/imds-compute.json"]).unwrap();
    assert_eq!(imds_doc["vmSize"], "Standard_HB120rs_v3");
    assert_eq!(imds_doc["tags"], "owner:<redacted>");
    let settings: serde_json::Value =
        serde_json::from_str(&members["handler/config/0.settings"]).unwrap();
    let hs = &settings["runtimeSettings"][0]["handlerSettings"];
    assert_eq!(hs["protectedSettings"], "<redacted>");
    assert_eq!(hs["publicSettings"]["stack"], "doca");
    assert!(members["host/waagent.conf"].contains("HttpProxy.Host=<redacted>@proxy.corp"));
    assert!(members["logs/waagent.log"].contains("acct.blob.core.windows.net"));
    let manifest: serde_json::Value = serde_json::from_str(&members["MANIFEST.json"]).unwrap();
    assert_eq!(
        manifest_part(&manifest, "host/ofed_info.txt")["state"],
        "missing"
    );
    assert_eq!(
        manifest_part(&manifest, "host/dkms-status.txt")["state"],
        "failed"
    );
    assert_eq!(
        manifest_part(&manifest, "data/artifacts/")["state"],
        "skipped"
    );
    assert!(
        manifest["notes"].as_array().unwrap().is_empty(),
        "{manifest:#}"
    );

    // (2) no secret anywhere: members, stdout, stderr.
    let secrets = [
        "PLANTEDSIG123",
        "PlantedPw9",
        "sv=2024-01-01&sig",
        plaintext.as_str(),
        blob.as_str(),
        "ENVSIG456",
        "EnvPw42",
        "ConfOnlyPw5",
        "SavedPw77",
        "PlantedTag1",
        "PlantedCustom1",
        "PlantedUser1",
        "PlantedKey",
    ];
    for (name, text) in members.iter().chain([
        (&"stdout".to_string(), &stdout),
        (&"stderr".to_string(), &stderr),
    ]) {
        for s in &secrets {
            assert!(!text.contains(s), "{s} leaked into {name}:\n{text}");
        }
    }
}

#[test]
fn missing_parts_are_recorded_not_fatal() {
    let mut w = World::new("hbv3", "Standard_HB120rs_v3");
    // No `ip`, nothing else on PATH; no agent log, no handler, no IMDS.
    fs::remove_file(w.stubs.join("ip")).unwrap();
    w.imds_url = dead_url();
    let out = w.tmp.path().join("b.tar.gz");
    let run = w
        .command(&["diagnose", "--out", &out.to_string_lossy()], 0)
        .env("PATH", &w.stubs)
        .output()
        .unwrap();
    assert_eq!(code(&run), 0, "{}", String::from_utf8_lossy(&run.stderr));
    let members = unpack(&out);
    assert!(!members.contains_key("logs/waagent.log"));
    let m: serde_json::Value = serde_json::from_str(&members["MANIFEST.json"]).unwrap();
    let ip = manifest_part(&m, "host/ip-addr.json");
    assert_eq!(ip["state"], "missing");
    assert!(
        ip["detail"].as_str().unwrap().contains("not on PATH"),
        "{ip}"
    );
    let log = manifest_part(&m, "logs/waagent.log");
    assert_eq!(log["state"], "missing");
    assert_eq!(log["detail"], "not present");
    let handler = manifest_part(&m, "handler/HandlerEnvironment.json");
    assert!(handler["detail"]
        .as_str()
        .unwrap()
        .contains("InfiniBandDriverLinux"));
    assert_eq!(
        manifest_part(&m, "host/imds-compute.json")["state"],
        "failed"
    );
    assert!(members.contains_key("host/health.json"));
}

#[test]
fn long_logs_keep_their_tail() {
    let w = World::new("hbv3", "Standard_HB120rs_v3");
    let line = format!("{} old line\n", "x".repeat(100));
    let mut text = line.repeat(60_000); // about 6 MiB
    text.push_str("the last line\n");
    w.set_file("var/log/waagent.log", &text);
    let out = w.tmp.path().join("b.tgz");
    let run = w
        .command(&["diagnose", "--out", &out.to_string_lossy()], 0)
        .output()
        .unwrap();
    assert_eq!(code(&run), 0);
    let members = unpack(&out);
    let log = &members["logs/waagent.log"];
    assert!(log.len() as u64 <= 5 * 1024 * 1024);
    assert!(log.ends_with("the last line\n") && log.starts_with('x'));
    let m: serde_json::Value = serde_json::from_str(&members["MANIFEST.json"]).unwrap();
    assert_eq!(manifest_part(&m, "logs/waagent.log")["state"], "truncated");
}

#[test]
fn unwritable_out_is_a_usage_error() {
    let w = World::new("hbv3", "Standard_HB120rs_v3");
    let file = w.tmp.path().join("a-file");
    write(&file, "x");
    for out in [file.join("bundle.tgz"), w.tmp.path().to_path_buf()] {
        let run = w
            .command(&["diagnose", "--out", &out.to_string_lossy()], 0)
            .output()
            .unwrap();
        assert_eq!(code(&run), 1);
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("cannot write the bundle"), "{err}");
        assert!(run.stdout.is_empty());
    }
}
