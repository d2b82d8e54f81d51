//! A `model.safetensors.index.json`: parsed, shard names checked, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = smelt_formats::safetensors::parse_index(&text, std::path::Path::new("i.json"));
});
