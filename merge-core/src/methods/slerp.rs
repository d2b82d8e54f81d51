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

use super::round::{Round, with_round};
use super::vecmath::{
    LANES, Window, lanes, stream_elementwise, take_err, torch_norm, torch_norm_v, torch_sum,
    torch_sum_v,
};
use super::{BaseUse, ChunkSink, ChunkSource, MergeCtx, MergeMethod, MethodInfo, ParamSpec};
use rayon::prelude::*;
use std::sync::Mutex;

/// The SLERP method.
pub struct Slerp;

/// Below this norm a tensor is not normalised (mergekit's `eps`).
const NORM_EPS: f32 = 1e-8;
/// mergekit reduces in chunks of this many elements (per output).
const CHUNK: usize = 1 << 20;
/// Above this `|cos θ|` the vectors count as colinear and are lerped.
const DOT_THRESHOLD: f32 = 0.9995;

/// The interpolation factor (0: the base; 1: the other model).
const T: ParamSpec = ParamSpec::global_required("t").usually_within(0.0, 1.0);

static INFO: MethodInfo = MethodInfo {
    name: "slerp",
    pretty_name: "SLERP",
    url: Some("https://en.wikipedia.org/wiki/Slerp"),
    params: &[T],
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
        let t = T.get(ctx.global).ok_or("missing required parameter `t`")?;
        let m = ctx.math;
        let n = a.len();
        let (c0, c1) = slerp_coefficients(
            t,
            n,
            |r, which| {
                let x = &(if which == 0 { a } else { b })[r];
                torch_norm_v(x.len(), |v| lanes(x, v), |i| x[i])
            },
            |r, na, nb| {
                let (a, b) = (&a[r.clone()], &b[r]);
                torch_sum_v(
                    a.len(),
                    |v| {
                        let (a, b) = (lanes(a, v), lanes(b, v));
                        std::array::from_fn(|k| (a[k] / na) * (b[k] / nb))
                    },
                    |i| (a[i] / na) * (b[i] / nb),
                )
            },
        );
        with_round!(m, R => combine::<R>(c0, c1, a, b, out));
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
        match ctx.inputs.len() {
            1 => return stream_elementwise(src, n, &[0], out, |_, x, o| o.copy_from_slice(&x[0])),
            2 => {}
            k => return Err(format!("slerp merges exactly two models, got {k}")),
        }
        let a = ctx
            .inputs
            .iter()
            .position(|i| i.is_base)
            .ok_or("slerp needs base_model to be one of its two models")?;
        let b = 1 - a;
        let t = T.get(ctx.global).ok_or("missing required parameter `t`")?;
        let m = ctx.math;
        let err = Mutex::new(None);
        let (c0, c1) = slerp_coefficients(
            t,
            n,
            |r, which| {
                let x = Window::new(src, if which == 0 { a } else { b }, n, &err);
                let s = r.start;
                torch_norm_v(r.len(), |v| x.get8(s + v * LANES), |i| x.get(s + i))
            },
            |r, na, nb| {
                let (wa, wb) = (Window::new(src, a, n, &err), Window::new(src, b, n, &err));
                let s = r.start;
                torch_sum_v(
                    r.len(),
                    |v| {
                        let (a, b) = (wa.get8(s + v * LANES), wb.get8(s + v * LANES));
                        std::array::from_fn(|k| (a[k] / na) * (b[k] / nb))
                    },
                    |i| (wa.get(s + i) / na) * (wb.get(s + i) / nb),
                )
            },
        );
        take_err(&err)?;
        stream_elementwise(
            src,
            n,
            &[a, b],
            out,
            |_, x, o| with_round!(m, R => blend::<R>(c0, c1, &x[0], &x[1], o)),
        )
    }
}

/// `out = round(c₀·a + c₁·b)` (two products and a sum, each rounded to `f32`, as PyTorch
/// computes `c0 * a + c1 * b`), in parallel over fixed chunks.
fn combine<R: Round>(c0: f32, c1: f32, a: &[f32], b: &[f32], out: &mut [f32]) {
    const PAR: usize = 1 << 16;
    out.par_chunks_mut(PAR)
        .zip(a.par_chunks(PAR))
        .zip(b.par_chunks(PAR))
        .for_each(|((o, a), b)| blend::<R>(c0, c1, a, b, o));
}

