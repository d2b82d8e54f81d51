//! Counter-based random numbers for the random merge methods (DARE, DELLA, ...).
//!
//! A draw is a pure function of (seed, tensor name, model index, element index): no stream
//! state, so any chunk of any tensor can be drawn by any thread in any order and the result is
//! the same bits on every machine. A draw is SplitMix64's finaliser applied once to a counter
//! built from the element index, the model index and a key derived from the seed and the
//! tensor name (SHA-256): cheap enough for DARE's one draw per element, and plenty for
//! Bernoulli masks (the tests check keep rates and independence between models).
//!
//! The hot loops draw in blocks ([`RngKey::draws24`], [`RngKey::keep_words`]): the same
//! function of the same counters, eight lanes at a time with AVX-512 where the CPU has it
//! (detected at run time) and a portable loop otherwise, so the bits never depend on the
//! machine. A uniform compared with a probability is an integer comparison of its 24 random
//! bits with [`threshold24`]: `uniform(m, i) < p` exactly when `draw24(m, i) < threshold24(p)`.

use sha2::{Digest, Sha256};

/// The per-tensor key of the random draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RngKey(u64, u64);

impl RngKey {
    /// Derives the key for `tensor` under `seed`.
    pub fn new(seed: u64, tensor: &str) -> Self {
        let mut h = Sha256::new();
        h.update(seed.to_le_bytes());
        h.update(tensor.as_bytes());
        let d = h.finalize();
        RngKey(
            u64::from_le_bytes(d[0..8].try_into().unwrap()),
            u64::from_le_bytes(d[8..16].try_into().unwrap()),
        )
    }

    /// 64 random bits for element `index` of model `model` (any other use: a distinct
    /// `model` value, e.g. `u32::MAX`).
    #[inline]
    pub fn bits(&self, model: u32, index: u64) -> u64 {
        // one SplitMix64 finalisation of a counter that is distinct for every (model, index)
        // pair of a tensor: the index strides by an odd constant, each model is offset by
        // another, and the tensor key is mixed in
        let counter = index
            .wrapping_mul(INDEX_STRIDE)
            .wrapping_add((model as u64 + 1).wrapping_mul(MODEL_STRIDE))
            .wrapping_add(self.1);
        mix(counter ^ self.0)
    }

    /// The 24 random bits behind [`RngKey::uniform`] (`uniform = draw24 · 2⁻²⁴`).
    #[inline]
    pub fn draw24(&self, model: u32, index: u64) -> u32 {
        (self.bits(model, index) >> 40) as u32
    }

    /// The counter of element 0 of model `model` (element `i` adds `i · STRIDE`).
    #[inline]
    fn counter0(&self, model: u32) -> u64 {
        (model as u64 + 1)
            .wrapping_mul(MODEL_STRIDE)
            .wrapping_add(self.1)
    }

    /// `out[l] = draw24(model, first + l)` for every `l`.
    pub fn draws24(&self, model: u32, first: u64, out: &mut [u32]) {
        #[cfg(target_arch = "x86_64")]
        if avx512::available() {
            // SAFETY: the CPU supports AVX-512F and AVX-512DQ (checked just above).
            unsafe { avx512::draws24(self.0, self.counter0(model), first, out) };
            return;
        }
        for (l, o) in out.iter_mut().enumerate() {
            *o = self.draw24(model, first + l as u64);
        }
    }

    /// Packed Bernoulli draws: bit `b` of `out[w]` is `draw24(model, first + 64·w + b) < t`
    /// for the first `n` elements, and 0 past them (`out.len()` must be `n.div_ceil(64)`).
    pub fn keep_words(&self, model: u32, first: u64, t: u32, n: usize, out: &mut [u64]) {
        assert_eq!(out.len(), n.div_ceil(64), "keep_words: {n} elements");
        #[cfg(target_arch = "x86_64")]
        if avx512::available() {
            // SAFETY: the CPU supports AVX-512F and AVX-512DQ (checked just above).
            unsafe { avx512::keep_words(self.0, self.counter0(model), first, t, out) };
        } else {
            self.keep_words_portable(model, first, t, out);
        }
        #[cfg(not(target_arch = "x86_64"))]
        self.keep_words_portable(model, first, t, out);
        if !n.is_multiple_of(64) {
            // the draws past the end are computed (they are pure) but never kept
            out[n / 64] &= (1u64 << (n % 64)) - 1;
        }
    }

