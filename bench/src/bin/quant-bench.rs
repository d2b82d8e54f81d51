//! Single-thread throughput of smelt's GGUF block quantizers (per CPU second of the thread, so
//! other jobs on the machine matter less), with a digest of the output so a change to the
//! kernels can be checked for byte identity on many blocks at once.
//!
//!     quant-bench [TYPE...]   (default Q4_K Q5_K Q6_K; env QB_MVALUES = millions of values, 4)
//!
//! The input imitates bf16 weights: 0.02·(roughly normal), rounded to bf16, with every 7th
//! row scaled by 50 and every 13th block holding one large outlier.

use smelt_gguf::GgmlType;
use smelt_gguf::quant::{bf16_to_f32, f32_to_bf16, quantize_row};

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn input(n: usize, row: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = mix(i as u64);
            let s: u32 = (0..4).map(|k| ((h >> (16 * k)) & 0xFFFF) as u32).sum();
            let mut v = 0.02 * (s as f32 / 65535.0 - 2.0) * 1.732;
            if (i / row).is_multiple_of(7) {
                v *= 50.0;
            }
            if i % (256 * 13) == 77 {
                v = 3.0;
            }
            bf16_to_f32(f32_to_bf16(v))
        })
        .collect()
}

/// CPU seconds used by the calling thread.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// FNV-1a over the bytes.
fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn main() {
    let mut names: Vec<String> = std::env::args().skip(1).collect();
    if names.is_empty() {
        names = ["Q4_K", "Q5_K", "Q6_K"].map(String::from).to_vec();
    }
    let mvalues: usize = std::env::var("QB_MVALUES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let row = 2048;
    let x = input(mvalues * 1_000_000 / row * row, row);
    for name in names {
        let ty = GgmlType::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .unwrap_or_else(|| panic!("unknown type {name}"));
        let rb = ty.row_bytes(row);
        let mut out = vec![0u8; x.len() / row * rb];
        let t0 = thread_cpu_seconds();
        for (xr, yr) in x.chunks_exact(row).zip(out.chunks_exact_mut(rb)) {
            quantize_row(ty, xr, yr);
        }
        let s = thread_cpu_seconds() - t0;
        println!(
            "{name}: {:.1} ns/value, {:.1} M values per CPU second, digest {:016x}",
            s * 1e9 / x.len() as f64,
            x.len() as f64 / s / 1e6,
            digest(&out)
        );
    }
}
