//! The agent side of the contract: `HandlerEnvironment.json`, the sequence number and the
//! environment variables the guest agent sets for every command (docs/PROTOCOL.md,
//! "HandlerEnvironment.json", "Environment variables", "Sequence numbers").

use crate::error::{Code, Failure};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use thiserror::Error;

pub const HANDLER_ENVIRONMENT: &str = "HandlerEnvironment.json";

/// The folders the agent gave this handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerEnvironment {
    pub name: String,
    pub log_folder: PathBuf,
    pub config_folder: PathBuf,
    pub status_folder: PathBuf,
    pub heartbeat_file: PathBuf,
    /// Only when the agent supports the telemetry pipeline (it writes the key then).
    pub events_folder: Option<PathBuf>,
}

/// The result of a previous command the agent reports during updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PriorExit {
    NotRun,
    /// The literal `None` the agent passes after a failed update is retried (docs/PROTOCOL.md,
    /// "A failed update").
    Unknown,
    Code(i32),
}

/// Every variable of docs/PROTOCOL.md, "Environment variables", parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentVars {
    pub config_sequence_number: Option<u64>,
    pub extension_path: Option<PathBuf>,
    pub extension_version: Option<String>,
    pub wire_protocol_address: Option<String>,
    pub supported_features: BTreeMap<String, String>,
    pub extension_name: Option<String>,
    pub uninstall_cmd_exit_code: Option<PriorExit>,
    pub disable_cmd_exit_code: Option<PriorExit>,
    pub disable_cmd_exit_codes_multiple: Vec<(String, PriorExit)>,
    pub updating_from_version: Option<String>,
    pub version: Option<String>,
    /// Optional variables with values we could not read: logged, then treated as absent, so an
    /// agent quirk can never block disable or uninstall.
    pub warnings: Vec<String>,
}

/// Where this invocation stands: the handler directory, its folders and the sequence number.
#[derive(Debug, Clone)]
pub struct AgentContext {
    pub handler_dir: PathBuf,
    pub env: HandlerEnvironment,
    pub vars: AgentVars,
    pub seq: u64,
}

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("HandlerEnvironment.json not found in {0}")]
    NotFound(String),
    #[error("cannot read {path}: {err}")]
    Unreadable { path: PathBuf, err: std::io::Error },
    #[error("{path} is not a valid handler environment: {detail}")]
    Malformed { path: PathBuf, detail: String },
    #[error("environment variable {name} has an invalid value")]
    BadVariable { name: &'static str },
}

impl From<AgentError> for Failure {
    fn from(e: AgentError) -> Self {
        Failure::new(
            Code::HandlerEnvironment,
            format!("{e}; reinstall the extension so the guest agent rewrites its files"),
        )
    }
}

#[derive(Deserialize)]
struct RawEnvEntry {
    name: Option<String>,
    #[serde(rename = "handlerEnvironment")]
    handler_environment: RawHandlerEnvironment,
}

#[derive(Deserialize)]
struct RawHandlerEnvironment {
    #[serde(rename = "logFolder")]
    log_folder: PathBuf,
    #[serde(rename = "configFolder")]
    config_folder: PathBuf,
    #[serde(rename = "statusFolder")]
    status_folder: PathBuf,
    #[serde(rename = "heartbeatFile")]
    heartbeat_file: PathBuf,
    #[serde(rename = "eventsFolder")]
    events_folder: Option<PathBuf>,
    #[serde(rename = "eventsFolder_preview")]
    events_folder_preview: Option<PathBuf>,
}

