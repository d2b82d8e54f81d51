//! Eight-lane f32 vectors for running the K-quant searches on eight sub-blocks side by side:
//! the [`Lanes`] operations, a portable implementation on arrays ([`F32x8`]), an AVX2 one
//! ([`Avx2F32x8`]), and [`with_avx2!`], which builds a block quantizer for both and picks the
//! AVX2 build at run time when the CPU has it.
//!
//! Every operation is the scalar IEEE f32 operation (add, sub, mul, div, sqrt, compare) done
//! in each lane, never a fused multiply-add, so a lane computes the same bits as the scalar
//! code on its sub-block, with either implementation. Everything is `#[inline(always)]`, so it
//! is compiled into the block quantizer, with that function's target features.

use std::ops::{Add, BitAnd, Div, Mul, Neg, Not, Sub};

/// Number of lanes.
pub(super) const LANES: usize = 8;

/// Per-lane f32 operations (each exactly the scalar operation) and the integer codes the
/// K-quant searches need.
pub(super) trait Lanes:
    Copy
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
{
    /// One condition per lane.
    type Mask: Copy + BitAnd<Output = Self::Mask> + Not<Output = Self::Mask>;
    /// One i32 per lane.
    type Int: Copy;

    /// Every lane `v`.
    fn splat(v: f32) -> Self;
    /// Lane `j` is `a[j]`.
    fn from_array(a: [f32; LANES]) -> Self;
    /// The lanes as an array.
    fn to_array(self) -> [f32; LANES];
    /// `|v|`.
    fn abs(self) -> Self;
    /// `√v`, correctly rounded (C's `sqrtf`).
    fn sqrt(self) -> Self;
    /// `self < o` (false if either is NaN).
    fn lt(self, o: Self) -> Self::Mask;
    /// `self > o` (false if either is NaN).
    fn gt(self, o: Self) -> Self::Mask;
    /// `self == o` (false if either is NaN).
    fn eq(self, o: Self) -> Self::Mask;
    /// `a` in lanes where `m` holds, else `b`.
    fn select(m: Self::Mask, a: Self, b: Self) -> Self;
    /// Whether `m` holds, per lane.
    fn mask_to_array(m: Self::Mask) -> [bool; LANES];
    /// ggml's `nearest_int` (see `kquant_util::nearest_int`) clamped to `lo..=hi` (lo ≤ hi).
    fn nearest_int_clamped(self, lo: i32, hi: i32) -> Self::Int;
    /// The integers as f32.
    fn int_to_f32(i: Self::Int) -> Self;
    /// The integers as an array.
    fn int_to_array(i: Self::Int) -> [i32; LANES];
}

/// Portable lanes: arrays with per-lane loops.
#[derive(Clone, Copy, Debug)]
pub(super) struct F32x8(pub [f32; LANES]);

/// Portable lane conditions: all ones or zero.
#[derive(Clone, Copy, Debug)]
pub(super) struct M32x8([u32; LANES]);

/// ggml's `nearest_int` of one value.
#[inline(always)]
fn nearest_int(f: f32) -> i32 {
    ((f + 12_582_912.0f32).to_bits() & 0x007F_FFFF) as i32 - 0x0040_0000
}

/// All ones for true, zero for false.
#[inline(always)]
fn mask(b: bool) -> u32 {
    (b as u32).wrapping_neg()
}

impl Lanes for F32x8 {
    type Mask = M32x8;
    type Int = [i32; LANES];

    #[inline(always)]
    fn splat(v: f32) -> Self {
        F32x8([v; LANES])
    }
    #[inline(always)]
    fn from_array(a: [f32; LANES]) -> Self {
        F32x8(a)
    }
    #[inline(always)]
    fn to_array(self) -> [f32; LANES] {
        self.0
    }
    #[inline(always)]
    fn abs(self) -> Self {
        F32x8(self.0.map(f32::abs))
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        F32x8(self.0.map(f32::sqrt))
    }
    #[inline(always)]
    fn lt(self, o: Self) -> M32x8 {
        M32x8(std::array::from_fn(|i| mask(self.0[i] < o.0[i])))
    }
    #[inline(always)]
    fn gt(self, o: Self) -> M32x8 {
        o.lt(self)
    }
    #[inline(always)]
    fn eq(self, o: Self) -> M32x8 {
        M32x8(std::array::from_fn(|i| mask(self.0[i] == o.0[i])))
    }
    #[inline(always)]
    fn select(m: M32x8, a: Self, b: Self) -> Self {
        F32x8(std::array::from_fn(|i| {
            if m.0[i] != 0 { a.0[i] } else { b.0[i] }
        }))
    }
    #[inline(always)]
    fn mask_to_array(m: M32x8) -> [bool; LANES] {
        m.0.map(|v| v != 0)
    }
    #[inline(always)]
    fn nearest_int_clamped(self, lo: i32, hi: i32) -> [i32; LANES] {
        self.0.map(|f| nearest_int(f).max(lo).min(hi))
    }
    #[inline(always)]
    fn int_to_f32(i: [i32; LANES]) -> Self {
        F32x8(i.map(|v| v as f32))
    }
    #[inline(always)]
    fn int_to_array(i: [i32; LANES]) -> [i32; LANES] {
        i
    }
}

