//! TIES sign consensus: per element, elect a majority sign over the models' (weighted) task
//! vectors and keep only the contributions that agree with it.
//!
//! mergekit's recipes always use the "sum" mode: the majority sign is the sign of the sum of
//! the values (`+` when the sum is ≥ 0, including a zero or −0 sum). The sum is accumulated in
//! `f32` in source order and rounded once to the math dtype, as PyTorch's reduction over the
//! stacked model axis is; rounding matters only where a tiny negative sum underflows to −0 in
//! the math dtype (then the election says `+`). A value agrees when its sign equals the elected
//! one, so zeros (and NaN) never agree. The "count" mode (sign of the number of positive minus
//! negative values) exists in mergekit but no recipe can select it; it is provided for
//! completeness.

/// How the majority sign is elected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consensus {
    /// Sign of the sum of the values (TIES, mergekit's only selectable mode).
    Sum,
    /// Sign of the count of positive minus negative values.
    Count,
}

/// Elects the majority sign of one element's `values` (one per model, source order): `true`
/// for `+`. `round` rounds to the math dtype.
#[inline(always)]
pub fn elect(mode: Consensus, values: &[f32], round: impl Fn(f32) -> f32) -> bool {
    match mode {
        Consensus::Sum => {
            let mut s = 0.0f32;
            for v in values {
                s += v;
            }
            round(s) >= 0.0
        }
        Consensus::Count => {
            let mut c = 0i64;
            for v in values {
                if *v > 0.0 {
                    c += 1;
                } else if *v < 0.0 {
                    c -= 1;
                }
            }
            c >= 0
        }
    }
}

/// Whether `v` agrees with the elected sign (`positive`): `sign(v) == S`, so 0 never agrees.
#[inline(always)]
pub fn agrees(v: f32, positive: bool) -> bool {
    // branch-free: the elected sign is a coin flip from element to element
    ((v > 0.0) & positive) | ((v < 0.0) & !positive)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;

    fn f32r(x: f32) -> f32 {
        x
    }
    fn bf16r(x: f32) -> f32 {
        DType::BF16.round(x)
    }

    #[test]
    fn sum_election() {
        assert!(!elect(Consensus::Sum, &[-0.75, 0.0], f32r));
        assert!(elect(Consensus::Sum, &[1.0, -1.0], f32r)); // zero sum → +
        assert!(elect(Consensus::Sum, &[0.0, 0.0], f32r));
        // weights count: one large negative beats two small positives
        assert!(!elect(Consensus::Sum, &[0.1, 0.1, -1.0], f32r));
        // count mode ignores magnitudes
        assert!(elect(Consensus::Count, &[0.1, 0.1, -1.0], f32r));
    }

    #[test]
    fn underflow_to_negative_zero_elects_plus() {
        let tiny = -1e-45f32; // an f32 subnormal, below bf16's smallest subnormal
        assert!(!elect(Consensus::Sum, &[tiny], f32r));
        assert!(elect(Consensus::Sum, &[tiny], bf16r));
    }

    #[test]
    fn zeros_never_agree() {
        assert!(agrees(2.0, true));
        assert!(!agrees(-2.0, true));
        assert!(agrees(-2.0, false));
        assert!(!agrees(0.0, true));
        assert!(!agrees(-0.0, false));
        assert!(!agrees(f32::NAN, true));
    }
}
