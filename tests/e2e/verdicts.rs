//! `smelt check` (and `run`) reject what mergekit rejects when it plans, from the recipe
//! alone: a model listed twice, slice sources of unequal length, a slerp slice without two
//! sources, a base model that is not among a slice's sources.

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
