//! DELLA's magnitude-ranked drop (mergekit's `della_magprune`): within each row, elements are
//! ranked by magnitude and kept with a probability that rises with their rank, then (in the
//! family engine) rescaled by the L1 norms.
//!
//! The ranking is the cost: every element of every row needs its exact rank, because its keep
//! probability depends on it. Where the magnitude keys of a row differ in few bits (always for
//! bf16 task vectors, whose magnitudes have at most 15 significant bits), ranks are counted,
//! not sorted: a histogram of the keys, its prefix sums, and one walk of the row from its end
//! (a counting sort that never moves an element). Otherwise (f32 task vectors) a
//! least-significant-digit radix sort of `(key, position)` pairs, over the key bytes that
//! differ within the row only.
//!
//! The L1 norms of the rescale are gathered in the same pass when the row groups can be cut on
//! [`CHUNK`] boundaries: the per-chunk sums are the very sums [`sparsify::l1_rescale`] would
//! compute in a second pass over the inputs (same chunks, same element order), so the factor
//! has the same bits and the inputs are read once less.
//!
//! Order and divergences from mergekit are described in [`sparsify`]: elements rank by
//! ascending priority (smaller `|δ|` first; among equal magnitudes the higher index first), a
//! row of one element uses the middle probability, and the draws are smelt's counter-based
//! generator, so results agree with mergekit statistically.
//!
//! [`sparsify`]: super::sparsify
//! [`sparsify::l1_rescale`]: super::sparsify::l1_rescale

use super::rng::{RngKey, threshold24};
use super::sparsify::{CHUNK, Mask, Values, l1_chunk, magnitude_key, select_f32};
use crate::dtype::DType;
use rayon::prelude::*;

/// What a DELLA mask is drawn from, besides the values.
#[derive(Debug, Clone, Copy)]
pub struct DellaDraw<'a> {
    /// The tensor's shape (rows are axis 1 of ≥2-D shapes; a 0-/1-D tensor is one row).
    pub shape: &'a [usize],
    /// The mean keep probability.
    pub density: f64,
    /// Half the spread of keep probabilities between the lowest and highest rank.
    pub epsilon: f64,
    /// The dtype the probabilities are computed in.
    pub work: DType,
    /// The tensor's random stream.
    pub key: RngKey,
    /// The model's index among the merge inputs (part of the random stream's key).
    pub model: u32,
    /// Element index of the tensor's first element in the random stream.
    pub offset: usize,
}

/// DELLA keep probabilities for ranks `1..=c` of a row of `c` elements, computed with
/// mergekit's operations rounded to the work dtype: `p = (density − ε) + 2ε·(rank−1)/(c−1)`.
/// A row of one element gets `rank_norm = 0.5` (see divergences).
pub fn della_probabilities(c: usize, density: f64, epsilon: f64, work: DType) -> Vec<f32> {
    let w = |x: f32| work.round(x);
    let rank = |r0: usize| w(w(r0 as f32) + 1.0);
    let min = rank(0);
    let max = rank(c.saturating_sub(1));
    let span = w(max - min);
    let eps = epsilon as f32;
    let low = (density - epsilon) as f32;
    (0..c)
        .map(|r0| {
            let norm = if c == 1 {
                0.5
            } else {
                w(w(rank(r0) - min) / span).clamp(0.0, 1.0)
            };
            w(w(w(norm * 2.0) * eps) + low)
        })
        .collect()
}

/// DELLA's mask: per row, elements ranked by ascending priority and kept with probability
/// [`della_probabilities`]. `density ≥ 1` keeps everything, `density ≤ 0` nothing; otherwise
/// `density ± epsilon` must lie inside `(0, 1)`.
pub fn della_magprune<V: Values + ?Sized>(v: &V, d: &DellaDraw<'_>) -> Result<Mask, String> {
    della_magprune_l1(v, d, false).map(|(mask, _)| mask)
}

/// The L1 norms of each [`CHUNK`] of a tensor, all values and kept values, in chunk order.
pub type ChunkNorms = Vec<(f64, f64)>;

