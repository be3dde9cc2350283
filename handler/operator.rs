//! Operator verbs that need no agent: `plan`, `health` and `fetch`.

use crate::health;
use crate::host::{self, imds, Root};
use crate::monitor;
use crate::plan;
use crate::settings::{self, PublicSettings};
use serde::Serialize;
use std::path::Path;

#[derive(Serialize)]
struct PlanOutput<'a> {
    facts: &'a host::HostFacts,
    settings: &'a PublicSettings,
    plan: &'a plan::Plan,
}

/// Public settings from a file holding either the bare public settings object or a whole
/// agent `N.settings` document.
pub fn read_public_settings(path: &Path) -> Result<PublicSettings, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    if v.get("runtimeSettings").is_some() {
        let raw = settings::parse_settings_file(&text, path).map_err(|e| e.to_string())?;
        return settings::parse_public(raw.public.as_ref()).map_err(|e| e.to_string());
    }
    settings::parse_public(Some(&v)).map_err(|e| e.to_string())
}

pub fn plan(root: &Root, public: &PublicSettings, json: bool) -> i32 {
    let facts = host::detect(root, Some(&imds::Policy::default()), true);
    let plan = plan::decide(&facts, public, None);
    if json {
        let out = PlanOutput {
            facts: &facts,
            settings: public,
            plan: &plan,
        };
        crate::say!(
            "{}",
            serde_json::to_string_pretty(&out).expect("plan serializes")
        );
    } else {
        let os = facts
            .os
            .as_ref()
            .map(|o| o.pretty_name.clone())
            .unwrap_or_else(|| "unknown OS".into());
        crate::say!(
            "host:   {os}, kernel {}, {}",
            facts.kernel,
            facts.vm_size().unwrap_or("size unknown (no IMDS)")
        );
        for f in facts.infiniband_functions() {
            crate::say!(
                "ib:     {} {:?} {}",
                f.address,
                f.generation,
                f.ib_devices
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
        match &facts.stack {
            Some(s) => crate::say!(
                "stack:  {} {}",
                s.kind.as_str(),
                s.version.as_deref().unwrap_or("")
            ),
            None => crate::say!("stack:  none installed"),
        }
        crate::say!("plan:   {}", plan.summary);
    }
    match plan.action {
        plan::Action::Refuse { failure } => failure.code.exit_code(),
        plan::Action::VerifyOnly { .. } | plan::Action::Install { .. } => 0,
    }
}

pub fn health(root: &Root, json: bool) -> i32 {
    let report: health::HealthReport = monitor::check(root);
    if json {
        crate::say!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        crate::say!("{}", report.summary);
        for h in &report.hcas {
            for p in &h.ports {
                crate::say!(
                    "  {} port {}: {} {} {}",
                    h.name,
                    p.port,
                    p.state,
                    p.phys_state,
                    p.rate
                );
            }
            for n in &h.netdevs {
                crate::say!("    -> {} {}", n.name, n.addresses.join(" "));
            }
        }
        for p in &report.problems {
            crate::say!("  problem: {p}");
        }
    }
    if report.healthy {
        0
    } else {
        report.code.exit_code()
    }
}

/// Where `fetch --into DIR` stages: inside DIR, so nothing outside what the user named is
/// touched, under a name of ours that an earlier interrupted run may have left.
pub const FETCH_STAGING: &str = ".ibdriver-fetch";

/// Is `into` usable: absent, or an empty directory, or one holding only our staging left by an
/// interrupted run (which then resumes)? What is there is never deleted or replaced.
fn fetch_target_ok(into: &Path) -> Result<bool, String> {
    let meta = match std::fs::symlink_metadata(into) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(format!("cannot read {}: {e}", into.display())),
    };
    if !meta.is_dir() {
        return Err(format!(
            "--into {} exists and is not a directory; name a new or empty directory",
            into.display()
        ));
    }
    let entries =
        std::fs::read_dir(into).map_err(|e| format!("cannot read {}: {e}", into.display()))?;
    for e in entries {
        let e = e.map_err(|e| format!("cannot read {}: {e}", into.display()))?;
        let ours = e.file_name() == FETCH_STAGING && e.file_type().is_ok_and(|t| t.is_dir());
        if !ours {
            return Err(format!(
                "--into {} is not empty; name a new or empty directory (nothing was changed)",
                into.display()
            ));
        }
    }
    Ok(true)
}

/// `fetch`: the download pipeline on its own, with progress on stderr. DIR must be new or
/// empty: the verified result is moved into it, and nothing already there is ever replaced.
pub fn fetch(req: &crate::fetch::Request, into: &Path) -> i32 {
    use crate::error::{Code, Failure};
    use crate::fetch;
    let existed = match fetch_target_ok(into) {
        Ok(existed) => existed,
        Err(msg) => {
            crate::tell!("ibdriver: {}", Failure::new(Code::Usage, msg));
            return Code::Usage.exit_code();
        }
    };
    if !existed {
        // DIR and any missing parent 0755 whatever the umask; a link there is refused.
        if let Err(e) = crate::fsutil::ensure_dir(into, crate::fsutil::SYSTEM_DIR_MODE) {
            crate::tell!("ibdriver: {}", Failure::state_io(into, e));
            return Code::StateIo.exit_code();
        }
    }
    let staging = into.join(FETCH_STAGING);
    let env = crate::fetch::proxy::environment();
    let waagent_conf = std::fs::read_to_string(Root::from_env().path("etc/waagent.conf")).ok();
    let progress = fetch::progress_every(10, |pct, done, total| {
        crate::tell!("fetch: {pct}% ({done} of {total} bytes)")
    });
    let opts = fetch::Options {
        proxy: fetch::proxy::choose(&req.url, None, &env, waagent_conf.as_deref()),
        retry: fetch::RetryPolicy::default(),
        max_extract: fetch::DEFAULT_MAX_EXTRACT,
        limits: fetch::Limits::default(),
        sleep: &std::thread::sleep,
        progress: &progress,
        keep_going: &|| true,
        replace: false,
    };
    let r = fetch::fetch(req, &staging, into, &opts);
    // Our staging goes when empty (a resumable partial download stays in it); DIR goes only
    // when this run made it and nothing came of it.
    let _ = std::fs::remove_dir(&staging);
    if !existed && r.is_err() {
        let _ = std::fs::remove_dir(into);
    }
    match r {
        Ok(out) => {
            crate::tell!(
                "fetch: verified {} bytes (sha256 {}), {} files -> {}",
                out.size,
                req.sha256.to_ascii_lowercase(),
                out.files,
                out.path.display()
            );
            0
        }
        Err(e) => {
            let f = e.failure();
            crate::tell!("ibdriver: {f}");
            f.code.exit_code()
        }
    }
}
