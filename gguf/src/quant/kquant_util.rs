//! Helper algorithms shared by the K-quants (spec §2.7): ggml's `nearest_int`, the symmetric
//! scale searches `make_qx_quants` (Q6_K) and `make_q3_quants` (Q3_K), the affine
//! scale-and-minimum search `make_qkx2_quants` (Q2_K, Q4_K, Q5_K), the 12-byte 6-bit
//! scale/min packing of Q4_K/Q5_K, and the 2-bit plane packing of Q2_K/Q3_K.
//!
//! `make_qx_quants` and `make_qkx2_quants` are the scalar, one-sub-block-at-a-time
//! transcriptions; the quantizers run their eight-lane versions in
//! [`kquant_lanes`](super::kquant_lanes), which the tests check against these.
//!
//! Every expression keeps ggml's f32 evaluation order (`a*b*c` is `(a*b)*c`, integers are
//! converted to f32 where C converts them) and never fuses a multiply-add, so the results are
//! bit-identical to ggml's reference quantizers built without FMA.

/// Magnitudes below this count as zero in the symmetric searches (ggml's `GROUP_MAX_EPS`).
pub(super) const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: adds 1.5·2^23 in f32 and reads the low mantissa bits. Rounds half to
/// even for |f| ≤ 4194303; outside that range it reproduces ggml's (meaningless but
/// deterministic) result rather than saturating.
#[inline]
pub(super) fn nearest_int(f: f32) -> i32 {
    let v = f + 12_582_912.0f32;
    (v.to_bits() & 0x007F_FFFF) as i32 - 0x0040_0000
}

/// The first element with the strictly largest magnitude: `(max, amax)` = (signed value, |value|).
fn signed_max(x: &[f32]) -> (f32, f32) {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let a = v.abs();
        if a > amax {
            amax = a;
            max = v;
        }
    }
    (max, amax)
}

/// Sums of the weighted least-squares fit for codes `l` found with `iscale`
/// (weights `w = x²`): returns `(sumlx, suml2)`; writes the codes `l + nmax` into `out` if given.
#[cfg(test)]
fn qx_sums(x: &[f32], nmax: i32, iscale: f32, mut out: Option<&mut [u8]>) -> (f32, f32) {
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for (i, &xi) in x.iter().enumerate() {
        let l = nearest_int(iscale * xi).clamp(-nmax, nmax - 1);
        if let Some(out) = out.as_deref_mut() {
            out[i] = (l + nmax) as u8;
        }
        let w = xi * xi;
        let lf = l as f32;
        sumlx += w * xi * lf;
        suml2 += w * lf * lf;
    }
    (sumlx, suml2)
}

