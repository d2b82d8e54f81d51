//! `karcher`: the Karcher (Riemannian) mean of the models' directions on the unit
//! hypersphere, scaled by the mean of their norms.
//!
//! Follows mergekit's `karcher` with equal weights `αᵢ = 1/N` over all inputs (weights are
//! not read; a base model is just one more input). Each whole tensor is one vector: its norm
//! `nᵢ` (in `f32`) and unit vector `uᵢ = xᵢ/nᵢ` (zeros for a zero tensor); only vectors with
//! `nᵢ > tol` take part, their α renormalised to sum 1 (none → zeros). Start from the
//! normalised `Σ αᵢuᵢ` (the first valid unit vector if that has norm < tol), then up to
//! `max_iter` times: `T = Σ αᵢ·(θᵢ/sin θᵢ)·(uᵢ − cos θᵢ·u)` over the vectors with
//! `θᵢ = acos(clamp(u·uᵢ)) ≥ tol`; stop when `‖T‖ < tol`, else
//! `u ← cos‖T‖·u + sin‖T‖·T/‖T‖`, renormalised. Result `(Σ αᵢnᵢ over all inputs)·u`.
//!
//! Numbers: elementwise steps are rounded to the math dtype as PyTorch does; the norms
//! (`f32` in mergekit) replay PyTorch's CPU reduction order ([`super::vecmath::torch_norm`]);
//! the dot products, which PyTorch hands to BLAS (not reproducible), are PyTorch's `sum` of
//! the products ([`super::vecmath::torch_sum`]), the closest of the orders tried on the
//! parity fixture (10 of 213,568 float16 outputs one ulp off mergekit's). Python-float
//! scalars (α, the final scale) are kept in `f64` and cast to `f32` where PyTorch casts them.

use super::vecmath::{torch_norm, torch_sum, unary};
use super::{BaseUse, MergeCtx, MergeMethod, MethodInfo, ParamSpec};
use crate::dtype::DType;
use rayon::prelude::*;

/// The Karcher mean method.
pub struct Karcher;

static INFO: MethodInfo = MethodInfo {
    name: "karcher",
    pretty_name: "Karcher Mean",
    url: Some("https://en.wikipedia.org/wiki/Karcher_mean"),
    params: &[
        ParamSpec::global("max_iter", 10.0),
        ParamSpec::global("tol", 1e-5),
    ],
    base: BaseUse::None,
    rectify_embeddings: false,
    result_dtype: None,
    elementwise: false,
};

