//! The same recipe gives sha256-identical files at any thread count.

use crate::util::*;

#[test]
fn thread_count_does_not_change_a_single_bit() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    for recipe in ["linear_weighted", "passthrough_frankenmerge"] {
        let r = fx.join("recipes").join(format!("{recipe}.yml"));
        let mut hashes = Vec::new();
        for threads in ["1", "4"] {
            let parent = tmp.path().join(format!("{recipe}-t{threads}"));
            std::fs::create_dir_all(&parent).unwrap();
            let out = parent.join("out");
            // a tiny shard size makes several shards, written concurrently
            assert_ok(&run(&[
                "run",
                "--quiet",
                "--threads",
                threads,
                "--out-shard-size",
                "100k",
                r.to_str().unwrap(),
                out.to_str().unwrap(),
            ]));
            hashes.push(dir_hashes(&out));
        }
        assert!(
            hashes[0].len() > 3,
            "several shards expected: {:?}",
            hashes[0]
        );
        assert_eq!(
            hashes[0], hashes[1],
            "{recipe}: outputs differ between 1 and 4 threads"
        );
    }
}
