//! `smelt check` (and `run`) reject what mergekit rejects when it plans, from the recipe
//! alone: a model listed twice, slice sources of unequal length, a slerp slice without two
//! sources, a base model that is not among a slice's sources. What mergekit silently accepts
//! (unknown keys and parameters, repeated keys, `tokenizer_source: model:PATH`) is an error
//! that names `--lenient`, every problem of a file at once; with `--lenient` (`run`, `plan`,
//! `check`, `batch`) the recipe runs as under mergekit, giving the same weights as without
//! the ignored keys.

use std::path::Path;

use crate::util::*;

fn check_fails(text: &str, needles: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(tmp.path(), text);
    let o = smelt().arg("check").arg(&r).output().unwrap();
    assert_fails(&o, needles);
}

#[test]
fn a_model_listed_twice() {
    check_fails(
        "models:\n  - model: org/a\n    parameters: {weight: 0.5}\n  - model: org/a\n    parameters: {weight: 0.5}\nmerge_method: linear\n",
        &["model `org/a` is listed twice", "line 2", "line 4"],
    );
}

#[test]
fn slice_sources_whose_layer_ranges_differ_in_length() {
    check_fails(
        "merge_method: slerp\nbase_model: org/a\nparameters: {t: 0.5}\nslices:\n  - sources:\n      - model: org/a\n        layer_range: [0, 4]\n      - model: org/b\n        layer_range: [0, 5]\n",
        &["slice 1", "same number of layers", "4, 5"],
    );
}

#[test]
fn a_slerp_slice_with_one_source() {
    check_fails(
        "merge_method: slerp\nbase_model: org/a\nparameters: {t: 0.5}\nslices:\n  - sources:\n      - model: org/a\n        layer_range: [0, 4]\n",
        &["slice 1", "slerp merges exactly two sources, got 1"],
    );
}

#[test]
fn a_base_model_outside_the_slice_sources() {
    check_fails(
        "merge_method: ties\nbase_model: org/base\nslices:\n  - sources:\n      - model: org/a\n        layer_range: [0, 4]\n        parameters: {weight: 0.5, density: 0.5}\n      - model: org/b\n        layer_range: [0, 4]\n        parameters: {weight: 0.5, density: 0.5}\n",
        &["slice 1", "base model `org/base` is not one of its sources"],
    );
}

#[test]
fn a_valid_slice_recipe_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(
        tmp.path(),
        "merge_method: slerp\nbase_model: org/a\nparameters: {t: 0.5}\nslices:\n  - sources:\n      - model: org/a\n        layer_range: [0, 4]\n      - model: org/b\n        layer_range: [2, 6]\n",
    );
    assert_ok(&smelt().arg("check").arg(&r).output().unwrap());
}

/// A linear recipe with a misspelled top-level key, a misspelled parameter and a repeated
/// weight; mergekit runs it as [`CLEAN`].
const MISSPELT: &str = "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 0.3}\n  - model: b\n    parameters:\n      weight: 0.9\n      weight: 0.7\ntokenzer_source: union\nparameters:\n  nomalize: false\ndtype: float32\n";
const CLEAN: &str = "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 0.3}\n  - model: b\n    parameters:\n      weight: 0.7\ndtype: float32\n";

fn check_in(dir: &Path, text: &str, extra: &[&str]) -> std::process::Output {
    let r = recipe(dir, text);
    smelt().arg("check").args(extra).arg(&r).output().unwrap()
}

#[test]
fn every_problem_of_a_file_is_reported_with_a_suggestion_and_the_lenient_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let o = check_in(tmp.path(), MISSPELT, &[]);
    assert_fails(
        &o,
        &[
            "recipe.yml: 3 problems",
            "key `weight` is given twice in the same mapping, on line 7 and line 8",
            "unknown key `tokenzer_source` at the top level: did you mean `tokenizer_source`?",
            "unknown parameter `nomalize` for merge method `linear`: did you mean `normalize`?",
            "mergekit ignores unknown keys; pass --lenient to do the same",
            "recipe.yml:9:1",
            "9 | tokenzer_source: union",
        ],
    );
    let e = stderr(&o);
    assert!(
        !e.contains("<input>") && !e.contains("DuplicateKeyPolicy"),
        "{e}"
    );
}

#[test]
fn repeated_keys_name_both_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let o = check_in(
        tmp.path(),
        "merge_method: linear\nmodels:\n  - model: a\n  - model: b\nmerge_method: ties\n",
        &[],
    );
    assert_fails(
        &o,
        &[
            "key `merge_method` is given twice",
            "on line 1 and line 5",
            "1 | merge_method: linear",
            "5 | merge_method: ties",
            "keeps the last value",
        ],
    );
    assert!(!stderr(&o).contains("DuplicateKeyPolicy"));
}

#[test]
fn malformed_yaml_snippet_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let o = check_in(tmp.path(), "merge_method: [linear\n", &[]);
    assert_fails(&o, &["recipe.yml: line 1 column 15", "recipe.yml:1:15"]);
    assert!(!stderr(&o).contains("<input>"), "{}", stderr(&o));
}

