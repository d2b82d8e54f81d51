//! The executor: runs a [`Plan`] on a rayon pool under a memory budget, deciding *when* each
//! tensor is computed. Results go to a [`TensorSink`] at positions fixed by the plan, so the
//! bytes written never depend on the thread count or on completion order.
//!
//! Elementwise methods stream a tensor in chunks of [`CHUNK`] elements (memory per tensor:
//! chunks in flight × inputs); other methods hold the whole tensor of every input as `f32`.
//! A tensor is admitted only while the estimated bytes of all tensors in flight stay within
//! the budget (a tensor larger than the budget runs alone).

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::checkpoint::TensorInfo;
use crate::error::{Error, Result};
use crate::methods::{ChunkSink, ChunkSource, Input, MergeCtx};
use crate::plan::{Plan, PlannedTensor};

/// Elements per streamed chunk of an elementwise merge.
pub const CHUNK: usize = 1 << 16;

thread_local! {
    static POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whole-tensor buffers (longer than [`CHUNK`]) kept for reuse between tensors, and the bytes
/// they may hold in all (set by [`execute`] from the memory budget; 0 outside a run). A fresh
/// multi-megabyte allocation is mapped anew and faulted in page by page, and freeing it
/// unmaps it again: for the geometric methods, which hold whole tensors, that cost a fifth
/// of the run.
static BIG_POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());
static BIG_POOL_CAP: AtomicU64 = AtomicU64::new(0);
/// Runs in progress (batch jobs share the process); the pool is emptied when the last ends.
static RUNS: AtomicUsize = AtomicUsize::new(0);

/// Holds the whole-tensor pool open for one [`execute`]: a quarter of its budget may stay
/// pooled between tensors (idle buffers count towards resident memory, not towards the
/// budget of the tensors in flight).
struct PoolGuard;

impl PoolGuard {
    fn open(budget: u64) -> Self {
        RUNS.fetch_add(1, Ordering::SeqCst);
        BIG_POOL_CAP.fetch_max(budget / 4, Ordering::SeqCst);
        PoolGuard
    }
}

impl Drop for PoolGuard {
    fn drop(&mut self) {
        if RUNS.fetch_sub(1, Ordering::SeqCst) == 1 {
            BIG_POOL_CAP.store(0, Ordering::SeqCst);
            BIG_POOL.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }
}

fn take_big(len: usize) -> Vec<f32> {
    let mut pool = BIG_POOL.lock().unwrap_or_else(|e| e.into_inner());
    // the smallest buffer that fits, else the largest (it grows once)
    let fit = (0..pool.len())
        .filter(|&i| pool[i].capacity() >= len)
        .min_by_key(|&i| pool[i].capacity())
        .or_else(|| (0..pool.len()).max_by_key(|&i| pool[i].capacity()));
    fit.map(|i| pool.swap_remove(i)).unwrap_or_default()
}

fn give_big(v: Vec<f32>) {
    let cap = BIG_POOL_CAP.load(Ordering::Relaxed);
    let mut pool = BIG_POOL.lock().unwrap_or_else(|e| e.into_inner());
    let held: u64 = pool.iter().map(|b| b.capacity() as u64 * 4).sum();
    if held + v.capacity() as u64 * 4 <= cap {
        pool.push(v);
    }
}

/// A zeroed buffer of `len` values, reusing a buffer of this thread (chunk-sized) or of the
/// run (whole tensors) when there is one (allocating and freeing megabytes per chunk makes
/// the allocator hand pages back to the kernel and fault them in again, which costs more
/// than the merge).
pub fn scratch(len: usize) -> Vec<f32> {
    let mut v = scratch_for_overwrite(len);
    v.fill(0.0);
    v
}

/// A buffer of `len` values with unspecified (but initialised) contents, for a caller that
/// overwrites every element: like [`scratch`] without the zeroing.
pub fn scratch_for_overwrite(len: usize) -> Vec<f32> {
    let mut v = if len <= CHUNK {
        POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default()
    } else {
        take_big(len)
    };
    if v.len() >= len {
        v.truncate(len);
    } else {
        v.resize(len, 0.0);
    }
    v
}

/// Returns a buffer from [`scratch`] for reuse.
pub fn recycle(v: Vec<f32>) {
    if v.capacity() <= CHUNK {
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < 32 {
                p.push(v);
            }
        });
    } else {
        give_big(v);
    }
}

