//! Mellanox PCI functions from sysfs (no lspci), with their InfiniBand devices, ports and
//! network interfaces. Reads `/sys/bus/pci/devices/<addr>/{vendor,device,class}`,
//! `.../infiniband/<dev>/ports/<n>/*` and `.../net/<if>/*`.

use crate::sys::fsutil::{dir_names, read_trimmed};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const MELLANOX_VENDOR: u16 = 0x15b3;

/// By PCI device id (docs/DOMAIN.md, "Detection").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NicGeneration {
    ConnectX3,
    ConnectX3Pro,
    ConnectX4,
    ConnectX4Lx,
    ConnectX5,
    ConnectX5Ex,
    ConnectX6,
    ConnectX6Dx,
    ConnectX6Lx,
    ConnectX7,
    Mlx5Gen,
}

impl NicGeneration {
    /// (generation, is a virtual function) for a Mellanox device id.
    pub fn from_device_id(id: u16) -> Option<(NicGeneration, bool)> {
        use NicGeneration::*;
        Some(match id {
            0x1003 => (ConnectX3, false),
            0x1007 => (ConnectX3Pro, false),
            // The one mlx4 VF id serves ConnectX-3 and -3 Pro; on Azure it is the Pro (NCv3).
            0x1004 => (ConnectX3Pro, true),
            0x1013 => (ConnectX4, false),
            0x1014 => (ConnectX4, true),
            0x1015 => (ConnectX4Lx, false),
            0x1016 => (ConnectX4Lx, true),
            0x1017 => (ConnectX5, false),
            0x1018 => (ConnectX5, true),
            0x1019 => (ConnectX5Ex, false),
            0x101a => (ConnectX5Ex, true),
            0x101b => (ConnectX6, false),
            0x101c => (ConnectX6, true),
            0x101d => (ConnectX6Dx, false),
            0x101f => (ConnectX6Lx, false),
            0x1021 => (ConnectX7, false),
            0x101e => (Mlx5Gen, true),
            _ => return None,
        })
    }

    /// mlx4 (ConnectX-3 family) or mlx5 (ConnectX-4 and newer).
    pub fn is_mlx4(self) -> bool {
        matches!(self, NicGeneration::ConnectX3 | NicGeneration::ConnectX3Pro)
    }

    /// The kernel modules a function of this generation needs: the core (PCI and Ethernet)
    /// driver and its InfiniBand driver. The one place this is written; configure, activate,
    /// repair and verify all ask here.
    pub fn driver_modules(self) -> DriverModules {
        if self.is_mlx4() {
            DriverModules {
                core: "mlx4_core",
                ib: "mlx4_ib",
            }
        } else {
            DriverModules {
                core: "mlx5_core",
                ib: "mlx5_ib",
            }
        }
    }
}

/// The core and InfiniBand driver modules of one NIC generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverModules {
    pub core: &'static str,
    pub ib: &'static str,
}

