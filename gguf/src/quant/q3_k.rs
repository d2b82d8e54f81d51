//! Q3_K: 110-byte super-blocks of 256 values (spec §2.9): `hmask: [u8; 32]` (third bit of every
//! code: element e at byte e % 32, bit e / 32), `qs: [u8; 64]` (low 2 bits, plane layout E),
//! `scales: [u8; 12]` (sixteen 6-bit signed scales, offset 32), `d: f16`.

use super::float::{read_f16, write_f16};
use super::kquant_util::{get_2bit, make_q3_quants, nearest_int, pack_2bit_planes};

/// Elements per super-block.
pub(super) const QK: usize = 256;
/// Bytes per super-block.
pub(super) const BLOCK_BYTES: usize = 110;

const HMASK: usize = 0;
const QS: usize = 32;
const SCALES: usize = 96;
const D: usize = 108;

/// The 6-bit scale `j` (0..16), still offset by 32, from the 12 packed bytes.
fn get_scale(sc: &[u8], j: usize) -> u8 {
    let low = if j < 8 { sc[j] & 0x0F } else { sc[j - 8] >> 4 };
    low | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)
}

/// Quantizes one super-block of 256 values into 110 bytes.
pub(super) fn quantize_block(x: &[f32], y: &mut [u8]) {
    let mut codes = [0u8; QK];
    let mut scales = [0f32; 16];
    let mut max_scale = 0.0f32;
    let mut amax = 0.0f32;
    for j in 0..16 {
        scales[j] = make_q3_quants(&x[16 * j..16 * j + 16], 4, &mut codes[16 * j..16 * j + 16]);
        let a = scales[j].abs();
        if a > amax {
            amax = a;
            max_scale = scales[j];
        }
    }

    let mut sc = [0u8; 12];
    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for j in 0..16 {
            // C stores nearest_int into an int8_t before clamping.
            let l = (nearest_int(iscale * scales[j]) as i8).clamp(-32, 31) as i32 + 32;
            let l = l as u8;
            if j < 8 {
                sc[j] = l & 0x0F;
            } else {
                sc[j - 8] |= (l & 0x0F) << 4;
            }
            sc[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
        }
        write_f16(y, D, 1.0 / iscale);
    } else {
        write_f16(y, D, 0.0);
    }
    y[SCALES..SCALES + 12].copy_from_slice(&sc);

    // Second pass with the stored (fp16-rounded) scales; a zero scale keeps the search codes.
    let d_all = read_f16(y, D);
    for j in 0..16 {
        let s = get_scale(&sc, j) as i32 - 32;
        let d = d_all * s as f32;
        if d == 0.0 {
            continue;
        }
        for i in 16 * j..16 * j + 16 {
            codes[i] = (nearest_int(x[i] / d).clamp(-4, 3) + 4) as u8;
        }
    }

    let hmask = &mut y[HMASK..HMASK + 32];
    hmask.fill(0);
    for (e, c) in codes.iter_mut().enumerate() {
        if *c > 3 {
            hmask[e % 32] |= 1 << (e / 32);
            *c -= 4;
        }
    }
    pack_2bit_planes(&codes, &mut y[QS..QS + 64]);
}

/// Dequantizes one 110-byte super-block into 256 values.
pub(super) fn dequantize_block(y: &[u8], out: &mut [f32]) {
    let d_all = read_f16(y, D);
    let sc = &y[SCALES..SCALES + 12];
    let hmask = &y[HMASK..HMASK + 32];
    let qs = &y[QS..QS + 64];
    for j in 0..16 {
        let dl = d_all * (get_scale(sc, j) as i32 - 32) as f32;
        for e in 16 * j..16 * j + 16 {
            let high = (hmask[e % 32] >> (e / 32)) & 1;
            let q = get_2bit(qs, e) as i32 - if high == 1 { 0 } else { 4 };
            out[e] = dl * q as f32;
        }
    }
}