/// Where merged tensors go.
pub trait TensorSink: Sync {
    /// Receives merged values `values` of tensor `tensor` (index into `plan.tensors`)
    /// starting at element `offset`. Called from several threads, for disjoint ranges.
    fn write_f32(&self, tensor: usize, offset: usize, values: &[f32]) -> Result<()>;
    /// Receives the raw bytes of a pass-through tensor (non-float dtypes).
    fn write_raw(&self, tensor: usize, bytes: &[u8]) -> Result<()>;
    /// Row length (elements) that chunks of `tensor` must be a multiple of (1: any).
    fn chunk_multiple(&self, _tensor: usize) -> usize {
        1
    }
}

/// A progress report.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Tensors finished.
    pub tensors_done: usize,
    /// Tensors in the plan.
    pub tensors_total: usize,
    /// Input bytes consumed so far.
    pub bytes_done: u64,
    /// Input bytes the plan reads.
    pub bytes_total: u64,
    /// Time since the start.
    pub elapsed: Duration,
}

/// How to execute.
pub struct ExecOptions<'a> {
    /// Worker threads (0: all cores).
    pub threads: usize,
    /// Bytes of working memory the tensors in flight may hold.
    pub memory_budget: u64,
    /// Called after each tensor (from worker threads).
    pub progress: Option<&'a (dyn Fn(&Progress) + Sync)>,
}

impl Default for ExecOptions<'_> {
    fn default() -> Self {
        ExecOptions {
            threads: 0,
            memory_budget: DEFAULT_BUDGET,
            progress: None,
        }
    }
}

/// The default memory budget: 1 GiB.
pub const DEFAULT_BUDGET: u64 = 1 << 30;

struct Budget {
    free: Mutex<u64>,
    cv: Condvar,
    total: u64,
}

impl Budget {
    fn acquire(&self, want: u64) -> u64 {
        let want = want.min(self.total);
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free < want {
            free = self.cv.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= want;
        want
    }
    fn release(&self, n: u64) {
        *self.free.lock().unwrap_or_else(|e| e.into_inner()) += n;
        self.cv.notify_all();
    }
}

/// Whether tensor `t` is merged by a streaming kernel under `budget` (its whole-tensor working
/// set would not fit, or the method prefers streaming, and the method can stream it).
pub fn streams(plan: &Plan, t: &PlannedTensor, threads: usize, budget: u64) -> bool {
    !t.raw_copy
        && !plan.method.info().elementwise
        && plan.method.can_stream()
        && (whole_cost(t) > budget || plan.method.prefers_streaming())
        && t.sources
            .iter()
            .all(|s| s.rows.is_none() && !plan.models[s.model].checkpoint.has_delta(&s.tensor))
        && threads > 0
}

fn whole_cost(t: &PlannedTensor) -> u64 {
    let n = t.numel() as u64;
    let k = t.sources.len() as u64;
    n * 4 * (k + 2) + n * t.out_dtype.size() as u64
}

/// Estimated working bytes of one tensor when merged under `budget`.
pub fn tensor_cost_under(plan: &Plan, t: &PlannedTensor, threads: usize, budget: u64) -> u64 {
    if streams(plan, t, threads, budget) {
        // chunks in flight: a buffer per input, the output and the method's own per-chunk
        // state, plus the read windows of the geometric methods (one per input and thread)
        let live = (CHUNK * threads) as u64;
        let windows =
            (crate::methods::vecmath::WINDOW * threads) as u64 * 4 * t.sources.len() as u64;
        let state = plan
            .method
            .streaming_state_bytes(t.numel(), t.sources.len());
        live * 4 * (t.sources.len() as u64 + 4) + windows + state
    } else {
        tensor_cost(plan, t, threads)
    }
}

/// Estimated working bytes of one tensor.
pub fn tensor_cost(plan: &Plan, t: &PlannedTensor, threads: usize) -> u64 {
    if t.raw_copy {
        return 0;
    }
    let n = t.numel() as u64;
    let k = t.sources.len() as u64;
    if plan.method.info().elementwise {
        // chunks in flight: f32 buffers per input and the output, and the encoded bytes
        let live = n.min((CHUNK * threads) as u64);
        live * 4 * (k + 1) + live * t.out_dtype.size() as u64
    } else {
        // every input as f32, a result and a scratch buffer
        whole_cost(t)
    }
}

/// Whether every value is finite (a branch-free fold the compiler vectorises).
pub fn all_finite(xs: &[f32]) -> bool {
    // non-finite = every exponent bit set: a mask, a compare and an OR per lane, which
    // vectorise even for the baseline x86-64 target
    const EXP: u32 = 0x7f80_0000;
    let any = xs
        .iter()
        .fold(0u32, |acc, x| acc | ((x.to_bits() & EXP == EXP) as u32));
    any == 0
}

/// The watch on non-finite values: NaN or ±Inf in an input is a warning (merged as it is, as
/// mergekit does, but named); produced by a merge from finite inputs, it is an error naming
/// the tensor (mergekit writes such a model silently).
#[derive(Default)]
struct FiniteWatch {
    /// (tensor index, source index) of inputs holding non-finite values.
    bad_inputs: Mutex<std::collections::BTreeSet<(usize, usize)>>,
}

impl FiniteWatch {
    fn input(&self, ti: usize, si: usize, vals: &[f32]) {
        if !all_finite(vals) {
            self.bad_inputs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((ti, si));
        }
    }

