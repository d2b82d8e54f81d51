//! `smelt batch`: multi-stage recipes (mergekit-multi's format) and many recipes in one run,
//! dependency order, up-to-date stages skipped, failure isolation, `--jobs`.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::util::*;

fn model(name: &str) -> String {
    fixtures()
        .join("models/tiny-llama")
        .join(name)
        .display()
        .to_string()
}

fn slerp(name: Option<&str>, a: &str, b: &str, t: f64) -> String {
    let mut s = String::new();
    if let Some(n) = name {
        s += &format!("name: {n}\n");
    }
    s + &format!(
        "models:\n  - model: {a}\n  - model: {b}\nmerge_method: slerp\nbase_model: {a}\n\
         parameters:\n  t: {t}\ndtype: float32\n"
    )
}

fn linear(name: Option<&str>, a: &str, b: &str) -> String {
    let mut s = String::new();
    if let Some(n) = name {
        s += &format!("name: {n}\n");
    }
    s + &format!(
        "models:\n  - model: {a}\n    parameters:\n      weight: 0.6\n  - model: {b}\n    \
         parameters:\n      weight: 0.4\nmerge_method: linear\ndtype: float32\n"
    )
}

/// The three-stage file of most tests: the final linear stage first, then the two slerps it
/// reads (so the file order is not the build order).
fn three_stages() -> String {
    format!(
        "# a linear merge of two slerps\n---\n{}---\n{}---\n{}",
        linear(None, "s1", "s2"),
        slerp(Some("s1"), &model("ft1"), &model("ft2"), 0.5),
        slerp(Some("s2"), &model("ft2"), &model("ft3"), 0.3),
    )
}

struct Setup {
    tmp: tempfile::TempDir,
    file: PathBuf,
}

impl Setup {
    fn new(text: &str) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("stages.yml");
        std::fs::write(&file, text).unwrap();
        Setup { tmp, file }
    }

    fn int(&self) -> PathBuf {
        self.tmp.path().join("int")
    }

    fn final_out(&self) -> PathBuf {
        self.tmp.path().join("final")
    }

    fn batch(&self, extra: &[&str]) -> Output {
        smelt()
            .env("SMELT_CACHE_DIR", self.tmp.path().join("cache"))
            .arg("batch")
            .arg("--quiet")
            .arg(&self.file)
            .arg("--intermediate-dir")
            .arg(self.int())
            .arg("--out-path")
            .arg(self.final_out())
            .args(extra)
            .output()
            .unwrap()
    }
}

/// The status column of `stage`'s row in the summary table.
fn status(out: &Output, stage: &str) -> String {
    let text = stdout(out);
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(stage)
            && rest.starts_with("  ")
        {
            let rest = rest.trim_start();
            for s in ["built", "up to date", "failed", "skipped"] {
                if rest.starts_with(s) {
                    return s.to_string();
                }
            }
        }
    }
    panic!("no row for stage {stage} in the summary:\n{text}");
}

