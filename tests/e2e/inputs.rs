//! Other inputs: PyTorch `.bin` checkpoints (read with a restricted unpickler) and
//! `model+lora` references (adapters applied on the fly).

use crate::util::*;

fn merged_tensors(
    recipe_text: &str,
    dir: &std::path::Path,
) -> std::collections::BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let r = recipe(dir, recipe_text);
    let out = dir.join("out");
    let _ = std::fs::remove_dir_all(&out);
    assert_ok(&run(&[
        "run",
        "--quiet",
        r.to_str().unwrap(),
        out.to_str().unwrap(),
    ]));
    read_safetensors(&out.join("model.safetensors"))
}

#[test]
fn bin_checkpoints_load_like_their_safetensors_twins() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let p = |s: &str| fx.join(s).to_str().unwrap().to_string();
    // single .bin (fp32) == ft1
    let from_bin = merged_tensors(
        &format!(
            "merge_method: passthrough\nmodels:\n  - model: {}\n",
            p("torch/tiny-llama-ft1-bin")
        ),
        tmp.path(),
    );
    let twin = read_safetensors(&fx.join("models/tiny-llama/ft1/model.safetensors"));
    assert_eq!(from_bin, twin);
    // sharded bf16 .bin == ft2 rounded to bf16
    let from_bin = merged_tensors(
        &format!(
            "merge_method: passthrough\nmodels:\n  - model: {}\n",
            p("torch/tiny-llama-ft2-bin-sharded-bf16")
        ),
        tmp.path(),
    );
    let rounded = merged_tensors(
        &format!(
            "merge_method: passthrough\nmodels:\n  - model: {}\ndtype: bfloat16\n",
            p("models/tiny-llama/ft2")
        ),
        tmp.path(),
    );
    assert_eq!(from_bin.len(), 39);
    assert_eq!(from_bin, rounded);
}

#[test]
fn malicious_pickle_is_refused_without_running_it() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(
        tmp.path(),
        &format!(
            "merge_method: passthrough\nmodels:\n  - model: {}\n",
            fx.join("torch/malicious").display()
        ),
    );
    let o = smelt()
        .current_dir(tmp.path())
        .args(["run", "--quiet", r.to_str().unwrap(), "out"])
        .output()
        .unwrap();
    assert_fails(
        &o,
        &["posix.system", "pytorch_model.bin", "nothing was executed"],
    );
    assert!(!tmp.path().join("pwned-by-pickle.txt").exists());
    assert!(!fx.join("torch/malicious/pwned-by-pickle.txt").exists());
    assert_no_output(tmp.path(), "out");
}

#[test]
fn model_plus_lora_matches_mergekit_bit_for_bit() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("lora");
    let o = smelt()
        .current_dir(fx.join("lora/recipes"))
        .args(["run", "--quiet", "lora_linear.yml"])
        .arg(&out)
        .output()
        .unwrap();
    assert_ok(&o);
    let ours = read_safetensors(&out.join("model.safetensors"));
    let gold = read_safetensors(&fx.join("lora/golden/lora_linear/model.safetensors"));
    assert_eq!(ours.len(), gold.len());
    for (k, v) in &gold {
        assert!(ours[k] == *v, "{k} differs from mergekit");
    }
    if crate::parity::python_numpy() {
        let c = std::process::Command::new("python3")
            .arg(fx.join("tools/compare.py"))
            .arg(&out)
            .arg(fx.join("lora/golden/lora_linear"))
            .args(["--max-bad-frac", "0"])
            .output()
            .unwrap();
        assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stdout));
    }
}

#[test]
fn convert_rewrites_bin_and_lora_models_as_safetensors() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ft1");
    assert_ok(&run(&[
        "convert",
        fx.join("torch/tiny-llama-ft1-bin").to_str().unwrap(),
        out.to_str().unwrap(),
    ]));
    assert_eq!(
        read_safetensors(&out.join("model.safetensors")),
        read_safetensors(&fx.join("models/tiny-llama/ft1/model.safetensors"))
    );
    assert!(out.join("config.json").is_file() && out.join("tokenizer.json").is_file());
    // base+lora converted, then merged 0.6/0.4 with ft1, equals mergekit's merge of base+lora
    let lora = tmp.path().join("base-lora");
    let reference = format!(
        "{}+{}",
        fx.join("models/tiny-llama/base").display(),
        fx.join("lora/tiny-llama-lora-r4").display()
    );
    assert_ok(&run(&["convert", &reference, lora.to_str().unwrap()]));
    let merged = merged_tensors(
        &format!(
            "merge_method: linear\nmodels:\n  - model: {}\n    parameters: {{weight: 0.6}}\n  - model: {}\n    parameters: {{weight: 0.4}}\ndtype: float32\n",
            lora.display(),
            fx.join("models/tiny-llama/ft1").display()
        ),
        tmp.path(),
    );
    assert_eq!(
        merged,
        read_safetensors(&fx.join("lora/golden/lora_linear/model.safetensors"))
    );
}
