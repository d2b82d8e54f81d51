//! Property tests of the recipe parser: thousands of generated inputs (random text, and a
//! valid recipe with bytes flipped, inserted, removed or cut off) must give `Ok` or an error,
//! never a panic or a hang. The format parsers have theirs in formats/tests/parsers.rs and
//! gguf/tests/parsers.rs; long runs of the same entry points live in `fuzz/` (cargo-fuzz).

use std::path::{Path, PathBuf};

use merge_core::recipe::Recipe;
use proptest::prelude::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// One edit of a valid input.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Edit::Flip(i, x)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), 1..64usize).prop_map(|(i, n)| Edit::Remove(i, n)),
        any::<usize>().prop_map(Edit::Truncate),
    ];
    prop::collection::vec(edit, 1..4)
}

fn apply(valid: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut v = valid.to_vec();
    for e in edits {
        let n = v.len().max(1);
        match e {
            Edit::Flip(i, x) => {
                if !v.is_empty() {
                    v[i % n] ^= x;
                }
            }
            Edit::Insert(i, b) => {
                let at = i % (v.len() + 1);
                v.splice(at..at, b.iter().copied());
            }
            Edit::Remove(i, k) => {
                let at = i % n;
                let end = (at + k).min(v.len());
                if at < end {
                    v.drain(at..end);
                }
            }
            Edit::Truncate(i) => v.truncate(i % n),
        }
    }
    v
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn recipe_yaml(text in "[ -~\n]{0,200}", e in edits()) {
        let _ = Recipe::parse(&text, Path::new("r.yml"), Path::new("."));
        let valid = std::fs::read(fixtures().join("recipes/ties.yml")).unwrap();
        let edited = String::from_utf8_lossy(&apply(&valid, &e)).into_owned();
        let _ = Recipe::parse(&edited, Path::new("r.yml"), Path::new("."));
    }
}
