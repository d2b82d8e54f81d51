//! Output digests: the sha256 of every file smelt writes for a fixed corpus of merges and
//! quantizations, checked against `tests/digests.txt`. Numbers must not move by accident:
//! a kernel rewrite that changes one bit of one output fails here, naming the case and file.
//!
//! The corpus: every parity recipe and every recipe of `tests/fixtures/digest-recipes` (the
//! methods the parity set lacks), each run with f32 inputs at math dtype float32, bfloat16 and
//! float16, with bf16 inputs at bfloat16 and with f16 inputs at float16 (the input families are
//! written by smelt itself, and digested too); every example in `recipes/` (the multi-stage one
//! through `smelt batch`); every GGUF file type of `smelt quantize` on the GGUF fixture models;
//! and a one-pass `smelt run --gguf`.
//!
//! To change a digest on purpose, run the test with `SMELT_BLESS_DIGESTS=1` (it rewrites
//! `tests/digests.txt`) and say why in the commit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::util::*;

const DTYPES: [&str; 3] = ["float32", "bfloat16", "float16"];
const GGUF_TYPES: [&str; 17] = [
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M",
    "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K",
];

/// Files whose bytes are a function of the merge alone (the lock, the model card and the
/// recipe copy name the test's temporary paths).
fn digested(rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    !matches!(name, "smelt.lock" | "README.md" | "mergekit_config.yml")
}

/// sha256 of every file under `dir` (recursively), keyed `case/relative/path`.
fn digest_dir(case: &str, dir: &Path, out: &Mutex<BTreeMap<String, String>>) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if digested(&rel) {
                let h = sha256_file(&p);
                out.lock().unwrap().insert(format!("{case}/{rel}"), h);
            }
        }
    }
}

/// A recipe's text with its models read from `models` and its math dtype set to `dtype`.
fn variant(text: &str, models: &Path, dtype: &str) -> String {
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with("dtype:"))
        .map(|l| l.replace("../models/tiny-llama/", &format!("{}/", models.display())))
        .collect();
    lines.push(format!("dtype: {dtype}"));
    lines.join("\n") + "\n"
}

fn recipe_files() -> Vec<PathBuf> {
    let mut v = Vec::new();
    for dir in ["recipes", "digest-recipes"] {
        for e in std::fs::read_dir(fixtures().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().and_then(|s| s.to_str()) == Some("yml") {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

fn smelt_ok(args: &[&std::ffi::OsStr]) {
    let o = smelt().args(args).output().unwrap();
    assert_ok(&o);
}

/// Writes copies of the tiny family with every tensor stored as `dtype`.
fn cast_family(dtype: &str, dir: &Path) -> PathBuf {
    let family = fixtures().join("models/tiny-llama");
    let models = dir.join(format!("family-{dtype}"));
    for m in ["base", "ft1", "ft2", "ft3"] {
        let recipe = dir.join(format!("cast-{dtype}-{m}.yml"));
        let text = format!(
            "models:\n  - model: {}\n    parameters: {{weight: 1.0}}\nmerge_method: linear\ndtype: float32\nout_dtype: {dtype}\n",
            family.join(m).display()
        );
        std::fs::write(&recipe, text).unwrap();
        let out = models.join(m);
        smelt_ok(&[
            "run".as_ref(),
            "--quiet".as_ref(),
            recipe.as_os_str(),
            out.as_os_str(),
        ]);
    }
    models
}

/// Runs `jobs` on two threads.
fn parallel(jobs: Vec<Box<dyn FnOnce() + Send + '_>>) {
    let jobs = Mutex::new(jobs);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let job = jobs.lock().unwrap().pop();
                    match job {
                        Some(j) => j(),
                        None => break,
                    }
                }
            });
        }
    });
}

fn merge_cases(tmp: &Path, digests: &Mutex<BTreeMap<String, String>>) {
    let f32_models = fixtures().join("models/tiny-llama");
    let mut families = vec![];
    for dt in ["bfloat16", "float16"] {
        let m = cast_family(dt, tmp);
        digest_dir(&format!("family-{dt}"), &m, digests);
        families.push((dt, m));
    }
    let mut jobs: Vec<Box<dyn FnOnce() + Send + '_>> = Vec::new();
    for recipe in recipe_files() {
        let text = std::fs::read_to_string(&recipe).unwrap();
        let stem = recipe.file_stem().unwrap().to_string_lossy().into_owned();
        let mut runs: Vec<(String, PathBuf, &str)> = DTYPES
            .iter()
            .map(|dt| (format!("f32-in/{dt}"), f32_models.clone(), *dt))
            .collect();
        for (dt, m) in &families {
            runs.push((format!("{dt}-in/{dt}"), m.clone(), dt));
        }
        for (tag, models, dt) in runs {
            let case = format!("merge/{stem}/{tag}");
            let text = variant(&text, &models, dt);
            let dir = tmp.join(case.replace('/', "_"));
            jobs.push(Box::new(move || {
                std::fs::create_dir_all(&dir).unwrap();
                let r = dir.join("recipe.yml");
                std::fs::write(&r, text).unwrap();
                let out = dir.join("out");
                smelt_ok(&[
                    "run".as_ref(),
                    "-q".as_ref(),
                    r.as_os_str(),
                    out.as_os_str(),
                ]);
                digest_dir(&case, &out, digests);
            }));
        }
    }
    parallel(jobs);
}

