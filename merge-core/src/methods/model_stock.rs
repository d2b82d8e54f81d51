//! `model_stock`: Model Stock — interpolate between the base and the plain average of the
//! fine-tunes with a ratio derived from the angle between their task vectors.
//!
//! Follows mergekit's `model_stock` (weights are not read): offsets `oᵢ = xᵢ − base` over the
//! whole tensor, or per last-axis row with `filter_wise` (a 1-D tensor is one row); for every
//! pair `i < j`, `cos = (oᵢ·oⱼ)/max(‖oᵢ‖·‖oⱼ‖, 1e-6)` clamped to [−1, 1]; `c` = the mean of
//! the pair cosines; `t = N·c/(1 + (N−1)·c)` with `N` the number of non-base models; result
//! `t·mean(xᵢ) + (1−t)·base`, except that where `|1 + (N−1)·c| < 1e-6` (no finite ratio)
//! `t = 0` keeps the base. Needs the base and at least two other models; the base alone is
//! returned unchanged. (mergekit omits an *optional* weight present in fewer models; that
//! decision belongs to the planner, the kernel reports an error.)
//!
//! Numbers: elementwise steps rounded to the math dtype as PyTorch does; dot products and
//! norms replay PyTorch's float32 CPU reduction order ([`super::vecmath::torch_norm`],
//! [`torch_sum`]).

use super::vecmath::{Lines, WINDOW, Window, fill, stream_elementwise, take_err, torch_sum};
use super::{BaseUse, ChunkSink, ChunkSource, MergeCtx, MergeMethod, MethodInfo, ParamSpec};
use crate::dtype::DType;
use rayon::prelude::*;
use std::sync::Mutex;

/// The Model Stock method.
pub struct ModelStock;

/// Below this `|1 + (N−1)·c|` the ratio is undefined and the base is kept (`t = 0`).
const SINGULAR: f64 = 1e-6;

/// One interpolation ratio per row instead of per tensor.
const FILTER_WISE: ParamSpec = ParamSpec::global_bool("filter_wise", false);

static INFO: MethodInfo = MethodInfo {
    name: "model_stock",
    pretty_name: "Model Stock",
    url: Some("https://arxiv.org/abs/2403.19522"),
    params: &[FILTER_WISE],
    base: BaseUse::Required,
    rectify_embeddings: true,
    result_dtype: None,
    elementwise: false,
};

