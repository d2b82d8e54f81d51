//! A GGUF file: header, metadata and tensor infos validated, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = smelt_gguf::file::GgufFile::from_bytes(data, "f.gguf");
});
