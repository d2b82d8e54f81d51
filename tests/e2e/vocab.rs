//! Vocabulary merging (mergekit §4.1–4.6) end to end: tiny models with differing
//! vocabularies are cut from the fixture tiny-llama models (64 real BPE tokens; a "chatml"
//! model adding `<|im_start|>`/`<|im_end|>`; a "padded" model whose tokenizer lists 4 tokens
//! beyond its vocab_size), merged with the tokenizer options, and every output row checked
//! against values computed here from the input tensors.

use std::path::{Path, PathBuf};

use serde_json::{Value as Json, json};

use crate::util::*;

const H: usize = 64;
const EMBED: &str = "model.embed_tokens.weight";
const HEAD: &str = "lm_head.weight";

/// A test model: `src` fixture weights with `rows` embedding rows, the fixture tokenizer cut
/// to its first `keep` ids (`rename` replaces tokens of the model vocabulary), plus `added`
/// tokens, and config `vocab_size`.
struct Spec<'a> {
    src: &'a str,
    rows: usize,
    vocab_size: usize,
    keep: usize,
    rename: &'a [(usize, &'a str)],
    added: &'a [(usize, &'a str)],
    chat_template: Option<&'a str>,
}

fn make_model(dir: &Path, s: &Spec) {
    let fx = fixtures().join("models/tiny-llama").join(s.src);
    std::fs::create_dir_all(dir).unwrap();
    let tensors = read_safetensors(&fx.join("model.safetensors"));
    let ts: Vec<T> = tensors
        .iter()
        .map(|(name, (dtype, shape, bytes))| {
            assert_eq!(dtype, "F32");
            if name == EMBED || name == HEAD {
                T {
                    name: name.clone(),
                    dtype: "F32",
                    shape: vec![s.rows, H],
                    data: bytes[..s.rows * H * 4].to_vec(),
                }
            } else {
                T {
                    name: name.clone(),
                    dtype: "F32",
                    shape: shape.clone(),
                    data: bytes.clone(),
                }
            }
        })
        .collect();
    save(dir, &ts);
    let mut cfg: Json =
        serde_json::from_str(&std::fs::read_to_string(fx.join("config.json")).unwrap()).unwrap();
    cfg["vocab_size"] = json!(s.vocab_size);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let mut tok: Json =
        serde_json::from_str(&std::fs::read_to_string(fx.join("tokenizer.json")).unwrap()).unwrap();
    let mut kept: Vec<(String, u64)> = tok["model"]["vocab"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .filter(|(_, id)| (*id as usize) < s.keep)
        .collect();
    for (id, t) in s.rename {
        kept.iter_mut().find(|(_, i)| *i as usize == *id).unwrap().0 = t.to_string();
    }
    let vocab: serde_json::Map<String, Json> =
        kept.iter().map(|(k, id)| (k.clone(), json!(id))).collect();
    let names: std::collections::HashSet<&String> = kept.iter().map(|(k, _)| k).collect();
    let merges: Vec<Json> = tok["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| {
            let parts: Vec<String> = match m {
                Json::String(x) => x.split(' ').map(String::from).collect(),
                Json::Array(a) => a.iter().map(|x| x.as_str().unwrap().to_string()).collect(),
                _ => unreachable!(),
            };
            parts.iter().all(|p| names.contains(p)) && names.contains(&parts.concat())
        })
        .cloned()
        .collect();
    tok["model"]["vocab"] = Json::Object(vocab);
    tok["model"]["merges"] = Json::Array(merges);
    let mut added: Vec<Json> = tok["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| (e["id"].as_u64().unwrap() as usize) < s.keep)
        .cloned()
        .collect();
    for (id, c) in s.added {
        added.push(
            json!({"id": id, "content": c, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true}),
        );
    }
    tok["added_tokens"] = Json::Array(added);
    std::fs::write(
        dir.join("tokenizer.json"),
        serde_json::to_string_pretty(&tok).unwrap(),
    )
    .unwrap();
    let mut tc: Json =
        serde_json::from_str(&std::fs::read_to_string(fx.join("tokenizer_config.json")).unwrap())
            .unwrap();
    if let Some(t) = s.chat_template {
        tc["chat_template"] = json!(t);
    }
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
    std::fs::copy(
        fx.join("special_tokens_map.json"),
        dir.join("special_tokens_map.json"),
    )
    .unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"do_sample": false}"#,
    )
    .unwrap();
}

