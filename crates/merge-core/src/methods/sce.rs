//! `sce`: Select, Calculate, Erase (mergekit spec §2.8). No per-model weights; base required.
//!
//! With `τᵢ = round(xᵢ − base)` for every non-base input in source order:
//! 1. **Select** (only when `select_topk < 1`): the per-element population variance of the
//!    `τᵢ` across models (rounded to the math dtype); `k = int(count_nonzero(var) ·
//!    select_topk)` computed in `f32` as PyTorch does; `k == 0` (or `select_topk ≤ 0`) masks
//!    everything, otherwise the `k` elements of largest variance are kept in every `τᵢ`
//!    (ties by lower index, see [`super::sparsify`]).
//! 2. **Calculate**: `cᵢ = mean(τᵢ²)` over the tensor, divided by `Σ cᵢ`; uniform `1/N` when
//!    that sum is below `1e-6`.
//! 3. **Erase**: TIES sign election ("sum" mode) on the unweighted `τᵢ`; `eᵢ = cᵢ·Mᵢ`, result
//!    `base + Σ τᵢ·eᵢ / max(Σ eᵢ, 1e-6)`.
//!
//! Every elementwise step is rounded to the math dtype; sums over models accumulate in `f32`
//! in source order, whole-tensor means in `f64` over fixed chunks.
//!
//! # Divergence from mergekit
//! mergekit passes the non-base tensors in Python `set` order (arbitrary); smelt uses source
//! order. Only the `f32` rounding of the sums over models can differ.

use super::consensus::{self, Consensus};
use super::round::{Round, with_round};
use super::sparsify::{self, CHUNK, Mask, magnitude_key};
use super::{BaseUse, MergeCtx, MergeMethod, MethodInfo, ParamSpec};
use rayon::prelude::*;

/// The `sce` method.
pub struct Sce;

static INFO: MethodInfo = MethodInfo {
    name: "sce",
    pretty_name: "SCE",
    url: Some("https://arxiv.org/abs/2408.07990"),
    params: &[
        ParamSpec::global("select_topk", 1.0),
        ParamSpec::global_bool("int8_mask", false),
    ],
    base: BaseUse::Required,
    rectify_embeddings: false,
    result_dtype: None,
    elementwise: false,
};

impl MergeMethod for Sce {
    fn info(&self) -> &'static MethodInfo {
        &INFO
    }

    fn merge(&self, ctx: &MergeCtx<'_>, out: &mut [f32]) -> Result<(), String> {
        with_round!(ctx.math, R => sce_with::<R>(ctx, out))
    }
}

