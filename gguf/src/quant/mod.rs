//! ggml block quantizers and dequantizers, byte-identical to ggml's reference quantizers
//! (`quantize_row_*_ref`, no importance matrix) on x86-64 without FMA (spec `gguf.md` §2).
//!
//! One file per format ([`float`] for F32/F16/BF16 rows, `q8_0` … `q6_k` for the block
//! formats) plus `kquant_util` for the searches the K-quants share, `kquant_lanes` for those
//! searches run on eight sub-blocks at once, and `lanes` (`lanes_avx2`) for the eight-lane
//! vectors they run on. All arithmetic is plain f32 in ggml's evaluation order, per lane,
//! without fused multiply-adds, so results do not depend on the machine, on AVX2 or on the
//! number of threads.

pub mod float;
mod kquant_lanes;
mod kquant_util;
mod lanes;
mod q2_k;
mod q3_k;
mod q4_0;
mod q4_1;
mod q4_k;
mod q5_0;
mod q5_1;
mod q5_k;
mod q6_k;
mod q8_0;

#[cfg(test)]
mod tests;

use rayon::prelude::*;

use super::GgmlType;

pub use float::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};

/// Block quantizer: `(block of values, block bytes)`.
type QuantizeBlock = fn(&[f32], &mut [u8]);
/// Block dequantizer: `(block bytes, block of values)`.
type DequantizeBlock = fn(&[u8], &mut [f32]);

/// The block functions, elements per block and bytes per block of a quantized type; `None` for
/// the element types F32/F16/BF16.
fn block_fns(ty: GgmlType) -> Option<(QuantizeBlock, DequantizeBlock, usize, usize)> {
    Some(match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => return None,
        GgmlType::Q8_0 => (
            q8_0::quantize_block,
            q8_0::dequantize_block,
            q8_0::QK,
            q8_0::BLOCK_BYTES,
        ),
        GgmlType::Q4_0 => (
            q4_0::quantize_block,
            q4_0::dequantize_block,
            q4_0::QK,
            q4_0::BLOCK_BYTES,
        ),
        GgmlType::Q4_1 => (
            q4_1::quantize_block,
            q4_1::dequantize_block,
            q4_1::QK,
            q4_1::BLOCK_BYTES,
        ),
        GgmlType::Q5_0 => (
            q5_0::quantize_block,
            q5_0::dequantize_block,
            q5_0::QK,
            q5_0::BLOCK_BYTES,
        ),
        GgmlType::Q5_1 => (
            q5_1::quantize_block,
            q5_1::dequantize_block,
            q5_1::QK,
            q5_1::BLOCK_BYTES,
        ),
        GgmlType::Q2_K => (
            q2_k::quantize_block,
            q2_k::dequantize_block,
            q2_k::QK,
            q2_k::BLOCK_BYTES,
        ),
        GgmlType::Q3_K => (
            q3_k::quantize_block,
            q3_k::dequantize_block,
            q3_k::QK,
            q3_k::BLOCK_BYTES,
        ),
        GgmlType::Q4_K => (
            q4_k::quantize_block,
            q4_k::dequantize_block,
            q4_k::QK,
            q4_k::BLOCK_BYTES,
        ),
        GgmlType::Q5_K => (
            q5_k::quantize_block,
            q5_k::dequantize_block,
            q5_k::QK,
            q5_k::BLOCK_BYTES,
        ),
        GgmlType::Q6_K => (
            q6_k::quantize_block,
            q6_k::dequantize_block,
            q6_k::QK,
            q6_k::BLOCK_BYTES,
        ),
    })
}

/// Checks the row shape shared by [`quantize_row`] and [`dequantize_row`].
fn check_row(ty: GgmlType, n: usize, n_bytes: usize) {
    assert!(
        n.is_multiple_of(ty.block_size()),
        "{ty}: row length {n} is not a multiple of the block size {}",
        ty.block_size()
    );
    assert_eq!(
        n_bytes,
        ty.row_bytes(n),
        "{ty}: a row of {n} values takes {} bytes, buffer has {n_bytes}",
        ty.row_bytes(n)
    );
}