/// `make_qx_quants` with `rmse_type = 1` and no importance weights (weights `x²`): a symmetric
/// scale for `x` with codes in `[0, 2·nmax)` written to `l` (code − nmax is the signed level).
/// Returns the least-squares scale of the best of 19 candidate grids; 0 (codes 0) when
/// `max|x| < GROUP_MAX_EPS`.
#[cfg(test)]
pub(super) fn make_qx_quants(x: &[f32], nmax: i32, l: &mut [u8]) -> f32 {
    let (max, amax) = signed_max(x);
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let nmax_f = nmax as f32;
    let iscale = -nmax_f / max;
    let (sumlx, suml2) = qx_sums(x, nmax, iscale, Some(l));
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        let iscale = -(nmax_f + 0.1f32 * is as f32) / max;
        let (sumlx, suml2) = qx_sums(x, nmax, iscale, None);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            qx_sums(x, nmax, iscale, Some(l));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `make_q3_quants` with `do_rmse = true`: symmetric scale for `x` with codes in `[0, 2·nmax)`
/// written to `l`, refined by up to five passes of coordinate descent on the weighted (`x²`)
/// least-squares error. Returns 0 with codes 0 (not `nmax`) when `max|x| < GROUP_MAX_EPS`.
pub(super) fn make_q3_quants(x: &[f32], nmax: i32, l: &mut [u8]) -> f32 {
    let (max, amax) = signed_max(x);
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let n = x.len();
    let iscale = -(nmax as f32) / max;
    let mut levels = [0i32; 16];
    let levels = &mut levels[..n];
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for (i, &xi) in x.iter().enumerate() {
        let li = nearest_int(iscale * xi).clamp(-nmax, nmax - 1);
        levels[i] = li;
        let w = xi * xi;
        let lf = li as f32;
        sumlx += w * xi * lf;
        suml2 += w * lf * lf;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (i, &xi) in x.iter().enumerate() {
            let w = xi * xi;
            let li = levels[i] as f32;
            let mut slx = sumlx - w * xi * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(xi * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != levels[i] {
                    let nf = new_l as f32;
                    slx += w * xi * nf;
                    sl2 += w * nf * nf;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        levels[i] = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for (out, &li) in l.iter_mut().zip(levels.iter()) {
        *out = (li + nmax) as u8;
    }
    if suml2 > 0.0 { sumlx / suml2 } else { 0.0 }
}

/// Parameters of one `make_qkx2_quants` search.
pub(super) struct Qkx2Params {
    /// Largest code.
    pub nmax: i32,
    /// First grid offset tried.
    pub rmin: f32,
    /// Grid offset step.
    pub rdelta: f32,
    /// Number of steps (inclusive upper bound).
    pub nstep: i32,
    /// Minimise absolute error (Q2_K) instead of squared error.
    pub use_mad: bool,
}

/// Weighted error of reconstructing `x` as `scale·L + min`.
#[cfg(test)]
fn qkx2_error(x: &[f32], w: &[f32], codes: &[u8], scale: f32, min: f32, use_mad: bool) -> f32 {
    let mut err = 0.0f32;
    for ((&xi, &wi), &li) in x.iter().zip(w).zip(codes) {
        let diff = scale * li as f32 + min - xi;
        let diff = if use_mad { diff.abs() } else { diff * diff };
        err += wi * diff;
    }
    err
}

/// `make_qkx2_quants`: affine fit `x ≈ scale·L − min_out` with codes `L ∈ [0, nmax]` written to
/// `l`, weights `w`. Returns `(scale, min_out)`; `min_out ≥ 0` (it may be -0.0).
#[cfg(test)]
pub(super) fn make_qkx2_quants(x: &[f32], w: &[f32], l: &mut [u8], p: &Qkx2Params) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let nmax_f = p.nmax as f32;
    let iscale = nmax_f / (max - min);
    let mut scale = 1.0 / iscale;
    for (li, &xi) in l.iter_mut().zip(x) {
        *li = nearest_int(iscale * (xi - min)).clamp(0, p.nmax) as u8;
    }
    let mut best_error = qkx2_error(x, w, l, scale, min, p.use_mad);
    let mut aux = [0u8; 32];
    let aux = &mut aux[..n];
    for is in 0..=p.nstep {
        let iscale = (p.rmin + p.rdelta * is as f32 + nmax_f) / (max - min);
        let mut sum_l = 0.0f32;
        let mut sum_l2 = 0.0f32;
        let mut sum_xl = 0.0f32;
        for i in 0..n {
            let li = nearest_int(iscale * (x[i] - min)).clamp(0, p.nmax);
            aux[i] = li as u8;
            let lf = li as f32;
            sum_l += w[i] * lf;
            sum_l2 += w[i] * lf * lf;
            sum_xl += w[i] * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let cur_error = qkx2_error(x, w, aux, this_scale, this_min, p.use_mad);
            if cur_error < best_error {
                l.copy_from_slice(aux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Packs eight 6-bit scales and eight 6-bit minimums into Q4_K/Q5_K's 12-byte layout
/// (spec §2.7 D).
pub(super) fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            q[j] = ls[j];
            q[j + 4] = lm[j];
        } else {
            q[j + 4] = (ls[j] & 0x0F) | ((lm[j] & 0x0F) << 4);
            q[j - 4] |= (ls[j] >> 4) << 6;
            q[j] |= (lm[j] >> 4) << 6;
        }
    }
    q
}

/// Unpacks scale and minimum `j` (0..8) from the 12-byte Q4_K/Q5_K layout.
pub(super) fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Packs 256 two-bit codes into 64 bytes (spec §2.7 E): element `128·h + 32·g + l` goes to
/// byte `32·h + l`, bits `2g..2g+1`.
pub(super) fn pack_2bit_planes(codes: &[u8; 256], out: &mut [u8]) {
    for h in 0..2 {
        for l in 0..32 {
            let e = 128 * h + l;
            out[32 * h + l] =
                codes[e] | (codes[e + 32] << 2) | (codes[e + 64] << 4) | (codes[e + 96] << 6);
        }
    }
}

/// The two-bit code of element `e` from 64 bytes packed by [`pack_2bit_planes`].
pub(super) fn get_2bit(qs: &[u8], e: usize) -> u8 {
    let h = e / 128;
    let r = e % 128;
    (qs[32 * h + r % 32] >> (2 * (r / 32))) & 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(-2.4), -2);
        assert_eq!(nearest_int(-0.0), 0);
        assert_eq!(nearest_int(63.49), 63);
        for v in [
            -4_194_303.0f32,
            -1000.25,
            -3.75,
            7.5,
            123_456.5,
            4_194_303.0,
        ] {
            assert_eq!(nearest_int(v), v.round_ties_even() as i32, "{v}");
        }
    }

    #[test]
    fn scale_min_packing_roundtrips() {
        let ls = [0, 1, 17, 63, 32, 47, 5, 63];
        let lm = [63, 0, 31, 16, 15, 48, 62, 1];
        let q = pack_scale_min_k4(&ls, &lm);
        for j in 0..8 {
            assert_eq!(get_scale_min_k4(j, &q), (ls[j], lm[j]), "j = {j}");
        }
    }

    #[test]
    fn two_bit_planes_roundtrip() {
        let mut codes = [0u8; 256];
        for (e, c) in codes.iter_mut().enumerate() {
            *c = ((e * 7 + e / 5) % 4) as u8;
        }
        let mut packed = [0u8; 64];
        pack_2bit_planes(&codes, &mut packed);
        for (e, &c) in codes.iter().enumerate() {
            assert_eq!(get_2bit(&packed, e), c, "element {e}");
        }
    }
}
