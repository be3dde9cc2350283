//! The bundle's `sysfs/`: a plain-file copy of exactly the hardware facts the handler reads
//! from the sysfs directory (`host::pci::scan`, `host::read_vmbus`, the EFI Secure Boot
//! variable, configure's `ipoib::netdevs`, the port listing of `host/ib-ports.txt`), so that
//! `ibdriver plan --sysfs <unpacked bundle>/ibdriver-diagnose/sysfs` on another machine sees
//! the same PCI functions, ports, netdevs and VMBus devices.
//!
//! The rules of the copy:
//! - the layout is fixed (below), so its depth is bounded by it: `bus/pci/devices/<addr>/`
//!   with its `infiniband/<dev>/ports/<n>/` and `net/<if>/`, `class/net/<if>/`,
//!   `class/infiniband/<dev>/ports/<n>/`, `bus/vmbus/devices/<id>/` and the EFI variable;
//! - only the attributes named here are read, each a regular file that is not a symbolic link
//!   and is at most [`ATTR_CAP`] bytes (a read is bounded by it too);
//! - directories are reached through the kernel's links (`bus/pci/devices/*` and
//!   `class/net/*` are symbolic links into `devices/`) and written as plain directories;
//! - at most [`MAX_ENTRIES`] names per directory, [`MAX_FILES`] files and [`TREE_CAP`] bytes
//!   in all; what is left out is said in the manifest's `sysfs/` part.

use super::bundle::{Bundle, State};
use crate::host::{self, Root};
use crate::sys::fsutil::{self, dir_names};
use std::fs;
use std::path::Path;

/// The tree's directory inside the bundle's top directory.
pub const SYSFS: &str = "sysfs";
/// A sysfs attribute is one value; anything longer is not one the handler reads.
pub const ATTR_CAP: u64 = 4096;
pub const MAX_ENTRIES: usize = 1024;
pub const MAX_FILES: usize = 10_000;
pub const TREE_CAP: u64 = 4 * 1024 * 1024;
/// How many of the left-out paths the manifest names (the rest are counted).
const MAX_NOTES: usize = 20;

/// What `host::pci::scan` reads of a function, and the subsystem ids that tell boards apart.
const PCI_ATTRS: [&str; 5] = [
    "vendor",
    "device",
    "class",
    "subsystem_vendor",
    "subsystem_device",
];
/// `host::pci::read_ib_device`.
const IB_ATTRS: [&str; 2] = ["node_guid", "fw_ver"];
/// `host::pci::read_port` (and the port listing's four).
const PORT_ATTRS: [&str; 5] = ["state", "phys_state", "rate", "link_layer", "lid"];
/// `host::pci::read_netdev` and `ipoib::netdevs`.
const NET_ATTRS: [&str; 3] = ["address", "type", "operstate"];
/// `host::read_vmbus`.
const VMBUS_ATTRS: [&str; 2] = ["class_id", "device_id"];

/// The recorded tree: directories (each before what is in it) and files, by path below the
/// sysfs directory; what was left out and why.
#[derive(Debug, Default)]
pub struct Tree {
    pub dirs: Vec<String>,
    pub files: Vec<(String, Vec<u8>)>,
    pub bytes: u64,
    /// The first [`MAX_NOTES`] of what was left out, and why.
    pub left_out: Vec<String>,
    /// How many were left out in all.
    pub left_out_count: usize,
}

impl Tree {
    fn full(&self) -> bool {
        self.files.len() >= MAX_FILES || self.bytes >= TREE_CAP
    }

    fn leave_out(&mut self, why: String) {
        self.left_out_count += 1;
        if self.left_out.len() < MAX_NOTES {
            self.left_out.push(why);
        }
    }

