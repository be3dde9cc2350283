//! The health monitor's systemd units: `ibdriver-health.timer` runs `ibdriver monitor` every
//! 5 minutes (verbs::monitor). Enable installs them; disable and uninstall remove them.

use crate::error::{Code, Failure};
use crate::host::Root;
use crate::sys::proc;
use crate::sys::runtime::Runtime;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const UNIT: &str = "ibdriver-health";
/// For callers with no tighter deadline (the worker, disable, uninstall).
pub const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(60);
const UNIT_DIR: &str = "etc/systemd/system";

/// Start `argv` as a transient service `<prefix>-<pid>-<nanos>` (`systemd-run`, `Type=exec`:
/// it returns once the command has started), with `props` as further `--property=`/`--`
/// options and `env` set in it. Returns the unit's name.
pub fn start_transient(
    prefix: &str,
    props: &[String],
    env: &[(String, String)],
    argv: &[String],
    timeout: Duration,
) -> Result<String, proc::Unsuccessful> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let unit = format!("{prefix}-{}-{nanos}", std::process::id());
    let mut args = vec![
        format!("--unit={unit}"),
        "--collect".into(),
        "--quiet".into(),
        "--property=Type=exec".into(),
    ];
    args.extend(props.iter().cloned());
    args.extend(env.iter().map(|(k, v)| format!("--setenv={k}={v}")));
    args.extend(argv.iter().cloned());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    proc::run_ok("systemd-run", &refs, "systemd-run", timeout)?;
    Ok(unit)
}

fn unit_paths(root: &Root) -> (PathBuf, PathBuf) {
    let dir = root.path(UNIT_DIR);
    (
        dir.join(format!("{UNIT}.service")),
        dir.join(format!("{UNIT}.timer")),
    )
}

/// systemd quoting for one ExecStart word.
fn quote(word: &str) -> String {
    format!(
        "\"{}\"",
        word.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('%', "%%")
    )
}

pub fn service_unit(exe: &Path, handler_dir: &Path) -> String {
    unit_text(&Runtime::from_env(), exe, handler_dir)
}

/// The service unit for `runtime`'s [`crate::sys::runtime::UNIT_VARS`].
fn unit_text(runtime: &Runtime, exe: &Path, handler_dir: &Path) -> String {
    let mut env = String::new();
    for (key, v) in runtime.unit_vars() {
        env.push_str(&format!("Environment={}\n", quote(&format!("{key}={v}"))));
    }
    format!(
        "# Written by the InfiniBandDriverLinux extension; removed by its disable and uninstall.\n\
         [Unit]\nDescription=InfiniBand driver extension health report\n\n\
         [Service]\nType=oneshot\n{env}ExecStart={} monitor --handler-dir {}\n",
        quote(&exe.to_string_lossy()),
        quote(&handler_dir.to_string_lossy())
    )
}

pub const TIMER_UNIT: &str =
    "# Written by the InfiniBandDriverLinux extension; removed by its disable and uninstall.\n\
[Unit]\nDescription=InfiniBand driver extension health report every 5 minutes\n\n\
[Timer]\nOnBootSec=2min\nOnUnitActiveSec=5min\nAccuracySec=30s\n\n\
[Install]\nWantedBy=timers.target\n";

fn systemctl(args: &[&str], timeout: Duration) {
    match proc::run("systemctl", args, None, timeout) {
        Ok(o) if o.success() => {}
        Ok(o) => tracing::warn!(?args, code = ?o.code, "systemctl failed: {}", o.stderr_tail(300)),
        Err(e) => tracing::warn!(?args, error = %e, "systemctl could not run"),
    }
}

/// Is the installed service unit the one this binary would write? (A no-op enable after an
/// update must repoint it at the new version's binary.)
pub fn is_current(root: &Root, exe: &Path, handler_dir: &Path) -> bool {
    let (svc, timer) = unit_paths(root);
    timer.exists()
        && crate::sys::fsutil::read_text(&svc).ok().as_deref()
            == Some(&service_unit(exe, handler_dir))
}

/// Does `systemctl is-SUBJECT UNIT` say WANT (`is-enabled` "enabled", `is-active` "active")?
/// Anything else, or no answer within `timeout`, is no.
fn says(subject: &str, unit: &str, want: &str, timeout: Duration) -> bool {
    proc::run(
        "systemctl",
        &[&format!("is-{subject}"), unit],
        None,
        timeout,
    )
    .is_ok_and(|o| o.success() && String::from_utf8_lossy(&o.stdout).trim() == want)
}

