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

use super::vecmath::{Window, fill, stream_elementwise, take_err, torch_norm, torch_sum, unary};
use super::{
    BaseUse, ChunkSink, ChunkSource, MergeCtx, MergeMethod, MethodInfo, ParamSpec, WEIGHT,
};
use crate::dtype::DType;
use std::sync::Mutex;

/// The Multi-SLERP method.
pub struct MultiSlerp;

/// Whether the weights are divided by their sum.
const NORMALIZE_WEIGHTS: ParamSpec = ParamSpec::global_bool("normalize_weights", true);
/// Below this norm a vector is treated as zero.
const EPS: ParamSpec = ParamSpec::global("eps", 1e-8);

static INFO: MethodInfo = MethodInfo {
    name: "multislerp",
    pretty_name: "Multi-SLERP",
    url: Some("https://goddard.blog/posts/multislerp-wow-what-a-cool-idea"),
    params: &[WEIGHT, NORMALIZE_WEIGHTS, EPS],
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
        let others: Vec<usize> = (0..ctx.inputs.len())
            .filter(|&i| !ctx.inputs[i].is_base)
            .collect();
        let base = ctx.base().map(|b| b.data);
        match (others.len(), base) {
            (0, Some(b)) => {
                out.copy_from_slice(b);
                return Ok(());
            }
            (0, None) => return Err("multislerp needs at least one model".into()),
            (1, _) => {
                out.copy_from_slice(ctx.inputs[others[0]].data);
                return Ok(());
            }
            _ => {}
        }
        if out.is_empty() {
            return Ok(());
        }
        let m = ctx.math;
        let xs: Vec<&[f32]> = others.iter().map(|&i| ctx.inputs[i].data).collect();
        let v = |i: usize, j: usize| match base {
            Some(b) => m.round(xs[i][j] - b[j]),
            None => xs[i][j],
        };
        let sc = scalars(ctx, &others, out.len(), || v)?;
        let k = xs.len();
        fill(out, |j| {
            let vals: Vec<f32> = (0..k).map(|i| v(i, j)).collect();
            sc.element(m, &vals, base.map(|b| b[j]))
        });
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
        let n = ctx.numel();
        let others: Vec<usize> = (0..ctx.inputs.len())
            .filter(|&i| !ctx.inputs[i].is_base)
            .collect();
        let base = ctx.inputs.iter().position(|i| i.is_base);
        match (others.len(), base) {
            (0, Some(b)) => {
                return stream_elementwise(src, n, &[b], out, |_, x, o| o.copy_from_slice(&x[0]));
            }
            (0, None) => return Err("multislerp needs at least one model".into()),
            (1, _) => {
                return stream_elementwise(src, n, &[others[0]], out, |_, x, o| {
                    o.copy_from_slice(&x[0])
                });
            }
            _ => {}
        }
        if n == 0 {
            return Ok(());
        }
        let m = ctx.math;
        let err = Mutex::new(None);
        let sc = scalars(ctx, &others, n, || {
            let ws: Vec<Window> = others
                .iter()
                .map(|&i| Window::new(src, i, n, &err))
                .collect();
            let wb = base.map(|b| Window::new(src, b, n, &err));
            move |i: usize, j: usize| match &wb {
                Some(b) => m.round(ws[i].get(j) - b.get(j)),
                None => ws[i].get(j),
            }
        })?;
        take_err(&err)?;
        let k = others.len();
        let mut ins = others.clone();
        ins.extend(base);
        stream_elementwise(src, n, &ins, out, |_, x, o| {
            let mut vals = vec![0.0f32; k];
            for (l, o) in o.iter_mut().enumerate() {
                let b = x.get(k).map(|b| b[l]);
                for (i, v) in vals.iter_mut().enumerate() {
                    *v = match b {
                        Some(b) => m.round(x[i][l] - b),
                        None => x[i][l],
                    };
                }
                *o = sc.element(m, &vals, b);
            }
        })
    }
}

/// The per-tensor numbers of the final element-wise pass.
enum Scalars {
    /// The weighted mean of the unit vectors vanished (two models): `w₀v₀ + w₁v₁`.
    Lerp { w: Vec<f32> },
    /// The spherical mean.
    Sphere {
        w: Vec<f32>,
        div: Vec<f32>,
        mean_norm: f32,
        dots: Vec<f32>,
        cos_r: f32,
        sin_over_r: f32,
        avg_norm: f32,
    },
}

impl Scalars {
    /// One output element from the models' vector values `vals` (`vᵢ` at this element) and
    /// the base's value `b`.
    fn element(&self, m: DType, vals: &[f32], b: Option<f32>) -> f32 {
        let res = match self {
            Scalars::Lerp { w } => m.round(m.round(vals[0] * w[0]) + m.round(vals[1] * w[1])),
            Scalars::Sphere {
                w,
                div,
                mean_norm,
                dots,
                cos_r,
                sin_over_r,
                avg_norm,
            } => {
                let mean = mean_at(m, w, div, *mean_norm, vals);
                let tg = tangent_at(m, w, div, dots, mean, vals);
                let dir = m.round(m.round(mean * cos_r) + m.round(tg * sin_over_r));
                m.round(dir * avg_norm)
            }
        };
        match b {
            Some(b) => m.round(res + b),
            None => res,
        }
    }
}

