//! Tests of the quantizers: byte-exact reference vectors produced by ggml (copied from the
//! shared fixtures into `tests/fixtures/gguf/blocks`), round-trip error against spec §7.3,
//! agreement with the PyPI `gguf` package's numpy quantizer, and parallel determinism.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{GgmlType, dequantize_row, quantize_row, quantize_rows};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gguf/blocks")
}

fn type_by_name(name: &str) -> GgmlType {
    GgmlType::ALL
        .into_iter()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("unknown type {name} in manifest"))
}

fn read_f32_file(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(bytes.len() % 4, 0, "{}", path.display());
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// One `files[]` entry of the fixture manifest.
struct Vector {
    file: String,
    ty: GgmlType,
    distribution: String,
    input: String,
    n_rows: usize,
    n_per_row: usize,
    sha256: String,
    /// gguf-py's max |dequant − x| / max|x| over the rows (None when the manifest says "inf").
    dequant_rel_err: Option<f64>,
}

fn load_manifest() -> Vec<Vector> {
    let path = fixtures_dir().join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("manifest.json parses");
    let files = json["files"].as_array().expect("files[]");
    files
        .iter()
        .map(|f| {
            let ty = type_by_name(f["type"].as_str().unwrap());
            assert_eq!(f["ggml_type"].as_u64().unwrap() as u32, ty.id());
            let n_per_row = f["n_per_row"].as_u64().unwrap() as usize;
            assert_eq!(
                f["bytes_per_row"].as_u64().unwrap() as usize,
                ty.row_bytes(n_per_row)
            );
            Vector {
                file: f["file"].as_str().unwrap().to_string(),
                ty,
                distribution: f["distribution"].as_str().unwrap().to_string(),
                input: f["input"].as_str().unwrap().to_string(),
                n_rows: f["n_rows"].as_u64().unwrap() as usize,
                n_per_row,
                sha256: f["sha256"].as_str().unwrap().to_string(),
                dequant_rel_err: f["crosscheck"]["dequant_max_err_rel_row_absmax"].as_f64(),
            }
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Describes the first block where `got` and `want` differ, or `None` if they are equal.
fn first_difference(v: &Vector, got: &[u8], want: &[u8]) -> Option<String> {
    if got == want {
        return None;
    }
    let block_bytes = v.ty.type_size();
    let blocks_per_row = v.n_per_row / v.ty.block_size();
    let n_diff_blocks = got
        .chunks(block_bytes)
        .zip(want.chunks(block_bytes))
        .filter(|(a, b)| a != b)
        .count();
    let (i, _) = got
        .chunks(block_bytes)
        .zip(want.chunks(block_bytes))
        .enumerate()
        .find(|(_, (a, b))| a != b)?;
    let off = i * block_bytes;
    Some(format!(
        "{}: {n_diff_blocks} differing blocks; first: row {} block {} (byte offset {off})\n  got  {}\n  want {}",
        v.file,
        i / blocks_per_row,
        i % blocks_per_row,
        hex(&got[off..off + block_bytes]),
        hex(&want[off..off + block_bytes]),
    ))
}

#[test]
fn reference_vectors_are_byte_identical() {
    let dir = fixtures_dir();
    let vectors = load_manifest();
    assert!(
        vectors.len() >= 160,
        "manifest has {} vectors",
        vectors.len()
    );
    let mut failures = Vec::new();
    let mut per_type: Vec<(GgmlType, usize, usize)> = Vec::new();
    for v in &vectors {
        let input = read_f32_file(&dir.join(&v.input));
        assert_eq!(input.len(), v.n_rows * v.n_per_row, "{}", v.input);
        let want = std::fs::read(dir.join(&v.file)).unwrap();
        assert_eq!(
            hex(&Sha256::digest(&want)),
            v.sha256,
            "{} corrupted",
            v.file
        );
        assert_eq!(
            want.len(),
            v.n_rows * v.ty.row_bytes(v.n_per_row),
            "{}",
            v.file
        );

        let mut got = vec![0xAAu8; want.len()];
        quantize_rows(v.ty, &input, v.n_per_row, &mut got);
        let failed = first_difference(v, &got, &want);
        // The single-row entry point must agree with the parallel one.
        let row_bytes = v.ty.row_bytes(v.n_per_row);
        let mut row = vec![0x55u8; row_bytes];
        for r in 0..v.n_rows {
            quantize_row(
                v.ty,
                &input[r * v.n_per_row..(r + 1) * v.n_per_row],
                &mut row,
            );
            assert_eq!(
                row,
                got[r * row_bytes..(r + 1) * row_bytes],
                "{} row {r}",
                v.file
            );
        }
        match per_type.iter_mut().find(|(t, _, _)| *t == v.ty) {
            Some(e) => {
                e.1 += 1;
                e.2 += usize::from(failed.is_none());
            }
            None => per_type.push((v.ty, 1, usize::from(failed.is_none()))),
        }
        failures.extend(failed);
    }
    for (ty, total, ok) in &per_type {
        eprintln!("{ty}: {ok}/{total} reference vectors byte-identical");
    }
    assert_eq!(per_type.len(), 12, "all 12 types covered");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Offsets of the fp16 scale fields (`d`, `dmin`, `m`) inside one block.
fn scale_offsets(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => &[],
    }
}

#[test]
fn dequantizing_reference_vectors_matches_gguf_py_error_and_is_finite() {
    let dir = fixtures_dir();
    for v in load_manifest() {
        let bytes = std::fs::read(dir.join(&v.file)).unwrap();
        let input = read_f32_file(&dir.join(&v.input));
        let mut out = vec![0f32; input.len()];
        let row_bytes = v.ty.row_bytes(v.n_per_row);
        for r in 0..v.n_rows {
            dequantize_row(
                v.ty,
                &bytes[r * row_bytes..(r + 1) * row_bytes],
                &mut out[r * v.n_per_row..(r + 1) * v.n_per_row],
            );
        }
        if v.distribution == "nonfinite" {
            continue;
        }
        // Blocks whose stored scales are finite must dequantize to finite values.
        let (qk, tb) = (v.ty.block_size(), v.ty.type_size());
        let mut all_scales_finite = true;
        for (b, block) in bytes.chunks_exact(tb).enumerate() {
            let finite = scale_offsets(v.ty).iter().all(|&o| {
                super::f16_to_f32(u16::from_le_bytes([block[o], block[o + 1]])).is_finite()
            });
            all_scales_finite &= finite;
            if finite && !matches!(v.ty, GgmlType::F16 | GgmlType::BF16) {
                let vals = &out[b * qk..(b + 1) * qk];
                assert!(vals.iter().all(|x| x.is_finite()), "{} block {b}", v.file);
            }
        }
        // The manifest's gguf-py figure: max over rows of max|deq − x| / max|x|.
        let mut worst = 0f64;
        for r in 0..v.n_rows {
            let xs = &input[r * v.n_per_row..(r + 1) * v.n_per_row];
            let ys = &out[r * v.n_per_row..(r + 1) * v.n_per_row];
            let amax = xs.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
            let err = xs
                .iter()
                .zip(ys)
                .fold(0f64, |m, (&x, &y)| m.max((y as f64 - x as f64).abs()));
            if amax > 0.0 {
                worst = worst.max(err / amax);
            } else if err > 0.0 {
                worst = f64::INFINITY;
            }
        }
        match v.dequant_rel_err {
            Some(want) => {
                let tol = 1e-4 * want.max(1e-3);
                assert!(
                    (worst - want).abs() <= tol,
                    "{}: max relative dequant error {worst} vs gguf-py {want}",
                    v.file
                );
            }
            None => assert!(
                !worst.is_finite() || !all_scales_finite,
                "{}: gguf-py saw an overflow, we computed {worst}",
                v.file
            ),
        }
    }
}

/// Deterministic N(0, 1) samples: SplitMix64 and Box–Muller.
fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let (u1, u2) = (next(), next());
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        out.push((r * t.cos()) as f32);
        out.push((r * t.sin()) as f32);
    }
    out.truncate(n);
    out
}

#[test]
fn roundtrip_error_matches_spec_table() {
    // Spec §7.3, Gaussian column (relative RMSE on 1M values).
    let table = [
        (GgmlType::F16, 0.00021),
        (GgmlType::BF16, 0.00166),
        (GgmlType::Q8_0, 0.00535),
        (GgmlType::Q6_K, 0.0177),
        (GgmlType::Q5_K, 0.0361),
        (GgmlType::Q5_1, 0.0378),
        (GgmlType::Q5_0, 0.0427),
        (GgmlType::Q4_K, 0.0713),
        (GgmlType::Q4_1, 0.0782),
        (GgmlType::Q4_0, 0.0859),
        (GgmlType::Q3_K, 0.151),
        (GgmlType::Q2_K, 0.297),
    ];
    let n_per_row = 1024;
    let x = gaussian(64 * n_per_row, 0x5EED);
    let sum_x2: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    for (ty, expected) in table {
        let mut q = vec![0u8; 64 * ty.row_bytes(n_per_row)];
        quantize_rows(ty, &x, n_per_row, &mut q);
        let mut y = vec![0f32; x.len()];
        for (qr, yr) in q
            .chunks_exact(ty.row_bytes(n_per_row))
            .zip(y.chunks_exact_mut(n_per_row))
        {
            dequantize_row(ty, qr, yr);
        }
        let sum_e2: f64 = x
            .iter()
            .zip(&y)
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum();
        let rel = (sum_e2 / sum_x2).sqrt();
        eprintln!("{ty}: relative RMSE {rel:.5} (spec {expected})");
        assert!(
            rel <= expected * 1.03 && rel >= expected * 0.95,
            "{ty}: relative RMSE {rel} outside [0.95, 1.03] × {expected}"
        );
    }
}

#[test]
fn f32_rows_are_raw_copies() {
    let x = [1.5f32, -0.0, f32::INFINITY, f32::from_bits(0x7FC0_1234)];
    let mut q = [0u8; 16];
    quantize_row(GgmlType::F32, &x, &mut q);
    for (i, v) in x.iter().enumerate() {
        assert_eq!(q[4 * i..4 * i + 4], v.to_bits().to_le_bytes());
    }
    let mut back = [0f32; 4];
    dequantize_row(GgmlType::F32, &q, &mut back);
    for (a, b) in x.iter().zip(back) {
        assert_eq!(a.to_bits(), b.to_bits());
    }
}

#[test]
#[should_panic(expected = "not a multiple of the block size")]
fn quantize_row_rejects_partial_blocks() {
    let x = [0f32; 48];
    let mut q = [0u8; 34];
    quantize_row(GgmlType::Q8_0, &x, &mut q);
}

#[test]
fn quantize_rows_is_deterministic_across_thread_counts() {
    let n_per_row = 512;
    let n_rows = 96;
    let x: Vec<f32> = gaussian(n_rows * n_per_row, 7)
        .into_iter()
        .enumerate()
        .map(|(i, v)| v * (1.0 + (i / n_per_row) as f32 * 0.37))
        .collect();
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::BF16,
    ] {
        let row_bytes = ty.row_bytes(n_per_row);
        let mut sequential = vec![0u8; n_rows * row_bytes];
        for (xr, qr) in x
            .chunks_exact(n_per_row)
            .zip(sequential.chunks_exact_mut(row_bytes))
        {
            quantize_row(ty, xr, qr);
        }
        for threads in [1, 2, 5] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut parallel = vec![0u8; n_rows * row_bytes];
            let used = std::sync::Mutex::new(std::collections::BTreeSet::new());
            pool.install(|| {
                quantize_rows(ty, &x, n_per_row, &mut parallel);
                // The pool really runs work on its own threads.
                rayon::scope(|_| {
                    used.lock().unwrap().insert(rayon::current_thread_index());
                });
            });
            assert!(used.lock().unwrap().iter().all(|i| i.is_some()));
            assert!(
                parallel == sequential,
                "{ty}: {threads} threads differ from the sequential result"
            );
        }
    }
}

