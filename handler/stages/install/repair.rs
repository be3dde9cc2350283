//! Self-repair after a kernel update (issue 4 item 3). Enable runs after every reboot; when the
//! VM booted a kernel for which the stack's RDMA modules are missing (or only the distribution's
//! modules exist while a vendor stack is installed), rebuild or reinstall them for that kernel:
//! DKMS for DOCA, the kernel's extra-modules package for the inbox stack. When the driver is
//! loaded, or its module is there for the running kernel, nothing drifted and nothing runs.

use super::{locks, run};
use crate::error::{Code, Failure};
use crate::host::stack::StackKind;
use crate::host::{HostFacts, Root};
use crate::plan::recipe::{self, Cmd, CmdKind, Family};
use std::time::Duration;

/// What the repair stage needs.
pub struct Ctx<'a> {
    pub root: &'a Root,
    pub family: Family,
    pub facts: &'a HostFacts,
    pub lock_timeout: Duration,
    pub keep_going: &'a dyn Fn() -> bool,
    pub progress: &'a dyn Fn(&str),
}

/// The HCA driver module the VM's InfiniBand functions need: `mlx4_ib` when any of them is a
/// ConnectX-3 (it sorts first; Azure never mixes generations in one VM), else `mlx5_ib`.
fn driver_module(facts: &HostFacts) -> &'static str {
    facts
        .infiniband_functions()
        .map(|f| f.driver_modules().ib)
        .min()
        .unwrap_or("mlx5_ib")
}

fn is_module_file(name: &str, module: &str) -> bool {
    let Some(rest) = name.strip_prefix(module) else {
        return false;
    };
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"].contains(&rest)
}

