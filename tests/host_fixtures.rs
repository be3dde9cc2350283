//! Parsers and the planner against fixture files: os-release samples of each distro and the
//! sysfs trees of real VM sizes (tests/fixtures/hosts/README.md describes them).

use ibdriver::agent::settings::PublicSettings;
use ibdriver::host::os_release;
use ibdriver::host::pci::{LinkLayer, NicGeneration};
use ibdriver::host::{self, Root};
use ibdriver::plan::{self, Action};
use ibdriver::stages::verify;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn os(name: &str) -> Option<os_release::OsRelease> {
    os_release::parse(&std::fs::read_to_string(fixtures().join("os-release").join(name)).unwrap())
}

#[test]
fn os_release_samples() {
    let cases = [
        ("ubuntu-20.04", "ubuntu", "20.04", true),
        ("ubuntu-22.04", "ubuntu", "22.04", true),
        ("ubuntu-24.04", "ubuntu", "24.04", true),
        ("rhel-8.10", "rhel", "8.10", true),
        ("rhel-9.4", "rhel", "9.4", true),
        ("almalinux-8.10", "almalinux", "8.10", true),
        ("almalinux-9.5", "almalinux", "9.5", true),
        ("rocky-8.10", "rocky", "8.10", true),
        ("rocky-9.5", "rocky", "9.5", true),
        ("centos-7.9", "centos", "7", true),
        ("sles-15-sp5", "sles", "15.5", true),
        ("sles-15-sp6", "sles", "15.6", true),
        ("debian-12", "debian", "12", true),
        ("azurelinux-3.0", "azurelinux", "3.0", true),
        ("mariner-2.0", "mariner", "2.0", true),
        ("opensuse-leap-15.5", "opensuse-leap", "15.5", false),
        ("fedora-40", "fedora", "40", false),
        ("alpine-3.19", "alpine", "3.19.1", false),
    ];
    for (file, id, version, supported) in cases {
        let o = os(file).unwrap_or_else(|| panic!("{file} did not parse"));
        assert_eq!(o.id, id, "{file}");
        assert_eq!(o.version_id, version, "{file}");
        assert!(!o.pretty_name.is_empty());
        assert_eq!(plan::os_supported(&o).is_ok(), supported, "{file}");
    }
    assert!(os("rocky-9.5")
        .unwrap()
        .id_like
        .contains(&"rhel".to_string()));
    assert_eq!(os("malformed"), None);
}

fn detect(host: &str) -> host::HostFacts {
    host::detect(&Root::new(fixtures().join("hosts").join(host)), None, true)
}

fn evaluate(f: &host::HostFacts) -> verify::HealthReport {
    verify::evaluate(
        &f.kernel,
        &f.mellanox,
        &f.modules,
        f.stack.as_ref(),
        &Default::default(),
    )
}

#[test]
fn hbv3_one_cx6_ib_vf_and_one_an_vf() {
    let f = detect("hbv3");
    assert!(f.hyperv);
    assert_eq!(f.kernel, "5.15.0-1073-azure");
    assert_eq!(f.mellanox.len(), 2);
    let ib: Vec<_> = f.infiniband_functions().collect();
    assert_eq!(ib.len(), 1);
    assert_eq!(ib[0].address, "0101:00:00.0");
    assert_eq!(ib[0].generation, Some(NicGeneration::ConnectX6));
    assert!(ib[0].virtual_function);
    let port = &ib[0].ib_devices[0].ports[0];
    assert_eq!(
        (port.state.as_str(), port.phys_state.as_str()),
        ("ACTIVE", "LinkUp")
    );
    assert_eq!(port.rate, "200 Gb/sec (4X HDR)");
    assert_eq!(port.link_layer, LinkLayer::InfiniBand);
    assert!(ib[0].netdevs[0].is_ipoib());
    let an = f.mellanox.iter().find(|m| !m.is_infiniband()).unwrap();
    assert_eq!(an.ib_devices[0].ports[0].link_layer, LinkLayer::Ethernet);
    assert_eq!(f.vmbus.pci_passthrough, 2);
    assert!(!f.vmbus.network_direct);
    let st = f.stack.unwrap();
    assert_eq!(st.version.as_deref(), Some("39.0-1"));
    assert!(st.verbs_library);
}

#[test]
fn ndv4_eight_ib_vfs_plus_an() {
    let f = detect("ndv4");
    assert_eq!(f.infiniband_functions().count(), 8);
    assert_eq!(f.mellanox.len(), 9);
    assert_eq!(f.os.as_ref().unwrap().id, "almalinux");
    let r = evaluate(&f);
    assert!(r.healthy, "{r:?}");
    assert_eq!(r.hcas.len(), 8);
}

#[test]
fn hbv4_mlx5gen_ndr() {
    let f = detect("hbv4");
    let ib: Vec<_> = f.infiniband_functions().collect();
    assert_eq!(ib.len(), 1);
    assert_eq!(ib[0].generation, Some(NicGeneration::Mlx5Gen));
    assert_eq!(ib[0].ib_devices[0].ports[0].rate, "400 Gb/sec (4X NDR)");
}

#[test]
fn nc24rsv3_connectx3_pro() {
    let f = detect("nc24rsv3");
    let ib: Vec<_> = f.infiniband_functions().collect();
    assert_eq!(ib.len(), 1);
    assert_eq!(ib[0].generation, Some(NicGeneration::ConnectX3Pro));
    assert_eq!(ib[0].class >> 8, 0x0280);
    let r = evaluate(&f);
    assert!(r.modules_required.contains(&"mlx4_ib".to_string()));
    assert!(r.healthy, "{r:?}");
}

