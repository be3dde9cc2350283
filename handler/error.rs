//! Status codes, exit codes and the one-line failure every layer reports.
//!
//! Every layer has its own `thiserror` enum; each converts into a [`Failure`] (code + message)
//! in exactly one place, next to the enum. This file owns the code table that docs/CODES.md
//! documents; a test keeps the two in step.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Declares [`Code`] with its number, exit code and name from one table, so the three cannot
/// drift apart.
macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $number:literal, exit $exit:literal;)+) => {
        /// A documented reason. The number goes into the status file's `code`; the exit code is
        /// what the process returns (compatible with Microsoft.HpcCompute.InfiniBandDriverLinux:
        /// 0, 1, 10-14).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub enum Code {
            $($(#[$doc])* $name,)+
        }

        impl Code {
            pub const ALL: &'static [Code] = &[$(Code::$name,)+];

            /// The value of the status file's `code`.
            pub fn number(self) -> u32 {
                match self {
                    $(Code::$name => $number,)+
                }
            }

            /// The process exit code that goes with this reason.
            pub fn exit_code(self) -> i32 {
                match self {
                    $(Code::$name => $exit,)+
                }
            }

            /// The code a status file's number stands for.
            pub fn from_number(n: u32) -> Option<Code> {
                Code::ALL.iter().copied().find(|c| c.number() == n)
            }

            /// Short name used in logs, events and the docs/CODES.md table.
            pub fn name(self) -> &'static str {
                match self {
                    $(Code::$name => stringify!($name),)+
                }
            }
        }
    };
}

/// Serde for a status file's `code` field: the number, and only a number we define.
pub mod as_number {
    use super::Code;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(code: &Code, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(code.number())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Code, D::Error> {
        let n = u32::deserialize(d)?;
        Code::from_number(n).ok_or_else(|| D::Error::custom(format!("unknown status code {n}")))
    }
}

codes! {
    Success = 0, exit 0;
    NotHyperV = 10, exit 10;
    NoInfiniBand = 11, exit 11;
    OsUnsupported = 12, exit 12;
    VmSizeUnsupported = 13, exit 13;
    Usage = 100, exit 1;
    HandlerEnvironment = 101, exit 1;
    SettingsMalformed = 102, exit 1;
    SettingsInvalid = 103, exit 1;
    ProtectedCertMissing = 104, exit 1;
    ProtectedDecryptFailed = 105, exit 1;
    ProtectedMalformed = 106, exit 1;
    Internal = 200, exit 14;
    StateIo = 201, exit 14;
    WorkerStart = 202, exit 14;
    Superseded = 203, exit 14;
    InstallUnavailable = 210, exit 14;
    StackUnavailable = 211, exit 12;
    VersionNotInCatalog = 212, exit 1;
    LockTimeout = 213, exit 14;
    HeadersUnavailable = 214, exit 14;
    PackageInstallFailed = 215, exit 14;
    InstallerFailed = 216, exit 14;
    DkmsFailed = 217, exit 14;
    RebootRequired = 218, exit 14;
    RebootLoop = 219, exit 14;
    Rebooting = 204, exit 0;
    DisableFailed = 205, exit 14;
    DownloadFailed = 230, exit 14;
    ChecksumMismatch = 231, exit 14;
    PortsNotActive = 220, exit 14;
    SecureBootBlocks = 223, exit 14;
    ModulesMissing = 221, exit 14;
    NoIbPorts = 222, exit 14;
    IpoibNotConfigured = 224, exit 14;
    ConfigureFailed = 225, exit 14;
    RepairFailed = 226, exit 14;
}

/// What the user sees: a code and one line saying what happened and what to do.
/// Messages never carry secrets; constructors of this type take care of that.
/// What lay under a failure, kept as data so that a decision never parses a message (an
/// installer's exit code chooses its hint). A download's failures keep their cause in
/// `net::fetch::FetchError`, whose variants are the decisions made on them. Recorded in the
/// checkpoint's `last_error` with the message; never shown instead of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Cause {
    /// A file system or system call error.
    Io {
        /// The OS error number, when there was one.
        errno: Option<i32>,
    },
    /// A program we ran: its exit code, or none when a signal or our time limit ended it.
    Process { program: String, exit: Option<i32> },
}

impl Cause {
    pub fn io(err: &std::io::Error) -> Cause {
        Cause::Io {
            errno: err.raw_os_error(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub code: Code,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
}

impl Failure {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        let message: String = message.into();
        // One line: status messages are shown in the portal's single-line field.
        let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
        Failure {
            code,
            message,
            cause: None,
        }
    }

    /// The same failure, with what lay under it.
    pub fn because(mut self, cause: Cause) -> Self {
        self.cause = Some(cause);
        self
    }

    /// The same failure with what to do appended to its message (`...; hint`).
    pub fn with_hint(mut self, hint: &str) -> Self {
        self.message = Failure::new(self.code, format!("{}; {hint}", self.message)).message;
        self
    }

    /// The exit code of the program whose failure this is, when it exited on its own.
    pub fn process_exit(&self) -> Option<i32> {
        match &self.cause {
            Some(Cause::Process { exit, .. }) => *exit,
            _ => None,
        }
    }

    pub fn internal(context: &str, err: impl fmt::Display) -> Self {
        Failure::new(Code::Internal, format!("{context}: {err}"))
    }

    pub fn state_io(path: &std::path::Path, err: std::io::Error) -> Self {
        Failure::new(
            Code::StateIo,
            format!(
                "cannot write {}: {err}; check free space and permissions",
                path.display()
            ),
        )
        .because(Cause::io(&err))
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
        for c in Code::ALL.iter().copied() {
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

    /// docs/CODES.md is the code table: exactly one row per code with its number, name and exit
    /// code (and a meaning and an action), and no row for a code that does not exist.
    #[test]
    fn every_code_is_documented_in_docs_codes_md() {
        let doc = include_str!("../docs/CODES.md");
        // `| code | name | exit | meaning | what to do |`, the rows whose first cell is a number.
        let rows: Vec<Vec<&str>> = doc
            .lines()
            .filter_map(|l| l.trim().strip_prefix('|'))
            .map(|l| l.split('|').map(str::trim).collect::<Vec<_>>())
            .filter(|cells| cells[0].parse::<u32>().is_ok())
            .collect();
        for c in Code::ALL.iter().copied() {
            let number = c.number().to_string();
            let mine: Vec<&Vec<&str>> = rows.iter().filter(|r| r[0] == number).collect();
            assert_eq!(
                mine.len(),
                1,
                "docs/CODES.md needs one row for code {number}"
            );
            let row = mine[0];
            assert!(
                row.len() >= 5,
                "docs/CODES.md row {number} has too few columns"
            );
            assert_eq!(row[1], c.name(), "docs/CODES.md row {number}: name");
            let exit = c.exit_code().to_string();
            assert_eq!(row[2], exit, "docs/CODES.md row {number}: exit code");
            assert!(
                !row[3].is_empty() && !row[4].is_empty(),
                "docs/CODES.md row {number}: meaning and what to do"
            );
        }
        for row in &rows {
            assert!(
                Code::ALL.iter().any(|c| c.number().to_string() == row[0]),
                "docs/CODES.md has a row for code {}, which does not exist",
                row[0]
            );
        }
    }

    #[test]
    fn messages_are_one_line() {
        let f = Failure::new(Code::Internal, "a\nb\t c");
        assert_eq!(f.message, "a b c");
    }
}
