//! The K-quant scale searches of [`kquant_util`](super::kquant_util) run on eight sub-blocks
//! at once, one per lane: [`qkx2_lanes`] is `make_qkx2_quants` (Q2_K, Q4_K, Q5_K) and
//! [`qx_lanes`] is `make_qx_quants` (Q6_K).
//!
//! Each lane performs the scalar search's f32 operations in the scalar search's order,
//! including its sequential sums, so its results are bit-identical to the scalar function on
//! that sub-block. Branches become per-lane selects: a lane whose scalar code would skip a
//! candidate grid computes it anyway and ignores the result. Instead of copying the best codes
//! after every improvement, a lane remembers the inverse scale (and for `qkx2` the minimum)
//! that produced them and recomputes the codes once at the end, which gives the same integers.
//! The scalar functions remain the reference the tests compare against.

use super::kquant_util::{GROUP_MAX_EPS, Qkx2Params};
use super::lanes::{LANES, Lanes};

/// The codes `clamp(nearest_int(iscale·(x − min)), 0, nmax)` of one element in each lane.
#[inline(always)]
fn affine_code<V: Lanes>(x: V, iscale: V, min: V, nmax: i32) -> V::Int {
    (iscale * (x - min)).nearest_int_clamped(0, nmax)
}

/// Weighted error of `scale·L + min` against `x` (`make_qkx2_quants`' inner error loop), per
/// lane, for codes given as f32.
#[inline(always)]
fn qkx2_error<V: Lanes, const N: usize>(
    x: &[V; N],
    w: &[V; N],
    codes: &[V; N],
    scale: V,
    min: V,
    use_mad: bool,
) -> V {
    let mut err = V::splat(0.0);
    for i in 0..N {
        let diff = scale * codes[i] + min - x[i];
        let diff = if use_mad { diff.abs() } else { diff * diff };
        err = err + w[i] * diff;
    }
    err
}

/// The per-lane result of [`qkx2_lanes`].
pub(super) struct Qkx2Lanes<const N: usize> {
    /// The scale of each lane's sub-block.
    pub scale: [f32; LANES],
    /// The (non-negative) minimum to subtract, `min_out`.
    pub min: [f32; LANES],
    /// Codes in `0..=nmax`: `codes[i][j]` is element `i` of lane `j`'s sub-block.
    pub codes: [[i32; LANES]; N],
}

