//! Sparsification primitives of the task-arithmetic family: which elements of a task vector
//! survive (magnitude top-k for TIES, Bernoulli drop for DARE, magnitude outliers for
//! breadcrumbs, rank-dependent drop for DELLA) and the L1 rescale that follows a drop.
//!
//! Nothing here copies a task vector. It is read through [`Values`] (e.g. [`Delta`], which
//! computes `round(x − base)` on the fly), and a sparsifier returns a [`Mask`]: a compact
//! description of the kept set (a threshold for the magnitude methods, or packed bits where
//! a cut splits equal magnitudes; packed bits for DARE, one flag per element for DELLA; or, for kernels
//! streaming a tensor too large to hold, the DARE and DELLA draws recomputed on demand) that a
//! kernel applies to any range of elements ([`Mask::apply_range`]) while it computes its
//! output: membership never depends on how the tensor is cut into chunks. Whole-tensor work (histograms for the top-k threshold, L1 norms) runs
//! in parallel over fixed chunks of [`CHUNK`] elements whose partial results are integers or are
//! combined in chunk order, so masks and factors never depend on the thread count.
//!
//! # Order of elements and ties
//!
//! mergekit selects by sorting `|δ|` as f32 with PyTorch's unstable CPU sort, which is
//! libstdc++'s `std::sort` (an introsort) over (value, index) pairs: among equal magnitudes
//! its order depends on the whole tensor. smelt replays it ([`super::torch_sort`]) whenever
//! equal magnitudes straddle a cut, which is the rule in bf16 and f16 and rare in f32:
//! * magnitude top-k keeps the first `k` positions of the descending sort
//!   (`argsort(descending=True)[:k]`);
//! * magnitude_outliers keeps the ascending positions `[bot, n − top)`.
//!
//! When no cut splits a run of equal magnitudes the kept set does not depend on the order,
//! and it is found without sorting. For that (and for della and SCE) every magnitude-based
//! primitive here uses one total order, the *priority*: larger `|δ|` first (compared as
//! `f32`, NaN above +∞), and among equal magnitudes the **lower element index first**; della
//! ranks elements of a row by ascending priority (rank 1 = lowest priority).
//!
//! Top-k is a selection, never a sort: a two-pass radix select over the 32-bit patterns of
//! `|δ|` (high 16 bits, then low 16 bits among the candidates; skipped when every value is a
//! bf16 pattern) finds the threshold. When the threshold value is tied and not all ties fit,
//! the kept set is instead taken from the sort replay, which holds a (key, index) pair per
//! element and descends like a quickselect (O(n) on average); the mask is then packed bits.
//!
//! # Numbers
//!
//! `k = int(density·numel)` is computed as in Python (f64 product, truncation). Random draws
//! come from [`RngKey::uniform`] keyed by (seed, tensor name, model index, element index): a
//! mask is identical at any thread count and on any machine. Rescaling follows the current
//! mergekit rule: `masked · (‖δ‖₁ / ‖masked‖₁)`, skipped if either norm is below `1e-7`, with
//! the norms and the ratio rounded to the work dtype.
//!
//! # Divergence from mergekit
//!
//! * Magnitude top-k with `k = int(density·numel) == 0` (tiny tensors at low density) keeps
//!   nothing (the task vector is zeroed); mergekit fails an assertion.
//! * magnitude_outliers with `int(gamma·numel) == 0` removes no outliers and keeps the
//!   `int(density·numel)` largest; mergekit's slice `[bot:-0]` is empty and zeroes the whole
//!   task vector. `gamma` outside `[0, 1]` is an error (mergekit slices nonsensically).
//! * della_magprune on a row of one element uses the middle probability (`rank_norm = 0.5`,
//!   i.e. `p ≈ density`); mergekit computes `0/0` and `torch.bernoulli` rejects the NaN.
//! * Random masks use smelt's counter-based generator, not torch's: for `density < 1` DARE and
//!   DELLA results agree with mergekit statistically, not bit for bit.
//! * della's per-row ranks break ties by the priority order, not by PyTorch's sort order.
//! * A tensor of more than 2³² − 1 elements keeps, among equal magnitudes at a cut, the lower
//!   indices (the priority order): the sort replay indexes elements in 32 bits.

use super::REDUCE_CHUNK;
use super::rng::{RngKey, threshold24};
use super::round::{Round, round_dyn};
use super::torch_sort;
use crate::dtype::DType;
use rayon::prelude::*;
use std::marker::PhantomData;

/// Fixed chunk length (elements) of the parallel passes and of [`Mask::cursor`].
pub const CHUNK: usize = REDUCE_CHUNK;

/// A read-only vector of values addressed by index (a task vector, a variance, ...).
pub trait Values: Sync {
    /// Number of elements.
    fn numel(&self) -> usize;
    /// The value at `i`.
    fn at(&self, i: usize) -> f32;
    /// Writes the values of elements `start..start + out.len()` into `out` (what the passes
    /// over a whole tensor use: a provider backed by chunk reads implements this one well).
    fn fill(&self, start: usize, out: &mut [f32]) {
        for (l, o) in out.iter_mut().enumerate() {
            *o = self.at(start + l);
        }
    }
}

impl Values for [f32] {
    fn numel(&self) -> usize {
        self.len()
    }
    #[inline]
    fn at(&self, i: usize) -> f32 {
        self[i]
    }
    fn fill(&self, start: usize, out: &mut [f32]) {
        out.copy_from_slice(&self[start..start + out.len()]);
    }
}

/// Fills `buf` with chunk `c` (elements `c·CHUNK ..`) of `v` and returns the chunk's start.
fn load_chunk<V: Values + ?Sized>(v: &V, c: usize, buf: &mut Vec<f32>) -> usize {
    let n = v.numel();
    let start = c * CHUNK;
    buf.resize(CHUNK.min(n - start), 0.0);
    v.fill(start, buf);
    start
}

/// A task vector `round(x − base)` computed on the fly in the math dtype `R`.
#[derive(Debug, Clone, Copy)]
pub struct Delta<'a, R: Round> {
    /// The model's values.
    pub x: &'a [f32],
    /// The base model's values (same length).
    pub base: &'a [f32],
    _round: PhantomData<R>,
}

impl<'a, R: Round> Delta<'a, R> {
    /// The task vector `x − base`.
    pub fn new(x: &'a [f32], base: &'a [f32]) -> Self {
        Delta {
            x,
            base,
            _round: PhantomData,
        }
    }
}

impl<R: Round> Values for Delta<'_, R> {
    fn numel(&self) -> usize {
        self.x.len()
    }
    #[inline(always)]
    fn at(&self, i: usize) -> f32 {
        R::round(self.x[i] - self.base[i])
    }
}

/// The sort key of a value's magnitude: the bits of `|v|`, monotone in `|v|` (NaN above +∞).
#[inline]
pub fn magnitude_key(v: f32) -> u32 {
    v.to_bits() & 0x7fff_ffff
}

/// The dtype DARE and DELLA draw and rescale in: the tensor's own dtype for bf16, else f32
/// (mergekit's CPU rule: `torch.bernoulli` has no f16 kernel).
pub fn random_work_dtype(math: DType) -> DType {
    if math == DType::BF16 {
        DType::BF16
    } else {
        DType::F32
    }
}

/// Python's `int(a·n)` for a non-negative element count.
fn py_int_mul(a: f64, n: usize) -> i64 {
    (a * n as f64) as i64
}

