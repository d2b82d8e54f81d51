//! The HF → GGUF plan and data against llama.cpp's reference files (tests/fixtures/gguf/model:
//! three tiny HF models and, in manifest.json, every tensor and metadata value of the GGUF files
//! llama.cpp made from them).

use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};
use smelt_gguf::FileType;
use smelt_gguf::convert::{self, GgufPlan, HfTensor, PlanOptions};
use smelt_gguf::file::{GgufFile, GgufLayout, GgufValue, GgufValueType, GgufWriter};

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
        let ids = smelt_gguf::pretok::check_ids(&tj).unwrap();
        let want_ids: Vec<u32> = want["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, want_ids, "{name}");
        assert_eq!(
            smelt_gguf::pretok::check_digest(&tj).unwrap(),
            want["sha256"].as_str().unwrap(),
            "{name}"
        );
    }
    // the fixture tokenizer is not in llama.cpp's table: a clear error naming --pre
    let tj: Value =
        serde_json::from_slice(&std::fs::read(dir.join("gpt2.tokenizer.json")).unwrap()).unwrap();
    let e = smelt_gguf::pretok::recognise(&tj).unwrap_err().to_string();
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

fn synth_tensors(
    layers: usize,
    per_layer: &[(&str, Vec<u64>)],
    extra: &[(&str, Vec<u64>)],
) -> Vec<HfTensor> {
    let mut v: Vec<HfTensor> = extra
        .iter()
        .map(|(n, s)| HfTensor {
            name: n.to_string(),
            shape: s.clone(),
        })
        .collect();
    for l in 0..layers {
        for (n, s) in per_layer {
            v.push(HfTensor {
                name: format!("model.layers.{l}.{n}"),
                shape: s.clone(),
            });
        }
    }
    v
}

