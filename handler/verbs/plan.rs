//! `plan`: what enable would do on this host with these settings, without doing it.

use crate::agent::settings::{self, PublicSettings};
use crate::host::{self, imds, Root};
use crate::plan;
use serde::Serialize;
use std::path::Path;

/// The exit code: 0 when enable would install or verify, the refusal's code otherwise.
pub fn run(settings_file: Option<&Path>, json: bool) -> i32 {
    crate::sys::logging::init(None, false);
    let public = match settings_file {
        None => PublicSettings::default(),
        Some(p) => match settings::read_public_settings(p) {
            Ok(s) => s,
            Err(e) => {
                let f = crate::error::Failure::from(e);
                crate::tell!("ibdriver: {f}");
                return f.code.exit_code();
            }
        },
    };
    show(&Root::from_env(), &public, json)
}

#[derive(Serialize)]
struct PlanOutput<'a> {
    facts: &'a host::HostFacts,
    settings: &'a PublicSettings,
    plan: &'a plan::Plan,
}

fn show(root: &Root, public: &PublicSettings, json: bool) -> i32 {
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