impl MergeMethod for Karcher {
    fn info(&self) -> &'static MethodInfo {
        &INFO
    }

    fn merge(&self, ctx: &MergeCtx<'_>, out: &mut [f32]) -> Result<(), String> {
        let n = ctx.inputs.len();
        if n == 0 {
            return Err("karcher needs at least one model".into());
        }
        if n == 1 {
            out.copy_from_slice(ctx.inputs[0].data);
            return Ok(());
        }
        let max_iter = ctx.global.get_or("max_iter", 10.0);
        if max_iter.is_nan() || max_iter < 0.0 {
            return Err(format!("karcher: max_iter must be >= 0, got {max_iter}"));
        }
        let max_iter = max_iter as usize;
        let tol = ctx.global.get_or("tol", 1e-5);
        let m = ctx.math;
        let len = out.len();
        let xs: Vec<&[f32]> = ctx.inputs.iter().map(|i| i.data).collect();
        let alpha = 1.0 / n as f64;
        // Norms as mergekit takes them: an f32 norm read back as a Python float.
        let norms: Vec<f32> = xs.iter().map(|x| torch_norm(x.len(), |j| x[j])).collect();
        let valid: Vec<usize> = (0..n).filter(|&i| norms[i] as f64 > tol).collect();
        if valid.is_empty() {
            out.fill(0.0);
            return Ok(());
        }
        let alpha_sum: f64 = valid.iter().map(|_| alpha).sum();
        let alphas: Vec<f64> = valid.iter().map(|_| alpha / alpha_sum).collect();
        let unit = |i: usize, j: usize| m.round(xs[i][j] / norms[i]);

        // Initial guess: the normalised weighted mean of the unit vectors.
        out.par_iter_mut().enumerate().for_each(|(j, o)| {
            let mut acc = 0.0f32;
            for (&i, &a) in valid.iter().zip(&alphas) {
                acc = m.round(acc + m.round(a as f32 * unit(i, j)));
            }
            *o = acc;
        });
        let mean_norm = torch_norm(len, |j| out[j]);
        if (mean_norm as f64) < tol {
            let first = valid[0];
            out.par_iter_mut()
                .enumerate()
                .for_each(|(j, o)| *o = unit(first, j));
        } else {
            out.par_iter_mut()
                .for_each(|o| *o = m.round(*o / mean_norm));
        }

        let mut tangent = vec![0.0f32; len];
        for _ in 0..max_iter {
            tangent.fill(0.0);
            let u: &[f32] = out;
            for (&i, &a) in valid.iter().zip(&alphas) {
                let dot = m.round(torch_sum(len, |j| m.round(u[j] * unit(i, j))));
                let dot = dot.clamp(-1.0, 1.0);
                let theta = unary(m, dot, f64::acos);
                if (theta as f64) < tol {
                    continue;
                }
                let sin = unary(m, theta, f64::sin);
                let coef = m.round(a as f32 * m.round(theta / sin));
                tangent.par_iter_mut().enumerate().for_each(|(j, t)| {
                    let d = m.round(unit(i, j) - m.round(dot * u[j]));
                    *t = m.round(*t + m.round(coef * d));
                });
            }
            let t_norm = torch_norm(len, |j| tangent[j]);
            if (t_norm as f64) < tol {
                break;
            }
            let (c, s) = (
                unary(DType::F32, t_norm, f64::cos),
                unary(DType::F32, t_norm, f64::sin),
            );
            out.par_iter_mut().zip(&tangent).for_each(|(o, &t)| {
                *o = m.round(m.round(c * *o) + m.round(s * m.round(t / t_norm)));
            });
            let u_norm = torch_norm(len, |j| out[j]);
            if u_norm as f64 > tol {
                out.par_iter_mut().for_each(|o| *o = m.round(*o / u_norm));
            }
        }

        // Scale: Σ αᵢnᵢ over all inputs (zero-norm ones included), a Python float.
        let scale = norms.iter().fold(0.0f64, |s, &nv| s + alpha * nv as f64) as f32;
        out.par_iter_mut().for_each(|o| *o = m.round(scale * *o));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    // The expected values are the spec's printed 5-digit figures (e.g. 0.70711).
    #![allow(clippy::approx_constant)]
    use super::super::testutil::{p, run};
    use super::super::vecmath::testutil::assert_close;
    use super::*;

    fn karcher(inputs: &[&[f32]], global: &[(&'static str, f64)]) -> Vec<f32> {
        let ins: Vec<_> = inputs.iter().map(|x| (*x, false, p(&[]))).collect();
        run(&Karcher, &ins, p(global), DType::F32).unwrap()
    }

    #[test]
    fn two_orthogonal_unit_vectors_meet_halfway() {
        // The Karcher mean of two points is the geodesic midpoint; scale = mean norm = 1.
        let r = karcher(&[&[1.0, 0.0], &[0.0, 1.0]], &[]);
        assert_close(&r, &[0.70711, 0.70711], 1e-5);
    }

    #[test]
    fn magnitudes_are_averaged_directions_meaned() {
        // [2,0] and [0,4]: direction at 45°, scale (2+4)/2 = 3.
        let r = karcher(&[&[2.0, 0.0], &[0.0, 4.0]], &[]);
        let x = 3.0 / 2f64.sqrt();
        assert_close(&r, &[x, x], 1e-5);
    }

    #[test]
    fn three_points_iterate_to_the_spherical_mean() {
        // Directions at 0°, 60° and 90° in a plane: the Karcher mean of angles on a circle
        // is their arithmetic mean, 50°; scale (1+1+1)/3 = 1.
        let s60 = 3f32.sqrt() / 2.0;
        let r = karcher(
            &[&[1.0, 0.0], &[0.5, s60], &[0.0, 1.0]],
            &[("max_iter", 50.0), ("tol", 1e-7)],
        );
        let a = 50f64.to_radians();
        assert_close(&r, &[a.cos(), a.sin()], 1e-5);
    }

    #[test]
    fn zero_tensor_is_skipped_but_counts_in_the_scale() {
        // The zero input has no direction; the scale averages norms 2, 0 over N = 2.
        let r = karcher(&[&[2.0, 0.0], &[0.0, 0.0]], &[]);
        assert_close(&r, &[1.0, 0.0], 1e-6);
        let r = karcher(&[&[0.0, 0.0], &[0.0, 0.0]], &[]);
        assert_eq!(r, vec![0.0, 0.0]);
    }

    #[test]
    fn single_input_unchanged_and_identical_inputs_fixed() {
        let a = [0.5f32, -1.5, 2.0];
        assert_eq!(karcher(&[&a], &[]), a.to_vec());
        let r = karcher(&[&a, &a, &a], &[]);
        assert_close(&r, &[0.5, -1.5, 2.0], 1e-6);
    }

    #[test]
    fn bf16_math_rounds() {
        let ins = [
            (&[1.0f32, 0.0][..], false, p(&[])),
            (&[0.0f32, 1.0][..], false, p(&[])),
        ];
        let r = run(&Karcher, &ins, p(&[]), DType::BF16).unwrap();
        for x in r {
            assert_eq!(DType::BF16.round(x), x);
            assert!((x - 0.70711).abs() < 8e-3, "{x}");
        }
    }
}
