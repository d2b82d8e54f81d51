//! Every worked example in `recipes/` runs as it is on the bundled tiny models.

use crate::util::*;

#[test]
fn every_example_recipe_runs() {
    let dir = root().join("recipes");
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|s| s.to_str()) != Some("yml") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        if text.starts_with("---") || text.contains("\n---") {
            continue; // multi-document batch recipes run in the batch tests
        }
        let out = tmp.path().join(p.file_stem().unwrap());
        let o = smelt()
            .current_dir(root())
            .args(["run", "--quiet"])
            .arg(&p)
            .arg(&out)
            .output()
            .unwrap();
        assert_ok(&o);
        assert!(
            out.join("config.json").is_file(),
            "{}: no config.json",
            p.display()
        );
        assert!(
            out.join("README.md").is_file(),
            "{}: no model card",
            p.display()
        );
        let has_weights = out.join("model.safetensors").is_file()
            || out.join("model.safetensors.index.json").is_file();
        assert!(has_weights, "{}: no weights", p.display());
        n += 1;
    }
    assert!(n >= 2, "expected example recipes in recipes/, found {n}");
}
