//! Hostile settings files, as the agent would hand them to `enable`: every case gets the
//! documented status code, exit 1, a message naming what to fix, and no echo of a value.

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

const HB: &str = "Standard_HB120rs_v3";
/// Stands for a SAS signature or a password: it must never come back.
const SECRET: &str = "SECRETsig0x42";
const SAS: &str = "https://acct.blob.core.windows.net/c/pkg.tgz?sv=2024&sig=SECRETsig0x42";

const MALFORMED: u64 = 102;
const INVALID: u64 = 103;
const CERT_MISSING: u64 = 104;
const DECRYPT_FAILED: u64 = 105;
const PROTECTED_MALFORMED: u64 = 106;

struct Case {
    name: String,
    file: Vec<u8>,
    code: u64,
    says: String,
}

fn case(name: &str, file: impl Into<Vec<u8>>, code: u64, says: &str) -> Case {
    Case {
        name: name.into(),
        file: file.into(),
        code,
        says: says.into(),
    }
}

/// A settings file in the agent's shape with these public settings.
fn public(v: Value) -> String {
    json!({"runtimeSettings": [{"handlerSettings": {"publicSettings": v}}]}).to_string()
}

/// One public key set to `v`.
fn one(key: &str, v: Value) -> String {
    let mut m = serde_json::Map::new();
    m.insert(key.into(), v);
    public(Value::Object(m))
}

fn sha() -> String {
    "ab".repeat(32)
}

/// Run enable on each case under its own sequence number and check the exact outcome.
fn run_all(w: &World, cases: &[Case]) {
    for (i, c) in cases.iter().enumerate() {
        let seq = i as u64 + 1;
        write(
            &w.handler_dir.join("config").join(format!("{seq}.settings")),
            &c.file,
        );
        let out = w.run("enable", seq);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!stderr.contains("panicked at"), "{}: {stderr}", c.name);
        assert_eq!(code(&out), 1, "{}: exit code; {stdout}{stderr}", c.name);
        let st = w
            .status(seq)
            .unwrap_or_else(|| panic!("{}: no status file", c.name));
        assert_eq!(status_value(&st), "error", "{}", c.name);
        assert_eq!(status_code(&st), c.code, "{}: {}", c.name, message(&st));
        let msg = message(&st);
        assert!(
            msg.contains(&c.says),
            "{}: {msg:?} lacks {:?}",
            c.name,
            c.says
        );
        for shown in [&msg, &stdout.to_string(), &stderr.to_string()] {
            assert!(
                !shown.contains(SECRET),
                "{}: echoed a value: {shown}",
                c.name
            );
            assert!(
                !shown.chars().any(|ch| matches!(ch, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
                    || (ch.is_control() && ch != '\n')),
                "{}: control or bidi character in {shown:?}",
                c.name
            );
        }
    }
    // Nothing of any value anywhere but the settings files themselves: logs, events, status,
    // state.
    let mut files = Vec::new();
    walk(w.tmp.path(), &w.handler_dir.join("config"), &mut files);
    for f in files {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap_or_default()).into_owned();
        assert!(!text.contains(SECRET), "{} holds a value", f.display());
    }
}

