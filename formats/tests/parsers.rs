//! Property tests of the checkpoint parsers (safetensors headers and indexes, torch zip and
//! pickle): thousands of generated inputs each (random bytes, and valid files with bytes
//! flipped, inserted, removed or cut off) must give `Ok` or an error, never a panic, a hang or
//! an out-of-bounds read. Long runs of the same entry points live in `fuzz/` (cargo-fuzz).

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use smelt_formats::safetensors::{parse_header, parse_index};
use smelt_formats::torch;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

#[path = "../../tests/support/fuzz_edits.rs"]
mod fuzz_edits;
use fuzz_edits::{apply, config, edits};

fn safetensors_sample() -> Vec<u8> {
    let header = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]}}"#;
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend(std::iter::repeat_n(7u8, 22));
    v
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn safetensors_header(bytes in prop::collection::vec(any::<u8>(), 0..256), e in edits()) {
        let _ = parse_header(&bytes, Path::new("x.safetensors"));
        let edited = apply(&safetensors_sample(), &e);
        let _ = parse_header(&edited, Path::new("x.safetensors"));
    }

    #[test]
    fn sharded_index(text in ".{0,200}", e in edits()) {
        let _ = parse_index(&text, Path::new("i.json"));
        let valid = br#"{"metadata":{"total_size":10},"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}"#;
        let edited = apply(valid, &e);
        let _ = parse_index(&String::from_utf8_lossy(&edited), Path::new("i.json"));
    }
}

proptest! {
    #![proptest_config(config(1500))]

    #[test]
    fn torch_zip_and_pickle(bytes in prop::collection::vec(any::<u8>(), 0..256), e in edits()) {
        let _ = torch::read_torch_tensors(&bytes, Path::new("x.bin"));
        let _ = torch::zip::read_entries(&bytes);
        let _ = torch::pickle::unpickle(&bytes);
        for f in ["torch/malicious/pytorch_model.bin", "torch/tiny-llama-ft1-bin/pytorch_model.bin"] {
            let valid = std::fs::read(fixtures().join(f)).unwrap();
            let edited = apply(&valid, &e);
            let _ = torch::read_torch_tensors(&edited, Path::new("x.bin"));
        }
    }

    #[test]
    fn pickle_streams(e in edits()) {
        // the pickle of the malicious fixture, edited: refused or parsed, never executed
        let valid = std::fs::read(fixtures().join("torch/malicious/pytorch_model.bin")).unwrap();
        if let Ok(entries) = torch::zip::read_entries(&valid) {
            for en in entries.iter().filter(|en| en.name.ends_with("data.pkl")) {
                if let Ok(r) = en.stored_data() {
                    let _ = torch::pickle::unpickle(&apply(&valid[r], &e));
                }
            }
        }
    }
}

#[test]
fn the_valid_sample_parses() {
    assert_eq!(
        parse_header(&safetensors_sample(), Path::new("x"))
            .unwrap()
            .len(),
        2
    );
}
