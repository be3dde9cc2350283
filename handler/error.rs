//! Status codes, exit codes and the one-line failure every layer reports.
//!
//! Every layer has its own `thiserror` enum; each converts into a [`Failure`] (code + message)
//! in exactly one place, next to the enum. This file owns the code table that the README
//! documents; a test keeps the two in step.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A documented reason. The number goes into the status file's `code`; the exit code is what the
/// process returns (compatible with Microsoft.HpcCompute.InfiniBandDriverLinux: 0, 1, 10-14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Code {
    Success,
    NotHyperV,
    NoInfiniBand,
    OsUnsupported,
    VmSizeUnsupported,
    Usage,
    HandlerEnvironment,
    SettingsMalformed,
    SettingsInvalid,
    ProtectedCertMissing,
    ProtectedDecryptFailed,
    ProtectedMalformed,
    Internal,
    StateIo,
    WorkerStart,
    Superseded,
    InstallUnavailable,
    PortsNotActive,
    ModulesMissing,
    NoIbPorts,
}

impl Code {
    pub const ALL: [Code; 20] = [
        Code::Success,
        Code::NotHyperV,
        Code::NoInfiniBand,
        Code::OsUnsupported,
        Code::VmSizeUnsupported,
        Code::Usage,
        Code::HandlerEnvironment,
        Code::SettingsMalformed,
        Code::SettingsInvalid,
        Code::ProtectedCertMissing,
        Code::ProtectedDecryptFailed,
        Code::ProtectedMalformed,
        Code::Internal,
        Code::StateIo,
        Code::WorkerStart,
        Code::Superseded,
        Code::InstallUnavailable,
        Code::PortsNotActive,
        Code::ModulesMissing,
        Code::NoIbPorts,
    ];

    /// The value of the status file's `code`.
    pub fn number(self) -> u32 {
        match self {
            Code::Success => 0,
            Code::NotHyperV => 10,
            Code::NoInfiniBand => 11,
            Code::OsUnsupported => 12,
            Code::VmSizeUnsupported => 13,
            Code::Usage => 100,
            Code::HandlerEnvironment => 101,
            Code::SettingsMalformed => 102,
            Code::SettingsInvalid => 103,
            Code::ProtectedCertMissing => 104,
            Code::ProtectedDecryptFailed => 105,
            Code::ProtectedMalformed => 106,
            Code::Internal => 200,
            Code::StateIo => 201,
            Code::WorkerStart => 202,
            Code::Superseded => 203,
            Code::InstallUnavailable => 210,
            Code::PortsNotActive => 220,
            Code::ModulesMissing => 221,
            Code::NoIbPorts => 222,
        }
    }

    /// The process exit code that goes with this reason.
    pub fn exit_code(self) -> i32 {
        match self {
            Code::Success => 0,
            Code::NotHyperV => 10,
            Code::NoInfiniBand => 11,
            Code::OsUnsupported => 12,
            Code::VmSizeUnsupported => 13,
            Code::Usage
            | Code::HandlerEnvironment
            | Code::SettingsMalformed
            | Code::SettingsInvalid
            | Code::ProtectedCertMissing
            | Code::ProtectedDecryptFailed
            | Code::ProtectedMalformed => 1,
            _ => 14,
        }
    }

    /// Short name used in logs, events and the README table.
    pub fn name(self) -> &'static str {
        match self {
            Code::Success => "Success",
            Code::NotHyperV => "NotHyperV",
            Code::NoInfiniBand => "NoInfiniBand",
            Code::OsUnsupported => "OsUnsupported",
            Code::VmSizeUnsupported => "VmSizeUnsupported",
            Code::Usage => "Usage",
            Code::HandlerEnvironment => "HandlerEnvironment",
            Code::SettingsMalformed => "SettingsMalformed",
            Code::SettingsInvalid => "SettingsInvalid",
            Code::ProtectedCertMissing => "ProtectedCertMissing",
            Code::ProtectedDecryptFailed => "ProtectedDecryptFailed",
            Code::ProtectedMalformed => "ProtectedMalformed",
            Code::Internal => "Internal",
            Code::StateIo => "StateIo",
            Code::WorkerStart => "WorkerStart",
            Code::Superseded => "Superseded",
            Code::InstallUnavailable => "InstallUnavailable",
            Code::PortsNotActive => "PortsNotActive",
            Code::ModulesMissing => "ModulesMissing",
            Code::NoIbPorts => "NoIbPorts",
        }
    }
}

/// What the user sees: a code and one line saying what happened and what to do.
/// Messages never carry secrets; constructors of this type take care of that.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub code: Code,
    pub message: String,
}

impl Failure {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        let message: String = message.into();
        // One line: status messages are shown in the portal's single-line field.
        let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
        Failure { code, message }
    }

    pub fn internal(context: &str, err: impl fmt::Display) -> Self {
        Failure::new(Code::Internal, format!("{context}: {err}"))
    }

    pub fn state_io(path: &std::path::Path, err: impl fmt::Display) -> Self {
        Failure::new(
            Code::StateIo,
            format!(
                "cannot write {}: {err}; check free space and permissions",
                path.display()
            ),
        )
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{} {}] {}",
            self.code.number(),
            self.code.name(),
            self.message
        )
    }
}

impl std::error::Error for Failure {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for c in Code::ALL {
            assert!(seen.insert(c.number()), "duplicate {}", c.number());
        }
    }

    #[test]
    fn refusals_carry_their_exit_code_as_status_code() {
        for c in [
            Code::NotHyperV,
            Code::NoInfiniBand,
            Code::OsUnsupported,
            Code::VmSizeUnsupported,
        ] {
            assert_eq!(c.number() as i32, c.exit_code());
        }
    }

    #[test]
    fn settings_problems_exit_1_and_failures_exit_14() {
        assert_eq!(Code::ProtectedDecryptFailed.exit_code(), 1);
        assert_eq!(Code::SettingsInvalid.exit_code(), 1);
        assert_eq!(Code::PortsNotActive.exit_code(), 14);
        assert_eq!(Code::Success.exit_code(), 0);
    }

    #[test]
    fn every_code_is_documented_in_the_readme() {
        let readme = include_str!("../README.md");
        for c in Code::ALL {
            let row = format!("| {} | {} |", c.number(), c.name());
            assert!(readme.contains(&row), "README lacks row starting {row}");
        }
    }

    #[test]
    fn messages_are_one_line() {
        let f = Failure::new(Code::Internal, "a\nb\t c");
        assert_eq!(f.message, "a b c");
    }
}
