//! The HF → GGUF plan and data against llama.cpp's reference files (tests/fixtures/gguf/model:
//! three tiny HF models and, in manifest.json, every tensor and metadata value of the GGUF files
//! llama.cpp made from them).

use std::path::{Path, PathBuf};

use merge_core::gguf::FileType;
use merge_core::gguf::convert::{self, GgufPlan, HfTensor, PlanOptions};
use merge_core::gguf::file::{GgufFile, GgufLayout, GgufValue, GgufValueType, GgufWriter};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf/model")
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

struct Model {
    dir: PathBuf,
    config: Value,
    tensors: Vec<(HfTensor, Vec<f32>)>,
}

fn load_model(name: &str) -> Model {
    let dir = fixtures().join(name);
    let config: Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = Vec::new();
    for (name, view) in st.tensors() {
        assert_eq!(view.dtype(), safetensors::Dtype::F32);
        let vals: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        tensors.push((
            HfTensor {
                name,
                shape: view.shape().iter().map(|&d| d as u64).collect(),
            },
            vals,
        ));
    }
    Model {
        dir,
        config,
        tensors,
    }
}

fn plan_for(m: &Model, ftype: FileType, pre: Option<&str>) -> GgufPlan {
    let list: Vec<HfTensor> = m.tensors.iter().map(|(t, _)| t.clone()).collect();
    convert::plan(
        &m.dir,
        &m.config,
        &list,
        &PlanOptions {
            ftype,
            pre_override: pre.map(String::from),
            name: None,
            general: Vec::new(),
        },
    )
    .unwrap()
}

/// Python's `json.dumps(value, ensure_ascii=False)` for the scalar kinds metadata arrays hold.
fn py_json(v: &GgufValue) -> String {
    match v {
        GgufValue::String(s) => {
            let mut o = String::from("\"");
            for c in s.chars() {
                match c {
                    '"' => o.push_str("\\\""),
                    '\\' => o.push_str("\\\\"),
                    '\n' => o.push_str("\\n"),
                    '\r' => o.push_str("\\r"),
                    '\t' => o.push_str("\\t"),
                    '\u{8}' => o.push_str("\\b"),
                    '\u{c}' => o.push_str("\\f"),
                    c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
                    c => o.push(c),
                }
            }
            o.push('"');
            o
        }
        GgufValue::F32(f) => {
            let d = f64::from(*f);
            if d.fract() == 0.0 && d.abs() < 1e16 {
                format!("{d:.1}")
            } else {
                format!("{d:?}")
            }
        }
        GgufValue::Array(_, items) => {
            let parts: Vec<String> = items.iter().map(py_json).collect();
            format!("[{}]", parts.join(", "))
        }
        GgufValue::Bool(b) => if *b { "true" } else { "false" }.to_string(),
        other => other
            .as_u64()
            .map(|u| u.to_string())
            .unwrap_or_else(|| format!("{other:?}")),
    }
}

/// Keys the fixture README allows to differ.
fn may_differ(key: &str) -> bool {
    key.starts_with("general.")
        && !matches!(
            key,
            "general.architecture"
                | "general.type"
                | "general.file_type"
                | "general.quantization_version"
        )
}

/// Compares the plan's metadata with the manifest entry; returns the mismatches.
fn metadata_mismatches(plan: &GgufPlan, file: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    let md = file["metadata"].as_object().unwrap();
    let types = file["metadata_types"].as_object().unwrap();
    for (key, want) in md {
        if may_differ(key) {
            continue;
        }
        let Some(got) = plan.get(key) else {
            bad.push(format!("missing {key}"));
            continue;
        };
        let want_ty = types[key].as_str().unwrap();
        if got.value_type().name() != want_ty {
            bad.push(format!(
                "{key}: type {} != {want_ty}",
                got.value_type().name()
            ));
            continue;
        }
        let ok = match got {
            GgufValue::Array(et, items) => {
                want["array_of"].as_str() == Some(et.name())
                    && want["len"].as_u64() == Some(items.len() as u64)
                    && want["sha256"].as_str() == Some(hex(py_json(got).as_bytes()).as_str())
            }
            GgufValue::String(s) => want.as_str() == Some(s),
            GgufValue::Bool(b) => want.as_bool() == Some(*b),
            GgufValue::F32(f) => want.as_f64() == Some(f64::from(*f)),
            other => other.as_u64().is_some() && want.as_u64() == other.as_u64(),
        };
        if !ok {
            bad.push(format!("{key}: {got:?} != {want}"));
        }
    }
    for (key, _) in &plan.metadata {
        if !may_differ(key) && !md.contains_key(key) {
            bad.push(format!("extra key {key}"));
        }
    }
    bad
}