const CHATML_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}";

/// The §4.5 family: base (64), chatml (66: `<|im_start|>` 64, `<|im_end|>` 65), padded
/// (vocab_size 64, 4 added tokens at 64..67), and "extra" (`]` at 63 replaced by the
/// ordinary token `a`, `<|im_end|>` added at 64).
fn family(root: &Path) -> [PathBuf; 4] {
    let b = root.join("base");
    make_model(
        &b,
        &Spec {
            src: "base",
            rows: 64,
            vocab_size: 64,
            keep: 64,
            rename: &[],
            added: &[],
            chat_template: None,
        },
    );
    let c = root.join("chatml");
    make_model(
        &c,
        &Spec {
            src: "ft1",
            rows: 66,
            vocab_size: 66,
            keep: 64,
            rename: &[],
            added: &[(64, "<|im_start|>"), (65, "<|im_end|>")],
            chat_template: Some(CHATML_TEMPLATE),
        },
    );
    let p = root.join("padded");
    make_model(
        &p,
        &Spec {
            src: "ft2",
            rows: 64,
            vocab_size: 64,
            keep: 64,
            rename: &[],
            added: &[
                (64, "<pad0>"),
                (65, "<pad1>"),
                (66, "<pad2>"),
                (67, "<pad3>"),
            ],
            chat_template: None,
        },
    );
    let x = root.join("extra");
    make_model(
        &x,
        &Spec {
            src: "ft3",
            rows: 65,
            vocab_size: 65,
            keep: 64,
            rename: &[(63, "a")],
            added: &[(64, "<|im_end|>")],
            chat_template: None,
        },
    );
    [b, c, p, x]
}

fn matrix(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = read_safetensors(path);
    let (_, shape, bytes) = &t[name];
    let v = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (shape.clone(), v)
}

fn row(m: &[f32], r: usize) -> Vec<f64> {
    m[r * H..(r + 1) * H].iter().map(|&x| x as f64).collect()
}

fn mean(rows: &[Vec<f64>]) -> Vec<f64> {
    (0..H)
        .map(|c| rows.iter().map(|r| r[c]).sum::<f64>() / rows.len() as f64)
        .collect()
}

fn assert_row(out: &[f32], r: usize, want: &[f64], what: &str) {
    for (c, w) in want.iter().enumerate() {
        let got = out[r * H + c] as f64;
        assert!(
            (got - w).abs() <= 1e-6 + 1e-5 * w.abs(),
            "{what}: row {r} col {c}: {got} vs {w}"
        );
    }
}

fn linear3(root: &Path, models: &[&PathBuf], extra: &str) -> PathBuf {
    let mut text = String::from("merge_method: linear\ndtype: float32\nmodels:\n");
    for m in models {
        text.push_str(&format!(
            "  - model: {}\n    parameters:\n      weight: 1.0\n",
            m.display()
        ));
    }
    text.push_str(extra);
    std::fs::write(root.join("r.yml"), text).unwrap();
    root.join("r.yml")
}

fn run_ok(recipe: &Path, out: &Path, extra: &[&str]) -> String {
    let o = smelt()
        .arg("run")
        .args(extra)
        .arg(recipe)
        .arg(out)
        .output()
        .unwrap();
    assert_ok(&o)
}

