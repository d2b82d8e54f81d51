//! The generalised task-arithmetic engine shared by `task_arithmetic`, `ties`, `dare_ties`,
//! `dare_linear`, `breadcrumbs`, `breadcrumbs_ties`, `della` and `della_linear` (mergekit spec
//! §2.6). Each method file only describes itself ([`Family`]) and calls [`merge`].
//!
//! Per tensor, with `δᵢ = round(xᵢ − base)` for every non-base input in source order:
//! 1. sparsify each `δᵢ` with its own `density` (`gamma`, `epsilon`) into a [`Mask`], plus an
//!    L1 rescale factor when `rescale` (see [`super::sparsify`]);
//! 2. weight: `ωᵢ = round(δᵢ' · wᵢ)` with `wᵢ` rounded to the math dtype;
//! 3. with sign consensus: elect the majority sign of `Σ ωᵢ` ([`super::consensus`]),
//!    `mixed = Σ ωᵢ·Mᵢ`, `divisor = Σ wᵢ·Mᵢ` per element (0 → 1); without:
//!    `mixed = Σ ωᵢ`, `divisor = Σ wᵢ` (|·| < 1e-8 → 1);
//! 4. `normalize`: `mixed ← round(mixed / divisor)`; `lambda ≠ 1`: `mixed ← round(mixed·λ)`;
//! 5. result `round(base + mixed)`. No non-base input → the base unchanged.
//!
//! Sums over models accumulate in `f32` in source order and are rounded once. No tensor-sized
//! copy of a task vector is made: task vectors are recomputed from the inputs in each pass
//! (selection passes, norm pass, final pass); masks are thresholds or packed bits. The final
//! pass runs over fixed chunks of [`CHUNK`] elements in parallel (holding one chunk of
//! weighted deltas per model), so results are identical at any thread count.
//!
//! [`merge_streaming`] runs the same passes with task vectors read from a
//! [`ChunkSource`] (the whole-tensor passes keep their fixed [`CHUNK`] chunking, so every
//! threshold, tie index and L1 norm is the same) and DARE/DELLA masks recomputed on demand
//! instead of stored; the final pass is element-wise, so writing it in the source's chunks
//! gives the same bits as [`merge`].
//!
//! Divergences from mergekit are those of the primitives (see [`super::sparsify`]).
//! `int8_mask` only changes mergekit's intermediate mask dtype and is accepted and ignored.

use super::consensus::{self, Consensus};
use super::della_mask::{self, DellaDraw};
use super::rng::RngKey;
use super::round::{Round, with_round};
use super::sparsify::{self, CHUNK, Delta, Mask, Ties, Values, round_scalar};
use super::{ChunkSink, ChunkSource, MergeCtx, ParamSpec, WEIGHT};
use crate::exec::{recycle, scratch};
use rayon::prelude::*;
use std::marker::PhantomData;
use std::sync::Mutex;

/// How a family member sparsifies task vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sparsification {
    /// Keep everything (task arithmetic).
    None,
    /// Magnitude top-k (TIES).
    Magnitude,
    /// Bernoulli drop (DARE).
    Random,
    /// Drop the largest outliers and the smallest values (breadcrumbs).
    MagnitudeOutliers,
    /// Rank-dependent Bernoulli drop (DELLA).
    DellaMagprune,
}

/// One member of the family.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// The sparsification.
    pub sparsification: Sparsification,
    /// Whether TIES sign consensus ("sum" mode) is applied.
    pub consensus: bool,
    /// `normalize`, with this member's default ([`normalize`]).
    pub normalize: ParamSpec,
    /// `rescale`, with this member's default ([`rescale`]).
    pub rescale: ParamSpec,
}

/// The fraction of each task vector kept (every member; 1 keeps everything).
pub const DENSITY: ParamSpec = ParamSpec::model("density", 1.0).within(0.0, 1.0);
/// The fraction of largest magnitudes dropped as outliers (breadcrumbs).
pub const GAMMA: ParamSpec = ParamSpec::model("gamma", 0.01);
/// The spread of drop probabilities around `1 − density` (DELLA).
pub const EPSILON: ParamSpec = ParamSpec::model("epsilon", 0.15);
/// mergekit's intermediate mask dtype: accepted and ignored.
pub const INT8_MASK: ParamSpec = ParamSpec::global_bool("int8_mask", false);
/// The factor the merged task vector is scaled by.
pub const LAMBDA: ParamSpec = ParamSpec::global("lambda", 1.0);

/// `normalize` (divide by the sum of the weights) with a member's default.
pub const fn normalize(default: bool) -> ParamSpec {
    ParamSpec::global_bool("normalize", default)
}

/// `rescale` (restore each sparsified task vector's L1 norm) with a member's default.
pub const fn rescale(default: bool) -> ParamSpec {
    ParamSpec::global_bool("rescale", default)
}