/// The first `k` elements of the priority order (see the module docs), as a threshold on
/// [`magnitude_key`] plus the index of the last tied element that is in: membership is a
/// function of an element's index and key alone, so a tensor can be walked in any chunking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopSet {
    /// Keys above this are in.
    key: u32,
    /// Elements whose key equals `key` are in when their index is at most `last`.
    last: usize,
    /// Whether the set is empty (k = 0).
    empty: bool,
}

/// Membership test of a [`TopSet`] (kept for the cursor-style API: it holds no state).
pub type TopCursor = TopSet;

impl TopSet {
    /// Whether element `i` with magnitude key `key` is in the set.
    #[inline(always)]
    pub fn contains(&self, i: usize, key: u32) -> bool {
        // branch-free: around a density of 0.5 the comparison is a coin flip
        let gt = key > self.key;
        let tie = (key == self.key) & (i <= self.last);
        (gt | tie) & !self.empty
    }

    /// The membership test for chunk `chunk` (the same for every chunk).
    #[inline(always)]
    pub fn cursor(&self, _chunk: usize) -> TopCursor {
        *self
    }

    /// Whether the set keeps some but not all of the elements at its threshold magnitude
    /// (then which ones depends on the tie order).
    pub fn splits_ties(&self) -> bool {
        !self.empty && self.last != usize::MAX
    }

    const NOTHING: TopSet = TopSet {
        key: u32::MAX,
        last: 0,
        empty: true,
    };
    const EVERYTHING: TopSet = TopSet {
        key: 0,
        last: usize::MAX,
        empty: false,
    };
}

/// Bins of the first radix pass: the high 16 bits of a (31-bit) magnitude key.
const HI_BINS: usize = 1 << 15;
/// Bins of the second radix pass: the low 16 bits.
const LO_BINS: usize = 1 << 16;
/// Half-width, in first-pass bins, of the window around an estimated threshold bin whose
/// counts the first pass also records per chunk (see [`select_tops`]).
const WINDOW: u32 = 96;
/// Elements sampled to estimate a threshold bin: [`SAMPLE_RUNS`] runs of [`SAMPLE_RUN`].
const SAMPLE_RUN: usize = 256;
const SAMPLE_RUNS: usize = 64;

/// What the first radix pass gathers: the histogram of the high 16 bits of every key, the OR
/// of the low 16 bits (zero when every value is a bf16 pattern, which makes the second pass
/// unnecessary), and per chunk the counts of the bins of each window.
struct HiHistogram {
    bins: Vec<u64>,
    low: u32,
    /// `windows[w]` counted for chunk `c` at `per_chunk[c][w·width ..]`.
    per_chunk: Vec<Vec<u32>>,
}

/// The first radix pass over `v`, recording per chunk the counts of the bins `windows[w]`
/// (each of `2·WINDOW + 1` bins, clipped to the bin range).
fn histogram_hi<V: Values + ?Sized>(v: &V, windows: &[u32]) -> HiHistogram {
    let n = v.numel();
    let chunks = n.div_ceil(CHUNK);
    let width = 2 * WINDOW as usize + 1;
    let parts = (0..chunks)
        .into_par_iter()
        .fold(
            || (vec![0u64; HI_BINS], 0u32, Vec::new(), Vec::new()),
            |(mut h, mut low, mut buf, mut counts), c| {
                load_chunk(v, c, &mut buf);
                // the window counts of this chunk: the fold's histogram after the chunk minus
                // before it (no per-element cost)
                let mut before = vec![0u32; windows.len() * width];
                snapshot(&h, windows, &mut before, false);
                for x in &buf {
                    let key = magnitude_key(*x);
                    low |= key & 0xffff;
                    h[(key >> 16) as usize] += 1;
                }
                snapshot(&h, windows, &mut before, true);
                counts.push((c, before));
                (h, low, buf, counts)
            },
        )
        .map(|(h, low, _, counts)| (h, low, counts))
        .collect::<Vec<_>>();
    // integer counts and a bitwise OR: the combination order cannot change the result
    let mut out = HiHistogram {
        bins: vec![0u64; HI_BINS],
        low: 0,
        per_chunk: vec![Vec::new(); chunks],
    };
    for (h, low, counts) in parts {
        for (x, y) in out.bins.iter_mut().zip(h) {
            *x += y;
        }
        out.low |= low;
        for (c, cnt) in counts {
            out.per_chunk[c] = cnt;
        }
    }
    out
}

/// Copies the window bins of `h` into `dst`, or with `diff` replaces `dst` by the bins minus
/// `dst` (a chunk adds at most [`CHUNK`] to a bin, so the difference fits a `u32`).
fn snapshot(h: &[u64], windows: &[u32], dst: &mut [u32], diff: bool) {
    let width = 2 * WINDOW as usize + 1;
    for (w, centre) in windows.iter().enumerate() {
        let lo = centre.saturating_sub(WINDOW) as usize;
        for (j, d) in dst[w * width..(w + 1) * width].iter_mut().enumerate() {
            let b = h.get(lo + j).copied().unwrap_or(0) as u32;
            *d = if diff { b.wrapping_sub(*d) } else { b };
        }
    }
}

/// Estimated first-pass bins of the `k`-th elements of the priority order, from a sample of
/// evenly spread runs of `v`.
fn estimate_bins<V: Values + ?Sized>(v: &V, ks: &[usize]) -> Vec<u32> {
    let n = v.numel();
    let len = SAMPLE_RUN.min(n);
    let runs = SAMPLE_RUNS.min(n / len);
    let mut sample = Vec::with_capacity(runs * len);
    let mut buf = vec![0.0f32; len];
    for r in 0..runs {
        let start = if runs == 1 {
            0
        } else {
            r * (n - len) / (runs - 1)
        };
        v.fill(start, &mut buf);
        sample.extend(buf.iter().map(|x| magnitude_key(*x) >> 16));
    }
    sample.sort_unstable();
    let s = sample.len();
    ks.iter()
        .map(|&k| {
            // the k-th largest of n is at ascending position n − k
            let pos = ((n - k.min(n)) as u128 * s as u128 / n as u128) as usize;
            sample[pos.min(s - 1)]
        })
        .collect()
}

/// Scanning bins from the top, the bin holding the `k`-th element and the count above it.
fn find_bin(h: &[u64], k: u64) -> (usize, u64) {
    let mut above = 0u64;
    for b in (0..h.len()).rev() {
        if above + h[b] >= k {
            return (b, above);
        }
        above += h[b];
    }
    unreachable!("k exceeds the number of elements")
}

/// The first `k` elements of `v` in priority order (largest magnitude first, lower index first
/// among equals). `k == 0` selects nothing, `k ≥ numel` everything.
pub fn select_top<V: Values + ?Sized>(v: &V, k: usize) -> TopSet {
    select_tops(v, &[k])[0]
}

