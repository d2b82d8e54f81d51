//! Q2_K: 84-byte super-blocks of 256 values (spec §2.8): `scales: [u8; 16]` (4-bit scale in the
//! low nibble, 4-bit minimum in the high nibble, per 16-element sub-block), `qs: [u8; 64]`
//! (2-bit codes, plane layout E), `d: f16`, `dmin: f16`.

use super::float::{read_f16, write_f16};
use super::kquant_lanes::qkx2_lanes;
use super::kquant_util::{Qkx2Params, get_2bit, nearest_int, pack_2bit_planes};
use super::lanes::{Lanes, transpose_in, with_avx2};

/// Elements per super-block.
pub(super) const QK: usize = 256;
/// Bytes per super-block.
pub(super) const BLOCK_BYTES: usize = 84;

const SCALES: usize = 0;
const QS: usize = 16;
const D: usize = 80;
const DMIN: usize = 82;

const PARAMS: Qkx2Params = Qkx2Params {
    nmax: 3,
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    use_mad: true,
};

with_avx2!(
    /// Quantizes one super-block of 256 values into 84 bytes.
    quantize_block => quantize_block_inline
);

#[inline(always)]
fn quantize_block_inline<V: Lanes>(x: &[f32], y: &mut [u8]) {
    // The affine search on the sixteen 16-element sub-blocks, eight at a time (one per lane),
    // weighted by |x|.
    let mut codes = [0u8; QK];
    let mut scales = [0f32; 16];
    let mut mins = [0f32; 16];
    for half in 0..2 {
        let xs: [V; 16] = transpose_in(x, 128 * half, 16);
        let mut w = xs;
        for wi in &mut w {
            *wi = wi.abs();
        }
        let found = qkx2_lanes(&xs, &w, &PARAMS);
        for j in 0..8 {
            scales[8 * half + j] = found.scale[j];
            mins[8 * half + j] = found.min[j];
            for (i, li) in found.codes.iter().enumerate() {
                codes[128 * half + 16 * j + i] = li[j] as u8;
            }
        }
    }
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..16 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }

    let mut sc = [0u8; 16];
    if max_scale > 0.0 {
        let iscale = 15.0 / max_scale;
        for j in 0..16 {
            // Stored into a u8 with C's wrapping conversion (no clamp).
            sc[j] = nearest_int(iscale * scales[j]) as u8;
        }
        write_f16(y, D, max_scale / 15.0);
    } else {
        write_f16(y, D, 0.0);
    }
    if max_min > 0.0 {
        let iscale = 15.0 / max_min;
        for j in 0..16 {
            sc[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
        }
        write_f16(y, DMIN, max_min / 15.0);
    } else {
        write_f16(y, DMIN, 0.0);
    }
    y[SCALES..SCALES + 16].copy_from_slice(&sc);

    // Second pass with the stored (fp16-rounded) scales; a zero scale keeps the search codes.
    let d_all = read_f16(y, D);
    let dmin_all = read_f16(y, DMIN);
    for (j, &s) in sc.iter().enumerate() {
        let d = d_all * (s & 0x0F) as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * (s >> 4) as f32;
        for i in 16 * j..16 * j + 16 {
            codes[i] = nearest_int((x[i] + dm) / d).clamp(0, 3) as u8;
        }
    }
    pack_2bit_planes(&codes, &mut y[QS..QS + 64]);
}

/// Dequantizes one 84-byte super-block into 256 values.
pub(super) fn dequantize_block(y: &[u8], out: &mut [f32]) {
    let d = read_f16(y, D);
    let min = read_f16(y, DMIN);
    let qs = &y[QS..QS + 64];
    for j in 0..16 {
        let sc = y[SCALES + j];
        let dl = d * (sc & 0x0F) as f32;
        let ml = min * (sc >> 4) as f32;
        for (i, o) in out[16 * j..16 * j + 16].iter_mut().enumerate() {
            *o = dl * get_2bit(qs, 16 * j + i) as f32 - ml;
        }
    }
}