    fn input_bad(&self, ti: usize) -> bool {
        let set = self.bad_inputs.lock().unwrap_or_else(|e| e.into_inner());
        set.range((ti, 0)..(ti + 1, 0)).next().is_some()
    }

    fn warnings(&self, plan: &Plan) -> Vec<String> {
        let set = self.bad_inputs.lock().unwrap_or_else(|e| e.into_inner());
        set.iter()
            .map(|&(ti, si)| {
                let s = &plan.tensors[ti].sources[si];
                format!(
                    "model `{}`: tensor `{}` holds NaN or infinite values (merged as they are)",
                    plan.models[s.model].reference, s.tensor
                )
            })
            .collect()
    }
}

/// A sink that refuses non-finite output values produced from finite inputs.
struct CheckedSink<'a> {
    inner: &'a dyn TensorSink,
    plan: &'a Plan,
    watch: &'a FiniteWatch,
}

impl TensorSink for CheckedSink<'_> {
    fn write_f32(&self, tensor: usize, offset: usize, values: &[f32]) -> Result<()> {
        let t = &self.plan.tensors[tensor];
        // float16 output from wider math: values from 65520 on round to infinity
        let f16_overflow = t.out_dtype == crate::dtype::DType::F16
            && t.math != crate::dtype::DType::F16
            && !values.iter().fold(true, |ok, x| ok & (x.abs() < 65520.0));
        if (f16_overflow || !all_finite(values)) && !self.watch.input_bad(tensor) {
            return Err(Error::NonFinite {
                method: self.plan.method.info().name.to_string(),
                tensor: t.name.clone(),
                what: if all_finite(values) {
                    "values beyond float16's range (±65504)".into()
                } else {
                    "NaN or infinite values".into()
                },
            });
        }
        self.inner.write_f32(tensor, offset, values)
    }
    fn write_raw(&self, tensor: usize, bytes: &[u8]) -> Result<()> {
        self.inner.write_raw(tensor, bytes)
    }
    fn chunk_multiple(&self, tensor: usize) -> usize {
        self.inner.chunk_multiple(tensor)
    }
}

/// Runs every tensor of `plan` into `sink`; returns warnings (inputs holding NaN or ±Inf).
pub fn execute(plan: &Plan, sink: &dyn TensorSink, opts: &ExecOptions) -> Result<Vec<String>> {
    let watch = FiniteWatch::default();
    let checked = CheckedSink {
        inner: sink,
        plan,
        watch: &watch,
    };
    execute_watched(plan, &checked, &watch, opts)?;
    Ok(watch.warnings(plan))
}