/// Parse the text of HandlerEnvironment.json: a one-element array (an object is tolerated,
/// as HandlerUtil does).
pub fn parse_handler_environment(
    text: &str,
    path: &Path,
) -> Result<HandlerEnvironment, AgentError> {
    let malformed = |detail: String| AgentError::Malformed {
        path: path.to_path_buf(),
        detail,
    };
    let value: serde_json::Value = serde_json::from_str(text.trim_start_matches('\u{feff}'))
        .map_err(|e| malformed(e.to_string()))?;
    let entry = match value {
        serde_json::Value::Array(mut items) => {
            if items.is_empty() {
                return Err(malformed("empty array".into()));
            }
            items.swap_remove(0)
        }
        obj @ serde_json::Value::Object(_) => obj,
        _ => return Err(malformed("expected an array".into())),
    };
    let raw: RawEnvEntry = serde_json::from_value(entry).map_err(|e| malformed(e.to_string()))?;
    let h = raw.handler_environment;
    // The agent writes absolute paths; a relative one would depend on our working directory,
    // and a NUL cannot be a path at all.
    for (key, p) in [
        ("logFolder", Some(&h.log_folder)),
        ("configFolder", Some(&h.config_folder)),
        ("statusFolder", Some(&h.status_folder)),
        ("heartbeatFile", Some(&h.heartbeat_file)),
        ("eventsFolder", h.events_folder.as_ref()),
        ("eventsFolder_preview", h.events_folder_preview.as_ref()),
    ] {
        let Some(p) = p else { continue };
        use std::os::unix::ffi::OsStrExt;
        if !p.is_absolute() || p.as_os_str().as_bytes().contains(&0) {
            return Err(malformed(format!("{key} is not an absolute path")));
        }
    }
    Ok(HandlerEnvironment {
        name: raw.name.unwrap_or_default(),
        log_folder: h.log_folder,
        config_folder: h.config_folder,
        status_folder: h.status_folder,
        heartbeat_file: h.heartbeat_file,
        events_folder: h.events_folder.or(h.events_folder_preview),
    })
}

/// Where HandlerEnvironment.json may be: the working directory (the agent's cwd is the handler
/// directory), then beside the binary and one level above it (`bin/`).
pub fn candidate_paths(cwd: Option<&Path>, exe: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(c) = cwd {
        out.push(c.join(HANDLER_ENVIRONMENT));
    }
    if let Some(dir) = exe.and_then(Path::parent) {
        out.push(dir.join(HANDLER_ENVIRONMENT));
        if let Some(up) = dir.parent() {
            out.push(up.join(HANDLER_ENVIRONMENT));
        }
    }
    out
}

pub fn load_handler_environment(
    candidates: &[PathBuf],
) -> Result<(PathBuf, HandlerEnvironment), AgentError> {
    for path in candidates {
        match read_bounded(path) {
            Ok(Err(detail)) => {
                return Err(AgentError::Malformed {
                    path: path.clone(),
                    detail,
                })
            }
            Ok(Ok(text)) => {
                let env = parse_handler_environment(&text, path)?;
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                return Ok((dir, env));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => {
                return Err(AgentError::Unreadable {
                    path: path.clone(),
                    err,
                })
            }
        }
    }
    let dirs: Vec<String> = candidates
        .iter()
        .filter_map(|p| p.parent().map(|d| d.display().to_string()))
        .collect();
    Err(AgentError::NotFound(dirs.join(", ")))
}

/// The agent's file is well under 1 KiB; anything this large is not one.
pub const MAX_HANDLER_ENVIRONMENT_BYTES: u64 = 64 * 1024;

/// Read HandlerEnvironment.json without trusting its size or kind: `Ok(Err(why))` when it is
/// too large or not UTF-8. Opened non-blocking so a FIFO there cannot hang us.
fn read_bounded(path: &Path) -> std::io::Result<Result<String, String>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    let mut bytes = Vec::new();
    f.take(MAX_HANDLER_ENVIRONMENT_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_HANDLER_ENVIRONMENT_BYTES {
        return Ok(Err(format!(
            "larger than {} KiB",
            MAX_HANDLER_ENVIRONMENT_BYTES / 1024
        )));
    }
    Ok(String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string()))
}

fn parse_prior_exit(v: &str) -> Option<PriorExit> {
    match v.trim() {
        "NOT_RUN" => Some(PriorExit::NotRun),
        "None" | "" => Some(PriorExit::Unknown),
        n => n.parse().ok().map(PriorExit::Code),
    }
}

