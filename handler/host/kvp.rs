//! The Hyper-V KVP pool file `/var/lib/hyperv/.kvp_pool_0`: fixed records of a 512-byte key and
//! a 2048-byte value, NUL padded. The host writes `IPoIB_Data` (SR-IOV) or `NdDriverVersion`
//! (Network Direct) there (docs/DOMAIN.md, "Detection" and "IPoIB").

use serde::Serialize;

pub const KEY_LEN: usize = 512;
pub const VALUE_LEN: usize = 2048;
pub const RECORD_LEN: usize = KEY_LEN + VALUE_LEN;

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// All records, in file order; a trailing partial record is ignored.
pub fn records(pool: &[u8]) -> Vec<(String, String)> {
    pool.chunks_exact(RECORD_LEN)
        .map(|r| (c_string(&r[..KEY_LEN]), c_string(&r[KEY_LEN..])))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

/// Encode one record (tests and tools build pools with it).
pub fn encode_record(key: &str, value: &str) -> Vec<u8> {
    let mut rec = vec![0u8; RECORD_LEN];
    let k = key.as_bytes();
    let v = value.as_bytes();
    rec[..k.len().min(KEY_LEN - 1)].copy_from_slice(&k[..k.len().min(KEY_LEN - 1)]);
    rec[KEY_LEN..KEY_LEN + v.len().min(VALUE_LEN - 1)]
        .copy_from_slice(&v[..v.len().min(VALUE_LEN - 1)]);
    rec
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IpoibPair {
    /// 12 lower-case hex digits, no separators.
    pub mac: String,
    pub ipv4: String,
}

/// `NUMPAIRS:<n>|<MAC12hex>:<IPv4>|...`. Malformed pairs are skipped; the count is advisory.
pub fn parse_ipoib_data(value: &str) -> Vec<IpoibPair> {
    let mut out = Vec::new();
    for part in value.trim().split('|') {
        let part = part.trim();
        if part.is_empty() || part.to_ascii_uppercase().starts_with("NUMPAIRS") {
            continue;
        }
        let Some((mac, ip)) = part.split_once(':') else {
            continue;
        };
        let mac = mac.trim().to_ascii_lowercase();
        let ip = ip.trim();
        let mac_ok = mac.len() == 12 && mac.chars().all(|c| c.is_ascii_hexdigit());
        if mac_ok && ip.parse::<std::net::Ipv4Addr>().is_ok() {
            out.push(IpoibPair {
                mac,
                ipv4: ip.to_string(),
            });
        }
    }
    out
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KvpFacts {
    pub ipoib: Option<Vec<IpoibPair>>,
    pub nd_driver_version: Option<String>,
}

/// Later records win, as in the daemon's own pool semantics.
pub fn facts(pool: &[u8]) -> KvpFacts {
    let mut f = KvpFacts::default();
    for (k, v) in records(pool) {
        match k.as_str() {
            "IPoIB_Data" => f.ipoib = Some(parse_ipoib_data(&v)),
            "NdDriverVersion" => f.nd_driver_version = Some(v.trim().to_string()),
            _ => {}
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_ipoib() {
        let mut pool = encode_record("HostName", "node-1");
        pool.extend(encode_record(
            "IPoIB_Data",
            "NUMPAIRS:2|00155DFF33AA:172.16.1.4|00155dff33bb:172.16.1.5|",
        ));
        pool.extend(vec![7u8; 100]);
        let f = facts(&pool);
        let pairs = f.ipoib.unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(
            pairs[0],
            IpoibPair {
                mac: "00155dff33aa".into(),
                ipv4: "172.16.1.4".into()
            }
        );
        assert_eq!(f.nd_driver_version, None);
    }

    #[test]
    fn bad_pairs_are_skipped() {
        let pairs = parse_ipoib_data(
            "NUMPAIRS:3|zz:1.2.3.4|00155DFF33AA:999.1.1.1|00155DFF33AA:172.16.0.9",
        );
        assert_eq!(
            pairs,
            vec![IpoibPair {
                mac: "00155dff33aa".into(),
                ipv4: "172.16.0.9".into()
            }]
        );
    }

    #[test]
    fn network_direct_marker() {
        let pool = encode_record("NdDriverVersion", "142.0");
        assert_eq!(facts(&pool).nd_driver_version.as_deref(), Some("142.0"));
        assert_eq!(facts(&[]), KvpFacts::default());
    }
}