fn execute_watched(
    plan: &Plan,
    sink: &dyn TensorSink,
    watch: &FiniteWatch,
    opts: &ExecOptions,
) -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .build()
        .map_err(|e| Error::ThreadStart {
            what: "worker threads".into(),
            reason: e.to_string(),
        })?;
    let threads = pool.current_num_threads();
    let _big_buffers = PoolGuard::open(opts.memory_budget);
    let budget = Budget {
        free: Mutex::new(opts.memory_budget),
        cv: Condvar::new(),
        total: opts.memory_budget,
    };
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<(usize, Error)>> = Mutex::new(None);
    let done = AtomicUsize::new(0);
    let bytes_done = AtomicU64::new(0);
    let bytes_total = plan.input_bytes();
    let start = Instant::now();
    pool.in_place_scope(|scope| {
        for (i, t) in plan.tensors.iter().enumerate() {
            if failed.load(Ordering::SeqCst) {
                break;
            }
            let held = budget.acquire(tensor_cost_under(plan, t, threads, opts.memory_budget));
            for s in &t.sources {
                plan.models[s.model]
                    .checkpoint
                    .prefetch(plan.source_info(s));
            }
            let (budget, failed, first_error, done, bytes_done, watch) =
                (&budget, &failed, &first_error, &done, &bytes_done, watch);
            scope.spawn(move |_| {
                let r = if failed.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    run_tensor(
                        plan,
                        i,
                        sink,
                        watch,
                        streams(plan, t, threads, opts.memory_budget),
                    )
                };
                for s in &t.sources {
                    plan.models[s.model].checkpoint.release(plan.source_info(s));
                }
                budget.release(held);
                match r {
                    Ok(()) => {
                        let read: u64 = t
                            .sources
                            .iter()
                            .map(|s| plan.source_info(s).range.len() as u64)
                            .sum();
                        let b = bytes_done.fetch_add(read, Ordering::SeqCst) + read;
                        let d = done.fetch_add(1, Ordering::SeqCst) + 1;
                        if let Some(p) = opts.progress {
                            p(&Progress {
                                tensors_done: d,
                                tensors_total: plan.tensors.len(),
                                bytes_done: b,
                                bytes_total,
                                elapsed: start.elapsed(),
                            });
                        }
                    }
                    Err(e) => {
                        failed.store(true, Ordering::SeqCst);
                        let mut slot = first_error.lock().unwrap_or_else(|e| e.into_inner());
                        // keep the error of the earliest tensor, so messages are deterministic
                        if slot.as_ref().is_none_or(|(j, _)| i < *j) {
                            *slot = Some((i, e));
                        }
                    }
                }
            });
        }
    });
    match first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// Reads elements `range` (in output coordinates) of source `name` into `out` as `f32`,
/// cropping a larger 2-D source to the output's shape and adding a LoRA delta if the model has
/// one for this tensor (such tensors are never streamed: `range` is then the whole tensor).
fn read_source(
    plan: &Plan,
    name: &str,
    info: &TensorInfo,
    model: usize,
    out_shape: &[usize],
    range: Range<usize>,
    out: &mut [f32],
) -> Result<()> {
    let ck = &plan.models[model].checkpoint;
    let full;
    let read = |elems: Range<usize>, dst: &mut [f32]| ck.read_f32(info, elems, dst);
    let src: Option<&[f32]> = if ck.has_delta(name) {
        let mut v = vec![0f32; info.numel()];
        ck.read_tensor_f32(name, info, &mut v)?;
        full = v;
        Some(&full)
    } else {
        None
    };
    let copy = |elems: Range<usize>, dst: &mut [f32]| match src {
        Some(v) => {
            dst.copy_from_slice(&v[elems]);
            Ok(())
        }
        None => read(elems, dst),
    };
    if info.shape == out_shape {
        return copy(range, out);
    }
    // cropped 2-D: output row r, column c comes from source row r, column c
    let (ocols, scols) = (out_shape[1], info.shape[1]);
    let mut pos = range.start;
    let mut o = 0;
    while pos < range.end {
        let (r, c) = (pos / ocols, pos % ocols);
        let n = (ocols - c).min(range.end - pos);
        let s = r * scols + c;
        copy(s..s + n, &mut out[o..o + n])?;
        pos += n;
        o += n;
    }
    Ok(())
}