/// Quantizes one row (`src.len()` a multiple of ty.block_size()) into `dst` (len ty.row_bytes(src.len())).
///
/// F32 is copied little-endian; F16/BF16 use ggml's rounding (see [`f32_to_f16`],
/// [`f32_to_bf16`]); block types give exactly the bytes of ggml's `quantize_row_*_ref`.
/// Non-finite inputs are converted deterministically but give meaningless blocks: callers
/// should reject NaN/Inf weights before quantizing (spec §2.15).
///
/// # Panics
/// If the row length is not a multiple of the block size or `dst` has the wrong length (a
/// caller bug: the GGUF writer validates shapes before quantizing).
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) {
    check_row(ty, src.len(), dst.len());
    match block_fns(ty) {
        Some((quantize, _, qk, bytes)) => {
            for (x, y) in src.chunks_exact(qk).zip(dst.chunks_exact_mut(bytes)) {
                quantize(x, y);
            }
        }
        None => match ty {
            GgmlType::F16 => float::quantize_f16(src, dst),
            GgmlType::BF16 => float::quantize_bf16(src, dst),
            _ => float::quantize_f32(src, dst),
        },
    }
}

/// Dequantizes one row.
///
/// `dst.len()` is the number of values (a multiple of the block size) and `src.len()` must be
/// `ty.row_bytes(dst.len())`. Arithmetic follows ggml's `dequantize_row_*`.
///
/// # Panics
/// If the lengths do not match as described.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    check_row(ty, dst.len(), src.len());
    match block_fns(ty) {
        Some((_, dequantize, qk, bytes)) => {
            for (y, x) in src.chunks_exact(bytes).zip(dst.chunks_exact_mut(qk)) {
                dequantize(y, x);
            }
        }
        None => match ty {
            GgmlType::F16 => float::dequantize_f16(src, dst),
            GgmlType::BF16 => float::dequantize_bf16(src, dst),
            _ => float::dequantize_f32(src, dst),
        },
    }
}

/// Quantizes `src` (n_rows × n_per_row, row-major) into `dst`, rows in parallel (rayon), deterministic.
///
/// Rows are independent, so the output is identical to calling [`quantize_row`] on each row
/// in turn, at any thread count. `dst.len()` must be `n_rows · ty.row_bytes(n_per_row)`.
///
/// # Panics
/// If `n_per_row` is zero or not a multiple of the block size, `src.len()` is not a multiple
/// of `n_per_row`, or `dst` has the wrong length.
pub fn quantize_rows(ty: GgmlType, src: &[f32], n_per_row: usize, dst: &mut [u8]) {
    assert!(n_per_row > 0, "{ty}: n_per_row must be positive");
    assert!(
        src.len().is_multiple_of(n_per_row),
        "{ty}: {} values do not form rows of {n_per_row}",
        src.len()
    );
    let row_bytes = ty.row_bytes(n_per_row);
    let n_rows = src.len() / n_per_row;
    assert!(
        n_per_row.is_multiple_of(ty.block_size()),
        "{ty}: row length {n_per_row} is not a multiple of the block size {}",
        ty.block_size()
    );
    assert_eq!(
        dst.len(),
        n_rows * row_bytes,
        "{ty}: {n_rows} rows of {n_per_row} values take {} bytes, buffer has {}",
        n_rows * row_bytes,
        dst.len()
    );
    // Group short rows so each task quantizes at least ~64k values.
    let rows_per_task = (65_536 / n_per_row).max(1);
    src.par_chunks(n_per_row * rows_per_task)
        .zip(dst.par_chunks_mut(row_bytes * rows_per_task))
        .for_each(|(x, y)| {
            for (xr, yr) in x.chunks_exact(n_per_row).zip(y.chunks_exact_mut(row_bytes)) {
                quantize_row(ty, xr, yr);
            }
        });
}
