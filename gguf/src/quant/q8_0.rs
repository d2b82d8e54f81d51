//! Q8_0: 34-byte blocks of 32 values, `d: f16` then 32 signed 8-bit codes (spec §2.2).

use super::float::{read_f16, write_f16};
use super::q4_0::c_float_to_i8;

/// Elements per block.
pub(super) const QK: usize = 32;
/// Bytes per block.
pub(super) const BLOCK_BYTES: usize = 34;

/// Quantizes one block of 32 values into 34 bytes.
pub(super) fn quantize_block(x: &[f32], y: &mut [u8]) {
    let mut amax = 0.0f32;
    for &v in x {
        let a = v.abs();
        // C `MAX(amax, a)`: keeps `amax` only when it is strictly larger.
        amax = if amax > a { amax } else { a };
    }
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    write_f16(y, 0, d);
    for (q, &v) in y[2..2 + QK].iter_mut().zip(x) {
        // `roundf`: half away from zero; the product lies in [-127, 127] unless `id` overflowed.
        *q = c_float_to_i8((v * id).round()) as u8;
    }
}

/// Dequantizes one 34-byte block into 32 values.
pub(super) fn dequantize_block(y: &[u8], out: &mut [f32]) {
    let d = read_f16(y, 0);
    for (o, &q) in out.iter_mut().zip(&y[2..2 + QK]) {
        *o = (q as i8) as f32 * d;
    }
}
