//! Q5_K: 176-byte super-blocks of 256 values (spec §2.11): `d: f16`, `dmin: f16`,
//! `scales: [u8; 12]` (as Q4_K), `qh: [u8; 32]` (fifth bits: chunk c puts element 64c+l at bit
//! 2c and element 64c+32+l at bit 2c+1 of byte l), `qs: [u8; 128]` (low nibbles as Q4_K).

use super::float::read_f16;
use super::kquant_util::{Qkx2Params, get_scale_min_k4};
use super::lanes::{Lanes, with_avx2};
use super::q4_k::quantize_scales_and_codes;

/// Elements per super-block.
pub(super) const QK: usize = 256;
/// Bytes per super-block.
pub(super) const BLOCK_BYTES: usize = 176;

const D: usize = 0;
const DMIN: usize = 2;
const SCALES: usize = 4;
const QH: usize = 16;
const QS: usize = 48;

with_avx2!(
    /// Quantizes one super-block of 256 values into 176 bytes.
    quantize_block => quantize_block_inline
);

#[inline(always)]
fn quantize_block_inline<V: Lanes>(x: &[f32], y: &mut [u8]) {
    let params = Qkx2Params {
        nmax: 31,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: false,
    };
    let codes = quantize_scales_and_codes::<V>(x, y, &params);
    let mut qh = [0u8; 32];
    for c in 0..4 {
        for l in 0..32 {
            let mut l1 = codes[64 * c + l];
            if l1 > 15 {
                l1 -= 16;
                qh[l] |= 1 << (2 * c);
            }
            let mut l2 = codes[64 * c + 32 + l];
            if l2 > 15 {
                l2 -= 16;
                qh[l] |= 2 << (2 * c);
            }
            y[QS + 32 * c + l] = l1 | (l2 << 4);
        }
    }
    y[QH..QH + 32].copy_from_slice(&qh);
}

/// Dequantizes one 176-byte super-block into 256 values.
pub(super) fn dequantize_block(y: &[u8], out: &mut [f32]) {
    let d = read_f16(y, D);
    let min = read_f16(y, DMIN);
    let scales = &y[SCALES..SCALES + 12];
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, scales);
        let dl = d * sc as f32;
        let ml = min * m as f32;
        let c = j / 2;
        let shift = 4 * (j % 2);
        for l in 0..32 {
            let low = (y[QS + 32 * c + l] >> shift) & 0x0F;
            let high = (y[QH + l] >> j) & 1;
            let q = low as u32 + 16 * high as u32;
            out[32 * j + l] = dl * q as f32 - ml;
        }
    }
}
