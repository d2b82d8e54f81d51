//! `nuslerp`: SLERP between two models with `t = w₂/(w₁+w₂)` from their weights, optionally
//! on task vectors around a third (base) model, over the whole tensor or per row/column.
//!
//! Follows mergekit's `nuslerp`: exactly two non-base models (a base, when given, must be a
//! third model); `t = w₂/(w₁+w₂)`, or 0.5 when `|w₁+w₂| < 1e-6`. With a base the vectors are
//! the deltas `xᵢ − base` and the base is added back. The vectors are the whole tensor
//! (`nuslerp_flatten`, the default), else the first-axis vectors (`nuslerp_row_wise`; for a
//! 2-D tensor its columns), else the last-axis vectors (rows). Per vector: unit vectors with
//! the norm clamped to ≥ 1e-7, `θ = acos(clamp(û₀·û₁, −1, 1))`, result
//! `(sin((1−t)θ)·v₀ + sin(tθ)·v₁)/sin θ`, or `(1−t)·v₀ + t·v₁` where `|sin θ| < 1e-8`.
//!
//! Numbers: computed in the math dtype as PyTorch does (each elementwise op rounded with
//! `ctx.math.round`); the norms and the dot product replay PyTorch's float32 CPU reduction
//! order ([`super::vecmath::torch_norm`], [`super::vecmath::torch_sum`]; exact for contiguous
//! float32 vectors, i.e. the flattened and row cases, approximate for columns and bf16/f16).
//!
//! # Divergence from mergekit
//!
//! When one of the two vectors has (near) zero length (norm < 1e-7, where mergekit clamps the
//! norm), mergekit's unit vector is ~0, so `θ = π/2` and the result is `sin(tπ/2)·v₁` (or
//! `sin((1−t)π/2)·v₀`) instead of an interpolation. smelt lerps such a pair,
//! `(1−t)·v₀ + t·v₁`, like `slerp` (a zero task vector then simply scales the other by `t`).

use super::vecmath::{Lines, fill, unary};
use super::{BaseUse, Input, MergeCtx, MergeMethod, MethodInfo, ParamSpec};
use rayon::prelude::*;

/// The NuSLERP method.
pub struct NuSlerp;

/// mergekit's clamp of the vector norms.
const NORM_CLAMP: f32 = 1e-7;
/// Below this `|sin θ|` a pair counts as colinear and is lerped.
const SIN_EPS: f64 = 1e-8;

static INFO: MethodInfo = MethodInfo {
    name: "nuslerp",
    pretty_name: "NuSLERP",
    url: None,
    params: &[
        ParamSpec::model_required("weight"),
        ParamSpec::global_bool("nuslerp_flatten", true),
        ParamSpec::global_bool("nuslerp_row_wise", false),
    ],
    base: BaseUse::Optional,
    rectify_embeddings: true,
    result_dtype: None,
    elementwise: false,
};

/// How one vector's output is formed from `v₀`, `v₁`.
#[derive(Debug, Clone, Copy)]
struct Coeffs {
    c0: f32,
    c1: f32,
    /// `sin θ`, or `None` for the lerp.
    div: Option<f32>,
}

