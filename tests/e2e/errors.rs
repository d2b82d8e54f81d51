//! Bad input: each case exits with status 1, names what is wrong, never panics and leaves no
//! output folder (not even a partial one) behind.

use std::path::Path;

use crate::util::*;

struct Case {
    tmp: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        Case {
            tmp: tempfile::tempdir().unwrap(),
        }
    }
    fn p(&self) -> &Path {
        self.tmp.path()
    }
    fn model(&self, name: &str, layers: usize, seed: f32) {
        let d = self.p().join(name);
        let ts = tiny_llama(&d, layers, 8, 16, seed);
        save(&d, &ts);
    }
    /// Runs `recipe` into `out` and checks the failure.
    fn fails(&self, recipe_text: &str, needles: &[&str]) {
        let r = recipe(self.p(), recipe_text);
        let o = run(&[
            "run",
            "--quiet",
            r.to_str().unwrap(),
            self.p().join("out").to_str().unwrap(),
        ]);
        assert_fails(&o, needles);
        assert_no_output(self.p(), "out");
    }
}

const LINEAR_AB: &str = "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 0.5}\n  - model: b\n    parameters: {weight: 0.5}\n";

#[test]
fn missing_model_path() {
    let c = Case::new();
    c.model("a", 2, 0.1);
    c.fails(LINEAR_AB, &["model `b` not found", "looked in"]);
}

#[test]
fn tensor_missing_in_one_model_names_both() {
    let c = Case::new();
    c.model("a", 2, 0.1);
    let d = c.p().join("b");
    let ts: Vec<T> = tiny_llama(&d, 2, 8, 16, 0.2)
        .into_iter()
        .filter(|t| t.name != "model.layers.1.mlp.up_proj.weight")
        .collect();
    save(&d, &ts);
    c.fails(
        LINEAR_AB,
        &["model.layers.1.mlp.up_proj.weight", "`b`", "`a` has it"],
    );
}

#[test]
fn shape_mismatch_gives_both_shapes() {
    let c = Case::new();
    c.model("a", 2, 0.1);
    let d = c.p().join("b");
    let mut ts = tiny_llama(&d, 2, 8, 16, 0.2);
    for t in &mut ts {
        if t.name == "model.layers.0.self_attn.q_proj.weight" {
            *t = T::f32(&t.name, &[4, 8], |i| i as f32);
        }
    }
    save(&d, &ts);
    c.fails(
        LINEAR_AB,
        &[
            "shape mismatch",
            "[8, 8]",
            "[4, 8]",
            "model.layers.0.self_attn.q_proj.weight",
        ],
    );
}

#[test]
fn unsupported_dtype_in_a_merge() {
    let c = Case::new();
    for (name, seed) in [("a", 0.1), ("b", 0.2)] {
        let d = c.p().join(name);
        let mut ts = tiny_llama(&d, 2, 8, 16, seed);
        ts[1] = T {
            name: ts[1].name.clone(),
            dtype: "I64",
            shape: vec![8, 8],
            data: vec![0u8; 8 * 64],
        };
        save(&d, &ts);
    }
    c.fails(LINEAR_AB, &["I64", "cannot be merged"]);
}