impl MergeMethod for ModelStock {
    fn info(&self) -> &'static MethodInfo {
        &INFO
    }

    fn merge(&self, ctx: &MergeCtx<'_>, out: &mut [f32]) -> Result<(), String> {
        let base = ctx
            .base()
            .ok_or("model_stock: the base model's tensor is missing")?
            .data;
        let xs: Vec<&[f32]> = ctx.others().map(|i| i.data).collect();
        if xs.is_empty() {
            out.copy_from_slice(base);
            return Ok(());
        }
        check_count(xs.len())?;
        let m = ctx.math;
        let lines = lines_of(ctx, out.len());
        let xs = &xs;
        let ts = ratios(ctx, lines, xs.len(), || {
            move |i: usize, j: usize| m.round(xs[i][j] - base[j])
        });
        fill(out, |j| {
            let t = ts[lines.line_of(j)];
            combine(m, t, xs.len(), |i| xs[i][j], base[j])
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
        let base = ctx
            .inputs
            .iter()
            .position(|i| i.is_base)
            .ok_or("model_stock: the base model's tensor is missing")?;
        let xs: Vec<usize> = (0..ctx.inputs.len())
            .filter(|&i| !ctx.inputs[i].is_base)
            .collect();
        if xs.is_empty() {
            return stream_elementwise(src, n, &[base], out, |_, x, o| o.copy_from_slice(&x[0]));
        }
        check_count(xs.len())?;
        let m = ctx.math;
        let lines = lines_of(ctx, n);
        let err = Mutex::new(None);
        let ts = ratios(ctx, lines, xs.len(), || {
            // a row is read whole, a flattened tensor in windows
            let len = lines.len.min(WINDOW);
            let ws: Vec<Window> = xs
                .iter()
                .map(|&i| Window::new(src, i, n, &err).sized(len))
                .collect();
            let wb = Window::new(src, base, n, &err).sized(len);
            move |i: usize, j: usize| m.round(ws[i].get(j) - wb.get(j))
        });
        take_err(&err)?;
        let nm = xs.len();
        let mut ins = xs.clone();
        ins.push(base);
        stream_elementwise(src, n, &ins, out, |start, x, o| {
            for (l, o) in o.iter_mut().enumerate() {
                let t = ts[lines.line_of(start + l)];
                *o = combine(m, t, nm, |i| x[i][l], x[nm][l]);
            }
        })
    }
}

fn check_count(nm: usize) -> Result<(), String> {
    if nm < 2 {
        return Err(format!(
            "model_stock needs the base plus at least two other models, got {nm} other"
        ));
    }
    Ok(())
}

fn lines_of(ctx: &MergeCtx<'_>, n: usize) -> Lines {
    if FILTER_WISE.flag(ctx.global) {
        Lines::last_axis(ctx.shape)
    } else {
        Lines::flat(n)
    }
}

/// The interpolation ratio `t` of every vector; `make()` gives a reader of the offsets
/// `(model, flat index)`, one per parallel task.
fn ratios<F: Fn(usize, usize) -> f32>(
    ctx: &MergeCtx<'_>,
    lines: Lines,
    nm: usize,
    make: impl Fn() -> F + Sync,
) -> Vec<f32> {
    let m = ctx.math;
    let filter_wise = FILTER_WISE.flag(ctx.global);
    let nf = nm as f32;
    (0..lines.count)
        .into_par_iter()
        .map(|k| {
            let off = make();
            let norms: Vec<f32> = (0..nm)
                .map(|i| m.round(lines.torch_norm(k, |j| off(i, j))))
                .collect();
            let mut cos = Vec::with_capacity(nm * (nm - 1) / 2);
            for i in 0..nm {
                for j in i + 1..nm {
                    let d = m.round(lines.torch_sum(k, |e| m.round(off(i, e) * off(j, e))));
                    let denom = m.round(norms[i] * norms[j]).max(m.round(1e-6));
                    cos.push(m.round(d / denom).clamp(-1.0, 1.0));
                }
            }
            // `stack(cos).mean(0)`: a sum, then a division by the count. Over the
            // flattened tensor that is a 1-D sum; per row, a sum over the stacked axis.
            let sum = if filter_wise {
                cos.iter().fold(0.0f32, |a, &c| a + c)
            } else {
                torch_sum(cos.len(), |i| cos[i])
            };
            let c = m.round(m.round(sum) / cos.len() as f32);
            let den = m.round(1.0 + m.round((nf - 1.0) * c));
            if (den.abs() as f64) < SINGULAR {
                // mergekit keeps the base where no finite ratio exists.
                return 0.0;
            }
            m.round(m.round(nf * c) / den)
        })
        .collect()
}

/// One output element: `t·mean(xᵢ) + (1−t)·base` (`x(i)`: model `i`'s value).
#[inline]
fn combine(m: DType, t: f32, nm: usize, x: impl Fn(usize) -> f32, base: f32) -> f32 {
    let mut sum = x(0);
    for i in 1..nm {
        sum = m.round(sum + x(i));
    }
    let avg = m.round(sum / nm as f32);
    m.round(m.round(t * avg) + m.round(m.round(1.0 - t) * base))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{p, run};
    use super::super::vecmath::testutil::{assert_close, run_shaped};
    use super::*;
    use crate::dtype::DType;

    #[test]
    fn streaming_is_bit_identical_to_merge() {
        use super::super::testutil::assert_streams_like_merge;
        let shape = [130usize, 1003];
        let n = shape[0] * shape[1];
        for math in [DType::F32, DType::BF16] {
            let data: Vec<Vec<f32>> = (0..4usize)
                .map(|k| {
                    (0..n)
                        .map(|i| math.round(((i * (37 + 17 * k) % 1013) as f32 - 500.0) * 1e-3))
                        .collect()
                })
                .collect();
            for filter_wise in [0.0, 1.0] {
                let ins: Vec<(&[f32], bool, _)> = data
                    .iter()
                    .enumerate()
                    .map(|(k, d)| (&d[..], k == 2, p(&[])))
                    .collect();
                let out = assert_streams_like_merge(
                    &ModelStock,
                    &ins,
                    p(&[("filter_wise", filter_wise)]),
                    math,
                    &shape,
                    1000,
                );
                assert_ne!(out, data[2]);
            }
        }
    }

    #[test]
    fn spec_example() {
        let r = run(
            &ModelStock,
            &[
                (&[1.0, 1.0, 0.0], false, p(&[])),
                (&[1.0, 0.0, 1.0], false, p(&[])),
                (&[0.0, 0.0, 0.0], true, p(&[])),
            ],
            p(&[]),
            DType::F32,
        )
        .unwrap();
        assert_close(&r, &[0.66667, 0.33333, 0.33333], 1e-5);
    }

    #[test]
    fn orthogonal_offsets_give_the_base_and_parallel_ones_the_average() {
        // cos 0 → t = 0 → base.
        let base = [1.0f32, 2.0];
        let r = run(
            &ModelStock,
            &[
                (&base, true, p(&[])),
                (&[2.0, 2.0], false, p(&[])),
                (&[1.0, 3.0], false, p(&[])),
            ],
            p(&[]),
            DType::F32,
        )
        .unwrap();
        assert_close(&r, &[1.0, 2.0], 1e-6);
        // cos 1 → t = 1 → plain average.
        let r = run(
            &ModelStock,
            &[
                (&base, true, p(&[])),
                (&[2.0, 3.0], false, p(&[])),
                (&[3.0, 4.0], false, p(&[])),
            ],
            p(&[]),
            DType::F32,
        )
        .unwrap();
        assert_close(&r, &[2.5, 3.5], 1e-6);
    }

    #[test]
    fn zero_offset_counts_as_cos_zero() {
        // Offsets [1,1,0], [1,0,1], [0,0,0]: pair cosines .5, 0, 0 → c = 1/6,
        // t = 3c/(1+2c) = 0.375; mean of the models = [2/3, 1/3, 1/3].
        let r = run(
            &ModelStock,
            &[
                (&[0.0, 0.0, 0.0], true, p(&[])),
                (&[1.0, 1.0, 0.0], false, p(&[])),
                (&[1.0, 0.0, 1.0], false, p(&[])),
                (&[0.0, 0.0, 0.0], false, p(&[])),
            ],
            p(&[]),
            DType::F32,
        )
        .unwrap();
        let t = 0.375;
        assert_close(&r, &[t * 2.0 / 3.0, t / 3.0, t / 3.0], 1e-6);
    }

    #[test]
    fn singular_ratio_keeps_the_base() {
        // Two opposite offsets: c = −1, 1 + (N−1)c = 0 → t = 0 → base.
        let r = run(
            &ModelStock,
            &[
                (&[1.0, 1.0], true, p(&[])),
                (&[2.0, 3.0], false, p(&[])),
                (&[0.0, -1.0], false, p(&[])),
            ],
            p(&[]),
            DType::F32,
        )
        .unwrap();
        assert_eq!(r, vec![1.0, 1.0]);
    }

    #[test]
    fn filter_wise_uses_one_ratio_per_row() {
        // Row 0: the spec example (t = 2/3); row 1: parallel offsets (t = 1).
        let base = [0.0f32; 6];
        let a = [1.0f32, 1.0, 0.0, 1.0, 1.0, 1.0];
        let b = [1.0f32, 0.0, 1.0, 2.0, 2.0, 2.0];
        let ins = [
            (&base[..], true, p(&[])),
            (&a[..], false, p(&[])),
            (&b[..], false, p(&[])),
        ];
        let r = run_shaped(
            &ModelStock,
            &ins,
            &[2, 3],
            p(&[("filter_wise", 1.0)]),
            DType::F32,
        )
        .unwrap();
        assert_close(&r, &[0.66667, 0.33333, 0.33333, 1.5, 1.5, 1.5], 1e-5);
    }

    #[test]
    fn base_only_and_too_few_models() {
        let base = [1.0f32, 2.0];
        let r = run(&ModelStock, &[(&base, true, p(&[]))], p(&[]), DType::F32).unwrap();
        assert_eq!(r, base.to_vec());
        let e = run(
            &ModelStock,
            &[(&base, true, p(&[])), (&[2.0, 2.0], false, p(&[]))],
            p(&[]),
            DType::F32,
        )
        .unwrap_err();
        assert!(e.contains("at least two"), "{e}");
        let e = run(
            &ModelStock,
            &[(&base, false, p(&[])), (&[2.0, 2.0], false, p(&[]))],
            p(&[]),
            DType::F32,
        )
        .unwrap_err();
        assert!(e.contains("base"), "{e}");
    }

    #[test]
    fn bf16_math_rounds() {
        let r = run(
            &ModelStock,
            &[
                (&[1.0, 1.0, 0.0], false, p(&[])),
                (&[1.0, 0.0, 1.0], false, p(&[])),
                (&[0.0, 0.0, 0.0], true, p(&[])),
            ],
            p(&[]),
            DType::BF16,
        )
        .unwrap();
        // t = 2/3 → bf16 0.66796875; avg 1 → t; avg 0.5 → t·0.5.
        let t = 0.66796875f32;
        assert_eq!(r, vec![t, t / 2.0, t / 2.0]);
    }
}