fn example_cases(tmp: &Path, digests: &Mutex<BTreeMap<String, String>>) {
    for e in std::fs::read_dir(root().join("recipes")).unwrap() {
        let p = e.unwrap().path();
        let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
        let out = tmp.join(format!("example-{stem}"));
        let text = std::fs::read_to_string(&p).unwrap();
        if text.contains("\n---") {
            let stages = tmp.join(format!("stages-{stem}"));
            let o = smelt()
                .args(["batch", "--quiet", "--intermediate-dir"])
                .arg(&stages)
                .arg("--out-path")
                .arg(&out)
                .arg(&p)
                .output()
                .unwrap();
            assert_ok(&o);
            digest_dir(&format!("example/{stem}/stages"), &stages, digests);
        } else {
            smelt_ok(&[
                "run".as_ref(),
                "-q".as_ref(),
                p.as_os_str(),
                out.as_os_str(),
            ]);
        }
        digest_dir(&format!("example/{stem}"), &out, digests);
    }
}

fn gguf_cases(tmp: &Path, digests: &Mutex<BTreeMap<String, String>>) {
    let mut jobs: Vec<Box<dyn FnOnce() + Send + '_>> = Vec::new();
    // the BPE fixtures' tokenizers are not in llama.cpp's table: the reference files say gpt-2
    for (model, pre) in [
        ("gguf-llama", Some("gpt-2")),
        ("gguf-mistral-spm", None),
        ("gguf-qwen2", Some("gpt-2")),
    ] {
        for ty in GGUF_TYPES {
            let dir = tmp.join(format!("gguf-{model}-{ty}"));
            jobs.push(Box::new(move || {
                std::fs::create_dir_all(&dir).unwrap();
                let src = fixtures().join("gguf/model").join(model);
                let out = dir.join(format!("{ty}.gguf"));
                let o = smelt()
                    .arg("quantize")
                    .arg(&src)
                    .arg(&out)
                    .args(["-t", ty])
                    .args(pre.iter().flat_map(|p| ["--pre", p]))
                    .output()
                    .unwrap();
                assert_ok(&o);
                digest_dir(&format!("quantize/{model}/{ty}"), &dir, digests);
            }));
        }
    }
    parallel(jobs);
    // one pass: a linear merge of the llama fixture and its bf16 copy, written as Q4_K_M
    let model = fixtures().join("gguf/model/gguf-llama");
    let cast = tmp.join("gguf-llama-bf16");
    let recipe = tmp.join("gguf-cast.yml");
    let text = format!(
        "models:\n  - model: {}\n    parameters: {{weight: 1.0}}\nmerge_method: linear\nout_dtype: bfloat16\n",
        model.display()
    );
    std::fs::write(&recipe, text).unwrap();
    smelt_ok(&[
        "run".as_ref(),
        "-q".as_ref(),
        recipe.as_os_str(),
        cast.as_os_str(),
    ]);
    let recipe = tmp.join("gguf-run.yml");
    let text = format!(
        "models:\n  - model: {}\n    parameters: {{weight: 0.7}}\n  - model: {}\n    parameters: {{weight: 0.2}}\nmerge_method: linear\ndtype: bfloat16\n",
        model.display(),
        cast.display()
    );
    std::fs::write(&recipe, text).unwrap();
    let out = tmp.join("gguf-run");
    let o = smelt()
        .args([
            "run",
            "-q",
            "--gguf",
            "Q4_K_M",
            "--pre",
            "gpt-2",
            "--keep-safetensors",
        ])
        .arg(&recipe)
        .arg(&out)
        .output()
        .unwrap();
    assert_ok(&o);
    digest_dir("run-gguf/linear-Q4_K_M", &out, digests);
}

fn parse(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("`path sha256` line");
            (k.trim().to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn every_output_keeps_its_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let digests = Mutex::new(BTreeMap::new());
    merge_cases(tmp.path(), &digests);
    example_cases(tmp.path(), &digests);
    gguf_cases(tmp.path(), &digests);
    let got = digests.into_inner().unwrap();
    let file = root().join("tests/digests.txt");
    if std::env::var_os("SMELT_BLESS_DIGESTS").is_some() {
        let mut text = String::from(
            "# sha256 of every output of the digest corpus (tests/e2e/digests.rs).\n\
             # Regenerate with SMELT_BLESS_DIGESTS=1 only on purpose, saying why in the commit.\n",
        );
        for (k, v) in &got {
            text.push_str(&format!("{k} {v}\n"));
        }
        std::fs::write(&file, text).unwrap();
        return;
    }
    let want = parse(&std::fs::read_to_string(&file).expect("tests/digests.txt"));
    let mut problems = Vec::new();
    for (k, v) in &want {
        match got.get(k) {
            None => problems.push(format!("missing output {k}")),
            Some(g) if g != v => problems.push(format!("{k}: {g} (recorded {v})")),
            _ => {}
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(*k)) {
        problems.push(format!("new output without a recorded digest: {k}"));
    }
    assert!(
        problems.is_empty(),
        "{} of {} outputs changed:\n{}",
        problems.len(),
        want.len(),
        problems.join("\n")
    );
    assert!(got.len() > 500, "corpus too small: {} files", got.len());
}
