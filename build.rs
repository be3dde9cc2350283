// The handler version comes from manifest/manifest.xml, the one place it is written.
fn main() {
    let path = "manifest/manifest.xml";
    println!("cargo:rerun-if-changed={path}");
    let text = std::fs::read_to_string(path).expect("manifest/manifest.xml is readable");
    let version = text
        .split("<Version>")
        .nth(1)
        .and_then(|s| s.split("</Version>").next())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .expect("manifest.xml has a <Version>");
    println!("cargo:rustc-env=IBDRIVER_VERSION={version}");
}
