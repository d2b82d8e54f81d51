//! Tests of the torch checkpoint reader against the fixtures (torch-written files compared with
//! the safetensors they were made from) and against hand-built malformed archives.

use std::path::{Path, PathBuf};

use super::testing::{build_zip, build_zip_with, state_dict_pickle};
use super::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// (name, dtype, shape, bytes) of every tensor of a safetensors file, sorted by name.
fn safetensors_tensors(p: &Path) -> Vec<(String, DType, Vec<usize>, Vec<u8>)> {
    let bytes = read(p);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let dt = DType::from_safetensors(&format!("{:?}", view.dtype())).unwrap();
            (name, dt, view.shape().to_vec(), view.data().to_vec())
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn torch_tensors(p: &Path) -> Vec<(String, DType, Vec<usize>, Vec<u8>)> {
    let bytes = read(p);
    let mut v: Vec<_> = read_torch_tensors(&bytes, p)
        .unwrap()
        .into_iter()
        .map(|t| (t.name, t.dtype, t.shape, bytes[t.data].to_vec()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn single_file_bin_equals_its_safetensors() {
    let bin = torch_tensors(&fixtures().join("torch/tiny-llama-ft1-bin/pytorch_model.bin"));
    let st = safetensors_tensors(&fixtures().join("models/tiny-llama/ft1/model.safetensors"));
    assert_eq!(bin.len(), 39); // 4 layers x 9 + embed, norm, lm_head
    assert_eq!(bin.len(), st.len());
    for (b, s) in bin.iter().zip(&st) {
        assert_eq!(b.0, s.0);
        assert_eq!((b.1, &b.2), (s.1, &s.2), "{}", b.0);
        assert!(b.3 == s.3, "bytes of {} differ", b.0);
    }
}

#[test]
fn sharded_bf16_bin_equals_ft2_rounded_to_bf16() {
    let dir = fixtures().join("torch/tiny-llama-ft2-bin-sharded-bf16");
    let index = read_bin_index(&dir.join("pytorch_model.bin.index.json")).unwrap();
    let st = safetensors_tensors(&fixtures().join("models/tiny-llama/ft2/model.safetensors"));
    assert_eq!(index.len(), st.len());

    let mut seen = Vec::new();
    let shards: std::collections::BTreeSet<&String> = index.values().collect();
    assert_eq!(shards.len(), 2);
    for shard in shards {
        for t in torch_tensors(&dir.join(shard)) {
            assert_eq!(
                index.get(&t.0),
                Some(shard),
                "{} is not mapped to {shard}",
                t.0
            );
            seen.push(t);
        }
    }
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(seen.len(), st.len());
    for (b, s) in seen.iter().zip(&st) {
        assert_eq!(b.0, s.0);
        assert_eq!((b.1, &b.2), (DType::BF16, &s.2), "{}", b.0);
        assert_eq!(s.1, DType::F32);
        let mut expect = Vec::new();
        let mut vals = vec![0.0f32; s.3.len() / 4];
        DType::F32.decode_f32(&s.3, &mut vals);
        for v in vals {
            expect.extend_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes());
        }
        assert!(b.3 == expect, "bf16 bytes of {} differ", b.0);
    }
}

#[test]
fn malicious_pickle_is_refused_and_never_run() {
    let p = fixtures().join("torch/malicious/pytorch_model.bin");
    let marker = "pwned-by-pickle.txt";
    let places = [
        std::env::current_dir().unwrap(),
        p.parent().unwrap().to_path_buf(),
        std::env::temp_dir(),
    ];
    for d in &places {
        assert!(
            !d.join(marker).exists(),
            "{} exists before the test",
            d.display()
        );
    }
    let err = read_torch_tensors(&read(&p), &p).unwrap_err().to_string();
    eprintln!("{err}");
    assert!(err.contains("posix.system"), "{err}");
    assert!(err.contains("pytorch_model.bin"), "{err}");
    assert!(err.contains("data.pkl"), "{err}");
    for d in &places {
        assert!(
            !d.join(marker).exists(),
            "{} was created",
            d.join(marker).display()
        );
    }
}

#[test]
fn truncated_and_corrupted_checkpoints_are_errors() {
    let p = fixtures().join("torch/tiny-llama-ft1-bin/pytorch_model.bin");
    let bytes = read(&p);
    // Every cut in the last 8 KiB (central directory, pickle is early) and a spread of others.
    let n = bytes.len();
    let cuts = (0..n)
        .step_by(4999)
        .chain((n.saturating_sub(8192)..n).step_by(7));
    for cut in cuts {
        assert!(
            read_torch_tensors(&bytes[..cut], &p).is_err(),
            "cut at {cut}"
        );
    }
    // Flipping bytes of the pickle (which starts right after the first local header).
    for i in 40..400 {
        let mut c = bytes.clone();
        c[i] ^= 0xA5;
        if let Ok(ts) = read_torch_tensors(&c, &p) {
            for t in ts {
                assert!(t.data.end <= c.len());
            }
        }
    }
}

fn checkpoint(pkl: &[u8], storages: &[(&str, &[u8])], method: u16, zip64: bool) -> Vec<u8> {
    let mut files: Vec<(String, &[u8])> = vec![("archive/data.pkl".into(), pkl)];
    files.push(("archive/byteorder".into(), b"little"));
    for (k, d) in storages {
        files.push((format!("archive/data/{k}"), d));
    }
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    build_zip_with(&refs, zip64, method, "/data/")
}

#[test]
fn storage_offsets_and_zip64_are_honoured() {
    let storage: Vec<u8> = (0u8..24).collect(); // 12 f16 elements
    let pkl = state_dict_pickle(
        &[
            ("a", "HalfStorage", "0", 12, 2, &[2, 3], &[3, 1]),
            ("b", "HalfStorage", "0", 12, 8, &[1, 4], &[1, 1]), // size-1 dim: stride ignored
            ("empty", "HalfStorage", "0", 12, 0, &[0, 5], &[5, 1]),
        ],
        true,
    );
    for zip64 in [false, true] {
        let ck = checkpoint(&pkl, &[("0", &storage)], 0, zip64);
        let ts = read_torch_tensors(&ck, Path::new("x.bin")).unwrap();
        assert_eq!(ts.len(), 3);
        assert_eq!((ts[0].dtype, &ts[0].shape[..]), (DType::F16, &[2, 3][..]));
        assert_eq!(&ck[ts[0].data.clone()], &storage[4..16]);
        assert_eq!(&ck[ts[1].data.clone()], &storage[16..24]);
        assert!(ts[2].data.is_empty());
    }
}

#[test]
fn bad_tensors_are_named() {
    let storage = [0u8; 24];
    let cases: [(&[usize], &[usize], usize, &str); 3] = [
        (&[2, 3], &[1, 2], 0, "not contiguous"),
        (&[4, 4], &[4, 1], 0, "runs past"),
        (&[2, 3], &[3, 1], 1, "runs past"),
    ];
    for (shape, stride, off, want) in cases {
        let pkl = state_dict_pickle(
            &[("t.weight", "FloatStorage", "0", 6, off, shape, stride)],
            false,
        );
        let ck = checkpoint(&pkl, &[("0", &storage)], 0, false);
        let e = read_torch_tensors(&ck, Path::new("m.bin"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.weight") && e.contains(want) && e.contains("m.bin"),
            "{e}"
        );
    }
    // Storage record missing.
    let pkl = state_dict_pickle(&[("w", "FloatStorage", "7", 6, 0, &[6], &[1])], false);
    let e = read_torch_tensors(
        &checkpoint(&pkl, &[("0", &storage)], 0, false),
        Path::new("m"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("archive/data/7") && e.contains("missing"), "{e}");
    // Storage declares more elements than its record holds.
    let pkl = state_dict_pickle(&[("w", "DoubleStorage", "0", 6, 0, &[6], &[1])], false);
    let e = read_torch_tensors(
        &checkpoint(&pkl, &[("0", &storage)], 0, false),
        Path::new("m"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("`w`") && e.contains("holds 24 bytes"), "{e}");
}

#[test]
fn compressed_records_are_refused_by_name() {
    let pkl = state_dict_pickle(&[("w", "FloatStorage", "0", 1, 0, &[1], &[1])], false);
    let ck = checkpoint(&pkl, &[("0", &[0u8; 4])], 8, false);
    let e = read_torch_tensors(&ck, Path::new("m.bin"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("archive/data/0") && e.contains("deflate"), "{e}");
}

#[test]
fn garbage_pickle_and_non_checkpoints_are_errors() {
    let ck = checkpoint(b"\x80\x02garbage that is not a pickle", &[], 0, false);
    let e = read_torch_tensors(&ck, Path::new("g.bin"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("g.bin") && e.contains("archive/data.pkl"), "{e}");
    let e = read_torch_tensors(b"\x80\x02\x8a\x0a", Path::new("old.bin")).unwrap_err();
    assert!(e.to_string().contains("legacy"), "{e}");
    let e = read_torch_tensors(b"hello world", Path::new("h.bin")).unwrap_err();
    assert!(e.to_string().contains("zip"), "{e}");
    let z = build_zip(&[("a/other.txt", b"x")], false, 0);
    let e = read_torch_tensors(&z, Path::new("z.bin")).unwrap_err();
    assert!(e.to_string().contains("data.pkl"), "{e}");
    // A pickle whose top level is not a dict.
    let ck = checkpoint(b"\x80\x02]q\x00.", &[], 0, false);
    let e = read_torch_tensors(&ck, Path::new("l.bin")).unwrap_err();
    assert!(e.to_string().contains("not a state dict"), "{e}");
}

#[test]
fn bin_index_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pytorch_model.bin.index.json");
    std::fs::write(&p, r#"{"metadata": {}, "weight_map": {"a": 3}}"#).unwrap();
    let e = read_bin_index(&p).unwrap_err().to_string();
    assert!(
        e.contains("pytorch_model.bin.index.json") && e.contains("`a`"),
        "{e}"
    );
    std::fs::write(&p, "{").unwrap();
    assert!(read_bin_index(&p).is_err());
    std::fs::write(&p, r#"{"weight_map": {"a": "s1.bin", "b": "s2.bin"}}"#).unwrap();
    let m = read_bin_index(&p).unwrap();
    assert_eq!(m.get("b").map(String::as_str), Some("s2.bin"));
    assert!(read_bin_index(&dir.path().join("missing.json")).is_err());
}