/// One non-base input, ready for the final pass.
struct Prepared {
    /// Index of the input in `ctx.inputs`.
    input: usize,
    w: f32,
    mask: Mask,
    factor: Option<f32>,
}

/// The per-tensor settings of the final pass.
struct Finish {
    plain_divisor: f32,
    lambda_f: Option<f32>,
    consensus: bool,
    normalize: bool,
}

/// Runs the family member `f` on one tensor.
pub fn merge(f: &Family, ctx: &MergeCtx<'_>, out: &mut [f32]) -> Result<(), String> {
    with_round!(ctx.math, R => merge_with::<R>(f, ctx, out))
}

/// Runs the family member `f` on one tensor read in chunks from `src` (see
/// [`super::MergeMethod::merge_streaming`]); bit-identical to [`merge`].
pub fn merge_streaming(
    f: &Family,
    ctx: &MergeCtx<'_>,
    src: &dyn ChunkSource,
    out: &dyn ChunkSink,
) -> Result<(), String> {
    with_round!(ctx.math, R => stream_with::<R>(f, ctx, src, out))
}

/// The sparsification, weights and rescale factors of every non-base input, in source order.
/// `delta(i)` is input `i`'s task vector; `n` the element count.
fn prepare<R: Round, V: Values>(
    f: &Family,
    ctx: &MergeCtx<'_>,
    n: usize,
    delta: impl Fn(usize) -> V + Sync,
) -> Result<(Vec<Prepared>, Finish), String> {
    let normalize = f.normalize.flag(ctx.global);
    let rescale = f.rescale.flag(ctx.global);
    let lambda = LAMBDA.number(ctx.global);
    let rng = RngKey::new(ctx.seed, ctx.tensor);
    let models: Vec<usize> = (0..ctx.inputs.len())
        .filter(|&i| !ctx.inputs[i].is_base)
        .collect();
    let one = |idx: usize| {
        let job = Job {
            f,
            ctx,
            n,
            rng,
            rescale,
        };
        job.prepare(idx, delta(idx))
    };
    // the models' selections side by side where the sort replay's buffers stay small
    let results: Vec<Result<Prepared, String>> = if models_in_parallel(f, n) {
        models.par_iter().map(|&i| one(i)).collect()
    } else {
        models.iter().map(|&i| one(i)).collect()
    };
    let prepared = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    // scalar divisor of the no-consensus branch
    let plain_divisor = {
        let mut s = 0.0f32;
        for p in &prepared {
            s += p.w;
        }
        let d = R::round(s);
        if d.abs() < R::round(1e-8) { 1.0 } else { d }
    };
    let finish = Finish {
        plain_divisor,
        lambda_f: (lambda != 1.0).then_some(lambda as f32),
        consensus: f.consensus,
        normalize,
    };
    Ok((prepared, finish))
}

/// What one model's sparsification needs of the tensor.
struct Job<'a, 'c> {
    f: &'a Family,
    ctx: &'a MergeCtx<'c>,
    n: usize,
    rng: RngKey,
    rescale: bool,
}

impl Job<'_, '_> {
    /// Input `idx`'s weight, mask and rescale factor; `delta` is its task vector.
    fn prepare<V: Values>(&self, idx: usize, delta: V) -> Result<Prepared, String> {
        let Job {
            f,
            ctx,
            n,
            rng,
            rescale,
        } = *self;
        let m = ctx.math;
        let inp = &ctx.inputs[idx];
        let w = round_scalar(m, WEIGHT.of_model(inp)?);
        let density = DENSITY.number(inp.params);
        // the L1 norms, when the sparsifier gathered them on its pass over the inputs
        let mut norms = None;
        let (mask, work) = match f.sparsification {
            Sparsification::None => (Mask::All, m),
            Sparsification::Magnitude => (sparsify::magnitude(&delta, density, Ties::of(m)), m),
            Sparsification::MagnitudeOutliers => {
                let gamma = GAMMA.number(inp.params);
                let mask = sparsify::magnitude_outliers(&delta, density, gamma, Ties::of(m))
                    .map_err(|e| format!("{e} (model {})", inp.model))?;
                (mask, m)
            }
            Sparsification::Random => {
                let work = sparsify::random_work_dtype(m);
                let mask = sparsify::bernoulli(n, density, work, rng, idx as u32, ctx.offset);
                (mask, work)
            }
            Sparsification::DellaMagprune => {
                let work = sparsify::random_work_dtype(m);
                let draw = DellaDraw {
                    shape: if ctx.shape.iter().product::<usize>() == n {
                        ctx.shape
                    } else {
                        &[]
                    },
                    density,
                    epsilon: EPSILON.number(inp.params),
                    work,
                    key: rng,
                    model: idx as u32,
                    offset: ctx.offset,
                };
                let (mask, parts) = della_mask::della_magprune_l1(&delta, &draw, rescale)
                    .map_err(|e| format!("{e} (model {})", inp.model))?;
                norms = parts;
                (mask, work)
            }
        };
        let factor = match (rescale, norms) {
            (false, _) => None,
            (true, Some(parts)) => sparsify::l1_combine(&parts, work),
            (true, None) => sparsify::l1_rescale(&delta, &mask, work),
        };
        Ok(Prepared {
            input: idx,
            w,
            mask,
            factor,
        })
    }
}