fn walk(dir: &std::path::Path, skip: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p == skip {
            continue;
        }
        if p.is_dir() && !p.is_symlink() {
            walk(&p, skip, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn public_settings_of_every_wrong_type() {
    let w = World::new("hbv3", HB);
    let must = |k: &str, want: &str| format!("setting `{k}` must be {want}");
    let stack = must("stack", "one of auto, doca, mlnx-ofed, inbox");
    let ipoib = must("ipoib", "one of auto, native, waagent, off");
    let reboot = must("reboot", "one of ifRequired, never");
    let hca = must("hcaNaming", "one of kernel, stable");
    let remove = must("removeDriversOnUninstall", "true or false");
    let lock = "between 1 and 86400";
    let package = must("package", "an object {url, sha256}");
    let version = "version must be a short version string";
    let cases = vec![
        case("stack number", one("stack", json!(5)), INVALID, &stack),
        case("stack bool", one("stack", json!(true)), INVALID, &stack),
        case(
            "stack array",
            one("stack", json!(["doca"])),
            INVALID,
            &stack,
        ),
        case(
            "stack object",
            one("stack", json!({"doca": 1})),
            INVALID,
            &stack,
        ),
        case(
            "stack wrong case",
            one("stack", json!("DOCA")),
            INVALID,
            &stack,
        ),
        case("stack null", one("stack", Value::Null), INVALID, &stack),
        case(
            "stack homoglyph",
            one("stack", json!("d\u{043e}ca")),
            INVALID,
            &stack,
        ),
        case("stack SAS URL", one("stack", json!(SAS)), INVALID, &stack),
        case(
            "stack nested junk",
            one("stack", json!({"a": {"b": [1, {"c": null}]}})),
            INVALID,
            &stack,
        ),
        case(
            "version number",
            one("version", json!(24.10)),
            INVALID,
            &must("version", "a string"),
        ),
        case("version empty", one("version", json!("")), INVALID, version),
        case(
            "version space",
            one("version", json!("24.10 1")),
            INVALID,
            version,
        ),
        case(
            "version too long",
            one("version", json!("9".repeat(65))),
            INVALID,
            version,
        ),
        case(
            "version path",
            one("version", json!("../../etc")),
            INVALID,
            version,
        ),
        case(
            "version bidi",
            one("version", json!("24.10\u{202e}1")),
            INVALID,
            version,
        ),
        case(
            "version control",
            one("version", json!("24.10\u{0007}")),
            INVALID,
            version,
        ),
        case(
            "version huge",
            one("version", json!("x".repeat(1 << 20))),
            INVALID,
            version,
        ),
        case(
            "version SAS URL",
            one("version", json!(SAS)),
            INVALID,
            version,
        ),
        case(
            "package string",
            one("package", json!(SAS)),
            INVALID,
            &package,
        ),
        case(
            "package array",
            one("package", json!([1])),
            INVALID,
            &package,
        ),
        case(
            "package sha256 number",
            one(
                "package",
                json!({"url": "https://x.example/p.tgz", "sha256": 5}),
            ),
            INVALID,
            &package,
        ),
        case(
            "package sha256 missing",
            one("package", json!({"url": "https://x.example/p.tgz"})),
            INVALID,
            &package,
        ),
        case(
            "package extra key",
            one(
                "package",
                json!({"url": "https://x.example/p.tgz", "sha256": sha(), SECRET: SAS}),
            ),
            INVALID,
            &package,
        ),
        case(
            "package sha256 not hex",
            one(
                "package",
                json!({"url": "https://x.example/p.tgz", "sha256": "g".repeat(64)}),
            ),
            INVALID,
            "package.sha256 must be 64 hexadecimal digits",
        ),
        case(
            "package file URL",
            one(
                "package",
                json!({"url": "file:///etc/shadow", "sha256": sha()}),
            ),
            INVALID,
            "package.url must be an http or https URL",
        ),
        case(
            "package SAS URL",
            one("package", json!({"url": SAS, "sha256": sha()})),
            INVALID,
            "package.url must not carry a query string",
        ),
        case(
            "mirror http",
            one("mirror", json!("http://mirror.example")),
            INVALID,
            "mirror must be an https URL without a query string",
        ),
        case(
            "mirror SAS URL",
            one("mirror", json!(SAS)),
            INVALID,
            "mirror must be an https URL without a query string",
        ),
        case(
            "mirror number",
            one("mirror", json!(7)),
            INVALID,
            &must("mirror", "an https URL"),
        ),
        case("ipoib yes", one("ipoib", json!("yes")), INVALID, &ipoib),
        case("ipoib number", one("ipoib", json!(1)), INVALID, &ipoib),
        case("ipoib bool", one("ipoib", json!(false)), INVALID, &ipoib),
        case(
            "reboot always",
            one("reboot", json!("always")),
            INVALID,
            &reboot,
        ),
        case(
            "reboot wrong case",
            one("reboot", json!("IfRequired")),
            INVALID,
            &reboot,
        ),
        case(
            "lockTimeoutSeconds string",
            one("lockTimeoutSeconds", json!("10")),
            INVALID,
            lock,
        ),
        case(
            "lockTimeoutSeconds zero",
            one("lockTimeoutSeconds", json!(0)),
            INVALID,
            "lockTimeoutSeconds must be between 1 and 86400",
        ),
        case(
            "lockTimeoutSeconds negative",
            one("lockTimeoutSeconds", json!(-1)),
            INVALID,
            lock,
        ),
        case(
            "lockTimeoutSeconds float",
            one("lockTimeoutSeconds", json!(1.5)),
            INVALID,
            lock,
        ),
        case(
            "lockTimeoutSeconds huge float",
            one("lockTimeoutSeconds", json!(1e300)),
            INVALID,
            lock,
        ),
        case(
            "lockTimeoutSeconds over a day",
            one("lockTimeoutSeconds", json!(86_401)),
            INVALID,
            lock,
        ),
        case(
            "lockTimeoutSeconds u64 max",
            one("lockTimeoutSeconds", json!(u64::MAX)),
            INVALID,
            lock,
        ),
        case(
            "lockTimeoutSeconds past u64",
            r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"lockTimeoutSeconds":18446744073709551616}}}]}"#,
            INVALID,
            lock,
        ),
        case(
            "hcaNaming pci",
            one("hcaNaming", json!("pci")),
            INVALID,
            &hca,
        ),
        case(
            "hcaNaming number",
            one("hcaNaming", json!(0)),
            INVALID,
            &hca,
        ),
        case(
            "removeDriversOnUninstall string",
            one("removeDriversOnUninstall", json!("true")),
            INVALID,
            &remove,
        ),
        case(
            "removeDriversOnUninstall number",
            one("removeDriversOnUninstall", json!(1)),
            INVALID,
            &remove,
        ),
        case(
            "publicSettings string",
            public(json!("stack=doca")),
            INVALID,
            "publicSettings must be a JSON object",
        ),
        case(
            "publicSettings array",
            public(json!([{"stack": "doca"}])),
            INVALID,
            "publicSettings must be a JSON object",
        ),
        case(
            "publicSettings number",
            public(json!(5)),
            INVALID,
            "publicSettings must be a JSON object",
        ),
    ];
    assert!(cases.len() >= 45);
    run_all(&w, &cases);
}

