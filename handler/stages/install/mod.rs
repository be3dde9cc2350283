//! The install stages with effects: wait for locks, prerequisites (exact kernel headers and
//! build tools), fetch, install, post-install (DKMS check), activate (reboot or module load).
//! Every stage is idempotent: each checks the host before it acts, so a worker killed anywhere
//! and started again converges, and an installer that finished is not run again.
//!
//! The stages are the public functions here, in their order. What they share: `command` runs
//! one recipe command, `installer` tracks the install commands (and explains mlnxofedinstall's
//! exit codes), `marker` records what was installed, `dkms` checks DKMS's builds.

mod command;
mod dkms;
mod installer;
pub mod locks;
mod marker;
pub mod pins;

pub mod remove;
pub mod repair;

pub use command::run;
pub use dkms::dkms_installed;

use crate::agent::settings::Settings;
use crate::engine::checkpoint::Checkpoint;
use crate::error::{Code, Failure};
use crate::host::stack::{self, StackKind};
use crate::host::Root;
use crate::net::fetch;
use crate::plan::catalog::Choice;
use crate::plan::recipe::{self, Cmd, CmdKind, Family};
use crate::sys::proc;
use marker::Markers;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything the install stages need.
pub struct Ctx<'a> {
    pub root: &'a Root,
    pub family: Family,
    pub kernel: &'a str,
    pub boot_id: &'a str,
    pub choice: &'a Choice,
    pub settings: &'a Settings,
    pub data_dir: &'a Path,
    pub keep_going: &'a dyn Fn() -> bool,
    /// Progress for the status file: a short line per step, percent during the download.
    pub progress: &'a dyn Fn(&str),
    /// Modules loaded when the worker started (old drivers still in memory).
    pub loaded_modules: &'a std::collections::BTreeSet<String>,
    /// The VM's InfiniBand functions, whose drivers activate loads.
    pub functions: &'a [&'a crate::host::pci::PciFunction],
    /// The proxy variables the download may use.
    pub proxy_env: &'a std::collections::BTreeMap<String, String>,
}

pub fn wait_for_locks(ctx: &Ctx) -> Result<(), Failure> {
    let timeout = Duration::from_secs(ctx.settings.public.lock_timeout_seconds);
    locks::wait(
        ctx.root,
        ctx.family,
        timeout,
        Duration::from_secs(2),
        ctx.keep_going,
    )
}

fn vendor_stack(choice: &Choice) -> Option<StackKind> {
    match choice {
        Choice::Artifact { stack, .. } => Some(stack.kind()),
        Choice::Inbox { .. } => None,
    }
}

/// Kernel headers for exactly the running kernel, and the build tools: never another tree.
pub fn prerequisites(ctx: &Ctx) -> Result<(), Failure> {
    let Some(stack) = vendor_stack(ctx.choice) else {
        return Ok(());
    };
    let lock_wait = ctx.settings.public.lock_timeout_seconds;
    if let Some(cmd) = recipe::refresh(ctx.family) {
        wait_for_locks(ctx)?;
        run(&cmd, Code::PackageInstallFailed)?;
    }
    wait_for_locks(ctx)?;
    let headers = recipe::header_packages(ctx.family, ctx.kernel);
    let mut wanted = headers.clone();
    wanted.extend(recipe::build_packages(ctx.family, stack));
    (ctx.progress)("installing kernel headers and build tools");
    if let Err(f) = run(
        &recipe::install_packages(ctx.family, &wanted, lock_wait),
        Code::PackageInstallFailed,
    ) {
        for h in &headers {
            let query = recipe::available_query(ctx.family, h);
            let args: Vec<&str> = query.argv[1..].iter().map(String::as_str).collect();
            let found = proc::run_env(&query.argv[0], &args, &query.env, query.timeout, &|_| {});
            if !found.is_ok_and(|o| o.success()) {
                return Err(headers_unavailable(ctx.kernel, h));
            }
        }
        return Err(f);
    }
    let tree = ctx
        .root
        .path(&recipe::kernel_sources(ctx.family, ctx.kernel));
    let build = ctx.root.path(&format!("lib/modules/{}/build", ctx.kernel));
    if !tree.exists() && !build.exists() {
        return Err(headers_unavailable(ctx.kernel, &headers.join(" ")));
    }
    Ok(())
}