#[test]
fn quantize_rows_splits_tall_matrices_into_parallel_tasks() {
    // 2048 rows of 256: with ≥ 2 threads some rows must be quantized off the calling thread.
    let n_per_row = 256;
    let n_rows = 2048;
    let x = gaussian(n_rows * n_per_row, 11);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let mut out = vec![0u8; n_rows * GgmlType::Q8_0.row_bytes(n_per_row)];
    let start = std::time::Instant::now();
    pool.install(|| quantize_rows(GgmlType::Q8_0, &x, n_per_row, &mut out));
    eprintln!("Q8_0 {n_rows}×{n_per_row}: {:?}", start.elapsed());
    let mut expected = vec![0u8; out.len()];
    let row_bytes = GgmlType::Q8_0.row_bytes(n_per_row);
    for (xr, qr) in x
        .chunks_exact(n_per_row)
        .zip(expected.chunks_exact_mut(row_bytes))
    {
        quantize_row(GgmlType::Q8_0, xr, qr);
    }
    assert!(out == expected);
}

/// Python script: quantizes the f32 rows in argv[1] (rows of argv[2]) with gguf-py for each
/// type named in argv[4..] and writes the concatenated bytes to argv[3].
const GGUF_PY_SCRIPT: &str = r#"
import sys
import numpy as np
from gguf.quants import quantize
from gguf.constants import GGMLQuantizationType as T
src, n_per_row, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
x = np.fromfile(src, dtype='<f4').reshape(-1, n_per_row)
with open(out, 'wb') as f:
    for name in sys.argv[4:]:
        q = x.astype(np.float16) if name == 'F16' else quantize(x, T[name])
        f.write(np.ascontiguousarray(q).tobytes())
