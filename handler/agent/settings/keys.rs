//! The keys settings may have, and the rules for keys a user wrote: none twice, and shown in
//! messages only sanitized.

use std::fmt;

/// Every public key, with what its value must be (for messages that never quote the value:
/// a SAS URL pasted into the wrong setting must not reach a status file or a log).
pub const PUBLIC_KEYS: [(&str, &str); 9] = [
    ("stack", "one of auto, doca, mlnx-ofed, inbox"),
    ("version", "a string"),
    ("package", "an object {url, sha256}"),
    ("mirror", "an https URL"),
    ("ipoib", "one of auto, native, waagent, off"),
    ("reboot", "one of ifRequired, never"),
    ("lockTimeoutSeconds", "an integer between 1 and 86400"),
    ("hcaNaming", "one of kernel, stable"),
    ("removeDriversOnUninstall", "true or false"),
];

pub const PROTECTED_KEYS: [&str; 2] = ["packageUrl", "proxy"];

/// Walks a JSON document, failing on an object with a key twice.
pub(super) struct NoDuplicates;

impl<'de> serde::Deserialize<'de> for NoDuplicates {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicatesVisitor)
    }
}

struct NoDuplicatesVisitor;

impl<'de> serde::de::Visitor<'de> for NoDuplicatesVisitor {
    type Value = NoDuplicates;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_i64<E>(self, _: i64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_u64<E>(self, _: u64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_f64<E>(self, _: f64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_str<E>(self, _: &str) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_unit<E>(self) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<NoDuplicates, A::Error> {
        while seq.next_element::<NoDuplicates>()?.is_some() {}
        Ok(NoDuplicates)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<NoDuplicates, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "key `{}` appears twice",
                    shown_key(&key)
                )));
            }
            map.next_value::<NoDuplicates>()?;
        }
        Ok(NoDuplicates)
    }
}

/// How long a shown key may be before it is cut.
pub const SHOWN_KEY_CHARS: usize = 64;

/// A key name as messages show it. Keys are user text too: a SAS URL pasted as a key keeps no
/// query or credentials, and control and bidirectional characters, which could disguise a
/// status line, are dropped.
pub fn shown_key(key: &str) -> String {
    let mut k = key;
    if let Some(q) = k.find(['?', '#']) {
        k = &k[..q];
    }
    let mut owned;
    if let Some(scheme) = k.find("://") {
        let rest = &k[scheme + 3..];
        let host_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..host_end].rfind('@') {
            owned = format!("{}{}", &k[..scheme + 3], &rest[at + 1..]);
            k = &owned;
        }
    }
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{061c}' | '\u{feff}')
    };
    owned = k.chars().filter(|c| !hidden(*c)).collect();
    if owned.chars().count() > SHOWN_KEY_CHARS {
        owned = owned.chars().take(SHOWN_KEY_CHARS).collect::<String>() + "...";
    }
    owned
}