/// Plans for the architectures without reference files (gemma, gemma2, qwen3, phi3), checked
/// against spec §3.3/§4.3/§4.5 by hand; the SentencePiece fixture folder supplies the tokenizer.
#[test]
fn other_architectures_plan_by_the_spec() {
    let spm = fixtures().join("gguf-mistral-spm");
    let opts = |ftype| PlanOptions {
        ftype,
        pre_override: None,
        name: Some("x".into()),
        general: Vec::new(),
    };
    let attn = |q: u64, kv: u64| {
        vec![
            ("self_attn.q_proj.weight", vec![q, 256]),
            ("self_attn.k_proj.weight", vec![kv, 256]),
            ("self_attn.v_proj.weight", vec![kv, 256]),
            ("self_attn.o_proj.weight", vec![256, q]),
            ("mlp.gate_proj.weight", vec![512, 256]),
            ("mlp.up_proj.weight", vec![512, 256]),
            ("mlp.down_proj.weight", vec![256, 512]),
            ("input_layernorm.weight", vec![256]),
            ("post_attention_layernorm.weight", vec![256]),
        ]
    };
    let common = serde_json::json!({
        "hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 64,
        "num_hidden_layers": 2, "intermediate_size": 512, "vocab_size": 512,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "bos_token_id": 2, "eos_token_id": 1
    });
    let with = |arch: &str, more: serde_json::Value| {
        let mut c = common.clone();
        c["architectures"] = serde_json::json!([arch]);
        for (k, v) in more.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let embd = [
        ("model.embed_tokens.weight", vec![512u64, 256]),
        ("model.norm.weight", vec![256]),
        ("lm_head.weight", vec![512, 256]),
    ];

    // gemma: norms +1, no output tensor even with lm_head present, add_space_prefix false,
    // CodeGemma ids, no rope.freq_base; tied rule gives token_embd Q6_K.
    let c = with("GemmaForCausalLM", serde_json::json!({}));
    let p = convert::plan(
        &spm,
        &c,
        &synth_tensors(2, &attn(256, 64), &embd),
        &opts(FileType::Q4_K_M),
    )
    .unwrap();
    assert!(p.tensors.iter().all(|t| t.name != "output.weight"));
    let norm = p
        .tensors
        .iter()
        .find(|t| t.name == "blk.1.attn_norm.weight")
        .unwrap();
    assert_eq!(norm.transform, smelt_gguf::arch::Transform::AddOne);
    let te = p
        .tensors
        .iter()
        .find(|t| t.name == "token_embd.weight")
        .unwrap();
    assert_eq!(te.ty.name(), "Q6_K");
    assert_eq!(
        p.get("gemma.attention.key_length"),
        Some(&GgufValue::U32(64))
    );
    assert_eq!(
        p.get("gemma.attention.head_count_kv"),
        Some(&GgufValue::U32(1))
    );
    assert_eq!(
        p.get("gemma.attention.layer_norm_rms_epsilon"),
        Some(&GgufValue::F32(1e-6))
    );
    assert!(p.get("gemma.rope.freq_base").is_none());
    assert_eq!(
        p.get("tokenizer.ggml.add_space_prefix"),
        Some(&GgufValue::Bool(false))
    );
    assert_eq!(
        p.get("tokenizer.ggml.eot_token_id"),
        Some(&GgufValue::U32(107))
    );
    // ids from tokenizer_config.json (<s> = 1) win over config.json's bos_token_id 2
    assert_eq!(
        p.get("tokenizer.ggml.bos_token_id"),
        Some(&GgufValue::U32(1))
    );

    // gemma2: four norms per layer, softcapping and sliding window keys
    let mut g2 = attn(256, 64);
    g2.retain(|(n, _)| *n != "post_attention_layernorm.weight");
    g2.push(("post_attention_layernorm.weight", vec![256]));
    g2.push(("pre_feedforward_layernorm.weight", vec![256]));
    g2.push(("post_feedforward_layernorm.weight", vec![256]));
    let c = with(
        "Gemma2ForCausalLM",
        serde_json::json!({"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "sliding_window": 4096}),
    );
    let p = convert::plan(
        &spm,
        &c,
        &synth_tensors(2, &g2, &embd),
        &opts(FileType::F16),
    )
    .unwrap();
    for n in [
        "attn_norm",
        "post_attention_norm",
        "ffn_norm",
        "post_ffw_norm",
    ] {
        let t = p
            .tensors
            .iter()
            .find(|t| t.name == format!("blk.0.{n}.weight"))
            .unwrap();
        assert_eq!(t.transform, smelt_gguf::arch::Transform::AddOne, "{n}");
        assert_eq!(t.ty.name(), "F32");
    }
    assert_eq!(
        p.get("gemma2.attn_logit_softcapping"),
        Some(&GgufValue::F32(50.0))
    );
    assert_eq!(
        p.get("gemma2.attention.sliding_window"),
        Some(&GgufValue::U32(4096))
    );

    // qwen3: q/k norms, no permutation, head_dim keys
    let mut q3 = attn(256, 64);
    q3.push(("self_attn.q_norm.weight", vec![64]));
    q3.push(("self_attn.k_norm.weight", vec![64]));
    let c = with(
        "Qwen3ForCausalLM",
        serde_json::json!({"tie_word_embeddings": false}),
    );
    let p = convert::plan(
        &spm,
        &c,
        &synth_tensors(2, &q3, &embd),
        &opts(FileType::Q8_0),
    )
    .unwrap();
    let qn = p
        .tensors
        .iter()
        .find(|t| t.name == "blk.1.attn_q_norm.weight")
        .unwrap();
    assert_eq!(qn.ty.name(), "F32");
    let q = p
        .tensors
        .iter()
        .find(|t| t.name == "blk.0.attn_q.weight")
        .unwrap();
    assert_eq!(q.transform, smelt_gguf::arch::Transform::None);
    assert_eq!(
        p.get("qwen3.attention.value_length"),
        Some(&GgufValue::U32(64))
    );
    assert_eq!(
        p.get("qwen3.rope.freq_base"),
        Some(&GgufValue::F32(10000.0))
    );
    assert!(
        p.tensors
            .iter()
            .any(|t| t.name == "output.weight" && t.ty.name() == "Q8_0")
    );

    // phi3: fused qkv / gate_up; Q4_K_M treats attn_qkv like attn_v (§3.7): layer 1 of 2 is Q6_K
    let phi = vec![
        ("self_attn.qkv_proj.weight", vec![768u64, 256]),
        ("self_attn.o_proj.weight", vec![256, 256]),
        ("mlp.gate_up_proj.weight", vec![1024, 256]),
        ("mlp.down_proj.weight", vec![256, 512]),
        ("input_layernorm.weight", vec![256]),
        ("post_attention_layernorm.weight", vec![256]),
    ];
    let c = with(
        "Phi3ForCausalLM",
        serde_json::json!({"num_key_value_heads": 4, "original_max_position_embeddings": 4096, "sliding_window": 2047}),
    );
    let p = convert::plan(
        &spm,
        &c,
        &synth_tensors(2, &phi, &embd),
        &opts(FileType::Q4_K_M),
    )
    .unwrap();
    let ty = |n: &str| p.tensors.iter().find(|t| t.name == n).unwrap().ty.name();
    assert_eq!(ty("blk.0.attn_qkv.weight"), "Q4_K");
    assert_eq!(ty("blk.1.attn_qkv.weight"), "Q6_K");
    assert_eq!(ty("blk.1.ffn_up.weight"), "Q4_K");
    assert_eq!(ty("blk.1.ffn_down.weight"), "Q6_K");
    assert_eq!(
        p.get("phi3.rope.dimension_count"),
        Some(&GgufValue::U32(64))
    );
    assert_eq!(
        p.get("phi3.attention.sliding_window"),
        Some(&GgufValue::U32(2047))
    );
    assert!(p.tensors.iter().all(|t| !t.name.contains("ffn_gate")));

    // unsupported architecture: clear error listing the supported ones
    let c = with("FalconForCausalLM", serde_json::json!({}));
    let e = convert::plan(&spm, &c, &[], &opts(FileType::F16))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("FalconForCausalLM") && e.contains("Qwen2ForCausalLM"),
        "{e}"
    );
    // llama-3.1 rope: rope_freqs.weight generated first, F32
    let c = with(
        "LlamaForCausalLM",
        serde_json::json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}, "rope_theta": 500000.0}),
    );
    let p = convert::plan(
        &spm,
        &c,
        &synth_tensors(1, &attn(256, 64), &embd),
        &opts(FileType::F16),
    )
    .unwrap();
    assert_eq!(p.tensors[0].name, "rope_freqs.weight");
    assert_eq!(p.tensors[0].dims, vec![32]);
    assert_eq!(p.generated_values("rope_freqs.weight").unwrap().len(), 32);
    assert!(p.get("llama.rope.scaling.type").is_none());
}

