//! `multislerp`: barycentric interpolation of any number of models on the hypersphere
//! (tangent-space mean at the normalised weighted Euclidean mean of the unit vectors).
//!
//! Follows mergekit's `multislerp`, each whole tensor (minus the base, when given) being one
//! vector `vᵢ`: weights rounded to the math dtype and divided by their sum when
//! `normalize_weights` (default true); `nᵢ = ‖vᵢ‖`, `uᵢ = vᵢ/(nᵢ+eps)`, `m = Σ wᵢuᵢ`; when
//! `‖m‖ < eps` two models give `w₁v₁ + w₂v₂` and more are an error; else `m ← m/‖m‖`,
//! tangents `τᵢ = uᵢ − (uᵢ·m)m`, `τ = Σ wᵢτᵢ`, `r = ‖τ‖ + eps`,
//! result `(m·cos r + τ·(sin r / r))·Σ wᵢnᵢ`, plus the base. A single non-base tensor is
//! returned unchanged.
//!
//! Numbers: computed in the math dtype as PyTorch does (each elementwise op rounded with
//! `ctx.math.round`; the weighted products materialised, then summed over the model axis in
//! source order); the norms and dot products over the tensor replay PyTorch's float32 CPU
//! reduction order ([`super::vecmath::torch_norm`], [`super::vecmath::torch_sum`]).

use super::vecmath::{fill, torch_norm, torch_sum, unary};
use super::{BaseUse, Input, MergeCtx, MergeMethod, MethodInfo, ParamSpec};
use rayon::prelude::*;

/// The Multi-SLERP method.
pub struct MultiSlerp;

static INFO: MethodInfo = MethodInfo {
    name: "multislerp",
    pretty_name: "Multi-SLERP",
    url: Some("https://goddard.blog/posts/multislerp-wow-what-a-cool-idea"),
    params: &[
        ParamSpec::model_required("weight"),
        ParamSpec::global_bool("normalize_weights", true),
        ParamSpec::global("eps", 1e-8),
    ],
    base: BaseUse::Optional,
    rectify_embeddings: false,
    result_dtype: None,
    elementwise: false,
};

impl MergeMethod for MultiSlerp {
    fn info(&self) -> &'static MethodInfo {
        &INFO
    }

    fn merge(&self, ctx: &MergeCtx<'_>, out: &mut [f32]) -> Result<(), String> {
        let others: Vec<&Input> = ctx.others().collect();
        let base = ctx.base().map(|b| b.data);
        match (others.len(), base) {
            (0, Some(b)) => {
                out.copy_from_slice(b);
                return Ok(());
            }
            (0, None) => return Err("multislerp needs at least one model".into()),
            (1, _) => {
                out.copy_from_slice(others[0].data);
                return Ok(());
            }
            _ => {}
        }
        if out.is_empty() {
            return Ok(());
        }
        let m = ctx.math;
        let k = others.len();
        let len = out.len();
        let eps = ctx.global.get_or("eps", 1e-8);
        let epsf = eps as f32;
        let xs: Vec<&[f32]> = others.iter().map(|i| i.data).collect();
        let v = |i: usize, j: usize| match base {
            Some(b) => m.round(xs[i][j] - b[j]),
            None => xs[i][j],
        };
        let mut w: Vec<f32> = others
            .iter()
            .map(|i| weight_of(i).map(|w| m.round(w as f32)))
            .collect::<Result<_, _>>()?;
        if ctx.global.flag("normalize_weights", true) {
            let s = m.round(torch_sum(k, |i| w[i]));
            for wi in &mut w {
                *wi = m.round(*wi / s);
            }
        }
        // Norms and unit vectors (divisor nᵢ + eps).
        let norms: Vec<f32> = (0..k)
            .map(|i| m.round(torch_norm(len, |j| v(i, j))))
            .collect();
        let div: Vec<f32> = norms.iter().map(|&n| m.round(n + epsf)).collect();
        let unit = |i: usize, j: usize| m.round(v(i, j) / div[i]);
        // `(values * weights).sum(0)`: products rounded, summed over the model axis in order.
        let model_sum = |f: &dyn Fn(usize) -> f32| {
            let mut acc = 0.0f32;
            for (i, &wi) in w.iter().enumerate() {
                acc += m.round(f(i) * wi);
            }
            m.round(acc)
        };
        // Weighted mean of the unit vectors (kept in `out`).
        fill(out, |j| model_sum(&|i| unit(i, j)));
        let mean_norm = m.round(torch_norm(len, |j| out[j]));
        if (mean_norm as f64) < eps {
            if k == 2 {
                fill(out, |j| {
                    let r = m.round(m.round(v(0, j) * w[0]) + m.round(v(1, j) * w[1]));
                    match base {
                        Some(b) => m.round(r + b[j]),
                        None => r,
                    }
                });
                return Ok(());
            }
            return Err(
                "multislerp: the weighted sum of the unit vectors is zero (antipodal \
                        inputs whose weights balance out); use different weights"
                    .into(),
            );
        }
        out.par_iter_mut()
            .for_each(|o| *o = m.round(*o / mean_norm));
        let mean: &[f32] = out;
        let dots: Vec<f32> = (0..k)
            .map(|i| m.round(torch_sum(len, |j| m.round(unit(i, j) * mean[j]))))
            .collect();
        let mut tangent = vec![0.0f32; len];
        fill(&mut tangent, |j| {
            model_sum(&|i| m.round(unit(i, j) - m.round(dots[i] * mean[j])))
        });
        let r = m.round(m.round(torch_norm(len, |j| tangent[j])) + epsf);
        let cos_r = unary(m, r, f64::cos);
        let sin_over_r = m.round(unary(m, r, f64::sin) / r);
        let avg_norm = m.round(torch_sum(k, |i| m.round(norms[i] * w[i])));
        out.par_iter_mut()
            .zip(&tangent)
            .enumerate()
            .for_each(|(j, (o, &tg))| {
                let dir = m.round(m.round(*o * cos_r) + m.round(tg * sin_over_r));
                let res = m.round(dir * avg_norm);
                *o = match base {
                    Some(b) => m.round(res + b[j]),
                    None => res,
                };
            });
        Ok(())
    }
}

