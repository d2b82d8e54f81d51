//! Q6_K: 210-byte super-blocks of 256 values (spec §2.12): `ql: [u8; 128]` (low 4 bits),
//! `qh: [u8; 64]` (high 2 bits), `scales: [i8; 16]` (one per 16-element sub-block), `d: f16`.
//! Element `128h + 32g + l`: low nibble in `ql[64h + 32(g % 2) + l]` (high nibble when g ≥ 2),
//! high bits in `qh[32h + l]` bits `2g..2g+1`.

use super::float::{read_f16, write_f16};
use super::kquant_lanes::qx_lanes;
use super::kquant_util::{GROUP_MAX_EPS, nearest_int};
use super::lanes::{Lanes, transpose_in, with_avx2};

/// Elements per super-block.
pub(super) const QK: usize = 256;
/// Bytes per super-block.
pub(super) const BLOCK_BYTES: usize = 210;

const QL: usize = 0;
const QH: usize = 128;
const SCALES: usize = 192;
const D: usize = 208;

with_avx2!(
    /// Quantizes one super-block of 256 values into 210 bytes.
    quantize_block => quantize_block_inline
);

#[inline(always)]
fn quantize_block_inline<V: Lanes>(x: &[f32], y: &mut [u8]) {
    // The symmetric search on the sixteen 16-element sub-blocks, eight at a time (one per lane).
    let mut codes = [0u8; QK];
    let mut scales = [0f32; 16];
    for half in 0..2 {
        let xs: [V; 16] = transpose_in(x, 128 * half, 16);
        let (s, l) = qx_lanes(&xs, 32);
        for j in 0..8 {
            scales[8 * half + j] = s[j];
            for (i, li) in l.iter().enumerate() {
                codes[128 * half + 16 * j + i] = li[j] as u8;
            }
        }
    }
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for &s in &scales {
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = s;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        y[..BLOCK_BYTES].fill(0);
        return;
    }

    let iscale = -128.0 / max_scale;
    write_f16(y, D, 1.0 / iscale);
    let mut sc = [0i8; 16];
    for j in 0..16 {
        sc[j] = nearest_int(iscale * scales[j]).min(127) as i8;
        y[SCALES + j] = sc[j] as u8;
    }

    // Second pass with the stored (fp16-rounded) scales; a zero scale keeps the search codes.
    let d_all = read_f16(y, D);
    for (j, &s) in sc.iter().enumerate() {
        let d = d_all * s as f32;
        if d == 0.0 {
            continue;
        }
        for i in 16 * j..16 * j + 16 {
            codes[i] = (nearest_int(x[i] / d).clamp(-32, 31) + 32) as u8;
        }
    }

    for h in 0..2 {
        for l in 0..32 {
            let e = 128 * h + l;
            let (q1, q2, q3, q4) = (codes[e], codes[e + 32], codes[e + 64], codes[e + 96]);
            y[QL + 64 * h + l] = (q1 & 0x0F) | ((q3 & 0x0F) << 4);
            y[QL + 64 * h + 32 + l] = (q2 & 0x0F) | ((q4 & 0x0F) << 4);
            y[QH + 32 * h + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
}

/// Dequantizes one 210-byte super-block into 256 values.
pub(super) fn dequantize_block(y: &[u8], out: &mut [f32]) {
    let d = read_f16(y, D);
    for (e, o) in out.iter_mut().enumerate().take(QK) {
        let h = e / 128;
        let r = e % 128;
        let g = r / 32;
        let l = r % 32;
        let low = (y[QL + 64 * h + 32 * (g % 2) + l] >> (4 * (g / 2))) & 0x0F;
        let high = (y[QH + 32 * h + l] >> (2 * g)) & 3;
        let q = (low | (high << 4)) as i32 - 32;
        let sc = y[SCALES + e / 16] as i8;
        *o = d * sc as f32 * q as f32;
    }
}