/// [`select_top`] for several `k` at once, from one histogram pass.
///
/// When every key is a bf16 pattern (the usual case: bf16 math), the first pass's bins are
/// the keys, and the index of the last kept tie comes from the window counts: a sample of
/// `v` estimates each threshold bin beforehand, and the first pass records per chunk the
/// counts of the bins around it, so only the one chunk holding that tie is read again. A
/// threshold outside its window (or f32 keys, which take a second radix pass) falls back to
/// counting ties per chunk in a pass of its own.
pub fn select_tops<V: Values + ?Sized>(v: &V, ks: &[usize]) -> Vec<TopSet> {
    let n = v.numel();
    let live: Vec<usize> = ks.iter().copied().filter(|&k| k > 0 && k < n).collect();
    let (centres, h) = if live.is_empty() {
        (Vec::new(), None)
    } else {
        let centres = estimate_bins(v, &live);
        let h = histogram_hi(v, &centres);
        (centres, Some(h))
    };
    ks.iter()
        .map(|&k| {
            if k == 0 {
                return TopSet::NOTHING;
            }
            if k >= n {
                return TopSet::EVERYTHING;
            }
            let h = h.as_ref().expect("a histogram for every live k");
            let w = live.iter().position(|&l| l == k).expect("k is live");
            select_from(v, k, h, w, centres[w])
        })
        .collect()
}

/// The top set of size `k` (`0 < k < n`) from the first pass `h`, whose window `w` is
/// centred on bin `centre`.
fn select_from<V: Values + ?Sized>(
    v: &V,
    k: usize,
    h: &HiHistogram,
    w: usize,
    centre: u32,
) -> TopSet {
    let (hi, above1) = find_bin(&h.bins, k as u64);
    let need = k as u64 - above1;
    let hi32 = hi as u32;
    let (lo, above2, tied) = if h.low == 0 {
        // every key is a bf16 pattern: the bin is the value
        (0, 0, h.bins[hi])
    } else {
        let h2 = histogram_lo(v, hi32);
        let (lo, above2) = find_bin(&h2, need);
        (lo, above2, h2[lo])
    };
    let key = (hi32 << 16) | lo as u32;
    let ties_needed = need - above2;
    if ties_needed == tied {
        return TopSet {
            key,
            last: usize::MAX,
            empty: false,
        };
    }
    let lo_bin = centre.saturating_sub(WINDOW);
    let per_chunk: Vec<u64> = if h.low == 0 && (lo_bin..=centre + WINDOW).contains(&hi32) {
        let at = w * (2 * WINDOW as usize + 1) + (hi32 - lo_bin) as usize;
        h.per_chunk.iter().map(|c| c[at] as u64).collect()
    } else {
        count_ties(v, key)
    };
    TopSet {
        key,
        last: nth_tie(v, key, &per_chunk, ties_needed),
        empty: false,
    }
}

/// The second radix pass: the histogram of the low 16 bits of the keys whose high 16 bits
/// are `hi`.
fn histogram_lo<V: Values + ?Sized>(v: &V, hi: u32) -> Vec<u64> {
    let n = v.numel();
    (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .fold(
            || (vec![0u64; LO_BINS], Vec::new()),
            |(mut h, mut buf), c| {
                load_chunk(v, c, &mut buf);
                for x in &buf {
                    let key = magnitude_key(*x);
                    if key >> 16 == hi {
                        h[(key & 0xffff) as usize] += 1;
                    }
                }
                (h, buf)
            },
        )
        .map(|(h, _)| h)
        // integer counts: the combination order cannot change the result
        .reduce(
            || vec![0u64; LO_BINS],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x += y;
                }
                a
            },
        )
}

/// The number of elements with key `key` in each chunk.
fn count_ties<V: Values + ?Sized>(v: &V, key: u32) -> Vec<u64> {
    (0..v.numel().div_ceil(CHUNK))
        .into_par_iter()
        .map_init(Vec::new, |buf, c| {
            load_chunk(v, c, buf);
            buf.iter().filter(|x| magnitude_key(**x) == key).count() as u64
        })
        .collect()
}

/// The index of the `nth` (from 1) element with key `key`, given the count per chunk: the
/// chunk where the count is reached is read again.
fn nth_tie<V: Values + ?Sized>(v: &V, key: u32, per_chunk: &[u64], nth: u64) -> usize {
    let mut left = nth;
    for (c, &cnt) in per_chunk.iter().enumerate() {
        if cnt < left {
            left -= cnt;
            continue;
        }
        let mut buf = Vec::new();
        let start = load_chunk(v, c, &mut buf);
        for (l, x) in buf.iter().enumerate() {
            if magnitude_key(*x) == key {
                left -= 1;
                if left == 0 {
                    return start + l;
                }
            }
        }
        break;
    }
    unreachable!("fewer ties than counted")
}

/// Which elements of a task vector are kept.
#[derive(Debug, Clone)]
pub enum Mask {
    /// Every element (also: "untouched", no rescale applies).
    All,
    /// No element.
    Nothing,
    /// The elements of a top set (magnitude top-k).
    Top(TopSet),
    /// The elements of `keep` that are not in `drop` (magnitude outliers).
    Band {
        /// The `n − bot` highest-priority elements.
        keep: TopSet,
        /// The `top` highest-priority elements (the outliers).
        drop: TopSet,
    },
    /// A packed bit mask (DARE, DELLA): element `i` is kept when bit `i % 64` of word
    /// `i / 64` is set.
    Bits(Vec<u64>),
    /// An explicit per-element mask.
    Explicit(Vec<bool>),
}

/// Walks one chunk of a [`Mask`].
#[derive(Debug)]
pub enum MaskCursor<'a> {
    /// Constant answer.
    Const(bool),
    /// Top-set membership.
    Top(TopCursor),
    /// Band membership (keep, drop).
    Band(TopCursor, TopCursor),
    /// Packed bits.
    Bits(&'a [u64]),
    /// Explicit mask.
    Explicit(&'a [bool]),
}

impl Mask {
    /// The cursor for chunk `chunk` (elements `chunk·CHUNK ..` of the slice).
    #[inline(always)]
    pub fn cursor(&self, chunk: usize) -> MaskCursor<'_> {
        match self {
            Mask::All => MaskCursor::Const(true),
            Mask::Nothing => MaskCursor::Const(false),
            Mask::Top(t) => MaskCursor::Top(t.cursor(chunk)),
            Mask::Band { keep, drop } => MaskCursor::Band(keep.cursor(chunk), drop.cursor(chunk)),
            Mask::Bits(b) => MaskCursor::Bits(b),
            Mask::Explicit(m) => MaskCursor::Explicit(m),
        }
    }

    /// Whether the mask keeps everything without touching values (no rescale applies).
    pub fn is_all(&self) -> bool {
        matches!(self, Mask::All)
    }

    /// Zeroes the dropped elements of `dst`, which holds the values of the task vector at
    /// elements `start..start + dst.len()`. Any range gives the same result as the whole
    /// tensor.
    #[inline(always)]
    pub fn apply_range(&self, start: usize, dst: &mut [f32]) {
        self.cursor(start / CHUNK).apply(start, dst)
    }

    /// The kept flags of a whole slice `v` (for tests and small tensors).
    pub fn to_vec<V: Values + ?Sized>(&self, v: &V) -> Vec<bool> {
        let n = v.numel();
        let mut vals = vec![0.0f32; n];
        v.fill(0, &mut vals);
        let mut cur = self.cursor(0);
        vals.iter()
            .enumerate()
            .map(|(i, x)| cur.keep(i, magnitude_key(*x)))
            .collect()
    }
}

impl TopSet {
    /// The local positions `..cut` of a range of `len` elements starting at `start` whose ties
    /// are in (0 for the empty set).
    #[inline(always)]
    fn cut(&self, start: usize, len: usize) -> usize {
        if self.empty {
            return 0;
        }
        self.last.saturating_add(1).saturating_sub(start).min(len)
    }

