//! IPoIB `waagent` mode: `OS.EnableRDMA=y` in `/etc/waagent.conf` and, when needed, a queued
//! restart of the agent so it reads it (docs/DOMAIN.md, "IPoIB").

use super::ipoib::has_ip;
use super::state::{run_cmd, Assignment, Ctx, State, WAAGENT_CONF};
use crate::error::{Code, Failure};
use crate::host::Root;
use crate::sys::fsutil;
use crate::sys::proc;

/// `/etc/waagent.conf` with `OS.EnableRDMA=y`, or `None` when it already says so. Every other
/// line is kept as it is. An active `OS.EnableRDMA=` line is rewritten; otherwise the first
/// commented form (`# OS.EnableRDMA=n`, `#OS.EnableRDMA=y`, ...) is replaced; otherwise the
/// line is appended.
pub fn enable_rdma(text: &str) -> Option<String> {
    fn key_value(line: &str) -> Option<&str> {
        let (k, v) = line.split_once('=')?;
        (k.trim() == "OS.EnableRDMA").then(|| v.trim())
    }
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let active: Vec<usize> = (0..lines.len())
        .filter(|&i| key_value(lines[i].trim()).is_some())
        .collect();
    // The agent reads the last active line; every active line must say y.
    if !active.is_empty()
        && active.iter().all(|&i| {
            key_value(lines[i].trim()).is_some_and(|v| {
                // As the agent reads it: up to a '#', without quotes and blanks.
                let v = v.split('#').next().unwrap_or("");
                v.trim_matches(|c: char| c == '"' || c.is_whitespace())
                    .eq_ignore_ascii_case("y")
            })
        })
    {
        return None;
    }
    let eol = |l: &str| {
        if l.ends_with("\r\n") {
            "\r\n"
        } else if l.ends_with('\n') {
            "\n"
        } else {
            ""
        }
    };
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    if !active.is_empty() {
        for i in active {
            out[i] = format!("OS.EnableRDMA=y{}", eol(lines[i]));
        }
        return Some(out.concat());
    }
    let commented = (0..lines.len()).find(|&i| {
        let t = lines[i].trim_start();
        t.starts_with('#') && key_value(t.trim_start_matches('#').trim()).is_some()
    });
    if let Some(i) = commented {
        out[i] = format!("OS.EnableRDMA=y{}", eol(lines[i]));
        return Some(out.concat());
    }
    let mut s = out.concat();
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    s.push_str("OS.EnableRDMA=y\n");
    Some(s)
}

/// The boot in which configure last restarted the agent for stale addresses (data directory).
const RESTART_RECORD: &str = "agent-restart";

/// Are some of `assignments` still missing after waiting up to `wait` for the agent?
pub(super) fn addresses_missing_after(
    ctx: &Ctx,
    assignments: &[Assignment],
    wait: std::time::Duration,
) -> bool {
    use crate::sys::clock::{poll_while_wanted, Look, SystemClock};
    let tick = std::time::Duration::from_millis(500);
    poll_while_wanted(&SystemClock, wait, tick, ctx.keep_going, || {
        let missing = assignments
            .iter()
            .any(|a| !has_ip(&crate::host::ip::addresses_of(&a.netdev), &a.address));
        if missing {
            Look::NotYet(true)
        } else {
            Look::Done(false)
        }
    })
}

/// The agent's unit on this distribution (Ubuntu/Debian: walinuxagent; others: waagent).
pub(super) fn agent_unit(root: &Root) -> Option<&'static str> {
    ["walinuxagent.service", "waagent.service"]
        .into_iter()
        .find(|u| root.has_unit(u))
}