/// [`della_magprune`], and with `l1` the per-[`CHUNK`] L1 norms of the values and of the kept
/// values ([`l1_chunk`], in chunk order) when they could be gathered in the same pass.
///
/// The draws are made once, in parallel over groups of whole row blocks that each cover a
/// whole number of mask words (and of chunks, when the norms are gathered), into a packed bit
/// mask.
pub fn della_magprune_l1<V: Values + ?Sized>(
    v: &V,
    d: &DellaDraw<'_>,
    l1: bool,
) -> Result<(Mask, Option<ChunkNorms>), String> {
    let n = v.numel();
    let della = match Della::setup(n, d)? {
        Ok(della) => della,
        Err(mask) => return Ok((mask, None)),
    };
    let mut words = vec![0u64; n.div_ceil(64)];
    if n == 0 {
        return Ok((Mask::Bits(words), None));
    }
    let (group, norms) = della.group(l1);
    let parts: Vec<Vec<(f64, f64)>> = words
        .par_chunks_mut(group / 64)
        .enumerate()
        .map_init(Scratch::default, |s, (g, ws)| {
            let start = g * group;
            let len = group.min(n - start);
            s.vals.resize(len, 0.0);
            v.fill(start, &mut s.vals);
            della.group_flags(d, (d.offset + start) as u64, s);
            for (word, flags) in ws.iter_mut().zip(s.flags.chunks(64)) {
                *word = flags
                    .iter()
                    .enumerate()
                    .fold(0u64, |w, (b, f)| w | (*f as u64) << b);
            }
            if norms { s.norms() } else { Vec::new() }
        })
        .collect();
    let parts = norms.then(|| parts.into_iter().flatten().collect());
    Ok((Mask::Bits(words), parts))
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The largest row group (elements) worth aligning on chunks to gather the L1 norms.
const MAX_GROUP: usize = 16 * CHUNK;

/// The shape of DELLA's ranking and its keep thresholds.
struct Della {
    /// Elements per ranked block (`c · inner`).
    block: usize,
    /// Ranked blocks in the tensor.
    rows: usize,
    c: usize,
    inner: usize,
    /// [`threshold24`] of the keep probability of each rank.
    thresholds: Vec<u32>,
}

/// Per-thread buffers of [`della_magprune_l1`].
#[derive(Default)]
struct Scratch {
    vals: Vec<f32>,
    flags: Vec<bool>,
    draws: Vec<u32>,
    keys: Vec<u32>,
    order: Vec<u64>,
    tmp: Vec<u64>,
    bins: Vec<u16>,
    kept: Vec<f32>,
}

impl Scratch {
    /// The L1 norms of each [`CHUNK`] of the group's values, all and kept.
    fn norms(&mut self) -> Vec<(f64, f64)> {
        let mut parts = Vec::with_capacity(self.vals.len().div_ceil(CHUNK));
        for (all, flags) in self.vals.chunks(CHUNK).zip(self.flags.chunks(CHUNK)) {
            self.kept.clear();
            self.kept
                .extend(all.iter().zip(flags).map(|(x, f)| select_f32(*f, *x)));
            parts.push(l1_chunk(all, &self.kept));
        }
        parts
    }
}

impl Della {
    /// The ranking of a tensor of `n` elements, or (as `Err`) the mask when none is needed;
    /// an error for a bad `epsilon` or shape.
    fn setup(n: usize, d: &DellaDraw<'_>) -> Result<Result<Della, Mask>, String> {
        let (density, epsilon) = (d.density, d.epsilon);
        if density >= 1.0 {
            return Ok(Err(Mask::All));
        }
        if density <= 0.0 {
            return Ok(Err(Mask::Nothing));
        }
        if density + epsilon >= 1.0 || density - epsilon <= 0.0 {
            return Err(format!(
                "della: epsilon must keep density ± epsilon inside (0, 1), got density \
                 {density} and epsilon {epsilon} (density − epsilon = {}, density + epsilon = \
                 {})",
                density - epsilon,
                density + epsilon
            ));
        }
        let shape = d.shape;
        let (rows, c, inner) = if shape.len() < 2 {
            (1, n, 1)
        } else {
            (shape[0], shape[1], shape[2..].iter().product::<usize>())
        };
        if rows * c * inner != n {
            return Err(format!(
                "della: shape {shape:?} does not match {n} elements"
            ));
        }
        if c > u32::MAX as usize {
            return Err(format!("della: rows of {c} elements are too long to rank"));
        }
        let probs = della_probabilities(c, density, epsilon, d.work);
        Ok(Ok(Della {
            block: (c * inner).max(1),
            rows,
            c,
            inner,
            thresholds: probs.into_iter().map(threshold24).collect(),
        }))
    }

    /// Elements per parallel group, and whether groups start on [`CHUNK`] boundaries (so the
    /// L1 norms can be gathered, when `l1` asks for them).
    fn group(&self, l1: bool) -> (usize, bool) {
        let aligned = self.block / gcd(self.block, CHUNK) * CHUNK;
        if l1 && aligned <= MAX_GROUP {
            return (aligned, true);
        }
        let n = self.block * self.rows;
        if l1 && n <= MAX_GROUP {
            return (n.next_multiple_of(CHUNK), true); // one group
        }
        // a multiple of the rows that end on a word boundary, about a chunk
        let step = 64 / gcd(self.block, 64);
        let rows = (CHUNK / self.block / step).max(1) * step;
        (rows * self.block, false)
    }

    /// The flags of the row blocks in `s.vals` (whose first element is `first` in the random
    /// stream) into `s.flags`.
    fn group_flags(&self, d: &DellaDraw<'_>, first: u64, s: &mut Scratch) {
        let len = s.vals.len();
        s.flags.clear();
        s.flags.resize(len, false);
        s.draws.resize(len, 0);
        d.key.draws24(d.model, first, &mut s.draws);
        for b in 0..len / self.block {
            for col in 0..self.inner {
                self.rank_flags(b * self.block + col, s);
            }
        }
    }

    /// The flags of one ranked row: the `c` elements `at, at + inner, …` of the group.
    fn rank_flags(&self, at: usize, s: &mut Scratch) {
        let Scratch {
            vals,
            flags,
            draws,
            keys,
            order,
            tmp,
            bins,
            ..
        } = s;
        keys.clear();
        if self.inner == 1 {
            keys.extend(vals[at..at + self.c].iter().map(|v| magnitude_key(*v)));
        } else {
            keys.extend((0..self.c).map(|j| magnitude_key(vals[at + j * self.inner])));
        }
        let mut keep = |r0: usize, j: usize| {
            let local = at + j * self.inner;
            flags[local] = draws[local] < self.thresholds[r0];
        };
        let range = KeyRange::of(keys);
        if range.countable(self.c) {
            counted_ranks(keys, range, bins, keep);
        } else {
            priority_order(keys, order, tmp);
            for (r0, &p) in order.iter().enumerate() {
                keep(r0, p as u32 as usize);
            }
        }
    }
}

/// The spread of a row's nonzero magnitude keys: the smallest, and the bits below `lo` that
/// are the same in all of them, so that `(key − min) >> lo` numbers their values in order
/// without merging two. Zeros (untouched weights, frequent in bf16 task vectors) sit apart,
/// below every nonzero key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeyRange {
    min: u32,
    lo: u32,
    /// `(max − min) >> lo`, the last nonzero key's number.
    span: u32,
}