fn tokens(out: &Path) -> Vec<(String, usize)> {
    let t: Json =
        serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer.json")).unwrap())
            .unwrap();
    let mut v: Vec<(String, usize)> = t["model"]["vocab"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap() as usize))
        .collect();
    for e in t["added_tokens"].as_array().unwrap() {
        let c = e["content"].as_str().unwrap().to_string();
        if !v.iter().any(|(k, _)| *k == c) {
            v.push((c, e["id"].as_u64().unwrap() as usize));
        }
    }
    v.sort_by_key(|(_, id)| *id);
    v
}

fn config(out: &Path) -> Json {
    serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap()
}

#[test]
fn union_of_64_and_66_gives_66_rows_with_the_chatml_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let [b, c, p, _] = family(tmp.path());
    let r = linear3(tmp.path(), &[&b, &c, &p], "tokenizer_source: union\n");
    let out = tmp.path().join("out");
    let err = run_ok(&r, &out, &["--threads", "1"]);
    assert!(err.contains("left out of the union"), "{err}");
    let toks = tokens(&out);
    assert_eq!(toks.len(), 66, "padded model's unused tokens are dropped");
    assert_eq!(toks[64].0, "<|im_start|>");
    assert_eq!(toks[65].0, "<|im_end|>");
    assert!(!toks.iter().any(|(t, _)| t.starts_with("<pad")));
    assert_eq!(config(&out)["vocab_size"], 66);
    assert!(
        !out.join("generation_config.json").exists(),
        "not copied with a built tokenizer"
    );
    assert!(
        out.join("tokenizer_config.json").is_file()
            && out.join("special_tokens_map.json").is_file()
    );
    for name in [EMBED, HEAD] {
        let (shape, o) = matrix(&out.join("model.safetensors"), name);
        assert_eq!(shape, [66, H]);
        let mb = matrix(&b.join("model.safetensors"), name).1;
        let mc = matrix(&c.join("model.safetensors"), name).1;
        let mp = matrix(&p.join("model.safetensors"), name).1;
        // only the chatml model has them: every model takes its rows, so the merge is them
        assert_row(&o, 64, &row(&mc, 64), name);
        assert_row(&o, 65, &row(&mc, 65), name);
        for r in [0, 5, 63] {
            assert_row(&o, r, &mean(&[row(&mb, r), row(&mc, r), row(&mp, r)]), name);
        }
    }
    // `smelt plan` shows the built vocabulary and the remapped shapes
    let o = smelt().arg("plan").arg(&r).output().unwrap();
    assert_ok(&o);
    let plan = stdout(&o);
    assert!(
        plan.contains("vocab_size 66") && plan.contains("[66, 64]"),
        "{plan}"
    );
    // the same bytes at another thread count
    let out2 = tmp.path().join("out2");
    run_ok(&r, &out2, &["--threads", "2"]);
    let h1: Vec<_> = dir_hashes(&out)
        .into_iter()
        .filter(|(n, _)| n != "smelt.lock" && n != "README.md")
        .collect();
    let h2: Vec<_> = dir_hashes(&out2)
        .into_iter()
        .filter(|(n, _)| n != "smelt.lock" && n != "README.md")
        .collect();
    assert_eq!(h1, h2);
}

