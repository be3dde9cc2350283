//! The verify stage's health check of the host as it is ([`check`]). The judgement itself is
//! pure ([`evaluate()`]); here are its inputs: sysfs, the installed stack, the addresses `ip`
//! reports and what configure recorded.

mod evaluate;

pub use evaluate::{evaluate, required_modules, HcaReport, HealthReport, NetdevReport, PortReport};

use crate::host::{self, Root};

/// One health check: the report, then the heartbeat that carries it. What the configure stage
/// set up (`configure.json`) is checked too.
pub fn check(root: &Root) -> HealthReport {
    let sysfs = host::read_sysfs(root);
    let stack = host::stack::detect(root);
    let addresses = crate::host::ip::addresses();
    let report = evaluate(
        &sysfs.kernel,
        &sysfs.mellanox,
        &sysfs.modules,
        stack.as_ref(),
        &addresses,
    );
    let unmet = crate::stages::configure::unmet_now(root, &sysfs, move || addresses);
    report.with_unmet(unmet)
}