/// The stage names in the summary table, in order.
fn rows(out: &Output) -> Vec<String> {
    stdout(out)
        .lines()
        .skip(1)
        .take_while(|l| !l.contains(" stages: "))
        .map(|l| l.split("  ").next().unwrap().to_string())
        .collect()
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn stages_run_in_dependency_order_and_match_separate_runs() {
    let s = Setup::new(&three_stages());
    let o = s.batch(&[]);
    assert_ok(&o);
    assert_eq!(rows(&o), ["s1", "s2", "(out-path)"], "{}", stdout(&o));
    for st in ["s1", "s2", "(out-path)"] {
        assert_eq!(status(&o, st), "built");
    }
    assert!(stdout(&o).contains("3 stages: 3 built, 0 up to date, 0 failed, 0 skipped"));
    // the same merges run one by one with `smelt run`, the stage names replaced by folders
    let sep = s.tmp.path().join("separate");
    std::fs::create_dir_all(&sep).unwrap();
    let r1 = sep.join("s1.yml");
    std::fs::write(&r1, slerp(None, &model("ft1"), &model("ft2"), 0.5)).unwrap();
    let r2 = sep.join("s2.yml");
    std::fs::write(&r2, slerp(None, &model("ft2"), &model("ft3"), 0.3)).unwrap();
    let rf = sep.join("final.yml");
    std::fs::write(
        &rf,
        linear(
            None,
            &sep.join("s1").display().to_string(),
            &sep.join("s2").display().to_string(),
        ),
    )
    .unwrap();
    for (r, out) in [(&r1, "s1"), (&r2, "s2"), (&rf, "final")] {
        assert_ok(&run(&[
            "run",
            "--quiet",
            r.to_str().unwrap(),
            sep.join(out).to_str().unwrap(),
        ]));
    }
    for (a, b) in [
        (s.int().join("s1"), sep.join("s1")),
        (s.int().join("s2"), sep.join("s2")),
        (s.final_out(), sep.join("final")),
    ] {
        for f in ["model.safetensors", "config.json", "tokenizer.json"] {
            assert_eq!(
                std::fs::read(a.join(f)).unwrap(),
                std::fs::read(b.join(f)).unwrap(),
                "{} differs from the separate run",
                a.join(f).display()
            );
        }
    }
    // each stage's card and lock carry its own document, not the whole file
    let card = std::fs::read_to_string(s.final_out().join("mergekit_config.yml")).unwrap();
    assert_eq!(card, linear(None, "s1", "s2"));
    let lock = std::fs::read_to_string(s.int().join("s2/smelt.lock")).unwrap();
    assert!(lock.contains("name: s2") && !lock.contains("name: s1"));
}

#[test]
fn a_second_run_is_up_to_date_and_force_rebuilds() {
    let s = Setup::new(&three_stages());
    assert_ok(&s.batch(&[]));
    let weights = [
        s.int().join("s1/model.safetensors"),
        s.int().join("s2/model.safetensors"),
        s.final_out().join("model.safetensors"),
    ];
    let before: Vec<_> = weights.iter().map(|p| mtime(p)).collect();
    let o = s.batch(&[]);
    assert_ok(&o);
    for st in ["s1", "s2", "(out-path)"] {
        assert_eq!(status(&o, st), "up to date", "{}", stdout(&o));
    }
    assert!(stdout(&o).contains("3 stages: 0 built, 3 up to date"));
    let after: Vec<_> = weights.iter().map(|p| mtime(p)).collect();
    assert_eq!(before, after, "an up-to-date stage was rewritten");
    let o = s.batch(&["--force"]);
    assert_ok(&o);
    assert!(stdout(&o).contains("3 stages: 3 built, 0 up to date"));
    for (p, b) in weights.iter().zip(&before) {
        assert_ne!(mtime(p), *b, "{} not rebuilt by --force", p.display());
    }
    // a deleted output file makes its stage stale again
    std::fs::remove_file(s.int().join("s2/tokenizer.json")).unwrap();
    let o = s.batch(&[]);
    assert_ok(&o);
    assert_eq!(status(&o, "s1"), "up to date");
    assert_eq!(status(&o, "s2"), "built");
    assert!(s.int().join("s2/tokenizer.json").is_file());
}

#[test]
fn editing_one_stage_rebuilds_it_and_its_dependants_only() {
    let s = Setup::new(&three_stages());
    assert_ok(&s.batch(&[]));
    let text = three_stages();
    assert_eq!(text.matches("t: 0.5\n").count(), 1);
    std::fs::write(&s.file, text.replace("t: 0.5\n", "t: 0.25\n")).unwrap();
    let s2_before = mtime(&s.int().join("s2/model.safetensors"));
    let o = s.batch(&[]);
    assert_ok(&o);
    assert_eq!(status(&o, "s1"), "built");
    assert_eq!(status(&o, "s2"), "up to date");
    assert_eq!(status(&o, "(out-path)"), "built");
    assert_eq!(mtime(&s.int().join("s2/model.safetensors")), s2_before);
}

#[test]
fn cycles_and_duplicate_names_are_clear_errors() {
    let s = Setup::new(&format!(
        "{}---\n{}---\n{}",
        linear(Some("a"), "b", &model("ft1")),
        linear(Some("b"), "a", &model("ft2")),
        slerp(Some("c"), &model("ft1"), &model("ft2"), 0.5),
    ));
    let o = s.batch(&[]);
    assert_fails(&o, &["dependency cycle", "a -> b -> a"]);
    assert!(
        !s.int().exists(),
        "nothing may be built when the batch is invalid"
    );
    let s = Setup::new(&format!(
        "{}---\n{}",
        slerp(Some("x"), &model("ft1"), &model("ft2"), 0.5),
        slerp(Some("x"), &model("ft2"), &model("ft3"), 0.5),
    ));
    let o = s.batch(&[]);
    assert_fails(
        &o,
        &[
            "stage name `x` is used twice",
            "stages.yml document 1 (line 1)",
            "stages.yml document 2 (line 11)",
        ],
    );
    // a recipe error in a later document names its line in the file
    let s = Setup::new(&format!(
        "{}---\nname: yy\nmerge_metod: linear\n",
        slerp(Some("x"), &model("ft1"), &model("ft2"), 0.5)
    ));
    assert_fails(&s.batch(&[]), &["stages.yml", "line 12", "merge_metod"]);
}

#[test]
fn a_failing_stage_skips_its_dependants_and_the_rest_is_built() {
    let s = Setup::new(&format!(
        "{}---\n{}---\n{}",
        slerp(Some("bad"), &model("ft1"), "/nonexistent/model", 0.5),
        linear(Some("reader"), "bad", &model("ft2")),
        slerp(Some("good"), &model("ft2"), &model("ft3"), 0.5),
    ));
    let o = s.batch(&[]);
    assert_fails(
        &o,
        &[
            "error: stage bad",
            "/nonexistent/model",
            "stage reader skipped: it reads stage `bad`, which failed",
        ],
    );
    assert_eq!(status(&o, "bad"), "failed");
    assert_eq!(status(&o, "reader"), "skipped");
    assert_eq!(status(&o, "good"), "built");
    assert!(stdout(&o).contains("3 stages: 1 built, 0 up to date, 1 failed, 1 skipped"));
    assert!(s.int().join("good/model.safetensors").is_file());
    assert_no_output(&s.int(), "bad");
    assert_no_output(&s.int(), "reader");
}

#[test]
fn jobs_2_writes_the_same_bytes_as_jobs_1() {
    let text = format!(
        "{}---\n{}",
        three_stages(),
        slerp(Some("s3"), &model("ft3"), &model("ft1"), 0.7)
    );
    let s = Setup::new(&text);
    assert_ok(&s.batch(&["--jobs", "1"]));
    let names = ["s1", "s2", "s3"];
    let one: Vec<_> = names
        .iter()
        .map(|n| dir_hashes(&s.int().join(n)))
        .chain([dir_hashes(&s.final_out())])
        .collect();
    // same paths (the locks record them), built again from nothing
    std::fs::remove_dir_all(s.int()).unwrap();
    std::fs::remove_dir_all(s.final_out()).unwrap();
    let o = s.batch(&["--jobs", "2", "--threads", "2"]);
    assert_ok(&o);
    assert!(stdout(&o).contains("4 stages: 4 built"), "{}", stdout(&o));
    let two: Vec<_> = names
        .iter()
        .map(|n| dir_hashes(&s.int().join(n)))
        .chain([dir_hashes(&s.final_out())])
        .collect();
    assert!(one[0].iter().any(|(n, _)| n == "smelt.lock"));
    assert_eq!(one, two);
}

#[test]
fn single_recipe_files_are_stages_named_after_their_stem() {
    // relative model paths resolve next to each file, not in the current directory
    let tmp = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        fixtures().join("models/tiny-llama"),
        tmp.path().join("models"),
    )
    .unwrap();
    let sub = tmp.path().join("recipes");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(sub.join("blend.yml"), linear(None, "pair", "../models/ft3")).unwrap();
    std::fs::write(
        sub.join("pair.yml"),
        slerp(None, "../models/ft1", "../models/ft2", 0.5),
    )
    .unwrap();
    let int = tmp.path().join("out");
    let o = smelt()
        .current_dir("/")
        .env("SMELT_CACHE_DIR", tmp.path().join("cache"))
        .args(["batch", "--quiet"])
        .arg(sub.join("blend.yml"))
        .arg(sub.join("pair.yml"))
        .arg("--intermediate-dir")
        .arg(&int)
        .output()
        .unwrap();
    assert_ok(&o);
    assert_eq!(rows(&o), ["pair", "blend"]);
    assert!(int.join("pair/model.safetensors").is_file());
    let lock = std::fs::read_to_string(int.join("blend/smelt.lock")).unwrap();
    assert!(
        lock.contains(&int.join("pair").display().to_string()),
        "{lock}"
    );
    // without --intermediate-dir the named stages have nowhere to go
    let o = run(&["batch", "--quiet", sub.join("pair.yml").to_str().unwrap()]);
    assert_fails(&o, &["--intermediate-dir"]);
}

