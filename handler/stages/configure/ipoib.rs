//! IPoIB `native` mode (docs/DOMAIN.md, "IPoIB"): the host's `IPoIB_Data` pairs matched to
//! interfaces by hardware address (never by name), and the addresses put on them with `ip`.

use super::state::{run_cmd, Assignment, Ctx, State, IPOIB_PREFIX};
use crate::error::{Code, Failure};
use crate::host::ip::addresses_of;
use crate::host::kvp::IpoibPair;
use crate::host::Root;
use crate::sys::clock::{poll_while_wanted, Look, SystemClock};
use crate::sys::fsutil;
use crate::sys::proc::Unsuccessful;
use std::collections::BTreeMap;
use std::time::Duration;

/// The 6-byte key `IPoIB_Data` uses for an interface's hardware address: a 20-byte IPoIB
/// address gives its port GUID (last 8 bytes) without the two middle bytes; a 6-byte Ethernet
/// address is its own key. `None` for anything else.
pub fn ipoib_key(hw: &str) -> Option<String> {
    let bytes: Vec<&str> = hw.trim().split(':').collect();
    let ok = bytes
        .iter()
        .all(|b| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit()));
    if !ok {
        return None;
    }
    let key: Vec<&str> = match bytes.len() {
        20 => [&bytes[12..15], &bytes[17..20]].concat(),
        6 => bytes,
        _ => return None,
    };
    Some(key.concat().to_ascii_lowercase())
}

/// Pair each `IPoIB_Data` entry with the interface whose hardware address gives its key.
/// Returns the assignments and the pairs no interface matched (yet).
pub fn match_pairs(
    pairs: &[IpoibPair],
    netdevs: &[(String, String)],
) -> (Vec<Assignment>, Vec<IpoibPair>) {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for p in pairs {
        match netdevs
            .iter()
            .find(|(_, hw)| ipoib_key(hw).as_deref() == Some(p.mac.as_str()))
        {
            Some((name, _)) => found.push(Assignment {
                netdev: name.clone(),
                mac: p.mac.clone(),
                address: format!("{}/{IPOIB_PREFIX}", p.ipv4),
            }),
            None => missing.push(p.clone()),
        }
    }
    (found, missing)
}

/// The interface whose hardware address gives IPoIB key `mac`.
pub fn netdev_of<'a>(netdevs: &'a [(String, String)], mac: &str) -> Option<&'a str> {
    netdevs
        .iter()
        .find(|(_, hw)| ipoib_key(hw).as_deref() == Some(mac))
        .map(|(n, _)| n.as_str())
}

/// Every network interface with its hardware address: `class/net` and the netdevs of the
/// Mellanox PCI functions, both from the sysfs directory (names never matter, only addresses).
pub fn netdevs(root: &Root) -> Vec<(String, String)> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let class = root.sysfs("class/net");
    for name in fsutil::dir_names(&class) {
        if let Some(a) = fsutil::read_trimmed(&class.join(&name).join("address")) {
            out.insert(name, a);
        }
    }
    for f in crate::host::pci::scan(&root.sysfs(crate::host::PCI_DEVICES)) {
        for n in f.netdevs {
            if let Some(a) = n.address {
                out.entry(n.name).or_insert(a);
            }
        }
    }
    out.into_iter().collect()
}

pub(super) fn has_ip(addresses: &[String], cidr: &str) -> bool {
    let ip = cidr.split('/').next().unwrap_or(cidr);
    addresses.iter().any(|a| a.split('/').next() == Some(ip))
}