fn weight_of(i: &Input) -> Result<f64, String> {
    i.params
        .get("weight")
        .ok_or_else(|| format!("missing required parameter `weight` for model {}", i.model))
}

#[cfg(test)]
mod tests {
    // The expected values are the spec's printed 5-digit figures (e.g. 0.70711).
    #![allow(clippy::approx_constant)]
    use super::super::testutil::{p, run};
    use super::super::vecmath::testutil::assert_close;
    use super::*;
    use crate::dtype::DType;

    #[test]
    fn spec_example() {
        let r = run(
            &MultiSlerp,
            &[
                (&[1.0, 0.0], false, p(&[("weight", 0.5)])),
                (&[0.0, 1.0], false, p(&[("weight", 0.5)])),
            ],
            p(&[]),
            DType::F32,
        )
        .unwrap();
        assert_close(&r, &[0.70711, 0.70711], 1e-5);
    }

    #[test]
    fn three_orthonormal_vectors_give_the_centroid_direction() {
        // Equal weights on e1, e2, e3: the mean direction (1,1,1)/√3 has zero tangent
        // residual, so the result is that direction times the mean norm 1.
        let e = |k: usize| {
            let mut v = [0.0f32; 3];
            v[k] = 1.0;
            v
        };
        let (a, b, c) = (e(0), e(1), e(2));
        let r = run(
            &MultiSlerp,
            &[
                (&a, false, p(&[("weight", 1.0)])),
                (&b, false, p(&[("weight", 1.0)])),
                (&c, false, p(&[("weight", 1.0)])),
            ],
            p(&[]),
            DType::F32,
        )
        .unwrap();
        let x = 1.0 / 3f64.sqrt();
        assert_close(&r, &[x, x, x], 1e-5);
    }

    #[test]
    fn base_is_subtracted_and_added_back() {
        let base = [1.0f32, -1.0];
        let r = run(
            &MultiSlerp,
            &[
                (&base, true, p(&[])),
                (&[2.0, -1.0], false, p(&[("weight", 0.5)])),
                (&[1.0, 0.0], false, p(&[("weight", 0.5)])),
            ],
            p(&[]),
            DType::F32,
        )
        .unwrap();
        assert_close(&r, &[1.70711, -0.29289], 1e-5);
    }

    #[test]
    fn antipodal_pair_falls_back_to_linear_and_three_error() {
        let r = run(
            &MultiSlerp,
            &[
                (&[1.0, 2.0], false, p(&[("weight", 0.5)])),
                (&[-1.0, -2.0], false, p(&[("weight", 0.5)])),
            ],
            p(&[]),
            DType::F32,
        )
        .unwrap();
        assert_close(&r, &[0.0, 0.0], 1e-7);
        let e = run(
            &MultiSlerp,
            &[
                (&[1.0, 0.0], false, p(&[("weight", 0.5)])),
                (&[-1.0, 0.0], false, p(&[("weight", 0.5)])),
                (&[0.0, 0.0], false, p(&[("weight", 0.5)])),
            ],
            p(&[]),
            DType::F32,
        )
        .unwrap_err();
        assert!(e.contains("zero"), "{e}");
    }

    #[test]
    fn empty_tensor_is_fine() {
        let e: [f32; 0] = [];
        let w = |x| p(&[("weight", x)]);
        let ins = [
            (&e[..], false, w(1.0)),
            (&e[..], false, w(1.0)),
            (&e[..], false, w(1.0)),
        ];
        assert!(
            run(&MultiSlerp, &ins, p(&[]), DType::F32)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn single_model_unchanged() {
        let a = [0.25f32, -3.0];
        let r = run(
            &MultiSlerp,
            &[
                (&[9.0, 9.0], true, p(&[])),
                (&a, false, p(&[("weight", 0.3)])),
            ],
            p(&[]),
            DType::F32,
        )
        .unwrap();
        assert_eq!(r, a.to_vec());
    }

    #[test]
    fn unnormalized_weights_scale_the_norm() {
        // normalize_weights: false with weights 1, 1 on [1,0], [0,1]: mean (1,1) → unit
        // (0.7071, 0.7071), tangents cancel, scale Σ wᵢnᵢ = 2.
        let r = run(
            &MultiSlerp,
            &[
                (&[1.0, 0.0], false, p(&[("weight", 1.0)])),
                (&[0.0, 1.0], false, p(&[("weight", 1.0)])),
            ],
            p(&[("normalize_weights", 0.0)]),
            DType::F32,
        )
        .unwrap();
        assert_close(&r, &[1.41421, 1.41421], 1e-5);
    }

    #[test]
    fn bf16_result_is_bf16() {
        let r = run(
            &MultiSlerp,
            &[
                (&[1.0, 0.0], false, p(&[("weight", 0.5)])),
                (&[0.0, 1.0], false, p(&[("weight", 0.5)])),
            ],
            p(&[]),
            DType::BF16,
        )
        .unwrap();
        for x in r {
            assert_eq!(DType::BF16.round(x), x);
            assert!((x - 0.70711).abs() < 4e-3);
        }
    }
}
