//! The stages of a plan, in the order they run, and the named lists a plan is made of.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Preflight,
    WaitForLocks,
    Prerequisites,
    Fetch,
    Install,
    PostInstall,
    Activate,
    Repair,
    Configure,
    Verify,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Preflight => "preflight",
            Stage::WaitForLocks => "wait-for-locks",
            Stage::Prerequisites => "prerequisites",
            Stage::Fetch => "fetch",
            Stage::Install => "install",
            Stage::PostInstall => "post-install",
            Stage::Activate => "activate",
            Stage::Repair => "repair",
            Stage::Configure => "configure",
            Stage::Verify => "verify",
        }
    }

    /// Stages whose result belongs to one boot and must run again after a reboot: the kernel
    /// may be another (repair), module loads and addresses do not survive it (configure).
    pub fn per_boot(self) -> bool {
        matches!(self, Stage::Repair | Stage::Configure | Stage::Verify)
    }

    /// The stages of a host whose stack is already what was asked for.
    pub const VERIFY_ONLY: [Stage; 4] = [
        Stage::Preflight,
        Stage::Repair,
        Stage::Configure,
        Stage::Verify,
    ];

    /// Installing the distribution's own (inbox) packages.
    pub const INBOX_INSTALL: [Stage; 7] = [
        Stage::Preflight,
        Stage::WaitForLocks,
        Stage::Install,
        Stage::Activate,
        Stage::Repair,
        Stage::Configure,
        Stage::Verify,
    ];

    /// Installing a vendor stack (DOCA, MLNX_OFED) from a downloaded artifact.
    pub const VENDOR_INSTALL: [Stage; 10] = [
        Stage::Preflight,
        Stage::WaitForLocks,
        Stage::Prerequisites,
        Stage::Fetch,
        Stage::Install,
        Stage::PostInstall,
        Stage::Activate,
        Stage::Repair,
        Stage::Configure,
        Stage::Verify,
    ];

    /// Stages every worker runs again, whatever the checkpoint says: the host is judged anew
    /// and a worker never reports success on an old verdict.
    pub fn runs_every_time(self) -> bool {
        Stage::VERIFY_ONLY.contains(&self)
    }
}