/// `dev` up with `cidr` on it. `Ok(true)`: added now; `Ok(false)`: it was there already, or
/// someone (the agent) added it in between.
pub(super) fn ensure_address(dev: &str, cidr: &str) -> Result<bool, Unsuccessful> {
    run_cmd("ip", &["link", "set", "dev", dev, "up"], 30)?;
    if has_ip(&addresses_of(dev), cidr) {
        return Ok(false);
    }
    match run_cmd("ip", &["addr", "add", cidr, "dev", dev], 30) {
        Ok(_) => Ok(true),
        Err(_) if has_ip(&addresses_of(dev), cidr) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `native`: each `IPoIB_Data` address onto the interface whose hardware address matches.
pub(super) fn ipoib_native(
    ctx: &Ctx,
    pairs: &[IpoibPair],
    state: &mut State,
) -> Result<(), Failure> {
    let wait = ctx.netdev_wait;
    let tick = Duration::from_millis(500);
    let (found, missing) = poll_while_wanted(&SystemClock, wait, tick, ctx.keep_going, || {
        let (found, missing) = match_pairs(pairs, &netdevs(ctx.root));
        if missing.is_empty() {
            return Look::Done((found, missing));
        }
        (ctx.progress)(&format!(
            "waiting for the IPoIB interface(s) of {}",
            missing
                .iter()
                .map(|p| p.mac.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Look::NotYet((found, missing))
    });
    let mut errors = Vec::new();
    for a in &found {
        match ensure_address(&a.netdev, &a.address) {
            Ok(true) => (ctx.progress)(&format!("IPoIB {} on {}", a.address, a.netdev)),
            Ok(false) => {
                tracing::info!(netdev = %a.netdev, address = %a.address, "IPoIB address already set")
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    state.assignments = found;
    if !missing.is_empty() {
        errors.push(format!(
            "no interface has the hardware address of IPoIB_Data entr{} {}",
            if missing.len() == 1 { "y" } else { "ies" },
            missing
                .iter()
                .map(|p| format!("{} ({})", p.mac, p.ipv4))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Failure::new(
            Code::IpoibNotConfigured,
            format!(
                "IPoIB not configured: {}; check that ib_ipoib is loaded and the ports are up",
                errors.join("; ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_hardware_addresses() {
        assert_eq!(
            ipoib_key("00:00:01:48:fe:80:00:00:00:00:00:00:00:15:5d:ff:fd:33:ff:2c").as_deref(),
            Some("00155d33ff2c")
        );
        assert_eq!(
            ipoib_key("00:15:5D:33:FF:2C").as_deref(),
            Some("00155d33ff2c")
        );
        assert_eq!(ipoib_key("00:15:5d"), None);
        assert_eq!(ipoib_key("zz:15:5d:33:ff:2c"), None);
        assert_eq!(ipoib_key(""), None);
    }

    #[test]
    fn pairs_match_by_address_not_name() {
        let pairs = vec![
            IpoibPair {
                mac: "00155d33ff2c".into(),
                ipv4: "172.16.1.4".into(),
            },
            IpoibPair {
                mac: "00155d33ff2d".into(),
                ipv4: "172.16.1.5".into(),
            },
            IpoibPair {
                mac: "0a0b0c0d0e0f".into(),
                ipv4: "172.16.1.6".into(),
            },
        ];
        let devs = vec![
            ("ib0".to_string(), "00:15:5d:33:ff:2c".to_string()),
            (
                "weird7".to_string(),
                "00:00:01:49:fe:80:00:00:00:00:00:00:00:15:5d:ff:fd:33:ff:2d".to_string(),
            ),
            ("ib1".to_string(), "00:15:5d:00:00:01".to_string()),
        ];
        let (found, missing) = match_pairs(&pairs, &devs);
        assert_eq!(
            found,
            vec![
                Assignment {
                    netdev: "ib0".into(),
                    mac: "00155d33ff2c".into(),
                    address: "172.16.1.4/16".into()
                },
                Assignment {
                    netdev: "weird7".into(),
                    mac: "00155d33ff2d".into(),
                    address: "172.16.1.5/16".into()
                }
            ]
        );
        assert_eq!(missing, vec![pairs[2].clone()]);
    }
}
