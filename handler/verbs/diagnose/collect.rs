//! What goes into the bundle: the handler's files, the host's state, IMDS, and the secrets the
//! redactor must learn first.

use super::bundle::{
    read_tail, to_json, Bundle, State, FILE_CAP, IMDS_TIMEOUT, PROGRAM_TIMEOUT, SECRET_ENV,
};
use super::redact::{self, Redactor};
use crate::agent::environment::{AgentContext, HandlerEnvironment, HANDLER_ENVIRONMENT};
use crate::agent::protected;
use crate::agent::settings;
use crate::host::{imds, stack, Root};
use crate::sys::fsutil::dir_names;
use std::fs::{self};
use std::path::{Path, PathBuf};

/// A path the agent wrote (absolute on the host) read under `IBDRIVER_ROOT` when it exists
/// there, as on a mounted image.
pub(super) fn host_path(root: &Root, p: &Path) -> PathBuf {
    if root.base() == Path::new("/") || p.starts_with(root.base()) {
        return p.to_path_buf();
    }
    let rerooted = root.path(&p.to_string_lossy());
    if rerooted.exists() {
        rerooted
    } else {
        p.to_path_buf()
    }
}

/// The installed handler: `HandlerEnvironment.json` next to or one level above this binary,
/// else the newest `/var/lib/waagent/*InfiniBandDriverLinux*-*/` under the root.
pub(super) fn find_handler(root: &Root) -> Result<(PathBuf, HandlerEnvironment), String> {
    let exe = std::env::current_exe().ok();
    let mut candidates = crate::agent::environment::candidate_paths(None, exe.as_deref());
    let waagent = root.path("var/lib/waagent");
    let mut installed: Vec<(std::time::SystemTime, String)> = dir_names(&waagent)
        .into_iter()
        .filter(|n| n.contains("InfiniBandDriverLinux") && n.contains('-'))
        .filter_map(|n| {
            let m = fs::metadata(waagent.join(&n).join(HANDLER_ENVIRONMENT)).ok()?;
            Some((m.modified().ok()?, n))
        })
        .collect();
    installed.sort();
    if let Some((_, newest)) = installed.last() {
        candidates.push(waagent.join(newest).join(HANDLER_ENVIRONMENT));
    }
    crate::agent::environment::load_handler_environment(&candidates).map_err(|e| match e {
        crate::agent::environment::AgentError::NotFound(_) => format!(
            "no {HANDLER_ENVIRONMENT} beside this binary or under {}/*InfiniBandDriverLinux*-*",
            waagent.display()
        ),
        other => other.to_string(),
    })
}

/// Learn every secret before anything is collected.
pub(super) fn learn_secrets(
    redactor: &mut Redactor,
    root: &Root,
    handler: Option<&AgentContext>,
) -> Vec<String> {
    let mut notes = Vec::new();
    for key in SECRET_ENV {
        if let Some(v) = std::env::var(key).ok().filter(|v| !v.trim().is_empty()) {
            redactor.add(&v);
        }
    }
    // The proxy variables enable left for its worker (sys::runtime), credentials and all.
    for v in crate::sys::runtime::saved_proxy(&root.data_dir()).values() {
        if !v.trim().is_empty() {
            redactor.add(v);
        }
    }
    if let Ok(conf) = fs::read_to_string(root.path("etc/waagent.conf")) {
        for line in conf.lines() {
            if let Some((k, v)) = line.split_once('=') {
                let k = k.trim();
                // `user:password@host`: the credentials go, the host stays readable.
                if k.starts_with("HttpProxy.") && v.contains('@') {
                    redactor.add(v.trim());
                }
            }
        }
    }
    let Some(ctx) = handler else { return notes };
    let cert_dir = ctx.certificate_dir();
    for name in dir_names(&ctx.env.config_folder) {
        if !name.ends_with(".settings") {
            continue;
        }
        let path = ctx.env.config_folder.join(&name);
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let Ok(raw) = settings::parse_settings_file(&text, &path) else {
            notes.push(format!(
                "{name} is not a settings document; only the structural rules apply to it"
            ));
            continue;
        };
        let Some(blob) = raw.protected_blob else {
            continue;
        };
        match protected::decrypt(&blob, raw.thumbprint.as_deref(), &cert_dir, PROGRAM_TIMEOUT) {
            Ok(plain) => {
                let plain = String::from_utf8_lossy(&plain).to_string();
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&plain) {
                    learn_strings(redactor, &v);
                    redactor.add(&serde_json::to_string(&v).unwrap_or_default());
                }
                redactor.add(&plain);
            }
            Err(e) => notes.push(format!(
                "protected settings of {name} could not be decrypted ({e}); their exact values are not scrubbed, the structural rules still apply"
            )),
        }
    }
    notes
}

pub(super) fn learn_strings(redactor: &mut Redactor, v: &serde_json::Value) {
    match v {
        serde_json::Value::String(s) => redactor.add(s),
        serde_json::Value::Array(items) => items.iter().for_each(|i| learn_strings(redactor, i)),
        serde_json::Value::Object(map) => map.values().for_each(|i| learn_strings(redactor, i)),
        _ => {}
    }
}