#[test]
fn hostile_key_names_are_shown_sanitized() {
    let w = World::new("hbv3", HB);
    let cases = vec![
        case("unknown key", one("bogus", json!(1)), INVALID, "unknown setting `bogus`"),
        case("key in the wrong case", one("Stack", json!("doca")), INVALID, "unknown setting `Stack`"),
        case("key that is a SAS URL", one(SAS, json!(1)), INVALID, "unknown setting `https://acct.blob.core.windows.net/c/pkg.tgz`"),
        case("key with credentials", one(&format!("http://u:{SECRET}@proxy.example:3128"), json!(1)), INVALID, "unknown setting `http://proxy.example:3128`"),
        case("key with bidi", one("st\u{202e}kca\u{2066}\u{200f}", json!(1)), INVALID, "unknown setting `stkca`"),
        case("key with controls", one("bo\ngus\u{0000}\u{001b}[31m\u{0085}", json!(1)), INVALID, "unknown setting `bogus[31m`"),
        case("very long key", one(&"k".repeat(10_000), json!(1)), INVALID, &format!("unknown setting `{}...`", "k".repeat(64))),
        case("empty key", one("", json!(1)), INVALID, "unknown setting ``"),
        case("duplicate public key", r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"stack":"doca","stack":"inbox"}}}]}"#, MALFORMED, "key `stack` appears twice"),
        case("duplicate key with bidi", "{\"runtimeSettings\":[{\"handlerSettings\":{\"publicSettings\":{\"a\u{202e}b\":1,\"a\u{202e}b\":2}}}]}", MALFORMED, "key `ab` appears twice"),
    ];
    run_all(&w, &cases);
}