/// Parse the agent's variables from an environment lookup (a closure so tests pass a map).
pub fn parse_vars(get: impl Fn(&str) -> Option<String>) -> Result<AgentVars, AgentError> {
    let mut vars = AgentVars::default();
    if let Some(v) = get("ConfigSequenceNumber") {
        vars.config_sequence_number = Some(parse_seq(&v).ok_or(AgentError::BadVariable {
            name: "ConfigSequenceNumber",
        })?);
    }
    vars.extension_path = get("AZURE_GUEST_AGENT_EXTENSION_PATH").map(PathBuf::from);
    vars.extension_version = get("AZURE_GUEST_AGENT_EXTENSION_VERSION");
    vars.wire_protocol_address = get("AZURE_GUEST_AGENT_WIRE_PROTOCOL_ADDRESS");
    let warnings = &mut vars.warnings;
    if let Some(v) = get(SUPPORTED_FEATURES) {
        vars.supported_features = supported_features(&v, warnings);
    }
    vars.extension_name = get("ConfigExtensionName")
        .filter(|s| !s.is_empty())
        .and_then(|n| extension_name(n, warnings));
    for (name, slot) in [
        (UNINSTALL_EXIT_CODE, &mut vars.uninstall_cmd_exit_code),
        (DISABLE_EXIT_CODE, &mut vars.disable_cmd_exit_code),
    ] {
        if let Some(v) = get(name) {
            *slot = prior_exit(&v, name, warnings);
        }
    }
    if let Some(v) = get(DISABLE_EXIT_CODES_MULTIPLE) {
        vars.disable_cmd_exit_codes_multiple = prior_exits_of_extensions(&v, warnings);
    }
    vars.updating_from_version = get("AZURE_GUEST_AGENT_UPDATING_FROM_VERSION");
    vars.version = get("VERSION");
    Ok(vars)
}

// The optional variables whose names our warnings quote.
const SUPPORTED_FEATURES: &str = "AZURE_GUEST_AGENT_EXTENSION_SUPPORTED_FEATURES";
const UNINSTALL_EXIT_CODE: &str = "AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE";
const DISABLE_EXIT_CODE: &str = "AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODE";
const DISABLE_EXIT_CODES_MULTIPLE: &str =
    "AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODES_MULTIPLE_EXTENSIONS";

/// The supported-features list, `[{"Key": ..., "Value": ...}]`: what we cannot read is warned
/// about and left out.
fn supported_features(v: &str, warnings: &mut Vec<String>) -> BTreeMap<String, String> {
    let mut features = BTreeMap::new();
    let Ok(items) = serde_json::from_str::<Vec<serde_json::Value>>(v) else {
        warnings.push(format!("{SUPPORTED_FEATURES} is not a JSON array"));
        return features;
    };
    for item in items {
        match (item.get("Key").and_then(|k| k.as_str()), item.get("Value")) {
            (Some(k), Some(val)) => {
                let val = val.as_str().map_or_else(|| val.to_string(), str::to_string);
                features.insert(k.to_string(), val);
            }
            _ => warnings.push(format!(
                "{SUPPORTED_FEATURES} has an entry without Key/Value"
            )),
        }
    }
    features
}

/// `ConfigExtensionName` when it is a plain name; anything else is warned about and ignored.
fn extension_name(n: String, warnings: &mut Vec<String>) -> Option<String> {
    if valid_extension_name(&n) {
        return Some(n);
    }
    // The value itself is not logged: it failed the checks that make it safe to show.
    warnings.push(format!(
        "ConfigExtensionName is not a plain name (1-{MAX_EXTENSION_NAME} characters, \
         no '/', no '..', no control characters)"
    ));
    None
}

/// One exit-code variable; a value we cannot read is warned about and treated as absent.
fn prior_exit(v: &str, name: &str, warnings: &mut Vec<String>) -> Option<PriorExit> {
    let code = parse_prior_exit(v);
    if code.is_none() {
        warnings.push(format!("{name} has an unexpected value"));
    }
    code
}