fn tensor_mismatches(plan: &GgufPlan, file: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    let want = file["tensors"].as_array().unwrap();
    if want.len() != plan.tensors.len() {
        bad.push(format!(
            "{} tensors, {} expected",
            plan.tensors.len(),
            want.len()
        ));
    }
    for w in want {
        let name = w["name"].as_str().unwrap();
        let Some(t) = plan.tensors.iter().find(|t| t.name == name) else {
            bad.push(format!("missing tensor {name}"));
            continue;
        };
        let shape: Vec<u64> = w["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        if t.ty.name() != w["type"].as_str().unwrap() || t.dims != shape {
            bad.push(format!(
                "{name}: {} {:?} != {} {:?}",
                t.ty, t.dims, w["type"], shape
            ));
        }
    }
    bad
}

const MODELS: [(&str, Option<&str>); 3] = [
    ("gguf-llama", Some("gpt-2")),
    ("gguf-qwen2", Some("gpt-2")),
    ("gguf-mistral-spm", None),
];

#[test]
fn plans_match_every_reference_file() {
    let man = manifest();
    let mut checked = 0;
    for (model, pre) in MODELS {
        let m = load_model(model);
        for file in man["files"].as_array().unwrap() {
            if file["model"].as_str() != Some(model) {
                continue;
            }
            let ftype = FileType::parse(file["type"].as_str().unwrap()).unwrap();
            let plan = plan_for(&m, ftype, pre);
            let mut bad = metadata_mismatches(&plan, file);
            bad.extend(tensor_mismatches(&plan, file));
            assert!(bad.is_empty(), "{}: {bad:#?}", file["file"]);
            checked += 1;
        }
    }
    assert_eq!(checked, 23);
}

#[test]
fn quantizer_tensor_order_matches_reference() {
    let man = manifest();
    for (model, pre) in MODELS {
        let m = load_model(model);
        for file in man["files"].as_array().unwrap() {
            if file["model"].as_str() != Some(model) {
                continue;
            }
            let ftype = FileType::parse(file["type"].as_str().unwrap()).unwrap();
            let plan = plan_for(&m, ftype, pre);
            let got: Vec<&str> = plan.tensors.iter().map(|t| t.name.as_str()).collect();
            let want: Vec<&str> = file["tensors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["name"].as_str().unwrap())
                .collect();
            assert_eq!(got, want, "{}", file["file"]);
        }
    }
}

#[test]
fn spm_vocab_payloads_match() {
    let man = manifest();
    let m = load_model("gguf-mistral-spm");
    let plan = plan_for(&m, FileType::F32, None);
    let file = man["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file"] == "gguf/gguf-mistral-spm-F32.gguf")
        .unwrap();
    let want = file["vocab"]["array_payload_sha256"].as_object().unwrap();
    assert_eq!(want.len(), 3);
    for (key, sha) in want {
        let payload = plan.get(key).unwrap().array_payload().unwrap();
        assert_eq!(hex(&payload), sha.as_str().unwrap(), "{key}");
    }
    // -0.0 score of the first BPE piece, bit for bit
    let scores = plan
        .get("tokenizer.ggml.scores")
        .unwrap()
        .as_array()
        .unwrap();
    assert_eq!(scores[259], GgufValue::F32(-0.0));
    assert!(matches!(scores[259], GgufValue::F32(f) if f.to_bits() == 0x8000_0000));
}

#[test]
fn bpe_without_pre_is_a_clear_error() {
    let m = load_model("gguf-llama");
    let list: Vec<HfTensor> = m.tensors.iter().map(|(t, _)| t.clone()).collect();
    let e = convert::plan(
        &m.dir,
        &m.config,
        &list,
        &PlanOptions {
            ftype: FileType::F16,
            pre_override: None,
            name: None,
            general: Vec::new(),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("--pre"), "{e}");
}

/// Every file's tensor data (F32/F16/BF16 from the converter, the 14 quantized types from
/// llama_model_quantize), written through the streaming writer and read back, equals the
/// reference bytes.
#[test]
fn all_files_data_matches_reference() {
    let man = manifest();
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (model, pre) in MODELS {
        let m = load_model(model);
        for file in man["files"].as_array().unwrap() {
            if file["model"].as_str() != Some(model) {
                continue;
            }
            let ftype = FileType::parse(file["type"].as_str().unwrap()).unwrap();
            let plan = plan_for(&m, ftype, pre);
            let layout = GgufLayout::new(&plan.metadata, &plan.specs()).unwrap();
            let path = dir.path().join(format!("{model}-{}.gguf", ftype.name()));
            let w = GgufWriter::create(&path, layout).unwrap();
            // write in reverse order to exercise positional writes
            for (i, t) in plan.tensors.iter().enumerate().rev() {
                let vals = &m
                    .tensors
                    .iter()
                    .find(|(h, _)| h.name == t.source)
                    .unwrap()
                    .1;
                w.write_tensor(i, &convert::encode_tensor(t, vals).unwrap())
                    .unwrap();
            }
            w.finish().unwrap();
            let g = GgufFile::open(&path).unwrap();
            assert_eq!(g.alignment(), 32);
            assert!(g.get("general.alignment").is_none());
            for want in file["tensors"].as_array().unwrap() {
                let name = want["name"].as_str().unwrap();
                let bytes = g.read_tensor_bytes(name).unwrap();
                assert_eq!(bytes.len() as u64, want["n_bytes"].as_u64().unwrap());
                assert_eq!(
                    hex(&bytes),
                    want["sha256"].as_str().unwrap(),
                    "{} {name}",
                    file["file"]
                );
                checked += 1;
            }
            // metadata survives the round trip
            for (k, v) in &plan.metadata {
                assert_eq!(g.get(k), Some(v), "{k}");
            }
            let ours = g.metadata().iter().filter(|(k, _)| !may_differ(k)).count();
            let theirs = file["metadata"]
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| !may_differ(k))
                .count();
            assert_eq!(ours, theirs);
        }
    }
    assert_eq!(checked, 12 * 17 + 26 * 2 + 12 * 4);
}