    /// The subdirectories of `src` (through links), at most [`MAX_ENTRIES`], recorded as
    /// plain directories under `rel`.
    fn children(&mut self, src: &Path, rel: &str) -> Vec<(String, String)> {
        let mut names: Vec<String> = dir_names(src)
            .into_iter()
            .filter(|n| src.join(n).is_dir())
            .collect();
        if names.len() > MAX_ENTRIES {
            self.leave_out(format!(
                "{rel}: {} entries, the first {MAX_ENTRIES} kept",
                names.len()
            ));
            names.truncate(MAX_ENTRIES);
        }
        names
            .into_iter()
            .map(|n| {
                let child = format!("{rel}/{n}");
                self.dirs.push(child.clone());
                (n, child)
            })
            .collect()
    }

    /// Copy the attributes `names` of `src` that exist to `rel/`.
    fn attrs(&mut self, src: &Path, rel: &str, names: &[&str]) {
        for name in names {
            self.file(&src.join(name), &format!("{rel}/{name}"), false);
        }
    }

    /// One attribute: a regular file, no link, at most [`ATTR_CAP`] bytes of UTF-8 text (the
    /// handler reads every attribute as text, so one that is not would be absent to it too),
    /// or any bytes when `binary` (the EFI variable).
    fn file(&mut self, src: &Path, rel: &str, binary: bool) {
        match fs::symlink_metadata(src) {
            Err(_) => return,
            Ok(m) if !m.is_file() => {
                self.leave_out(format!("{rel}: not a regular file"));
                return;
            }
            Ok(_) => {}
        }
        if self.full() {
            self.leave_out(format!("{rel}: the tree's cap was reached"));
            return;
        }
        match fsutil::read_regular(src, ATTR_CAP) {
            Ok(bytes) if !binary && std::str::from_utf8(&bytes).is_err() => {
                self.leave_out(format!("{rel}: not UTF-8 text"))
            }
            Ok(bytes) => {
                self.bytes += bytes.len() as u64;
                self.files.push((rel.to_string(), bytes));
            }
            Err(e) => self.leave_out(format!("{rel}: {e}")),
        }
    }

    /// An InfiniBand device directory: its attributes and its numbered ports.
    fn ib_device(&mut self, src: &Path, rel: &str) {
        self.attrs(src, rel, &IB_ATTRS);
        let ports = src.join("ports");
        if !ports.is_dir() {
            return;
        }
        let ports_rel = format!("{rel}/ports");
        self.dirs.push(ports_rel.clone());
        for (n, port_rel) in self.children(&ports, &ports_rel) {
            if n.parse::<u32>().is_ok() {
                self.attrs(&ports.join(&n), &port_rel, &PORT_ATTRS);
            }
        }
    }

    /// `parent/name/` when it is a directory, recorded; `None` otherwise.
    fn subdir(
        &mut self,
        parent: &Path,
        rel: &str,
        name: &str,
    ) -> Option<(std::path::PathBuf, String)> {
        let src = parent.join(name);
        if !src.is_dir() {
            return None;
        }
        let sub = format!("{rel}/{name}");
        self.dirs.push(sub.clone());
        Some((src, sub))
    }

    /// Every PCI function with its InfiniBand devices and network interfaces.
    fn pci(&mut self, sysfs: &Path) {
        let Some((dir, rel)) = self.path_dirs(sysfs, host::PCI_DEVICES) else {
            return;
        };
        for (addr, f_rel) in self.children(&dir, &rel) {
            let f = dir.join(&addr);
            self.attrs(&f, &f_rel, &PCI_ATTRS);
            if let Some((ib, ib_rel)) = self.subdir(&f, &f_rel, "infiniband") {
                for (dev, dev_rel) in self.children(&ib, &ib_rel) {
                    self.ib_device(&ib.join(&dev), &dev_rel);
                }
            }
            if let Some((net, net_rel)) = self.subdir(&f, &f_rel, "net") {
                for (name, if_rel) in self.children(&net, &net_rel) {
                    self.attrs(&net.join(&name), &if_rel, &NET_ATTRS);
                }
            }
        }
    }