    /// The key threshold: an element is in when `key + tie > threshold`, with `tie` 1 where
    /// ties are in and 0 elsewhere (keys are at most `0x7fff_ffff`: no overflow).
    #[inline(always)]
    fn threshold(&self) -> u32 {
        if self.empty { u32::MAX } else { self.key }
    }

    /// Zeroes the elements of `dst` (elements `start..` of the slice) that are not in the set.
    /// Indices are compared once per range, not per element: before `last` every tie is in,
    /// after it none is.
    #[inline(always)]
    fn apply(&self, start: usize, dst: &mut [f32]) {
        let cut = self.cut(start, dst.len());
        let k = self.threshold();
        let (ties_in, rest) = dst.split_at_mut(cut);
        for (part, tie) in [(ties_in, 1u32), (rest, 0)] {
            for d in part {
                *d = select_f32(magnitude_key(*d) + tie > k, *d);
            }
        }
    }

    /// [`TopSet::apply`] of a band: in `keep` and not in `drop`.
    #[inline(always)]
    fn apply_band(keep: &TopSet, drop: &TopSet, start: usize, dst: &mut [f32]) {
        let len = dst.len();
        let (c1, c2) = (keep.cut(start, len), drop.cut(start, len));
        let (k1, k2) = (keep.threshold(), drop.threshold());
        let (lo, hi) = (c1.min(c2), c1.max(c2));
        for (a, b) in [(0, lo), (lo, hi), (hi, len)] {
            let (t1, t2) = ((a < c1) as u32, (a < c2) as u32);
            for d in &mut dst[a..b] {
                let key = magnitude_key(*d);
                *d = select_f32((key + t1 > k1) & (key + t2 <= k2), *d);
            }
        }
    }
}

/// Zeroes the elements of `dst` (elements `start..` of the slice) whose bit in `bits` is
/// clear, a byte of bits (eight elements) at a time.
#[inline(always)]
fn apply_bits(bits: &[u64], start: usize, dst: &mut [f32]) {
    let bit = |i: usize| (bits[i >> 6] >> (i & 63)) & 1 != 0;
    // elements up to the next multiple of 8 one by one
    let head = (start.next_multiple_of(8) - start).min(dst.len());
    let (first, rest) = dst.split_at_mut(head);
    for (l, d) in first.iter_mut().enumerate() {
        *d = select_f32(bit(start + l), *d);
    }
    let start = start + head;
    let t0 = start + rest.len() / 8 * 8;
    let mut eights = rest.chunks_exact_mut(8);
    for (e, d8) in (&mut eights).enumerate() {
        let i = start + 8 * e;
        let byte = (bits[i >> 6] >> (i & 63)) as u32 & 0xff;
        for (j, d) in d8.iter_mut().enumerate() {
            *d = select_f32(byte & (1 << j) != 0, *d);
        }
    }
    let tail = eights.into_remainder();
    for (l, d) in tail.iter_mut().enumerate() {
        *d = select_f32(bit(t0 + l), *d);
    }
}

impl MaskCursor<'_> {
    /// Zeroes the dropped elements of `dst`, which holds elements `start..` of the slice, in
    /// order (the cursor's variant is matched once per call, not once per element).
    #[inline(always)]
    pub fn apply(&mut self, start: usize, dst: &mut [f32]) {
        match self {
            MaskCursor::Const(true) => {}
            MaskCursor::Const(false) => dst.fill(0.0),
            MaskCursor::Top(t) => t.apply(start, dst),
            MaskCursor::Band(k, dr) => TopSet::apply_band(k, dr, start, dst),
            MaskCursor::Bits(b) => apply_bits(b, start, dst),
            MaskCursor::Explicit(m) => {
                for (d, k) in dst.iter_mut().zip(&m[start..]) {
                    *d = select_f32(*k, *d);
                }
            }
        }
    }

    /// Whether element `i` (index in the slice), with magnitude key `key`, is kept.
    #[inline]
    pub fn keep(&mut self, i: usize, key: u32) -> bool {
        match self {
            MaskCursor::Const(b) => *b,
            MaskCursor::Top(t) => t.contains(i, key),
            MaskCursor::Band(k, d) => {
                let a = k.contains(i, key);
                let b = d.contains(i, key);
                a && !b
            }
            MaskCursor::Bits(b) => (b[i >> 6] >> (i & 63)) & 1 != 0,
            MaskCursor::Explicit(m) => m[i],
        }
    }
}

/// TIES magnitude pruning: keeps the `int(density·numel)` largest magnitudes.
/// `density ≥ 1` keeps everything untouched; `k == 0` keeps nothing (see divergences).
pub fn magnitude<V: Values + ?Sized>(v: &V, density: f64, ties: Ties) -> Mask {
    if density >= 1.0 {
        return Mask::All;
    }
    let k = py_int_mul(density, v.numel());
    if k <= 0 {
        return Mask::Nothing;
    }
    if ties.replay(v.numel()) {
        return sorted_range(v, false, 0, k as usize);
    }
    let top = select_top(v, k as usize);
    if top.splits_ties() && replayable(v.numel()) {
        // which of the tied elements are in is PyTorch's sort order, not the index order
        return sorted_range(v, false, 0, k as usize);
    }
    Mask::Top(top)
}

/// Whether equal magnitudes are common in a task vector, which decides how a magnitude cut is
/// found (the kept set is the same either way: when no cut splits equal magnitudes, every
/// sort keeps the same elements).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ties {
    /// f32 values: a radix select finds the cut, and only a cut that splits equal
    /// magnitudes is replayed.
    Rare,
    /// bf16 and f16 values, whose cuts nearly always split equal magnitudes: the sort is
    /// replayed at once, without the select's pass over the inputs.
    Common,
}

impl Ties {
    /// The expectation for task vectors in the math dtype `math`.
    pub fn of(math: DType) -> Ties {
        if matches!(math, DType::BF16 | DType::F16) {
            Ties::Common
        } else {
            Ties::Rare
        }
    }

    /// Whether to replay the sort without a select first (tensors the replay can index).
    fn replay(self, n: usize) -> bool {
        self == Ties::Common && replayable(n)
    }
}

/// Whether the sort replay can index a tensor of `n` elements (32-bit positions); larger
/// tensors keep the lower indices among equal magnitudes at a cut (see divergences).
fn replayable(n: usize) -> bool {
    u32::try_from(n).is_ok()
}

/// Breadcrumbs: drops the `int(gamma·n)` largest magnitudes (outliers) and then the smallest
/// ones, so that `int(density·n)` remain (fewer outliers are dropped if needed).
pub fn magnitude_outliers<V: Values + ?Sized>(
    v: &V,
    density: f64,
    gamma: f64,
    ties: Ties,
) -> Result<Mask, String> {
    if density >= 1.0 {
        return Ok(Mask::All);
    }
    if !(0.0..=1.0).contains(&gamma) {
        return Err(format!("gamma must be in [0, 1], got {gamma}"));
    }
    let n = v.numel();
    let target = py_int_mul(density, n);
    let mut top = py_int_mul(gamma, n);
    let mut bot = n as i64 - target - top;
    if bot < 0 {
        top += bot;
        bot = 0;
    }
    // kept priority positions: [top, n − bot)
    let end = n as i64 - bot;
    if end <= top {
        return Ok(Mask::Nothing);
    }
    if ties.replay(n) {
        // mergekit's ascending positions [bot, n − top)
        return Ok(sorted_range(v, true, bot as usize, n - top.max(0) as usize));
    }
    if top <= 0 {
        let keep = select_top(v, end as usize);
        if keep.splits_ties() && replayable(n) {
            return Ok(sorted_range(v, true, bot as usize, n));
        }
        return Ok(Mask::Top(keep));
    }
    // both thresholds from one histogram pass
    let sets = select_tops(v, &[end as usize, top as usize]);
    if (sets[0].splits_ties() || sets[1].splits_ties()) && replayable(n) {
        // mergekit's ascending positions [bot, n − top)
        return Ok(sorted_range(v, true, bot as usize, n - top as usize));
    }
    Ok(Mask::Band {
        keep: sets[0],
        drop: sets[1],
    })
}

