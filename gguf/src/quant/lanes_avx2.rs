//! The AVX2 implementation of [`Lanes`]: eight f32 lanes in one `__m256`, each operation one
//! AVX/AVX2 instruction that performs the scalar IEEE operation per lane (no FMA).
//!
//! Invariant: values of [`Avx2F32x8`] are only created and used on a CPU that supports AVX2 —
//! in practice only in block quantizers built by `with_avx2!`, which calls them after runtime
//! detection (and in tests, after the same check). Every `unsafe` block below relies on it:
//! the intrinsics need nothing else (no pointers except the array loads and stores, which read
//! and write exactly eight f32/i32 through references).

use std::arch::x86_64::*;
use std::ops::{Add, BitAnd, Div, Mul, Neg, Not, Sub};

use super::{LANES, Lanes};

/// Eight f32 lanes in an AVX register (only on CPUs with AVX2, see the module invariant).
#[derive(Clone, Copy, Debug)]
pub(in super::super) struct Avx2F32x8(__m256);

/// Eight lane conditions (all ones or zero per lane).
#[derive(Clone, Copy, Debug)]
pub(in super::super) struct Avx2Mask(__m256);

/// Eight i32 lanes.
#[derive(Clone, Copy, Debug)]
pub(in super::super) struct Avx2Int(__m256i);

impl Lanes for Avx2F32x8 {
    type Mask = Avx2Mask;
    type Int = Avx2Int;

    #[inline(always)]
    fn splat(v: f32) -> Self {
        // SAFETY: AVX2 is available (module invariant).
        Avx2F32x8(unsafe { _mm256_set1_ps(v) })
    }
    #[inline(always)]
    fn from_array(a: [f32; LANES]) -> Self {
        // SAFETY: AVX2 is available (module invariant); reads the eight f32 of `a`.
        Avx2F32x8(unsafe { _mm256_loadu_ps(a.as_ptr()) })
    }
    #[inline(always)]
    fn to_array(self) -> [f32; LANES] {
        let mut a = [0f32; LANES];
        // SAFETY: AVX2 is available (module invariant); writes the eight f32 of `a`.
        unsafe { _mm256_storeu_ps(a.as_mut_ptr(), self.0) };
        a
    }
    #[inline(always)]
    fn abs(self) -> Self {
        // SAFETY: AVX2 is available (module invariant). Clears the sign bit, as `f32::abs`.
        Avx2F32x8(unsafe { _mm256_andnot_ps(_mm256_set1_ps(-0.0), self.0) })
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        // SAFETY: AVX2 is available (module invariant).
        Avx2F32x8(unsafe { _mm256_sqrt_ps(self.0) })
    }
    #[inline(always)]
    fn lt(self, o: Self) -> Avx2Mask {
        // SAFETY: AVX2 is available (module invariant). Ordered, quiet: false with NaN.
        Avx2Mask(unsafe { _mm256_cmp_ps::<_CMP_LT_OQ>(self.0, o.0) })
    }
    #[inline(always)]
    fn gt(self, o: Self) -> Avx2Mask {
        // SAFETY: AVX2 is available (module invariant). Ordered, quiet: false with NaN.
        Avx2Mask(unsafe { _mm256_cmp_ps::<_CMP_GT_OQ>(self.0, o.0) })
    }
    #[inline(always)]
    fn eq(self, o: Self) -> Avx2Mask {
        // SAFETY: AVX2 is available (module invariant). Ordered, quiet: false with NaN.
        Avx2Mask(unsafe { _mm256_cmp_ps::<_CMP_EQ_OQ>(self.0, o.0) })
    }
    #[inline(always)]
    fn select(m: Avx2Mask, a: Self, b: Self) -> Self {
        // SAFETY: AVX2 is available (module invariant). Takes `a` where the mask is set.
        Avx2F32x8(unsafe { _mm256_blendv_ps(b.0, a.0, m.0) })
    }
    #[inline(always)]
    fn mask_to_array(m: Avx2Mask) -> [bool; LANES] {
        // SAFETY: AVX2 is available (module invariant).
        let bits = unsafe { _mm256_movemask_ps(m.0) };
        std::array::from_fn(|j| bits >> j & 1 != 0)
    }
    #[inline(always)]
    fn nearest_int_clamped(self, lo: i32, hi: i32) -> Avx2Int {
        // SAFETY: AVX2 is available (module invariant). The integer steps of `nearest_int`
        // on the bits of `f + 1.5·2^23`, then max/min as `i32::clamp`.
        Avx2Int(unsafe {
            let v = _mm256_castps_si256(_mm256_add_ps(self.0, _mm256_set1_ps(12_582_912.0)));
            let v = _mm256_and_si256(v, _mm256_set1_epi32(0x007F_FFFF));
            let v = _mm256_sub_epi32(v, _mm256_set1_epi32(0x0040_0000));
            _mm256_min_epi32(
                _mm256_max_epi32(v, _mm256_set1_epi32(lo)),
                _mm256_set1_epi32(hi),
            )
        })
    }
    #[inline(always)]
    fn int_to_f32(i: Avx2Int) -> Self {
        // SAFETY: AVX2 is available (module invariant). Rounds to nearest even, as `as f32`.
        Avx2F32x8(unsafe { _mm256_cvtepi32_ps(i.0) })
    }
    #[inline(always)]
    fn int_to_array(i: Avx2Int) -> [i32; LANES] {
        let mut a = [0i32; LANES];
        // SAFETY: AVX2 is available (module invariant); writes the eight i32 of `a`.
        unsafe { _mm256_storeu_si256(a.as_mut_ptr().cast(), i.0) };
        a
    }
}

macro_rules! avx_op {
    ($t:ident, $tr:ident, $f:ident, $intrinsic:ident) => {
        impl $tr for $t {
            type Output = $t;
            #[inline(always)]
            fn $f(self, o: $t) -> $t {
                // SAFETY: AVX2 is available (module invariant).
                $t(unsafe { $intrinsic(self.0, o.0) })
            }
        }
    };
}
avx_op!(Avx2F32x8, Add, add, _mm256_add_ps);
avx_op!(Avx2F32x8, Sub, sub, _mm256_sub_ps);
avx_op!(Avx2F32x8, Mul, mul, _mm256_mul_ps);
avx_op!(Avx2F32x8, Div, div, _mm256_div_ps);
avx_op!(Avx2Mask, BitAnd, bitand, _mm256_and_ps);

impl Neg for Avx2F32x8 {
    type Output = Avx2F32x8;
    #[inline(always)]
    fn neg(self) -> Avx2F32x8 {
        // SAFETY: AVX2 is available (module invariant). Flips the sign bit, as `-v`.
        Avx2F32x8(unsafe { _mm256_xor_ps(self.0, _mm256_set1_ps(-0.0)) })
    }
}

impl Not for Avx2Mask {
    type Output = Avx2Mask;
    #[inline(always)]
    fn not(self) -> Avx2Mask {
        // SAFETY: AVX2 is available (module invariant).
        Avx2Mask(unsafe { _mm256_xor_ps(self.0, _mm256_castsi256_ps(_mm256_set1_epi32(-1))) })
    }
}