#[test]
fn files_not_in_the_agents_shape() {
    let w = World::new("hbv3", HB);
    let entry = json!({"handlerSettings": {"publicSettings": {}}});
    let mut deep = String::new();
    for _ in 0..200 {
        deep.push('[');
    }
    for _ in 0..200 {
        deep.push(']');
    }
    let cases = vec![
        case("trailing garbage", format!("{} xyz", public(json!({}))), MALFORMED, "not JSON"),
        case("two documents", format!("{0}{0}", public(json!({}))), MALFORMED, "not JSON"),
        case("not JSON", "stack=doca", MALFORMED, "not JSON"),
        case("truncated", "{\"runtimeSettings\":[{\"handlerSettings\":", MALFORMED, "not JSON"),
        case("top-level array", "[]", MALFORMED, "it is not a JSON object"),
        case("top-level null", "null", MALFORMED, "it is not a JSON object"),
        case("runtimeSettings missing", "{}", MALFORMED, "no runtimeSettings array"),
        case("runtimeSettings empty", r#"{"runtimeSettings":[]}"#, MALFORMED, "runtimeSettings is empty"),
        case("runtimeSettings twice", json!({"runtimeSettings": [entry.clone(), entry.clone()]}).to_string(), MALFORMED,
            "the settings file has 2 runtimeSettings entries; the agent writes one — remove the extra"),
        case("runtimeSettings object", json!({"runtimeSettings": entry.clone()}).to_string(), MALFORMED, "runtimeSettings must be an array"),
        case("runtimeSettings string", r#"{"runtimeSettings":"x"}"#, MALFORMED, "runtimeSettings must be an array"),
        case("runtimeSettings entry a number", r#"{"runtimeSettings":[5]}"#, MALFORMED, "runtimeSettings[0] has no handlerSettings"),
        case("handlerSettings missing", r#"{"runtimeSettings":[{}]}"#, MALFORMED, "runtimeSettings[0] has no handlerSettings"),
        case("handlerSettings a string", r#"{"runtimeSettings":[{"handlerSettings":"x"}]}"#, MALFORMED, "handlerSettings must be an object"),
        case("duplicate runtimeSettings key", r#"{"runtimeSettings":[],"runtimeSettings":[{"handlerSettings":{}}]}"#, MALFORMED, "key `runtimeSettings` appears twice"),
        case("not UTF-8", b"{\"runtimeSettings\":[{\"handlerSettings\":{\"publicSettings\":{\"stack\":\"\xff\xfe\"}}}]}".to_vec(), MALFORMED, "cannot read settings file"),
        case("raw NUL in a string", "{\"runtimeSettings\":[{\"handlerSettings\":{\"publicSettings\":{\"stack\":\"do\u{0}ca\"}}}]}", MALFORMED, "not JSON"),
        case("nested too deep", format!("{{\"runtimeSettings\":[{{\"handlerSettings\":{{\"publicSettings\":{{\"x\":{deep}}}}}}}]}}"), MALFORMED, "not JSON"),
        case("number out of range", r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"lockTimeoutSeconds":1e999999}}}]}"#, MALFORMED, "not JSON"),
        case("protectedSettings a number", r#"{"runtimeSettings":[{"handlerSettings":{"protectedSettings":5}}]}"#, MALFORMED, "protectedSettings must be a string"),
        case("thumbprint a number", r#"{"runtimeSettings":[{"handlerSettings":{"protectedSettings":"QQ==","protectedSettingsCertThumbprint":5}}]}"#, MALFORMED, "protectedSettingsCertThumbprint must be a string"),
        case("BOM then garbage", "\u{feff}{]", MALFORMED, "not JSON"),
    ];
    run_all(&w, &cases);
}

#[test]
fn hostile_protected_settings() {
    let w = World::new("hbv3", HB);
    let (thumb, crt) = w.certificate(true);
    let (other, other_crt) = w.certificate(false);
    let (installed_b, _) = w.certificate(true);
    let file = |blob: &str, thumb: &str| {
        json!({"runtimeSettings": [{"handlerSettings": {"publicSettings": {},
            "protectedSettings": blob, "protectedSettingsCertThumbprint": thumb}}]})
        .to_string()
    };
    let enc = |plain: &str| w.encrypt(plain, &crt, "-aes256");
    let cases = vec![
        case(
            "not base64",
            file("!!not*base64!!", &thumb),
            PROTECTED_MALFORMED,
            "the protected settings are not valid base64",
        ),
        case(
            "thumbprint not hex",
            file(&enc("{}"), "../../../etc/passwd"),
            PROTECTED_MALFORMED,
            "the certificate thumbprint is not 40 hexadecimal digits",
        ),
        case(
            "thumbprint missing",
            json!({"runtimeSettings": [{"handlerSettings": {"protectedSettings": enc("{}")}}]})
                .to_string(),
            CERT_MISSING,
            "protectedSettingsCertThumbprint is missing",
        ),
        case(
            "certificate missing",
            file(&w.encrypt("{}", &other_crt, "-aes256"), &other),
            CERT_MISSING,
            "is not in",
        ),
        case(
            "wrong certificate",
            file(&enc("{}"), &installed_b),
            DECRYPT_FAILED,
            "openssl could not decrypt the protected settings",
        ),
        case(
            "garbage that is base64",
            file("QUJDREVGR0g=", &thumb),
            DECRYPT_FAILED,
            "openssl could not decrypt",
        ),
        case(
            "decrypts to text",
            file(&enc(&format!("packageUrl={SAS}")), &thumb),
            PROTECTED_MALFORMED,
            "the decrypted protected settings are not a JSON object",
        ),
        case(
            "decrypts to an array",
            file(&enc(&format!("[\"{SAS}\"]")), &thumb),
            PROTECTED_MALFORMED,
            "not a JSON object",
        ),
        case(
            "decrypts to unknown keys",
            file(&enc(&format!("{{\"password\":\"{SECRET}\"}}")), &thumb),
            INVALID,
            "unknown protected setting `password`, expected one of packageUrl, proxy",
        ),
        case(
            "decrypts to a SAS URL key",
            file(&enc(&format!("{{\"{SAS}\":1}}")), &thumb),
            INVALID,
            "unknown protected setting `https://acct.blob.core.windows.net/c/pkg.tgz`",
        ),
        case(
            "proxy not a URL",
            file(&enc(&format!("{{\"proxy\":\"user:{SECRET}\"}}")), &thumb),
            INVALID,
            "protected setting proxy must be an http or https URL",
        ),
        case(
            "packageUrl a number",
            file(&enc("{\"packageUrl\":42}"), &thumb),
            INVALID,
            "protected setting packageUrl must be a string",
        ),
        case(
            "duplicate protected keys",
            file(
                &enc(&format!(
                    "{{\"proxy\":\"http://a.example\",\"proxy\":\"{SECRET}\"}}"
                )),
                &thumb,
            ),
            INVALID,
            "key `proxy` appears twice",
        ),
    ];
    run_all(&w, &cases);
}

/// Files the agent may legitimately write (or near enough) are accepted with defaults.
#[test]
fn empty_and_bom_files_mean_defaults() {
    for (name, text) in [
        ("empty file", String::new()),
        ("whitespace only", " \n\t\r\n ".to_string()),
        ("BOM only", "\u{feff}".to_string()),
        (
            "BOM then settings",
            format!("\u{feff}{}", public(json!({"ipoib": "off"}))),
        ),
        (
            "null handlerSettings",
            r#"{"runtimeSettings":[{"handlerSettings":null}]}"#.to_string(),
        ),
    ] {
        let w = World::new("hbv3", HB);
        w.settings_raw(1, &text);
        let out = w.run("enable", 1);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked at"), "{name}: {stderr}");
        assert_eq!(code(&out), 0, "{name}: {stderr}");
        let st = w.wait_terminal(1, Duration::from_secs(120));
        assert_eq!(status_value(&st), "success", "{name}: {}", message(&st));
        assert_eq!(status_code(&st), 0, "{name}");
    }
}
