//! Q5_1: 24-byte blocks of 32 values, `d: f16`, `m: f16`, `qh: [u8; 4]` then 16 bytes of low
//! nibbles; codes and high bits laid out as in Q5_0 (spec §2.6).

use super::float::{read_f16, write_f16};
use super::q4_0::c_float_to_i8;
use super::q4_1::min_max;

/// Elements per block.
pub(super) const QK: usize = 32;
/// Bytes per block.
pub(super) const BLOCK_BYTES: usize = 24;

/// Quantizes one block of 32 values into 24 bytes.
pub(super) fn quantize_block(x: &[f32], y: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    write_f16(y, 0, d);
    write_f16(y, 2, min);
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let x0 = (x[j] - min) * id;
        let x1 = (x[QK / 2 + j] - min) * id;
        // C `(uint8_t)(v)` with no clamp: truncation of a value in [0, 31.5].
        let q0 = c_float_to_i8(x0 + 0.5) as u8 as u32;
        let q1 = c_float_to_i8(x1 + 0.5) as u8 as u32;
        y[8 + j] = ((q0 & 0x0F) | ((q1 & 0x0F) << 4)) as u8;
        qh |= ((q0 >> 4) & 1) << j;
        qh |= ((q1 >> 4) & 1) << (j + QK / 2);
    }
    y[4..8].copy_from_slice(&qh.to_le_bytes());
}

/// Dequantizes one 24-byte block into 32 values.
pub(super) fn dequantize_block(y: &[u8], out: &mut [f32]) {
    let d = read_f16(y, 0);
    let m = read_f16(y, 2);
    let qh = u32::from_le_bytes([y[4], y[5], y[6], y[7]]);
    for j in 0..QK / 2 {
        let b = y[8 + j] as u32;
        let q0 = (b & 0x0F) | (((qh >> j) & 1) << 4);
        let q1 = (b >> 4) | (((qh >> (j + QK / 2)) & 1) << 4);
        out[j] = q0 as f32 * d + m;
        out[QK / 2 + j] = q1 as f32 * d + m;
    }
}