/// `(values * weights).sum(0)`: products rounded, summed over the model axis in order.
#[inline]
fn model_sum(m: DType, w: &[f32], f: impl Fn(usize) -> f32) -> f32 {
    let mut acc = 0.0f32;
    for (i, &wi) in w.iter().enumerate() {
        acc += m.round(f(i) * wi);
    }
    m.round(acc)
}

/// The weighted mean of the unit vectors at one element (before normalisation).
#[inline]
fn mean_raw_at(m: DType, w: &[f32], div: &[f32], vals: &[f32]) -> f32 {
    model_sum(m, w, |i| m.round(vals[i] / div[i]))
}

/// The normalised mean at one element.
#[inline]
fn mean_at(m: DType, w: &[f32], div: &[f32], mean_norm: f32, vals: &[f32]) -> f32 {
    m.round(mean_raw_at(m, w, div, vals) / mean_norm)
}

/// The weighted tangent at one element.
#[inline]
fn tangent_at(m: DType, w: &[f32], div: &[f32], dots: &[f32], mean: f32, vals: &[f32]) -> f32 {
    model_sum(m, w, |i| {
        m.round(m.round(vals[i] / div[i]) - m.round(dots[i] * mean))
    })
}

/// The whole-tensor reductions (each a sequential PyTorch-order replay over the tensor):
/// `make()` gives a reader of `vᵢ` at element `j` (`(i, j)`), recomputed in every pass.
fn scalars<V: Fn(usize, usize) -> f32>(
    ctx: &MergeCtx<'_>,
    others: &[usize],
    len: usize,
    make: impl Fn() -> V,
) -> Result<Scalars, String> {
    let m = ctx.math;
    let k = others.len();
    let eps = EPS.number(ctx.global);
    let epsf = eps as f32;
    let mut w: Vec<f32> = others
        .iter()
        .map(|&i| WEIGHT.of_model(&ctx.inputs[i]).map(|w| m.round(w as f32)))
        .collect::<Result<_, _>>()?;
    if NORMALIZE_WEIGHTS.flag(ctx.global) {
        let s = m.round(torch_sum(k, |i| w[i]));
        for wi in &mut w {
            *wi = m.round(*wi / s);
        }
    }
    let v = make();
    let vals_at = |j: usize| -> Vec<f32> { (0..k).map(|i| v(i, j)).collect() };
    // Norms and unit vectors (divisor nᵢ + eps).
    let norms: Vec<f32> = (0..k)
        .map(|i| m.round(torch_norm(len, |j| v(i, j))))
        .collect();
    let div: Vec<f32> = norms.iter().map(|&n| m.round(n + epsf)).collect();
    let mean_norm = m.round(torch_norm(len, |j| mean_raw_at(m, &w, &div, &vals_at(j))));
    if (mean_norm as f64) < eps {
        if k == 2 {
            return Ok(Scalars::Lerp { w });
        }
        return Err(
            "multislerp: the weighted sum of the unit vectors is zero (antipodal \
                    inputs whose weights balance out); use different weights"
                .into(),
        );
    }
    let dots: Vec<f32> = (0..k)
        .map(|i| {
            m.round(torch_sum(len, |j| {
                let vals = vals_at(j);
                let mean = mean_at(m, &w, &div, mean_norm, &vals);
                m.round(m.round(vals[i] / div[i]) * mean)
            }))
        })
        .collect();
    let r = m.round(
        m.round(torch_norm(len, |j| {
            let vals = vals_at(j);
            let mean = mean_at(m, &w, &div, mean_norm, &vals);
            tangent_at(m, &w, &div, &dots, mean, &vals)
        })) + epsf,
    );
    let cos_r = unary(m, r, f64::cos);
    let sin_over_r = m.round(unary(m, r, f64::sin) / r);
    let avg_norm = m.round(torch_sum(k, |i| m.round(norms[i] * w[i])));
    Ok(Scalars::Sphere {
        w,
        div,
        mean_norm,
        dots,
        cos_r,
        sin_over_r,
        avg_norm,
    })
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
    fn streaming_is_bit_identical_to_merge() {
        use super::super::testutil::assert_streams_like_merge;
        let n = 70_001;
        for math in [DType::F32, DType::BF16] {
            let data: Vec<Vec<f32>> = (0..4usize)
                .map(|k| {
                    (0..n)
                        .map(|i| math.round(((i * (37 + 17 * k) % 1013) as f32 - 500.0) * 1e-3))
                        .collect()
                })
                .collect();
            for with_base in [false, true] {
                let mut ins = vec![
                    (&data[0][..], false, p(&[("weight", 0.3)])),
                    (&data[1][..], false, p(&[("weight", 0.9)])),
                    (&data[2][..], false, p(&[("weight", 0.5)])),
                ];
                if with_base {
                    ins.insert(1, (&data[3][..], true, p(&[])));
                }
                let out = assert_streams_like_merge(&MultiSlerp, &ins, p(&[]), math, &[n], 1000);
                assert_ne!(out, data[0]);
            }
        }
        // two antipodal models: the lerp branch
        let a: Vec<f32> = (0..3001).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = a.iter().map(|x| -x).collect();
        assert_streams_like_merge(
            &MultiSlerp,
            &[
                (&a, false, p(&[("weight", 0.5)])),
                (&b, false, p(&[("weight", 0.5)])),
            ],
            p(&[]),
            DType::F32,
            &[3001],
            1000,
        );
    }

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
