//! include/gacc.h must be exactly what cbindgen generates from the sources now.
//! Run with GACC_BLESS=1 to rewrite it after changing the C API.

use std::path::PathBuf;

#[test]
fn header_matches_sources() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(&root)
        .with_config(config)
        .generate()
        .expect("cbindgen failed")
        .write(&mut generated);
    let path = root.join("include/gacc.h");
    if std::env::var_os("GACC_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/gacc.h differs from what cbindgen generates; run GACC_BLESS=1 cargo test --test header"
    );
}

#[test]
fn version_constants_match_cargo_toml() {
    use gacc::ffi::types::*;
    let major: u32 = env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap();
    let minor: u32 = env!("CARGO_PKG_VERSION_MINOR").parse().unwrap();
    let patch: u32 = env!("CARGO_PKG_VERSION_PATCH").parse().unwrap();
    assert_eq!((GACC_VERSION_MAJOR, GACC_VERSION_MINOR, GACC_VERSION_PATCH), (major, minor, patch));
    assert_eq!(GACC_VERSION_NUMBER, major * 10000 + minor * 100 + patch);
    assert_eq!(gacc::ffi::gacc_version_number(), GACC_VERSION_NUMBER);
    let v = unsafe { std::ffi::CStr::from_ptr(gacc::ffi::gacc_version()) };
    assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    let header = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/gacc.h")).unwrap();
    assert!(header.contains(&format!("#define GACC_VERSION \"{}\"", env!("CARGO_PKG_VERSION"))));
}

/// Every name the header defines is in gacc's namespace (gacc_ / GACC_): a `pub const`
/// of the crate that is not part of the C API (cbindgen exports every one) must be
/// listed in cbindgen.toml's [export] exclude, or it pollutes every C program's names.
#[test]
fn header_defines_only_gacc_names() {
    let header = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/gacc.h")).unwrap();
    let mut foreign = Vec::new();
    for line in header.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let name = match words.as_slice() {
            ["#define", name, ..] => name.split('(').next().unwrap_or(name),
            ["typedef", "struct", name, ..] | ["typedef", "enum", name, ..] => name,
            ["}", name] => name.trim_end_matches(';'),
            _ => continue,
        };
        let ours = name.starts_with("gacc_") || name.starts_with("GACC_") || name == "GACC_H";
        if !ours && !name.is_empty() && name != "{" {
            foreign.push(name.to_string());
        }
    }
    assert!(foreign.is_empty(), "include/gacc.h defines names outside gacc_/GACC_: {foreign:?}");
}
