//! `health`: the health monitor's check, on demand, for an operator.

use crate::host::Root;
use crate::stages::verify;

/// The exit code: 0 when healthy, the report's code otherwise.
pub fn run(json: bool) -> i32 {
    crate::sys::logging::init(None, false);
    show(&Root::from_env(), json)
}

fn show(root: &Root, json: bool) -> i32 {
    let report: verify::HealthReport = verify::check(root);
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
