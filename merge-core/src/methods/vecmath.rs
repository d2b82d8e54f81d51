//! Small numeric helpers shared by the geometric merge methods (SLERP family, Karcher mean,
//! Model Stock, Arcee Fusion): deterministic reductions over `f32` data in `f64`, parallel
//! element-wise fills, scalar maths rounded like a PyTorch 0-dim tensor of the math dtype, and
//! "lines" (the 1-D vectors of a tensor along one axis).
//!
//! Reductions: PyTorch's CPU `sum` and `norm` over a contiguous float32 dimension follow a
//! fixed algorithm (ATen's cascade sum over 8-lane AVX2 vectors; the norm's single 8-lane
//! accumulator). [`torch_sum`] and [`torch_norm`] replay it step by step, sequentially, so a
//! kernel gets mergekit's float32 reduction bits (as produced by single-threaded PyTorch on an
//! AVX2 machine) at any thread count of ours. Reductions PyTorch hands to BLAS (`torch.dot`)
//! cannot be replayed; for those [`dot`]/[`sum_by`] accumulate in `f64` over the fixed chunks
//! of [`super::det_sum`] and the caller rounds once ([`reduced`]).

use super::{ChunkSink, ChunkSource, det_sum};
use crate::dtype::DType;
use crate::exec::{recycle, scratch};
use rayon::prelude::*;
use std::cell::{Cell, RefCell};
use std::sync::Mutex;

/// Elements per parallel work item of [`fill`].
const FILL_CHUNK: usize = 1 << 14;

/// `Σ f(i)` over `0..n`, accumulated in `f64` with a fixed chunking (deterministic).
pub fn sum_by(n: usize, f: impl Fn(usize) -> f64 + Sync) -> f64 {
    det_sum(n, |r| r.map(&f).sum())
}

/// The dot product `Σ aᵢ·bᵢ` in `f64` (deterministic).
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    sum_by(a.len(), |i| a[i] as f64 * b[i] as f64)
}

/// The squared L2 norm `Σ aᵢ²` in `f64` (deterministic).
pub fn sum_sq(a: &[f32]) -> f64 {
    sum_by(a.len(), |i| {
        let x = a[i] as f64;
        x * x
    })
}

/// The L2 norm of `a` in `f64` (deterministic).
pub fn norm(a: &[f32]) -> f64 {
    sum_sq(a).sqrt()
}

/// Lanes of a PyTorch CPU float vector on an AVX2 machine (`Vectorized<float>::size()`).
pub const LANES: usize = 8;

/// An accumulator of PyTorch's cascade sum: one `f32` or one vector of [`LANES`] `f32`.
trait Acc: Copy {
    fn zero() -> Self;
    fn add(self, other: Self) -> Self;
}

impl Acc for f32 {
    #[inline]
    fn zero() -> Self {
        0.0
    }
    #[inline]
    fn add(self, other: Self) -> Self {
        self + other
    }
}

impl Acc for [f32; LANES] {
    #[inline]
    fn zero() -> Self {
        [0.0; LANES]
    }
    #[inline]
    fn add(mut self, other: Self) -> Self {
        for (a, b) in self.iter_mut().zip(other) {
            *a += b;
        }
        self
    }
}

/// `ceil(log2(x))`, at least 1 (ATen's `CeilLog2`).
fn ceil_log2(x: usize) -> u32 {
    if x <= 2 {
        1
    } else {
        usize::BITS - (x - 1).leading_zeros()
    }
}