/// The other extensions' disable exit codes, `[{"extensionName": ..., "exitCode": ...}]`
/// with the code a number, a string or null; what we cannot read is warned about and left out.
fn prior_exits_of_extensions(v: &str, warnings: &mut Vec<String>) -> Vec<(String, PriorExit)> {
    #[derive(Deserialize)]
    struct Item {
        #[serde(rename = "extensionName")]
        extension_name: String,
        #[serde(rename = "exitCode")]
        exit_code: serde_json::Value,
    }
    let name = DISABLE_EXIT_CODES_MULTIPLE;
    let Ok(items) = serde_json::from_str::<Vec<Item>>(v) else {
        warnings.push(format!("{name} is not a JSON list"));
        return Vec::new();
    };
    let mut codes = Vec::new();
    for it in items {
        let code = match it.exit_code {
            serde_json::Value::String(s) => parse_prior_exit(&s),
            serde_json::Value::Number(n) => n.as_i64().map(|n| PriorExit::Code(n as i32)),
            serde_json::Value::Null => Some(PriorExit::Unknown),
            _ => None,
        };
        match code {
            Some(c) => codes.push((it.extension_name, c)),
            None => warnings.push(format!("{name} has an unexpected exit code")),
        }
    }
    codes
}

/// The longest `ConfigExtensionName` we accept; it becomes part of a file name (with
/// `.<seq>.settings`, within the usual 255-byte limit).
pub const MAX_EXTENSION_NAME: usize = 200;

/// A sequence number as the agent writes it: plain decimal digits, no sign, no leading zero
/// (except "0" itself), within u64. Anything else would name another file than the one the
/// number formats back to (`01.settings` is not `1.settings`).
pub fn parse_seq(s: &str) -> Option<u64> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
}

/// `ConfigExtensionName` becomes part of our settings and status file names: one plain path
/// component, nothing that climbs out of the folder or hides in a terminal.
pub fn valid_extension_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_EXTENSION_NAME
        && name != "."
        && !name.contains("..")
        && !name.contains('/')
        && !name.chars().any(char::is_control)
}

/// Settings file name for sequence number `seq` (multi-config prefixes the extension name).
pub fn settings_file_name(seq: u64, extension: Option<&str>) -> String {
    match extension {
        Some(e) => format!("{e}.{seq}.settings"),
        None => format!("{seq}.settings"),
    }
}

/// Pick the sequence number when the agent did not pass one: the most recently modified
/// `N.settings`, ties broken by the highest N; 0 when there is none (docs/PROTOCOL.md,
/// "Sequence numbers").
pub fn infer_sequence(config_folder: &Path, extension: Option<&str>) -> u64 {
    let mut best: Option<(std::time::SystemTime, u64)> = None;
    let Ok(rd) = fs::read_dir(config_folder) else {
        return 0;
    };
    for entry in rd.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".settings") else {
            continue;
        };
        let num = match extension {
            Some(e) => stem.strip_prefix(e).and_then(|s| s.strip_prefix('.')),
            None => Some(stem),
        };
        // Only names that are exactly what settings_file_name() gives for that number.
        let Some(n) = num.and_then(parse_seq) else {
            continue;
        };
        let mtime = entry
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        if best.is_none_or(|b| (mtime, n) > b) {
            best = Some((mtime, n));
        }
    }
    best.map(|b| b.1).unwrap_or(0)
}

impl AgentContext {
    /// Discover everything from the process: cwd, executable location and environment.
    pub fn discover() -> Result<AgentContext, AgentError> {
        let cwd = std::env::current_dir().ok();
        let exe = std::env::current_exe().ok();
        let candidates = candidate_paths(cwd.as_deref(), exe.as_deref());
        let vars = parse_vars(|k| std::env::var(k).ok())?;
        Self::from_parts(&candidates, vars)
    }

    /// Build from a known handler directory (the health monitor and the worker know it).
    pub fn from_handler_dir(dir: &Path) -> Result<AgentContext, AgentError> {
        let vars = parse_vars(|k| std::env::var(k).ok())?;
        Self::from_parts(&[dir.join(HANDLER_ENVIRONMENT)], vars)
    }

