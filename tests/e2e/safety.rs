//! Nothing lost, nothing overwritten: the lock path, `quantize` and batch stage outputs never
//! replace an input or the recipe, even with `--force`.

use std::path::Path;

use crate::util::*;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

/// `smelt run RECIPE OUT`.
fn run_recipe(r: &Path, out: &Path) -> std::process::Output {
    smelt().arg("run").arg(r).arg(out).output().unwrap()
}

/// A recipe over a copy of the tiny base and ft1 models in `dir`.
fn setup(dir: &Path) -> std::path::PathBuf {
    let fam = fixtures().join("models/tiny-llama");
    copy_dir(&fam.join("base"), &dir.join("a"));
    copy_dir(&fam.join("ft1"), &dir.join("b"));
    recipe(
        dir,
        "models:\n  - model: a\n    parameters: {weight: 0.5}\n  - model: b\n    parameters: {weight: 0.5}\nmerge_method: linear\n",
    )
}

#[test]
fn lock_path_never_overwrites_an_input_or_the_recipe() {
    let tmp = tempfile::tempdir().unwrap();
    let r = setup(tmp.path());
    let weights = tmp.path().join("a/model.safetensors");
    let before = sha256_file(&weights);
    let recipe_before = std::fs::read(&r).unwrap();
    for (lock, needle) in [
        (weights.clone(), "would overwrite the input"),
        (r.clone(), "would overwrite the recipe"),
    ] {
        for force in [false, true] {
            let mut c = smelt();
            c.arg("run")
                .arg(&r)
                .arg(tmp.path().join("out"))
                .arg("--lock")
                .arg(&lock);
            if force {
                c.arg("--force");
            }
            let o = c.output().unwrap();
            assert_fails(&o, &[needle, &lock.display().to_string()]);
            assert_no_output(tmp.path(), "out");
        }
    }
    assert_eq!(sha256_file(&weights), before, "input changed");
    assert_eq!(std::fs::read(&r).unwrap(), recipe_before, "recipe changed");
}

#[test]
fn lock_path_replaces_only_a_lock_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let r = setup(tmp.path());
    let notes = tmp.path().join("notes.txt");
    std::fs::write(&notes, "my notes").unwrap();
    let run = |out: &str, lock: &Path, force: bool| {
        let mut c = smelt();
        c.arg("run")
            .arg(&r)
            .arg(tmp.path().join(out))
            .arg("--lock")
            .arg(lock);
        if force {
            c.arg("--force");
        }
        c.output().unwrap()
    };
    assert_fails(
        &run("o1", &notes, false),
        &["is not a smelt lock", "--force"],
    );
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "my notes");
    // a lock file is replaced by the next run's lock
    let lock = tmp.path().join("recipe.lock");
    assert_ok(&run("o2", &lock, false));
    assert_ok(&run("o3", &lock, false));
    // --force replaces another file
    assert_ok(&run("o4", &notes, true));
    assert!(
        std::fs::read_to_string(&notes)
            .unwrap()
            .contains("\"lock_version\"")
    );
}

#[test]
fn quantize_never_replaces_its_own_input() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    copy_dir(&fixtures().join("gguf/model/gguf-mistral-spm"), &m);
    let weights = m.join("model.safetensors");
    let before = sha256_file(&weights);
    let o = smelt()
        .arg("quantize")
        .arg(&m)
        .arg(&weights)
        .args(["-t", "F16", "--force"])
        .output()
        .unwrap();
    assert_fails(&o, &["inputs are never written"]);
    assert_eq!(sha256_file(&weights), before);
    // a .gguf beside the weights is fine
    let o = smelt()
        .arg("quantize")
        .arg(&m)
        .arg(m.join("m-F16.gguf"))
        .args(["-t", "F16"])
        .output()
        .unwrap();
    assert_ok(&o);
}

#[test]
fn a_batch_stage_never_writes_over_a_model_another_stage_reads() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path());
    let stages = tmp.path().join("stages");
    // stage `a` would write stages/a, which the final stage reads as a path
    copy_dir(&tmp.path().join("a"), &stages.join("a"));
    let before = sha256_file(&stages.join("a/model.safetensors"));
    let text = format!(
        "name: a\nmodels:\n  - model: {d}/b\n    parameters: {{weight: 1.0}}\nmerge_method: linear\n---\nmodels:\n  - model: {s}/a\n    parameters: {{weight: 0.5}}\n  - model: {d}/b\n    parameters: {{weight: 0.5}}\nmerge_method: linear\n",
        d = tmp.path().display(),
        s = stages.display()
    );
    let f = tmp.path().join("multi.yml");
    std::fs::write(&f, text).unwrap();
    let o = smelt()
        .args(["batch", "--force", "--intermediate-dir"])
        .arg(&stages)
        .arg("--out-path")
        .arg(tmp.path().join("final"))
        .arg(&f)
        .output()
        .unwrap();
    assert_fails(&o, &["reads as a model path", "inputs are never written"]);
    assert_eq!(sha256_file(&stages.join("a/model.safetensors")), before);
}

