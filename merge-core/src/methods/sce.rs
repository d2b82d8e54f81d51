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
use super::sparsify::{self, CHUNK, Mask, Values, magnitude_key};
use super::vecmath::{stream_elementwise, take_err};
use super::{BaseUse, ChunkSink, ChunkSource, MergeCtx, MergeMethod, MethodInfo, ParamSpec};
use rayon::prelude::*;
use std::marker::PhantomData;
use std::sync::Mutex;

/// The `sce` method.
pub struct Sce;

/// The fraction of elements kept by variance.
const SELECT_TOPK: ParamSpec = ParamSpec::global("select_topk", 1.0);

static INFO: MethodInfo = MethodInfo {
    name: "sce",
    pretty_name: "SCE",
    url: Some("https://arxiv.org/abs/2408.07990"),
    params: &[SELECT_TOPK, super::task_family::INT8_MASK],
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

    fn can_stream(&self) -> bool {
        true
    }

    fn merge_streaming(
        &self,
        ctx: &MergeCtx<'_>,
        src: &dyn ChunkSource,
        out: &dyn ChunkSink,
    ) -> Result<(), String> {
        with_round!(ctx.math, R => sce_stream::<R>(ctx, src, out))
    }
}

/// The population variance across the task vectors at each element of a range: `base` and
/// `xs[i]` hold the base's and model `i`'s values there.
fn var_range<R: Round>(base: &[f32], xs: &[&[f32]], out: &mut [f32]) {
    let nm = xs.len();
    for (l, v) in out.iter_mut().enumerate() {
        let tau = |i: usize| R::round(xs[i][l] - base[l]);
        let mean = (0..nm).map(|i| tau(i) as f64).sum::<f64>() / nm as f64;
        let s = (0..nm)
            .map(|i| {
                let d = tau(i) as f64 - mean;
                d * d
            })
            .sum::<f64>();
        *v = R::round((s / nm as f64) as f32);
    }
}

/// The selection: `Mask::All`, `Mask::Nothing` or the top-k of `var` (the variances).
fn select<V: Values + ?Sized>(topk: f64, var: &V) -> Mask {
    if topk >= 1.0 {
        return Mask::All;
    }
    if topk <= 0.0 {
        return Mask::Nothing;
    }
    let n = var.numel();
    let nonzero = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map_init(Vec::new, |buf: &mut Vec<f32>, c| {
            let start = c * CHUNK;
            buf.resize(CHUNK.min(n - start), 0.0);
            var.fill(start, buf);
            buf.iter().filter(|v| **v != 0.0).count()
        })
        .sum::<usize>();
    // int(nonzero · select_topk), evaluated by PyTorch in float32
    let k = ((nonzero as f32) * (topk as f32)) as i64;
    if k <= 0 {
        Mask::Nothing
    } else {
        Mask::Top(sparsify::select_top(var, k as usize))
    }
}

/// The kept flags of elements `start..start + len` (`var`: their variances, when the mask
/// is a top set).
fn kept(mask: &Mask, start: usize, len: usize, var: Option<&[f32]>) -> Vec<bool> {
    let mut cur = mask.cursor(start / CHUNK);
    (0..len)
        .map(|l| cur.keep(start + l, var.map_or(0, |v| magnitude_key(v[l]))))
        .collect()
}

/// Step 2's partial sums `Σ τᵢ'²` (f64) over one [`CHUNK`] of elements.
fn calc_range<R: Round>(base: &[f32], xs: &[&[f32]], keep: &[bool], acc: &mut [f64]) {
    for (l, k) in keep.iter().enumerate() {
        if *k {
            for (i, a) in acc.iter_mut().enumerate() {
                let t = R::round(xs[i][l] - base[l]);
                *a += R::round(t * t) as f64;
            }
        }
    }
}