#[test]
fn multi_document_example_recipes_run_as_batches() {
    let dir = root().join("recipes");
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|s| s.to_str()) != Some("yml") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        if !(text.starts_with("---") || text.contains("\n---")) {
            continue; // single recipes run in recipes.rs
        }
        let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
        let out = tmp.path().join(format!("{stem}-final"));
        let o = smelt()
            .current_dir(root())
            .env("SMELT_CACHE_DIR", tmp.path().join("cache"))
            .args(["batch", "--quiet"])
            .arg(&p)
            .arg("--intermediate-dir")
            .arg(tmp.path().join(&stem))
            .arg("--out-path")
            .arg(&out)
            .output()
            .unwrap();
        assert_ok(&o);
        assert!(!stdout(&o).contains(" 0 built"), "{}", stdout(&o));
        assert!(out.join("config.json").is_file(), "{}", p.display());
        assert!(out.join("model.safetensors").is_file(), "{}", p.display());
        assert!(out.join("README.md").is_file(), "{}", p.display());
        n += 1;
    }
    assert!(n >= 1, "expected a multi-stage example in recipes/");
}

#[test]
fn progress_names_each_stage_and_why_it_is_built() {
    let s = Setup::new(&three_stages());
    let o = smelt()
        .env("SMELT_CACHE_DIR", s.tmp.path().join("cache"))
        .arg("batch")
        .arg(&s.file)
        .arg("--intermediate-dir")
        .arg(s.int())
        .arg("--out-path")
        .arg(s.final_out())
        .output()
        .unwrap();
    let e = assert_ok(&o);
    for line in [
        "building s1 (not built yet)",
        "s1: built (",
        "building s2 (not built yet)",
        "building (out-path) (not built yet)",
        "(out-path): built (",
    ] {
        assert!(e.contains(line), "stderr lacks {line:?}:\n{e}");
    }
    // the final stage starts only after both stages it reads have finished
    let pos = |n: &str| e.find(n).unwrap();
    assert!(pos("building (out-path)") > pos("s1: built"));
    assert!(pos("building (out-path)") > pos("s2: built"));
}

