//! A safetensors file's header: parsed and bounds-checked, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = smelt_formats::safetensors::parse_header(data, std::path::Path::new("f"));
});