    fn keep_words_portable(&self, model: u32, first: u64, t: u32, out: &mut [u64]) {
        for (w, word) in out.iter_mut().enumerate() {
            let base = first + 64 * w as u64;
            let mut bits = 0u64;
            for b in 0..64 {
                bits |= ((self.draw24(model, base + b) < t) as u64) << b;
            }
            *word = bits;
        }
    }

    /// A uniform `f32` in `[0, 1)` with 24 random bits.
    #[inline]
    pub fn uniform(&self, model: u32, index: u64) -> f32 {
        (self.bits(model, index) >> 40) as f32 * (1.0 / 16_777_216.0)
    }

    /// A uniform `f64` in `[0, 1)` with 53 random bits.
    #[inline]
    pub fn uniform_f64(&self, model: u32, index: u64) -> f64 {
        (self.bits(model, index) >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }
}

/// The counter stride of one element.
const INDEX_STRIDE: u64 = 0xD1B5_4A32_D192_ED03;
/// The counter offset of one model.
const MODEL_STRIDE: u64 = 0xAEF1_7502_108E_F2D9;
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
const MIX1: u64 = 0xBF58_476D_1CE4_E5B9;
const MIX2: u64 = 0x94D0_49BB_1331_11EB;

/// The integer threshold of a probability: `u · 2⁻²⁴ < p` exactly when `u < threshold24(p)`
/// for every 24-bit `u` (`u · 2⁻²⁴` is exact, so the comparison is one of reals, and
/// `u < x ⇔ u < ⌈x⌉` for an integer `u`). NaN keeps nothing.
pub fn threshold24(p: f32) -> u32 {
    let x = (p as f64 * 16_777_216.0).ceil();
    if x >= 16_777_216.0 {
        1 << 24
    } else if x > 0.0 {
        x as u32
    } else {
        0
    }
}

#[inline]
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(MIX1);
    z = (z ^ (z >> 27)).wrapping_mul(MIX2);
    z ^ (z >> 31)
}