/// The SentencePiece path without `added_tokens_decoder` (reference:
/// `models.gguf-mistral-spm.converter_without_added_tokens_decoder` in the manifest) and with
/// the vocabulary padded to 516 ids (fixture README).
#[test]
fn spm_variants_match_reference() {
    use smelt_gguf::tokenizer::{SpModel, TokenizerOptions, tokenizer_metadata};
    let man = manifest();
    let src = fixtures().join("gguf-mistral-spm");
    let sp = SpModel::parse(&std::fs::read(src.join("tokenizer.model")).unwrap()).unwrap();
    // trainer/normalizer facts from the fixture README
    assert_eq!(sp.pieces.len(), 512);
    assert_eq!(sp.model_type, Some(2));
    assert!(sp.byte_fallback);
    assert!(sp.add_dummy_prefix);
    assert!(!sp.remove_extra_whitespaces);
    assert_eq!(sp.pieces[3].piece, "<0x00>");
    assert_eq!(sp.pieces[3].kind, 6);

    let dir = tempfile::tempdir().unwrap();
    for f in [
        "tokenizer.model",
        "tokenizer.json",
        "special_tokens_map.json",
        "config.json",
    ] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let mut tc: Value =
        serde_json::from_slice(&std::fs::read(src.join("tokenizer_config.json")).unwrap()).unwrap();
    tc.as_object_mut().unwrap().remove("added_tokens_decoder");
    std::fs::write(dir.path().join("tokenizer_config.json"), tc.to_string()).unwrap();
    let config: Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    let md = tokenizer_metadata(dir.path(), &config, &TokenizerOptions::default()).unwrap();
    let want = man["models"]["gguf-mistral-spm"]["converter_without_added_tokens_decoder"]
        ["array_payload_sha256"]
        .as_object()
        .unwrap();
    for (key, sha) in want {
        let v = &md.kvs.iter().find(|(k, _)| k == key).unwrap().1;
        assert_eq!(
            hex(&v.array_payload().unwrap()),
            sha.as_str().unwrap(),
            "{key}"
        );
    }

    let md = tokenizer_metadata(
        &src,
        &config,
        &TokenizerOptions {
            n_vocab: Some(516),
            ..TokenizerOptions::default()
        },
    )
    .unwrap();
    let get = |k: &str| {
        md.kvs
            .iter()
            .find(|(kk, _)| kk == k)
            .unwrap()
            .1
            .as_array()
            .unwrap()
            .to_vec()
    };
    let (tokens, types, scores) = (
        get("tokenizer.ggml.tokens"),
        get("tokenizer.ggml.token_type"),
        get("tokenizer.ggml.scores"),
    );
    assert_eq!(tokens.len(), 516);
    let tail: Vec<(String, u64, f32)> = (510..516)
        .map(|i| {
            let GgufValue::F32(s) = scores[i] else {
                panic!()
            };
            (
                tokens[i].as_str().unwrap().to_string(),
                types[i].as_u64().unwrap(),
                s,
            )
        })
        .collect();
    assert_eq!(
        tail,
        vec![
            ("ç".to_string(), 1, -251.0),
            ("Z".to_string(), 1, -252.0),
            ("[PAD512]".to_string(), 5, -10000.0),
            ("[PAD513]".to_string(), 5, -10000.0),
            ("[PAD514]".to_string(), 5, -10000.0),
            ("[PAD515]".to_string(), 5, -10000.0),
        ]
    );
}
