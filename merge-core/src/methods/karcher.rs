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

use super::vecmath::{Window, stream_elementwise, take_err, torch_norm, torch_sum, unary};
use super::{BaseUse, ChunkSink, ChunkSource, MergeCtx, MergeMethod, MethodInfo, ParamSpec};
use crate::dtype::DType;
use rayon::prelude::*;
use std::sync::Mutex;

/// The Karcher mean method.
pub struct Karcher;

/// The most iterations of the mean.
const MAX_ITER: ParamSpec = ParamSpec::global("max_iter", 10.0);
/// The convergence tolerance.
const TOL: ParamSpec = ParamSpec::global("tol", 1e-5);

static INFO: MethodInfo = MethodInfo {
    name: "karcher",
    pretty_name: "Karcher Mean",
    url: Some("https://en.wikipedia.org/wiki/Karcher_mean"),
    params: &[MAX_ITER, TOL],
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
        let max_iter = MAX_ITER.number(ctx.global);
        if max_iter.is_nan() || max_iter < 0.0 {
            return Err(format!("karcher: max_iter must be >= 0, got {max_iter}"));
        }
        let max_iter = max_iter as usize;
        let tol = TOL.number(ctx.global);
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

    fn can_stream(&self) -> bool {
        true
    }

    fn merge_streaming(
        &self,
        ctx: &MergeCtx<'_>,
        src: &dyn ChunkSource,
        out: &dyn ChunkSink,
    ) -> Result<(), String> {
        karcher_stream(ctx, src, out)
    }
}

/// How the iteration starts.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// `Σ αᵢuᵢ` divided by its norm.
    Mean(f32),
    /// The first valid unit vector (the mean had norm < tol).
    First,
}

/// One completed iteration's scalars: the tangent terms `(valid index, cos θ, coefficient)`,
/// `‖T‖`, `cos ‖T‖`, `sin ‖T‖`, and the renormalising norm (if applied).
#[derive(Debug, Clone)]
struct Step {
    terms: Vec<(usize, f32, f32)>,
    t_norm: f32,
    c: f32,
    s: f32,
    u_norm: Option<f32>,
}

/// The scalar history of a streamed Karcher mean: every tensor-sized intermediate (the mean
/// direction `u`, the tangent) is a function of one element's unit-vector values and these
/// scalars, replayed element by element with the in-memory kernel's exact operations.
struct History {
    m: DType,
    alphas: Vec<f32>,
    start: Start,
    steps: Vec<Step>,
}

impl History {
    /// `Σ αᵢuᵢ` at one element (`units`: the valid inputs' unit-vector values).
    fn acc(&self, units: &[f32]) -> f32 {
        let m = self.m;
        let mut acc = 0.0f32;
        for (u, a) in units.iter().zip(&self.alphas) {
            acc = m.round(acc + m.round(a * u));
        }
        acc
    }

    /// `u` after the first `k` steps.
    fn u(&self, units: &[f32], k: usize) -> f32 {
        let m = self.m;
        let mut u = match self.start {
            Start::Mean(norm) => m.round(self.acc(units) / norm),
            Start::First => units[0],
        };
        for st in &self.steps[..k] {
            let t = Self::tangent(m, units, u, &st.terms);
            u = m.round(m.round(st.c * u) + m.round(st.s * m.round(t / st.t_norm)));
            if let Some(un) = st.u_norm {
                u = m.round(u / un);
            }
        }
        u
    }

    /// The tangent at one element from `u` and an iteration's terms.
    fn tangent(m: DType, units: &[f32], u: f32, terms: &[(usize, f32, f32)]) -> f32 {
        let mut t = 0.0f32;
        for &(i, dot, coef) in terms {
            let d = m.round(units[i] - m.round(dot * u));
            t = m.round(t + m.round(coef * d));
        }
        t
    }
}