/// The elements at positions `from..to` of PyTorch's (unstable) sort of `|v|`, descending
/// or ascending (see [`super::torch_sort`]): the exact mask when equal magnitudes straddle a
/// cut. Holds the whole tensor as (key, index) pairs while it works.
fn sorted_range<V: Values + ?Sized>(v: &V, ascending: bool, from: usize, to: usize) -> Mask {
    let n = v.numel();
    debug_assert!(replayable(n), "tensor of {n} elements");
    let mut items = take_items(n);
    items.spare_capacity_mut()[..n]
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each_init(Vec::new, |buf, (c, out)| {
            let start = load_chunk(v, c, buf);
            for (l, (o, x)) in out.iter_mut().zip(buf.iter()).enumerate() {
                o.write(torch_sort::item(
                    torch_sort::magnitude_key(*x),
                    (start + l) as u32,
                ));
            }
        });
    // SAFETY: the chunks cover the first n slots of the spare capacity and every slot of
    // every chunk was written just above.
    unsafe { items.set_len(n) };
    torch_sort::select(&mut items, &[from, to], !ascending);
    // the kept items are spread over the tensor: set their bits from every thread at once
    let words: Vec<std::sync::atomic::AtomicU64> = (0..n.div_ceil(64))
        .map(|_| std::sync::atomic::AtomicU64::new(0))
        .collect();
    items[from..to].par_chunks(CHUNK).for_each(|part| {
        for &it in part {
            let i = torch_sort::index(it);
            words[i >> 6].fetch_or(1 << (i & 63), std::sync::atomic::Ordering::Relaxed);
        }
    });
    let words = words.into_iter().map(|w| w.into_inner()).collect();
    give_items(items);
    Mask::Bits(words)
}

