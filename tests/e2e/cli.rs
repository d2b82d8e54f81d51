//! The CLI surface: check, plan, inspect, help, mergekit flags, the output layout.

use crate::util::*;

#[test]
fn check_lints_without_opening_models() {
    let tmp = tempfile::tempdir().unwrap();
    // the models do not exist: check must not care
    let r = recipe(
        tmp.path(),
        "name: x\nmerge_method: linear\nmodels:\n  - model: nowhere/a\n    parameters: {weight: 1}\n",
    );
    let o = run(&["check", r.to_str().unwrap()]);
    let e = assert_ok(&o);
    assert!(
        stdout(&o).contains("ok (linear merge of 1 models"),
        "{}",
        stdout(&o)
    );
    let _ = e;
    let r = recipe(
        tmp.path(),
        "merge_method: linear\nmodels:\n  - model: nowhere/a\n    parameters: {weight: [1, x]}\n",
    );
    assert_fails(
        &run(&["check", r.to_str().unwrap()]),
        &["parameter `weight`", "\"x\""],
    );
    let r = recipe(
        tmp.path(),
        "merge_method: linear\nmodels:\n  - model: a\n    parameters: {normalize: false, weight: 1}\n",
    );
    let o = run(&["check", r.to_str().unwrap()]);
    assert!(assert_ok(&o).contains("`normalize` is global"));
}

#[test]
fn check_accepts_every_fixture_recipe_it_supports() {
    let fx = fixtures();
    for name in [
        "linear_weighted",
        "linear_nonorm_f16out",
        "passthrough_frankenmerge",
    ] {
        assert_ok(&run(&[
            "check",
            fx.join(format!("recipes/{name}.yml")).to_str().unwrap(),
        ]));
    }
}

#[test]
fn plan_shows_tensors_sources_and_sizes() {
    let fx = fixtures();
    let o = smelt()
        .current_dir(&fx)
        .args(["plan", "recipes/passthrough_frankenmerge.yml", "--all"])
        .output()
        .unwrap();
    assert_ok(&o);
    let s = stdout(&o);
    assert!(s.contains("method: passthrough"), "{s}");
    assert!(s.contains("6 output layers"), "{s}");
    // output layer 3 comes from ft1's layer 1
    assert!(
        s.contains("model.layers.3.mlp.up_proj.weight")
            && s.contains(":model.layers.1.mlp.up_proj.weight"),
        "{s}"
    );
    assert!(s.contains("reads") && s.contains("writes"), "{s}");
}

#[test]
fn inspect_lists_tensors() {
    let fx = fixtures();
    let o = run(&[
        "inspect",
        fx.join("models/tiny-llama/base").to_str().unwrap(),
    ]);
    assert_ok(&o);
    let s = stdout(&o);
    assert!(
        s.contains("39 tensors")
            && s.contains("model.embed_tokens.weight")
            && s.contains("[512, 64]"),
        "{s}"
    );
    assert!(s.contains("LlamaForCausalLM"), "{s}");
}

#[test]
fn output_layout_and_small_files() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    let o = smelt()
        .args([
            "run",
            "--quiet",
            "--out-shard-size",
            "200k",
            "--lazy-unpickle",
        ])
        .arg(fx.join("recipes/passthrough_frankenmerge.yml"))
        .arg(&out)
        .output()
        .unwrap();
    let e = assert_ok(&o);
    assert!(e.contains("--lazy-unpickle is accepted"), "{e}");
    let idx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let map = idx["weight_map"].as_object().unwrap();
    assert_eq!(map.len(), 57);
    let shards: std::collections::BTreeSet<&str> =
        map.values().map(|v| v.as_str().unwrap()).collect();
    assert!(shards.len() > 1);
    for s in &shards {
        assert!(
            s.starts_with("model-0000") && s.contains(&format!("-of-{:05}", shards.len())),
            "{s}"
        );
        let b = std::fs::read(out.join(s)).unwrap();
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        assert_eq!((8 + n) % 8, 0, "data section aligned");
        let h: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
        assert_eq!(h["__metadata__"]["format"], "pt");
    }
    let total: u64 = idx["metadata"]["total_size"].as_u64().unwrap();
    assert_eq!(total, 287552 * 2);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["num_hidden_layers"], 6);
    assert_eq!(cfg["dtype"], "float16");
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "mergekit_config.yml",
        "README.md",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        card.contains("Passthrough") && card.contains("layer_range: [0, 3]"),
        "{card}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("mergekit_config.yml")).unwrap(),
        std::fs::read_to_string(fx.join("recipes/passthrough_frankenmerge.yml")).unwrap()
    );
}

#[test]
fn no_copy_tokenizer_and_no_card() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    assert_ok(
        &smelt()
            .args([
                "run",
                "--quiet",
                "--no-copy-tokenizer",
                "--no-write-model-card",
            ])
            .arg(fx.join("recipes/linear_weighted.yml"))
            .arg(&out)
            .output()
            .unwrap(),
    );
    assert!(!out.join("tokenizer.json").exists() && !out.join("README.md").exists());
    assert!(out.join("config.json").exists() && out.join("model.safetensors").exists());
}