/// The merge weights `cᵢ` from the partial sums (in chunk order).
fn weights_from<R: Round>(parts: Vec<Vec<f64>>, nm: usize, n: usize) -> Vec<f32> {
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
    if (total as f64).abs() < 1e-6 {
        vec![R::round(1.0 / nm as f32); nm]
    } else {
        coeffs.iter().map(|c| R::round(c / total)).collect()
    }
}

/// Step 3 over a range: erase and merge.
fn erase_range<R: Round>(
    base: &[f32],
    xs: &[&[f32]],
    keep: &[bool],
    weights: &[f32],
    out: &mut [f32],
) {
    let nm = xs.len();
    let min_div = R::round(1e-6);
    let mut t = vec![0.0f32; nm];
    for (l, o) in out.iter_mut().enumerate() {
        let b = base[l];
        for (i, ti) in t.iter_mut().enumerate() {
            *ti = if keep[l] { R::round(xs[i][l] - b) } else { 0.0 };
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
    let topk = SELECT_TOPK.number(ctx.global);
    let sub =
        |r: std::ops::Range<usize>| -> Vec<&[f32]> { xs.iter().map(|x| &x[r.clone()]).collect() };

    // 1. select: the k elements of largest variance across the task vectors
    let var = if topk > 0.0 && topk < 1.0 {
        let mut var = vec![0.0f32; n];
        var.par_chunks_mut(CHUNK).enumerate().for_each(|(c, vc)| {
            let r = c * CHUNK..c * CHUNK + vc.len();
            var_range::<R>(&base[r.clone()], &sub(r), vc);
        });
        var
    } else {
        Vec::new()
    };
    let mask = select(topk, &var[..]);
    let var_of = |r: std::ops::Range<usize>| (!var.is_empty()).then(|| &var[r]);

    // 2. calculate: c_i = mean(τ_i'²), normalised to sum 1
    let parts: Vec<Vec<f64>> = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let r = c * CHUNK..((c + 1) * CHUNK).min(n);
            let keep = kept(&mask, r.start, r.len(), var_of(r.clone()));
            let mut acc = vec![0.0f64; nm];
            calc_range::<R>(&base[r.clone()], &sub(r), &keep, &mut acc);
            acc
        })
        .collect();
    let weights = weights_from::<R>(parts, nm, n);

    // 3. erase and merge
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, oc)| {
        let r = c * CHUNK..c * CHUNK + oc.len();
        let keep = kept(&mask, r.start, r.len(), var_of(r.clone()));
        erase_range::<R>(&base[r.clone()], &sub(r), &keep, &weights, oc);
    });
    Ok(())
}

/// Reads the base (`bufs[0]`) and the models (`bufs[1..]`) at elements `r`.
fn read_all(
    src: &dyn ChunkSource,
    ins: &[usize],
    r: std::ops::Range<usize>,
) -> Result<Vec<Vec<f32>>, String> {
    ins.iter()
        .map(|&i| {
            let mut b = vec![0.0f32; r.len()];
            src.read(i, r.clone(), &mut b).map_err(|e| e.to_string())?;
            Ok(b)
        })
        .collect()
}

/// The variances of a streamed tensor, recomputed from the inputs when read.
struct StreamVar<'a, R: Round> {
    src: &'a dyn ChunkSource,
    ins: &'a [usize],
    n: usize,
    err: &'a Mutex<Option<String>>,
    _r: PhantomData<R>,
}

impl<R: Round> Values for StreamVar<'_, R> {
    fn numel(&self) -> usize {
        self.n
    }
    fn at(&self, i: usize) -> f32 {
        let mut v = [0.0f32];
        self.fill(i, &mut v);
        v[0]
    }
    fn fill(&self, start: usize, out: &mut [f32]) {
        match read_all(self.src, self.ins, start..start + out.len()) {
            Ok(b) => {
                let xs: Vec<&[f32]> = b[1..].iter().map(|x| &x[..]).collect();
                var_range::<R>(&b[0], &xs, out);
            }
            Err(e) => {
                out.fill(0.0);
                let mut slot = self.err.lock().unwrap_or_else(|e| e.into_inner());
                slot.get_or_insert(e);
            }
        }
    }
}

