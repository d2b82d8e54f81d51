//! Property tests of the GGUF parsers (the container reader and the SentencePiece model):
//! thousands of generated inputs each (random bytes, and valid files with bytes flipped,
//! inserted, removed or cut off) must give `Ok` or an error, never a panic, a hang or an
//! out-of-bounds read. Long runs of the same entry points live in `fuzz/` (cargo-fuzz).

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use smelt_gguf::file::{GgufFile, GgufLayout, GgufValue, TensorSpec};
use smelt_gguf::tokenizer::SpModel;
use smelt_gguf::types::GgmlType;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

#[path = "../../tests/support/fuzz_edits.rs"]
mod fuzz_edits;
use fuzz_edits::{apply, config, edits};

fn gguf_sample() -> Vec<u8> {
    let meta = vec![
        (
            "general.architecture".to_string(),
            GgufValue::String("llama".into()),
        ),
        ("llama.block_count".to_string(), GgufValue::U32(1)),
        (
            "tokenizer.ggml.tokens".to_string(),
            GgufValue::string_array(["a", "b"]),
        ),
    ];
    let specs = vec![TensorSpec {
        name: "t".into(),
        dims: vec![32, 2],
        ty: GgmlType::Q8_0,
    }];
    let layout = GgufLayout::new(&meta, &specs).unwrap();
    let mut v = layout.header().to_vec();
    v.resize(layout.total_size() as usize, 0);
    v
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn gguf_reader(bytes in prop::collection::vec(any::<u8>(), 0..256), e in edits()) {
        let _ = GgufFile::from_bytes(&bytes, "x.gguf");
        let edited = apply(&gguf_sample(), &e);
        let _ = GgufFile::from_bytes(&edited, "x.gguf");
    }

    #[test]
    fn sentencepiece_model(bytes in prop::collection::vec(any::<u8>(), 0..256), e in edits()) {
        let _ = SpModel::parse(&bytes);
        let valid = std::fs::read(fixtures().join("gguf/model/gguf-mistral-spm/tokenizer.model")).unwrap();
        let _ = SpModel::parse(&apply(&valid, &e));
    }
}

#[test]
fn the_valid_samples_parse() {
    assert!(GgufFile::from_bytes(&gguf_sample(), "x.gguf").is_ok());
    let sp = std::fs::read(fixtures().join("gguf/model/gguf-mistral-spm/tokenizer.model")).unwrap();
    assert!(SpModel::parse(&sp).is_ok());
}