#[test]
fn weights_summing_to_zero_with_normalize_is_an_error_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let r = setup(tmp.path());
    let text = std::fs::read_to_string(&r)
        .unwrap()
        .replacen("weight: 0.5", "weight: 1.0", 1)
        .replacen("weight: 0.5", "weight: -1.0", 1);
    std::fs::write(&r, text).unwrap();
    let o = run_recipe(&r, &tmp.path().join("out"));
    assert_fails(&o, &["linear merge of `", "sum to 0", "normalize"]);
    assert_no_output(tmp.path(), "out");
}

#[test]
fn a_merge_that_overflows_float16_is_an_error_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let r = setup(tmp.path());
    let text = std::fs::read_to_string(&r)
        .unwrap()
        .replace("weight: 0.5", "weight: 1.0e6")
        + "parameters: {normalize: false}\ndtype: float32\nout_dtype: float16\n";
    std::fs::write(&r, text).unwrap();
    let o = run_recipe(&r, &tmp.path().join("out"));
    assert_fails(
        &o,
        &[
            "linear merge of `",
            "beyond float16's range",
            "from finite inputs",
        ],
    );
    assert_no_output(tmp.path(), "out");
}

#[test]
fn nan_in_an_input_is_a_warning_naming_model_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, nan) in [("a", true), ("b", false)] {
        let m = tmp.path().join(name);
        let mut ts = tiny_llama(&m, 1, 8, 16, 0.1);
        if nan {
            ts[1] = T::f32("model.layers.0.self_attn.q_proj.weight", &[8, 8], |i| {
                if i == 5 { f32::NAN } else { 0.25 }
            });
        }
        save(&m, &ts);
    }
    let r = recipe(
        tmp.path(),
        "models:\n  - model: a\n    parameters: {weight: 0.5}\n  - model: b\n    parameters: {weight: 0.5}\nmerge_method: linear\n",
    );
    let o = run_recipe(&r, &tmp.path().join("out"));
    let e = assert_ok(&o);
    assert!(
        e.contains("tensor `model.layers.0.self_attn.q_proj.weight` holds NaN or infinite values"),
        "{e}"
    );
    assert!(e.contains("model `a`") || e.contains("/a`"), "{e}");
}

/// A two-shard copy of the tiny base model with an index whose weight_map is `edit`ed.
fn sharded_with_index(dir: &Path, edit: impl Fn(&mut serde_json::Map<String, serde_json::Value>)) {
    let m = dir.join("sharded");
    let ts = tiny_llama(&m, 1, 8, 16, 0.1);
    let (a, b) = ts.split_at(ts.len() / 2);
    write_safetensors(&m.join("s1.safetensors"), a);
    write_safetensors(&m.join("s2.safetensors"), b);
    let mut map = serde_json::Map::new();
    for t in a {
        map.insert(t.name.clone(), "s1.safetensors".into());
    }
    for t in b {
        map.insert(t.name.clone(), "s2.safetensors".into());
    }
    edit(&mut map);
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(m.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

#[test]
fn an_index_entry_no_shard_holds_is_an_error_naming_tensor_and_shard() {
    let tmp = tempfile::tempdir().unwrap();
    sharded_with_index(tmp.path(), |m| {
        m.insert(
            "model.layers.0.extra.weight".into(),
            "s2.safetensors".into(),
        );
    });
    let m = tmp.path().join("sharded");
    for args in [vec!["inspect"], vec!["convert"]] {
        let mut c = smelt();
        c.args(&args).arg(&m);
        if args[0] == "convert" {
            c.arg(tmp.path().join("conv"));
        }
        assert_fails(
            &c.output().unwrap(),
            &[
                "model.layers.0.extra.weight",
                "s2.safetensors",
                "no shard holds it",
            ],
        );
    }
}

#[test]
fn a_shard_named_dot_is_an_error_saying_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    sharded_with_index(tmp.path(), |m| {
        m.insert("model.norm.weight".into(), ".".into());
    });
    let o = smelt()
        .arg("inspect")
        .arg(tmp.path().join("sharded"))
        .output()
        .unwrap();
    assert_fails(
        &o,
        &[
            "shard name `.`",
            "model.norm.weight",
            "not a plain file name",
        ],
    );
}

#[test]
fn an_input_truncated_during_the_merge_is_an_error_not_a_signal() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, seed) in [("a", 0.1f32), ("b", 0.2)] {
        let m = tmp.path().join(name);
        let ts = tiny_llama(&m, 6, 768, 4096, seed);
        save(&m, &ts);
    }
    let r = recipe(
        tmp.path(),
        "models:\n  - model: a\n  - model: b\nmerge_method: slerp\nbase_model: a\nparameters: {t: 0.3}\n",
    );
    let out = tmp.path().join("out");
    let child = smelt()
        .args(["run", "-q", "--threads", "1"])
        .arg(&r)
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !std::fs::read_dir(tmp.path()).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .contains("smelt-partial")
    }) {
        assert!(t0.elapsed().as_secs() < 60, "merge never started");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let shard = tmp.path().join("b/model.safetensors");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_fails(&o, &[&shard.display().to_string(), "truncated"]);
    assert_no_output(tmp.path(), "out");
}