/// [`combine`] on one chunk (a loop the compiler vectorises).
#[inline]
fn blend<R: Round>(c0: f32, c1: f32, a: &[f32], b: &[f32], out: &mut [f32]) {
    if R::DTYPE == crate::dtype::DType::F16 {
        for ((o, a), b) in out.iter_mut().zip(a).zip(b) {
            *o = c0 * a + c1 * b;
        }
        R::DTYPE.round_slice(out);
        return;
    }
    for ((o, a), b) in out.iter_mut().zip(a).zip(b) {
        *o = R::round(c0 * a + c1 * b);
    }
}

/// The coefficients `(c₀, c₁)` of `c₀·a + c₁·b` (all `f32`, as mergekit computes them) for
/// tensors of `n` elements: `norm(range, which)` is the [`torch_norm`] of elements `range` of
/// `a` (`which == 0`) or `b`, `dot(range, ‖a‖, ‖b‖)` the [`torch_sum`] of `(a/‖a‖)·(b/‖b‖)`
/// there; both are called on mergekit's fixed chunks (in parallel) and combined in order.
fn slerp_coefficients(
    t: f64,
    n: usize,
    norm: impl Fn(std::ops::Range<usize>, usize) -> f32 + Sync,
    dot: impl Fn(std::ops::Range<usize>, f32, f32) -> f32 + Sync,
) -> (f32, f32) {
    let t = t as f32;
    let lerp = (1.0 - t, t);
    if n == 0 {
        return lerp;
    }
    let chunks: Vec<std::ops::Range<usize>> = (0..n)
        .step_by(CHUNK)
        .map(|s| s..(s + CHUNK).min(n))
        .collect();
    let norm_of = |which: usize| {
        let parts: Vec<f32> = chunks.par_iter().map(|r| norm(r.clone(), which)).collect();
        torch_norm(parts.len(), |i| parts[i])
    };
    let (na, nb) = (norm_of(0), norm_of(1));
    if na <= NORM_EPS || nb <= NORM_EPS {
        // Divergence from mergekit (see the module docs): no angle, plain lerp.
        return lerp;
    }
    let parts: Vec<f32> = chunks.par_iter().map(|r| dot(r.clone(), na, nb)).collect();
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
    fn streaming_is_bit_identical_to_merge() {
        use super::super::testutil::assert_streams_like_merge;
        // more than one of mergekit's 2²⁰-element reduction chunks
        let n = CHUNK + 2 * 65536 + 777;
        for math in [DType::F32, DType::BF16] {
            let a: Vec<f32> = (0..n)
                .map(|i| math.round(((i * 37 % 1013) as f32 - 500.0) * 1e-3))
                .collect();
            let b: Vec<f32> = (0..n)
                .map(|i| math.round(((i * 91 % 997) as f32 - 480.0) * 1.3e-3))
                .collect();
            for t in [0.3, 0.75] {
                for (x, y) in [(&a, &b), (&b, &a)] {
                    let out = assert_streams_like_merge(
                        &Slerp,
                        &[(x, false, p(&[])), (y, true, p(&[]))],
                        p(&[("t", t)]),
                        math,
                        &[n],
                        65536 - 1000,
                    );
                    assert_ne!(&out, x);
                }
            }
            // a single input passes through
            let out = assert_streams_like_merge(
                &Slerp,
                &[(&a, true, p(&[]))],
                p(&[("t", 0.5)]),
                math,
                &[n],
                1000,
            );
            assert_eq!(out, a);
        }
    }

    #[test]
    fn bf16_math_rounds_the_float32_result() {
        // Computed in f32 (0.70710677), then cast to the bf16 base dtype.
        let r = slerp(0.5, &[1.0, 0.0], &[0.0, 1.0], DType::BF16).unwrap();
        assert_eq!(r, vec![0.70703125, 0.70703125]);
    }
}