/// The workflow of the README's "Reproducible merges in git": commit the recipe and its lock,
/// rebuild elsewhere with `--locked`, verify with `smelt verify --inputs`.
#[test]
fn readme_lock_workflow_rebuilds_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let recipe = repo.join("recipe.yml");
    std::fs::write(&recipe, slerp(None, &model("ft1"), &model("ft3"), 0.4)).unwrap();
    let lock = repo.join("recipe.lock");
    let smelt_in = |args: &[&std::ffi::OsStr]| {
        smelt()
            .env("SMELT_CACHE_DIR", tmp.path().join("cache"))
            .args(args)
            .output()
            .unwrap()
    };
    let os = |s: &Path| s.as_os_str().to_owned();
    let out1 = tmp.path().join("here/out");
    assert_ok(&smelt_in(&[
        "run".as_ref(),
        "-q".as_ref(),
        &os(&recipe),
        &os(&out1),
        "--lock".as_ref(),
        &os(&lock),
    ]));
    assert_eq!(
        std::fs::read(&lock).unwrap(),
        std::fs::read(out1.join("smelt.lock")).unwrap()
    );
    // "elsewhere": a clone of the repo, the same output folder name
    let clone = tmp.path().join("clone");
    std::fs::create_dir_all(&clone).unwrap();
    for f in ["recipe.yml", "recipe.lock"] {
        std::fs::copy(repo.join(f), clone.join(f)).unwrap();
    }
    let out2 = tmp.path().join("there/out");
    assert_ok(&smelt_in(&[
        "run".as_ref(),
        "-q".as_ref(),
        &os(&clone.join("recipe.yml")),
        &os(&out2),
        "--locked".as_ref(),
        &os(&clone.join("recipe.lock")),
    ]));
    assert_eq!(dir_hashes(&out1), dir_hashes(&out2));
    let v = smelt_in(&["verify".as_ref(), &os(&out2), "--inputs".as_ref()]);
    assert_ok(&v);
    assert!(stdout(&v).starts_with("ok: "), "{}", stdout(&v));
    // a drifted recipe is refused; a changed output file is reported
    let text = std::fs::read_to_string(clone.join("recipe.yml")).unwrap();
    std::fs::write(clone.join("recipe.yml"), text.replace("t: 0.4", "t: 0.5")).unwrap();
    let o = smelt_in(&[
        "run".as_ref(),
        "-q".as_ref(),
        &os(&clone.join("recipe.yml")),
        &os(&tmp.path().join("drift")),
        "--locked".as_ref(),
        &os(&clone.join("recipe.lock")),
    ]);
    assert_fails(&o, &["does not match its lock", "recipe text differs"]);
    std::fs::write(out2.join("config.json"), "{}").unwrap();
    let v = smelt_in(&["verify".as_ref(), &os(&out2)]);
    assert!(!v.status.success());
    assert!(stdout(&v).contains("DIFFERS") && stdout(&v).contains("config.json"));
}

#[test]
fn check_lints_every_document_and_run_points_to_batch() {
    let s = Setup::new(&three_stages());
    let o = run(&["check", s.file.to_str().unwrap()]);
    assert_ok(&o);
    let out = stdout(&o);
    for want in [
        "stages.yml document 1 (line 3, unnamed stage): ok (linear merge of 2 models)",
        "stages.yml document 2 (line 13, stage s1): ok (slerp merge of 2 models)",
        "stages.yml document 3 (line 23, stage s2): ok (slerp merge of 2 models)",
    ] {
        assert!(out.contains(want), "lacks {want:?}:\n{out}");
    }
    let o = run(&[
        "run",
        s.file.to_str().unwrap(),
        s.tmp.path().join("x").to_str().unwrap(),
    ]);
    assert_fails(&o, &["holds 3 recipes", "smelt batch"]);
}
