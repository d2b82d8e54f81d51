//! A tensor over the memory budget is merged by the method's streaming kernel, and the
//! result is sha256-identical to the whole-tensor merge: the output never depends on
//! `--memory-budget`.

use crate::util::*;

#[test]
fn memory_budget_does_not_change_a_single_bit() {
    let dir = fixtures().join("recipes");
    let tmp = tempfile::tempdir().unwrap();
    for recipe in [
        "ties",
        "dare_ties_d1",
        "breadcrumbs",
        "della",
        "slerp_t",
        "nuslerp_base",
        "multislerp",
        "karcher",
        "sce",
        "model_stock",
    ] {
        let merge = |tag: &str, budget: Option<&str>| {
            // the same folder name each time: the model card names it
            let out = tmp.path().join(format!("{recipe}-{tag}")).join("out");
            let mut args = vec!["run", "--quiet", "--threads", "2"];
            if let Some(b) = budget {
                args.extend(["--memory-budget", b]);
            }
            let file = format!("{recipe}.yml");
            args.push(&file);
            let out_s = out.to_str().unwrap().to_string();
            args.push(&out_s);
            let o = smelt().current_dir(&dir).args(&args).output().unwrap();
            assert_ok(&o);
            dir_hashes(&out)
        };
        let whole = merge("whole", None);
        // 64 KiB is far below the 512×64 embeddings' working set (and most other tensors')
        let streamed = merge("streamed", Some("64KiB"));
        assert!(
            whole.iter().any(|(n, _)| n.ends_with(".safetensors")),
            "{recipe}: no weights written: {whole:?}"
        );
        assert_eq!(whole, streamed, "{recipe}: streamed merge differs");
    }
}

/// The same through the GGUF writer (its chunks follow the quantisation rows).
#[test]
fn memory_budget_does_not_change_a_gguf() {
    let dir = fixtures().join("recipes");
    let tmp = tempfile::tempdir().unwrap();
    for recipe in ["ties", "della"] {
        let merge = |tag: &str, budget: &str| {
            let out = tmp.path().join(format!("{recipe}-{tag}")).join("out");
            let file = format!("{recipe}.yml");
            let o = smelt()
                .current_dir(&dir)
                .args(["run", "--quiet", "--threads", "2", "--gguf", "Q8_0"])
                .args(["--pre", "gpt-2", "--memory-budget", budget, &file])
                .arg(&out)
                .output()
                .unwrap();
            assert_ok(&o);
            dir_hashes(&out)
        };
        let whole = merge("whole", "1GiB");
        assert!(
            whole.iter().any(|(n, _)| n.ends_with(".gguf")),
            "{recipe}: no GGUF written: {whole:?}"
        );
        assert_eq!(whole, merge("streamed", "64KiB"), "{recipe}: GGUF differs");
    }
}