#[test]
fn lenient_check_warns_and_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let o = check_in(tmp.path(), MISSPELT, &["--lenient"]);
    let e = assert_ok(&o);
    for n in [
        "warning: line 8 column 7: key `weight` is given again (first on line 7); the last value is used",
        "warning: line 9 column 1: unknown key `tokenzer_source` at the top level is ignored, as mergekit ignores it (did you mean `tokenizer_source`?)",
        "warning: line 11 column 3: unknown parameter `nomalize` of merge method `linear` is ignored",
    ] {
        assert!(e.contains(n), "stderr lacks {n:?}:\n{e}");
    }
    assert!(stdout(&o).contains("ok (linear merge of 2 models, 3 warnings)"));
    // what mergekit rejects, --lenient rejects too
    let o = check_in(
        tmp.path(),
        &format!("{MISSPELT}out_dtype: bf16\n"),
        &["--lenient"],
    );
    assert_fails(&o, &["`out_dtype: bf16` is not a supported dtype"]);
}

#[test]
fn old_tokenizer_source_syntax() {
    let tmp = tempfile::tempdir().unwrap();
    let text = "merge_method: linear\nmodels:\n  - model: org/a\n    parameters: {weight: 1}\n  - model: org/b\n    parameters: {weight: 1}\ntokenizer_source: model:org/b\n";
    assert_fails(
        &check_in(tmp.path(), text, &[]),
        &[
            "mergekit's old syntax",
            "write `tokenizer_source: org/b`",
            "--lenient",
        ],
    );
    let e = assert_ok(&check_in(tmp.path(), text, &["--lenient"]));
    assert!(e.contains("is read as `org/b`"), "{e}");
}

#[test]
fn help_documents_lenient_with_an_example() {
    for cmd in ["run", "plan", "check", "batch"] {
        let o = run(&[cmd, "--help"]);
        let out = assert_ok(&o) + &stdout(&o);
        let out = out.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            out.contains("--lenient") && out.contains("smelt run --lenient old-recipe.yml out/"),
            "{cmd}: {out}"
        );
    }
}

/// The weights and config of a merged folder (the model card, mergekit_config.yml and the
/// lock hold the recipe text, which differs by design).
fn weights(dir: &Path) -> Vec<(String, String)> {
    dir_hashes(dir)
        .into_iter()
        .filter(|(n, _)| n.ends_with(".safetensors") || n == "config.json")
        .collect()
}

#[test]
fn lenient_run_plan_and_batch_give_mergekits_result() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    for (name, seed) in [("a", 0.1), ("b", 0.4)] {
        let ts = tiny_llama(&p.join(name), 2, 8, 16, seed);
        save(&p.join(name), &ts);
    }
    let bad = p.join("bad.yml");
    let clean = p.join("clean.yml");
    std::fs::write(&bad, MISSPELT).unwrap();
    std::fs::write(&clean, CLEAN).unwrap();
    let s = |x: &Path| x.to_str().unwrap().to_string();
    let go = |args: &[String]| smelt().args(args).output().unwrap();
    assert_ok(&go(&[
        "run".into(),
        "--quiet".into(),
        s(&clean),
        s(&p.join("ref")),
    ]));
    let strict = go(&[
        "run".into(),
        "--quiet".into(),
        s(&bad),
        s(&p.join("strict")),
    ]);
    assert_fails(&strict, &["3 problems", "--lenient"]);
    assert_no_output(p, "strict");
    let o = go(&[
        "run".into(),
        "--lenient".into(),
        s(&bad),
        s(&p.join("lenient")),
    ]);
    assert!(assert_ok(&o).contains("unknown parameter `nomalize`"));
    let reference = weights(&p.join("ref"));
    assert!(reference.iter().any(|(n, _)| n.ends_with(".safetensors")));
    assert_eq!(weights(&p.join("lenient")), reference);
    // plan
    assert_fails(&go(&["plan".into(), s(&bad)]), &["--lenient"]);
    assert_ok(&go(&["plan".into(), "--lenient".into(), s(&bad)]));
    // batch: the stage is named after the file
    let int = p.join("int");
    let batch = |extra: &[&str]| {
        let mut a = vec!["batch".to_string(), "--quiet".into(), s(&bad)];
        a.extend(["--intermediate-dir".into(), s(&int)]);
        a.extend(extra.iter().map(|x| x.to_string()));
        go(&a)
    };
    assert_fails(&batch(&[]), &["--lenient"]);
    assert_ok(&batch(&["--lenient"]));
    assert_eq!(weights(&int.join("bad")), reference);
}

#[test]
fn check_reports_every_planning_problem_at_once() {
    check_fails(
        "merge_method: ties\nmodels:\n  - model: org/a\n    parameters: {weight: 0.5, density: 0.5}\n  - model: org/a\n    parameters: {weight: 0.5, density: 0.5}\n  - model: org/b\n    parameters: {density: 0.5}\n",
        &[
            "3 problems",
            "model `org/a` is listed twice",
            "merge method `ties` needs a `base_model`",
            "missing required parameter `weight` for model `org/b`",
            "recipe.yml:7:",
        ],
    );
}