fn karcher_stream(
    ctx: &MergeCtx<'_>,
    src: &dyn ChunkSource,
    out: &dyn ChunkSink,
) -> Result<(), String> {
    let n = ctx.inputs.len();
    let len = ctx.numel();
    if n == 0 {
        return Err("karcher needs at least one model".into());
    }
    if n == 1 {
        return stream_elementwise(src, len, &[0], out, |_, x, o| o.copy_from_slice(&x[0]));
    }
    let max_iter = MAX_ITER.number(ctx.global);
    if max_iter.is_nan() || max_iter < 0.0 {
        return Err(format!("karcher: max_iter must be >= 0, got {max_iter}"));
    }
    let max_iter = max_iter as usize;
    let tol = TOL.number(ctx.global);
    let m = ctx.math;
    let alpha = 1.0 / n as f64;
    let err = Mutex::new(None);
    let windows = || -> Vec<Window> { (0..n).map(|i| Window::new(src, i, len, &err)).collect() };
    let norms: Vec<f32> = (0..n)
        .map(|i| {
            let w = Window::new(src, i, len, &err);
            torch_norm(len, |j| w.get(j))
        })
        .collect();
    take_err(&err)?;
    let valid: Vec<usize> = (0..n).filter(|&i| norms[i] as f64 > tol).collect();
    if valid.is_empty() {
        return stream_elementwise(src, len, &[], out, |_, _, o| o.fill(0.0));
    }
    let alpha_sum: f64 = valid.iter().map(|_| alpha).sum();
    let mut h = History {
        m,
        alphas: valid.iter().map(|_| (alpha / alpha_sum) as f32).collect(),
        start: Start::First,
        steps: Vec::new(),
    };
    let units = |ws: &[Window], j: usize| -> Vec<f32> {
        valid
            .iter()
            .map(|&i| m.round(ws[i].get(j) / norms[i]))
            .collect()
    };
    // a reduction over the tensor of a per-element function of the unit values
    let reduce = |norm: bool, f: &dyn Fn(&[f32]) -> f32| -> f32 {
        let ws = windows();
        if norm {
            torch_norm(len, |j| f(&units(&ws, j)))
        } else {
            torch_sum(len, |j| f(&units(&ws, j)))
        }
    };
    let mean_norm = reduce(true, &|u| h.acc(u));
    if (mean_norm as f64) >= tol {
        h.start = Start::Mean(mean_norm);
    }
    for k in 0..max_iter {
        let mut terms = Vec::new();
        for (vi, a) in h.alphas.iter().enumerate() {
            let dot = m.round(reduce(false, &|un| m.round(h.u(un, k) * un[vi])));
            let dot = dot.clamp(-1.0, 1.0);
            let theta = unary(m, dot, f64::acos);
            if (theta as f64) < tol {
                continue;
            }
            let sin = unary(m, theta, f64::sin);
            terms.push((vi, dot, m.round(a * m.round(theta / sin))));
        }
        let t_norm = reduce(true, &|un| History::tangent(m, un, h.u(un, k), &terms));
        if (t_norm as f64) < tol {
            break;
        }
        let (c, s) = (
            unary(DType::F32, t_norm, f64::cos),
            unary(DType::F32, t_norm, f64::sin),
        );
        let mut step = Step {
            terms,
            t_norm,
            c,
            s,
            u_norm: None,
        };
        h.steps.push(step.clone());
        // the norm of u after the update, before renormalising
        let u_norm = reduce(true, &|un| h.u(un, k + 1));
        if u_norm as f64 > tol {
            step.u_norm = Some(u_norm);
            h.steps[k] = step;
        }
    }
    take_err(&err)?;
    let done = h.steps.len();
    let scale = norms.iter().fold(0.0f64, |s, &nv| s + alpha * nv as f64) as f32;
    let all: Vec<usize> = (0..n).collect();
    stream_elementwise(src, len, &all, out, |_, x, o| {
        for (l, o) in o.iter_mut().enumerate() {
            let un: Vec<f32> = valid.iter().map(|&i| m.round(x[i][l] / norms[i])).collect();
            *o = m.round(scale * h.u(&un, done));
        }
    })
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
    fn streaming_is_bit_identical_to_merge() {
        use super::super::testutil::assert_streams_like_merge;
        let n = 6_007;
        for math in [DType::F32, DType::BF16, DType::F16] {
            let mut data: Vec<Vec<f32>> = (0..3usize)
                .map(|k| {
                    (0..n)
                        .map(|i| math.round(((i * (37 + 17 * k) % 1013) as f32 - 500.0) * 1e-3))
                        .collect()
                })
                .collect();
            data.push(vec![0.0; n]); // a zero tensor takes no part
            for global in [vec![], vec![("max_iter", 3.0)], vec![("tol", 1e-2)]] {
                let ins: Vec<(&[f32], bool, _)> =
                    data.iter().map(|d| (&d[..], false, p(&[]))).collect();
                let out = assert_streams_like_merge(&Karcher, &ins, p(&global), math, &[n], 1000);
                assert_ne!(out, data[0]);
            }
        }
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