#[test]
fn pad_to_multiple_of_16_gives_80_rows_of_model_means() {
    let tmp = tempfile::tempdir().unwrap();
    let [b, c, p, _] = family(tmp.path());
    let r = linear3(
        tmp.path(),
        &[&b, &c, &p],
        "tokenizer:\n  source: union\n  pad_to_multiple_of: 16\n",
    );
    let out = tmp.path().join("out");
    run_ok(&r, &out, &[]);
    assert_eq!(config(&out)["vocab_size"], 80);
    assert_eq!(tokens(&out).len(), 66);
    let (shape, o) = matrix(&out.join("model.safetensors"), EMBED);
    assert_eq!(shape, [80, H]);
    // each model's remapped 66 rows: its own, the chatml rows for the two new tokens
    let mc = matrix(&c.join("model.safetensors"), EMBED).1;
    let remapped = |m: &[f32]| -> Vec<Vec<f64>> {
        (0..66)
            .map(|r| if r < 64 { row(m, r) } else { row(&mc, r) })
            .collect()
    };
    let pads: Vec<Vec<f64>> = [&b, &c, &p]
        .iter()
        .map(|d| mean(&remapped(&matrix(&d.join("model.safetensors"), EMBED).1)))
        .collect();
    let want = mean(&pads);
    for r in 66..80 {
        assert_row(&o, r, &want, "padding");
    }
    assert_row(&o, 64, &row(&mc, 64), "im_start");
    // the one-pass GGUF route reads the built tokenizer (66 tokens for 80 rows)
    let g = tmp.path().join("gguf");
    run_ok(&r, &g, &["--gguf", "q8_0", "--pre", "gpt-2"]);
    let files: Vec<String> = dir_hashes(&g).into_iter().map(|(n, _)| n).collect();
    assert!(files.iter().any(|n| n.ends_with(".gguf")), "{files:?}");
    assert!(files.contains(&"tokenizer.json".to_string()), "{files:?}");
}

#[test]
fn default_embedding_rules_base_single_donor_and_mean() {
    let tmp = tempfile::tempdir().unwrap();
    let [b, c, _, x] = family(tmp.path());
    let r = linear3(
        tmp.path(),
        &[&b, &c, &x],
        &format!("base_model: {}\ntokenizer_source: union\n", b.display()),
    );
    let out = tmp.path().join("out");
    run_ok(&r, &out, &[]);
    let toks = tokens(&out);
    // ordinary tokens first, then added ones, in encounter order after the base vocabulary
    let names: Vec<&str> = toks[63..].iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(names, ["]", "a", "<|im_start|>", "<|im_end|>"]);
    let (_, o) = matrix(&out.join("model.safetensors"), EMBED);
    let mb = matrix(&b.join("model.safetensors"), EMBED).1;
    let mc = matrix(&c.join("model.safetensors"), EMBED).1;
    let mx = matrix(&x.join("model.safetensors"), EMBED).1;
    // `]`: the extra model lacks it; the base has it → base row for the extra model
    assert_row(
        &o,
        63,
        &mean(&[row(&mb, 63), row(&mc, 63), row(&mb, 63)]),
        "base rule",
    );
    // `a`: only the extra model (row 63) → its row everywhere
    assert_row(&o, 64, &row(&mx, 63), "single donor");
    // `<|im_start|>`: only chatml
    assert_row(&o, 65, &row(&mc, 64), "single donor");
    // `<|im_end|>`: chatml (65) and extra (64), not the base → their mean for the base
    let m = mean(&[row(&mc, 65), row(&mx, 64)]);
    assert_row(
        &o,
        66,
        &mean(&[m.clone(), row(&mc, 65), row(&mx, 64)]),
        "mean rule",
    );
}