/// Paths (relative to `lib/modules/<kernel>`) of `module`'s files for `kernel`.
pub fn module_files(root: &Root, kernel: &str, module: &str) -> Vec<String> {
    let base = root.path(&format!("lib/modules/{kernel}"));
    let mut out = Vec::new();
    let mut stack = vec![base.clone()];
    // Bounded walk: a modules tree has a few thousand directories.
    let mut budget = 100_000;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            budget -= 1;
            if budget == 0 {
                return out;
            }
            let Ok(ft) = e.file_type() else { continue };
            let p = e.path();
            if ft.is_dir() {
                stack.push(p);
            } else if is_module_file(&e.file_name().to_string_lossy(), module) {
                if let Ok(rel) = p.strip_prefix(&base) {
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
    }
    out.sort();
    out
}

/// Is a module file of the right origin there? Vendor stacks put theirs in `updates/` (DKMS)
/// or `extra/` (kmod packages); the distribution's in `kernel/`.
fn present(files: &[String], vendor: bool) -> bool {
    files
        .iter()
        .any(|f| !vendor || f.starts_with("updates/") || f.starts_with("extra/"))
}

fn builtin(root: &Root, kernel: &str, module: &str) -> bool {
    crate::sys::fsutil::read_trimmed(&root.path(&format!("lib/modules/{kernel}/modules.builtin")))
        .is_some_and(|t| crate::host::parse_modules_builtin(&t).contains(module))
}

/// How the running kernel's driver differs from the installed stack's.
#[derive(Debug, PartialEq, Eq)]
pub enum Drift {
    /// The stack's module is not there for this kernel: rebuild or install it.
    Missing(String),
    /// The stack's module is there but the distribution's is the one loaded: a reboot swaps
    /// them (a live reload detaches the VFs and loses the IPoIB netdevs).
    WrongDriverLoaded(String),
}

/// Is the loaded `module` the stack's own build? Compares the loaded module's `srcversion`
/// (sysfs) with those of the vendor files for this kernel (`modinfo`). `None`: cannot tell.
/// The vendor's modules carry a `MODULE_VERSION`, so they always have a srcversion; the
/// kernel's own have none in sysfs unless it was built with `CONFIG_MODULE_SRCVERSION_ALL`
/// (Debian's and Ubuntu's are not), so a loaded module without one is not the vendor's.
/// `/sys/module` is the running kernel's state, not a hardware fact: it is read on the root,
/// never from a recorded sysfs tree (`IBDRIVER_SYSFS`), like `/proc/modules`.
fn loaded_is_vendor(root: &Root, kernel: &str, module: &str, files: &[String]) -> Option<bool> {
    let loaded =
        crate::sys::fsutil::read_trimmed(&root.path(&format!("sys/module/{module}/srcversion")));
    let mut known = false;
    for f in files
        .iter()
        .filter(|f| present(std::slice::from_ref(*f), true))
    {
        let path = root.path(&format!("lib/modules/{kernel}/{f}"));
        let path = path.to_string_lossy();
        let out = crate::sys::proc::run(
            "modinfo",
            &["-F", "srcversion", &path],
            None,
            Duration::from_secs(20),
        )
        .ok()?;
        let theirs = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.success() || theirs.is_empty() {
            continue;
        }
        known = true;
        if loaded.as_deref() == Some(theirs.as_str()) {
            return Some(true);
        }
    }
    known.then_some(false)
}

/// Has the running kernel lost the stack's modules, or booted the distribution's driver under a
/// vendor stack? `None`: nothing drifted.
pub fn drift(root: &Root, facts: &HostFacts) -> Option<Drift> {
    let module = driver_module(facts);
    let vendor = facts
        .stack
        .as_ref()
        .is_some_and(|s| s.kind != StackKind::Inbox);
    let files = module_files(root, &facts.kernel, module);
    let kernel = &facts.kernel;
    if facts.modules.contains(module) || builtin(root, kernel, module) {
        if !vendor || files.is_empty() {
            return None;
        }
        if !present(&files, true) {
            return Some(Drift::Missing(format!(
                "kernel {kernel} runs the distribution's {module}; the installed stack's is not built for it"
            )));
        }
        if loaded_is_vendor(root, kernel, module, &files) == Some(false) {
            return Some(Drift::WrongDriverLoaded(format!(
                "kernel {kernel} loaded the distribution's {module}, not the installed stack's"
            )));
        }
        return None;
    }
    if present(&files, vendor) {
        return None; // there, only not loaded yet: configure loads it
    }
    Some(Drift::Missing(if files.is_empty() {
        format!("kernel {kernel} has no {module} module")
    } else {
        format!("kernel {kernel} has only the distribution's {module}, not the installed stack's")
    }))
}

/// The per-kernel record of repair's reboot, in the data directory: (kernel, boot id).
const REPAIR_REBOOT: &str = "repair-reboot.json";

/// May repair reboot the VM for `facts.kernel` (`why`)? One reboot per kernel, whatever the
/// sequence number or apply: a second would be a loop (219). With `may_reboot` false, 218. When
/// allowed, the reboot is recorded here, before it is asked for; a record from this same boot
/// is a reboot asked for that has not happened yet, asked for again.
pub fn record_reboot(
    data_dir: &std::path::Path,
    facts: &HostFacts,
    why: &str,
    may_reboot: bool,
) -> Result<(), Failure> {
    let record = data_dir.join(REPAIR_REBOOT);
    let done: Option<(String, String)> =
        crate::sys::fsutil::read_regular(&record, crate::sys::fsutil::MAX_READ)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
    if let Some((kernel, boot)) = &done {
        if *kernel == facts.kernel && *boot != facts.boot_id {
            return Err(Failure::new(
                Code::RebootLoop,
                format!(
                    "{why}, and the VM already rebooted once for kernel {kernel}; refusing another reboot (a loop); run diagnose"
                ),
            ));
        }
    }
    if !may_reboot {
        return Err(Failure::new(
            Code::RebootRequired,
            format!("{why}; reboot the VM to load the stack's driver (settings say reboot: never)"),
        ));
    }
    let bytes = serde_json::to_vec(&(&facts.kernel, &facts.boot_id)).expect("serializes");
    crate::sys::fsutil::write_atomic(&record, &bytes).map_err(|err| Failure::state_io(&record, err))
}

fn wait_locks(ctx: &Ctx) -> Result<(), Failure> {
    locks::wait(
        ctx.root,
        ctx.family,
        ctx.lock_timeout,
        Duration::from_secs(2),
        ctx.keep_going,
    )
}

fn install(ctx: &Ctx, packages: &[String]) -> Result<(), Failure> {
    if let Some(cmd) = recipe::refresh(ctx.family) {
        wait_locks(ctx)?;
        run(&cmd, Code::RepairFailed)?;
    }
    wait_locks(ctx)?;
    run(
        &recipe::install_packages(ctx.family, packages, ctx.lock_timeout.as_secs()),
        Code::RepairFailed,
    )?;
    Ok(())
}

/// The package with the kernel's RDMA modules when they are not in the base kernel package.
fn inbox_module_package(f: Family, kernel: &str) -> Option<String> {
    match f {
        Family::Apt => Some(format!("linux-modules-extra-{kernel}")),
        Family::Dnf | Family::Yum => Some(format!("kernel-modules-{kernel}")),
        Family::Zypper | Family::Tdnf => None,
    }
}

fn dkms_registered(root: &Root, family: Family) -> bool {
    recipe::dkms_modules(family)
        .iter()
        .any(|m| root.path(&format!("var/lib/dkms/{m}")).is_dir())
}

/// What repair did.
#[derive(Debug, PartialEq, Eq)]
pub enum Repaired {
    /// Nothing drifted, or the modules are there now and configure loads them.
    Ready,
    /// The distribution's driver is loaded while the stack's is built for this kernel: only a
    /// reboot swaps them (a live reload detaches the VFs and loses the IPoIB netdevs). Says why.
    NeedsReboot(String),
}

/// Repair the stack for the running kernel, or do nothing when nothing drifted.
pub fn repair(ctx: &Ctx) -> Result<Repaired, Failure> {
    let why = match drift(ctx.root, ctx.facts) {
        None => {
            tracing::info!(kernel = %ctx.facts.kernel, "the stack's modules are there for the running kernel");
            return Ok(Repaired::Ready);
        }
        Some(Drift::WrongDriverLoaded(why)) => {
            tracing::warn!("{why}");
            return Ok(Repaired::NeedsReboot(why));
        }
        Some(Drift::Missing(why)) => why,
    };
    let loaded = ctx.facts.modules.contains(driver_module(ctx.facts));
    tracing::warn!("kernel drift: {why}; repairing");
    (ctx.progress)(&format!("{why}; repairing"));
    let kernel = ctx.facts.kernel.as_str();
    match ctx.facts.stack.as_ref().map(|s| s.kind) {
        Some(StackKind::Doca) | Some(StackKind::MlnxOfed)
            if dkms_registered(ctx.root, ctx.family) =>
        {
            rebuild_with_dkms(ctx, kernel)?
        }
        Some(kind @ (StackKind::Doca | StackKind::MlnxOfed)) => {
            return Err(Failure::new(
                Code::RepairFailed,
                format!(
                    "{why}, and the installed {} stack was built for another kernel without DKMS; \
                     boot the kernel it was built for, or redeploy with stack doca or inbox",
                    kind.as_str()
                ),
            ));
        }
        Some(StackKind::Inbox) | None => install_inbox_modules(ctx, kernel, &why)?,
    }
    if let Err(e) = crate::sys::proc::run("depmod", &["-a", kernel], None, Duration::from_secs(300))
    {
        tracing::warn!("depmod: {e}");
    }
    after_repair(drift(ctx.root, ctx.facts), loaded, kernel)
}

/// A vendor stack registered with DKMS: headers and build tools for `kernel`, then DKMS
/// builds the stack's modules for it, and the initramfs gets them.
fn rebuild_with_dkms(ctx: &Ctx, kernel: &str) -> Result<(), Failure> {
    let mut wanted = recipe::header_packages(ctx.family, kernel);
    wanted.extend(recipe::build_packages(ctx.family, StackKind::Doca));
    (ctx.progress)(&format!("installing headers for {kernel}"));
    install(ctx, &wanted).map_err(|f| {
        Failure::new(
            Code::RepairFailed,
            format!(
                "kernel {kernel} needs the stack's modules rebuilt, but its headers would not install ({}); boot the previous kernel or install linux headers for {kernel}",
                f.message
            ),
        )
    })?;
    (ctx.progress)(&format!("rebuilding the DKMS modules for {kernel}"));
    run(
        &Cmd::of_kind(
            CmdKind::Plain,
            "rebuild the DKMS modules",
            3600,
            &["dkms", "autoinstall", "-k", kernel],
        ),
        Code::RepairFailed,
    )?;
    super::refresh_initramfs(ctx.family, kernel);
    Ok(())
}

/// The inbox stack: the package with the kernel's RDMA modules, where the distribution has
/// one apart from the kernel's own.
fn install_inbox_modules(ctx: &Ctx, kernel: &str, why: &str) -> Result<(), Failure> {
    let Some(pkg) = inbox_module_package(ctx.family, kernel) else {
        return Err(Failure::new(
            Code::RepairFailed,
            format!(
                "{why}; install the kernel's RDMA modules for {kernel} or boot the previous kernel"
            ),
        ));
    };
    (ctx.progress)(&format!("installing {pkg}"));
    install(ctx, std::slice::from_ref(&pkg)).map_err(|f| {
        Failure::new(
            Code::RepairFailed,
            format!(
                "{why}, and {pkg} would not install ({}); boot the previous kernel or install {pkg} and run enable again",
                f.message
            ),
        )
    })
}

/// What the repair achieved, from the drift found after it (`loaded`: the distribution's
/// driver was loaded before it, and a rebuild cannot replace a loaded module).
fn after_repair(now: Option<Drift>, loaded: bool, kernel: &str) -> Result<Repaired, Failure> {
    match now {
        None if loaded => {
            tracing::info!(kernel, "rebuilt; the distribution's driver is still loaded");
            Ok(Repaired::NeedsReboot(format!(
                "the stack's modules were rebuilt for kernel {kernel} while the distribution's driver is loaded"
            )))
        }
        None => {
            tracing::info!(kernel, "repaired");
            Ok(Repaired::Ready)
        }
        Some(Drift::WrongDriverLoaded(why)) => Ok(Repaired::NeedsReboot(why)),
        Some(Drift::Missing(still)) => Err(Failure::new(
            Code::RepairFailed,
            format!(
                "repair for kernel {kernel} finished but {still}; run diagnose and check the log"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names() {
        assert!(is_module_file("mlx5_ib.ko", "mlx5_ib"));
        assert!(is_module_file("mlx5_ib.ko.zst", "mlx5_ib"));
        assert!(!is_module_file("mlx5_ib_foo.ko", "mlx5_ib"));
        assert!(!is_module_file("mlx5_ib", "mlx5_ib"));
    }

    #[test]
    fn origin_matters_for_vendor_stacks() {
        let inbox = vec!["kernel/drivers/infiniband/hw/mlx5/mlx5_ib.ko".to_string()];
        let dkms = vec!["updates/dkms/mlx5_ib.ko".to_string()];
        assert!(present(&inbox, false));
        assert!(!present(&inbox, true));
        assert!(present(&dkms, true));
        assert!(!present(&[], false));
    }

    #[test]
    fn walks_the_modules_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        let p = dir
            .path()
            .join("lib/modules/6.8.0-1010-azure/updates/dkms/mlx5_ib.ko.zst");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"").unwrap();
        assert_eq!(
            module_files(&root, "6.8.0-1010-azure", "mlx5_ib"),
            vec!["updates/dkms/mlx5_ib.ko.zst".to_string()]
        );
        assert!(module_files(&root, "other", "mlx5_ib").is_empty());
    }
}
