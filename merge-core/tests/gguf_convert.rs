//! `merge_core::gguf::convert_folder` against llama.cpp's reference files
//! (tests/fixtures/gguf/model; the plan and data alone are tested in the smelt-gguf crate).

use std::path::{Path, PathBuf};

use merge_core::gguf::convert_folder;
use serde_json::Value;
use sha2::{Digest, Sha256};
use smelt_gguf::FileType;
use smelt_gguf::file::{GgufFile, GgufValue};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gguf/model")
}

fn manifest() -> Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("manifest.json")).unwrap()).unwrap()
}

fn hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// `convert_folder` end to end: same bytes at 1 and 2 threads, tensors equal to the
/// reference, and the converter's size label.
#[test]
fn convert_folder_end_to_end() {
    let man = manifest();
    let dir = tempfile::tempdir().unwrap();
    for (model, pre, ty) in [
        ("gguf-qwen2", Some("gpt-2"), "Q4_K_M"),
        ("gguf-mistral-spm", None, "Q8_0"),
    ] {
        let ftype = FileType::parse(ty).unwrap();
        let a = dir.path().join(format!("{model}-1.gguf"));
        let b = dir.path().join(format!("{model}-2.gguf"));
        let src = fixtures().join(model);
        let r = convert_folder(&src, &a, ftype, pre, 1).unwrap();
        convert_folder(&src, &b, ftype, pre, 2).unwrap();
        let bytes = std::fs::read(&a).unwrap();
        assert_eq!(bytes, std::fs::read(&b).unwrap());
        assert_eq!(r.bytes, bytes.len() as u64);
        let file = man["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["model"] == model && f["type"] == ty)
            .unwrap();
        let g = GgufFile::open(&a).unwrap();
        assert_eq!(
            g.get("general.size_label").and_then(GgufValue::as_str),
            file["metadata"]["general.size_label"].as_str()
        );
        for want in file["tensors"].as_array().unwrap() {
            let name = want["name"].as_str().unwrap();
            let got = g.read_tensor_bytes(name).unwrap();
            assert_eq!(
                hex(&got),
                want["sha256"].as_str().unwrap(),
                "{model} {name}"
            );
            // dequantized values are finite and of the right count
            let f = g.read_tensor_f32(name).unwrap();
            assert_eq!(f.len() as u64, g.tensor(name).unwrap().n_elements());
            assert!(f.iter().all(|v| v.is_finite()));
        }
    }
    // a folder without weights: a clear error
    let empty = tempfile::tempdir().unwrap();
    let e = convert_folder(
        empty.path(),
        &dir.path().join("x.gguf"),
        FileType::F16,
        None,
        1,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("model.safetensors"), "{e}");
}