/// Set `OS.EnableRDMA=y`. `restart`: restart the agent when the file changed, or when
/// `stale` (the switch was already on but the agent has not assigned the addresses: it reads
/// the switch only when it starts). The restart is queued (`--no-block`) and our worker runs in
/// its own unit, so the agent's stop cannot take the worker with it.
pub(super) fn waagent_enable(
    ctx: &Ctx,
    restart: bool,
    stale: bool,
    state: &mut State,
) -> Result<bool, Failure> {
    let path = ctx.root.path(WAAGENT_CONF);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Failure::new(
            Code::ConfigureFailed,
            format!(
                "cannot read {}: {e}; ipoib waagent needs the Azure guest agent, or use ipoib native",
                path.display()
            ),
        )
    })?;
    let changed = match enable_rdma(&text) {
        None => false,
        Some(new) => {
            fsutil::write_system_file(&path, new.as_bytes()).map_err(|e| {
                Failure::new(
                    Code::ConfigureFailed,
                    format!("cannot update {}: {e}", path.display()),
                )
            })?;
            tracing::info!("set OS.EnableRDMA=y in {}", path.display());
            true
        }
    };
    // At most one restart per boot for stale addresses: an agent that does not assign them
    // after a restart (2.9.1.1) would not after a second one, and verify says so.
    let record = ctx.data_dir.join(RESTART_RECORD);
    let restarted_this_boot =
        fsutil::read_trimmed(&record).as_deref() == Some(ctx.facts.boot_id.as_str());
    if restart && (changed || (stale && !restarted_this_boot)) {
        match (ctx.root.systemd_running(), agent_unit(ctx.root)) {
            (true, Some(unit)) => {
                if let Err(e) = fsutil::write_atomic(&record, ctx.facts.boot_id.as_bytes()) {
                    tracing::warn!(path = %record.display(), error = %e, "cannot record the agent restart");
                }
                if let Err(e) = run_cmd("systemctl", &["--no-block", "try-restart", unit], 60) {
                    state.notes.push(format!(
                        "the guest agent was not restarted ({}); it reads OS.EnableRDMA at its next start",
                        proc::tail_line(&e.to_string(), 200)
                    ));
                }
            }
            _ => state.notes.push(
                "the guest agent reads OS.EnableRDMA=y at its next start (no systemd unit found to restart)"
                    .into(),
            ),
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every form of the switch seen in the wild, and a second pass changes nothing.
    #[test]
    fn waagent_conf_forms() {
        let cases = [
            // (input, expected output)
            ("", "OS.EnableRDMA=y\n"),
            ("Provisioning.Enabled=n\n", "Provisioning.Enabled=n\nOS.EnableRDMA=y\n"),
            ("Provisioning.Enabled=n", "Provisioning.Enabled=n\nOS.EnableRDMA=y\n"),
            ("a=1\nOS.EnableRDMA=n\nb=2\n", "a=1\nOS.EnableRDMA=y\nb=2\n"),
            ("a=1\n# OS.EnableRDMA=n\nb=2\n", "a=1\nOS.EnableRDMA=y\nb=2\n"),
            ("a=1\n# OS.EnableRDMA=y\nb=2\n", "a=1\nOS.EnableRDMA=y\nb=2\n"),
            ("#OS.EnableRDMA=y\n", "OS.EnableRDMA=y\n"),
            ("  #  OS.EnableRDMA = n\n", "OS.EnableRDMA=y\n"),
            ("OS.EnableRDMA = n\n", "OS.EnableRDMA=y\n"),
            (
                "# Enable RDMA management and set up, should only be used in HPC images\n# OS.EnableRDMA=y\n",
                "# Enable RDMA management and set up, should only be used in HPC images\nOS.EnableRDMA=y\n",
            ),
            // Both a commented and an active line: the active one decides.
            ("# OS.EnableRDMA=y\nOS.EnableRDMA=n\n", "# OS.EnableRDMA=y\nOS.EnableRDMA=y\n"),
            // Two active lines disagreeing: both say y afterwards.
            ("OS.EnableRDMA=y\nOS.EnableRDMA=n\n", "OS.EnableRDMA=y\nOS.EnableRDMA=y\n"),
            ("OS.EnableRDMA=n\r\n", "OS.EnableRDMA=y\r\n"),
        ];
        for (input, want) in cases {
            let got = enable_rdma(input).unwrap_or_else(|| input.to_string());
            assert_eq!(got, want, "input {input:?}");
            assert_eq!(enable_rdma(&got), None, "second pass on {got:?}");
        }
        for already in [
            "OS.EnableRDMA=y\n",
            "a=1\nOS.EnableRDMA=Y\n",
            "OS.EnableRDMA=y # comment\n",
            "OS.EnableRDMA=\"y\"\n",
            "# OS.EnableRDMA=n\nOS.EnableRDMA=y\n",
        ] {
            assert_eq!(enable_rdma(already), None, "{already:?}");
        }
        // Keys that merely contain the name are other settings.
        assert_eq!(
            enable_rdma("OS.EnableRDMAFoo=n\n").as_deref(),
            Some("OS.EnableRDMAFoo=n\nOS.EnableRDMA=y\n")
        );
    }
}