    pub fn from_parts(candidates: &[PathBuf], vars: AgentVars) -> Result<AgentContext, AgentError> {
        let (handler_dir, env) = load_handler_environment(candidates)?;
        let seq = vars
            .config_sequence_number
            .unwrap_or_else(|| infer_sequence(&env.config_folder, vars.extension_name.as_deref()));
        Ok(AgentContext {
            handler_dir,
            env,
            vars,
            seq,
        })
    }

    pub fn settings_path(&self) -> PathBuf {
        self.env.config_folder.join(settings_file_name(
            self.seq,
            self.vars.extension_name.as_deref(),
        ))
    }

    pub fn status_path(&self) -> PathBuf {
        let name = match &self.vars.extension_name {
            Some(e) => format!("{e}.{}.status", self.seq),
            None => format!("{}.status", self.seq),
        };
        self.env.status_folder.join(name)
    }

    /// `mrseq` at the handler root: the agent copies it to the new version on update.
    pub fn mrseq_path(&self) -> PathBuf {
        self.handler_dir.join("mrseq")
    }

    /// The directory holding `<THUMB>.crt/.prv`: two levels above the config folder.
    pub fn certificate_dir(&self) -> PathBuf {
        self.env
            .config_folder
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/var/lib/waagent"))
    }

    /// The handler version: the agent's variable, else the `H-V` directory name.
    pub fn version(&self) -> String {
        if let Some(v) = &self.vars.extension_version {
            return v.clone();
        }
        self.handler_dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.rsplit_once('-'))
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| env!("IBDRIVER_VERSION").to_string())
    }
}