struct StreamSource<'a> {
    plan: &'a Plan,
    t: &'a PlannedTensor,
    ti: usize,
    watch: &'a FiniteWatch,
    chunk: usize,
}

impl ChunkSource for StreamSource<'_> {
    fn inputs(&self) -> usize {
        self.t.sources.len()
    }
    fn chunk(&self) -> usize {
        self.chunk
    }
    fn read(&self, input: usize, range: Range<usize>, out: &mut [f32]) -> Result<()> {
        let s = &self.t.sources[input];
        let info = self.plan.source_info(s);
        read_source(
            self.plan,
            &s.tensor,
            info,
            s.model,
            &self.t.shape,
            range,
            out,
        )?;
        if info.dtype != self.t.math {
            self.t.math.round_slice(out);
        }
        self.watch.input(self.ti, input, out);
        Ok(())
    }
}

struct StreamSink<'a> {
    sink: &'a dyn TensorSink,
    ti: usize,
}

impl ChunkSink for StreamSink<'_> {
    fn write(&self, offset: usize, values: &[f32]) -> Result<()> {
        self.sink.write_f32(self.ti, offset, values)
    }
}

/// Merges tensor `ti` through its method's streaming kernel: inputs are read in chunks as
/// the kernel asks for them, outputs written as it produces them.
fn run_streamed(plan: &Plan, ti: usize, sink: &dyn TensorSink, watch: &FiniteWatch) -> Result<()> {
    let t = &plan.tensors[ti];
    let multiple = sink.chunk_multiple(ti).max(1);
    let src = StreamSource {
        plan,
        t,
        ti,
        watch,
        chunk: (CHUNK / multiple).max(1) * multiple,
    };
    let names: Vec<String> = t
        .sources
        .iter()
        .map(|s| plan.models[s.model].reference.to_string())
        .collect();
    let inputs: Vec<Input> = t
        .sources
        .iter()
        .zip(&names)
        .map(|(s, n)| Input {
            data: &[],
            is_base: s.is_base,
            params: &s.params,
            model: n,
        })
        .collect();
    let ctx = MergeCtx {
        tensor: &t.name,
        shape: &t.shape,
        offset: 0,
        inputs: &inputs,
        global: &t.global,
        math: t.math,
        seed: plan.seed,
        is_embed: t.is_embed,
    };
    plan.method
        .merge_streaming(&ctx, &src, &StreamSink { sink, ti })
        .map_err(|reason| Error::Method {
            method: plan.method.info().name.to_string(),
            tensor: t.name.clone(),
            reason,
        })
}

