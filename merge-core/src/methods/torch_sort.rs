//! Which elements PyTorch's CPU sort puts before a position, when equal keys straddle it.
//!
//! mergekit selects by sorting: `torch.argsort(|δ|.float(), descending=True)[:k]` (TIES
//! magnitude) and `torch.sort(|δ|.float()).indices[bot:-top]` (breadcrumbs). Both are
//! `stable=False` sorts of a 1-D float32 tensor, and PyTorch's CPU kernel (torch 2.15, the
//! version the parity fixtures were made with; checked against it on tensors of 17 to 3·10⁶
//! elements) runs them as libstdc++'s `std::sort` over (value, index) pairs with the
//! comparator `a > b` (descending) or `a < b` (ascending), NaN counting as the largest value.
//! `std::sort` is an introsort and not stable: among equal magnitudes the order depends on
//! the whole tensor. In bf16 and f16 a threshold magnitude is typically shared by many
//! elements, so which of them are kept must be replayed exactly.
//!
//! [`select`] replays that introsort only as far as the selection needs: the set of elements
//! at positions `< b` for a boundary `b` is fixed as soon as a partition step puts `b` on a
//! segment edge, and a segment holding no boundary is never looked at again (its elements
//! only move within it). So it descends like a quickselect, O(n) on average, and matches the
//! full sort's positions of every boundary:
//! * `__introsort_loop` with `_S_threshold = 16` and depth limit `2·⌊log₂ n⌋`;
//! * the pivot `__move_median_to_first(first, first+1, mid, last−1)`, then
//!   `__unguarded_partition(first+1, last, first)` (Hoare, swapping from both ends);
//! * at the depth limit a heapsort (`__make_heap` + `__sort_heap`) of the segment;
//! * segments of at most 16 elements are finished by `__final_insertion_sort`, which never
//!   moves an element across a partition edge and keeps equal elements in their order: a
//!   stable insertion sort of the segment.

/// Elements per leaf segment (`_S_threshold`).
const THRESHOLD: usize = 16;

/// The sort key of one element: `key << 32 | index`, compared on the key alone.
#[inline(always)]
pub fn item(key: u32, index: u32) -> u64 {
    (key as u64) << 32 | index as u64
}

/// The element index of an item.
#[inline(always)]
pub fn index(item: u64) -> usize {
    item as u32 as usize
}

/// The key of `|v|` as PyTorch compares it: the bits of `|v|` (monotone for non-negative
/// floats), every NaN the same key above +∞ (the comparator treats all NaNs as equal).
#[inline(always)]
pub fn magnitude_key(v: f32) -> u32 {
    let k = v.to_bits() & 0x7fff_ffff;
    if k > 0x7f80_0000 { 0x7fc0_0000 } else { k }
}

/// The comparator: `a` goes strictly before `b`.
/// (`DESCENDING` is a constant so that the scans compile without a branch on it.)
#[derive(Clone, Copy)]
struct Less<const DESCENDING: bool>;

impl<const DESCENDING: bool> Less<DESCENDING> {
    #[inline(always)]
    fn lt(self, a: u64, b: u64) -> bool {
        let (a, b) = (a >> 32, b >> 32);
        if DESCENDING { a > b } else { a < b }
    }
}

/// Rearranges `v` as far as needed so that, for every boundary `b` in `bounds`, the items at
/// positions `< b` are exactly those libstdc++'s `std::sort` with the key order (descending
/// or ascending) puts there. Positions `b` with `0 < b < len` are boundaries; others are
/// ignored.
pub fn select(v: &mut [u64], bounds: &[usize], descending: bool) {
    let n = v.len();
    if n < 2 {
        return;
    }
    let depth = 2 * (usize::BITS - 1 - n.leading_zeros());
    if descending {
        introsort(v, 0, bounds, depth, Less::<true>);
    } else {
        introsort(v, 0, bounds, depth, Less::<false>);
    }
}