    /// `rel` below `sysfs` when it is a directory, with each of its levels recorded.
    fn path_dirs(&mut self, sysfs: &Path, rel: &str) -> Option<(std::path::PathBuf, String)> {
        let dir = sysfs.join(rel);
        if !dir.is_dir() {
            return None;
        }
        let mut at = String::new();
        for part in rel.split('/') {
            at = if at.is_empty() {
                part.to_string()
            } else {
                format!("{at}/{part}")
            };
            if !self.dirs.contains(&at) {
                self.dirs.push(at.clone());
            }
        }
        Some((dir, rel.to_string()))
    }

    /// `class/net` and `class/infiniband`.
    fn classes(&mut self, sysfs: &Path) {
        if let Some((dir, rel)) = self.path_dirs(sysfs, "class/net") {
            for (name, if_rel) in self.children(&dir, &rel) {
                self.attrs(&dir.join(&name), &if_rel, &NET_ATTRS);
            }
        }
        if let Some((dir, rel)) = self.path_dirs(sysfs, "class/infiniband") {
            for (dev, dev_rel) in self.children(&dir, &rel) {
                self.ib_device(&dir.join(&dev), &dev_rel);
            }
        }
    }

    fn vmbus_and_efi(&mut self, sysfs: &Path) {
        if let Some((dir, rel)) = self.path_dirs(sysfs, host::VMBUS_DEVICES) {
            for (id, dev_rel) in self.children(&dir, &rel) {
                self.attrs(&dir.join(&id), &dev_rel, &VMBUS_ATTRS);
            }
        }
        let efi = sysfs.join(host::EFI_SECURE_BOOT);
        if let Some((parent, _)) = host::EFI_SECURE_BOOT.rsplit_once('/') {
            if efi.exists() && self.path_dirs(sysfs, parent).is_some() {
                self.file(&efi, host::EFI_SECURE_BOOT, true);
            }
        }
    }
}

/// Add the tree to the bundle under `sysfs/` (directories 0700, files 0600, as every member)
/// with one manifest part for it.
pub(super) fn collect(b: &mut Bundle, root: &Root) {
    let source = root.sysfs_dir().display().to_string();
    let t = record(root);
    if t.dirs.is_empty() {
        b.missing(&format!("{SYSFS}/"), &source, "no hardware facts to record");
        return;
    }
    b.dir(SYSFS);
    for d in &t.dirs {
        b.dir(&format!("{SYSFS}/{d}"));
    }
    let kept = t
        .files
        .iter()
        .take_while(|(rel, bytes)| b.member(&format!("{SYSFS}/{rel}"), bytes))
        .count();
    let mut detail = format!(
        "{kept} attribute files of the hardware facts; replay with `ibdriver plan --sysfs`"
    );
    if kept < t.files.len() {
        detail.push_str(&format!(
            "; the bundle size cap was reached: {} files not added",
            t.files.len() - kept
        ));
    }
    if t.left_out_count > 0 {
        detail.push_str(&format!(
            "; {} left out: {}",
            t.left_out_count,
            t.left_out.join("; ")
        ));
    }
    let state = if t.left_out_count == 0 && kept == t.files.len() {
        State::Collected
    } else {
        State::Truncated
    };
    b.part(&format!("{SYSFS}/"), &source, state, Some(detail), t.bytes);
}