fn run_tensor(
    plan: &Plan,
    ti: usize,
    sink: &dyn TensorSink,
    watch: &FiniteWatch,
    stream: bool,
) -> Result<()> {
    let t = &plan.tensors[ti];
    if t.raw_copy {
        let s = &t.sources[0];
        let info = plan.source_info(s);
        let bytes = plan.models[s.model].checkpoint.read_all_bytes(info)?;
        return sink.write_raw(ti, &bytes);
    }
    if stream {
        return run_streamed(plan, ti, sink, watch);
    }
    let numel = t.numel();
    let infos: Vec<&TensorInfo> = t.sources.iter().map(|s| plan.source_info(s)).collect();
    let names: Vec<String> = t
        .sources
        .iter()
        .map(|s| plan.models[s.model].reference.to_string())
        .collect();
    let multiple = sink.chunk_multiple(ti).max(1);
    let chunk = (CHUNK / multiple).max(1) * multiple;
    let has_delta = t
        .sources
        .iter()
        .any(|s| plan.models[s.model].checkpoint.has_delta(&s.tensor));
    // inputs remapped to a built vocabulary are assembled whole (crate::vocab::rows)
    let remapped = t.sources.iter().any(|s| s.rows.is_some());
    let streamed = plan.method.info().elementwise && numel > chunk && !has_delta && !remapped;
    let merge = |range: Range<usize>| -> Result<Vec<f32>> {
        let len = range.len();
        let read_one =
            |si: usize, s: &crate::plan::PlannedSource, info: &TensorInfo| -> Result<Vec<f32>> {
                // every element is written below (a read, a remap or a crop)
                let mut b = scratch_for_overwrite(len);
                let whole = plan.models[s.model].checkpoint.has_delta(&s.tensor);
                if let Some(map) = &s.rows {
                    crate::vocab::read_remapped(plan, t, si, map, &mut b)?;
                } else if streamed || whole || len <= CHUNK {
                    read_source(
                        plan,
                        &s.tensor,
                        info,
                        s.model,
                        &t.shape,
                        range.clone(),
                        &mut b,
                    )?;
                } else {
                    // a whole tensor: decode it in parallel chunks
                    b.par_chunks_mut(CHUNK)
                        .enumerate()
                        .try_for_each(|(c, part)| {
                            let start = range.start + c * CHUNK;
                            read_source(
                                plan,
                                &s.tensor,
                                info,
                                s.model,
                                &t.shape,
                                start..start + part.len(),
                                part,
                            )
                        })?;
                }
                if info.dtype != t.math {
                    t.math.round_slice(&mut b);
                }
                watch.input(ti, si, &b);
                Ok(b)
            };
        let bufs: Vec<Vec<f32>> = if streamed {
            t.sources
                .iter()
                .zip(&infos)
                .enumerate()
                .map(|(si, (s, info))| read_one(si, s, info))
                .collect::<Result<_>>()?
        } else {
            t.sources
                .par_iter()
                .zip(&infos)
                .enumerate()
                .map(|(si, (s, info))| read_one(si, s, info))
                .collect::<Result<_>>()?
        };
        let inputs: Vec<Input> = t
            .sources
            .iter()
            .zip(&bufs)
            .zip(&names)
            .map(|((s, b), n)| Input {
                data: b,
                is_base: s.is_base,
                params: &s.params,
                model: n,
            })
            .collect();
        let ctx = MergeCtx {
            tensor: &t.name,
            shape: &t.shape,
            offset: range.start,
            inputs: &inputs,
            global: &t.global,
            math: t.math,
            seed: plan.seed,
            is_embed: t.is_embed,
        };
        let mut out = scratch(len);
        let merged = plan.method.merge(&ctx, &mut out);
        drop(inputs);
        for b in bufs {
            recycle(b);
        }
        merged.map_err(|reason| Error::Method {
            method: plan.method.info().name.to_string(),
            tensor: t.name.clone(),
            reason,
        })?;
        Ok(out)
    };
    if streamed {
        let chunks = numel.div_ceil(chunk);
        (0..chunks).into_par_iter().try_for_each(|c| {
            let r = c * chunk..((c + 1) * chunk).min(numel);
            let out = merge(r.clone())?;
            let written = sink.write_f32(ti, r.start, &out);
            recycle(out);
            written
        })
    } else {
        let out = merge(0..numel)?;
        let written = out
            .par_chunks(chunk)
            .enumerate()
            .try_for_each(|(c, vals)| sink.write_f32(ti, c * chunk, vals));
        recycle(out);
        written
    }
}

#[cfg(test)]
mod tests {
    use super::all_finite;

    #[test]
    fn all_finite_finds_nan_and_infinities_anywhere() {
        assert!(all_finite(&[]));
        let ok = [
            0.0f32,
            -0.0,
            1.0,
            -f32::MAX,
            f32::MAX,
            f32::MIN_POSITIVE / 2.0,
        ];
        assert!(all_finite(&ok));
        for bad in [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for at in [0, 3, 99] {
                let mut v = vec![1.5f32; 100];
                v[at] = bad;
                assert!(!all_finite(&v), "{bad} at {at}");
            }
        }
    }
}