/// The eight-lane draws. Only the top 24 bits of a finalised counter are used, and the last
/// step of [`mix`] (`z ^ z >> 31`) leaves them unchanged, so it is skipped.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{GOLDEN, INDEX_STRIDE, MIX1, MIX2};
    use std::arch::x86_64::*;

    /// Whether the CPU can run this module's functions.
    #[inline]
    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
    }

    /// The counters of elements `first .. first + 8`, and the step to the next eight.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    fn lanes(c0: u64, first: u64) -> (__m512i, __m512i) {
        let start = first.wrapping_mul(INDEX_STRIDE).wrapping_add(c0);
        let lane = |l: u64| start.wrapping_add(l.wrapping_mul(INDEX_STRIDE)) as i64;
        let c = _mm512_set_epi64(
            lane(7),
            lane(6),
            lane(5),
            lane(4),
            lane(3),
            lane(2),
            lane(1),
            lane(0),
        );
        (c, _mm512_set1_epi64(8u64.wrapping_mul(INDEX_STRIDE) as i64))
    }

    /// `draw24` of eight counters (as 64-bit lanes holding values below 2²⁴).
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    fn draw8(counter: __m512i, k0: __m512i) -> __m512i {
        let mut z = _mm512_add_epi64(
            _mm512_xor_si512(counter, k0),
            _mm512_set1_epi64(GOLDEN as i64),
        );
        z = _mm512_xor_si512(z, _mm512_srli_epi64::<30>(z));
        z = _mm512_mullo_epi64(z, _mm512_set1_epi64(MIX1 as i64));
        z = _mm512_xor_si512(z, _mm512_srli_epi64::<27>(z));
        z = _mm512_mullo_epi64(z, _mm512_set1_epi64(MIX2 as i64));
        _mm512_srli_epi64::<40>(z)
    }

    /// See [`super::RngKey::draws24`] (`c0`: the model's counter of element 0).
    #[target_feature(enable = "avx512f,avx512dq")]
    pub fn draws24(k0: u64, c0: u64, first: u64, out: &mut [u32]) {
        let k = _mm512_set1_epi64(k0 as i64);
        let (mut c, step) = lanes(c0, first);
        let mut blocks = out.chunks_exact_mut(8);
        for o in &mut blocks {
            let d = _mm512_cvtepi64_epi32(draw8(c, k));
            // SAFETY: `o` is 8 `u32`s (32 bytes); the store is unaligned.
            unsafe { _mm256_storeu_si256(o.as_mut_ptr() as *mut __m256i, d) };
            c = _mm512_add_epi64(c, step);
        }
        let rest = blocks.into_remainder();
        if !rest.is_empty() {
            let mut tmp = [0u32; 8];
            let d = _mm512_cvtepi64_epi32(draw8(c, k));
            // SAFETY: `tmp` is 8 `u32`s (32 bytes); the store is unaligned.
            unsafe { _mm256_storeu_si256(tmp.as_mut_ptr() as *mut __m256i, d) };
            rest.copy_from_slice(&tmp[..rest.len()]);
        }
    }

    /// See [`super::RngKey::keep_words`]: every word gets 64 draws.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub fn keep_words(k0: u64, c0: u64, first: u64, t: u32, out: &mut [u64]) {
        let k = _mm512_set1_epi64(k0 as i64);
        let t = _mm512_set1_epi64(t as i64);
        let (mut c, step) = lanes(c0, first);
        for word in out.iter_mut() {
            let mut bits = 0u64;
            for b in 0..8 {
                let m = _mm512_cmplt_epu64_mask(draw8(c, k), t);
                bits |= (m as u64) << (8 * b);
                c = _mm512_add_epi64(c, step);
            }
            *word = bits;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_draws_are_the_element_draws() {
        let k = RngKey::new(9, "model.layers.3.self_attn.q_proj.weight");
        for (model, first, n) in [
            (0u32, 0u64, 1usize),
            (2, 5, 63),
            (1, 1 << 40, 64),
            (3, 77, 1000),
        ] {
            let mut d = vec![0u32; n];
            k.draws24(model, first, &mut d);
            let want: Vec<u32> = (0..n as u64).map(|l| k.draw24(model, first + l)).collect();
            assert_eq!(d, want);
            for p in [0.0f32, 1e-9, 0.3, 0.5, 0.53125, 1.0 - f32::EPSILON, 1.0] {
                let t = threshold24(p);
                let mut w = vec![0u64; n.div_ceil(64)];
                k.keep_words(model, first, t, n, &mut w);
                let mut portable = vec![0u64; n.div_ceil(64)];
                k.keep_words_portable(model, first, t, &mut portable);
                for l in 0..n {
                    let keep = k.uniform(model, first + l as u64) < p;
                    assert_eq!((w[l / 64] >> (l % 64)) & 1 == 1, keep, "p={p} l={l}");
                    assert_eq!((portable[l / 64] >> (l % 64)) & 1 == 1, keep);
                }
                if n % 64 != 0 {
                    assert_eq!(w[n / 64] >> (n % 64), 0);
                }
            }
        }
    }

    #[test]
    fn threshold_matches_the_float_comparison() {
        // every 24-bit draw near the thresholds of awkward probabilities
        for p in [
            1e-30f32,
            0.1,
            0.15,
            0.3,
            1.0 / 3.0,
            0.5,
            0.85,
            0.999_999_9,
            1.0,
            2.0,
        ] {
            let t = threshold24(p);
            let around = t.saturating_sub(3)..(t + 3).min(1 << 24);
            for u in (0..8).chain(around).chain((1 << 24) - 8..1 << 24) {
                let float = u as f32 * (1.0 / 16_777_216.0) < p;
                assert_eq!(u < t, float, "p={p} u={u}");
            }
        }
        assert_eq!(threshold24(f32::NAN), 0);
        assert_eq!(threshold24(-0.5), 0);
    }

    #[test]
    fn deterministic_and_uniform() {
        let k = RngKey::new(42, "model.layers.0.mlp.up_proj.weight");
        assert_eq!(k, RngKey::new(42, "model.layers.0.mlp.up_proj.weight"));
        assert_ne!(k, RngKey::new(43, "model.layers.0.mlp.up_proj.weight"));
        let n = 100_000u64;
        let kept = (0..n).filter(|&i| k.uniform(0, i) < 0.3).count() as f64 / n as f64;
        assert!((kept - 0.3).abs() < 0.01, "{kept}");
        let other = (0..n)
            .filter(|&i| k.uniform(1, i) < 0.3 && k.uniform(0, i) < 0.3)
            .count() as f64
            / n as f64;
        assert!(
            (other - 0.09).abs() < 0.01,
            "models must draw independently: {other}"
        );
    }
}
