//! Counter-based random numbers for the random merge methods (DARE, DELLA, ...).
//!
//! A draw is a pure function of (seed, tensor name, model index, element index): no stream
//! state, so any chunk of any tensor can be drawn by any thread in any order and the result is
//! the same bits on every machine. A draw is SplitMix64's finaliser applied once to a counter
//! built from the element index, the model index and a key derived from the seed and the
//! tensor name (SHA-256): cheap enough for DARE's one draw per element, and plenty for
//! Bernoulli masks (the tests check keep rates and independence between models).

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
            .wrapping_mul(0xD1B5_4A32_D192_ED03)
            .wrapping_add((model as u64 + 1).wrapping_mul(0xAEF1_7502_108E_F2D9))
            .wrapping_add(self.1);
        mix(counter ^ self.0)
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

#[inline]
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

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