#[test]
fn configured_tokens_zero_force_model_and_model_token() {
    let tmp = tempfile::tempdir().unwrap();
    let [b, c, p, _] = family(tmp.path());
    let tail = format!(
        "tokenizer:\n  source: base\n  tokens:\n    \"<new>\":\n      source: {{kind: zero}}\n    \"<s>\":\n      source: {{kind: model_token, model: {c}, token: \"<|im_start|>\"}}\n      force: true\n    \"<|im_end|>\":\n      source: {c}\n    \"<x>\":\n      source: {{kind: model_token, model: {p}, token_id: 10}}\n",
        c = c.display(),
        p = p.display()
    );
    let r = linear3(tmp.path(), &[&b, &c, &p], &tail);
    let out = tmp.path().join("out");
    run_ok(&r, &out, &[]);
    let toks = tokens(&out);
    let names: Vec<&str> = toks[64..].iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(names, ["<new>", "<|im_end|>", "<x>"]);
    assert_eq!(toks[1].0, "<s>");
    assert_eq!(config(&out)["vocab_size"], 67);
    let (shape, o) = matrix(&out.join("model.safetensors"), EMBED);
    assert_eq!(shape, [67, H]);
    let mb = matrix(&b.join("model.safetensors"), EMBED).1;
    let mc = matrix(&c.join("model.safetensors"), EMBED).1;
    let mp = matrix(&p.join("model.safetensors"), EMBED).1;
    assert!(o[64 * H..65 * H].iter().all(|&v| v == 0.0), "zero source");
    assert_row(
        &o,
        1,
        &row(&mc, 64),
        "forced <s> = chatml's <|im_start|> row",
    );
    assert_row(&o, 65, &row(&mc, 65), "<|im_end|> from the chatml model");
    assert_row(&o, 66, &row(&mp, 10), "<x> = padded model's row 10");
    assert_row(
        &o,
        5,
        &mean(&[row(&mb, 5), row(&mc, 5), row(&mp, 5)]),
        "untouched",
    );
}

#[test]
fn token_beyond_vocab_size_falls_back_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let [b, c, p, _] = family(tmp.path());
    // the padded model's own tokenizer, unstripped: 68 tokens, 4 of them beyond its 64 rows
    let r = linear3(
        tmp.path(),
        &[&b, &c, &p],
        &format!("tokenizer_source: {}\n", p.display()),
    );
    let out = tmp.path().join("out");
    let err = run_ok(&r, &out, &[]);
    assert!(err.contains("KeyError") && err.contains("<pad0>"), "{err}");
    assert!(err.contains("in no input model"), "{err}");
    assert_eq!(config(&out)["vocab_size"], 68);
    let (shape, o) = matrix(&out.join("model.safetensors"), EMBED);
    assert_eq!(shape, [68, H]);
    assert!(o[64 * H..].iter().all(|&v| v == 0.0));
}

#[test]
fn without_a_tokenizer_option_embeddings_are_cropped_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let [b, c, _, _] = family(tmp.path());
    let r = linear3(tmp.path(), &[&b, &c], "");
    let out = tmp.path().join("out");
    let err = run_ok(&r, &out, &[]);
    assert!(
        err.contains(EMBED) && err.contains("[64, 64]") && err.contains("[66, 64]"),
        "{err}"
    );
    let (shape, _) = matrix(&out.join("model.safetensors"), EMBED);
    assert_eq!(shape, [64, H]);
    assert_eq!(
        config(&out)["vocab_size"],
        64,
        "not updated (§10 gotcha 13)"
    );
    assert!(
        out.join("generation_config.json").is_file(),
        "copied from the donor"
    );
}

#[test]
fn chat_templates_builtin_auto_literal_and_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let [b, c, p, _] = family(tmp.path());
    let tc = |out: &Path| -> Json {
        serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap())
            .unwrap()
    };
    // built-in, with a built tokenizer
    let r = linear3(
        tmp.path(),
        &[&b, &c, &p],
        "tokenizer_source: base\nchat_template: chatml\n",
    );
    let out = tmp.path().join("builtin");
    run_ok(&r, &out, &[]);
    let t = tc(&out)["chat_template"].as_str().unwrap().to_string();
    assert!(
        t.contains("<|im_start|>") && t.contains("add_generation_prompt"),
        "{t}"
    );
    // auto: the only model with a template is the chatml one
    let r = linear3(
        tmp.path(),
        &[&b, &c, &p],
        "tokenizer_source: union\nchat_template: auto\n",
    );
    let out = tmp.path().join("auto");
    run_ok(&r, &out, &[]);
    assert_eq!(tc(&out)["chat_template"], CHATML_TEMPLATE.trim());
    // a literal template without a tokenizer option: the donor's files are copied with it,
    // and generation_config.json is not
    let lit = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% endfor %}";
    // (one model: a model listed twice is an error, as in mergekit)
    let r = linear3(tmp.path(), &[&b], &format!("chat_template: \"{lit}\"\n"));
    let out = tmp.path().join("literal");
    run_ok(&r, &out, &[]);
    assert_eq!(tc(&out)["chat_template"], lit);
    assert_eq!(tc(&out)["bos_token"], "<s>", "the donor's config otherwise");
    assert!(!out.join("generation_config.json").exists());
    // invalid literal
    let r = linear3(tmp.path(), &[&b, &c], "chat_template: \"{{ x }}\"\n");
    let o = smelt().arg("check").arg(&r).output().unwrap();
    assert_fails(&o, &["Invalid chat template", "chatml", "line"]);
}