/// Record the hardware facts of `root`'s sysfs directory.
pub fn record(root: &Root) -> Tree {
    let sysfs = root.sysfs_dir();
    let mut t = Tree::default();
    t.pci(sysfs);
    t.classes(sysfs);
    t.vmbus_and_efi(sysfs);
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    /// Write a recorded tree out as plain directories and files, the way tar would unpack it.
    fn unpack(t: &Tree, to: &Path) {
        for d in &t.dirs {
            fs::create_dir_all(to.join(d)).unwrap();
        }
        for (rel, bytes) in &t.files {
            fs::write(to.join(rel), bytes).unwrap();
        }
    }

    fn fixture(host: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hosts")
            .join(host)
    }

    #[test]
    fn every_fixture_replays_to_the_same_hardware() {
        for host in [
            "hbv3",
            "hbv3-portdown",
            "hbv3-noverbs",
            "hbv4",
            "ndv4",
            "nc24rsv3",
            "dseries",
            "nonazure",
        ] {
            let root = Root::new(fixture(host));
            let t = record(&root);
            assert!(t.left_out.is_empty(), "{host}: {:?}", t.left_out);
            let d = tempfile::tempdir().unwrap();
            unpack(&t, d.path());
            let replay = root.clone().with_sysfs(d.path());
            assert_eq!(
                host::pci::scan(&replay.sysfs(host::PCI_DEVICES)),
                host::pci::scan(&root.sysfs(host::PCI_DEVICES)),
                "{host}"
            );
            assert_eq!(host::read_vmbus(&replay), host::read_vmbus(&root), "{host}");
        }
    }

    #[test]
    fn links_become_plain_directories_and_only_listed_regular_attributes_are_copied() {
        let d = tempfile::tempdir().unwrap();
        let sys = d.path().join("sys");
        let real = sys.join("devices/pci0/0001:00:00.0");
        fs::create_dir_all(real.join("net/ib0")).unwrap();
        fs::write(real.join("vendor"), "0x15b3\n").unwrap();
        fs::write(real.join("config"), [0u8; 64]).unwrap();
        fs::write(real.join("class"), "x".repeat(ATTR_CAP as usize + 1)).unwrap();
        fs::write(d.path().join("secret"), "hunter2\n").unwrap();
        symlink(d.path().join("secret"), real.join("device")).unwrap();
        fs::write(real.join("net/ib0/address"), "00:01\n").unwrap();
        fs::create_dir_all(sys.join("bus/pci/devices")).unwrap();
        symlink(&real, sys.join("bus/pci/devices/0001:00:00.0")).unwrap();
        fs::create_dir_all(sys.join("class/net")).unwrap();
        symlink(real.join("net/ib0"), sys.join("class/net/ib0")).unwrap();
        let t = record(&Root::new(d.path()));
        let names: Vec<&str> = t.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "bus/pci/devices/0001:00:00.0/vendor",
                "bus/pci/devices/0001:00:00.0/net/ib0/address",
                "class/net/ib0/address",
            ]
        );
        assert!(t
            .dirs
            .contains(&"bus/pci/devices/0001:00:00.0/net/ib0".to_string()));
        // The link named `device` is a PCI attribute name: refused, not followed.
        let left = t.left_out.join("\n");
        assert!(
            left.contains("0001:00:00.0/device: not a regular file"),
            "{left}"
        );
        assert!(left.contains("0001:00:00.0/class"), "{left}");
        assert!(!t.files.iter().any(|(_, b)| b.starts_with(b"hunter2")));
    }

    #[test]
    fn what_is_left_out_is_counted_and_the_first_ones_named() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::new(d.path());
        for i in 0..30 {
            // A directory where the attribute should be: not a regular file.
            let dev = root.sysfs(&format!("{}/dev{i:02}", host::VMBUS_DEVICES));
            fs::create_dir_all(dev.join("class_id")).unwrap();
            fs::write(dev.join("device_id"), "{x}\n").unwrap();
        }
        let t = record(&root);
        assert_eq!(t.files.len(), 30);
        assert_eq!(t.left_out_count, 30);
        assert_eq!(t.left_out.len(), MAX_NOTES);
        assert!(t.left_out[0].ends_with("dev00/class_id: not a regular file"));
    }

    #[test]
    fn the_efi_variable_is_copied_byte_for_byte() {
        let d = tempfile::tempdir().unwrap();
        let var = Root::new(d.path()).sysfs(host::EFI_SECURE_BOOT);
        fs::create_dir_all(var.parent().unwrap()).unwrap();
        fs::write(&var, [6u8, 0, 0, 0, 1]).unwrap();
        let t = record(&Root::new(d.path()));
        assert_eq!(
            t.files,
            [(host::EFI_SECURE_BOOT.to_string(), vec![6u8, 0, 0, 0, 1])]
        );
        assert!(t.dirs.contains(&"firmware/efi/efivars".to_string()));
    }
}