impl KeyRange {
    fn of(keys: &[u32]) -> KeyRange {
        let (mut or, mut and, mut min, mut max) = (0u32, u32::MAX, u32::MAX, 0u32);
        for &k in keys {
            // zeros leave every fold unchanged (branch-free, so the loop vectorises)
            let or_max = if k == 0 { u32::MAX } else { k };
            or |= k;
            and &= or_max;
            min = min.min(or_max);
            max = max.max(k);
        }
        if min > max {
            return KeyRange {
                min: 0,
                lo: 0,
                span: 0,
            };
        }
        let lo = (or ^ and).trailing_zeros().min(31);
        KeyRange {
            min,
            lo,
            span: (max - min) >> lo,
        }
    }

    /// The counting bins of a key: 0 for zero, then the nonzero keys in order.
    #[inline(always)]
    fn bin(&self, k: u32) -> usize {
        if k == 0 {
            0
        } else {
            ((k - self.min) >> self.lo) as usize + 1
        }
    }

    /// Whether a row of `c` keys is ranked faster by counting (one bin per possible key) than
    /// by sorting, with counts that fit 16 bits: true for bf16 task vectors (keys of at most
    /// 15 significant bits) in rows of up to 65535 elements.
    fn countable(&self, c: usize) -> bool {
        (self.span as usize) < (4 * c).max(4096) && c <= u16::MAX as usize
    }
}

/// Calls `rank(r0, j)` with the rank of every position `j` of `keys` in ascending priority
/// (smaller key first, higher position first among equal keys), for keys of a small
/// [`KeyRange`]: the offsets of a counting sort, without moving anything. Walking the row
/// from its last element, an element's rank is the count of smaller keys plus the count of
/// equal keys met so far (the higher positions).
fn counted_ranks(
    keys: &[u32],
    range: KeyRange,
    bins: &mut Vec<u16>,
    mut rank: impl FnMut(usize, usize),
) {
    bins.clear();
    bins.resize(range.span as usize + 2, 0);
    for &k in keys {
        bins[range.bin(k)] += 1;
    }
    let mut sum = 0u16;
    for b in bins.iter_mut() {
        let count = *b;
        *b = sum;
        sum = sum.wrapping_add(count); // the last bin's sum, c, may not fit
    }
    for (j, &k) in keys.iter().enumerate().rev() {
        let b = &mut bins[range.bin(k)];
        rank(*b as usize, j);
        *b += 1;
    }
}