fn sce_stream<R: Round>(
    ctx: &MergeCtx<'_>,
    src: &dyn ChunkSource,
    out: &dyn ChunkSink,
) -> Result<(), String> {
    let base = ctx
        .inputs
        .iter()
        .position(|i| i.is_base)
        .ok_or("sce needs a base model (set `base_model`)")?;
    let n = ctx.numel();
    let mut ins = vec![base];
    ins.extend((0..ctx.inputs.len()).filter(|&i| !ctx.inputs[i].is_base));
    if ins.len() == 1 {
        return stream_elementwise(src, n, &[base], out, |_, x, o| o.copy_from_slice(&x[0]));
    }
    let nm = ins.len() - 1;
    let topk = SELECT_TOPK.number(ctx.global);
    let err = Mutex::new(None);
    let var = StreamVar::<R> {
        src,
        ins: &ins,
        n,
        err: &err,
        _r: PhantomData,
    };
    let mask = select(topk, &var);
    take_err(&err)?;
    let needs_var = matches!(mask, Mask::Top(_));
    // the inputs of a range and, when the mask needs them, their variances
    let load = |r: std::ops::Range<usize>| -> Result<(Vec<Vec<f32>>, Vec<bool>), String> {
        let b = read_all(src, &ins, r.clone())?;
        let xs: Vec<&[f32]> = b[1..].iter().map(|x| &x[..]).collect();
        let keep = if needs_var {
            let mut v = vec![0.0f32; r.len()];
            var_range::<R>(&b[0], &xs, &mut v);
            kept(&mask, r.start, r.len(), Some(&v))
        } else {
            kept(&mask, r.start, r.len(), None)
        };
        Ok((b, keep))
    };
    let parts: Vec<Vec<f64>> = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let r = c * CHUNK..((c + 1) * CHUNK).min(n);
            let (b, keep) = load(r)?;
            let xs: Vec<&[f32]> = b[1..].iter().map(|x| &x[..]).collect();
            let mut acc = vec![0.0f64; nm];
            calc_range::<R>(&b[0], &xs, &keep, &mut acc);
            Ok(acc)
        })
        .collect::<Result<_, String>>()?;
    let weights = weights_from::<R>(parts, nm, n);
    let chunk = src.chunk().max(1);
    (0..n.div_ceil(chunk)).into_par_iter().try_for_each(|c| {
        let r = c * chunk..((c + 1) * chunk).min(n);
        let (b, keep) = load(r.clone())?;
        let xs: Vec<&[f32]> = b[1..].iter().map(|x| &x[..]).collect();
        let mut o = vec![0.0f32; r.len()];
        erase_range::<R>(&b[0], &xs, &keep, &weights, &mut o);
        out.write(r.start, &o).map_err(|e| e.to_string())
    })
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
    fn streaming_is_bit_identical_to_merge() {
        use super::super::testutil::assert_streams_like_merge;
        let n = CHUNK + 4321;
        for math in [DType::F32, DType::BF16] {
            let data: Vec<Vec<f32>> = (0..4usize)
                .map(|k| {
                    (0..n)
                        .map(|i| {
                            math.round(((i * (13 + 6 * k) % (17 + 2 * k)) as f32 - 8.0) * 0.125)
                        })
                        .collect()
                })
                .collect();
            for topk in [1.0, 0.3, 0.77, 0.0] {
                let ins: Vec<(&[f32], bool, _)> = data
                    .iter()
                    .enumerate()
                    .map(|(k, d)| (&d[..], k == 0, p(&[])))
                    .collect();
                let out = assert_streams_like_merge(
                    &Sce,
                    &ins,
                    p(&[("select_topk", topk)]),
                    math,
                    &[n],
                    1000,
                );
                if topk > 0.0 {
                    assert_ne!(out, data[0]);
                }
            }
        }
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
