//! `smelt run --gguf TYPE`: the one-pass route equals the two-step route byte for byte, and
//! the file reads back in the `gguf` Python package (llama.cpp's own reader) with the values
//! smelt's reader dequantizes.

use std::path::Path;
use std::process::Command;

use smelt_gguf::file::GgufFile;

use crate::util::*;

fn sha(p: &Path) -> String {
    merge_core::lock::sha256_file(p).unwrap()
}

/// Merges the fixture recipe `linear_weighted` straight into a GGUF of type `ty` in `out`
/// (the fixtures' BPE tokenizer needs `--pre gpt-2`), with `extra` flags; asserts success.
fn merge_linear_to_gguf(ty: &str, out: &Path, extra: &[&str]) {
    let recipe = fixtures().join("recipes/linear_weighted.yml");
    let mut args = vec!["run", "-q", "--gguf", ty, "--pre", "gpt-2"];
    args.extend_from_slice(extra);
    args.extend([recipe.to_str().unwrap(), out.to_str().unwrap()]);
    assert_ok(&run(&args));
}

#[test]
fn one_pass_gguf_equals_merge_then_quantize() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    for (recipe, types) in [
        ("linear_weighted", &["Q4_K_M", "Q8_0", "F16"][..]),
        ("passthrough_frankenmerge", &["Q6_K", "BF16"][..]),
    ] {
        let r = fx.join("recipes").join(format!("{recipe}.yml"));
        // two-step: safetensors first
        let two = tmp.path().join(format!("two-{recipe}"));
        std::fs::create_dir_all(&two).unwrap();
        let merged = two.join("m");
        assert_ok(&run(&[
            "run",
            "-q",
            r.to_str().unwrap(),
            merged.to_str().unwrap(),
        ]));
        for ty in types {
            let one = tmp.path().join(format!("one-{recipe}-{ty}"));
            std::fs::create_dir_all(&one).unwrap();
            let out = one.join("m");
            assert_ok(&run(&[
                "run",
                "-q",
                "--gguf",
                ty,
                "--pre",
                "gpt-2",
                r.to_str().unwrap(),
                out.to_str().unwrap(),
            ]));
            let gguf = out.join(format!("m-{ty}.gguf"));
            assert!(gguf.is_file(), "{ty}: no {}", gguf.display());
            assert!(
                !out.join("model.safetensors").exists(),
                "no shards without --keep-safetensors"
            );
            assert!(
                out.join("config.json").is_file()
                    && out.join("tokenizer.json").is_file()
                    && out.join("README.md").is_file()
            );
            let q = two.join(format!("m-{ty}.gguf"));
            assert_ok(&run(&[
                "quantize",
                merged.to_str().unwrap(),
                q.to_str().unwrap(),
                "-t",
                ty,
                "--pre",
                "gpt-2",
            ]));
            assert_eq!(
                sha(&gguf),
                sha(&q),
                "{recipe} {ty}: one-pass and two-step files differ"
            );
        }
    }
}

#[test]
fn keep_safetensors_writes_both() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    merge_linear_to_gguf("q8_0", &out, &["--keep-safetensors"]);
    assert!(out.join("m-Q8_0.gguf").is_file() && out.join("model.safetensors").is_file());
    let plain = tmp.path().join("plain");
    assert_ok(&run(&[
        "run",
        "-q",
        fx.join("recipes/linear_weighted.yml").to_str().unwrap(),
        plain.to_str().unwrap(),
    ]));
    assert_eq!(
        sha(&out.join("model.safetensors")),
        sha(&plain.join("model.safetensors"))
    );
    // the lock covers the GGUF file too
    assert_ok(&run(&["verify", out.to_str().unwrap()]));
}