"#;

/// Inputs on which gguf-py and ggml agree (no -0.0 blocks, no all-zero blocks, no NaN).
fn gguf_py_inputs(n_per_row: usize) -> Vec<f32> {
    let mut rows: Vec<Vec<f32>> = Vec::new();
    let g = gaussian(16 * n_per_row, 0xC0FFEE);
    for (r, scale) in [1.0f32, 0.02, 3e-3, 7.5, 250.0, 1e-5]
        .into_iter()
        .enumerate()
    {
        rows.push(
            g[r * n_per_row..(r + 1) * n_per_row]
                .iter()
                .map(|v| v * scale)
                .collect(),
        );
    }
    // One-sided and offset rows.
    rows.push(
        g[6 * n_per_row..7 * n_per_row]
            .iter()
            .map(|v| v.abs() + 0.5)
            .collect(),
    );
    rows.push(
        g[7 * n_per_row..8 * n_per_row]
            .iter()
            .map(|v| -v.abs() * 0.1 - 1.0)
            .collect(),
    );
    // Exact ties: half-integers in [-8, 7.5] with the anchor -8 in every 32-block (Q4_0 d = 1).
    rows.push(
        (0..n_per_row)
            .map(|i| {
                if i % 32 == 0 {
                    -8.0
                } else {
                    ((i * 7) % 31) as f32 * 0.5 - 7.5
                }
            })
            .collect(),
    );
    // Ties for Q8_0: half-integers with anchor 127.
    rows.push(
        (0..n_per_row)
            .map(|i| {
                if i % 32 == 5 {
                    127.0
                } else {
                    ((i * 13) % 253) as f32 * 0.5 - 63.0
                }
            })
            .collect(),
    );
    // Mostly zeros with one outlier per block; constant blocks.
    rows.push(
        (0..n_per_row)
            .map(|i| {
                if i % 32 == 17 {
                    0.7
                } else if i % 3 == 0 {
                    g[i] * 0.01
                } else {
                    0.0
                }
            })
            .collect(),
    );
    rows.push(
        (0..n_per_row)
            .map(|i| 0.25 * (1 + (i / 32) % 3) as f32)
            .collect(),
    );
    // Heavy tails and large values (f16 scales near overflow).
    rows.push(
        g[8 * n_per_row..9 * n_per_row]
            .iter()
            .map(|v| v * 0.05 / (0.2 + v.abs()).powi(2))
            .collect(),
    );
    rows.push(
        g[9 * n_per_row..10 * n_per_row]
            .iter()
            .map(|v| v * 20_000.0)
            .collect(),
    );
    rows.concat()
}

