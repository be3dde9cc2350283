//! The deployment examples in `packaging/examples/`: every public-settings object they show must
//! validate against `manifest/settings.schema.json` and be accepted by the handler's own parser,
//! every extension they name must match `manifest/manifest.xml`, the Batch pools must be set up
//! for MPI, and the start task must run a command line the handler accepts. Pure file reading:
//! no network, nothing outside a temporary directory is written.

use ibdriver::agent::settings::parse_public;
use ibdriver::cli::{self, Command};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn examples_dir() -> PathBuf {
    repo().join("packaging/examples")
}

/// Files in the examples directory that are prose, not deployable examples.
const NOT_AN_EXAMPLE: [&str; 1] = ["README.md"];

/// What the examples must agree with, read from `manifest/manifest.xml`.
struct Identity {
    publisher: String,
    kind: String,
    version: String,
}

impl Identity {
    fn load() -> Identity {
        let xml = std::fs::read_to_string(repo().join("manifest/manifest.xml")).unwrap();
        let field = |tag: &str| -> String {
            let open = format!("<{tag}>");
            let close = format!("</{tag}>");
            let start = xml
                .find(&open)
                .unwrap_or_else(|| panic!("manifest has no {open}"));
            let rest = &xml[start + open.len()..];
            rest[..rest.find(&close).unwrap()].trim().to_string()
        };
        Identity {
            publisher: field("ProviderNameSpace"),
            kind: field("Type"),
            version: field("Version"),
        }
    }

    /// The agent's typeHandlerVersion is the manifest version's major.minor.
    fn type_handler_version(&self) -> String {
        self.version
            .split('.')
            .take(2)
            .collect::<Vec<_>>()
            .join(".")
    }

    fn release_zip(&self) -> String {
        format!("{}.{}-{}.zip", self.publisher, self.kind, self.version)
    }
}

fn schema_validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(repo().join("manifest/settings.schema.json")).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::draft202012::new(&schema).expect("settings.schema.json is a valid 2020-12 schema")
}