/// The RDMA modules above the HCA driver that every InfiniBand VM loads: verbs, umad and the
/// connection manager's user interface MPI needs.
pub const RDMA_MODULES: [&str; 3] = ["ib_uverbs", "ib_umad", "rdma_ucm"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LinkLayer {
    InfiniBand,
    Ethernet,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IbPort {
    pub number: u32,
    /// The text after `N: ` in `state`, e.g. `ACTIVE`.
    pub state: String,
    pub phys_state: String,
    pub link_layer: LinkLayer,
    pub rate: String,
    pub lid: Option<String>,
}

impl IbPort {
    pub fn is_active(&self) -> bool {
        self.state == "ACTIVE" && self.phys_state == "LinkUp"
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IbDevice {
    pub name: String,
    pub node_guid: Option<String>,
    pub fw_ver: Option<String>,
    pub ports: Vec<IbPort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetDev {
    pub name: String,
    pub address: Option<String>,
    /// ARPHRD type: 32 InfiniBand (IPoIB), 1 Ethernet.
    pub kind: Option<u32>,
    pub operstate: Option<String>,
}

impl NetDev {
    pub fn is_ipoib(&self) -> bool {
        self.kind == Some(32)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PciFunction {
    pub address: String,
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
    pub generation: Option<NicGeneration>,
    pub virtual_function: bool,
    pub ib_devices: Vec<IbDevice>,
    pub netdevs: Vec<NetDev>,
}

impl PciFunction {
    /// [`NicGeneration::driver_modules`]; a function of an unknown generation is mlx5 (every
    /// Mellanox device id we do not list is newer than ConnectX-3).
    pub fn driver_modules(&self) -> DriverModules {
        self.generation
            .unwrap_or(NicGeneration::Mlx5Gen)
            .driver_modules()
    }

    fn ib_ports(&self) -> impl Iterator<Item = &IbPort> {
        self.ib_devices.iter().flat_map(|d| d.ports.iter())
    }

    /// An InfiniBand function (as opposed to accelerated networking): its ports say so when the
    /// kernel driver is bound; before that the PCI class 0x0207 does. The ConnectX-3 VF's
    /// class is a generic 0x0280, and on Azure that VF exists only on InfiniBand sizes.
    pub fn is_infiniband(&self) -> bool {
        if self.vendor != MELLANOX_VENDOR {
            return false;
        }
        if self
            .ib_ports()
            .any(|p| p.link_layer == LinkLayer::InfiniBand)
        {
            return true;
        }
        if self.ib_ports().next().is_some() {
            return false;
        }
        self.class >> 8 == 0x0207 || (self.device == 0x1004 && self.class >> 8 == 0x0280)
    }
}

fn hex_u32(s: Option<String>) -> Option<u32> {
    let s = s?;
    u32::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

/// `"4: ACTIVE"` -> `"ACTIVE"`.
fn after_colon(s: String) -> String {
    match s.split_once(':') {
        Some((_, rest)) => rest.trim().to_string(),
        None => s,
    }
}

pub fn read_port(dir: &Path, number: u32) -> IbPort {
    let link_layer = match read_trimmed(&dir.join("link_layer")).as_deref() {
        Some("InfiniBand") => LinkLayer::InfiniBand,
        Some("Ethernet") => LinkLayer::Ethernet,
        _ => LinkLayer::Unknown,
    };
    IbPort {
        number,
        state: read_trimmed(&dir.join("state"))
            .map(after_colon)
            .unwrap_or_default(),
        phys_state: read_trimmed(&dir.join("phys_state"))
            .map(after_colon)
            .unwrap_or_default(),
        link_layer,
        rate: read_trimmed(&dir.join("rate")).unwrap_or_default(),
        lid: read_trimmed(&dir.join("lid")),
    }
}

pub fn read_ib_device(dir: &Path, name: &str) -> IbDevice {
    let mut ports: Vec<IbPort> = dir_names(&dir.join("ports"))
        .iter()
        .filter_map(|p| p.parse::<u32>().ok())
        .map(|n| read_port(&dir.join("ports").join(n.to_string()), n))
        .collect();
    ports.sort_by_key(|p| p.number);
    IbDevice {
        name: name.to_string(),
        node_guid: read_trimmed(&dir.join("node_guid")),
        fw_ver: read_trimmed(&dir.join("fw_ver")),
        ports,
    }
}

fn read_netdev(dir: &Path, name: &str) -> NetDev {
    NetDev {
        name: name.to_string(),
        address: read_trimmed(&dir.join("address")),
        kind: read_trimmed(&dir.join("type")).and_then(|s| s.parse().ok()),
        operstate: read_trimmed(&dir.join("operstate")),
    }
}

/// Every Mellanox function under `<sys>/bus/pci/devices`.
pub fn scan(pci_devices: &Path) -> Vec<PciFunction> {
    let mut out = Vec::new();
    for addr in dir_names(pci_devices) {
        let dir = pci_devices.join(&addr);
        let vendor = hex_u32(read_trimmed(&dir.join("vendor"))).unwrap_or(0) as u16;
        if vendor != MELLANOX_VENDOR {
            continue;
        }
        let device = hex_u32(read_trimmed(&dir.join("device"))).unwrap_or(0) as u16;
        let class = hex_u32(read_trimmed(&dir.join("class"))).unwrap_or(0);
        let (generation, virtual_function) = match NicGeneration::from_device_id(device) {
            Some((g, vf)) => (Some(g), vf),
            None => (None, false),
        };
        let ib_dir = dir.join("infiniband");
        let ib_devices = dir_names(&ib_dir)
            .iter()
            .map(|n| read_ib_device(&ib_dir.join(n), n))
            .collect();
        let net_dir = dir.join("net");
        let netdevs = dir_names(&net_dir)
            .iter()
            .map(|n| read_netdev(&net_dir.join(n), n))
            .collect();
        out.push(PciFunction {
            address: addr,
            vendor,
            device,
            class,
            generation,
            virtual_function,
            ib_devices,
            netdevs,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_generation_names_its_two_driver_modules() {
        for id in [0x1003u16, 0x1004, 0x1007] {
            let (g, _) = NicGeneration::from_device_id(id).unwrap();
            assert_eq!(
                g.driver_modules(),
                DriverModules {
                    core: "mlx4_core",
                    ib: "mlx4_ib"
                }
            );
        }
        for id in [0x1013u16, 0x1016, 0x1018, 0x101c, 0x101e, 0x1021] {
            let (g, _) = NicGeneration::from_device_id(id).unwrap();
            assert_eq!(g.driver_modules().core, "mlx5_core");
            assert_eq!(g.driver_modules().ib, "mlx5_ib");
        }
    }

    #[test]
    fn device_table() {
        assert_eq!(
            NicGeneration::from_device_id(0x101c),
            Some((NicGeneration::ConnectX6, true))
        );
        assert_eq!(
            NicGeneration::from_device_id(0x101e),
            Some((NicGeneration::Mlx5Gen, true))
        );
        assert_eq!(
            NicGeneration::from_device_id(0x1004),
            Some((NicGeneration::ConnectX3Pro, true))
        );
        assert_eq!(
            NicGeneration::from_device_id(0x1016),
            Some((NicGeneration::ConnectX4Lx, true))
        );
        assert_eq!(NicGeneration::from_device_id(0xabcd), None);
        assert!(NicGeneration::ConnectX3Pro.is_mlx4());
        assert!(!NicGeneration::Mlx5Gen.is_mlx4());
    }

    #[test]
    fn state_text() {
        assert_eq!(after_colon("4: ACTIVE".into()), "ACTIVE");
        assert_eq!(after_colon("5: LinkUp".into()), "LinkUp");
        assert_eq!(after_colon("odd".into()), "odd");
    }
}