fn sce_with<R: Round>(ctx: &MergeCtx<'_>, out: &mut [f32]) -> Result<(), String> {
    let base = ctx
        .base()
        .ok_or("sce needs a base model (set `base_model`)")?
        .data;
    let xs: Vec<&[f32]> = ctx.others().map(|i| i.data).collect();
    let n = out.len();
    if xs.is_empty() {
        out.copy_from_slice(base);
        return Ok(());
    }
    let nm = xs.len();
    let topk = ctx.global.get_or("select_topk", 1.0);
    let tau = |i: usize, j: usize| R::round(xs[i][j] - base[j]);

    // 1. select: the k elements of largest variance across the task vectors
    let (var, mask) = if topk >= 1.0 {
        (Vec::new(), Mask::All)
    } else if topk <= 0.0 {
        (Vec::new(), Mask::Nothing)
    } else {
        let mut var = vec![0.0f32; n];
        var.par_chunks_mut(CHUNK).enumerate().for_each(|(c, vc)| {
            for (l, v) in vc.iter_mut().enumerate() {
                let j = c * CHUNK + l;
                let mean = (0..nm).map(|i| tau(i, j) as f64).sum::<f64>() / nm as f64;
                let s = (0..nm)
                    .map(|i| {
                        let d = tau(i, j) as f64 - mean;
                        d * d
                    })
                    .sum::<f64>();
                *v = R::round((s / nm as f64) as f32);
            }
        });
        let nonzero = var
            .par_chunks(CHUNK)
            .map(|c| c.iter().filter(|v| **v != 0.0).count())
            .sum::<usize>();
        // int(nonzero · select_topk), evaluated by PyTorch in float32
        let k = ((nonzero as f32) * (topk as f32)) as i64;
        if k <= 0 {
            (Vec::new(), Mask::Nothing)
        } else {
            let top = sparsify::select_top(&var[..], k as usize);
            (var, Mask::Top(top))
        }
    };
    let var = &var;
    let sel_key = |j: usize| var.get(j).map_or(0, |v| magnitude_key(*v));

    // 2. calculate: c_i = mean(τ_i'²), normalised to sum 1
    let parts: Vec<Vec<f64>> = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let mut cur = mask.cursor(c);
            let mut acc = vec![0.0f64; nm];
            for j in c * CHUNK..((c + 1) * CHUNK).min(n) {
                if cur.keep(j, sel_key(j)) {
                    for (i, a) in acc.iter_mut().enumerate() {
                        let t = tau(i, j);
                        *a += R::round(t * t) as f64;
                    }
                }
            }
            acc
        })
        .collect();
    let mut sums = vec![0.0f64; nm];
    for part in parts {
        for (s, p) in sums.iter_mut().zip(part) {
            *s += p;
        }
    }
    let coeffs: Vec<f32> = sums
        .iter()
        .map(|s| R::round((*s as f32) / n as f32))
        .collect();
    let mut total = 0.0f32;
    for c in &coeffs {
        total += c;
    }
    let total = R::round(total);
    let weights: Vec<f32> = if (total as f64).abs() < 1e-6 {
        vec![R::round(1.0 / nm as f32); nm]
    } else {
        coeffs.iter().map(|c| R::round(c / total)).collect()
    };

    // 3. erase and merge
    let min_div = R::round(1e-6);
    let weights = &weights;
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, oc)| {
        let mut cur = mask.cursor(c);
        let mut t = vec![0.0f32; nm];
        for (l, o) in oc.iter_mut().enumerate() {
            let j = c * CHUNK + l;
            let b = base[j];
            let keep = cur.keep(j, sel_key(j));
            for (i, ti) in t.iter_mut().enumerate() {
                *ti = if keep { tau(i, j) } else { 0.0 };
            }
            let positive = consensus::elect(Consensus::Sum, &t, R::round);
            let (mut s, mut dv) = (0.0f32, 0.0f32);
            for (ti, w) in t.iter().zip(weights) {
                if consensus::agrees(*ti, positive) {
                    s += R::round(ti * w);
                    dv += w;
                }
            }
            let dv = R::round(dv).max(min_div);
            *o = R::round(b + R::round(R::round(s) / dv));
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{p, run};
    use super::*;
    use crate::dtype::DType;

    fn sce(base: &[f32], xs: &[&[f32]], topk: f64, math: DType) -> Vec<f32> {
        let mut ins = vec![(base, true, p(&[]))];
        for x in xs {
            ins.push((*x, false, p(&[])));
        }
        run(&Sce, &ins, p(&[("select_topk", topk)]), math).unwrap()
    }

    #[test]
    fn example_from_spec() {
        // §2.8: base 0, A=[1,0,2], B=[1,2,−2], topk 1 → [1, 2, 2]
        let out = sce(
            &[0.0; 3],
            &[&[1.0, 0.0, 2.0], &[1.0, 2.0, -2.0]],
            1.0,
            DType::F32,
        );
        assert_eq!(out, vec![1.0, 2.0, 2.0]);
    }

    #[test]
    fn select_keeps_high_variance_elements() {
        // variances: [0, 1, 0.25, 4] → 3 nonzero, k = int(3·0.5) = 1 → only element 3 kept
        let base = [10.0f32; 4];
        let a = [11.0f32, 9.0, 10.5, 8.0];
        let b = [11.0f32, 11.0, 11.5, 12.0];
        let out = sce(&base, &[&a, &b], 0.5, DType::F32);
        // element 3: τ = [−2, 2], sum 0 → + elected, only B agrees → 10 + 2
        assert_eq!(out, vec![10.0, 10.0, 10.0, 12.0]);
    }

    #[test]
    fn single_model_with_select_returns_base() {
        // one model: zero variance everywhere → k = 0 → everything masked
        let base = [1.0f32, 2.0];
        let out = sce(&base, &[&[3.0, 5.0]], 0.5, DType::F32);
        assert_eq!(out, base.to_vec());
    }

    #[test]
    fn base_only_returns_base() {
        let base = [1.0f32, 2.0];
        assert_eq!(sce(&base, &[], 1.0, DType::F32), base.to_vec());
    }

    #[test]
    fn same_bits_at_any_thread_count() {
        let n = 200_000;
        let base = vec![0.25f32; n];
        let a: Vec<f32> = (0..n)
            .map(|i| 0.25 + ((i * 13 % 101) as f32 - 50.0) * 1e-3)
            .collect();
        let b: Vec<f32> = (0..n)
            .map(|i| 0.25 + ((i * 7 % 89) as f32 - 44.0) * 1e-3)
            .collect();
        let run_in = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| sce(&base, &[&a, &b], 0.3, DType::BF16))
        };
        let one = run_in(1);
        let four = run_in(4);
        assert!(
            one.iter()
                .zip(&four)
                .all(|(x, y)| x.to_bits() == y.to_bits())
        );
        assert_ne!(one, base);
    }
}
