//! Q4_0: 18-byte blocks of 32 values, `d: f16` then 16 bytes of 4-bit codes (spec §2.3).
//! Element j sits in the low nibble of byte j, element j + 16 in its high nibble.

use super::float::{read_f16, write_f16};

/// Elements per block.
pub(super) const QK: usize = 32;
/// Bytes per block.
pub(super) const BLOCK_BYTES: usize = 18;

/// The first element with the largest magnitude (signed), or +0.0 for an all-zero block.
pub(super) fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// C's float → small-integer cast as compiled for x86-64: `cvttss2si` truncates toward zero
/// and yields `i32::MIN` ("integer indefinite") for NaN and out-of-range values; the narrowing
/// to `int8_t`/`uint8_t` then keeps the low byte. Returns that low byte as an `i8`.
///
/// In-range values (all finite-scale blocks) simply truncate. The out-of-range path matters when
/// a block's scale is an f32 subnormal: `1/d` overflows to infinity and ggml's codes become 0.
pub(super) fn c_float_to_i8(v: f32) -> i8 {
    let i = if v.is_nan() || !(-2_147_483_648.0..2_147_483_648.0).contains(&v) {
        i32::MIN
    } else {
        v as i32
    };
    i as i8
}

/// Quantizes one block of 32 values into 18 bytes.
pub(super) fn quantize_block(x: &[f32], y: &mut [u8]) {
    let max = signed_absmax(x);
    // An all-zero block gives d = 0 / -8 = -0.0, stored as 0x8000 (as ggml does).
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    write_f16(y, 0, d);
    for j in 0..QK / 2 {
        let x0 = x[j] * id;
        let x1 = x[QK / 2 + j] * id;
        let q0 = c_float_to_i8(x0 + 8.5).min(15) as u8;
        let q1 = c_float_to_i8(x1 + 8.5).min(15) as u8;
        y[2 + j] = q0 | (q1 << 4);
    }
}

/// Dequantizes one 18-byte block into 32 values.
pub(super) fn dequantize_block(y: &[u8], out: &mut [f32]) {
    let d = read_f16(y, 0);
    for j in 0..QK / 2 {
        let b = y[2 + j];
        out[j] = ((b & 0x0F) as i32 - 8) as f32 * d;
        out[QK / 2 + j] = ((b >> 4) as i32 - 8) as f32 * d;
    }
}