/// Sorts `v` completely as `std::sort` does (for tests: every position is a boundary).
pub fn sort(v: &mut [u64], descending: bool) {
    let all: Vec<usize> = (1..v.len()).collect();
    select(v, &all, descending);
}

/// `__introsort_loop` on the segment `v` (global positions `off..off + v.len()`), followed
/// into the parts holding a boundary only.
fn introsort<const D: bool>(
    v: &mut [u64],
    off: usize,
    bounds: &[usize],
    mut depth: u32,
    less: Less<D>,
) {
    let mut last = v.len();
    loop {
        let inside = |a: usize, b: usize| bounds.iter().any(|&x| off + a < x && x < off + b);
        if !inside(0, last) {
            return;
        }
        if last <= THRESHOLD {
            insertion_sort(&mut v[..last], less);
            return;
        }
        if depth == 0 {
            heap_sort(&mut v[..last], less);
            return;
        }
        depth -= 1;
        let cut = partition_pivot(&mut v[..last], less);
        introsort(&mut v[cut..last], off + cut, bounds, depth, less);
        last = cut;
    }
}

/// `__unguarded_partition_pivot`: the median of positions 1, mid and last−1 moved to the
/// front, then a Hoare partition of the rest around it; returns the cut.
/// `__unguarded_partition_pivot`: the median of three moved to the front, then Hoare's
/// partition of the rest around it; returns the cut.
///
/// Hoare's loop swaps the i-th element from the left that is not less than the pivot with
/// the i-th element from the right that is not greater, until the two scans cross. Which
/// elements those are is decided by the values as they were before the partition (a scan
/// never passes over a position already swapped, except at the crossing, where it stops on
/// it), so [`Scan`] finds them a block at a time without a branch per element, and the swaps
/// and the cut are those of the element-by-element loop ([`tests::partition_reference`]).
fn partition_pivot<const D: bool>(v: &mut [u64], less: Less<D>) -> usize {
    let n = v.len();
    move_median_to_first(v, 1, n / 2, n - 1, less);
    let pivot = v[0];
    let mut left = Scan::new(1);
    let mut right = Scan::new(n);
    // the positions last swapped: a scan stops on them (they now hold what stops it)
    let (mut swapped_left, mut swapped_right) = (None, None);
    loop {
        let first = left.next_up(v, swapped_right, |x| !less.lt(x, pivot));
        let last = right.next_down(v, swapped_left, |x| !less.lt(pivot, x));
        if first >= last {
            return first;
        }
        v.swap(first, last);
        (swapped_left, swapped_right) = (Some(first), Some(last));
    }
}

/// Elements classified per block of a scan.
const SCAN_BLOCK: usize = 64;

/// One side of Hoare's partition: the positions whose element stops the scan, found a block
/// at a time (branch-free classification into a small buffer) in scan order.
struct Scan {
    /// Next position to classify (upward: the lowest; downward: one above the highest).
    next: usize,
    found: [u32; SCAN_BLOCK],
    len: usize,
    at: usize,
}

impl Scan {
    fn new(next: usize) -> Scan {
        Scan {
            next,
            found: [0; SCAN_BLOCK],
            len: 0,
            at: 0,
        }
    }

    /// The next position upward whose element satisfies `stops`, or `cap` if none comes
    /// before it. Without a cap the scan is unguarded: some later element stops it.
    #[inline(always)]
    fn next_up(&mut self, v: &[u64], cap: Option<usize>, stops: impl Fn(u64) -> bool) -> usize {
        let cap = cap.unwrap_or(usize::MAX);
        loop {
            if self.at < self.len {
                let p = self.found[self.at] as usize;
                self.at += 1;
                return p.min(cap);
            }
            let start = self.next;
            if start >= cap || start >= v.len() {
                return cap;
            }
            let end = (start + SCAN_BLOCK).min(v.len());
            let mut len = 0;
            for (l, &x) in v[start..end].iter().enumerate() {
                self.found[len] = (start + l) as u32;
                len += stops(x) as usize;
            }
            (self.next, self.len, self.at) = (end, len, 0);
        }
    }

