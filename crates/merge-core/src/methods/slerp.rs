//! `slerp`: spherical linear interpolation between the base model's tensor (`t = 0`) and the
//! other model's tensor (`t = 1`), each whole tensor taken as one vector.
//!
//! Follows mergekit's `slerp` (the PyTorch version, computing in float32 whatever the math
//! dtype): the L2 norms of both tensors (over chunks of 2²⁰ elements, then the norm of the
//! chunk norms); a norm ≤ 1e-8 is replaced by 1; `d = clamp(Σ (a/‖a‖)·(b/‖b‖), −1, 1)`
//! (chunk sums, then their sum); when `|d| > 0.9995` the coefficients are `1−t, t` (lerp),
//! otherwise `θ = acos d` and `sin((1−t)θ)/sin θ`, `sin(tθ)/sin θ`; the result
//! `c₀·a + c₁·b` (on the *unnormalised* tensors, so magnitudes are interpolated implicitly)
//! is stored in the math dtype.
//!
//! Every step is the same float32 operation in the same order as mergekit's: the norms and
//! sums replay PyTorch's CPU reduction order ([`torch_norm`], [`torch_sum`]), and the scalar
//! trigonometry is correctly rounded `f32`. On the parity fixtures (`slerp_t`, float32) the
//! output is bit-identical to mergekit's.
//!
//! # Divergence from mergekit
//!
//! mergekit leaves a tensor whose norm is ≤ 1e-8 (e.g. all zeros) unnormalised, so `d` is
//! ~0, θ = π/2 and the result is `sin((1−t)π/2)·a + sin(tπ/2)·b`: at `t = 0.5` an all-zero
//! base gives `0.7071·b` instead of `0.5·b`. smelt treats such a pair as degenerate (there
//! is no angle to interpolate) and returns the lerp `(1−t)·a + t·b`, which is also what the
//! SLERP limit gives as one vector shrinks towards zero length.

use super::vecmath::{fill, torch_norm, torch_sum};
use super::{BaseUse, MergeCtx, MergeMethod, MethodInfo, ParamSpec};
use rayon::prelude::*;

/// The SLERP method.
pub struct Slerp;

/// Below this norm a tensor is not normalised (mergekit's `eps`).
const NORM_EPS: f32 = 1e-8;
/// mergekit reduces in chunks of this many elements (per output).
const CHUNK: usize = 1 << 20;
/// Above this `|cos θ|` the vectors count as colinear and are lerped.
const DOT_THRESHOLD: f32 = 0.9995;

static INFO: MethodInfo = MethodInfo {
    name: "slerp",
    pretty_name: "SLERP",
    url: Some("https://en.wikipedia.org/wiki/Slerp"),
    params: &[ParamSpec::global_required("t")],
    base: BaseUse::Required,
    rectify_embeddings: true,
    result_dtype: None,
    elementwise: false,
};

impl MergeMethod for Slerp {
    fn info(&self) -> &'static MethodInfo {
        &INFO
    }

    fn merge(&self, ctx: &MergeCtx<'_>, out: &mut [f32]) -> Result<(), String> {
        match ctx.inputs.len() {
            1 => {
                out.copy_from_slice(ctx.inputs[0].data);
                return Ok(());
            }
            2 => {}
            n => return Err(format!("slerp merges exactly two models, got {n}")),
        }
        let a = ctx
            .base()
            .ok_or("slerp needs base_model to be one of its two models")?
            .data;
        let b = ctx
            .others()
            .next()
            .ok_or("slerp needs a model other than base_model")?
            .data;
        let t = ctx
            .global
            .get("t")
            .ok_or("missing required parameter `t`")?;
        let m = ctx.math;
        let coeffs = slerp_coefficients(t, a, b);
        let (c0, c1) = coeffs;
        fill(out, |j| m.round(c0 * a[j] + c1 * b[j]));
        Ok(())
    }
}

/// The coefficients `(c₀, c₁)` of `c₀·a + c₁·b` (all `f32`, as mergekit computes them).
fn slerp_coefficients(t: f64, a: &[f32], b: &[f32]) -> (f32, f32) {
    let t = t as f32;
    let lerp = (1.0 - t, t);
    let n = a.len();
    if n == 0 {
        return lerp;
    }
    let chunks: Vec<std::ops::Range<usize>> = (0..n)
        .step_by(CHUNK)
        .map(|s| s..(s + CHUNK).min(n))
        .collect();
    let norm = |x: &[f32]| {
        let parts: Vec<f32> = chunks
            .par_iter()
            .map(|r| torch_norm(r.len(), |i| x[r.start + i]))
            .collect();
        torch_norm(parts.len(), |i| parts[i])
    };
    let (na, nb) = (norm(a), norm(b));
    if na <= NORM_EPS || nb <= NORM_EPS {
        // Divergence from mergekit (see the module docs): no angle, plain lerp.
        return lerp;
    }
    let parts: Vec<f32> = chunks
        .par_iter()
        .map(|r| torch_sum(r.len(), |i| (a[r.start + i] / na) * (b[r.start + i] / nb)))
        .collect();
    let dot = torch_sum(parts.len(), |i| parts[i]).clamp(-1.0, 1.0);
    if dot.abs() > DOT_THRESHOLD {
        return lerp;
    }
    let f = |x: f32, op: fn(f64) -> f64| op(x as f64) as f32;
    let theta = f(dot, f64::acos);
    let sin = f(theta, f64::sin);
    let c0 = f((1.0 - t) * theta, f64::sin) / sin;
    let c1 = f(t * theta, f64::sin) / sin;
    (c0, c1)
}