fn headers_unavailable(kernel: &str, package: &str) -> Failure {
    Failure::new(
        Code::HeadersUnavailable,
        format!(
            "kernel headers for the running kernel {kernel} ({package}) cannot be installed; \
             update the kernel and reboot, or use an image whose kernel still has headers in the repositories"
        ),
    )
}

/// Where a verified artifact lives: by checksum, so a changed choice never reuses a stale one.
pub fn artifact_dir(data_dir: &Path, sha256: &str) -> PathBuf {
    data_dir.join("artifacts").join(sha256.to_ascii_lowercase())
}

/// The path the install stage uses: the package file, or the unpacked bundle's top directory.
pub fn artifact_path(data_dir: &Path, choice: &Choice) -> Option<PathBuf> {
    let Choice::Artifact {
        url, sha256, kind, ..
    } = choice
    else {
        return None;
    };
    let dir = artifact_dir(data_dir, sha256);
    if kind.is_unpacked() {
        // The bundle's one top-level directory (MLNX_OFED_LINUX-<ver>-<os>-<arch>).
        let top = crate::sys::fsutil::dir_names(&dir)
            .into_iter()
            .find(|n| dir.join(n).join("mlnxofedinstall").exists());
        return Some(top.map(|t| dir.join(t)).unwrap_or(dir));
    }
    let name = crate::net::url::file_name(url.expose());
    Some(dir.join(name))
}

pub fn fetch_artifact(ctx: &Ctx) -> Result<(), Failure> {
    let Choice::Artifact {
        url, sha256, kind, ..
    } = ctx.choice
    else {
        return Ok(());
    };
    let dest = artifact_dir(ctx.data_dir, sha256);
    let waagent_conf = std::fs::read_to_string(ctx.root.path("etc/waagent.conf")).ok();
    let proxy = crate::net::proxy::choose(
        url.expose(),
        ctx.settings.protected.proxy.as_ref().map(|p| p.expose()),
        ctx.proxy_env,
        waagent_conf.as_deref(),
    );
    let progress = fetch::progress_every(5, |pct, _, total| {
        (ctx.progress)(&format!("downloading: {pct}% of {} MB", total / 1_000_000))
    });
    let opts = fetch::Options {
        proxy,
        retry: fetch::RetryPolicy::default(),
        max_extract: fetch::DEFAULT_MAX_EXTRACT,
        limits: fetch::Limits::default(),
        sleep: &std::thread::sleep,
        progress: &progress,
        // A newer sequence number or a disable stops the download (Superseded, 203).
        keep_going: ctx.keep_going,
        // Our own data directory: a previous download of this artifact may be replaced.
        replace: true,
    };
    let req = fetch::Request {
        url: url.expose().to_string(),
        sha256: sha256.clone(),
        size: None,
        extract: kind.is_unpacked(),
    };
    let out =
        fetch::fetch(&req, &ctx.data_dir.join("staging"), &dest, &opts).map_err(|e| e.failure())?;
    tracing::info!(bytes = out.size, files = out.files, "artifact verified");
    Ok(())
}

/// `persist` saves the checkpoint: that this sequence number's installer ran must be on disk
/// before it runs, or a worker killed between the installer's end and the stage's end would
/// find the stack "already installed", forget that it replaced loaded drivers and skip the
/// activation reboot.
pub fn install(
    ctx: &Ctx,
    cp: &mut Checkpoint,
    persist: &dyn Fn(&mut Checkpoint) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let track = ctx.data_dir.join(installer::TRACK_FILE);
    installer::wait_for_orphan(&track, ctx.keep_going, ctx.progress)?;
    let _ = std::fs::remove_file(&track);
    finish_interrupted_dpkg(ctx)?;
    let markers = Markers::new(ctx.data_dir, ctx.choice);
    if marker::already_installed(ctx.root, ctx.choice) {
        tracing::info!("the chosen stack is already installed; the installer is not run again");
        return Ok(());
    }
    // An earlier run of ours started this very install and the host now has the stack: that
    // run's installer finished (the worker was stopped after it), so it is not run twice.
    let chosen = vendor_stack(ctx.choice).unwrap_or(StackKind::Inbox);
    let ours_started = markers.started_by_us();
    cp.installer_ran = true;
    persist(cp)?;
    if ours_started && stack::detect(ctx.root).is_some_and(|h| h.kind == chosen) {
        tracing::info!("an interrupted run's installer completed this install");
        return markers.complete();
    }
    markers.begin()?;
    run_installers(ctx, &track)?;
    markers.complete()
}