/// ATen's `multi_row_sum`: `R` interleaved running sums over `size` steps, cascaded through
/// four levels so that rounding error grows with the log of the length.
#[allow(clippy::needless_range_loop)] // index loops keep ATen's order visible
fn multi_row_sum<T: Acc, const R: usize>(size: usize, load: impl Fn(usize, usize) -> T) -> [T; R] {
    const LEVELS: usize = 4;
    let level_power = (ceil_log2(size) / LEVELS as u32).max(4);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[T::zero(); R]; LEVELS];
    let mut i = 0;
    while i + level_step <= size {
        for _ in 0..level_step {
            for k in 0..R {
                acc[0][k] = acc[0][k].add(load(i, k));
            }
            i += 1;
        }
        for j in 1..LEVELS {
            for k in 0..R {
                acc[j][k] = acc[j][k].add(acc[j - 1][k]);
                acc[j - 1][k] = T::zero();
            }
            if i & (level_mask << (j as u32 * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        for k in 0..R {
            acc[0][k] = acc[0][k].add(load(i, k));
        }
        i += 1;
    }
    for j in 1..LEVELS {
        for k in 0..R {
            acc[0][k] = acc[0][k].add(acc[j][k]);
        }
    }
    acc[0]
}

/// ATen's `row_sum`: four interleaved cascade sums, the remainder, then the four combined.
#[allow(clippy::needless_range_loop)]
fn row_sum<T: Acc>(size: usize, load: impl Fn(usize) -> T) -> T {
    const ILP: usize = 4;
    let size_ilp = size / ILP;
    let mut ps: [T; ILP] = multi_row_sum(size_ilp, |i, k| load(i * ILP + k));
    for i in size_ilp * ILP..size {
        ps[0] = ps[0].add(load(i));
    }
    for k in 1..ILP {
        ps[0] = ps[0].add(ps[k]);
    }
    ps[0]
}

/// The `f32` sum of `f(0), …, f(n−1)` exactly as PyTorch's CPU `sum` reduces a contiguous
/// float32 dimension (ATen's cascade sum: vectors of 8 lanes — AVX2 —, four interleaved
/// accumulators, a four-level cascade; single-threaded). Sequential, so deterministic.
pub fn torch_sum(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    torch_sum_v(n, |v| std::array::from_fn(|k| f(v * LANES + k)), &f)
}

/// [`torch_sum`] with the values also given a vector at a time: `f8(v)` is
/// `[f(8v), …, f(8v + 7)]` (a slice read the compiler vectorises), `f` serves the tail.
/// The same operations in the same order, so the same bits.
pub fn torch_sum_v(n: usize, f8: impl Fn(usize) -> [f32; LANES], f: impl Fn(usize) -> f32) -> f32 {
    if n < LANES {
        return row_sum(n, f);
    }
    let vecs = n / LANES;
    let v: [f32; LANES] = row_sum(vecs, f8);
    let mut acc = 0.0f32;
    for k in vecs * LANES..n {
        acc += f(k);
    }
    for x in v {
        acc += x;
    }
    acc
}

/// The values `x[8v..8v + 8]` of a slice as one vector (for [`torch_sum_v`], [`torch_norm_v`]).
#[inline(always)]
pub fn lanes(x: &[f32], v: usize) -> [f32; LANES] {
    x[v * LANES..v * LANES + LANES]
        .try_into()
        .expect("eight lanes")
}

/// The `f32` sums over the first axis of a `rows × cols` matrix (`f(row, col)`), exactly as
/// PyTorch's CPU `sum(dim=0)` reduces a contiguous matrix single-threaded (ATen's outer sum:
/// columns in groups of four vectors take one cascade each; the remaining columns take the
/// four-way interleaved cascade). `half`: the matrix is float16/bfloat16 (summed in `f32`;
/// its wider vectors decide whether the vectorized path runs). Columns are independent, so
/// this replays each column's sum on its own.
pub fn torch_sum_dim0(
    rows: usize,
    cols: usize,
    half: bool,
    f: impl Fn(usize, usize) -> f32,
) -> Vec<f32> {
    let entry = if half { 2 * LANES } else { LANES };
    let group = if cols >= entry { 4 * LANES } else { 4 };
    let grouped = cols / group * group;
    (0..cols)
        .map(|c| {
            if c < grouped {
                multi_row_sum::<f32, 1>(rows, |i, _| f(i, c))[0]
            } else {
                row_sum(rows, |i| f(i, c))
            }
        })
        .collect()
}

/// The `f32` L2 norm of `f(0), …, f(n−1)` exactly as PyTorch's CPU `torch.norm` /
/// `linalg.vector_norm` computes it over a contiguous float32 last dimension (one vector of
/// 8 lanes accumulating `x·x`, the lanes then summed in order, the tail, then `sqrt`).
pub fn torch_norm(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    torch_norm_v(n, |v| std::array::from_fn(|k| f(v * LANES + k)), &f)
}

/// [`torch_norm`] with the values also given a vector at a time (as in [`torch_sum_v`]).
pub fn torch_norm_v(n: usize, f8: impl Fn(usize) -> [f32; LANES], f: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let full = n - n % LANES;
    for v in 0..full / LANES {
        let x = f8(v);
        for k in 0..LANES {
            acc[k] += x[k] * x[k];
        }
    }
    let mut b = acc[0];
    for a in &acc[1..] {
        b += *a;
    }
    for d in full..n {
        let x = f(d);
        b += x * x;
    }
    (b as f64).sqrt() as f32
}

/// A reduction's result as PyTorch returns it for a tensor of dtype `m`: rounded to `f32`
/// (the accumulator type) and then to `m`.
#[inline]
pub fn reduced(m: DType, x: f64) -> f32 {
    m.round(x as f32)
}

/// A unary function evaluated like a PyTorch op on a value of dtype `m`: computed in `f64`
/// from the `f32` input, rounded to `f32`, then to `m`.
#[inline]
pub fn unary(m: DType, x: f32, f: fn(f64) -> f64) -> f32 {
    m.round(f(x as f64) as f32)
}

/// Sets `out[j] = f(j)` for every `j`, in parallel over fixed chunks (each element is
/// computed independently, so the result does not depend on the thread count).
pub fn fill(out: &mut [f32], f: impl Fn(usize) -> f32 + Sync) {
    out.par_chunks_mut(FILL_CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let start = c * FILL_CHUNK;
            for (k, o) in chunk.iter_mut().enumerate() {
                *o = f(start + k);
            }
        });
}

/// Element access to one input of a [`ChunkSource`] through a buffered window of
/// [`WINDOW`] elements, for streaming kernels that replay a reduction element by element
/// (the access pattern of [`torch_sum`] and [`torch_norm`] is nearly sequential). Read errors
/// are kept in `err` and the missing values read as 0; the caller reports the error.
pub struct Window<'a> {
    src: &'a dyn ChunkSource,
    input: usize,
    n: usize,
    window: usize,
    start: Cell<usize>,
    buf: RefCell<Vec<f32>>,
    err: &'a Mutex<Option<String>>,
}

