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

use super::vecmath::{Lines, WINDOW, Window, fill, stream_elementwise, take_err, unary};
use super::{
    BaseUse, ChunkSink, ChunkSource, Input, MergeCtx, MergeMethod, MethodInfo, ParamSpec, WEIGHT,
};
use crate::dtype::DType;
use rayon::prelude::*;
use std::sync::Mutex;

/// The NuSLERP method.
pub struct NuSlerp;

/// mergekit's clamp of the vector norms.
const NORM_CLAMP: f32 = 1e-7;
/// Below this `|sin θ|` a pair counts as colinear and is lerped.
const SIN_EPS: f64 = 1e-8;

/// Interpolate whole tensors flattened to one vector.
const FLATTEN: ParamSpec = ParamSpec::global_bool("nuslerp_flatten", true);
/// Without flattening: interpolate rows (else columns).
const ROW_WISE: ParamSpec = ParamSpec::global_bool("nuslerp_row_wise", false);

static INFO: MethodInfo = MethodInfo {
    name: "nuslerp",
    pretty_name: "NuSLERP",
    url: None,
    params: &[WEIGHT, FLATTEN, ROW_WISE],
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
        if ctx.inputs.len() == 1 {
            out.copy_from_slice(ctx.inputs[0].data);
            return Ok(());
        }
        let s = setup(ctx)?;
        let m = ctx.math;
        let (x0, x1) = (ctx.inputs[s.x0].data, ctx.inputs[s.x1].data);
        let base = s.base.map(|b| ctx.inputs[b].data);
        // The vectors: task vectors around the base, or the tensors themselves.
        let v = |x: &[f32], j: usize| match base {
            Some(b) => m.round(x[j] - b[j]),
            None => x[j],
        };
        let lines = s.lines(ctx, out.len());
        let coeffs = coefficients(ctx, &s, lines, || {
            move |which: usize, j: usize| v(if which == 0 { x0 } else { x1 }, j)
        });
        fill(out, |j| {
            combine(
                m,
                coeffs[lines.line_of(j)],
                v(x0, j),
                v(x1, j),
                base.map(|b| b[j]),
            )
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
        if ctx.inputs.len() == 1 {
            return stream_elementwise(src, n, &[0], out, |_, x, o| o.copy_from_slice(&x[0]));
        }
        let s = setup(ctx)?;
        let m = ctx.math;
        let lines = s.lines(ctx, n);
        if lines.count > 1 && lines.line_of(1) != 0 {
            // Column vectors (`nuslerp_row_wise`): a window cannot follow a strided walk, so
            // the inputs are read whole (over the budget) and merged in memory.
            return whole(self, ctx, src, out);
        }
        let err = Mutex::new(None);
        let coeffs = coefficients(ctx, &s, lines, || {
            // a row is read whole, a flattened tensor in windows
            let len = lines.len.min(WINDOW);
            let w0 = Window::new(src, s.x0, n, &err).sized(len);
            let w1 = Window::new(src, s.x1, n, &err).sized(len);
            let wb = s.base.map(|b| Window::new(src, b, n, &err).sized(len));
            move |which: usize, j: usize| {
                let x = if which == 0 { w0.get(j) } else { w1.get(j) };
                match &wb {
                    Some(b) => m.round(x - b.get(j)),
                    None => x,
                }
            }
        });
        take_err(&err)?;
        let mut ins = vec![s.x0, s.x1];
        ins.extend(s.base);
        stream_elementwise(src, n, &ins, out, |start, x, o| {
            for (l, o) in o.iter_mut().enumerate() {
                let j = start + l;
                let b = x.get(2).map(|b| b[l]);
                let v = |x: f32| match b {
                    Some(b) => m.round(x - b),
                    None => x,
                };
                *o = combine(m, coeffs[lines.line_of(j)], v(x[0][l]), v(x[1][l]), b);
            }
        })
    }
}

/// A streaming merge that reads every input whole and runs `merge` (for the layouts a
/// streaming pass cannot walk).
fn whole(
    method: &dyn MergeMethod,
    ctx: &MergeCtx<'_>,
    src: &dyn ChunkSource,
    out: &dyn ChunkSink,
) -> Result<(), String> {
    let n = ctx.numel();
    let data: Vec<Vec<f32>> = (0..ctx.inputs.len())
        .map(|i| {
            let mut b = vec![0.0f32; n];
            src.read(i, 0..n, &mut b).map_err(|e| e.to_string())?;
            Ok(b)
        })
        .collect::<Result<_, String>>()?;
    let inputs: Vec<Input> = ctx
        .inputs
        .iter()
        .zip(&data)
        .map(|(i, d)| Input { data: d, ..*i })
        .collect();
    let mut o = vec![0.0f32; n];
    method.merge(
        &MergeCtx {
            inputs: &inputs,
            ..*ctx
        },
        &mut o,
    )?;
    let chunk = src.chunk().max(1);
    for (c, vals) in o.chunks(chunk).enumerate() {
        out.write(c * chunk, vals).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The inputs' roles and `t`.
struct Setup {
    x0: usize,
    x1: usize,
    base: Option<usize>,
    t: f64,
}

impl Setup {
    fn lines(&self, ctx: &MergeCtx<'_>, n: usize) -> Lines {
        if FLATTEN.flag(ctx.global) {
            Lines::flat(n)
        } else if ROW_WISE.flag(ctx.global) {
            Lines::first_axis(ctx.shape)
        } else {
            Lines::last_axis(ctx.shape)
        }
    }
}

fn setup(ctx: &MergeCtx<'_>) -> Result<Setup, String> {
    let n = ctx.inputs.len();
    let base = ctx.inputs.iter().position(|i| i.is_base);
    if base.is_some() && n != 3 {
        return Err(format!(
            "nuslerp: the base model can not be one of the two models to merge \
             (expected the base plus two other models, got {n} tensors)"
        ));
    }
    let others: Vec<usize> = (0..n).filter(|&i| !ctx.inputs[i].is_base).collect();
    let [x0, x1] = others[..] else {
        return Err(format!(
            "nuslerp merges exactly two models (plus an optional base model), got {}",
            others.len()
        ));
    };
    let w0 = WEIGHT.of_model(&ctx.inputs[x0])?;
    let w1 = WEIGHT.of_model(&ctx.inputs[x1])?;
    let t = if (w0 + w1).abs() < 1e-6 {
        0.5
    } else {
        w1 / (w0 + w1)
    };
    Ok(Setup { x0, x1, base, t })
}

/// The coefficients of every vector; `make()` gives a reader of the vectors' values
/// (`(which, flat index)`, `which` 0 or 1), one per parallel task.
fn coefficients<F: Fn(usize, usize) -> f32>(
    ctx: &MergeCtx<'_>,
    s: &Setup,
    lines: Lines,
    make: impl Fn() -> F + Sync,
) -> Vec<Coeffs> {
    let m = ctx.math;
    let t = s.t;
    let tf = t as f32;
    let one_minus_t = (1.0 - t) as f32;
    let clamp = m.round(NORM_CLAMP);
    (0..lines.count)
        .into_par_iter()
        .map(|k| {
            let v = make();
            let lerp = Coeffs {
                c0: one_minus_t,
                c1: tf,
                div: None,
            };
            let norm = |which: usize| m.round(lines.torch_norm(k, |j| v(which, j)));
            let (n0, n1) = (norm(0), norm(1));
            if n0 < clamp || n1 < clamp {
                // Divergence from mergekit (see the module docs).
                return lerp;
            }
            let cos = m.round(lines.torch_sum(k, |j| {
                m.round(m.round(v(0, j) / n0) * m.round(v(1, j) / n1))
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
        .collect()
}

/// One output element from the vectors' values `v0`, `v1` and the base's `b`.
#[inline]
fn combine(m: DType, c: Coeffs, v0: f32, v1: f32, b: Option<f32>) -> f32 {
    let s = m.round(m.round(c.c0 * v0) + m.round(c.c1 * v1));
    let r = match c.div {
        Some(d) => m.round(s / d),
        None => s,
    };
    match b {
        Some(b) => m.round(b + r),
        None => r,
    }
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
    fn streaming_is_bit_identical_to_merge() {
        use super::super::testutil::assert_streams_like_merge;
        let shape = [150usize, 1001];
        let n = shape[0] * shape[1];
        for math in [DType::F32, DType::BF16] {
            let data: Vec<Vec<f32>> = (0..3usize)
                .map(|k| {
                    (0..n)
                        .map(|i| math.round(((i * (37 + 17 * k) % 1013) as f32 - 500.0) * 1e-3))
                        .collect()
                })
                .collect();
            for global in [
                vec![],
                vec![("nuslerp_flatten", 0.0)],
                vec![("nuslerp_flatten", 0.0), ("nuslerp_row_wise", 1.0)],
            ] {
                for with_base in [false, true] {
                    let mut ins = vec![
                        (&data[0][..], false, p(&[("weight", 0.3)])),
                        (&data[1][..], false, p(&[("weight", 0.9)])),
                    ];
                    if with_base {
                        ins.insert(1, (&data[2][..], true, p(&[])));
                    }
                    let out =
                        assert_streams_like_merge(&NuSlerp, &ins, p(&global), math, &shape, 1000);
                    assert_ne!(out, data[0]);
                }
            }
        }
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