/// Is `unit` enabled? Asking is cheap; `systemctl enable` of a unit that is already enabled
/// is not (a daemon reload, and update-rc.d for a unit generated from a SysV script: 31 s on
/// a TCG guest).
pub fn is_enabled(unit: &str, timeout: Duration) -> bool {
    says("enabled", unit, "enabled", timeout)
}

/// `timeout` bounds each systemctl call (enable's synchronous path has little time). Units
/// that are current and a timer that is enabled and running are left alone: every success
/// comes here, and a daemon reload and `enable --now` each take seconds on a slow VM.
pub fn install(root: &Root, exe: &Path, handler_dir: &Path, timeout: Duration) {
    if !root.systemd_running() {
        tracing::warn!(
            "systemd is not running: no health monitor; the heartbeat will age after enable"
        );
        return;
    }
    let timer_unit = format!("{UNIT}.timer");
    let current = is_current(root, exe, handler_dir);
    if current && is_enabled(&timer_unit, timeout) && says("active", &timer_unit, "active", timeout)
    {
        return;
    }
    if !current {
        let (svc, timer) = unit_paths(root);
        if let Some(dir) = svc.parent() {
            let _ = crate::sys::fsutil::ensure_system_dir(dir);
        }
        let write = |p: &Path, text: &str| {
            if let Err(e) = crate::sys::fsutil::write_atomic(p, text.as_bytes()) {
                tracing::warn!(path = %p.display(), error = %e, "cannot write unit");
            }
        };
        write(&svc, &service_unit(exe, handler_dir));
        write(&timer, TIMER_UNIT);
        systemctl(&["daemon-reload"], timeout);
    }
    systemctl(&["enable", "--now", &timer_unit], timeout);
    tracing::info!("health monitor timer installed");
}

/// Are any of our unit files on disk?
pub fn installed(root: &Root) -> bool {
    let (svc, timer) = unit_paths(root);
    svc.exists() || timer.exists()
}

/// Stop and remove the timer and its service. Fails (and keeps the unit files, so the next
/// disable knows there is something left to stop) when systemd cannot disable the timer:
/// the agent must then not go on with an uninstall.
pub fn remove(root: &Root) -> Result<(), Failure> {
    if !installed(root) {
        return Ok(());
    }
    let (svc, timer) = unit_paths(root);
    if root.systemd_running() {
        let unit = format!("{UNIT}.timer");
        let what = format!("systemctl disable --now {unit}");
        let args = ["disable", "--now", unit.as_str()];
        if let Err(e) = proc::run_ok("systemctl", &args, &what, SYSTEMCTL_TIMEOUT) {
            return Err(e.failure(Code::DisableFailed, "").with_hint(&format!(
                "check systemd with 'systemctl status {unit}', then disable or remove the \
                 extension again"
            )));
        }
        // A health check already running finishes quickly; stopping it keeps it from
        // writing a heartbeat after ours.
        systemctl(&["stop", &format!("{UNIT}.service")], SYSTEMCTL_TIMEOUT);
    }
    for p in [&timer, &svc] {
        if let Err(e) = std::fs::remove_file(p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(Failure::new(
                    Code::DisableFailed,
                    format!(
                        "cannot remove {}: {e}; remove it by hand, then disable again",
                        p.display()
                    ),
                ));
            }
        }
    }
    if root.systemd_running() {
        systemctl(&["daemon-reload"], SYSTEMCTL_TIMEOUT);
    }
    tracing::info!("health monitor removed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_quotes_paths() {
        let u = service_unit(
            Path::new("/var/lib/waagent/H-1.0/bin/ibdriver"),
            Path::new("/var/lib/waagent/H-1.0"),
        );
        assert!(u.contains("ExecStart=\"/var/lib/waagent/H-1.0/bin/ibdriver\" monitor --handler-dir \"/var/lib/waagent/H-1.0\""));
        assert_eq!(quote("a%b\"c"), "\"a%%b\\\"c\"");
    }

    #[test]
    fn the_unit_carries_the_root_and_the_sysfs_directory() {
        let env = [
            ("IBDRIVER_ROOT", "/r"),
            ("IBDRIVER_SYSFS", "/rec/sys"),
            ("PATH", "/bin"),
        ];
        let runtime = Runtime::from_lookup(|k| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        });
        let u = unit_text(&runtime, Path::new("/b/ibdriver"), Path::new("/h"));
        assert!(u.contains("Environment=\"IBDRIVER_ROOT=/r\"\n"), "{u}");
        assert!(
            u.contains("Environment=\"IBDRIVER_SYSFS=/rec/sys\"\n"),
            "{u}"
        );
        assert!(!u.contains("PATH="), "{u}");
    }
}