/// Tensors up to this many elements have their models' magnitude selections made side by
/// side (the sort replay holds 8 bytes per element and model while it runs).
const PARALLEL_SELECTION: usize = 32 << 20;

/// Whether [`prepare`] sparsifies the models in parallel.
fn models_in_parallel(f: &Family, n: usize) -> bool {
    matches!(
        f.sparsification,
        Sparsification::Magnitude | Sparsification::MagnitudeOutliers
    ) && n <= PARALLEL_SELECTION
}

/// Bytes a family member holds for a whole tensor while it streams it: one packed mask per
/// model, and while a magnitude cut splits equal magnitudes, the sort replay's `(key, index)`
/// pair per element (for every model at once where [`models_in_parallel`]).
pub fn state_bytes(f: &Family, numel: usize, inputs: usize) -> u64 {
    let n = numel as u64;
    let masks = n.div_ceil(8) * inputs as u64;
    let selection = match f.sparsification {
        Sparsification::Magnitude | Sparsification::MagnitudeOutliers => {
            let at_once = if models_in_parallel(f, numel) {
                inputs.max(1)
            } else {
                1
            };
            8 * n * at_once as u64
        }
        _ => 0,
    };
    masks + selection
}

/// Elements per block of the final pass: small enough that a block's per-model buffers stay
/// in the L1/L2 cache.
const BLOCK: usize = 1024;

/// [`finish_range`] compiled for the widest vector unit the CPU has (detected at run time).
/// Every step is an IEEE operation per element or integer bit manipulation, so the bits are
/// the same at any vector width; no multiply and add are fused (Rust never contracts them).
fn finish<R: Round>(
    prepared: &[Prepared],
    fin: &Finish,
    start: usize,
    bs: &[f32],
    xs: &[&[f32]],
    oc: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if simd::avx512() {
            // SAFETY: the CPU has the features `finish_avx512` is compiled for.
            unsafe { simd::finish_avx512::<R>(prepared, fin, start, bs, xs, oc) };
            return;
        }
        if simd::avx2() {
            // SAFETY: the CPU has the features `finish_avx2` is compiled for.
            unsafe { simd::finish_avx2::<R>(prepared, fin, start, bs, xs, oc) };
            return;
        }
    }
    finish_range::<R>(prepared, fin, start, bs, xs, oc)
}

/// [`finish_range`] for x86-64 vector extensions.
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{Finish, Prepared, Round, finish_range};

    pub fn avx512() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512dq")
    }

    pub fn avx2() -> bool {
        std::arch::is_x86_feature_detected!("avx2")
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
    pub fn finish_avx512<R: Round>(
        prepared: &[Prepared],
        fin: &Finish,
        start: usize,
        bs: &[f32],
        xs: &[&[f32]],
        oc: &mut [f32],
    ) {
        finish_range::<R>(prepared, fin, start, bs, xs, oc)
    }

    #[target_feature(enable = "avx2")]
    pub fn finish_avx2<R: Round>(
        prepared: &[Prepared],
        fin: &Finish,
        start: usize,
        bs: &[f32],
        xs: &[&[f32]],
        oc: &mut [f32],
    ) {
        finish_range::<R>(prepared, fin, start, bs, xs, oc)
    }
}

/// The final pass over elements `start..start + oc.len()`: `bs` holds the base's values
/// there, `xs[k]` those of the `k`-th prepared input. Every element depends only on its own
/// inputs, so any chunking gives the same bits.
///
/// The pass runs block by block ([`BLOCK`] elements), model-major within a block: first each
/// model's weighted sparsified deltas, then the combination across models. Every loop is a
/// plain element-wise loop the compiler can vectorise; the per-element arithmetic and the
/// model order of every sum are those described in the module docs.
#[inline(always)]
fn finish_range<R: Round>(
    prepared: &[Prepared],
    fin: &Finish,
    start: usize,
    bs: &[f32],
    xs: &[&[f32]],
    oc: &mut [f32],
) {
    let len = oc.len();
    let mut om = vec![0.0f32; prepared.len() * BLOCK];
    for b0 in (0..len).step_by(BLOCK) {
        let r = b0..(b0 + BLOCK).min(len);
        let bl = r.len();
        for ((p, x), dst) in prepared.iter().zip(xs).zip(om.chunks_exact_mut(BLOCK)) {
            weighted_delta::<R>(p, start + b0, &x[r.clone()], &bs[r.clone()], &mut dst[..bl]);
        }
        combine::<R>(prepared, fin, &om, &bs[r.clone()], &mut oc[r]);
    }
}