/// Both validators on one settings object; `Err` lists what each one objected to.
fn validate(schema: &jsonschema::Validator, settings: &Value) -> Result<(), String> {
    let mut problems = Vec::new();
    let schema_errors: Vec<String> = schema
        .iter_errors(settings)
        .map(|e| e.to_string())
        .collect();
    if !schema_errors.is_empty() {
        problems.push(format!("schema: {}", schema_errors.join("; ")));
    }
    if let Err(e) = parse_public(Some(settings)) {
        problems.push(format!("parse_public: {e}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join(" | "))
    }
}

/// One settings object found in an example, with where it came from.
#[derive(Debug)]
struct Found {
    origin: String,
    settings: Value,
}

/// Everything one example file shows, or why it could not be read.
fn extract(name: &str, text: &str, id: &Identity) -> Result<Vec<Found>, String> {
    let found = if name.ends_with(".json") {
        let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        from_json_document(&doc, id)?
    } else if name.ends_with(".ps1") {
        from_powershell(text, id)?
    } else if name.ends_with(".sh") {
        from_az_cli(text, id)?
    } else {
        return Err("no settings extractor for this kind of file; teach tests/examples.rs".into());
    };
    if found.is_empty() {
        return Err(
            "no settings object found; every example must show the settings it deploys".into(),
        );
    }
    Ok(found)
}

// ---------------------------------------------------------------------------------------------
// JSON: ARM templates and parameter files, Batch pool bodies.

fn from_json_document(doc: &Value, id: &Identity) -> Result<Vec<Found>, String> {
    let schema_url = doc.get("$schema").and_then(Value::as_str).unwrap_or("");
    let mut found = Vec::new();
    if schema_url.contains("deploymentParameters.json") {
        let value = doc
            .pointer("/parameters/settings/value")
            .ok_or("parameter file has no parameters.settings.value")?;
        found.push(Found {
            origin: "parameters.settings.value".into(),
            settings: value.clone(),
        });
        return Ok(found);
    }
    let parameters = doc.get("parameters").cloned().unwrap_or(json!({}));
    let mut extensions = Vec::new();
    find_extensions(doc, "", &mut extensions);
    for (path, ext) in extensions {
        check_extension_identity(ext, id).map_err(|e| format!("{path}: {e}"))?;
        match ext.get("settings") {
            None => {}
            Some(Value::String(expr)) => {
                let name = parameter_reference(expr)
                    .ok_or_else(|| format!("{path}.settings: unsupported expression {expr}"))?;
                let value = parameters
                    .pointer(&format!("/{name}/defaultValue"))
                    .ok_or_else(|| {
                        format!("{path}.settings: parameter {name} has no defaultValue")
                    })?;
                found.push(Found {
                    origin: format!("{path}.settings = parameters('{name}').defaultValue"),
                    settings: value.clone(),
                });
            }
            Some(v) => found.push(Found {
                origin: format!("{path}.settings"),
                settings: v.clone(),
            }),
        }
    }
    if let Some(start_task) = doc.get("startTask") {
        found.push(from_start_task(start_task, id)?);
    }
    Ok(found)
}

/// Every object that declares an extension (ARM `properties` of an extension resource or
/// `extensionProfile` entry, a Batch `VMExtension`): it has a publisher and a typeHandlerVersion.
fn find_extensions<'a>(v: &'a Value, path: &str, out: &mut Vec<(String, &'a Value)>) {
    match v {
        Value::Object(map) => {
            if map.contains_key("publisher") && map.contains_key("typeHandlerVersion") {
                out.push((path.to_string(), v));
            }
            for (k, child) in map {
                find_extensions(child, &format!("{path}.{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                find_extensions(child, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn check_extension_identity(ext: &Value, id: &Identity) -> Result<(), String> {
    let want = [
        ("publisher", id.publisher.clone()),
        ("type", id.kind.clone()),
        ("typeHandlerVersion", id.type_handler_version()),
    ];
    for (key, value) in want {
        if ext.get(key).and_then(Value::as_str) != Some(value.as_str()) {
            return Err(format!("{key} must be {value}, found {:?}", ext.get(key)));
        }
    }
    if ext.get("autoUpgradeMinorVersion") != Some(&Value::Bool(true)) {
        return Err("autoUpgradeMinorVersion must be true".into());
    }
    Ok(())
}

/// `[parameters('name')]` -> `name`.
fn parameter_reference(expr: &str) -> Option<&str> {
    expr.strip_prefix("[parameters('")?.strip_suffix("')]")
}

/// The Batch start task: an elevated auto-user that waits for success, downloads the release zip
/// and runs `bin/ibdriver apply --settings FILE` where FILE is written from an environment
/// setting of the task. Returns the settings that file holds.
fn from_start_task(task: &Value, id: &Identity) -> Result<Found, String> {
    if task.pointer("/userIdentity/autoUser/elevationLevel") != Some(&json!("admin")) {
        return Err("startTask must run as an elevated (admin) auto-user".into());
    }
    if task.get("waitForSuccess") != Some(&json!(true)) {
        return Err("startTask must set waitForSuccess".into());
    }
    let zip = id.release_zip();
    let files = task
        .get("resourceFiles")
        .and_then(Value::as_array)
        .ok_or("startTask has no resourceFiles")?;
    let downloads_zip = files.iter().any(|f| {
        ["httpUrl", "blobPrefix", "filePath"].iter().any(|k| {
            f.get(*k)
                .and_then(Value::as_str)
                .is_some_and(|s| s.ends_with(&zip))
        })
    });
    if !downloads_zip {
        return Err(format!("startTask resourceFiles do not fetch {zip}"));
    }
    let line = task
        .get("commandLine")
        .and_then(Value::as_str)
        .ok_or("startTask has no commandLine")?;
    if !line.contains(&zip) {
        return Err(format!("startTask commandLine does not unpack {zip}"));
    }
    let settings_file = match cli::parse(&ibdriver_args(line)?)? {
        Command::Apply {
            settings: Some(file),
        } => file,
        other => {
            return Err(format!(
                "start task runs {other:?}, not apply --settings FILE"
            ))
        }
    };
    let file = settings_file.to_str().ok_or("settings path is not UTF-8")?;
    let variable = written_from_env(line, file)?;
    let value = task
        .get("environmentSettings")
        .and_then(Value::as_array)
        .and_then(|env| env.iter().find(|e| e.get("name") == Some(&json!(variable))))
        .and_then(|e| e.get("value"))
        .and_then(Value::as_str)
        .ok_or_else(|| format!("environmentSettings has no {variable}"))?;
    let settings: Value = serde_json::from_str(value)
        .map_err(|e| format!("environment setting {variable} is not JSON: {e}"))?;
    Ok(Found {
        origin: format!("startTask settings file {file} (from ${variable})"),
        settings,
    })
}

/// The arguments after `.../bin/ibdriver` in a shell command line, up to the end of that command.
fn ibdriver_args(line: &str) -> Result<Vec<String>, String> {
    let start = line
        .find("bin/ibdriver ")
        .ok_or("commandLine does not run bin/ibdriver")?;
    let rest = &line[start + "bin/ibdriver ".len()..];
    let end = rest
        .find([';', '&', '|', '\'', '"', '\n'])
        .unwrap_or(rest.len());
    Ok(rest[..end].split_whitespace().map(String::from).collect())
}

/// The variable the command line writes into `file` with `printenv VAR > file`.
fn written_from_env(line: &str, file: &str) -> Result<String, String> {
    let redirect = format!("> {file}");
    let at = line
        .find(&redirect)
        .ok_or_else(|| format!("commandLine does not write {file}"))?;
    let before = line[..at].trim_end();
    let cmd_start = before.rfind([';', '&']).map_or(0, |i| i + 1);
    let words: Vec<&str> = before[cmd_start..].split_whitespace().collect();
    match words.as_slice() {
        ["printenv", var] => Ok(var.to_string()),
        _ => Err(format!("{file} must be written by `printenv VAR > {file}`")),
    }
}

// ---------------------------------------------------------------------------------------------
// Shell-like sources: PowerShell and the az CLI.

/// The text without comment lines, continuation lines joined into one command each.
fn commands(text: &str, continuation: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') {
            continue;
        }
        match trimmed.strip_suffix(continuation) {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                if !current.trim().is_empty() {
                    out.push(std::mem::take(&mut current));
                }
                current.clear();
            }
        }
    }
    out
}

/// Positions just after each occurrence of the whole flag `flag` (not a longer flag).
fn flag_positions(cmd: &str, flag: &str) -> Vec<usize> {
    let mut at = Vec::new();
    let mut from = 0;
    while let Some(i) = cmd[from..].find(flag) {
        let start = from + i;
        let end = start + flag.len();
        let before_ok = start == 0 || cmd[..start].ends_with(char::is_whitespace);
        let after_ok = cmd[end..].starts_with(char::is_whitespace);
        if before_ok && after_ok {
            at.push(end);
        }
        from = end;
    }
    at
}

/// A single-quoted shell or PowerShell string starting at `s` (after whitespace).
fn single_quoted(s: &str) -> Option<&str> {
    let s = s.trim_start().strip_prefix('\'')?;
    Some(&s[..s.find('\'')?])
}

/// The value of `flag` in a command, unquoted; every occurrence must agree.
fn flag_value(cmd: &str, flag: &str) -> Option<String> {
    let at = *flag_positions(cmd, flag).first()?;
    let word = cmd[at..].split_whitespace().next()?;
    Some(word.trim_matches(['"', '\'']).to_string())
}

fn check_command_identity(cmd: &str, flags: [&str; 3], id: &Identity) -> Result<(), String> {
    let want = [
        id.publisher.clone(),
        id.kind.clone(),
        id.type_handler_version(),
    ];
    for (flag, value) in flags.iter().zip(want) {
        match flag_value(cmd, flag) {
            Some(v) if v == value => {}
            other => return Err(format!("{flag} must be {value}, found {other:?} in: {cmd}")),
        }
    }
    Ok(())
}

fn from_az_cli(text: &str, id: &Identity) -> Result<Vec<Found>, String> {
    let mut found = Vec::new();
    for cmd in commands(text, '\\') {
        let is_set = cmd.contains("az vm extension set") || cmd.contains("az vmss extension set");
        if is_set {
            check_command_identity(&cmd, ["--publisher", "--name", "--version"], id)?;
            if cmd.contains("--no-auto-upgrade") {
                return Err(format!("minor-version auto-upgrade must stay on: {cmd}"));
            }
        }
        for at in flag_positions(&cmd, "--settings") {
            let json_text = single_quoted(&cmd[at..])
                .ok_or_else(|| format!("--settings must be a single-quoted JSON literal: {cmd}"))?;
            let settings = serde_json::from_str(json_text)
                .map_err(|e| format!("--settings is not JSON ({e}): {cmd}"))?;
            found.push(Found {
                origin: format!("--settings of `{}`", command_head(&cmd)),
                settings,
            });
        }
    }
    Ok(found)
}

fn from_powershell(text: &str, id: &Identity) -> Result<Vec<Found>, String> {
    let mut found = Vec::new();
    for cmd in commands(text, '`') {
        if cmd.contains("Set-AzVMExtension") {
            check_command_identity(
                &cmd,
                ["-Publisher", "-ExtensionType", "-TypeHandlerVersion"],
                id,
            )?;
            if cmd.contains("-DisableAutoUpgradeMinorVersion") {
                return Err(format!("minor-version auto-upgrade must stay on: {cmd}"));
            }
        }
        if cmd.contains("Add-AzVmssExtension") {
            check_command_identity(&cmd, ["-Publisher", "-Type", "-TypeHandlerVersion"], id)?;
            if flag_value(&cmd, "-AutoUpgradeMinorVersion").as_deref() != Some("$true") {
                return Err(format!(
                    "Add-AzVmssExtension needs -AutoUpgradeMinorVersion $true: {cmd}"
                ));
            }
        }
        for flag in ["-Settings", "-Setting"] {
            for at in flag_positions(&cmd, flag) {
                let rest = cmd[at..].trim_start();
                let body = rest.strip_prefix("@{").ok_or_else(|| {
                    format!("{flag} must be followed by a hashtable literal @{{...}}: {cmd}")
                })?;
                let (settings, _) = parse_hashtable(body)?;
                found.push(Found {
                    origin: format!("{flag} of `{}`", command_head(&cmd)),
                    settings,
                });
            }
        }
        for at in flag_positions(&cmd, "-SettingString") {
            let json_text = single_quoted(&cmd[at..]).ok_or_else(|| {
                format!("-SettingString must be a single-quoted JSON literal: {cmd}")
            })?;
            let settings = serde_json::from_str(json_text)
                .map_err(|e| format!("-SettingString is not JSON ({e}): {cmd}"))?;
            found.push(Found {
                origin: format!("-SettingString of `{}`", command_head(&cmd)),
                settings,
            });
        }
    }
    Ok(found)
}

fn command_head(cmd: &str) -> String {
    cmd.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// A PowerShell hashtable literal of literals, the text after `@{`: keys are bare words or
/// quoted; values are quoted strings, integers, `$true`/`$false` or nested hashtables; entries
/// are separated by `;` or newlines. Returns the object and the text after the closing `}`.
/// Anything else (a variable, a subexpression) is an error: the test could not check it.
fn parse_hashtable(mut s: &str) -> Result<(Value, &str), String> {
    let mut map = Map::new();
    loop {
        s = s.trim_start_matches(|c: char| c.is_whitespace() || c == ';');
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((Value::Object(map), rest));
        }
        let (key, rest) = if s.starts_with(['"', '\'']) {
            let q = s.chars().next().unwrap();
            let end = s[1..].find(q).ok_or("unterminated key")? + 1;
            (s[1..end].to_string(), &s[end + 1..])
        } else {
            let end = s
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .ok_or("unterminated hashtable")?;
            if end == 0 {
                return Err(format!("hashtable key expected at: {}", preview(s)));
            }
            (s[..end].to_string(), &s[end..])
        };
        let rest = rest
            .trim_start()
            .strip_prefix('=')
            .ok_or_else(|| format!("`=` expected after hashtable key {key}"))?
            .trim_start();
        let (value, rest) = if let Some(body) = rest.strip_prefix("@{") {
            parse_hashtable(body)?
        } else if rest.starts_with(['"', '\'']) {
            let q = rest.chars().next().unwrap();
            let end = rest[1..].find(q).ok_or("unterminated string")? + 1;
            let text = &rest[1..end];
            if q == '"' && text.contains(['$', '`']) {
                return Err(format!(
                    "hashtable value of {key} is interpolated; use a literal"
                ));
            }
            (Value::String(text.to_string()), &rest[end + 1..])
        } else if let Some(after) = rest.strip_prefix("$true") {
            (Value::Bool(true), after)
        } else if let Some(after) = rest.strip_prefix("$false") {
            (Value::Bool(false), after)
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '-'))
                .unwrap_or(rest.len());
            let n: i64 = rest[..end].parse().map_err(|_| {
                format!(
                    "hashtable value of {key} is not a literal: {}",
                    preview(rest)
                )
            })?;
            (Value::from(n), &rest[end..])
        };
        map.insert(key, value);
        s = rest;
    }
}

fn preview(s: &str) -> String {
    s.chars().take(40).collect()
}

// ---------------------------------------------------------------------------------------------
// The checks.

/// Check one example file end to end; Ok is the number of settings objects it showed.
fn check_example(
    name: &str,
    text: &str,
    id: &Identity,
    schema: &jsonschema::Validator,
) -> Result<usize, String> {
    let found = extract(name, text, id)?;
    let mut problems = Vec::new();
    for f in &found {
        if let Err(e) = validate(schema, &f.settings) {
            problems.push(format!("{}: {} -> {e}", f.origin, f.settings));
        }
    }
    if problems.is_empty() {
        Ok(found.len())
    } else {
        Err(problems.join("\n  "))
    }
}

fn example_files() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(examples_dir())
        .expect("packaging/examples exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .filter(|(name, _)| !NOT_AN_EXAMPLE.contains(&name.as_str()))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_shows_settings_the_handler_accepts() {
    let id = Identity::load();
    let schema = schema_validator();
    let files = example_files();
    assert!(files.len() >= 7, "examples missing: {files:?}");
    let mut failures = Vec::new();
    for (name, text) in &files {
        match check_example(name, text, &id, &schema) {
            Ok(n) => println!("{name}: {n} settings object(s) checked"),
            Err(e) => failures.push(format!("{name}:\n  {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn read_example(name: &str) -> Value {
    let text = std::fs::read_to_string(examples_dir().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn batch_pools_are_set_up_for_mpi() {
    for name in ["batch-pool.json", "batch-pool-start-task.json"] {
        let pool = read_example(name);
        assert_eq!(pool["enableInterNodeCommunication"], json!(true), "{name}");
        assert_eq!(pool["taskSlotsPerNode"], json!(1), "{name}");
        let size = pool["vmSize"].as_str().unwrap();
        assert!(
            size.starts_with("Standard_HB"),
            "{name}: {size} is not HB-series"
        );
    }
    let with_extension = read_example("batch-pool.json");
    let extensions = with_extension["virtualMachineConfiguration"]["extensions"]
        .as_array()
        .expect("batch-pool.json declares the extension");
    assert_eq!(extensions.len(), 1);
    let start_task_pool = read_example("batch-pool-start-task.json");
    assert!(
        start_task_pool["virtualMachineConfiguration"]
            .get("extensions")
            .is_none(),
        "the start-task pool installs the drivers without the extension"
    );
}

#[test]
fn start_task_runs_apply_with_its_settings_file() {
    let id = Identity::load();
    let pool = read_example("batch-pool-start-task.json");
    let task = &pool["startTask"];
    let line = task["commandLine"].as_str().unwrap();
    let cmd = cli::parse(&ibdriver_args(line).unwrap()).unwrap();
    let Command::Apply {
        settings: Some(file),
    } = cmd
    else {
        panic!("start task runs {cmd:?}");
    };
    assert_eq!(file, Path::new("ibdriver-settings.json"));
    // The file the task writes is read the way the operator verbs read a settings file.
    let found = from_start_task(task, &id).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(&file);
    std::fs::write(&path, found.settings.to_string()).unwrap();
    let public = ibdriver::agent::settings::read_public_settings(&path).unwrap();
    assert_eq!(public, parse_public(Some(&found.settings)).unwrap());
    // Secrets reach apply through IBDRIVER_PACKAGE_URL / IBDRIVER_PROXY, never in the pool body.
    for secret in ["IBDRIVER_PACKAGE_URL", "IBDRIVER_PROXY"] {
        assert!(
            !pool.to_string().contains(secret),
            "{secret} in the pool body"
        );
    }
}

#[test]
fn examples_hold_no_literal_secrets() {
    for (name, text) in example_files() {
        let lower = text.to_ascii_lowercase();
        for marker in ["sig=", "?sv=", "&sv=", "password", "accountkey"] {
            assert!(!lower.contains(marker), "{name} contains {marker}");
        }
        // A URL with user:password@ in it.
        for (i, _) in lower.match_indices("://") {
            let authority: String = lower[i + 3..]
                .chars()
                .take_while(|c| !c.is_whitespace() && !matches!(c, '/' | '"' | '\''))
                .collect();
            assert!(!authority.contains('@'), "{name} has credentials in a URL");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Negative checks: the validators and the extractors can fail.

#[test]
fn bad_settings_fail_both_the_schema_and_parse_public() {
    let schema = schema_validator();
    let bad = [
        json!({"stack": "auto", "colour": "blue"}),
        json!({"ipoib": "sometimes"}),
        json!({"stack": "ofed"}),
        json!({"reboot": "always"}),
        json!({"hcaNaming": "pretty"}),
        json!({"lockTimeoutSeconds": 0}),
        json!({"lockTimeoutSeconds": "900"}),
        json!({"version": "24.10 1"}),
        json!({"mirror": "http://mirror.example"}),
        json!({"package": {"url": "https://example.org/doca.deb"}}),
        json!({"package": {"url": "https://example.org/doca.deb", "sha256": "abc"}}),
        json!({"removeDriversOnUninstall": "yes"}),
        json!(["stack", "auto"]),
    ];
    for settings in bad {
        assert!(!schema.is_valid(&settings), "schema accepted {settings}");
        assert!(
            parse_public(Some(&settings)).is_err(),
            "parse_public accepted {settings}"
        );
    }
    // The same validators accept a good object, so the rejections above are about the values.
    let good = json!({"stack": "doca", "version": "3.2.1", "ipoib": "auto"});
    assert!(validate(&schema, &good).is_ok());
}

/// Every example, with one of its settings keys misspelled, must fail the check: the
/// extractors really reach the settings, in every file.
#[test]
fn a_misspelled_key_in_any_example_fails_the_check() {
    let id = Identity::load();
    let schema = schema_validator();
    for (name, text) in example_files() {
        assert!(
            text.contains("ipoib"),
            "{name}: shows no ipoib setting to misspell"
        );
        let broken = text.replace("ipoib", "ipoibMode");
        let result = check_example(&name, &broken, &id, &schema);
        let err = result.expect_err(&format!("{name}: a misspelled key went unnoticed"));
        assert!(err.contains("ipoibMode"), "{name}: {err}");
        assert!(
            err.contains("schema:") && err.contains("parse_public:"),
            "{name}: {err}"
        );
    }
}

#[test]
fn examples_without_checkable_settings_fail() {
    let id = Identity::load();
    let cases = [
        ("notes.txt", "deploy it", "no settings extractor"),
        ("empty.sh", "az vm list\n", "no settings object found"),
        (
            "vars.ps1",
            "Set-AzVMExtension -Publisher OpenSource.HpcCompute -ExtensionType InfiniBandDriverLinux -TypeHandlerVersion 1.0 -Settings $s\n",
            "hashtable literal",
        ),
        (
            "interp.ps1",
            "Set-AzVMExtension -Publisher OpenSource.HpcCompute -ExtensionType InfiniBandDriverLinux -TypeHandlerVersion 1.0 -Settings @{ stack = $stack }\n",
            "not a literal",
        ),
        (
            "file.sh",
            "az vm extension set --publisher OpenSource.HpcCompute --name InfiniBandDriverLinux --version 1.0 --settings settings.json\n",
            "single-quoted JSON",
        ),
        (
            "wrong-version.sh",
            "az vm extension set --publisher OpenSource.HpcCompute --name InfiniBandDriverLinux --version 2.0 --settings '{}'\n",
            "--version must be",
        ),
        (
            "template.json",
            r#"{"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#", "resources": []}"#,
            "no settings object found",
        ),
        (
            "other-publisher.json",
            r#"{"extensions": [{"publisher": "Microsoft.HpcCompute", "type": "InfiniBandDriverLinux", "typeHandlerVersion": "1.0", "autoUpgradeMinorVersion": true, "settings": {}}]}"#,
            "publisher must be",
        ),
    ];
    for (name, text, want) in cases {
        let err = extract(name, text, &id).expect_err(name);
        assert!(err.contains(want), "{name}: {err}");
    }
}

#[test]
fn hashtable_literals_parse() {
    let (v, rest) = parse_hashtable(
        r#" stack = "doca"; 'version' = '3.2.1'
            lockTimeoutSeconds = 1800; removeDriversOnUninstall = $false
            package = @{ sha256 = "ab" } } tail"#,
    )
    .unwrap();
    assert_eq!(
        v,
        json!({"stack": "doca", "version": "3.2.1", "lockTimeoutSeconds": 1800,
               "removeDriversOnUninstall": false, "package": {"sha256": "ab"}})
    );
    assert_eq!(rest, " tail");
}
