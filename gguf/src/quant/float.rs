//! F32, F16 and BF16 rows, and the scalar fp16/bf16 conversions every block format uses for its
//! scales.
//!
//! The conversions follow ggml's reference rules exactly (spec `gguf.md` §2.0/§2.1 and the
//! fixture notes): f32 → f16 rounds to nearest even, keeps subnormals, overflows to ±inf from
//! 65520 and turns every NaN into `sign | 0x7E00`; f32 → bf16 rounds to nearest even and makes
//! NaNs quiet with `(u >> 16) | 0x40`. The `half` crate keeps NaN payload bits, so the
//! conversions are written out here with integer arithmetic.

/// Converts an f32 to IEEE binary16 bits the way ggml stores fp16 scales and F16 tensors.
pub fn f32_to_f16(f: f32) -> u16 {
    let bits = f.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let abs = bits & 0x7FFF_FFFF;
    if abs > 0x7F80_0000 {
        // Any NaN: a quiet NaN without payload, sign kept.
        return sign | 0x7E00;
    }
    if abs >= 0x477F_F000 {
        // 65520 is halfway between 65504 (odd mantissa) and 65536: it rounds to infinity, as
        // does everything above it, including infinity itself.
        return sign | 0x7C00;
    }
    if abs >= 0x3880_0000 {
        // Normal in f16: re-bias the exponent (127 → 15) and round the 13 dropped bits to
        // nearest even. A carry out of the mantissa correctly bumps the exponent.
        let rebased = abs - ((127 - 15) << 23);
        let rounded = (rebased + 0x0FFF + ((rebased >> 13) & 1)) >> 13;
        return sign | rounded as u16;
    }
    if abs <= 0x3300_0000 {
        // At or below 2^-25 (half the smallest subnormal; the tie goes to even = 0).
        return sign;
    }
    // Subnormal in f16: value / 2^-24 = mantissa · 2^(exp - 126), exp ≤ 112 so shift ≥ 14.
    let exp = abs >> 23;
    let mant = (abs & 0x007F_FFFF) | 0x0080_0000;
    let shift = 126 - exp;
    let mut h = mant >> shift;
    let rem = mant & ((1 << shift) - 1);
    let half = 1 << (shift - 1);
    if rem > half || (rem == half && (h & 1) == 1) {
        h += 1;
    }
    sign | h as u16
}

/// Converts IEEE binary16 bits to f32 (exact for every finite value and infinity).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1F) as u32;
    let mant = (h & 0x03FF) as u32;
    let bits = match exp {
        0 if mant == 0 => sign,
        0 => {
            // Subnormal: mant · 2^-24, exact in f32.
            let v = mant as f32 * f32::from_bits(0x3380_0000);
            return if sign != 0 { -v } else { v };
        }
        0x1F => sign | 0x7F80_0000 | (mant << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

/// Converts an f32 to bfloat16 bits with ggml's rounding (nearest even, NaN made quiet).
pub fn f32_to_bf16(f: f32) -> u16 {
    let u = f.to_bits();
    if u & 0x7FFF_FFFF > 0x7F80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    // Cannot overflow: the largest finite magnitude plus 0x8000 stays below 2^32.
    ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) as u16
}

/// Converts bfloat16 bits to f32 (the 16 bits become the high half).
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Reads the little-endian fp16 at `bytes[off..off + 2]` as f32.
pub(super) fn read_f16(bytes: &[u8], off: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([bytes[off], bytes[off + 1]]))
}

/// Writes `v` rounded to fp16 at `bytes[off..off + 2]` (little-endian).
pub(super) fn write_f16(bytes: &mut [u8], off: usize, v: f32) {
    bytes[off..off + 2].copy_from_slice(&f32_to_f16(v).to_le_bytes());
}

/// F32 row: raw little-endian copy.
pub(super) fn quantize_f32(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.iter().zip(dst.chunks_exact_mut(4)) {
        out.copy_from_slice(&x.to_le_bytes());
    }
}

/// F16 row.
pub(super) fn quantize_f16(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.iter().zip(dst.chunks_exact_mut(2)) {
        out.copy_from_slice(&f32_to_f16(*x).to_le_bytes());
    }
}