impl MergeMethod for NuSlerp {
    fn info(&self) -> &'static MethodInfo {
        &INFO
    }

    fn merge(&self, ctx: &MergeCtx<'_>, out: &mut [f32]) -> Result<(), String> {
        let n = ctx.inputs.len();
        if n == 1 {
            out.copy_from_slice(ctx.inputs[0].data);
            return Ok(());
        }
        let base = ctx.base().map(|b| b.data);
        if base.is_some() && n != 3 {
            return Err(format!(
                "nuslerp: the base model can not be one of the two models to merge \
                 (expected the base plus two other models, got {n} tensors)"
            ));
        }
        let others: Vec<&Input> = ctx.others().collect();
        let [x0, x1] = others[..] else {
            return Err(format!(
                "nuslerp merges exactly two models (plus an optional base model), got {}",
                others.len()
            ));
        };
        let w0 = weight_of(x0)?;
        let w1 = weight_of(x1)?;
        let t = if (w0 + w1).abs() < 1e-6 {
            0.5
        } else {
            w1 / (w0 + w1)
        };
        let m = ctx.math;
        let (x0, x1) = (x0.data, x1.data);
        // The vectors: task vectors around the base, or the tensors themselves.
        let v = |x: &[f32], j: usize| match base {
            Some(b) => m.round(x[j] - b[j]),
            None => x[j],
        };
        let lines = if ctx.global.flag("nuslerp_flatten", true) {
            Lines::flat(out.len())
        } else if ctx.global.flag("nuslerp_row_wise", false) {
            Lines::first_axis(ctx.shape)
        } else {
            Lines::last_axis(ctx.shape)
        };
        let tf = t as f32;
        let one_minus_t = (1.0 - t) as f32;
        let clamp = m.round(NORM_CLAMP);
        let coeffs: Vec<Coeffs> = (0..lines.count)
            .into_par_iter()
            .map(|k| {
                let lerp = Coeffs {
                    c0: one_minus_t,
                    c1: tf,
                    div: None,
                };
                let norm = |x: &[f32]| m.round(lines.torch_norm(k, |j| v(x, j)));
                let (n0, n1) = (norm(x0), norm(x1));
                if n0 < clamp || n1 < clamp {
                    // Divergence from mergekit (see the module docs).
                    return lerp;
                }
                let cos = m.round(lines.torch_sum(k, |j| {
                    m.round(m.round(v(x0, j) / n0) * m.round(v(x1, j) / n1))
                }));
                let theta = unary(m, cos.clamp(-1.0, 1.0), f64::acos);
                let sin = unary(m, theta, f64::sin);
                if (sin.abs() as f64) < SIN_EPS {
                    return lerp;
                }
                Coeffs {
                    c0: unary(m, m.round(one_minus_t * theta), f64::sin),
                    c1: unary(m, m.round(tf * theta), f64::sin),
                    div: Some(sin),
                }
            })
            .collect();
        fill(out, |j| {
            let c = coeffs[lines.line_of(j)];
            let s = m.round(m.round(c.c0 * v(x0, j)) + m.round(c.c1 * v(x1, j)));
            let r = match c.div {
                Some(d) => m.round(s / d),
                None => s,
            };
            match base {
                Some(b) => m.round(b[j] + r),
                None => r,
            }
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
    use super::super::vecmath::testutil::{assert_close, run_shaped};
    use super::*;
    use crate::dtype::DType;

    fn two(a: &[f32], wa: f64, b: &[f32], wb: f64) -> Vec<f32> {
        run(
            &NuSlerp,
            &[
                (a, false, p(&[("weight", wa)])),
                (b, false, p(&[("weight", wb)])),
            ],
            p(&[]),
            DType::F32,
        )
        .unwrap()
    }

    #[test]
    fn equals_slerp_examples_with_weights() {
        // Spec §2.3: slerp with weights 1−t, t and no base (§2.2's vectors).
        assert_close(
            &two(&[1.0, 0.0], 1.0, &[0.0, 1.0], 1.0),
            &[0.70711; 2],
            1e-5,
        );
        assert_close(
            &two(&[2.0, 0.0], 0.5, &[0.0, 1.0], 0.5),
            &[1.41421, 0.70711],
            1e-5,
        );
        assert_close(
            &two(&[1.0, 2.0, 3.0], 0.7, &[3.0, -1.0, 0.5], 0.3),
            &[2.05074, 1.26043, 2.70238],
            1e-5,
        );
    }

    #[test]
    fn zero_weight_sum_uses_half() {
        let r = two(&[1.0, 0.0], 1.0, &[0.0, 1.0], -1.0);
        assert_close(&r, &[0.70711; 2], 1e-5);
    }

    #[test]
    fn with_base_works_on_task_vectors() {
        let base = [1.0f32, 1.0];
        let r = run(
            &NuSlerp,
            &[
                (&[2.0, 1.0], false, p(&[("weight", 0.4)])),
                (&[1.0, 2.0], false, p(&[("weight", 0.4)])),
                (&base, true, p(&[])),
            ],
            p(&[]),
            DType::F32,
        )
        .unwrap();
        assert_close(&r, &[1.70711, 1.70711], 1e-5);
    }

    #[test]
    fn base_among_the_two_is_an_error() {
        let e = run(
            &NuSlerp,
            &[
                (&[2.0, 1.0], true, p(&[])),
                (&[1.0, 2.0], false, p(&[("weight", 0.4)])),
            ],
            p(&[]),
            DType::F32,
        )
        .unwrap_err();
        assert!(e.contains("base model can not be"), "{e}");
    }

    #[test]
    fn per_row_and_per_column() {
        // Rows [1,0]→[0,1] (orthogonal) and [0,1]→[0,1] (colinear, lerped) at t = .5.
        let a = [1.0f32, 0.0, 0.0, 1.0];
        let b = [0.0f32, 1.0, 0.0, 1.0];
        let w = |x| p(&[("weight", x)]);
        let ins = [(&a[..], false, w(1.0)), (&b[..], false, w(1.0))];
        let flat_off = p(&[("nuslerp_flatten", 0.0)]);
        let rows = run_shaped(&NuSlerp, &ins, &[2, 2], flat_off, DType::F32).unwrap();
        assert_close(&rows, &[0.70711, 0.70711, 0.0, 1.0], 1e-5);
        // Flattened (default): one vector pair at 60°: sin(π/6)/sin(π/3)·(a + b).
        let flat = run_shaped(&NuSlerp, &ins, &[2, 2], p(&[]), DType::F32).unwrap();
        let c = 0.5 / (3f64.sqrt() / 2.0);
        assert_close(&flat, &[c, c, 0.0, 2.0 * c], 1e-5);
        // Columns (row_wise) of a 2×2 tensor:
        // column 0 is [1,0]→[0,1], column 1 is [2,0]→[0,1].
        let a = [1.0f32, 2.0, 0.0, 0.0];
        let b = [0.0f32, 0.0, 1.0, 1.0];
        let ins = [(&a[..], false, w(1.0)), (&b[..], false, w(1.0))];
        let g = p(&[("nuslerp_flatten", 0.0), ("nuslerp_row_wise", 1.0)]);
        let cols = run_shaped(&NuSlerp, &ins, &[2, 2], g, DType::F32).unwrap();
        assert_close(&cols, &[0.70711, 1.41421, 0.70711, 0.70711], 1e-5);
    }

    #[test]
    fn colinear_and_endpoints() {
        assert_close(
            &two(&[1.0, 2.0], 0.75, &[2.0, 4.0], 0.25),
            &[1.25, 2.5],
            1e-6,
        );
        let a = [1.0f32, 2.0, 3.0];
        let b = [3.0f32, -1.0, 0.5];
        assert_eq!(two(&a, 1.0, &b, 0.0), a.to_vec());
        assert_close(&two(&a, 0.0, &b, 1.0), &[3.0, -1.0, 0.5], 1e-6);
    }

    #[test]
    fn zero_vector_is_lerped_divergence() {
        // mergekit: sin(π/4)·b; smelt: 0.5·b.
        let r = two(&[0.0, 0.0], 1.0, &[2.0, -4.0], 1.0);
        assert_close(&r, &[1.0, -2.0], 1e-7);
    }

    #[test]
    fn single_input_unchanged_and_bf16() {
        let a = [1.5f32, -2.0];
        let r = run(&NuSlerp, &[(&a, true, p(&[]))], p(&[]), DType::F32).unwrap();
        assert_eq!(r, a.to_vec());
        let r = run(
            &NuSlerp,
            &[
                (&[1.0, 0.0], false, p(&[("weight", 1.0)])),
                (&[0.0, 1.0], false, p(&[("weight", 1.0)])),
            ],
            p(&[]),
            DType::BF16,
        )
        .unwrap();
        // sin(π/4) in bf16 is 0.70703125; divided by sin(π/2) = 1.
        assert_eq!(r, vec![0.70703125, 0.70703125]);
    }
}
