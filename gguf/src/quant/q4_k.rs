//! Q4_K: 144-byte super-blocks of 256 values (spec §2.10): `d: f16`, `dmin: f16`,
//! `scales: [u8; 12]` (eight 6-bit scales and minimums, packing D), `qs: [u8; 128]` (4-bit
//! codes: 64-element chunk c holds elements 64c..64c+32 in low nibbles, the next 32 in high).

use super::float::{read_f16, write_f16};
use super::kquant_lanes::qkx2_lanes;
use super::kquant_util::{Qkx2Params, get_scale_min_k4, nearest_int, pack_scale_min_k4};
use super::lanes::{Lanes, transpose_in, with_avx2};

/// Elements per super-block.
pub(super) const QK: usize = 256;
/// Bytes per super-block.
pub(super) const BLOCK_BYTES: usize = 144;

const D: usize = 0;
const DMIN: usize = 2;
const SCALES: usize = 4;
const QS: usize = 16;

/// The shared first half of Q4_K and Q5_K: the affine search on the eight 32-element
/// sub-blocks (one per lane), 6-bit scale/min quantization, `d`/`dmin`/`scales` stored into
/// `y[0..16]`, and the second pass with the stored scales. Returns the codes (0..=nmax).
#[inline(always)]
pub(super) fn quantize_scales_and_codes<V: Lanes>(
    x: &[f32],
    y: &mut [u8],
    params: &Qkx2Params,
) -> [u8; QK] {
    // xs[i] holds element i of every sub-block.
    let xs: [V; 32] = transpose_in(x, 0, 32);
    let mut sum_x2 = V::splat(0.0);
    for &v in &xs {
        sum_x2 = sum_x2 + v * v;
    }
    let av_x = (sum_x2 / V::splat(32.0)).sqrt();
    let mut w = [av_x; 32];
    for i in 0..32 {
        w[i] = av_x + xs[i].abs();
    }
    let found = qkx2_lanes(&xs, &w, params);
    let mut codes = [0u8; QK];
    for (i, l) in found.codes.iter().enumerate() {
        for j in 0..8 {
            codes[32 * j + i] = l[j] as u8;
        }
    }
    let (scales, mins) = (found.scale, found.min);
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..8 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }

    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        // C assigns nearest_int to a uint8_t (wrapping) before `MIN(63, ·)`.
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    let packed = pack_scale_min_k4(&ls, &lm);
    write_f16(y, D, max_scale / 63.0);
    write_f16(y, DMIN, max_min / 63.0);
    y[SCALES..SCALES + 12].copy_from_slice(&packed);

    let d_all = read_f16(y, D);
    let dmin_all = read_f16(y, DMIN);
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, &packed);
        let d = d_all * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * m as f32;
        for i in 32 * j..32 * j + 32 {
            codes[i] = nearest_int((x[i] + dm) / d).clamp(0, params.nmax) as u8;
        }
    }
    codes
}

with_avx2!(
    /// Quantizes one super-block of 256 values into 144 bytes.
    quantize_block => quantize_block_inline
);

#[inline(always)]
fn quantize_block_inline<V: Lanes>(x: &[f32], y: &mut [u8]) {
    let params = Qkx2Params {
        nmax: 15,
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
        use_mad: false,
    };
    let codes = quantize_scales_and_codes::<V>(x, y, &params);
    for c in 0..4 {
        for l in 0..32 {
            y[QS + 32 * c + l] = codes[64 * c + l] | (codes[64 * c + 32 + l] << 4);
        }
    }
}

/// Dequantizes one 144-byte super-block into 256 values.
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
            let q = (y[QS + 32 * c + l] >> shift) & 0x0F;
            out[32 * j + l] = dl * q as f32 - ml;
        }
    }
}
