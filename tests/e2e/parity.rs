//! Parity with mergekit: every recipe of the public fixture set (tests/fixtures/manifest.json)
//! is run and checked with the fixture's own `compare.py` and the arguments its manifest gives.
//! Recipes whose feature smelt lacks are listed in `NOT_YET` with the reason, so the gap is
//! visible; the test fails if one of them starts passing, so the list stays honest.
//! Recipes in `BIT_EXACT` must also equal mergekit's bytes exactly (checked in Rust, no Python).

use std::path::Path;
use std::process::Command;

use crate::util::*;

/// Recipes not expected to pass yet, with why.
const NOT_YET: &[(&str, &str)] = &[(
    "arcee_fusion",
    "394 of 213,568 values take the other side of the importance mask: the per-row KL of two near-identical softmaxes is a sum of ulp-sized logs, so it depends on PyTorch's vectorised exp/log polynomials (issue 11)",
)];

/// Recipes whose output must be byte-identical to mergekit's.
const BIT_EXACT: &[&str] = &[
    "linear_bf16",
    "linear_weighted",
    "linear_nonorm_f16out",
    "task_arithmetic",
    "dare_ties_d1",
    "breadcrumbs",
    "passthrough_frankenmerge",
    "model_stock",
    "multislerp",
    "nuslerp_base",
    "slerp_gradient_bf16",
    "slerp_t",
    "ties",
    "ties_bf16",
    "breadcrumbs_ties_bf16",
];

/// Whether python3 with numpy is available; CI requires it (SMELT_REQUIRE_PY_REFS=1).
pub fn python_numpy() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var("SMELT_REQUIRE_PY_REFS").as_deref() != Ok("1"),
            "python3 with numpy is required (SMELT_REQUIRE_PY_REFS=1)"
        );
        eprintln!("note: python3 with numpy not found; compare.py checks skipped");
    }
    ok
}

fn compare(out: &Path, golden: &Path, args: &str) -> (bool, String) {
    let fx = fixtures();
    let args = args.replace("{root}", fx.to_str().unwrap());
    let o = Command::new("python3")
        .arg(fx.join("tools/compare.py"))
        .arg(out)
        .arg(golden)
        .args(args.split_whitespace())
        .output()
        .expect("python3");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn public_fixture_recipes_match_mergekit() {
    let fx = fixtures();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("manifest.json")).unwrap()).unwrap();
    let py = python_numpy();
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut unexpected_passes = Vec::new();
    for (name, entry) in manifest["recipes"].as_object().unwrap() {
        if entry["status"] != "ok" {
            continue;
        }
        let expect_fail = NOT_YET.iter().any(|(n, _)| n == name);
        let out = tmp.path().join(name);
        let o = smelt()
            .current_dir(fx.join("recipes"))
            .args(["run", "--quiet"])
            .arg(fx.join("recipes").join(format!("{name}.yml")))
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            !stderr(&o).contains("panicked"),
            "{name}: panic\n{}",
            stderr(&o)
        );
        let passed = if !o.status.success() {
            if !expect_fail {
                failures.push(format!("{name}: smelt failed: {}", stderr(&o)));
            }
            false
        } else if py {
            let (ok, report) = compare(
                &out,
                &fx.join("golden").join(name),
                entry["compare_args"].as_str().unwrap_or(""),
            );
            if !ok && !expect_fail {
                failures.push(format!("{name}: compare.py failed:\n{report}"));
            }
            ok
        } else {
            !expect_fail
        };
        if passed && expect_fail {
            unexpected_passes.push(name.clone());
        }
        if BIT_EXACT.contains(&name.as_str()) && o.status.success() {
            let ours = read_safetensors(&out.join("model.safetensors"));
            let gold = read_safetensors(&fx.join("golden").join(name).join("model.safetensors"));
            assert_eq!(
                ours.keys().collect::<Vec<_>>(),
                gold.keys().collect::<Vec<_>>(),
                "{name}: tensor names"
            );
            for (k, v) in &gold {
                assert!(
                    ours[k] == *v,
                    "{name}: tensor {k} differs from mergekit's bytes"
                );
            }
        }
    }
    for (n, why) in NOT_YET {
        eprintln!("not yet: {n} ({why})");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(
        unexpected_passes.is_empty(),
        "now passing, remove from NOT_YET: {unexpected_passes:?}"
    );
}