#[test]
fn truncated_safetensors_names_the_file() {
    let c = Case::new();
    c.model("a", 2, 0.1);
    c.model("b", 2, 0.2);
    let f = c.p().join("b/model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 10]).unwrap();
    c.fails(LINEAR_AB, &["b/model.safetensors", "invalid checkpoint"]);
    std::fs::write(&f, b"garbage").unwrap();
    c.fails(LINEAR_AB, &["b/model.safetensors"]);
}

#[test]
fn malformed_yaml_has_line_and_column() {
    let c = Case::new();
    c.fails(
        "merge_method: linear\nmodels:\n  - model: [a\n",
        &["recipe.yml", "line 3"],
    );
}

#[test]
fn unknown_key_is_named_with_the_allowed_keys() {
    let c = Case::new();
    c.model("a", 2, 0.1);
    c.fails(
        "merge_method: linear\nmodels:\n  - model: a\n    paramters: {weight: 1}\n",
        &["paramters", "line 4", "parameters"],
    );
    c.fails(
        "merge_method: linear\nbase_modle: a\nmodels:\n  - model: a\n",
        &["base_modle", "line 2", "base_model"],
    );
}

#[test]
fn unknown_parameter_is_named() {
    let c = Case::new();
    c.model("a", 2, 0.1);
    c.fails(
        "merge_method: linear\nmodels:\n  - model: a\n    parameters: {wieght: 1}\n",
        &["wieght", "weight"],
    );
}

#[test]
fn missing_required_parameter_names_it_and_the_model() {
    let c = Case::new();
    c.model("a", 2, 0.1);
    c.model("b", 2, 0.2);
    c.fails(
        "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\n  - model: b\n",
        &["missing required parameter `weight`", "`b`"],
    );
}

#[test]
fn layer_range_beyond_the_model() {
    let c = Case::new();
    c.model("a", 2, 0.1);
    c.fails(
        "merge_method: passthrough\nslices:\n  - sources:\n      - model: a\n        layer_range: [0, 5]\n",
        &["layer_range [0, 5]", "2 layers"],
    );
}

#[test]
fn slice_sources_of_unequal_length() {
    let c = Case::new();
    c.model("a", 3, 0.1);
    c.model("b", 3, 0.2);
    c.fails(
        "merge_method: linear\nslices:\n  - sources:\n      - model: a\n        layer_range: [0, 2]\n        parameters: {weight: 1}\n      - model: b\n        layer_range: [0, 3]\n        parameters: {weight: 1}\n",
        &["same number of layers"],
    );
}

#[test]
fn passthrough_with_two_sources_per_slice() {
    let c = Case::new();
    c.model("a", 2, 0.1);
    c.model("b", 2, 0.2);
    c.fails(
        "merge_method: passthrough\nslices:\n  - sources:\n      - model: a\n        layer_range: [0, 2]\n      - model: b\n        layer_range: [0, 2]\n",
        &["exactly one input"],
    );
}

#[test]
fn unknown_method_lists_known_ones() {
    let c = Case::new();
    c.model("a", 2, 0.1);
    c.fails(
        "merge_method: lineer\nmodels:\n  - model: a\n",
        &["unknown merge_method `lineer`", "linear"],
    );
}

#[test]
fn output_that_cannot_be_written() {
    let c = Case::new();
    c.model("a", 2, 0.1);
    std::fs::write(c.p().join("afile"), b"x").unwrap();
    let r = recipe(c.p(), "merge_method: passthrough\nmodels:\n  - model: a\n");
    let out = c.p().join("afile/out");
    let o = run(&["run", "--quiet", r.to_str().unwrap(), out.to_str().unwrap()]);
    assert_fails(&o, &["afile"]);
    let o = run(&[
        "run",
        "--quiet",
        r.to_str().unwrap(),
        c.p().join("afile").to_str().unwrap(),
    ]);
    assert_fails(&o, &["not a folder"]);
}

#[test]
fn output_that_is_an_input_is_refused_even_with_force() {
    let c = Case::new();
    c.model("a", 2, 0.1);
    let r = recipe(c.p(), "merge_method: passthrough\nmodels:\n  - model: a\n");
    let before = dir_hashes(&c.p().join("a"));
    for extra in [&[][..], &["--force"][..]] {
        let mut args = vec!["run", "--quiet"];
        args.extend_from_slice(extra);
        let out = c.p().join("a");
        args.extend([r.to_str().unwrap(), out.to_str().unwrap()]);
        assert_fails(&run(&args), &["overlaps the input"]);
        let out = c.p();
        let args2 = [
            "run",
            "--quiet",
            "--force",
            r.to_str().unwrap(),
            out.to_str().unwrap(),
        ];
        assert_fails(&run(&args2), &["overlaps the input"]);
    }
    assert_eq!(before, dir_hashes(&c.p().join("a")), "input changed");
}

#[test]
fn non_empty_output_needs_force() {
    let c = Case::new();
    c.model("a", 2, 0.1);
    let r = recipe(c.p(), "merge_method: passthrough\nmodels:\n  - model: a\n");
    let out = c.p().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), b"x").unwrap();
    assert_fails(
        &run(&["run", "--quiet", r.to_str().unwrap(), out.to_str().unwrap()]),
        &["not empty", "--force"],
    );
    assert!(out.join("keep.txt").exists());
    assert_ok(&run(&[
        "run",
        "--quiet",
        "--force",
        r.to_str().unwrap(),
        out.to_str().unwrap(),
    ]));
    assert!(!out.join("keep.txt").exists() && out.join("model.safetensors").exists());
}

#[test]
fn method_that_needs_a_base_without_one() {
    let c = Case::new();
    c.model("a", 2, 0.1);
    c.model("b", 2, 0.2);
    c.fails(
        "merge_method: ties\nmodels:\n  - model: a\n    parameters: {weight: 1, density: 0.5}\n  - model: b\n    parameters: {weight: 1, density: 0.5}\n",
        &["`ties` needs a `base_model`"],
    );
    // a slices merge must list the base among each slice's sources
    c.fails(
        "merge_method: task_arithmetic\nbase_model: a\nslices:\n  - sources:\n      - model: b\n        layer_range: [0, 2]\n        parameters: {weight: 1}\n",
        &["base model `a` must be listed"],
    );
}

#[test]
fn base_model_on_a_method_without_one_only_warns() {
    let c = Case::new();
    c.model("a", 2, 0.1);
    c.model("b", 2, 0.2);
    let r = recipe(
        c.p(),
        "merge_method: linear\nbase_model: b\nmodels:\n  - model: a\n    parameters: {weight: 1}\n",
    );
    let o = run(&[
        "run",
        r.to_str().unwrap(),
        c.p().join("out").to_str().unwrap(),
    ]);
    assert!(assert_ok(&o).contains("is not used by merge method `linear`"));
}