#[test]
fn tokenizer_option_errors_name_the_key_or_model() {
    let tmp = tempfile::tempdir().unwrap();
    let [b, c, _, _] = family(tmp.path());
    let r = linear3(tmp.path(), &[&b, &c], "tokenizer:\n  sorce: base\n");
    let o = smelt().arg("check").arg(&r).output().unwrap();
    assert_fails(&o, &["`sorce`", "source, pad_to_multiple_of, tokens"]);
    let r = linear3(
        tmp.path(),
        &[&b, &c],
        "tokenizer:\n  tokens:\n    \"<y>\":\n      source: elsewhere/model\n",
    );
    let o = smelt()
        .args(["run", "--quiet"])
        .arg(&r)
        .arg(tmp.path().join("o1"))
        .output()
        .unwrap();
    assert_fails(&o, &["elsewhere/model", "not part of the merge"]);
    let o = smelt().arg("check").arg(&r).output().unwrap();
    assert_fails(&o, &["elsewhere/model", "not part of the merge", "line"]);
    // a model source that lacks the token
    let r = linear3(
        tmp.path(),
        &[&b, &c],
        &format!(
            "tokenizer:\n  source: union\n  tokens:\n    \"<|im_start|>\":\n      source: {}\n      force: true\n",
            b.display()
        ),
    );
    let o = smelt()
        .args(["run", "--quiet"])
        .arg(&r)
        .arg(tmp.path().join("o2"))
        .output()
        .unwrap();
    assert_fails(&o, &["<|im_start|>", "is not in model"]);
    assert_no_output(tmp.path(), "o2");
}

#[test]
fn slices_remap_the_first_and_last_slices_sources() {
    let tmp = tempfile::tempdir().unwrap();
    let [b, c, _, _] = family(tmp.path());
    // embeddings from the chatml model (first slice), the head from the base (last slice)
    let text = format!(
        "merge_method: passthrough\ndtype: float32\ntokenizer_source: union\nslices:\n  - sources:\n      - model: {c}\n        layer_range: [0, 2]\n  - sources:\n      - model: {b}\n        layer_range: [2, 4]\n",
        c = c.display(),
        b = b.display()
    );
    std::fs::write(tmp.path().join("s.yml"), text).unwrap();
    let out = tmp.path().join("out");
    let err = run_ok(&tmp.path().join("s.yml"), &out, &[]);
    assert_eq!(config(&out)["vocab_size"], 66);
    let (shape, e) = matrix(&out.join("model.safetensors"), EMBED);
    assert_eq!(shape, [66, H]);
    let mc = matrix(&c.join("model.safetensors"), EMBED).1;
    assert_row(&e, 64, &row(&mc, 64), "embedding from the chatml model");
    // the base alone gives the head: it has neither chat token → zero rows, with a warning
    let (shape, h) = matrix(&out.join("model.safetensors"), HEAD);
    assert_eq!(shape, [66, H]);
    assert!(h[64 * H..].iter().all(|&v| v == 0.0));
    let mb = matrix(&b.join("model.safetensors"), HEAD).1;
    assert_row(&h, 7, &row(&mb, 7), "the base's own head row");
    assert!(err.contains("in no input model"), "{err}");
}