/// One model's `ωᵢ = round(δᵢ' · wᵢ)` over a block: `δᵢ = round(x − base)`, masked, rescaled.
#[inline(always)]
fn weighted_delta<R: Round>(p: &Prepared, start: usize, x: &[f32], bs: &[f32], dst: &mut [f32]) {
    for ((d, x), b) in dst.iter_mut().zip(x).zip(bs) {
        *d = R::round(x - b);
    }
    if !p.mask.is_all() {
        p.mask.apply_range(start, dst);
    }
    let w = p.w;
    match p.factor {
        // the work dtype is the math dtype or f32: `round_dyn(work, d·f)` rounded to the math
        // dtype is `round(d·f)` either way
        Some(f) => {
            for d in dst.iter_mut() {
                *d = R::round(R::round(*d * f) * w);
            }
        }
        None => {
            for d in dst.iter_mut() {
                *d = R::round(*d * w);
            }
        }
    }
}

/// Combines the weighted deltas `om` (model-major, [`BLOCK`] apart) of one block with the
/// base values `bs` into `oc`.
#[inline(always)]
fn combine<R: Round>(prepared: &[Prepared], fin: &Finish, om: &[f32], bs: &[f32], oc: &mut [f32]) {
    let bl = oc.len();
    let mut mixed = [0.0f32; BLOCK];
    let mixed = &mut mixed[..bl];
    for src in om.chunks_exact(BLOCK) {
        for (s, o) in mixed.iter_mut().zip(src) {
            *s += o;
        }
    }
    let mut divisor = [fin.plain_divisor; BLOCK];
    let divisor = &mut divisor[..bl];
    if fin.consensus {
        // `mixed` holds Σ ω: elect, then sum the agreeing values and weights
        let mut positive = [false; BLOCK];
        for (pos, s) in positive.iter_mut().zip(mixed.iter()) {
            *pos = consensus::elect(Consensus::Sum, &[*s], R::round);
        }
        mixed.fill(0.0);
        divisor.fill(0.0);
        for (p, src) in prepared.iter().zip(om.chunks_exact(BLOCK)) {
            let w = p.w;
            for (((s, dv), o), pos) in mixed
                .iter_mut()
                .zip(divisor.iter_mut())
                .zip(src)
                .zip(&positive)
            {
                let a = consensus::agrees(*o, *pos);
                *s += sparsify::select_f32(a, *o);
                *dv += sparsify::select_f32(a, w);
            }
        }
        for dv in divisor.iter_mut() {
            let d = R::round(*dv);
            *dv = if d == 0.0 { 1.0 } else { d };
        }
    }
    // one loop per step, so that each is a plain vectorisable loop
    for s in mixed.iter_mut() {
        *s = R::round(*s);
    }
    if fin.normalize {
        for (s, div) in mixed.iter_mut().zip(divisor.iter()) {
            *s = R::round(*s / div);
        }
    }
    if let Some(lf) = fin.lambda_f {
        for s in mixed.iter_mut() {
            *s = R::round(*s * lf);
        }
    }
    for ((o, s), b) in oc.iter_mut().zip(mixed.iter()).zip(bs) {
        *o = R::round(b + s);
    }
}

fn merge_with<R: Round>(f: &Family, ctx: &MergeCtx<'_>, out: &mut [f32]) -> Result<(), String> {
    let base = ctx.base().ok_or(NO_BASE)?.data;
    let n = out.len();
    if base.len() != n || ctx.inputs.iter().any(|i| i.data.len() != n) {
        return Err(format!("inputs and output differ in length (output {n})"));
    }
    let delta = |i: usize| Delta::<R>::new(ctx.inputs[i].data, base);
    let (prepared, fin) = prepare::<R, _>(f, ctx, n, delta)?;
    if prepared.is_empty() {
        out.copy_from_slice(base);
        return Ok(());
    }
    let (prepared, fin) = (&prepared, &fin);
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, oc)| {
        let start = c * CHUNK;
        let r = start..start + oc.len();
        let xs: Vec<&[f32]> = prepared
            .iter()
            .map(|p| &ctx.inputs[p.input].data[r.clone()])
            .collect();
        finish::<R>(prepared, fin, start, &base[r.clone()], &xs, oc);
    });
    Ok(())
}

const NO_BASE: &str =
    "no base model tensor: this method needs `base_model`, and the base must contain this tensor";

/// A task vector `round(x − base)` read from a [`ChunkSource`]. Read errors are kept in
/// `err` (the [`Values`] interface cannot fail) and reported after the pass.
struct SrcDelta<'a, R: Round> {
    src: &'a dyn ChunkSource,
    x: usize,
    base: usize,
    n: usize,
    err: &'a Mutex<Option<String>>,
    _round: PhantomData<R>,
}