#[test]
fn help_lists_subcommands() {
    let o = run(&["--help"]);
    let s = stdout(&o);
    for c in ["run", "plan", "check", "inspect"] {
        assert!(s.contains(c), "{s}");
    }
    let o = run(&["run", "--help"]);
    assert!(stdout(&o).contains("--out-shard-size"));
}

#[test]
fn hub_ids_resolve_offline_in_the_local_cache() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = tmp.path().join("hub/models--tiny-org--tiny-llama");
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    for f in std::fs::read_dir(fx.join("models/tiny-llama/ft1")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, snap.join(f.file_name().unwrap())).unwrap();
    }
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let r = recipe(
        tmp.path(),
        "merge_method: passthrough\nmodels:\n  - model: tiny-org/tiny-llama\n",
    );
    let out = tmp.path().join("out");
    let o = smelt()
        .env("HF_HUB_CACHE", tmp.path().join("hub"))
        .args(["run", "-q", r.to_str().unwrap(), out.to_str().unwrap()])
        .output()
        .unwrap();
    assert_ok(&o);
    assert_eq!(
        read_safetensors(&out.join("model.safetensors")),
        read_safetensors(&fx.join("models/tiny-llama/ft1/model.safetensors"))
    );
    let o = smelt()
        .env("HF_HUB_CACHE", tmp.path().join("hub"))
        .args(["inspect", "tiny-org/tiny-llama"])
        .output()
        .unwrap();
    assert_ok(&o);
    assert!(stdout(&o).contains("39 tensors"), "{}", stdout(&o));
    // a revision that is not in the cache: the error says where smelt looked
    let r = recipe(
        tmp.path(),
        "merge_method: passthrough\nmodels:\n  - model: tiny-org/tiny-llama@v9\n",
    );
    let o = smelt()
        .env("HF_HUB_CACHE", tmp.path().join("hub"))
        .args([
            "run",
            "-q",
            r.to_str().unwrap(),
            tmp.path().join("out2").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_fails(
        &o,
        &["tiny-org/tiny-llama@v9", "models--tiny-org--tiny-llama"],
    );
}

#[test]
fn mixing_architectures_needs_allow_crimes() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, arch) in [("a", "LlamaForCausalLM"), ("b", "MistralForCausalLM")] {
        let d = tmp.path().join(name);
        let ts = tiny_llama(&d, 2, 8, 16, 0.1);
        save(&d, &ts);
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
        cfg["architectures"] = serde_json::json!([arch]);
        std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    }
    let r = recipe(
        tmp.path(),
        "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\n  - model: b\n    parameters: {weight: 1}\n",
    );
    let out = tmp.path().join("out");
    assert_fails(
        &run(&["run", "-q", r.to_str().unwrap(), out.to_str().unwrap()]),
        &["MistralForCausalLM", "--allow-crimes"],
    );
    assert_ok(&run(&[
        "run",
        "-q",
        "--allow-crimes",
        r.to_str().unwrap(),
        out.to_str().unwrap(),
    ]));
}

#[test]
fn non_float_tensors_pass_through_from_a_single_source() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("a");
    let mut ts = tiny_llama(&d, 2, 8, 16, 0.1);
    // an inferred architecture keeps every tensor, including an int64 buffer
    let cfg =
        serde_json::json!({"architectures": ["TinyThingForCausalLM"], "num_hidden_layers": 2});
    std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    ts.push(T {
        name: "model.position_ids".into(),
        dtype: "I64",
        shape: vec![4],
        data: (0..4i64).flat_map(|v| v.to_le_bytes()).collect(),
    });
    save(&d, &ts);
    let r = recipe(
        tmp.path(),
        "merge_method: passthrough\nmodels:\n  - model: a\ndtype: bfloat16\n",
    );
    let out = tmp.path().join("out");
    let e = assert_ok(&run(&["run", r.to_str().unwrap(), out.to_str().unwrap()]));
    assert!(e.contains("inferring the layout"), "{e}");
    let got = read_safetensors(&out.join("model.safetensors"));
    let (dt, shape, bytes) = &got["model.position_ids"];
    assert_eq!((dt.as_str(), shape.as_slice()), ("I64", &[4usize][..]));
    assert_eq!(
        bytes,
        &(0..4i64).flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()
    );
    assert_eq!(got["model.norm.weight"].0, "BF16");
}

#[test]
fn a_closed_output_pipe_ends_quietly() {
    use std::io::Read;
    // enough tensors that the listing overflows the pipe's buffer
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("deep");
    let ts = tiny_llama(&d, 300, 8, 16, 0.1);
    save(&d, &ts);
    let mut child = smelt()
        .args(["inspect", d.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // the reader is gone (like `| head -c 16`)
    let o = child.wait_with_output().unwrap();
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}