/// `make_qkx2_quants` on eight sub-blocks of `N` values: `x[i]`/`w[i]` hold element `i` of
/// each sub-block and its weight.
#[inline(always)]
pub(super) fn qkx2_lanes<V: Lanes, const N: usize>(
    x: &[V; N],
    w: &[V; N],
    p: &Qkx2Params,
) -> Qkx2Lanes<N> {
    let zero = V::splat(0.0);
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..N {
        // `if x < min { min = x }`, which keeps the first of equal values (-0.0 vs 0.0).
        min = V::select(x[i].lt(min), x[i], min);
        max = V::select(x[i].gt(max), x[i], max);
        sum_w = sum_w + w[i];
        sum_x = sum_x + w[i] * x[i];
    }
    min = V::select(min.gt(zero), zero, min);
    // Lanes with `max == min` return early in the scalar search: all codes 0.
    let flat = max.eq(min);
    let nmax_f = p.nmax as f32;
    let mut best_iscale = V::splat(nmax_f) / (max - min);
    let mut best_min = min;
    let mut scale = V::splat(1.0) / best_iscale;
    let mut codes = [zero; N];
    for i in 0..N {
        codes[i] = V::int_to_f32(affine_code(x[i], best_iscale, min, p.nmax));
    }
    let mut best_error = qkx2_error(x, w, &codes, scale, min, p.use_mad);
    for is in 0..=p.nstep {
        let iscale = V::splat(p.rmin + p.rdelta * is as f32 + nmax_f) / (max - min);
        let mut sum_l = zero;
        let mut sum_l2 = zero;
        let mut sum_xl = zero;
        for i in 0..N {
            let l = V::int_to_f32(affine_code(x[i], iscale, min, p.nmax));
            codes[i] = l;
            let wl = w[i] * l;
            sum_l = sum_l + wl;
            sum_l2 = sum_l2 + wl * l;
            sum_xl = sum_xl + wl * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        let this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
        let this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
        let positive = this_min.gt(zero);
        let this_min = V::select(positive, zero, this_min);
        let this_scale = V::select(positive, sum_xl / sum_l2, this_scale);
        let cur_error = qkx2_error(x, w, &codes, this_scale, this_min, p.use_mad);
        let better = det.gt(zero) & cur_error.lt(best_error) & !flat;
        best_error = V::select(better, cur_error, best_error);
        scale = V::select(better, this_scale, scale);
        best_iscale = V::select(better, iscale, best_iscale);
        best_min = V::select(better, min, best_min);
        min = V::select(better, this_min, min);
    }
    let mut out = Qkx2Lanes {
        scale: V::select(flat, zero, scale).to_array(),
        min: (-min).to_array(),
        codes: [[0; LANES]; N],
    };
    let flat = V::mask_to_array(flat);
    for (codes, &xi) in out.codes.iter_mut().zip(x) {
        let l = V::int_to_array(affine_code(xi, best_iscale, best_min, p.nmax));
        for j in 0..LANES {
            codes[j] = if flat[j] { 0 } else { l[j] };
        }
    }
    out
}

/// `(Σ w·x·l, Σ w·l²)` of `make_qx_quants` for inverse scale `iscale`, per lane, with the
/// weights `w = x²` and `wx = w·x` given.
#[inline(always)]
fn qx_sums<V: Lanes, const N: usize>(
    x: &[V; N],
    w: &[V; N],
    wx: &[V; N],
    iscale: V,
    nmax: i32,
) -> (V, V) {
    let mut sumlx = V::splat(0.0);
    let mut suml2 = V::splat(0.0);
    for i in 0..N {
        let l = V::int_to_f32((iscale * x[i]).nearest_int_clamped(-nmax, nmax - 1));
        sumlx = sumlx + wx[i] * l;
        suml2 = suml2 + w[i] * l * l;
    }
    (sumlx, suml2)
}

/// `make_qx_quants` (`rmse_type = 1`, weights `x²`) on eight sub-blocks of `N` values
/// (`x[i]` holds element `i` of each): returns each lane's scale and its codes in
/// `[0, 2·nmax)` (code − nmax is the signed level; `codes[i][j]` is element `i` of lane `j`).
#[inline(always)]
pub(super) fn qx_lanes<V: Lanes, const N: usize>(
    x: &[V; N],
    nmax: i32,
) -> ([f32; LANES], [[i32; LANES]; N]) {
    let zero = V::splat(0.0);
    // The first element with the strictly largest magnitude.
    let mut max = zero;
    let mut amax = zero;
    for &v in x {
        let a = v.abs();
        let larger = a.gt(amax);
        amax = V::select(larger, a, amax);
        max = V::select(larger, v, max);
    }
    // Lanes with max |x| < GROUP_MAX_EPS return early in the scalar search: scale 0, codes 0.
    let tiny = amax.lt(V::splat(GROUP_MAX_EPS));
    let mut w = [zero; N];
    let mut wx = [zero; N];
    for i in 0..N {
        w[i] = x[i] * x[i];
        wx[i] = w[i] * x[i];
    }
    let nmax_f = nmax as f32;
    let mut best_iscale = V::splat(-nmax_f) / max;
    let (sumlx, suml2) = qx_sums(x, &w, &wx, best_iscale, nmax);
    let mut scale = V::select(suml2.eq(zero), zero, sumlx / suml2);
    let mut best = scale * sumlx;
    for is in (-9i32..=9).filter(|&is| is != 0) {
        let iscale = V::splat(-(nmax_f + 0.1f32 * is as f32)) / max;
        let (sumlx, suml2) = qx_sums(x, &w, &wx, iscale, nmax);
        let better = suml2.gt(zero) & (sumlx * sumlx).gt(best * suml2);
        let this_scale = sumlx / suml2;
        best_iscale = V::select(better, iscale, best_iscale);
        scale = V::select(better, this_scale, scale);
        best = V::select(better, this_scale * sumlx, best);
    }
    let scale = V::select(tiny, zero, scale).to_array();
    let tiny = V::mask_to_array(tiny);
    let mut codes = [[0; LANES]; N];
    for i in 0..N {
        let l = V::int_to_array((best_iscale * x[i]).nearest_int_clamped(-nmax, nmax - 1));
        for j in 0..LANES {
            codes[i][j] = if tiny[j] { 0 } else { l[j] + nmax };
        }
    }
    (scale, codes)
}

#[cfg(test)]
mod tests {
    use super::super::kquant_util::{make_qkx2_quants, make_qx_quants};
    use super::super::lanes::{F32x8, transpose_in};
    use super::*;

    /// Deterministic pseudo-random bits (splitmix64).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        /// Uniform in [-1, 1).
        fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    /// Eight sub-blocks of `n` values, each of a kind that exercises a branch of the searches:
    /// plain and bf16-rounded noise (ties), signed zeros, constant and all-zero blocks, one
    /// outlier, all-positive and all-negative blocks, subnormal and huge magnitudes.
    fn sub_blocks(rng: &mut Rng, n: usize) -> Vec<f32> {
        let mut x = Vec::with_capacity(8 * n);
        for _ in 0..8 {
            let kind = rng.next() % 11;
            let scale = [1.0, 0.02, 1e-3, 300.0][(rng.next() % 4) as usize];
            let c = rng.unit();
            for i in 0..n {
                let u = rng.unit();
                x.push(match kind {
                    0 => u * scale,
                    1 => f32::from_bits((u * scale).to_bits() & 0xFFFF_0000),
                    2 => [0.0, -0.0, u * scale][(rng.next() % 3) as usize],
                    3 => c,
                    4 => 0.0,
                    5 => {
                        if i == 7 {
                            40.0 * scale
                        } else {
                            u * scale * 0.01
                        }
                    }
                    6 => u.abs() * scale + 0.5 * scale,
                    7 => -(u.abs() * scale),
                    8 => u * 1e-40,
                    9 => u * 1e30,
                    _ => (u * 4.0).round() * scale,
                });
            }
        }
        x
    }

    fn check_qkx2<V: Lanes, const N: usize>(p: &Qkx2Params, mad_weights: bool, seed: u64) {
        let mut rng = Rng(seed);
        for _ in 0..3000 {
            let x = sub_blocks(&mut rng, N);
            let w: Vec<f32> = if mad_weights {
                x.iter().map(|v| v.abs()).collect()
            } else {
                x.iter().map(|v| 0.25 + v.abs()).collect()
            };
            let xs: [V; N] = transpose_in(&x, 0, N);
            let ws: [V; N] = transpose_in(&w, 0, N);
            let got = qkx2_lanes(&xs, &ws, p);
            for j in 0..LANES {
                let r = j * N..(j + 1) * N;
                let mut l = [0u8; N];
                let (scale, min) = make_qkx2_quants(&x[r.clone()], &w[r.clone()], &mut l, p);
                let ctx = || format!("x = {:?}", &x[r.clone()]);
                assert_eq!(got.scale[j].to_bits(), scale.to_bits(), "{}", ctx());
                assert_eq!(got.min[j].to_bits(), min.to_bits(), "{}", ctx());
                for (codes, &li) in got.codes.iter().zip(&l) {
                    assert_eq!(codes[j], li as i32, "{}", ctx());
                }
            }
        }
    }

    fn check_qx<V: Lanes>(seed: u64) {
        let mut rng = Rng(seed);
        for _ in 0..3000 {
            let x = sub_blocks(&mut rng, 16);
            let xs: [V; 16] = transpose_in(&x, 0, 16);
            let (scale, codes) = qx_lanes(&xs, 32);
            for j in 0..LANES {
                let r = 16 * j..16 * j + 16;
                let mut l = [0u8; 16];
                let want = make_qx_quants(&x[r.clone()], 32, &mut l);
                assert_eq!(scale[j].to_bits(), want.to_bits(), "x = {:?}", &x[r]);
                for (c, &li) in codes.iter().zip(&l) {
                    assert_eq!(c[j], li as i32, "x = {:?}", &x[r]);
                }
            }
        }
    }

    const Q4: Qkx2Params = Qkx2Params {
        nmax: 15,
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
        use_mad: false,
    };
    const Q5: Qkx2Params = Qkx2Params {
        nmax: 31,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: false,
    };
    const Q2: Qkx2Params = Qkx2Params {
        nmax: 3,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: true,
    };

    /// Both lane implementations against the scalar searches, for every parameter set in use.
    fn check_all<V: Lanes>() {
        check_qkx2::<V, 32>(&Q4, false, 1);
        check_qkx2::<V, 32>(&Q5, false, 2);
        check_qkx2::<V, 16>(&Q2, true, 3);
        check_qx::<V>(4);
    }

    #[test]
    fn portable_lanes_match_the_scalar_searches() {
        check_all::<F32x8>();
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_lanes_match_the_scalar_searches() {
        if std::arch::is_x86_feature_detected!("avx2") {
            check_all::<super::super::lanes::Avx2F32x8>();
        }
    }
}
