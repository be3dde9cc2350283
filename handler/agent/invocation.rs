//! One run of an agent verb: where it runs (the agent's environment, the root, our binary),
//! which operation it is, and the one way it reports: status file, heartbeat, our log, the
//! summary log and a telemetry event.

use crate::agent::environment::{AgentContext, AgentError};
use crate::agent::events::{self, Level};
use crate::agent::status::{self, HeartbeatState, StatusReport, SubStatus};
use crate::error::{Code, Failure};
use crate::host::Root;
use crate::sys::{fsutil, logging};
use std::path::PathBuf;

/// The operation as the status file and the events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Install,
    Enable,
    Disable,
    Uninstall,
    Update,
    Monitor,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Install => "Install",
            Operation::Enable => "Enable",
            Operation::Disable => "Disable",
            Operation::Uninstall => "Uninstall",
            Operation::Update => "Update",
            Operation::Monitor => "Monitor",
        }
    }

    /// Disable and uninstall must work even when our log folder is unusable: the extension
    /// has to stay removable.
    fn survives_a_bad_log_folder(self) -> bool {
        matches!(self, Operation::Disable | Operation::Uninstall)
    }
}

/// Everything a verb needs about where it runs.
pub struct Invocation {
    pub agent: AgentContext,
    pub root: Root,
    pub exe: PathBuf,
    pub operation: Operation,
}

impl Invocation {
    /// Set up logging and the invocation for an agent verb. A log folder that is not a real
    /// directory is refused (code 201), reported in the status for enable and on stderr for
    /// every verb; the error is the exit code.
    pub fn open(ctx: Result<AgentContext, AgentError>, operation: Operation) -> Result<Self, i32> {
        let ctx = match ctx {
            Ok(c) => c,
            Err(e) => {
                // Without HandlerEnvironment.json there is no status folder to write to.
                let f: Failure = e.into();
                logging::init(None, false);
                crate::tell!("ibdriver: {f}");
                tracing::error!("{f}");
                return Err(f.code.exit_code());
            }
        };
        let log_refused = logging::init_agent(&ctx.env.log_folder).err();
        for w in &ctx.vars.warnings {
            tracing::warn!("agent variable ignored: {w}");
        }
        let exe = std::env::current_exe().unwrap_or_else(|_| ctx.handler_dir.join("bin/ibdriver"));
        let inv = Invocation {
            agent: ctx,
            root: Root::from_env(),
            exe,
            operation,
        };
        status::set_panic_target(status::PanicTarget {
            status_path: inv.agent.status_path(),
            heartbeat_path: inv.agent.env.heartbeat_file.clone(),
            name: inv.name(),
            operation: operation.as_str().to_string(),
        });
        let Some(e) = log_refused else {
            return Ok(inv);
        };
        let f = Failure::state_io(&inv.agent.env.log_folder, e);
        crate::tell!("ibdriver: {f}");
        if operation.survives_a_bad_log_folder() {
            logging::init(None, false);
            tracing::warn!("{f}; logging to stderr only");
            return Ok(inv);
        }
        Err(if operation == Operation::Enable {
            inv.fail(&f, vec![])
        } else {
            inv.log_failure(&f);
            f.code.exit_code()
        })
    }

    pub fn name(&self) -> String {
        if self.agent.env.name.is_empty() {
            "InfiniBandDriverLinux".into()
        } else {
            self.agent.env.name.clone()
        }
    }

    /// A status report of this invocation's operation.
    pub fn report(&self, status: status::StatusValue, message: impl Into<String>) -> StatusReport {
        StatusReport::new(
            &self.name(),
            self.operation.as_str(),
            status,
            Code::Success,
            message,
        )
    }

    /// Write this sequence number's status file. A status that cannot be written is a
    /// failure (code 201): the agent would go on showing whatever the old file said.
    #[must_use = "a status that cannot be written is a failure to report"]
    pub fn write_status(&self, report: &StatusReport) -> Result<(), Failure> {
        report.write(&self.agent.status_path()).inspect_err(|f| {
            tracing::error!("cannot write status: {f}");
        })
    }

    pub fn heartbeat(&self, state: HeartbeatState, code: Code, message: &str) {
        if let Err(f) =
            status::write_heartbeat(&self.agent.env.heartbeat_file, state, code, message)
        {
            tracing::warn!("cannot write heartbeat: {f}");
        }
    }

    /// Record a terminal failure everywhere a user may look; returns the exit code. When the
    /// status file cannot take it, that is the failure the exit code reports (14, 201): the
    /// agent then shows our exit code instead of a stale status.
    pub fn fail(&self, f: &Failure, subs: Vec<SubStatus>) -> i32 {
        let report = StatusReport::failure(&self.name(), self.operation.as_str(), f);
        let written = self.write_status(&report.with_substatus(subs));
        self.heartbeat(HeartbeatState::NotReady, f.code, &f.message);
        self.log_failure(f);
        match written {
            Ok(()) => f.code.exit_code(),
            Err(io) => {
                crate::tell!("ibdriver: {f}; and {io}");
                self.log_failure(&io);
                io.code.exit_code()
            }
        }
    }

    /// A failure into our log, the summary log and a telemetry event (not the status file).
    pub fn log_failure(&self, f: &Failure) {
        let operation = self.operation.as_str();
        tracing::error!(code = f.code.number(), "{operation} failed: {}", f.message);
        logging::summary(
            &self.root,
            &format!(
                "{operation} seq={}: error {} {}",
                self.agent.seq,
                f.code.number(),
                f.message
            ),
        );
        self.event(Level::Error, &f.to_string());
    }

    /// A telemetry event of this operation and sequence number.
    pub fn event(&self, level: Level, message: &str) {
        events::emit(
            self.agent.env.events_folder.as_deref(),
            &self.agent.version(),
            self.operation.as_str(),
            level,
            message,
            &self.agent.seq.to_string(),
        );
    }

    /// Record that this sequence number was handled (the agent's most-recent-sequence file).
    pub fn write_mrseq(&self) {
        let p = self.agent.mrseq_path();
        if let Err(e) = fsutil::write_atomic(&p, format!("{}\n", self.agent.seq).as_bytes()) {
            tracing::error!(path = %p.display(), error = %e, "cannot write mrseq");
        }
    }
}
