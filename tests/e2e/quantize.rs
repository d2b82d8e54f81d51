//! `smelt quantize`: HF folder → GGUF on the tiny SentencePiece fixture model.

use std::process::Command;

use sha2::{Digest, Sha256};

use crate::util;

#[test]
fn quantize_writes_a_gguf_and_refuses_to_overwrite() {
    let model = util::fixtures().join("gguf/model/gguf-mistral-spm");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_smelt"))
            .arg("quantize")
            .arg(&model)
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run(&["--type", "q6_k", "-j", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(&bytes[..4], b"GGUF");
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(msg.contains("llama Q6_K, 12 tensors"), "{msg}");
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let o = run(&["--type", "q6_k"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    let o = run(&["--type", "q6_k", "--force", "-j", "1"]);
    assert!(o.status.success());
    let again: String = Sha256::digest(std::fs::read(&out).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(digest, again, "same bytes at 1 and 2 threads");
    let o = run(&["--type", "q9_k", "--force"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown GGUF file type"));
}