#[test]
fn arrays_json_hash_helper_matches_python() {
    // json.dumps(["a\"b", "é\n"], ensure_ascii=False) == '["a\\"b", "é\\n"]'
    let v = GgufValue::string_array(["a\"b", "é\n"]);
    assert_eq!(py_json(&v), "[\"a\\\"b\", \"é\\n\"]");
    let v = GgufValue::Array(
        GgufValueType::F32,
        vec![GgufValue::F32(-0.0), GgufValue::F32(-1000.0)],
    );
    assert_eq!(py_json(&v), "[-0.0, -1000.0]");
}

/// The check-text ids of byte-level BPE tokenizer variants equal those of HF `tokenizers`
/// (tests/fixtures/gguf/pretok, made by gen_pretok.py there).
#[test]
fn pretokenizer_check_text_ids_match_hf_tokenizers() {
    let dir = fixtures().join("../pretok");
    let expected: Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let variants = expected["variants"].as_object().unwrap();
    assert_eq!(variants.len(), 5);
    for (name, want) in variants {
        let tj: Value = serde_json::from_slice(
            &std::fs::read(dir.join(format!("{name}.tokenizer.json"))).unwrap(),
        )
        .unwrap();
        let ids = merge_core::gguf::pretok::check_ids(&tj).unwrap();
        let want_ids: Vec<u32> = want["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, want_ids, "{name}");
        assert_eq!(
            merge_core::gguf::pretok::check_digest(&tj).unwrap(),
            want["sha256"].as_str().unwrap(),
            "{name}"
        );
    }
    // the fixture tokenizer is not in llama.cpp's table: a clear error naming --pre
    let tj: Value =
        serde_json::from_slice(&std::fs::read(dir.join("gpt2.tokenizer.json")).unwrap()).unwrap();
    let e = merge_core::gguf::pretok::recognise(&tj, &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("--pre") && e.contains("428b276b"), "{e}");
}

/// With the provenance keys the converter derived (general.name, general.size_label), every
/// file smelt writes is byte-identical to llama.cpp's: same key order, tensor order, offsets,
/// padding and data.
#[test]
fn whole_files_are_byte_identical() {
    let man = manifest();
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    for (model, pre) in MODELS {
        let m = load_model(model);
        let list: Vec<HfTensor> = m.tensors.iter().map(|(t, _)| t.clone()).collect();
        for file in man["files"].as_array().unwrap() {
            if file["model"].as_str() != Some(model) {
                continue;
            }
            let md = &file["metadata"];
            let ftype = FileType::parse(file["type"].as_str().unwrap()).unwrap();
            let plan = convert::plan(
                &m.dir,
                &m.config,
                &list,
                &PlanOptions {
                    ftype,
                    pre_override: pre.map(String::from),
                    name: md["general.name"].as_str().map(String::from),
                    general: vec![(
                        "general.size_label".into(),
                        GgufValue::String(md["general.size_label"].as_str().unwrap().into()),
                    )],
                },
            )
            .unwrap();
            let path = dir.path().join("f.gguf");
            let layout = GgufLayout::new(&plan.metadata, &plan.specs()).unwrap();
            let w = GgufWriter::create(&path, layout).unwrap();
            for (i, t) in plan.tensors.iter().enumerate() {
                let vals = &m
                    .tensors
                    .iter()
                    .find(|(h, _)| h.name == t.source)
                    .unwrap()
                    .1;
                w.write_tensor(i, &convert::encode_tensor(t, vals).unwrap())
                    .unwrap();
            }
            w.finish().unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(
                bytes.len() as u64,
                file["bytes"].as_u64().unwrap(),
                "{}",
                file["file"]
            );
            assert_eq!(
                hex(&bytes),
                file["sha256"].as_str().unwrap(),
                "{}",
                file["file"]
            );
            n += 1;
        }
    }
    assert_eq!(n, 23);
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
        let r = convert::convert_folder(&src, &a, ftype, pre, 1).unwrap();
        convert::convert_folder(&src, &b, ftype, pre, 2).unwrap();
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
    let e = convert::convert_folder(
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
