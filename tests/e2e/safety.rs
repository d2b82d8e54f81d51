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
    let o = smelt()
        .arg("run")
        .arg(&r)
        .arg(tmp.path().join("out"))
        .output()
        .unwrap();
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
    let o = smelt()
        .arg("run")
        .arg(&r)
        .arg(tmp.path().join("out"))
        .output()
        .unwrap();
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
    let o = smelt()
        .arg("run")
        .arg(&r)
        .arg(tmp.path().join("out"))
        .output()
        .unwrap();
    let e = assert_ok(&o);
    assert!(
        e.contains("tensor `model.layers.0.self_attn.q_proj.weight` holds NaN or infinite values"),
        "{e}"
    );
    assert!(e.contains("model `a`") || e.contains("/a`"), "{e}");
}