#[test]
fn unknown_bpe_pre_tokenizer_suggests_pre() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    let o = run(&[
        "run",
        "-q",
        "--gguf",
        "Q4_K_M",
        fx.join("recipes/linear_weighted.yml").to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert_fails(&o, &["--pre"]);
    assert_no_output(tmp.path(), "m");
}

const READER: &str = r#"
import json, sys
import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
r = GGUFReader(sys.argv[1])
meta = {}
for f in r.fields.values():
    if f.name.startswith("GGUF."):
        continue
    if len(f.types) == 1 and f.types[0] != 8 and len(f.data) == 1:
        v = f.parts[f.data[0]]
        meta[f.name] = float(v[0])
    elif len(f.types) == 1 and f.types[0] == 8:
        meta[f.name] = bytes(f.parts[f.data[0]]).decode("utf-8")
tensors = {}
for t in r.tensors:
    vals = dequantize(t.data, t.tensor_type).astype(np.float32).ravel()
    tensors[t.name] = {"type": int(t.tensor_type), "shape": [int(x) for x in t.shape], "values": vals.tolist()}
json.dump({"meta": meta, "tensors": tensors}, open(sys.argv[2], "w"))
"#;

#[test]
fn gguf_python_reader_reads_smelts_file() {
    let ok = Command::new("python3")
        .args(["-c", "import gguf, numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var("SMELT_REQUIRE_PY_REFS").as_deref() != Ok("1"),
            "the gguf Python package is required"
        );
        eprintln!("note: python3 with gguf and numpy not found; GGUF reader cross-check skipped");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for ty in ["Q4_K_M", "Q5_0", "F16"] {
        let out = tmp.path().join(format!("m{ty}"));
        merge_linear_to_gguf(ty, &out, &[]);
        let file = out.join(format!("m{ty}-{ty}.gguf"));
        let json = tmp.path().join(format!("{ty}.json"));
        let o = Command::new("python3")
            .args(["-c", READER])
            .arg(&file)
            .arg(&json)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let py: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(py["meta"]["general.architecture"], "llama");
        assert_eq!(py["meta"]["llama.block_count"], 4.0);
        assert_eq!(py["meta"]["llama.embedding_length"], 64.0);
        assert_eq!(py["meta"]["tokenizer.ggml.pre"], "gpt-2");
        let ours = GgufFile::open(&file).unwrap();
        let tensors = py["tensors"].as_object().unwrap();
        assert_eq!(tensors.len(), ours.tensors().len());
        for info in ours.tensors() {
            let p = &tensors[&info.name];
            assert_eq!(
                p["type"].as_u64().unwrap() as u32,
                info.ty.id(),
                "{}",
                info.name
            );
            let mine = ours.read_tensor_f32(&info.name).unwrap();
            let theirs: Vec<f32> = p["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(mine.len(), theirs.len(), "{}", info.name);
            for (a, b) in mine.iter().zip(&theirs) {
                assert!(
                    (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                    "{} {ty}: {a} vs {b}",
                    info.name
                );
            }
        }
    }
}

#[test]
fn inspect_reads_gguf_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    merge_linear_to_gguf("Q4_K_M", &out, &[]);
    let o = run(&["inspect", out.join("m-Q4_K_M.gguf").to_str().unwrap()]);
    assert_ok(&o);
    let s = stdout(&o);
    assert!(s.contains("GGUF v3") && s.contains("39 tensors"), "{s}");
    assert!(
        s.contains("general.architecture (STRING) = \"llama\""),
        "{s}"
    );
    assert!(s.contains("general.file_type (UINT32) = 15"), "{s}");
    assert!(
        s.contains("token_embd.weight") && s.contains("213568 parameters"),
        "{s}"
    );
}

#[test]
fn nan_or_inf_in_a_tensor_is_an_error_naming_it() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("gguf-llama");
    std::fs::create_dir_all(&model).unwrap();
    for f in std::fs::read_dir(fx.join("gguf/model/gguf-llama")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, model.join(f.file_name().unwrap())).unwrap();
    }
    // poison one element of one tensor with NaN
    let st = model.join("model.safetensors");
    let mut b = std::fs::read(&st).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let name = "model.layers.0.mlp.up_proj.weight";
    assert_eq!(h[name]["dtype"], "F32");
    let start = 8 + n + h[name]["data_offsets"][0].as_u64().unwrap() as usize + 4 * 10;
    b[start..start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&st, b).unwrap();
    let out = tmp.path().join("m.gguf");
    let o = run(&[
        "quantize",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "-t",
        "Q8_0",
        "--pre",
        "gpt-2",
    ]);
    assert_fails(&o, &[name, "NaN"]);
    assert!(!out.exists());
    let r = recipe(
        tmp.path(),
        &format!(
            "merge_method: passthrough\nmodels:\n  - model: {}\n",
            model.display()
        ),
    );
    let o = run(&[
        "run",
        "-q",
        "--gguf",
        "Q4_K_M",
        "--pre",
        "gpt-2",
        r.to_str().unwrap(),
        tmp.path().join("merged").to_str().unwrap(),
    ]);
    assert_fails(&o, &[name, "NaN"]);
    assert_no_output(tmp.path(), "merged");
}
