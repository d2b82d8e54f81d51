//! A mergekit recipe (YAML), strictly parsed, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let p = std::path::Path::new("r.yml");
    let _ = merge_core::recipe::Recipe::parse(&text, p, std::path::Path::new("."));
});