#[cfg(test)]
mod tests {
    // The expected values are the spec's printed 5-digit figures (e.g. 0.70711).
    #![allow(clippy::approx_constant)]
    use super::super::ParamValues;
    use super::super::testutil::{p, run};
    use super::super::vecmath::testutil::assert_close;
    use super::*;
    use crate::dtype::DType;

    fn slerp(t: f64, a: &[f32], b: &[f32], m: DType) -> Result<Vec<f32>, String> {
        run(
            &Slerp,
            &[(a, true, p(&[])), (b, false, p(&[]))],
            p(&[("t", t)]),
            m,
        )
    }

    #[test]
    fn spec_worked_examples() {
        let r = slerp(0.5, &[1.0, 0.0], &[0.0, 1.0], DType::F32).unwrap();
        assert_close(&r, &[0.70711, 0.70711], 1e-5);
        let r = slerp(0.5, &[2.0, 0.0], &[0.0, 1.0], DType::F32).unwrap();
        assert_close(&r, &[1.41421, 0.70711], 1e-5);
        let r = slerp(0.3, &[1.0, 2.0, 3.0], &[3.0, -1.0, 0.5], DType::F32).unwrap();
        assert_close(&r, &[2.05074, 1.26043, 2.70238], 1e-5);
    }

    #[test]
    fn base_order_does_not_matter() {
        // The base is `t = 0` wherever it sits in the source list.
        let a = [1.0f32, 2.0, 3.0];
        let b = [3.0f32, -1.0, 0.5];
        let r = run(
            &Slerp,
            &[(&b, false, p(&[])), (&a, true, p(&[]))],
            p(&[("t", 0.3)]),
            DType::F32,
        )
        .unwrap();
        assert_close(&r, &[2.05074, 1.26043, 2.70238], 1e-5);
    }

    #[test]
    fn endpoints_are_exact() {
        let a = [1.0f32, 2.0, 3.0];
        let b = [3.0f32, -1.0, 0.5];
        assert_eq!(slerp(0.0, &a, &b, DType::F32).unwrap(), a.to_vec());
        assert_eq!(slerp(1.0, &a, &b, DType::F32).unwrap(), b.to_vec());
    }

    #[test]
    fn colinear_vectors_are_lerped() {
        // cos θ = 1 > 0.9995 → lerp: 0.75·[1,2] + 0.25·[2,4].
        let r = slerp(0.25, &[1.0, 2.0], &[2.0, 4.0], DType::F32).unwrap();
        assert_close(&r, &[1.25, 2.5], 1e-6);
        // Anti-parallel also lerps (|d| is tested).
        let r = slerp(0.5, &[1.0, 2.0], &[-1.0, -2.0], DType::F32).unwrap();
        assert_close(&r, &[0.0, 0.0], 1e-6);
    }

    #[test]
    fn zero_vector_is_lerped_divergence() {
        // mergekit would give sin(π/4)·b = 0.7071·b here; smelt lerps (documented).
        let r = slerp(0.5, &[0.0, 0.0], &[2.0, -4.0], DType::F32).unwrap();
        assert_close(&r, &[1.0, -2.0], 1e-7);
    }

    #[test]
    fn single_input_is_returned_unchanged() {
        let a = [1.5f32, -2.0];
        let r = run(&Slerp, &[(&a, false, p(&[]))], p(&[("t", 0.5)]), DType::F32).unwrap();
        assert_eq!(r, a.to_vec());
    }

    #[test]
    fn errors_without_base_or_with_three_models() {
        let a = [1.0f32, 0.0];
        let b = [0.0f32, 1.0];
        let g = p(&[("t", 0.5)]);
        let e = run(
            &Slerp,
            &[(&a, false, p(&[])), (&b, false, p(&[]))],
            g.clone(),
            DType::F32,
        )
        .unwrap_err();
        assert!(e.contains("base_model"), "{e}");
        let e = run(
            &Slerp,
            &[(&a, true, p(&[])), (&b, false, p(&[])), (&b, false, p(&[]))],
            g,
            DType::F32,
        )
        .unwrap_err();
        assert!(e.contains("exactly two"), "{e}");
        let e = run(
            &Slerp,
            &[(&a, true, p(&[])), (&b, false, p(&[]))],
            ParamValues::default(),
            DType::F32,
        )
        .unwrap_err();
        assert!(e.contains("`t`"), "{e}");
    }

    #[test]
    fn bf16_math_rounds_the_float32_result() {
        // Computed in f32 (0.70710677), then cast to the bf16 base dtype.
        let r = slerp(0.5, &[1.0, 0.0], &[0.0, 1.0], DType::BF16).unwrap();
        assert_eq!(r, vec![0.70703125, 0.70703125]);
    }
}