/// The last sequence number we finished; anything but one canonical number reads as none
/// (so the no-op check runs the work again rather than skip it on garbage).
pub fn read_mrseq(path: &Path) -> Option<u64> {
    crate::sys::fsutil::read_trimmed(path).and_then(|s| parse_seq(&s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const SAMPLE: &str = r#"[{"name":"Microsoft.HpcCompute.InfiniBandDriverLinux","version":1.0,
      "handlerEnvironment":{"logFolder":"/var/log/azure/H","configFolder":"/var/lib/waagent/H-1.0/config",
      "statusFolder":"/var/lib/waagent/H-1.0/status","heartbeatFile":"/var/lib/waagent/H-1.0/heartbeat.log",
      "eventsFolder":"/var/log/azure/H/events","eventsFolder_preview":"/var/log/azure/H/events"}}]"#;

    #[test]
    fn parses_agent_written_environment() {
        let env = parse_handler_environment(SAMPLE, Path::new("x")).unwrap();
        assert_eq!(env.name, "Microsoft.HpcCompute.InfiniBandDriverLinux");
        assert_eq!(
            env.status_folder,
            PathBuf::from("/var/lib/waagent/H-1.0/status")
        );
        assert_eq!(
            env.events_folder,
            Some(PathBuf::from("/var/log/azure/H/events"))
        );
    }

    #[test]
    fn preview_events_key_and_object_form_are_accepted() {
        let text = r#"{"handlerEnvironment":{"logFolder":"/l","configFolder":"/c","statusFolder":"/s",
            "heartbeatFile":"/h","eventsFolder_preview":"/e"}}"#;
        let env = parse_handler_environment(text, Path::new("x")).unwrap();
        assert_eq!(env.events_folder, Some(PathBuf::from("/e")));
        assert_eq!(env.name, "");
    }

    #[test]
    fn malformed_environments_are_typed_errors() {
        for bad in [
            "",
            "[]",
            "42",
            "[{}]",
            r#"[{"handlerEnvironment":{"logFolder":"l"}}]"#,
            r#"[{"handlerEnvironment":{"logFolder":"rel","configFolder":"/c","statusFolder":"/s","heartbeatFile":"/h"}}]"#,
            r#"[{"handlerEnvironment":{"logFolder":"/l","configFolder":"/c","statusFolder":"/s\u0000x","heartbeatFile":"/h"}}]"#,
            r#"[{"handlerEnvironment":{"logFolder":"/l","configFolder":"/c","statusFolder":"/s","heartbeatFile":"/h","eventsFolder":"e"}}]"#,
            r#"[{"handlerEnvironment":{"logFolder":42,"configFolder":"/c","statusFolder":"/s","heartbeatFile":"/h"}}]"#,
        ] {
            assert!(
                matches!(
                    parse_handler_environment(bad, Path::new("x")),
                    Err(AgentError::Malformed { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn missing_environment_names_the_places_searched() {
        let err = load_handler_environment(&[PathBuf::from("/nope/HandlerEnvironment.json")])
            .unwrap_err();
        assert!(err.to_string().contains("/nope"));
        let f: Failure = err.into();
        assert_eq!(f.code, Code::HandlerEnvironment);
    }

    #[test]
    fn candidates_cover_cwd_bin_and_parent() {
        let c = candidate_paths(Some(Path::new("/h")), Some(Path::new("/h/bin/ibdriver")));
        assert_eq!(
            c,
            vec![
                PathBuf::from("/h/HandlerEnvironment.json"),
                PathBuf::from("/h/bin/HandlerEnvironment.json"),
                PathBuf::from("/h/HandlerEnvironment.json"),
            ]
        );
    }

    fn vars_from(pairs: &[(&str, &str)]) -> Result<AgentVars, AgentError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn parses_every_agent_variable() {
        let v = vars_from(&[
            ("ConfigSequenceNumber", "7"),
            ("AZURE_GUEST_AGENT_EXTENSION_PATH", "/var/lib/waagent/H-1.0"),
            ("AZURE_GUEST_AGENT_EXTENSION_VERSION", "1.0"),
            ("AZURE_GUEST_AGENT_WIRE_PROTOCOL_ADDRESS", "168.63.129.16"),
            (
                "AZURE_GUEST_AGENT_EXTENSION_SUPPORTED_FEATURES",
                r#"[{"Key": "ExtensionTelemetryPipeline", "Value": "1.0"}]"#,
            ),
            ("ConfigExtensionName", "ib"),
            ("AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE", "NOT_RUN"),
            ("AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODE", "None"),
            (
                "AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODES_MULTIPLE_EXTENSIONS",
                r#"[{"extensionName":"a","exitCode":"0"},{"extensionName":"b","exitCode":"NOT_RUN"}]"#,
            ),
            ("AZURE_GUEST_AGENT_UPDATING_FROM_VERSION", "0.9"),
            ("VERSION", "1.0"),
        ])
        .unwrap();
        assert_eq!(v.config_sequence_number, Some(7));
        assert_eq!(
            v.supported_features
                .get("ExtensionTelemetryPipeline")
                .map(String::as_str),
            Some("1.0")
        );
        assert_eq!(v.extension_name.as_deref(), Some("ib"));
        assert_eq!(v.uninstall_cmd_exit_code, Some(PriorExit::NotRun));
        assert_eq!(v.disable_cmd_exit_code, Some(PriorExit::Unknown));
        assert_eq!(
            v.disable_cmd_exit_codes_multiple,
            vec![
                ("a".into(), PriorExit::Code(0)),
                ("b".into(), PriorExit::NotRun)
            ]
        );
        assert_eq!(v.updating_from_version.as_deref(), Some("0.9"));
        assert_eq!(v.version.as_deref(), Some("1.0"));
    }

    #[test]
    fn bad_sequence_number_is_an_error_other_oddities_are_warnings() {
        assert!(matches!(
            vars_from(&[("ConfigSequenceNumber", "x")]),
            Err(AgentError::BadVariable {
                name: "ConfigSequenceNumber"
            })
        ));
        let v = vars_from(&[
            ("AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODE", "NotRun"),
            (
                "AZURE_GUEST_AGENT_EXTENSION_SUPPORTED_FEATURES",
                r#"[{"Key":"X","Value":1}]"#,
            ),
            (
                "AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODES_MULTIPLE_EXTENSIONS",
                "nope",
            ),
        ])
        .unwrap();
        assert_eq!(v.disable_cmd_exit_code, None);
        assert_eq!(v.supported_features.get("X").map(String::as_str), Some("1"));
        assert_eq!(v.warnings.len(), 2);
    }

    #[test]
    fn sequence_numbers_are_canonical_decimal_only() {
        for (text, want) in [
            ("0", Some(0)),
            ("7", Some(7)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("+1", None),
            ("01", None),
            ("00", None),
            ("-1", None),
            ("1e3", None),
            ("", None),
            (" 1", None),
            ("1\n", None),
            ("١", None),
        ] {
            assert_eq!(parse_seq(text), want, "{text:?}");
        }
        for bad in ["+1", "01", "-1", "1e3", "", "99999999999999999999999"] {
            assert!(
                matches!(
                    vars_from(&[("ConfigSequenceNumber", bad)]),
                    Err(AgentError::BadVariable { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn hostile_extension_names_are_ignored_with_a_warning() {
        for bad in [
            "../x",
            "..",
            ".",
            "a/b",
            "/abs",
            "a\u{0}b",
            "a\nb",
            "a\u{1b}[31m",
            &"n".repeat(MAX_EXTENSION_NAME + 1),
        ] {
            let v = vars_from(&[("ConfigExtensionName", bad)]).unwrap();
            assert_eq!(v.extension_name, None, "{bad:?}");
            assert_eq!(v.warnings.len(), 1, "{bad:?}");
            // The warning names the rule, never the value (short ones like ".." occur in it).
            assert!(bad.len() < 3 || !v.warnings[0].contains(bad), "{bad:?}");
        }
        let long = "n".repeat(MAX_EXTENSION_NAME);
        for good in ["ib", "Microsoft.HpcCompute.IB-1", long.as_str()] {
            let v = vars_from(&[("ConfigExtensionName", good)]).unwrap();
            assert_eq!(v.extension_name.as_deref(), Some(good));
            assert!(v.warnings.is_empty());
        }
    }

    #[test]
    fn huge_or_binary_environment_files_are_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(HANDLER_ENVIRONMENT);
        fs::write(&p, vec![b' '; MAX_HANDLER_ENVIRONMENT_BYTES as usize + 1]).unwrap();
        let e = load_handler_environment(std::slice::from_ref(&p)).unwrap_err();
        assert!(e.to_string().contains("larger than 64 KiB"), "{e}");
        fs::write(&p, b"[\xff]").unwrap();
        let e = load_handler_environment(std::slice::from_ref(&p)).unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
    }

    #[test]
    fn inference_only_takes_names_that_format_back_to_their_number() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("1.settings"), "").unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(100);
        fs::File::options()
            .write(true)
            .open(dir.path().join("1.settings"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        // Newer, but none of these is what settings_file_name() would give for its number.
        for odd in [
            "01.settings",
            "+2.settings",
            "3 .settings",
            "-4.settings",
            ".settings",
        ] {
            fs::write(dir.path().join(odd), "").unwrap();
        }
        assert_eq!(infer_sequence(dir.path(), None), 1);
        assert_eq!(settings_file_name(1, None), "1.settings");
    }

    #[test]
    fn garbage_mrseq_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mrseq");
        for (text, want) in [
            ("3\n", Some(3)),
            ("03", None),
            ("+3", None),
            ("x", None),
            ("", None),
        ] {
            fs::write(&p, text).unwrap();
            assert_eq!(read_mrseq(&p), want, "{text:?}");
        }
    }

    #[test]
    fn infers_newest_settings_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(infer_sequence(dir.path(), None), 0);
        for n in [3, 12, 5] {
            fs::write(dir.path().join(format!("{n}.settings")), "").unwrap();
        }
        fs::write(dir.path().join("HandlerState"), "Enabled").unwrap();
        // Same mtime granularity possible: ties go to the highest number.
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(100);
        for n in [3, 12] {
            let f = fs::File::options()
                .write(true)
                .open(dir.path().join(format!("{n}.settings")))
                .unwrap();
            f.set_modified(old).unwrap();
        }
        assert_eq!(infer_sequence(dir.path(), None), 5);
        fs::write(dir.path().join("ib.9.settings"), "").unwrap();
        assert_eq!(infer_sequence(dir.path(), Some("ib")), 9);
    }
}