    /// The next position downward whose element satisfies `stops`, or `cap` if none comes
    /// before it (position 0, the pivot, always stops a downward scan).
    #[inline(always)]
    fn next_down(&mut self, v: &[u64], cap: Option<usize>, stops: impl Fn(u64) -> bool) -> usize {
        loop {
            if self.at < self.len {
                let p = self.found[self.at] as usize;
                self.at += 1;
                return cap.map_or(p, |c| p.max(c));
            }
            let end = self.next;
            if cap.is_some_and(|c| end <= c + 1) || end == 0 {
                return cap.unwrap_or(0);
            }
            let start = end.saturating_sub(SCAN_BLOCK);
            let mut len = 0;
            for (l, &x) in v[start..end].iter().enumerate().rev() {
                self.found[len] = (start + l) as u32;
                len += stops(x) as usize;
            }
            (self.next, self.len, self.at) = (start, len, 0);
        }
    }
}

fn move_median_to_first<const D: bool>(v: &mut [u64], a: usize, b: usize, c: usize, less: Less<D>) {
    let lt = |i: usize, j: usize| less.lt(v[i], v[j]);
    let m = if lt(a, b) {
        if lt(b, c) {
            b
        } else if lt(a, c) {
            c
        } else {
            a
        }
    } else if lt(a, c) {
        a
    } else if lt(b, c) {
        c
    } else {
        b
    };
    v.swap(0, m);
}

/// A stable insertion sort (what `__final_insertion_sort` does within a leaf segment).
fn insertion_sort<const D: bool>(v: &mut [u64], less: Less<D>) {
    for i in 1..v.len() {
        let val = v[i];
        let mut j = i;
        while j > 0 && less.lt(val, v[j - 1]) {
            v[j] = v[j - 1];
            j -= 1;
        }
        v[j] = val;
    }
}

/// `std::__partial_sort(first, last, last)`: `__make_heap` then `__sort_heap`.
fn heap_sort<const D: bool>(v: &mut [u64], less: Less<D>) {
    let len = v.len();
    if len >= 2 {
        let mut parent = (len - 2) / 2;
        loop {
            let value = v[parent];
            adjust_heap(v, parent, len, value, less);
            if parent == 0 {
                break;
            }
            parent -= 1;
        }
    }
    let mut last = len;
    while last > 1 {
        last -= 1;
        // __pop_heap(first, last, last)
        let value = v[last];
        v[last] = v[0];
        adjust_heap(&mut v[..last], 0, last, value, less);
    }
}

