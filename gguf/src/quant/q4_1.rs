//! Q4_1: 20-byte blocks of 32 values, `d: f16`, `m: f16` (the block minimum) then 16 bytes of
//! 4-bit codes in Q4_0's nibble order (spec §2.4).

use super::float::{read_f16, write_f16};
use super::q4_0::c_float_to_i8;

/// Elements per block.
pub(super) const QK: usize = 32;
/// Bytes per block.
pub(super) const BLOCK_BYTES: usize = 20;

/// Block minimum and maximum, scanned in order from (+FLT_MAX, -FLT_MAX).
pub(super) fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// Quantizes one block of 32 values into 20 bytes.
pub(super) fn quantize_block(x: &[f32], y: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    write_f16(y, 0, d);
    write_f16(y, 2, min);
    for j in 0..QK / 2 {
        let x0 = (x[j] - min) * id;
        let x1 = (x[QK / 2 + j] - min) * id;
        let q0 = c_float_to_i8(x0 + 0.5).min(15) as u8;
        let q1 = c_float_to_i8(x1 + 0.5).min(15) as u8;
        y[4 + j] = q0 | (q1 << 4);
    }
}

/// Dequantizes one 20-byte block into 32 values.
pub(super) fn dequantize_block(y: &[u8], out: &mut [f32]) {
    let d = read_f16(y, 0);
    let m = read_f16(y, 2);
    for j in 0..QK / 2 {
        let b = y[4 + j];
        out[j] = (b & 0x0F) as f32 * d + m;
        out[QK / 2 + j] = (b >> 4) as f32 * d + m;
    }
}
