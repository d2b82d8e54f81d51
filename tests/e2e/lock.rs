//! Lock files: what `smelt.lock` records, and drift of inputs caught by `--locked` and
//! `verify --inputs`.

use crate::util::*;

#[test]
fn lock_records_recipe_seed_inputs_and_outputs() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let cache = tmp.path().join("cache");
    let o = smelt()
        .env("SMELT_CACHE_DIR", &cache)
        .args(["run", "-q", "--random-seed", "7"])
        .arg(fx.join("recipes/dare_linear.yml"))
        .arg(&out)
        .output()
        .unwrap();
    assert_ok(&o);
    let lock: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("smelt.lock")).unwrap()).unwrap();
    assert_eq!(lock["lock_version"], 1);
    assert_eq!(lock["seed"], 7);
    let text = std::fs::read_to_string(fx.join("recipes/dare_linear.yml")).unwrap();
    assert_eq!(lock["recipe"]["text"], text);
    assert_eq!(
        lock["recipe"]["sha256"],
        merge_core::lock::sha256_hex(text.as_bytes())
    );
    let inputs = lock["inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 3);
    // input digests are the sha256 of the file content (the hub's LFS oid)
    let base = inputs
        .iter()
        .find(|i| i["reference"] == "../models/tiny-llama/base")
        .unwrap();
    let weights = base["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "model.safetensors")
        .unwrap();
    let file = fx.join("models/tiny-llama/base/model.safetensors");
    assert_eq!(
        weights["sha256"],
        merge_core::lock::sha256_file(&file).unwrap()
    );
    assert_eq!(weights["size"], std::fs::metadata(&file).unwrap().len());
    assert!(
        base["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "tokenizer.json")
    );
    // every written file but the lock itself, with its digest
    let outputs = lock["outputs"].as_array().unwrap();
    let names: Vec<&str> = outputs
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"model.safetensors")
            && names.contains(&"config.json")
            && !names.contains(&"smelt.lock")
    );
    for f in outputs {
        assert_eq!(
            f["sha256"],
            merge_core::lock::sha256_file(&out.join(f["name"].as_str().unwrap())).unwrap()
        );
    }
    // the digests were cached for the next run
    let cached = std::fs::read_to_string(cache.join("hashes.json")).unwrap();
    assert!(cached.contains("tiny-llama/base/model.safetensors"));
}

#[test]
fn changed_inputs_are_caught() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    // private copies of the inputs, so one can be changed
    for m in ["base", "ft1", "ft2"] {
        let d = tmp.path().join("models").join(m);
        std::fs::create_dir_all(&d).unwrap();
        for f in std::fs::read_dir(fx.join("models/tiny-llama").join(m)).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, d.join(f.file_name().unwrap())).unwrap();
        }
    }
    let r = recipe(
        tmp.path(),
        "models:\n  - model: models/ft1\n    parameters: {weight: 0.5}\n  - model: models/ft2\n    parameters: {weight: 0.5}\nmerge_method: task_arithmetic\nbase_model: models/base\n",
    );
    let lock = tmp.path().join("recipe.lock");
    let out = tmp.path().join("out");
    assert_ok(&run(&[
        "run",
        "-q",
        r.to_str().unwrap(),
        out.to_str().unwrap(),
        "--lock",
        lock.to_str().unwrap(),
    ]));
    assert_ok(&run(&["verify", out.to_str().unwrap(), "--inputs"]));
    // same size, same mtime resolution aside: rewrite ft2's config with other content
    let cfg = tmp.path().join("models/ft2/config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("\"use_cache\": true", "\"use_cache\": false"),
    )
    .unwrap();
    let v = run(&["verify", out.to_str().unwrap(), "--inputs", "--rehash"]);
    assert!(!v.status.success());
    assert!(
        stdout(&v).contains("models/ft2/config.json"),
        "{}",
        stdout(&v)
    );
    let o = run(&[
        "run",
        "-q",
        r.to_str().unwrap(),
        tmp.path().join("again").to_str().unwrap(),
        "--locked",
        lock.to_str().unwrap(),
    ]);
    assert_fails(
        &o,
        &[
            "does not match its lock",
            "input `models/ft2`: file config.json changed",
        ],
    );
    assert_no_output(tmp.path(), "again");
}