/// A package run cut short leaves dpkg half-configured; apt refuses to go on until it is
/// finished.
fn finish_interrupted_dpkg(ctx: &Ctx) -> Result<(), Failure> {
    if ctx.family != Family::Apt || !dpkg_interrupted(ctx.root) {
        return Ok(());
    }
    let mut fix = Cmd::of_kind(
        CmdKind::Packages,
        "finish an interrupted dpkg run",
        1800,
        &["dpkg", "--configure", "-a"],
    );
    fix.env
        .push(("DEBIAN_FRONTEND".into(), "noninteractive".into()));
    run(&fix, Code::PackageInstallFailed)?;
    Ok(())
}

/// dpkg keeps pending work in `/var/lib/dpkg/updates/` while a run is unfinished.
fn dpkg_interrupted(root: &Root) -> bool {
    !crate::sys::fsutil::dir_names(&root.path("var/lib/dpkg/updates")).is_empty()
}

/// The recipe's install commands for the choice, each tracked in `track`. A package manager
/// waits for the locks again first; mlnxofedinstall takes none, and its exit code is explained.
fn run_installers(ctx: &Ctx, track: &Path) -> Result<(), Failure> {
    if vendor_stack(ctx.choice) == Some(StackKind::Doca) {
        pins::before_doca(ctx.root, ctx.family)
            .map_err(|e| Failure::state_io(&ctx.root.path("etc/dkms"), e))?;
    }
    let artifact = artifact_path(ctx.data_dir, ctx.choice);
    let cmds = recipe::install_cmds(
        ctx.family,
        ctx.choice,
        artifact.as_deref(),
        ctx.kernel,
        ctx.settings.public.lock_timeout_seconds,
    );
    for cmd in &cmds {
        (ctx.progress)(&cmd.purpose);
        if cmd.kind == CmdKind::Packages {
            // apt-daily or unattended-upgrades may have started since wait-for-locks.
            wait_for_locks(ctx)?;
        }
        command::run_tracked(cmd, Code::PackageInstallFailed, Some(track)).map_err(|f| {
            if cmd.kind == CmdKind::OfedInstaller {
                installer::mlnxofedinstall_failed(f)
            } else {
                f
            }
        })?;
    }
    Ok(())
}

pub fn post_install(ctx: &Ctx) -> Result<(), Failure> {
    let Some(stack) = vendor_stack(ctx.choice) else {
        return Ok(());
    };
    if stack == StackKind::Doca {
        dkms::check_dkms(ctx.root, ctx.family, ctx.kernel)?;
    }
    refresh_boot_files(ctx);
    if stack != StackKind::Doca {
        return Ok(());
    }
    // Keep the distribution's rdma-core from replacing DOCA's on the next update.
    let hold = pins::after_doca(ctx.root, ctx.family)
        .map_err(|e| Failure::state_io(&ctx.root.path("etc"), e))?;
    if !hold.is_empty() {
        let mut cmd = Cmd::of_kind(
            CmdKind::Packages,
            "hold the packages DOCA replaces",
            300,
            &["apt-mark", "hold"],
        );
        cmd.argv.extend(hold);
        run(&cmd, Code::PackageInstallFailed)?;
    }
    Ok(())
}

/// The new modules must be what the next boot loads: rebuild the initramfs for the running
/// kernel (an inbox mlx5_core in it would load first). (Configure enables openibd.)
/// Failures here are logged, not fatal: verify after the reboot has the last word.
fn refresh_boot_files(ctx: &Ctx) {
    refresh_initramfs(ctx.family, ctx.kernel);
}