#[test]
fn dseries_has_only_ethernet() {
    let f = detect("dseries");
    assert_eq!(f.mellanox.len(), 1);
    assert_eq!(f.infiniband_functions().count(), 0);
}

#[test]
fn nonazure_has_no_vmbus_and_no_mellanox() {
    let f = detect("nonazure");
    assert!(!f.hyperv);
    assert!(f.mellanox.is_empty());
}

#[test]
fn noverbs_has_pci_but_no_registered_device() {
    let f = detect("hbv3-noverbs");
    let ib: Vec<_> = f.infiniband_functions().collect();
    assert_eq!(
        ib.len(),
        1,
        "PCI class 0x0207 identifies it without a driver"
    );
    assert!(ib[0].ib_devices.is_empty());
    assert!(f.stack.is_none());
}

#[test]
fn plan_per_fixture() {
    let want = [
        ("hbv3", Some(0)),
        ("ndv4", Some(0)),
        ("hbv4", Some(0)),
        ("nc24rsv3", Some(0)),
        ("hbv3-portdown", Some(0)),
        ("dseries", Some(11)),
        ("nonazure", Some(10)),
        ("hbv3-noverbs", Some(1)),
    ];
    for (host, code) in want {
        let p = plan::decide(&detect(host), &PublicSettings::default(), None);
        let got = match &p.action {
            Action::VerifyOnly { .. } => 0,
            Action::Install { .. } => 1,
            Action::Refuse { failure } => failure.code.number(),
        };
        assert_eq!(Some(got), code, "{host}: {}", p.summary);
    }
}

#[test]
fn port_down_is_reported_with_its_state() {
    let f = detect("hbv3-portdown");
    let r = evaluate(&f);
    assert!(!r.healthy);
    assert_eq!(r.code, ibdriver::error::Code::PortsNotActive);
    assert!(
        r.summary.contains("mlx5_0/1 is DOWN (Polling)"),
        "{}",
        r.summary
    );
}

#[test]
fn auto_choice_per_distro_and_nic() {
    use ibdriver::engine::checkpoint::Stage;
    use ibdriver::host::pci::NicGeneration::*;
    use ibdriver::plan::catalog::Choice;
    // (os-release fixture, kernel, NIC, expected: "stack version" or "inbox" or refusal code)
    let cases = [
        (
            "ubuntu-22.04",
            "5.15.0-1073-azure",
            ConnectX6,
            "doca 3.2.1 deb",
        ),
        (
            "ubuntu-24.04",
            "6.8.0-1021-azure",
            Mlx5Gen,
            "doca 3.2.3 deb",
        ),
        (
            "ubuntu-22.04",
            "5.15.0-1073-azure",
            ConnectX5,
            "doca 3.2.1 deb",
        ),
        (
            "almalinux-8.10",
            "4.18.0-553.el8_10.x86_64",
            ConnectX6,
            "doca 3.2.1 rpm",
        ),
        (
            "rocky-8.10",
            "4.18.0-553.el8_10.x86_64",
            Mlx5Gen,
            "doca 3.2.1 rpm",
        ),
        (
            "rhel-8.10",
            "4.18.0-553.el8_10.x86_64",
            ConnectX6,
            "doca 3.2.1 rpm",
        ),
        (
            "almalinux-9.5",
            "5.14.0-503.el9_5.x86_64",
            ConnectX6,
            "doca 3.2.2 rpm",
        ),
        (
            "rocky-9.5",
            "5.14.0-503.el9_5.x86_64",
            Mlx5Gen,
            "doca 3.2.2 rpm",
        ),
        ("azurelinux-3.0", "6.6.57.1-7.azl3", ConnectX6, "inbox"),
        (
            "sles-15-sp5",
            "5.14.21-150500.55.65-azure",
            ConnectX6,
            "inbox",
        ),
        ("sles-15-sp6", "6.4.0-150600.8.11-azure", Mlx5Gen, "inbox"),
        ("debian-12", "6.1.0-28-cloud-amd64", ConnectX6, "inbox"),
        (
            "ubuntu-20.04",
            "5.4.0-1109-azure",
            ConnectX3Pro,
            "mlnx-ofed 4.9-6.0.6.0 tgz",
        ),
        (
            "ubuntu-22.04",
            "5.15.0-1073-azure",
            ConnectX3Pro,
            "refuse 211",
        ),
        (
            "rocky-9.5",
            "5.14.0-503.el9_5.x86_64",
            ConnectX3Pro,
            "refuse 211",
        ),
    ];
    for (osf, kernel, nic, want) in cases {
        let mut f = detect("hbv3-noverbs");
        f.os = os(osf);
        f.kernel = kernel.to_string();
        for m in f.mellanox.iter_mut().filter(|m| m.is_infiniband()) {
            m.generation = Some(nic);
        }
        let p = plan::decide(&f, &PublicSettings::default(), None);
        let got = match (&p.action, p.install()) {
            (Action::Refuse { failure }, _) => format!("refuse {}", failure.code.number()),
            (Action::Install { .. }, Some(Choice::Inbox { .. })) => {
                assert_eq!(
                    p.stages,
                    vec![
                        Stage::Preflight,
                        Stage::WaitForLocks,
                        Stage::Install,
                        Stage::Activate,
                        Stage::Repair,
                        Stage::Configure,
                        Stage::Verify
                    ]
                );
                "inbox".to_string()
            }
            (
                Action::Install { .. },
                Some(Choice::Artifact {
                    stack,
                    version,
                    kind,
                    ..
                }),
            ) => {
                assert_eq!(p.stages.len(), 10, "{osf}");
                format!("{} {version} {kind}", stack.as_str())
            }
            other => panic!("{osf}: unexpected {other:?}"),
        };
        assert_eq!(got, want, "{osf} {kernel} {nic:?}: {}", p.summary);
    }
}