/// BF16 row.
pub(super) fn quantize_bf16(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.iter().zip(dst.chunks_exact_mut(2)) {
        out.copy_from_slice(&f32_to_bf16(*x).to_le_bytes());
    }
}

/// F32 row back to floats.
pub(super) fn dequantize_f32(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(4).zip(dst.iter_mut()) {
        *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// F16 row back to floats.
pub(super) fn dequantize_f16(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *y = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    }
}

/// BF16 row back to floats.
pub(super) fn dequantize_bf16(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *y = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_known_values() {
        // Values from the IEEE 754 binary16 definition, independent of this code.
        assert_eq!(f32_to_f16(0.0), 0x0000);
        assert_eq!(f32_to_f16(-0.0), 0x8000);
        assert_eq!(f32_to_f16(1.0), 0x3C00);
        assert_eq!(f32_to_f16(-2.0), 0xC000);
        assert_eq!(f32_to_f16(65504.0), 0x7BFF);
        assert_eq!(f32_to_f16(65519.996), 0x7BFF);
        assert_eq!(f32_to_f16(65520.0), 0x7C00);
        assert_eq!(f32_to_f16(f32::INFINITY), 0x7C00);
        assert_eq!(f32_to_f16(f32::NEG_INFINITY), 0xFC00);
        assert_eq!(f32_to_f16(f32::from_bits(0x7F80_0001)), 0x7E00);
        assert_eq!(f32_to_f16(f32::from_bits(0xFFC1_2345)), 0xFE00);
        // Smallest subnormal 2^-24, and the ties around it.
        assert_eq!(f32_to_f16(2f32.powi(-24)), 0x0001);
        assert_eq!(f32_to_f16(2f32.powi(-25)), 0x0000);
        assert_eq!(f32_to_f16(1.5 * 2f32.powi(-24)), 0x0002);
        assert_eq!(f32_to_f16(2.5 * 2f32.powi(-24)), 0x0002);
        // Largest subnormal rounds up into the smallest normal.
        assert_eq!(f32_to_f16(2f32.powi(-14) - 2f32.powi(-26)), 0x0400);
        // 1 + 2^-11 is halfway between 1 and the next f16: ties to even (1.0).
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3C00);
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3C02);
    }

    #[test]
    fn f16_roundtrip_all_finite() {
        for h in 0..=u16::MAX {
            let exp = (h >> 10) & 0x1F;
            if exp == 0x1F {
                continue;
            }
            assert_eq!(f32_to_f16(f16_to_f32(h)), h, "{h:#06x}");
        }
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8001), -(2f32.powi(-24)));
        assert_eq!(f16_to_f32(0x7C00), f32::INFINITY);
    }

    #[test]
    fn f16_matches_half_crate_except_nan_payloads() {
        // `half` is an independent RNE implementation: every non-NaN f32 (sampled with an odd
        // stride over all bit patterns) must convert identically.
        let mut bits = 0u32;
        let mut checked = 0;
        loop {
            let f = f32::from_bits(bits);
            if !f.is_nan() {
                assert_eq!(
                    f32_to_f16(f),
                    half::f16::from_f32(f).to_bits(),
                    "{bits:#010x}"
                );
                checked += 1;
            }
            match bits.checked_add(40_009) {
                Some(b) => bits = b,
                None => break,
            }
        }
        assert!(checked > 100_000);
        // Where ggml and `half` differ: `half` keeps NaN payload bits, ggml does not.
        let nan = f32::from_bits(0x7FA0_2000);
        assert_eq!(f32_to_f16(nan), 0x7E00);
        assert_ne!(half::f16::from_f32(nan).to_bits(), 0x7E00);
    }

    #[test]
    fn bf16_known_values() {
        assert_eq!(f32_to_bf16(1.0), 0x3F80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8000)), 0x3F80); // tie, even stays
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F81_8000)), 0x3F82); // tie, odd rounds up
        assert_eq!(f32_to_bf16(f32::from_bits(0x7F80_0001)), 0x7FC0);
        assert_eq!(f32_to_bf16(f32::from_bits(0xFF81_0000)), 0xFFC1);
        assert_eq!(f32_to_bf16(f32::MAX), 0x7F80);
        assert_eq!(bf16_to_f32(0xC000), -2.0);
    }
}