impl<R: Round> SrcDelta<'_, R> {
    fn read(&self, input: usize, start: usize, out: &mut [f32]) {
        if let Err(e) = self.src.read(input, start..start + out.len(), out) {
            out.fill(0.0);
            let mut slot = self.err.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert_with(|| e.to_string());
        }
    }
}

impl<R: Round> Values for SrcDelta<'_, R> {
    fn numel(&self) -> usize {
        self.n
    }
    fn at(&self, i: usize) -> f32 {
        let mut v = [0.0f32];
        self.fill(i, &mut v);
        v[0]
    }
    fn fill(&self, start: usize, out: &mut [f32]) {
        self.read(self.x, start, out);
        let mut b = scratch(out.len());
        self.read(self.base, start, &mut b);
        for (o, b) in out.iter_mut().zip(&b) {
            *o = R::round(*o - b);
        }
        recycle(b);
    }
}

fn take_err(err: &Mutex<Option<String>>) -> Result<(), String> {
    match err.lock().unwrap_or_else(|e| e.into_inner()).take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn stream_with<R: Round>(
    f: &Family,
    ctx: &MergeCtx<'_>,
    src: &dyn ChunkSource,
    out: &dyn ChunkSink,
) -> Result<(), String> {
    let base = ctx.inputs.iter().position(|i| i.is_base).ok_or(NO_BASE)?;
    if src.inputs() != ctx.inputs.len() {
        return Err(format!(
            "the chunk source has {} inputs, the merge {}",
            src.inputs(),
            ctx.inputs.len()
        ));
    }
    let n = ctx.numel();
    let chunk = src.chunk().max(1);
    let err = Mutex::new(None);
    let delta = |i: usize| SrcDelta::<R> {
        src,
        x: i,
        base,
        n,
        err: &err,
        _round: PhantomData,
    };
    let (prepared, fin) = prepare::<R, _>(f, ctx, n, delta)?;
    take_err(&err)?;
    let (prepared, fin) = (&prepared, &fin);
    (0..n.div_ceil(chunk)).into_par_iter().try_for_each(|c| {
        let start = c * chunk;
        let len = chunk.min(n - start);
        let r = start..start + len;
        let mut bs = scratch(len);
        src.read(base, r.clone(), &mut bs)
            .map_err(|e| e.to_string())?;
        let mut o = scratch(len);
        if prepared.is_empty() {
            o.copy_from_slice(&bs);
        } else {
            let bufs: Vec<Vec<f32>> = prepared
                .iter()
                .map(|p| {
                    let mut b = scratch(len);
                    src.read(p.input, r.clone(), &mut b)
                        .map_err(|e| e.to_string())?;
                    Ok(b)
                })
                .collect::<Result<_, String>>()?;
            let xs: Vec<&[f32]> = bufs.iter().map(|b| &b[..]).collect();
            finish::<R>(prepared, fin, start, &bs, &xs, &mut o);
            for b in bufs {
                recycle(b);
            }
        }
        take_err(&err)?;
        let w = out.write(start, &o).map_err(|e| e.to_string());
        recycle(bs);
        recycle(o);
        w
    })
}

/// Defines one method of the family: its unit struct, its [`MethodInfo`] (`weight` and
/// [`DENSITY`] per model, any extra per-model parameters, then [`normalize`] and [`rescale`]
/// with the method's defaults, [`INT8_MASK`] and [`LAMBDA`]) and its [`MergeMethod`] impl over this engine, in-memory and streaming.
/// Each method keeps a file of its own (its docs and tests); only this wiring is shared.
macro_rules! family_method {
    (
        $(#[$meta:meta])*
        $ty:ident {
            name: $name:literal,
            pretty_name: $pretty:literal,
            url: $url:literal,
            extra_params: [$($extra:expr),* $(,)?],
            sparsification: $sp:ident,
            consensus: $consensus:literal,
            normalize: $normalize:literal,
            rescale: $rescale:literal,
            elementwise: $elementwise:literal $(,)?
        }
    ) => {
        $(#[$meta])*
        pub struct $ty;

        const NORMALIZE: $crate::methods::ParamSpec =
            $crate::methods::task_family::normalize($normalize);
        const RESCALE: $crate::methods::ParamSpec =
            $crate::methods::task_family::rescale($rescale);

        static INFO: $crate::methods::MethodInfo = $crate::methods::MethodInfo {
            name: $name,
            pretty_name: $pretty,
            url: Some($url),
            params: &[
                $crate::methods::WEIGHT,
                $crate::methods::task_family::DENSITY,
                $($extra,)*
                NORMALIZE,
                RESCALE,
                $crate::methods::task_family::INT8_MASK,
                $crate::methods::task_family::LAMBDA,
            ],
            base: $crate::methods::BaseUse::Required,
            rectify_embeddings: true,
            result_dtype: None,
            elementwise: $elementwise,
        };

        static FAMILY: $crate::methods::task_family::Family = $crate::methods::task_family::Family {
            sparsification: $crate::methods::task_family::Sparsification::$sp,
            consensus: $consensus,
            normalize: NORMALIZE,
            rescale: RESCALE,
        };

        impl $crate::methods::MergeMethod for $ty {
            fn info(&self) -> &'static $crate::methods::MethodInfo {
                &INFO
            }

            fn merge(&self, ctx: &$crate::methods::MergeCtx<'_>, out: &mut [f32]) -> Result<(), String> {
                $crate::methods::task_family::merge(&FAMILY, ctx, out)
            }

            fn can_stream(&self) -> bool {
                // elementwise members stream chunk by chunk through `merge` already
                !$elementwise
            }

            fn prefers_streaming(&self) -> bool {
                // the passes re-read chunks instead of holding every input whole as f32
                true
            }

            fn streaming_state_bytes(&self, numel: usize, inputs: usize) -> u64 {
                $crate::methods::task_family::state_bytes(&FAMILY, numel, inputs)
            }

            fn merge_streaming(
                &self,
                ctx: &$crate::methods::MergeCtx<'_>,
                src: &dyn $crate::methods::ChunkSource,
                out: &dyn $crate::methods::ChunkSink,
            ) -> Result<(), String> {
                $crate::methods::task_family::merge_streaming(&FAMILY, ctx, src, out)
            }
        }
    };
}
pub(crate) use family_method;

#[cfg(test)]
pub(crate) mod tests {
    //! Engine tests through the family members' worked examples live in the method files;
    //! these cover behaviour shared by all members.
    use super::super::MergeMethod;
    use super::super::testutil::{p, run};
    use super::*;
    use crate::dtype::DType;

    /// Runs `method` with base 0-offset inputs given as (values, weight, density).
    pub(crate) fn run_family(
        method: &dyn MergeMethod,
        base: &[f32],
        models: &[(&[f32], f64, f64)],
        global: &[(&'static str, f64)],
        math: DType,
    ) -> Result<Vec<f32>, String> {
        let mut ins = vec![(base, true, p(&[]))];
        for (x, w, d) in models {
            ins.push((*x, false, p(&[("weight", *w), ("density", *d)])));
        }
        run(method, &ins, p(global), math)
    }

    #[test]
    fn registry_matches_the_spec_table() {
        // §2.6: (name, pretty name, normalize default, rescale default, extra per-model param)
        let table = [
            ("task_arithmetic", "Task Arithmetic", false, false, None),
            ("ties", "TIES", true, false, None),
            ("dare_ties", "DARE TIES", false, true, None),
            ("dare_linear", "Linear DARE", false, true, None),
            (
                "breadcrumbs",
                "Model Breadcrumbs",
                false,
                false,
                Some(("gamma", 0.01)),
            ),
            (
                "breadcrumbs_ties",
                "Model Breadcrumbs with TIES",
                false,
                false,
                Some(("gamma", 0.01)),
            ),
            ("della", "DELLA", true, true, Some(("epsilon", 0.15))),
            (
                "della_linear",
                "Linear DELLA",
                false,
                true,
                Some(("epsilon", 0.15)),
            ),
        ];
        for (name, pretty, normalize, rescale, extra) in table {
            let info = super::super::lookup(name).unwrap().info();
            assert_eq!(info.pretty_name, pretty);
            assert_eq!(info.base, super::super::BaseUse::Required);
            let get = |n: &str| info.params.iter().find(|p| p.name == n).copied();
            assert_eq!(
                get("normalize").unwrap().default,
                Some(normalize as u8 as f64),
                "{name}"
            );
            assert_eq!(
                get("rescale").unwrap().default,
                Some(rescale as u8 as f64),
                "{name}"
            );
            assert_eq!(get("lambda").unwrap().default, Some(1.0));
            assert_eq!(get("int8_mask").unwrap().default, Some(0.0));
            assert!(get("weight").unwrap().required);
            assert_eq!(get("density").unwrap().default, Some(1.0));
            if let Some((p, d)) = extra {
                assert_eq!(get(p).unwrap().default, Some(d), "{name}");
                assert_eq!(get(p).unwrap().scope, super::super::Scope::PerModel);
            }
            assert_eq!(info.params.len(), 6 + extra.is_some() as usize, "{name}");
        }
        for name in ["sce", "ram", "ramplus_tl"] {
            assert!(super::super::lookup(name).is_some(), "{name}");
        }
        assert_eq!(
            super::super::lookup("ramplus_tl")
                .unwrap()
                .info()
                .result_dtype,
            Some(DType::F32)
        );
    }

    /// Inputs with many equal magnitudes (quantised values), over more than one
    /// [`CHUNK`]: a base and three models.
    fn tied_inputs(n: usize, math: DType) -> Vec<Vec<f32>> {
        let base: Vec<f32> = (0..n)
            .map(|i| math.round(((i * 37 % 101) as f32 - 50.0) * 0.0625))
            .collect();
        (0..4usize)
            .map(|m| {
                if m == 0 {
                    return base.clone();
                }
                (0..n)
                    .map(|i| {
                        let q = ((i * (13 + 6 * m) + m * 7) % (17 + 2 * m)) as f32 - 8.0;
                        math.round(base[i] + q * 0.125)
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn streaming_is_bit_identical_to_merge() {
        use super::super::testutil::assert_streams_like_merge;
        use super::super::{
            breadcrumbs, breadcrumbs_ties, dare_linear, dare_ties, della, della_linear, ties,
        };
        let methods: [&dyn MergeMethod; 7] = [
            &ties::Ties,
            &dare_ties::DareTies,
            &dare_linear::DareLinear,
            &breadcrumbs::Breadcrumbs,
            &breadcrumbs_ties::BreadcrumbsTies,
            &della::Della,
            &della_linear::DellaLinear,
        ];
        let shape = [70usize, 1003];
        let n = shape[0] * shape[1];
        assert!(n > CHUNK && !n.is_multiple_of(1000));
        for math in [DType::F32, DType::BF16] {
            let data = tied_inputs(n, math);
            for method in methods {
                for (dens, global) in [
                    (
                        [0.37, 0.5, 0.61],
                        vec![("rescale", 1.0), ("normalize", 1.0)],
                    ),
                    ([0.3, 1.0, 0.2], vec![("lambda", 0.8), ("rescale", 0.0)]),
                ] {
                    let mut ins = vec![(&data[0][..], true, p(&[]))];
                    for m in 1..4 {
                        ins.push((
                            &data[m][..],
                            false,
                            p(&[
                                ("weight", [0.5, 0.3, 0.7][m - 1]),
                                ("density", dens[m - 1]),
                                ("gamma", 0.05),
                                ("epsilon", 0.1),
                            ]),
                        ));
                    }
                    let out =
                        assert_streams_like_merge(method, &ins, p(&global), math, &shape, 1000);
                    assert!(
                        out.iter().zip(&data[0]).any(|(o, b)| o != b),
                        "{} merged nothing",
                        method.info().name
                    );
                }
            }
        }
    }

    #[test]
    fn streaming_base_only_and_small_chunks() {
        use super::super::testutil::assert_streams_like_merge;
        let data = tied_inputs(2500, DType::F32);
        // base only: the base comes back
        let out = assert_streams_like_merge(
            &super::super::ties::Ties,
            &[(&data[0][..], true, p(&[]))],
            p(&[]),
            DType::F32,
            &[2500],
            64,
        );
        assert_eq!(out, data[0]);
        // one 1-D DELLA row spanning many chunks, with a chunk that is not a row multiple
        let ins = vec![
            (&data[0][..], true, p(&[])),
            (
                &data[1][..],
                false,
                p(&[("weight", 1.0), ("density", 0.4), ("epsilon", 0.2)]),
            ),
        ];
        assert_streams_like_merge(
            &super::super::della::Della,
            &ins,
            p(&[]),
            DType::BF16,
            &[2500],
            333,
        );
        assert_streams_like_merge(
            &super::super::della::Della,
            &ins,
            p(&[]),
            DType::BF16,
            &[25, 100],
            333,
        );
    }

    #[test]
    fn base_only_returns_base() {
        let b = [1.0f32, -2.0];
        let out = run(
            &super::super::ties::Ties,
            &[(&b, true, p(&[]))],
            p(&[]),
            DType::F32,
        )
        .unwrap();
        assert_eq!(out, b.to_vec());
    }

    #[test]
    fn missing_base_is_an_error() {
        let a = [1.0f32];
        let e = run(
            &super::super::ties::Ties,
            &[(&a, false, p(&[("weight", 1.0), ("density", 1.0)]))],
            p(&[]),
            DType::F32,
        )
        .unwrap_err();
        assert!(e.contains("base"), "{e}");
    }

    /// Runs the final pass of every vector width the CPU has on the same inputs.
    #[cfg(target_arch = "x86_64")]
    fn every_width<R: Round>(prepared: &[Prepared], fin: &Finish, start: usize, data: &[Vec<f32>]) {
        let xs: Vec<&[f32]> = data[1..].iter().map(|x| &x[..]).collect();
        let n = data[0].len();
        let mut want = vec![0.0f32; n];
        finish_range::<R>(prepared, fin, start, &data[0], &xs, &mut want);
        let mut got = vec![0.0f32; n];
        if simd::avx2() {
            // SAFETY: the CPU has AVX2 (checked just above).
            unsafe { simd::finish_avx2::<R>(prepared, fin, start, &data[0], &xs, &mut got) };
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits())
            );
        }
        if simd::avx512() {
            // SAFETY: the CPU has AVX-512 (checked just above).
            unsafe { simd::finish_avx512::<R>(prepared, fin, start, &data[0], &xs, &mut got) };
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits())
            );
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn vector_widths_give_the_same_bits() {
        let n = 3 * BLOCK + 77;
        let specials = [
            0.0f32,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            -f32::INFINITY,
            1e-40,
            -3e-39,
            65504.0,
            1e30,
        ];
        let data: Vec<Vec<f32>> = (0..5u64)
            .map(|m| {
                let k = RngKey::new(m, "w");
                (0..n as u64)
                    .map(|i| {
                        let b = k.bits(0, i);
                        if b.is_multiple_of(29) {
                            specials[(b >> 8) as usize % specials.len()]
                        } else {
                            ((b >> 40) as f32 / 16_777_216.0 - 0.5) * 2f32.powi((b % 7) as i32 - 3)
                        }
                    })
                    .collect()
            })
            .collect();
        let key = RngKey::new(1, "t");
        let masks = [
            Mask::All,
            Mask::Top(sparsify::select_top(&data[1][..], n / 2)),
            sparsify::bernoulli(n + 64, 0.6, DType::F32, key, 2, 5),
            sparsify::magnitude_outliers(&data[3][..], 0.5, 0.1, Ties::Rare).unwrap(),
        ];
        let prepared: Vec<Prepared> = masks
            .into_iter()
            .enumerate()
            .map(|(i, mask)| Prepared {
                input: i + 1,
                w: [0.3, 0.7, -0.5, 1.0][i],
                mask,
                factor: [None, Some(1.7), Some(0.9), None][i],
            })
            .collect();
        for consensus in [false, true] {
            for (normalize, lambda_f) in [(false, None), (true, Some(0.8))] {
                let fin = Finish {
                    plain_divisor: 0.75,
                    lambda_f,
                    consensus,
                    normalize,
                };
                every_width::<super::super::round::F32>(&prepared, &fin, 64, &data);
                every_width::<super::super::round::Bf16>(&prepared, &fin, 64, &data);
                every_width::<super::super::round::F16>(&prepared, &fin, 64, &data);
            }
        }
    }

    #[test]
    fn missing_weight_is_an_error() {
        let b = [0.0f32];
        let a = [1.0f32];
        let e = run(
            &super::super::task_arithmetic::TaskArithmetic,
            &[(&b, true, p(&[])), (&a, false, p(&[]))],
            p(&[]),
            DType::F32,
        )
        .unwrap_err();
        assert!(e.contains("weight") && e.contains("m1"), "{e}");
    }
}

#[cfg(test)]
mod bench {
    //! Rough kernel timing (run with `--ignored --nocapture` in an optimised build).
    use super::super::testutil::p;
    use super::super::{Input, MergeCtx, MergeMethod, ParamValues};
    use crate::dtype::DType;
    use std::time::Instant;

    fn time(
        method: &dyn MergeMethod,
        data: &[Vec<f32>],
        params: &[ParamValues],
        math: DType,
    ) -> f64 {
        let ins: Vec<Input> = data
            .iter()
            .zip(params)
            .enumerate()
            .map(|(k, (d, p))| Input {
                data: d,
                is_base: k == 0,
                params: p,
                model: "m",
            })
            .collect();
        let n = data[0].len();
        let shape = [n / 2048, 2048];
        let global = p(&[]);
        let ctx = MergeCtx {
            tensor: "t",
            shape: &shape,
            offset: 0,
            inputs: &ins,
            global: &global,
            math,
            seed: 1,
            is_embed: false,
        };
        let mut out = vec![0.0f32; n];
        let t = Instant::now();
        method.merge(&ctx, &mut out).unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert!(out.iter().all(|v| v.is_finite()));
        secs
    }

    #[test]
    #[ignore]
    fn kernel_timing() {
        let n = 1 << 24;
        let math = DType::BF16;
        let data: Vec<Vec<f32>> = (0..4u32)
            .map(|m| {
                (0..n)
                    .map(|i| math.round(((i as u32).wrapping_mul(2654435761) ^ m) as f32 * 1e-10))
                    .collect()
            })
            .collect();
        let params: Vec<ParamValues> = (0..4)
            .map(|_| p(&[("weight", 0.3), ("density", 0.5), ("epsilon", 0.1)]))
            .collect();
        for (name, m) in [
            ("linear", &super::super::linear::Linear as &dyn MergeMethod),
            (
                "task_arithmetic",
                &super::super::task_arithmetic::TaskArithmetic,
            ),
            ("ties", &super::super::ties::Ties),
            ("dare_ties", &super::super::dare_ties::DareTies),
            ("della", &super::super::della::Della),
            ("sce", &super::super::sce::Sce),
        ] {
            let s = time(m, &data, &params, math);
            eprintln!("{name:>16}: {:.3} s for 4 × {n} elements", s);
        }
    }
}