/// `std::__adjust_heap` (with `__push_heap`) on `v[..len]`.
fn adjust_heap<const D: bool>(
    v: &mut [u64],
    mut hole: usize,
    len: usize,
    value: u64,
    less: Less<D>,
) {
    let top = hole;
    let mut child = hole;
    while child < (len - 1) / 2 {
        child = 2 * (child + 1);
        if less.lt(v[child], v[child - 1]) {
            child -= 1;
        }
        v[hole] = v[child];
        hole = child;
    }
    if len & 1 == 0 && child == (len - 2) / 2 {
        child = 2 * (child + 1);
        v[hole] = v[child - 1];
        hole = child - 1;
    }
    // __push_heap(first, hole, top, value)
    while hole > top {
        let parent = (hole - 1) / 2;
        if !less.lt(v[parent], value) {
            break;
        }
        v[hole] = v[parent];
        hole = parent;
    }
    v[hole] = value;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(keys: &[u32]) -> Vec<u64> {
        keys.iter()
            .enumerate()
            .map(|(i, &k)| item(k, i as u32))
            .collect()
    }

    fn order(v: &[u64]) -> Vec<usize> {
        v.iter().map(|&x| index(x)).collect()
    }

    #[test]
    fn equal_keys_in_torch_order() {
        // torch.argsort(torch.zeros(32), descending=True) under torch 2.15 on CPU
        let mut v = items(&[0; 32]);
        sort(&mut v, true);
        let want: Vec<usize> = [16]
            .into_iter()
            .chain((17..32).rev())
            .chain([0])
            .chain((1..16).rev())
            .collect();
        assert_eq!(order(&v), want);
        // and of 65 zeros (first 20 positions)
        let mut v = items(&[0; 65]);
        sort(&mut v, false);
        assert_eq!(
            order(&v)[..20],
            [
                40, 48, 47, 46, 45, 44, 43, 42, 41, 49, 39, 38, 37, 36, 35, 34, 33, 32, 50, 51
            ]
        );
    }

    #[test]
    fn small_inputs_sort_stably() {
        let mut v = items(&[3, 1, 3, 2, 1, 3]);
        sort(&mut v, true);
        assert_eq!(order(&v), [0, 2, 5, 3, 1, 4]);
    }

    /// A deterministic noise of few distinct keys (many ties).
    fn keys(n: usize, distinct: u32, seed: u64) -> Vec<u32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as u32) % distinct
            })
            .collect()
    }

    #[test]
    fn selection_matches_the_full_sort() {
        for (n, distinct) in [(17, 3), (100, 5), (1000, 7), (5000, 40), (20000, 3)] {
            for descending in [true, false] {
                let base = items(&keys(n, distinct, n as u64));
                let mut full = base.clone();
                sort(&mut full, descending);
                for b in [1, n / 3, n / 2, n - 1] {
                    let mut sel = base.clone();
                    select(&mut sel, &[b], descending);
                    let mut x = order(&sel[..b]);
                    let mut y = order(&full[..b]);
                    x.sort_unstable();
                    y.sort_unstable();
                    assert_eq!(x, y, "n {n} b {b} desc {descending}");
                }
            }
        }
    }

    #[test]
    fn sorted_by_key() {
        let mut v = items(&keys(3000, 50, 9));
        sort(&mut v, false);
        assert!(v.windows(2).all(|w| w[0] >> 32 <= w[1] >> 32));
    }

    /// Hoare's partition element by element, as libstdc++ writes it.
    pub(super) fn partition_reference<const D: bool>(v: &mut [u64], less: Less<D>) -> usize {
        let n = v.len();
        move_median_to_first(v, 1, n / 2, n - 1, less);
        let (mut first, mut last) = (1, n);
        loop {
            while less.lt(v[first], v[0]) {
                first += 1;
            }
            last -= 1;
            while less.lt(v[0], v[last]) {
                last -= 1;
            }
            if first >= last {
                return first;
            }
            v.swap(first, last);
            first += 1;
        }
    }

    #[test]
    fn block_partition_is_hoares_partition() {
        // introsort partitions only segments of more than 16 elements
        for n in [17usize, 18, 63, 64, 65, 127, 128, 129, 1000, 4099] {
            for distinct in [1u32, 2, 3, 10, 1000] {
                for descending in [true, false] {
                    let base = items(&keys(n, distinct, (n as u64) << 8 | distinct as u64));
                    let (mut a, mut b) = (base.clone(), base.clone());
                    let (cut, want) = if descending {
                        (
                            partition_pivot(&mut a, Less::<true>),
                            partition_reference(&mut b, Less::<true>),
                        )
                    } else {
                        (
                            partition_pivot(&mut a, Less::<false>),
                            partition_reference(&mut b, Less::<false>),
                        )
                    };
                    assert_eq!(
                        (cut, order(&a)),
                        (want, order(&b)),
                        "n {n} distinct {distinct}"
                    );
                }
            }
        }
    }

    #[test]
    fn heap_sort_sorts() {
        let mut v = items(&keys(777, 20, 3));
        heap_sort(&mut v, Less::<true>);
        assert!(v.windows(2).all(|w| w[0] >> 32 >= w[1] >> 32));
    }
}