/// Rebuild the initramfs of `k`; a failure is logged, not fatal.
pub fn refresh_initramfs(family: Family, k: &str) {
    if let Err(f) = run(&recipe::initramfs(family, k), Code::PackageInstallFailed) {
        tracing::warn!("{}", f.message);
    }
}

/// What activation decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Activation {
    Active,
    /// The worker must leave now: the VM is rebooting.
    Rebooting,
}

/// Activate the new drivers: load modules for the inbox stack; reboot for a vendor stack whose
/// predecessor is still loaded (a live `openibd restart` detaches the VFs and loses IPoIB
/// netdevs: docs/DOMAIN.md, "Activation"). At most one reboot per sequence number.
pub fn activate(ctx: &Ctx, cp: &mut Checkpoint, may_reboot: bool) -> Result<Activation, Failure> {
    let flagged = ctx.root.path("run/reboot-required").exists()
        || ctx.root.path("var/run/reboot-required").exists();
    match cp.reboot_from_boot.as_deref() {
        // The reboot this sequence number asked for has happened.
        Some(from) if from != ctx.boot_id => {
            if flagged {
                return Err(Failure::new(
                    Code::RebootLoop,
                    "the system still asks for a reboot after the one this sequence number made; \
                     refusing to reboot again (a loop); see the log and run diagnose",
                ));
            }
            tracing::info!("running after the activation reboot");
            return Ok(Activation::Active);
        }
        // Asked for in this boot but it has not happened (the worker was stopped in between,
        // or the request did not take): the same reboot, asked for again.
        Some(_) => {
            return if may_reboot {
                Ok(Activation::Rebooting)
            } else {
                Err(reboot_required())
            };
        }
        None => {}
    }
    let vendor = vendor_stack(ctx.choice).is_some();
    let old_loaded = ["mlx5_core", "mlx4_core", "ib_core"]
        .iter()
        .any(|m| ctx.loaded_modules.contains(*m));
    // Only an installer that ran now replaces loaded drivers; a later sequence number with the
    // same choice does not reboot again.
    let needs_reboot = flagged || (vendor && old_loaded && cp.installer_ran);
    if !needs_reboot {
        if !vendor {
            load_inbox_modules(ctx.functions);
        }
        return Ok(Activation::Active);
    }
    // Recorded before anything else, so a worker stopped from here on repeats the same request.
    cp.reboot_from_boot = Some(ctx.boot_id.to_string());
    if !may_reboot {
        return Err(reboot_required());
    }
    cp.reboots += 1;
    Ok(Activation::Rebooting)
}

/// Load what configure will ask for, IPoIB included (configure leaves it loaded or not used,
/// as the setting says). A failure is logged, not fatal.
fn load_inbox_modules(functions: &[&crate::host::pci::PciFunction]) {
    let modules = crate::stages::configure::wanted_modules(functions, true, false);
    let mut args = vec!["-a", "-b", "-q"];
    args.extend(modules.iter().map(String::as_str));
    match proc::run("modprobe", &args, None, Duration::from_secs(120)) {
        Ok(o) if o.success() => {}
        Ok(o) => tracing::warn!("modprobe: {}", o.stderr_tail(300)),
        Err(e) => tracing::warn!("modprobe: {e}"),
    }
}

fn reboot_required() -> Failure {
    Failure::new(
        Code::RebootRequired,
        "drivers are installed; reboot the VM to activate them (settings say reboot: never); \
         enable finishes by itself after the reboot",
    )
}

/// Ask for the reboot (after the checkpoint recording it is saved).
pub fn request_reboot() -> Result<(), Failure> {
    let out = proc::run("systemctl", &["reboot"], None, Duration::from_secs(60))
        .or_else(|_| proc::run("reboot", &[], None, Duration::from_secs(60)))
        .map_err(|e| {
            Failure::new(
                Code::RebootRequired,
                format!("cannot request a reboot: {e}; reboot the VM"),
            )
        })?;
    if out.success() {
        Ok(())
    } else {
        Err(Failure::new(
            Code::RebootRequired,
            format!(
                "reboot request failed: {}; reboot the VM",
                out.stderr_tail(200)
            ),
        ))
    }
}