macro_rules! lane_op {
    ($t:ident, $tr:ident, $f:ident, $op:tt) => {
        impl $tr for $t {
            type Output = $t;
            #[inline(always)]
            fn $f(self, o: $t) -> $t {
                $t(std::array::from_fn(|i| self.0[i] $op o.0[i]))
            }
        }
    };
}
lane_op!(F32x8, Add, add, +);
lane_op!(F32x8, Sub, sub, -);
lane_op!(F32x8, Mul, mul, *);
lane_op!(F32x8, Div, div, /);
lane_op!(M32x8, BitAnd, bitand, &);

impl Neg for F32x8 {
    type Output = F32x8;
    #[inline(always)]
    fn neg(self) -> F32x8 {
        F32x8(self.0.map(|v| -v))
    }
}

impl Not for M32x8 {
    type Output = M32x8;
    #[inline(always)]
    fn not(self) -> M32x8 {
        M32x8(self.0.map(|m| !m))
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use avx2::Avx2F32x8;

#[cfg(target_arch = "x86_64")]
#[path = "lanes_avx2.rs"]
mod avx2;

/// `N` rows of eight sub-blocks: lane `j` of row `i` is `x[first + j·stride + i]`, i.e. row
/// `i` holds element `i` of each sub-block when sub-block `j` starts at `first + j·stride`.
#[inline(always)]
pub(super) fn transpose_in<V: Lanes, const N: usize>(
    x: &[f32],
    first: usize,
    stride: usize,
) -> [V; N] {
    let x = &x[first..first + (LANES - 1) * stride + N];
    let mut rows = [V::splat(0.0); N];
    for (i, row) in rows.iter_mut().enumerate() {
        *row = V::from_array(std::array::from_fn(|j| x[j * stride + i]));
    }
    rows
}

/// Defines `pub(super) fn $name(x: &[f32], y: &mut [u8])` from the `#[inline(always)]` block
/// quantizer `$body::<V: Lanes>`, built twice: with [`F32x8`] for any CPU, and with
/// [`Avx2F32x8`] in a function compiled for AVX2, taken when the CPU has AVX2. Both builds do
/// the same per-lane f32 operations, so they write the same bytes.
macro_rules! with_avx2 {
    ($(#[$doc:meta])* $name:ident => $body:ident) => {
        $(#[$doc])*
        pub(super) fn $name(x: &[f32], y: &mut [u8]) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                fn avx2(x: &[f32], y: &mut [u8]) {
                    $body::<super::lanes::Avx2F32x8>(x, y)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: `avx2` only requires the AVX2 target feature, which the CPU
                    // was just detected to support.
                    return unsafe { avx2(x, y) };
                }
            }
            $body::<super::lanes::F32x8>(x, y)
        }
    };
}
pub(super) use with_avx2;

#[cfg(test)]
mod tests {
    use super::*;

    /// The lane operations of `V` agree bit for bit with scalar f32 arithmetic.
    fn check_lanes<V: Lanes>() {
        let a = [1.5, -2.0, 0.0, -0.0, 3.25, 7.0, -1e-3, 9.5f32];
        let b = [2.5, -2.0, -0.0, 0.0, 1.0, -7.5, 2.0, 9.5f32];
        let (va, vb) = (V::from_array(a), V::from_array(b));
        let sel = V::select(va.lt(vb), va, vb).to_array();
        let quot = (va / vb).to_array();
        let codes = V::int_to_array((va * V::splat(3.0)).nearest_int_clamped(-4, 5));
        let neg = (-va).to_array();
        for i in 0..LANES {
            let want = if a[i] < b[i] { a[i] } else { b[i] };
            assert_eq!(sel[i].to_bits(), want.to_bits());
            assert_eq!(quot[i].to_bits(), (a[i] / b[i]).to_bits());
            let want = super::super::kquant_util::nearest_int(a[i] * 3.0).clamp(-4, 5);
            assert_eq!(codes[i], want);
            assert_eq!(neg[i].to_bits(), (-a[i]).to_bits());
        }
        let eq = [false, true, true, true, false, false, false, true];
        assert_eq!(V::mask_to_array(va.eq(vb)), eq);
        assert_eq!(V::mask_to_array(!va.gt(vb) & va.eq(vb)), eq);
    }

    #[test]
    fn lane_ops_match_scalar() {
        check_lanes::<F32x8>();
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            check_lanes::<Avx2F32x8>();
        }
    }

    #[test]
    fn transpose_gathers_sub_blocks() {
        let x: Vec<f32> = (0..300).map(|v| v as f32).collect();
        let t: [F32x8; 16] = transpose_in(&x, 10, 32);
        for (i, row) in t.iter().enumerate() {
            for j in 0..LANES {
                assert_eq!(row.0[j], (10 + 32 * j + i) as f32);
            }
        }
    }
}