/// Elements a [`Window`] holds.
pub const WINDOW: usize = 1 << 16;

impl<'a> Window<'a> {
    /// A window over input `input` (of `n` elements) of `src`.
    pub fn new(
        src: &'a dyn ChunkSource,
        input: usize,
        n: usize,
        err: &'a Mutex<Option<String>>,
    ) -> Self {
        Window {
            src,
            input,
            n,
            window: WINDOW,
            start: Cell::new(0),
            buf: RefCell::new(Vec::new()),
            err,
        }
    }

    /// The same window holding `len` elements at a time (at least 1; for short vectors read
    /// one by one, the window is best sized to one vector).
    pub fn sized(mut self, len: usize) -> Self {
        self.window = len.max(1);
        self
    }

    /// The values at elements `i..i + 8` (`i` a multiple of 8, `i + 8 <= n`).
    #[inline]
    pub fn get8(&self, i: usize) -> [f32; LANES] {
        debug_assert!(i.is_multiple_of(LANES) && self.window.is_multiple_of(LANES));
        {
            let b = self.buf.borrow();
            let s = self.start.get();
            if i >= s && i + LANES - s <= b.len() {
                return lanes(&b[i - s..], 0);
            }
        }
        self.get(i);
        let b = self.buf.borrow();
        lanes(&b[i - self.start.get()..], 0)
    }

