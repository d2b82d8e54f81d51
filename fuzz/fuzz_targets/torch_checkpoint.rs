//! A PyTorch checkpoint: zip directory, restricted unpickler and tensor records; refused or
//! read, never executed, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = smelt_formats::torch::read_torch_tensors(data, std::path::Path::new("f.bin"));
    let _ = smelt_formats::torch::pickle::unpickle(data);
});
