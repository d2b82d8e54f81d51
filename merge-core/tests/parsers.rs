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

#[path = "../../tests/support/fuzz_edits.rs"]
mod fuzz_edits;
use fuzz_edits::{apply, config, edits};

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