thread_local! {
    /// A reused buffer of the sort replay (fresh tensor-sized buffers cost more in page
    /// faults and zeroing than the replay itself).
    static ITEMS: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Buffers up to this many items are kept for the next tensor (128 MB per thread).
const KEEP_ITEMS: usize = 16 << 20;

/// An empty buffer with room for `n` items (memory already faulted in when reused).
fn take_items(n: usize) -> Vec<u64> {
    let mut v = ITEMS.with(|b| std::mem::take(&mut *b.borrow_mut()));
    v.clear();
    v.reserve(n);
    v
}

/// Returns a buffer from [`take_items`] for reuse on this thread, unless it is large.
fn give_items(v: Vec<u64>) {
    if v.capacity() <= KEEP_ITEMS {
        ITEMS.with(|b| *b.borrow_mut() = v);
    }
}

/// The keep probability of DARE: `density` as `torch.full_like(..., dtype=work)` holds it.
pub fn bernoulli_probability(density: f64, work: DType) -> f32 {
    round_scalar(work, density)
}

/// DARE: keeps each of `n` elements independently with probability `density` (rounded to the
/// work dtype): element `i` survives when `key.uniform(model, offset + i) < p`. The draws are
/// made once, in parallel over fixed chunks, into a packed bit mask.
pub fn bernoulli(
    n: usize,
    density: f64,
    work: DType,
    key: RngKey,
    model: u32,
    offset: usize,
) -> Mask {
    if density >= 1.0 {
        return Mask::All;
    }
    let p = bernoulli_probability(density, work);
    if p <= 0.0 {
        return Mask::Nothing;
    }
    let t = threshold24(p);
    let mut words = vec![0u64; n.div_ceil(64)];
    words
        .par_chunks_mut(CHUNK / 64)
        .enumerate()
        .for_each(|(c, ws)| {
            let first = c * CHUNK;
            let len = CHUNK.min(n - first);
            key.keep_words(model, (offset + first) as u64, t, len, ws);
        });
    Mask::Bits(words)
}

/// `torch.tensor(x, dtype)`: an f64 rounded once to `dtype` (f32 for non-half dtypes).
pub fn round_scalar(dtype: DType, x: f64) -> f32 {
    match dtype {
        DType::BF16 => half::bf16::from_f64(x).to_f32(),
        DType::F16 => half::f16::from_f64(x).to_f32(),
        _ => x as f32,
    }
}

/// The L1 rescale factor `‖δ‖₁ / ‖masked‖₁` (norms and ratio rounded to `work`), or `None`
/// when it does not apply: an untouched mask, or either norm below `1e-7`.
///
/// Each norm is summed in `f64`, element by element within a chunk of [`CHUNK`] and then
/// chunk by chunk ([`l1_chunk`] may reorder a chunk's sum only where that is exact).
pub fn l1_rescale<V: Values + ?Sized>(v: &V, mask: &Mask, work: DType) -> Option<f32> {
    if mask.is_all() {
        return None;
    }
    let n = v.numel();
    let parts: Vec<(f64, f64)> = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map_init(
            || (Vec::new(), Vec::new()),
            |(buf, kept_buf), c| {
                let start = load_chunk(v, c, buf);
                kept_buf.clear();
                kept_buf.extend_from_slice(buf);
                mask.apply_range(start, kept_buf);
                l1_chunk(buf, kept_buf)
            },
        )
        .collect();
    l1_combine(&parts, work)
}

/// The rescale factor of the per-chunk norms `parts` (summed in chunk order).
pub fn l1_combine(parts: &[(f64, f64)], work: DType) -> Option<f32> {
    let (all, kept) = parts
        .iter()
        .fold((0.0, 0.0), |(a, k), (x, y)| (a + x, k + y));
    l1_factor(all, kept, work)
}

/// The two L1 norms of one chunk, `Σ |all[l]|` and `Σ |kept[l]|` (where `kept` is `all` with
/// dropped elements zeroed), each equal to an `f64` sum in element order.
///
/// That sum is sequential (one dependent add per element) unless it is exact: when every
/// value is a multiple of a power of two `q` (the lowest set bit of any significand at the
/// lowest exponent) and `len · max|v| < 2⁵³·q`, every partial sum, in any order, is a multiple
/// of `q` below `2⁵³·q` and so exactly representable. Then eight independent accumulators give
/// the same bits, much faster. (A dropped element adds +0, which changes no `f64` sum.)
pub fn l1_chunk(all: &[f32], kept: &[f32]) -> (f64, f64) {
    if reorderable(all) {
        (sum_abs_unordered(all), sum_abs_unordered(kept))
    } else {
        let (mut a, mut k) = (0.0f64, 0.0f64);
        for (x, y) in all.iter().zip(kept) {
            a += x.abs() as f64;
            k += y.abs() as f64;
        }
        (a, k)
    }
}

/// Whether any order of summing `|v|` (or any subset of it) in `f64` gives the same, exact
/// sum (see [`l1_chunk`]). False for infinities and NaN.
fn reorderable(v: &[f32]) -> bool {
    let mut max = 0u32;
    let mut min = u32::MAX;
    let mut frac = 0u32;
    for x in v {
        let k = magnitude_key(*x);
        max = max.max(k);
        min = min.min(if k == 0 { u32::MAX } else { k });
        frac |= k;
    }
    if max == 0 {
        return true;
    }
    // the granularity: lowest exponent (subnormals count as exponent 1), lowest fraction bit
    let exp = ((min >> 23) as i32).max(1);
    let tz = (frac & 0x7f_ffff).trailing_zeros().min(23) as i32;
    // 2^(exp − 150 + tz) lies in [2⁻¹⁴⁹, 2¹²⁷]: a normal f64, built exactly
    let q = f64::from_bits(((exp - 150 + tz + 1023) as u64) << 52);
    let bound = v.len() as f64 * f32::from_bits(max) as f64;
    bound < q * 9_007_199_254_740_992.0
}

/// `Σ |v|` in `f64` with eight accumulators (only where any order gives the same sum).
fn sum_abs_unordered(v: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut eights = v.chunks_exact(8);
    for e in &mut eights {
        for (a, x) in acc.iter_mut().zip(e) {
            *a += x.abs() as f64;
        }
    }
    let mut s = eights
        .remainder()
        .iter()
        .map(|x| x.abs() as f64)
        .sum::<f64>();
    for a in acc {
        s += a;
    }
    s
}

/// `x` if `keep` else +0, without a branch (masks are coin flips near a density of 0.5).
#[inline(always)]
pub fn select_f32(keep: bool, x: f32) -> f32 {
    f32::from_bits(x.to_bits() & 0u32.wrapping_sub(keep as u32))
}

/// The rescale factor from the two L1 norms (exact sums, rounded here to `work`).
fn l1_factor(all: f64, kept: f64, work: DType) -> Option<f32> {
    let before = work.round(all as f32);
    let after = work.round(kept as f32);
    let eps = work.round(1e-7);
    if before < eps || after < eps {
        return None;
    }
    Some(work.round(before / after))
}

/// One sparsified element: `d` if kept else 0, times the rescale factor (rounded to the work
/// dtype, then to the math dtype `R`) when there is one.
#[inline(always)]
pub fn apply<R: Round>(d: f32, keep: bool, factor: Option<f32>, work: DType) -> f32 {
    let m = select_f32(keep, d);
    match factor {
        Some(f) => R::round(round_dyn(work, m * f)),
        None => m,
    }
}

/// Sparsifies a whole slice with `mask` and optional L1 rescale (tests, small tensors).
pub fn apply_slice<R: Round>(delta: &[f32], mask: &Mask, rescale: bool, work: DType) -> Vec<f32> {
    let factor = if rescale {
        l1_rescale(delta, mask, work)
    } else {
        None
    };
    mask.to_vec(delta)
        .into_iter()
        .zip(delta)
        .map(|(k, d)| apply::<R>(*d, k, factor, work))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn kept(mask: &Mask, v: &[f32]) -> Vec<usize> {
        mask.to_vec(v)
            .iter()
            .enumerate()
            .filter(|(_, k)| **k)
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn rescale_example_from_spec() {
        // §2.7: δ=[1,−2,3,−4], mask [1,0,1,0] → [2.5, 0, 7.5, 0]
        let d = [1.0f32, -2.0, 3.0, -4.0];
        let m = Mask::Explicit(vec![true, false, true, false]);
        let out = apply_slice::<super::super::round::F32>(&d, &m, true, DType::F32);
        assert_eq!(out, vec![2.5, 0.0, 7.5, 0.0]);
        // without rescale: plain mask
        let out = apply_slice::<super::super::round::F32>(&d, &m, false, DType::F32);
        assert_eq!(out, vec![1.0, 0.0, 3.0, 0.0]);
    }

    #[test]
    fn rescale_skipped_for_tiny_norms() {
        let d = [1e-9f32, -2e-9];
        let m = Mask::Explicit(vec![true, false]);
        assert_eq!(l1_rescale(&d[..], &m, DType::F32), None);
        assert_eq!(l1_rescale(&d[..], &Mask::Nothing, DType::F32), None);
    }

    #[test]
    fn magnitude_keeps_largest() {
        let d = [0.0f32, -2.0, 3.0, -0.5];
        assert_eq!(kept(&magnitude(&d[..], 0.5, Ties::Rare), &d), vec![1, 2]);
        assert!(magnitude(&d[..], 1.0, Ties::Rare).is_all());
    }

    #[test]
    fn magnitude_ties_keep_lower_index_first() {
        let d = [1.0f32, -1.0, 1.0, 1.0, 0.5];
        // k = int(0.6·5) = 3: three of the four tied magnitudes, lowest indices first
        assert_eq!(kept(&magnitude(&d[..], 0.6, Ties::Rare), &d), vec![0, 1, 2]);
    }

    #[test]
    fn magnitude_ties_across_chunks() {
        let n = 2 * CHUNK + 10;
        let mut d = vec![0.25f32; n];
        d[n - 1] = 7.0; // the single largest, at the end
        let k = py_int_mul(0.6, n) as usize;
        let m = magnitude(&d[..], 0.6, Ties::Rare);
        let flags = m.to_vec(&d[..]);
        assert_eq!(flags.iter().filter(|f| **f).count(), k);
        assert!(flags[n - 1]);
        // the tied ones kept are those PyTorch's sort puts first
        let mut items: Vec<u64> = d
            .iter()
            .enumerate()
            .map(|(i, x)| torch_sort::item(torch_sort::magnitude_key(*x), i as u32))
            .collect();
        torch_sort::sort(&mut items, true);
        let mut want = vec![false; n];
        for &it in &items[..k] {
            want[torch_sort::index(it)] = true;
        }
        assert_eq!(flags, want);
    }

    #[test]
    fn magnitude_ties_in_torch_order() {
        // mergekit 0.1.5 `magnitude` under torch 2.15 (CPU): 31 equal magnitudes, k = 8
        let mut d = vec![0.5f32; 32];
        d[3] = -2.0;
        let m = magnitude(&d[..], 0.25, Ties::Rare);
        assert!(matches!(m, Mask::Bits(_)));
        assert_eq!(kept(&m, &d), vec![3, 17, 18, 19, 20, 21, 22, 25]);
    }

    #[test]
    fn breadcrumbs_ties_in_torch_order() {
        // mergekit 0.1.5 `magnitude_outliers(x, density=.5, gamma=.1)` under torch 2.15 (CPU)
        // with x = [1, 2, 3, 4, 1, 2, ...] (40 values): bot = 16, top = 4
        let x: Vec<f32> = (0..40).map(|i| (i % 4 + 1) as f32).collect();
        let m = magnitude_outliers(&x[..], 0.5, 0.1, Ties::Rare).unwrap();
        assert_eq!(
            kept(&m, &x),
            vec![
                2, 5, 6, 7, 9, 10, 11, 13, 14, 17, 18, 22, 23, 26, 27, 30, 31, 34, 35, 38
            ]
        );
    }

    #[test]
    fn select_top_f32_low_bits_matter() {
        // values that share their high 16 bits: the second pass must separate them
        let v: Vec<f32> = (0..1000).map(|i| 1.0 + i as f32 * 1e-6).collect();
        let t = select_top(&v[..], 10);
        let flags = Mask::Top(t).to_vec(&v[..]);
        let idx: Vec<usize> = (0..1000).filter(|&i| flags[i]).collect();
        assert_eq!(idx, (990..1000).collect::<Vec<_>>());
    }

    #[test]
    fn select_top_matches_sort_reference() {
        // independent reference: stable sort by (|v| desc, index asc)
        let v: Vec<f32> = (0..5000u64)
            .map(|i| ((i * 7919 % 613) as f32 - 300.0) * 0.01)
            .collect();
        for k in [1usize, 17, 613, 2500, 4999] {
            let mut order: Vec<usize> = (0..v.len()).collect();
            order.sort_by(|&a, &b| v[b].abs().partial_cmp(&v[a].abs()).unwrap().then(a.cmp(&b)));
            let mut want = vec![false; v.len()];
            for &i in &order[..k] {
                want[i] = true;
            }
            assert_eq!(
                Mask::Top(select_top(&v[..], k)).to_vec(&v[..]),
                want,
                "k={k}"
            );
        }
    }

    #[test]
    fn select_top_bf16_values_with_ties() {
        // bf16-representable values skip the second pass; ties still resolved by index
        let v: Vec<f32> = (0..3000)
            .map(|i| DType::BF16.round(((i % 7) as f32) * 0.3))
            .collect();
        for k in [1usize, 400, 429, 430, 2999] {
            let mut order: Vec<usize> = (0..v.len()).collect();
            order.sort_by(|&a, &b| v[b].abs().partial_cmp(&v[a].abs()).unwrap().then(a.cmp(&b)));
            let mut want = vec![false; v.len()];
            for &i in &order[..k] {
                want[i] = true;
            }
            assert_eq!(
                Mask::Top(select_top(&v[..], k)).to_vec(&v[..]),
                want,
                "k={k}"
            );
        }
    }

    #[test]
    fn magnitude_k_zero_keeps_nothing() {
        // divergence: mergekit asserts k > 0
        let d = [1.0f32, 2.0, 3.0];
        let m = magnitude(&d[..], 0.2, Ties::Rare); // int(0.6) = 0
        assert!(kept(&m, &d).is_empty());
    }

    #[test]
    fn breadcrumbs_example_from_spec() {
        // §2.7: |1..10|, density .5, gamma .1 → removes the largest and the 4 smallest → 5..9
        let d: Vec<f32> = (1..=10)
            .map(|i| if i % 2 == 0 { -(i as f32) } else { i as f32 })
            .collect();
        let m = magnitude_outliers(&d[..], 0.5, 0.1, Ties::Rare).unwrap();
        let vals: Vec<f32> = kept(&m, &d).iter().map(|&i| d[i].abs()).collect();
        assert_eq!(vals, vec![5.0, 6.0, 7.0, 8.0, 9.0]);
    }

    #[test]
    fn breadcrumbs_zero_gamma_keeps_top_density() {
        // divergence: mergekit zeroes everything when int(gamma·n) == 0
        let d: Vec<f32> = (1..=50).map(|i| i as f32).collect();
        let m = magnitude_outliers(&d[..], 0.5, 0.01, Ties::Rare).unwrap(); // int(0.5) = 0 outliers
        assert_eq!(kept(&m, &d), (25..50).collect::<Vec<_>>());
        let m = magnitude_outliers(&d[..], 0.5, 0.0, Ties::Rare).unwrap();
        assert_eq!(kept(&m, &d), (25..50).collect::<Vec<_>>());
        assert!(magnitude_outliers(&d[..], 0.5, -0.1, Ties::Rare).is_err());
    }

    #[test]
    fn breadcrumbs_fewer_outliers_when_density_high() {
        // n=10, density .95 → target 9, gamma .2 → top 2, bot = −1 → top 1, bot 0
        let d: Vec<f32> = (1..=10).map(|i| i as f32).collect();
        let m = magnitude_outliers(&d[..], 0.95, 0.2, Ties::Rare).unwrap();
        assert_eq!(kept(&m, &d), (0..9).collect::<Vec<_>>());
    }

    #[test]
    fn bernoulli_kept_fraction() {
        let n = 20_000;
        let v = vec![1.0f32; n];
        for density in [0.1, 0.53, 0.9] {
            let m = bernoulli(n, density, DType::F32, RngKey::new(42, "x"), 1, 0);
            let frac = m.to_vec(&v[..]).iter().filter(|k| **k).count() as f64 / n as f64;
            assert!((frac - density).abs() < 0.01, "{density}: {frac}");
        }
        // bf16 work dtype rounds the probability: 0.53 → 0.53125
        assert_eq!(bernoulli_probability(0.53, DType::BF16), 0.53125);
        // the packed mask is the element-wise draw
        let key = RngKey::new(3, "y");
        let m = bernoulli(1000, 0.5, DType::F32, key, 2, 77);
        let v = vec![1.0f32; 1000];
        let want: Vec<bool> = (0..1000).map(|i| key.uniform(2, 77 + i) < 0.5).collect();
        assert_eq!(m.to_vec(&v[..]), want);
    }

    /// Deterministic pseudo-random values: `bits` random bits scaled into a few binades, with
    /// some zeros and repeated values.
    pub(crate) fn noise(n: usize, seed: u64, math: DType) -> Vec<f32> {
        let k = RngKey::new(seed, "noise");
        (0..n as u64)
            .map(|i| {
                let b = k.bits(0, i);
                let mag = (b >> 40) as f32 / 16_777_216.0 * 2f32.powi((b % 9) as i32 - 12);
                let v = if b.is_multiple_of(13) { 0.0 } else { mag };
                math.round(if b & (1 << 20) != 0 { -v } else { v })
            })
            .collect()
    }

    /// The kept flags of the first `k` elements of the priority order, by sorting.
    fn top_reference(v: &[f32], k: usize) -> Vec<bool> {
        let mut order: Vec<usize> = (0..v.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(magnitude_key(v[i])), i));
        let mut want = vec![false; v.len()];
        for &i in &order[..k] {
            want[i] = true;
        }
        want
    }

    #[test]
    fn select_top_over_chunks_with_and_without_the_window() {
        let n = 3 * CHUNK + 4321;
        for math in [DType::BF16, DType::F32] {
            let v = noise(n, 5, math);
            for k in [1, 1000, n / 3, n / 2, n - 7] {
                let want = top_reference(&v, k);
                let got = select_top(&v[..], k);
                assert_eq!(Mask::Top(got).to_vec(&v[..]), want, "{math:?} k={k}");
                // a window far from the threshold bin falls back to counting ties: same set
                let h = histogram_hi(&v[..], &[0]);
                assert_eq!(select_from(&v[..], k, &h, 0, 0), got, "{math:?} k={k}");
            }
        }
    }

    /// The kept flags of the positions `from..to` of PyTorch's sort of `|v|`, by the full
    /// sort replay.
    fn torch_reference(v: &[f32], descending: bool, from: usize, to: usize) -> Vec<bool> {
        let mut items: Vec<u64> = v
            .iter()
            .enumerate()
            .map(|(i, x)| torch_sort::item(torch_sort::magnitude_key(*x), i as u32))
            .collect();
        torch_sort::sort(&mut items, descending);
        let mut want = vec![false; v.len()];
        for &it in &items[from..to] {
            want[torch_sort::index(it)] = true;
        }
        want
    }

    #[test]
    fn band_matches_the_reference() {
        let n = 2 * CHUNK + 999;
        for math in [DType::BF16, DType::F32] {
            let v = noise(n, 6, math);
            let m = magnitude_outliers(&v[..], 0.4, 0.05, Ties::Rare).unwrap();
            // mergekit's ascending positions [bot, n − top)
            let top = py_int_mul(0.05, n) as usize;
            let bot = n - py_int_mul(0.4, n) as usize - top;
            let want = torch_reference(&v, false, bot, n - top);
            assert_eq!(m.to_vec(&v[..]), want, "{math:?}");
            // applied in ranges that cut the tie runs anywhere: the same flags
            let mut out = v.clone();
            for (c, part) in out.chunks_mut(777).enumerate() {
                m.apply_range(c * 777, part);
            }
            for (i, (o, x)) in out.iter().zip(&v).enumerate() {
                assert_eq!(o.to_bits(), select_f32(want[i], *x).to_bits(), "{i}");
            }
        }
    }

    #[test]
    fn magnitude_matches_the_reference() {
        let n = CHUNK + 999;
        for math in [DType::BF16, DType::F16, DType::F32] {
            let v = noise(n, 7, math);
            for density in [0.1, 0.5, 0.9] {
                let k = py_int_mul(density, n) as usize;
                let want = torch_reference(&v, true, 0, k);
                for ties in [Ties::Rare, Ties::Common] {
                    let m = magnitude(&v[..], density, ties);
                    assert_eq!(m.to_vec(&v[..]), want, "{math:?} {density} {ties:?}");
                }
            }
        }
    }

    #[test]
    fn both_cut_strategies_keep_the_same_elements() {
        // f32 values (cuts rarely split ties), bf16 values (they do), and distinct values
        let distinct: Vec<f32> = (0..5000).map(|i| (i as f32 * 0.37).sin() + 2.0).collect();
        for v in [
            noise(3000, 8, DType::F32),
            noise(3000, 9, DType::BF16),
            distinct,
        ] {
            for density in [0.05, 0.5, 0.97] {
                let a = magnitude(&v[..], density, Ties::Rare).to_vec(&v[..]);
                let b = magnitude(&v[..], density, Ties::Common).to_vec(&v[..]);
                assert_eq!(a, b, "magnitude {density}");
                for gamma in [0.0, 0.01, 0.2] {
                    let a = magnitude_outliers(&v[..], density, gamma, Ties::Rare).unwrap();
                    let b = magnitude_outliers(&v[..], density, gamma, Ties::Common).unwrap();
                    assert_eq!(
                        a.to_vec(&v[..]),
                        b.to_vec(&v[..]),
                        "outliers {density} {gamma}"
                    );
                }
            }
        }
        assert_eq!(Ties::of(DType::BF16), Ties::Common);
        assert_eq!(Ties::of(DType::F32), Ties::Rare);
        // beyond 32-bit positions the replay is never asked for (no panic)
        assert!(replayable(u32::MAX as usize));
        assert!(!replayable(u32::MAX as usize + 1));
        assert!(!Ties::Common.replay(u32::MAX as usize + 1));
    }

    #[test]
    fn bits_apply_in_any_range() {
        let n = 1000;
        let key = RngKey::new(4, "b");
        let m = bernoulli(n, 0.5, DType::F32, key, 0, 3);
        let v: Vec<f32> = (0..n).map(|i| i as f32 + 1.0).collect();
        let want = m.to_vec(&v[..]);
        for step in [1, 5, 8, 13, 64, 100] {
            let mut out = v.clone();
            for (c, part) in out.chunks_mut(step).enumerate() {
                m.apply_range(c * step, part);
            }
            let got: Vec<bool> = out.iter().map(|x| *x != 0.0).collect();
            assert_eq!(got, want, "step {step}");
        }
    }

    #[test]
    fn l1_chunk_is_the_sequential_sum() {
        let sequential = |v: &[f32]| v.iter().fold(0.0f64, |s, x| s + x.abs() as f64);
        let mut cases: Vec<Vec<f32>> = vec![
            vec![],
            vec![0.0; 10],
            noise(CHUNK, 1, DType::BF16),
            noise(CHUNK, 2, DType::F32),
            noise(1001, 3, DType::F32),
            // a wide dynamic range (not exact: the sequential path)
            (0..5000).map(|i| 2f32.powi(i % 60 - 30) * 1.1).collect(),
            // subnormals and normals together
            (0..4000)
                .map(|i| f32::from_bits(i * 977 % 0x0100_0000))
                .collect(),
            vec![1.0, f32::INFINITY, 2.0],
            vec![1.0, f32::NAN, 2.0],
            vec![3.0e38; 8],
        ];
        cases.push(cases[2].iter().map(|x| x * 1e-30).collect());
        // bf16 values over a few binades: the reordered sum is taken
        let narrow: Vec<f32> = (0..CHUNK)
            .map(|i| DType::BF16.round(1e-3 * (1.0 + (i % 1000) as f32)))
            .collect();
        assert!(reorderable(&narrow));
        assert!(!reorderable(&cases[5]) && !reorderable(&cases[7]) && !reorderable(&cases[8]));
        cases.push(narrow);
        for (i, all) in cases.iter().enumerate() {
            let kept: Vec<f32> = all
                .iter()
                .enumerate()
                .map(|(j, x)| if j % 3 == 0 { 0.0 } else { *x })
                .collect();
            let (a, k) = l1_chunk(all, &kept);
            let (wa, wk) = (sequential(all), sequential(&kept));
            assert!(
                a.to_bits() == wa.to_bits() || (a.is_nan() && wa.is_nan()),
                "case {i}"
            );
            assert!(
                k.to_bits() == wk.to_bits() || (k.is_nan() && wk.is_nan()),
                "case {i}"
            );
        }
    }

    /// Bench-like bf16 task vectors: `rows × c` fine-tune deltas of a few ulps.
    pub(crate) fn bench_delta(rows: usize, c: usize) -> Vec<f32> {
        let bf = |x: f32| DType::BF16.round(x);
        let k = RngKey::new(1, "base");
        (0..(rows * c) as u64)
            .map(|i| {
                let b = k.bits(0, i);
                let base = bf(((b >> 40) as f32 / 16_777_216.0 - 0.5) * 0.07);
                let g = ((b & 0xffff) as f32 / 65536.0 - 0.5) * 0.0035;
                bf(bf(base + g) - base)
            })
            .collect()
    }

    /// The best of five timings of `f`, in seconds.
    pub(crate) fn best(f: &dyn Fn()) -> f64 {
        (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
    }

    /// Rough timing of the mask passes on bench-like bf16 task vectors (run with `--ignored
    /// --nocapture` in an optimised build): the best of five runs. DELLA's is in
    /// `della_mask`.
    #[test]
    #[ignore]
    fn mask_timing() {
        let (rows, c) = (4096, 2048);
        let n = rows * c;
        let delta = bench_delta(rows, c);
        let key = RngKey::new(2, "t");
        let d = &delta[..];
        let w = DType::BF16;
        let top = best(&|| {
            magnitude(d, 0.5, Ties::Common);
        });
        let dare = best(&|| {
            bernoulli(n, 0.5, w, key, 1, 0);
        });
        let mask = bernoulli(n, 0.5, w, key, 1, 0);
        let l1 = best(&|| {
            l1_rescale(d, &mask, w);
        });
        eprintln!(
            "per element: top-k {:.2} ns, dare {:.2} ns, l1 {:.2} ns",
            top / n as f64 * 1e9,
            dare / n as f64 * 1e9,
            l1 / n as f64 * 1e9
        );
    }
}