/// The positions of `keys` in ascending priority (smaller key first, higher position first
/// among equal keys) into `order`, for rows whose keys are too wide to count: a stable least-significant-digit radix sort of
/// `(key, position)` pairs in `u64`, starting from descending positions, by the key bytes that
/// differ between keys only.
///
/// Each pass walks the two halves of the current order as two independent streams (a
/// histogram and a scatter offset table each), which halves the store-to-load chains on
/// runs of equal digits; the first half's elements of a digit still land before the second
/// half's, so the sort stays stable.
fn priority_order(keys: &[u32], order: &mut Vec<u64>, tmp: &mut Vec<u64>) {
    let c = keys.len();
    order.clear();
    order.extend(
        keys.iter()
            .enumerate()
            .rev()
            .map(|(j, k)| (*k as u64) << 32 | j as u64),
    );
    tmp.clear();
    tmp.resize(c, 0);
    let (or, and) = keys
        .iter()
        .fold((0u32, u32::MAX), |(o, a), &k| (o | k, a & k));
    let half = c / 2;
    for shift in [32u32, 40, 48, 56] {
        if ((or ^ and) >> (shift - 32)) & 0xff == 0 {
            continue;
        }
        let digit = |p: u64| ((p >> shift) & 0xff) as usize;
        let (first, second) = order.split_at(half);
        let mut h = [[0u32; 256]; 2];
        for (&a, &b) in first.iter().zip(second) {
            h[0][digit(a)] += 1;
            h[1][digit(b)] += 1;
        }
        if let Some(&b) = second.get(half) {
            h[1][digit(b)] += 1;
        }
        // offsets: every digit's first-half elements, then its second-half elements
        let mut sum = 0u32;
        let [h0, h1] = &mut h;
        for (x, y) in h0.iter_mut().zip(h1.iter_mut()) {
            let (a, b) = (*x, *y);
            *x = sum;
            *y = sum + a;
            sum += a + b;
        }
        for (&a, &b) in first.iter().zip(second) {
            let (da, db) = (digit(a), digit(b));
            tmp[h[0][da] as usize] = a;
            h[0][da] += 1;
            tmp[h[1][db] as usize] = b;
            h[1][db] += 1;
        }
        if let Some(&b) = second.get(half) {
            tmp[h[1][digit(b)] as usize] = b;
        }
        std::mem::swap(order, tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::super::sparsify::l1_rescale;
    use super::super::sparsify::tests::{bench_delta, best, noise};
    use super::*;

    fn draw(
        shape: &[usize],
        density: f64,
        epsilon: f64,
        work: DType,
        key: RngKey,
    ) -> DellaDraw<'_> {
        DellaDraw {
            shape,
            density,
            epsilon,
            work,
            key,
            model: 1,
            offset: 0,
        }
    }

    #[test]
    fn della_probabilities_example_from_spec() {
        // §2.7: row of 5, density .5, ε .1 → p = .40, .45, .50, .55, .60
        let p = della_probabilities(5, 0.5, 0.1, DType::F32);
        let want = [0.40f32, 0.45, 0.50, 0.55, 0.60];
        for (a, b) in p.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{p:?}");
        }
        // bf16 ranks are coarse: 257 rounds to 256
        let p = della_probabilities(300, 0.5, 0.1, DType::BF16);
        assert_eq!(p[255], p[256]);
        assert_eq!(della_probabilities(1, 0.5, 0.1, DType::F32), vec![0.5]);
    }

    #[test]
    fn della_ranks_by_magnitude_within_rows() {
        // probability rises with magnitude: over many rows, the largest element of each row
        // survives more often than the smallest.
        let rows = 4000;
        let c = 5;
        let v: Vec<f32> = (0..rows * c).map(|i| (i % c) as f32 + 1.0).collect();
        let shape = [rows, c];
        let d = draw(&shape, 0.5, 0.1, DType::F32, RngKey::new(7, "t"));
        let f = della_magprune(&v[..], &d).unwrap().to_vec(&v[..]);
        let frac = |j: usize| (0..rows).filter(|r| f[r * c + j]).count() as f64 / rows as f64;
        assert!((frac(0) - 0.40).abs() < 0.03, "{}", frac(0));
        assert!((frac(4) - 0.60).abs() < 0.03, "{}", frac(4));
    }

    #[test]
    fn della_rejects_bad_epsilon() {
        let v = [1.0f32; 4];
        let key = RngKey::new(1, "t");
        let e = della_magprune(&v[..], &draw(&[4], 0.1, 0.15, DType::F32, key)).unwrap_err();
        assert!(e.contains("0.1") && e.contains("0.15"), "{e}");
        // density 1 never checks epsilon
        let d = draw(&[4], 1.0, 0.15, DType::F32, key);
        assert!(matches!(della_magprune(&v[..], &d), Ok(Mask::All)));
    }

    #[test]
    fn della_rejects_a_shape_that_does_not_fit() {
        let v = [1.0f32; 6];
        let d = draw(&[4, 2], 0.5, 0.1, DType::F32, RngKey::new(1, "t"));
        let e = della_magprune(&v[..], &d).unwrap_err();
        assert!(e.contains("[4, 2]") && e.contains('6'), "{e}");
    }

    /// The sorted order of `(key, position)` by ascending priority, by a comparison sort.
    fn sorted_positions(keys: &[u32]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by_key(|&j| (keys[j], std::cmp::Reverse(j)));
        order
    }

    #[test]
    fn both_radix_sorts_give_the_sorted_order() {
        let mut cases: Vec<Vec<u32>> = Vec::new();
        for (c, seed) in [(0usize, 1u64), (1, 2), (2, 3), (7, 4), (2048, 5), (3001, 6)] {
            for math in [DType::BF16, DType::F32] {
                cases.push(
                    noise(c, seed, math)
                        .iter()
                        .map(|x| magnitude_key(*x))
                        .collect(),
                );
            }
        }
        cases.push(vec![7; 5]);
        cases.push(vec![0x7f80_0000, 0, 0x7fc0_0000, 1, 0x7f80_0000]);
        for keys in &cases {
            let want = sorted_positions(keys);
            let (mut order, mut tmp) = (Vec::new(), Vec::new());
            priority_order(keys, &mut order, &mut tmp);
            let got: Vec<usize> = order.iter().map(|p| *p as u32 as usize).collect();
            assert_eq!(got, want, "u64 sort of {} keys", keys.len());
            let range = KeyRange::of(keys);
            if range.span < 1 << 20 {
                let mut got = vec![usize::MAX; keys.len()];
                counted_ranks(keys, range, &mut Vec::new(), |r0, j| got[r0] = j);
                assert_eq!(
                    got,
                    want,
                    "counted ranks of {} keys ({range:?})",
                    keys.len()
                );
            }
        }
    }

    #[test]
    fn bf16_rows_are_counted_and_f32_rows_sorted() {
        let keys = |math| -> Vec<u32> {
            noise(5632, 9, math)
                .iter()
                .map(|x| magnitude_key(*x))
                .collect()
        };
        let bf16 = keys(DType::BF16);
        assert!(bf16.contains(&0));
        let range = KeyRange::of(&bf16);
        assert!(range.lo >= 16 && range.countable(5632), "{range:?}");
        assert!(!KeyRange::of(&keys(DType::F32)).countable(5632));
        let same = KeyRange::of(&[5; 3]);
        assert_eq!((same.span, same.bin(5), same.bin(0)), (0, 1, 0));
        assert_eq!(KeyRange::of(&[0; 3]).span, 0);
    }

    /// DELLA's mask as first written: a comparison sort per row and a float draw per element.
    fn della_reference(
        v: &[f32],
        (rows, c, inner): (usize, usize, usize),
        d: &DellaDraw,
    ) -> Vec<bool> {
        let probs = della_probabilities(c, d.density, d.epsilon, d.work);
        let mut flags = vec![false; v.len()];
        for r in 0..rows {
            for col in 0..inner {
                let at = |j: usize| r * c * inner + j * inner + col;
                let keys: Vec<u32> = (0..c).map(|j| magnitude_key(v[at(j)])).collect();
                for (r0, j) in sorted_positions(&keys).into_iter().enumerate() {
                    let i = at(j);
                    flags[i] = d.key.uniform(d.model, (d.offset + i) as u64) < probs[r0];
                }
            }
        }
        flags
    }

    #[test]
    fn della_matches_the_reference() {
        let key = RngKey::new(11, "d");
        for (shape, work) in [
            (vec![40usize, 300], DType::BF16),
            (vec![6, 50, 7], DType::F32),
            (vec![5000], DType::F32),
            (vec![3, 33], DType::BF16),
            (vec![30, 5632], DType::BF16),
        ] {
            let n: usize = shape.iter().product();
            let v = noise(n, 8, work);
            let dims = if shape.len() < 2 {
                (1, n, 1)
            } else {
                (shape[0], shape[1], shape[2..].iter().product())
            };
            let mut d = draw(&shape, 0.4, 0.2, work, key);
            d.offset = 17;
            let want = della_reference(&v, dims, &d);
            let (m, parts) = della_magprune_l1(&v[..], &d, true).unwrap();
            assert_eq!(m.to_vec(&v[..]), want, "{shape:?}");
            assert!(
                parts.is_some(),
                "{shape:?}: the norms are gathered in the same pass"
            );
        }
    }

    #[test]
    fn norms_of_the_same_pass_equal_the_second_pass() {
        // blocks that divide a chunk, that do not, a 1-D tensor, and a block too large to align
        let key = RngKey::new(3, "n");
        for (shape, aligned) in [
            (vec![100usize, 2048], true),
            (vec![70, 5632], true),
            (vec![200_000], true),
            (vec![20, 65_537], false),
        ] {
            let n: usize = shape.iter().product();
            let v = noise(n, 4, DType::BF16);
            let d = draw(&shape, 0.5, 0.15, DType::BF16, key);
            let (mask, parts) = della_magprune_l1(&v[..], &d, true).unwrap();
            assert_eq!(parts.is_some(), aligned, "{shape:?}");
            assert_eq!(
                mask.to_vec(&v[..]),
                della_magprune(&v[..], &d).unwrap().to_vec(&v[..])
            );
            if let Some(parts) = parts {
                assert_eq!(parts.len(), n.div_ceil(CHUNK));
                let want = l1_rescale(&v[..], &mask, DType::BF16);
                let got = super::super::sparsify::l1_combine(&parts, DType::BF16);
                assert_eq!(got.map(f32::to_bits), want.map(f32::to_bits), "{shape:?}");
                assert!(got.is_some());
            }
        }
    }

    #[test]
    fn same_mask_at_any_thread_count() {
        let shape = [64usize, 5632];
        let v = noise(64 * 5632, 12, DType::BF16);
        let d = draw(&shape, 0.5, 0.15, DType::BF16, RngKey::new(5, "t"));
        let run_in = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| della_magprune_l1(&v[..], &d, true).unwrap())
        };
        let (m1, p1) = run_in(1);
        let (m3, p3) = run_in(3);
        assert_eq!(m1.to_vec(&v[..]), m3.to_vec(&v[..]));
        assert_eq!(p1, p3);
    }

    /// Rough timing of the DELLA mask on bench-like bf16 task vectors (run with `--ignored
    /// --nocapture` in an optimised build): the best of five runs.
    #[test]
    #[ignore]
    fn della_timing() {
        let (rows, c) = (4096, 2048);
        let n = rows * c;
        let delta = bench_delta(rows, c);
        let shape = [rows, c];
        let d = draw(&shape, 0.5, 0.15, DType::BF16, RngKey::new(2, "t"));
        let mask = best(&|| {
            della_magprune(&delta[..], &d).unwrap();
        });
        let keys: Vec<u32> = delta.iter().map(|x| magnitude_key(*x)).collect();
        let (mut order, mut tmp, mut bins) = (Vec::new(), Vec::new(), Vec::new());
        let t = std::time::Instant::now();
        for row in keys.chunks(c) {
            priority_order(row, &mut order, &mut tmp);
        }
        let sorted = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let mut sink = 0usize;
        for row in keys.chunks(c) {
            counted_ranks(row, KeyRange::of(row), &mut bins, |r0, j| sink ^= r0 + j);
        }
        let counted = t.elapsed().as_secs_f64();
        eprintln!(
            "one thread, per element: radix sort {:.2} ns, counted ranks {:.2} ns ({sink})",
            sorted / n as f64 * 1e9,
            counted / n as f64 * 1e9
        );
        let fused = best(&|| {
            della_magprune_l1(&delta[..], &d, true).unwrap();
        });
        eprintln!(
            "per element: della mask {:.2} ns, with the L1 norms {:.2} ns",
            mask / n as f64 * 1e9,
            fused / n as f64 * 1e9
        );
    }
}