pub(super) fn collect_handler(b: &mut Bundle, found: &Result<(PathBuf, AgentContext), String>) {
    let (source, ctx) = match found {
        Ok(f) => f,
        Err(why) => {
            for name in [
                "handler/HandlerEnvironment.json",
                "handler/log/",
                "handler/status/",
                "handler/config/",
                "handler/heartbeat.log",
            ] {
                b.missing(name, "HandlerEnvironment.json", why.clone());
            }
            return;
        }
    };
    b.file("handler/HandlerEnvironment.json", source);
    let env = &ctx.env;
    let log = &env.log_folder;
    for expected in [crate::sys::logging::LOG_FILE, "CommandExecution.log"] {
        if !log.join(expected).exists() {
            b.missing(
                &format!("handler/log/{expected}"),
                &log.join(expected).display().to_string(),
                "not present",
            );
        }
    }
    b.dir_files("handler/log", log, |_| true, &[]);
    b.dir_files("handler/status", &env.status_folder, |_| true, &[]);
    collect_settings(b, &env.config_folder);
    b.file("handler/heartbeat.log", &env.heartbeat_file);
    b.file("handler/mrseq", &ctx.handler_dir.join("mrseq"));
}

pub(super) fn collect_settings(b: &mut Bundle, config: &Path) {
    let names: Vec<String> = dir_names(config)
        .into_iter()
        .filter(|n| n.ends_with(".settings"))
        .collect();
    if names.is_empty() {
        b.missing(
            "handler/config/",
            &config.display().to_string(),
            "no settings files",
        );
    }
    for name in names {
        let path = config.join(&name);
        let member = format!("handler/config/{name}");
        match read_tail(&path, FILE_CAP) {
            Ok((bytes, None)) => {
                let text = String::from_utf8_lossy(&bytes);
                let doc = redact::settings_document(&text).unwrap_or_else(|| text.to_string());
                b.text(
                    &member,
                    &path.display().to_string(),
                    &doc,
                    State::Collected,
                    Some("protectedSettings replaced".into()),
                )
            }
            Ok((_, Some(len))) => b.missing(
                &member,
                &path.display().to_string(),
                format!("{len} bytes is larger than a settings file can be"),
            ),
            Err(e) => b.part(
                &member,
                &path.display().to_string(),
                State::Failed,
                Some(e.to_string()),
                0,
            ),
        }
    }
}

/// Port attributes from `class/infiniband`, else from the PCI devices' `infiniband/`, both
/// in the sysfs directory.
pub(super) fn ib_ports(root: &Root) -> Option<String> {
    let class = root.sysfs("class/infiniband");
    let mut devices: Vec<(String, PathBuf)> = dir_names(&class)
        .into_iter()
        .map(|n| (n.clone(), class.join(n)))
        .collect();
    if devices.is_empty() {
        let pci = root.sysfs(crate::host::PCI_DEVICES);
        for f in dir_names(&pci) {
            let ib = pci.join(&f).join("infiniband");
            devices.extend(dir_names(&ib).into_iter().map(|n| (n.clone(), ib.join(n))));
        }
    }
    if devices.is_empty() {
        return None;
    }
    let mut out = String::new();
    for (name, dir) in devices {
        for port in dir_names(&dir.join("ports")) {
            let p = dir.join("ports").join(&port);
            out.push_str(&format!("{name}/{port}"));
            for attr in ["state", "phys_state", "rate", "link_layer"] {
                let v =
                    crate::sys::fsutil::read_trimmed(&p.join(attr)).unwrap_or_else(|| "?".into());
                out.push_str(&format!(" {attr}=\"{v}\""));
            }
            out.push('\n');
        }
    }
    Some(out)
}

pub(super) fn imds_compute() -> Result<String, String> {
    // One short attempt: a support bundle must not wait on a dead metadata service.
    let once = imds::Policy {
        attempt_timeout: IMDS_TIMEOUT,
        pauses: Vec::new(),
        deadline: IMDS_TIMEOUT,
    };
    imds::fetch_compute_body(&imds::base_url(), &once)
}

pub(super) fn collect_host(b: &mut Bundle, root: &Root) {
    let osrelease = root.path("proc/sys/kernel/osrelease");
    if osrelease.exists() {
        b.file("host/kernel.txt", &osrelease);
    } else {
        b.program("host/kernel.txt", "uname", &["-a"]);
    }
    b.file("host/os-release", &root.path("etc/os-release"));
    b.file("host/waagent.conf", &root.path("etc/waagent.conf"));
    b.file("host/proc-modules", &root.path("proc/modules"));
    let class = root.sysfs("class/infiniband").display().to_string();
    match ib_ports(root) {
        Some(text) => b.text(
            "host/ib-ports.txt",
            &format!("{class}/*/ports/*"),
            &text,
            State::Collected,
            None,
        ),
        None => b.missing(
            "host/ib-ports.txt",
            &class,
            "no InfiniBand device registered",
        ),
    }
    b.program("host/ip-addr.json", "ip", &["-j", "addr"]);
    let report = crate::stages::verify::check(root);
    b.text(
        "host/health.json",
        "ibdriver health --json",
        &to_json(&report),
        State::Collected,
        None,
    );
    let stacks = serde_json::json!({
        "detected": stack::detect(root),
        "installed_by_us": stack::read_marker(root),
    });
    b.text(
        "host/stack.json",
        "installed stack detection",
        &to_json(&stacks),
        State::Collected,
        None,
    );
    b.program("host/ofed_info.txt", "ofed_info", &["-s"]);
    b.program("host/dkms-status.txt", "dkms", &["status"]);
    let source = format!("{}/metadata/instance/compute", imds::base_url());
    match imds_compute() {
        Ok(body) => match redact::imds_compute(&body) {
            Some((doc, changed)) => {
                let detail =
                    (!changed.is_empty()).then(|| format!("redacted: {}", changed.join(", ")));
                b.text(
                    "host/imds-compute.json",
                    &source,
                    &doc,
                    State::Collected,
                    detail,
                )
            }
            None => b.part(
                "host/imds-compute.json",
                &source,
                State::Failed,
                Some("IMDS answered with something other than JSON".into()),
                0,
            ),
        },
        Err(e) => b.part("host/imds-compute.json", &source, State::Failed, Some(e), 0),
    }
}
