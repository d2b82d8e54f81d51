//! `slerp`: spherical linear interpolation between the base model's tensor (`t = 0`) and the
//! other model's tensor (`t = 1`), each whole tensor taken as one vector.
//!
//! Follows mergekit (which computes with NumPy in `float32` whatever the math dtype): the two
//! tensors are normalised by their L2 norms (only when a norm exceeds 1e-8), `d = Σ â·b̂`;
//! when `|d| > 0.9995` the result is the plain lerp `(1−t)·a + t·b`, otherwise
//! `θ = acos d`, `s₀ = sin(θ − tθ)/sin θ`, `s₁ = sin(tθ)/sin θ` and the result is
//! `s₀·a + s₁·b` on the *unnormalised* tensors. Every scalar and elementwise step is an `f32`
//! operation in mergekit's order; the result is rounded to the math dtype (mergekit casts it
//! back to the base tensor's dtype).
//!
//! Reductions (the two norms and `d`) accumulate in `f64` with fixed chunks and are rounded
//! to `f32` once. mergekit's norms come from BLAS `sdot` (kernel chosen at run time by the
//! machine's OpenBLAS), which cannot be reproduced: with `θ` small, `acos` amplifies a few
//! ulps of `d` into a few ulps of `s₀`, `s₁`, so float32 outputs differ from mergekit's in the
//! last bit of many elements (parity fixture `slerp_t`: max abs error 2.4e-7; the final
//! `s₀·a + s₁·b` itself is mergekit's exact f32 expression).
//!
//! # Divergence from mergekit
//!
//! mergekit leaves a tensor whose norm is ≤ 1e-8 (e.g. all zeros) unnormalised, so `d` is
//! ~0, θ = π/2 and the result is `sin((1−t)π/2)·a + sin(tπ/2)·b`: at `t = 0.5` an all-zero
//! base gives `0.7071·b` instead of `0.5·b`. smelt treats such a pair as degenerate (there
//! is no angle to interpolate) and returns the lerp `(1−t)·a + t·b`, which is also what the
//! SLERP limit gives as one vector shrinks towards zero length.

use super::vecmath::{fill, norm, sum_by};
use super::{BaseUse, MergeCtx, MergeMethod, MethodInfo, ParamSpec};

/// The SLERP method.
pub struct Slerp;

/// Below this norm a tensor is not normalised (mergekit's `eps`).
const NORM_EPS: f64 = 1e-8;
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

/// The coefficients `(c₀, c₁)` of `c₀·a + c₁·b` (all `f32`, as NumPy computes them).
fn slerp_coefficients(t: f64, a: &[f32], b: &[f32]) -> (f32, f32) {
    let lerp = ((1.0 - t) as f32, t as f32);
    let na = norm(a) as f32;
    let nb = norm(b) as f32;
    if na as f64 <= NORM_EPS || nb as f64 <= NORM_EPS {
        // Divergence from mergekit (see the module docs): no angle, plain lerp.
        return lerp;
    }
    let dot = sum_by(a.len(), |i| ((a[i] / na) * (b[i] / nb)) as f64) as f32;
    if dot.abs() > DOT_THRESHOLD {
        return lerp;
    }
    let f = |x: f32, op: fn(f64) -> f64| op(x as f64) as f32;
    let theta0 = f(dot, f64::acos);
    let sin0 = f(theta0, f64::sin);
    let theta_t = theta0 * t as f32;
    let s0 = f(theta0 - theta_t, f64::sin) / sin0;
    let s1 = f(theta_t, f64::sin) / sin0;
    (s0, s1)
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