    /// The value at element `i`.
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        {
            let b = self.buf.borrow();
            let s = self.start.get();
            if i >= s && i - s < b.len() {
                return b[i - s];
            }
        }
        let s = i - i % self.window;
        let len = self.window.min(self.n - s);
        let mut b = self.buf.borrow_mut();
        b.resize(len, 0.0);
        if let Err(e) = self.src.read(self.input, s..s + len, &mut b) {
            b.fill(0.0);
            let mut slot = self.err.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert_with(|| e.to_string());
        }
        self.start.set(s);
        b[i - s]
    }
}

/// The error a [`Window`] (or another streaming reader) recorded, if any.
pub fn take_err(err: &Mutex<Option<String>>) -> Result<(), String> {
    match err.lock().unwrap_or_else(|e| e.into_inner()).take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Writes the whole output of a streaming kernel chunk by chunk (in parallel, each chunk
/// `src.chunk()` elements, the last one shorter): `f(start, inputs, out)` gets the values of
/// every input in `inputs` at elements `start..start + out.len()`.
pub fn stream_elementwise(
    src: &dyn ChunkSource,
    n: usize,
    inputs: &[usize],
    sink: &dyn ChunkSink,
    f: impl Fn(usize, &[Vec<f32>], &mut [f32]) + Sync,
) -> Result<(), String> {
    let chunk = src.chunk().max(1);
    (0..n.div_ceil(chunk)).into_par_iter().try_for_each(|c| {
        let start = c * chunk;
        let len = chunk.min(n - start);
        let bufs: Vec<Vec<f32>> = inputs
            .iter()
            .map(|&i| {
                let mut b = scratch(len);
                src.read(i, start..start + len, &mut b)
                    .map_err(|e| e.to_string())?;
                Ok(b)
            })
            .collect::<Result<_, String>>()?;
        let mut o = scratch(len);
        f(start, &bufs, &mut o);
        for b in bufs {
            recycle(b);
        }
        let w = sink.write(start, &o).map_err(|e| e.to_string());
        recycle(o);
        w
    })
}

/// The 1-D vectors ("lines") of a tensor along one axis: `count` vectors of `len` elements;
/// element `i` of vector `k` sits at flat index [`Lines::index`]`(k, i)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lines {
    /// Number of vectors.
    pub count: usize,
    /// Elements per vector.
    pub len: usize,
    /// Distance between consecutive elements of one vector.
    stride: usize,
    /// Distance between the starts of consecutive vectors.
    step: usize,
}

impl Lines {
    /// The whole tensor as one vector.
    pub fn flat(numel: usize) -> Self {
        Lines {
            count: 1,
            len: numel,
            stride: 1,
            step: numel,
        }
    }

    /// The last-axis vectors (rows) of a tensor of `shape`; a 0-D or 1-D tensor is one row.
    pub fn last_axis(shape: &[usize]) -> Self {
        let numel: usize = shape.iter().product();
        let len = shape.last().copied().unwrap_or(1);
        if len == 0 {
            return Lines {
                count: 0,
                len: 0,
                stride: 1,
                step: 0,
            };
        }
        Lines {
            count: numel / len,
            len,
            stride: 1,
            step: len,
        }
    }

    /// The first-axis vectors of a tensor of `shape` (for a 2-D tensor, its columns);
    /// a 0-D or 1-D tensor is one vector.
    pub fn first_axis(shape: &[usize]) -> Self {
        let numel: usize = shape.iter().product();
        if shape.len() < 2 {
            return Lines::flat(numel);
        }
        let len = shape[0];
        let count = numel.checked_div(len).unwrap_or(0);
        Lines {
            count,
            len,
            stride: count,
            step: 1,
        }
    }

    /// Flat index of element `i` of vector `k`.
    #[inline]
    pub fn index(&self, k: usize, i: usize) -> usize {
        k * self.step + i * self.stride
    }

    /// The vector that flat index `j` belongs to.
    #[inline]
    pub fn line_of(&self, j: usize) -> usize {
        if self.stride == 1 {
            j / self.len
        } else {
            j % self.stride
        }
    }

    /// [`torch_sum`] of `f(flat index)` over vector `k`.
    pub fn torch_sum(&self, k: usize, f: impl Fn(usize) -> f32) -> f32 {
        torch_sum(self.len, |i| f(self.index(k, i)))
    }

    /// [`torch_norm`] of `f(flat index)` over vector `k`.
    pub fn torch_norm(&self, k: usize, f: impl Fn(usize) -> f32) -> f32 {
        torch_norm(self.len, |i| f(self.index(k, i)))
    }

    /// `Σ f(flat index)` over vector `k`, in `f64`: the whole-tensor case ([`Lines::flat`])
    /// uses the deterministic parallel [`sum_by`], a short vector a sequential loop.
    pub fn sum(&self, k: usize, f: impl Fn(usize) -> f64 + Sync) -> f64 {
        if self.count == 1 && self.stride == 1 {
            let start = self.index(k, 0);
            sum_by(self.len, |i| f(start + i))
        } else {
            (0..self.len).map(|i| f(self.index(k, i))).sum()
        }
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Test helpers: running a method on inputs of a given shape, comparing with tolerance.

    pub use crate::methods::testutil::run_shaped;

    /// Asserts that `got` and `want` agree to `tol` (absolute) element by element.
    pub fn assert_close(got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= tol,
                "element {i}: got {g}, want {w} (tol {tol})"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_are_exact_on_small_integers() {
        let a = [1.0f32, 2.0, 3.0];
        let b = [4.0f32, -5.0, 6.0];
        assert_eq!(dot(&a, &b), 12.0);
        assert_eq!(sum_sq(&a), 14.0);
        assert_eq!(norm(&[3.0, 4.0]), 5.0);
    }

    #[test]
    fn reduction_is_chunked_deterministically() {
        // More than one chunk: the value must equal a chunk-ordered sum and be repeatable.
        let n = 3 * super::super::REDUCE_CHUNK + 17;
        let a: Vec<f32> = (0..n).map(|i| ((i % 97) as f32 - 48.0) * 0.01).collect();
        let s1 = sum_sq(&a);
        let s2 = sum_sq(&a);
        assert_eq!(s1.to_bits(), s2.to_bits());
        let naive: f64 = a.iter().map(|&x| x as f64 * x as f64).sum();
        assert!((s1 - naive).abs() < 1e-9 * naive);
    }

    #[test]
    fn torch_sum_matches_the_cascade_order() {
        // Small exact cases.
        assert_eq!(torch_sum(0, |_| 1.0), 0.0);
        assert_eq!(torch_sum(3, |i| i as f32), 3.0);
        assert_eq!(torch_sum(100, |i| i as f32), 4950.0);
        // Order matters in f32: 1e8 (ulp 8) followed by 511 ones. A sequential sum loses every
        // 1. ATen: 64 vectors of 8 lanes, vector i into accumulator i % 4; accumulator 0's
        // lane 0 holds 1e8 and loses its 15 ones, accumulators 1-3 hold 16 in lane 0 and
        // lanes 1-7 of all four hold 16 each. Combining the accumulators gives lane 0 =
        // 1e8 + 48 and lanes 1-7 = 64 each; summing the lanes: 1e8 + 48 + 7·64.
        let n = 8 * 64;
        let v = |i: usize| if i == 0 { 1e8f32 } else { 1.0 };
        let seq = (0..n).fold(0.0f32, |a, i| a + v(i));
        assert_eq!(seq, 1e8);
        assert_eq!(torch_sum(n, v), 1e8 + 48.0 + 7.0 * 64.0);
        assert_eq!(torch_norm(2, |i| [3.0f32, 4.0][i]), 5.0);
        assert_eq!(torch_norm(16, |_| 1.0), 4.0);
    }

    #[test]
    fn lines_index_rows_and_columns() {
        let rows = Lines::last_axis(&[2, 3]);
        assert_eq!((rows.count, rows.len), (2, 3));
        assert_eq!(rows.index(1, 2), 5);
        let cols = Lines::first_axis(&[2, 3]);
        assert_eq!((cols.count, cols.len), (3, 2));
        assert_eq!(cols.index(2, 1), 5);
        assert_eq!(cols.index(1, 0), 1);
        assert_eq!(cols.line_of(5), 2);
        assert_eq!(rows.line_of(4), 1);
        assert_eq!(Lines::flat(6).line_of(5), 0);
        let one = Lines::last_axis(&[4]);
        assert_eq!((one.count, one.len), (1, 4));
        assert_eq!(Lines::first_axis(&[4]), Lines::flat(4));
        let data = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(cols.sum(1, |j| data[j] as f64), 2.0 + 5.0);
        assert_eq!(rows.sum(0, |j| data[j] as f64), 6.0);
    }

    #[test]
    fn kernels_are_thread_count_independent() {
        use super::super::testutil::p;
        use super::super::{
            MergeMethod, ParamValues, arcee_fusion, karcher, model_stock, multislerp, nuslerp,
            slerp,
        };
        use super::testutil::run_shaped;
        // Several reduction chunks, and pseudo-random data (an LCG, not our own output).
        let n = 3 * super::super::REDUCE_CHUNK + 1234;
        let lcg = |seed: u64| -> Vec<f32> {
            let mut s = seed;
            (0..n)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((s >> 40) as f32 / 16_777_216.0) - 0.5
                })
                .collect()
        };
        let (b, x, y) = (lcg(1), lcg(2), lcg(3));
        let w = |v| p(&[("weight", v)]);
        type Case<'a> = (
            &'a dyn MergeMethod,
            Vec<(&'a [f32], bool, ParamValues)>,
            ParamValues,
        );
        let cases: Vec<Case> = vec![
            (
                &slerp::Slerp,
                vec![(&b, true, p(&[])), (&x, false, p(&[]))],
                p(&[("t", 0.3)]),
            ),
            (
                &nuslerp::NuSlerp,
                vec![(&x, false, w(0.4)), (&y, false, w(0.6)), (&b, true, p(&[]))],
                p(&[]),
            ),
            (
                &multislerp::MultiSlerp,
                vec![
                    (&x, false, w(0.2)),
                    (&y, false, w(0.3)),
                    (&b, false, w(0.5)),
                ],
                p(&[]),
            ),
            (
                &karcher::Karcher,
                vec![
                    (&x, false, p(&[])),
                    (&y, false, p(&[])),
                    (&b, false, p(&[])),
                ],
                p(&[]),
            ),
            (
                &model_stock::ModelStock,
                vec![(&b, true, p(&[])), (&x, false, p(&[])), (&y, false, p(&[]))],
                p(&[]),
            ),
            (
                &arcee_fusion::ArceeFusion,
                vec![(&b, true, p(&[])), (&x, false, p(&[]))],
                p(&[]),
            ),
        ];
        let shape = [n];
        for (method, ins, g) in cases {
            let on = |threads| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap()
                    .install(|| run_shaped(method, &ins, &shape, g.clone(), DType::F32))
                    .unwrap()
            };
            let (one, three) = (on(1), on(3));
            let name = method.info().name;
            assert!(
                one.iter()
                    .zip(&three)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name} depends on the thread count"
            );
        }
    }

    #[test]
    fn fill_and_rounding() {
        let mut out = vec![0.0f32; 40_000];
        fill(&mut out, |j| j as f32);
        assert!(out.iter().enumerate().all(|(j, &v)| v == j as f32));
        assert_eq!(reduced(DType::BF16, 0.3), 0.30078125);
        assert_eq!(unary(DType::F32, 0.0, f64::cos), 1.0);
    }
}
