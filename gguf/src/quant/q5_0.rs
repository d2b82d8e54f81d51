//! Q5_0: 22-byte blocks of 32 values, `d: f16`, `qh: [u8; 4]` (bit 4 of every code, element j
//! at bit j of the little-endian u32) then 16 bytes of low nibbles in Q4_0's order (spec §2.5).

use super::float::{read_f16, write_f16};
use super::q4_0::{c_float_to_i8, signed_absmax};

/// Elements per block.
pub(super) const QK: usize = 32;
/// Bytes per block.
pub(super) const BLOCK_BYTES: usize = 22;

/// Quantizes one block of 32 values into 22 bytes.
pub(super) fn quantize_block(x: &[f32], y: &mut [u8]) {
    let max = signed_absmax(x);
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    write_f16(y, 0, d);
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let x0 = x[j] * id;
        let x1 = x[QK / 2 + j] * id;
        let q0 = c_float_to_i8(x0 + 16.5).min(31) as u8 as u32;
        let q1 = c_float_to_i8(x1 + 16.5).min(31) as u8 as u32;
        y[6 + j] = ((q0 & 0x0F) | ((q1 & 0x0F) << 4)) as u8;
        qh |= ((q0 >> 4) & 1) << j;
        qh |= ((q1 >> 4) & 1) << (j + QK / 2);
    }
    y[2..6].copy_from_slice(&qh.to_le_bytes());
}

/// Dequantizes one 22-byte block into 32 values.
pub(super) fn dequantize_block(y: &[u8], out: &mut [f32]) {
    let d = read_f16(y, 0);
    let qh = u32::from_le_bytes([y[2], y[3], y[4], y[5]]);
    for j in 0..QK / 2 {
        let b = y[6 + j] as u32;
        let q0 = (b & 0x0F) | (((qh >> j) & 1) << 4);
        let q1 = (b >> 4) | (((qh >> (j + QK / 2)) & 1) << 4);
        out[j] = (q0 as i32 - 16) as f32 * d;
        out[QK / 2 + j] = (q1 as i32 - 16) as f32 * d;
    }
}