#[test]
fn verify_fails_when_the_locked_recipe_no_longer_matches_its_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let r = setup(tmp.path());
    let out = tmp.path().join("out");
    assert_ok(&smelt().arg("run").arg(&r).arg(&out).output().unwrap());
    assert!(
        smelt()
            .arg("verify")
            .arg(&out)
            .output()
            .unwrap()
            .status
            .success()
    );
    let lock = out.join("smelt.lock");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&lock).unwrap()).unwrap();
    let text = v["recipe"]["text"].as_str().unwrap().replace("0.5", "0.7");
    v["recipe"]["text"] = text.into();
    std::fs::write(&lock, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let o = smelt().arg("verify").arg(&out).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("the recipe's sha256"), "{}", stdout(&o));
}

#[test]
fn a_huge_thread_count_is_capped_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let r = setup(tmp.path());
    let o = smelt()
        .args(["run", "--threads", "100000"])
        .arg(&r)
        .arg(tmp.path().join("out"))
        .output()
        .unwrap();
    let e = assert_ok(&o);
    assert!(e.contains("100000 threads requested; using"), "{e}");
}

#[test]
fn a_bad_smelt_threads_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let r = setup(tmp.path());
    let o = smelt()
        .env("SMELT_THREADS", "lots")
        .arg("run")
        .arg(&r)
        .arg(tmp.path().join("out"))
        .output()
        .unwrap();
    assert_fails(&o, &["SMELT_THREADS=lots", "not a number of threads"]);
}

#[test]
fn a_zero_or_overflowing_shard_size_is_a_usage_error_naming_the_option() {
    let tmp = tempfile::tempdir().unwrap();
    let r = setup(tmp.path());
    for (size, why) in [("0", "at least 1 byte"), ("1e30TB", "too large")] {
        let o = smelt()
            .args(["run", "--out-shard-size", size])
            .arg(&r)
            .arg(tmp.path().join("out"))
            .output()
            .unwrap();
        // usage errors exit 2 (clap's convention, documented in README)
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("--out-shard-size") && e.contains(why), "{e}");
    }
}

#[test]
fn an_empty_layer_range_is_an_error_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path());
    let r = recipe(
        tmp.path(),
        "slices:\n  - sources:\n      - model: a\n        layer_range: [1, 1]\nmerge_method: passthrough\n",
    );
    for cmd in ["check", "run"] {
        let mut c = smelt();
        c.arg(cmd).arg(&r);
        if cmd == "run" {
            c.arg(tmp.path().join("out"));
        }
        assert_fails(
            &c.output().unwrap(),
            &["layer_range", "[1, 1]", "holds no layers", "line 4"],
        );
    }
    assert_no_output(tmp.path(), "out");
}

#[test]
fn a_layer_count_that_is_not_a_number_is_an_error_naming_the_key() {
    for bad in [serde_json::json!("22"), serde_json::json!(-3)] {
        let tmp = tempfile::tempdir().unwrap();
        let r = setup(tmp.path());
        let cfg_path = tmp.path().join("a/config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
        cfg["num_hidden_layers"] = bad.clone();
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let o = run_recipe(&r, &tmp.path().join("out"));
        assert_fails(&o, &["num_hidden_layers", &bad.to_string(), "config.json"]);
    }
}

#[test]
fn density_outside_0_1_is_an_error_naming_the_key_and_t_beyond_1_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path());
    let r = recipe(
        tmp.path(),
        "models:\n  - model: b\n    parameters: {weight: 1.0, density: 1.5}\nmerge_method: ties\nbase_model: a\n",
    );
    let o = run_recipe(&r, &tmp.path().join("out"));
    assert_fails(
        &o,
        &["parameter `density` = 1.5 is outside [0, 1]", "model `b`"],
    );
    assert_no_output(tmp.path(), "out");
    let r = recipe(
        tmp.path(),
        "models:\n  - model: a\n  - model: b\nmerge_method: slerp\nbase_model: a\nparameters: {t: 1.2}\n",
    );
    let o = run_recipe(&r, &tmp.path().join("out2"));
    let e = assert_ok(&o);
    assert!(
        e.contains("`t` = 1.2 is outside [0, 1]") && e.contains("extrapolates"),
        "{e}"
    );
}