#[test]
fn legacy_types_match_gguf_py() {
    let available = std::process::Command::new("python3")
        .args(["-c", "import gguf, numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !available {
        if std::env::var("SMELT_REQUIRE_PY_REFS").as_deref() == Ok("1") {
            panic!("SMELT_REQUIRE_PY_REFS=1 but `python3 -c 'import gguf, numpy'` fails");
        }
        eprintln!("notice: python3 with gguf and numpy not found; skipping the gguf-py comparison");
        return;
    }
    let n_per_row = 256;
    let x = gguf_py_inputs(n_per_row);
    let n_rows = x.len() / n_per_row;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("x.f32");
    let out = dir.path().join("q.bin");
    let raw: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&src, raw).unwrap();
    let types = [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::BF16,
        GgmlType::F16,
    ];
    let status = std::process::Command::new("python3")
        .arg("-c")
        .arg(GGUF_PY_SCRIPT)
        .arg(&src)
        .arg(n_per_row.to_string())
        .arg(&out)
        .args(types.iter().map(|t| t.name()))
        .status()
        .expect("run python3");
    assert!(status.success(), "gguf-py script failed: {status}");
    let reference = std::fs::read(&out).unwrap();
    let mut offset = 0;
    let mut failures = Vec::new();
    for ty in types {
        let len = n_rows * ty.row_bytes(n_per_row);
        let want = &reference[offset..offset + len];
        offset += len;
        let mut got = vec![0u8; len];
        quantize_rows(ty, &x, n_per_row, &mut got);
        let v = Vector {
            file: format!("gguf-py {ty}"),
            ty,
            distribution: String::new(),
            input: String::new(),
            n_rows,
            n_per_row,
            sha256: String::new(),
            dequant_rel_err: None,
        };
        failures.extend(first_difference(&v, &got, want));
    }
    assert_eq!(
        offset,
        reference.len(),
        "gguf-py wrote unexpected extra bytes"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
