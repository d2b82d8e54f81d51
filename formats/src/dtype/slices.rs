//! Whole-slice conversions between half-precision bytes and `f32`, at memory speed.
//!
//! A merge converts every element it reads and writes, so these loops are on the hot path of
//! every method. Per-element calls into `half` branch on the rounding bit (a coin flip on real
//! data) and dispatch on the CPU at every call; here:
//!
//! * bf16 is pure bit arithmetic (a widening shift to decode; an add-and-mask with a select for
//!   NaN to round), written so the compiler vectorises it;
//! * f16 uses the F16C instructions eight lanes at a time when the CPU has them (checked once
//!   per slice), else `half` element by element.
//!
//! Every function gives exactly the bits `half` gives (round to nearest, ties to even; NaN
//! made quiet with its sign and high payload kept): the tests sweep the f32 bit patterns.

use half::f16;

/// bf16 bits of `x` (nearest, ties to even; NaN quiet), without a data-dependent branch.
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let quiet = (b >> 16) | 0x0040;
    let nan = b & 0x7fff_ffff > 0x7f80_0000;
    (if nan { quiet } else { rounded }) as u16
}

/// `x` rounded to bf16 and back.
#[inline(always)]
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits((bf16_bits(x) as u32) << 16)
}

/// Whether the F16C conversions are available.
#[inline]
fn f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Decodes little-endian bf16 `bytes` into `out` (`bytes.len() == 2 * out.len()`).
pub fn decode_bf16(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
    }
}

/// Decodes little-endian f16 `bytes` into `out` (`bytes.len() == 2 * out.len()`).
pub fn decode_f16(bytes: &[u8], out: &mut [f32]) {
    let done = if f16c() {
        // SAFETY: the CPU has F16C and AVX (checked above).
        unsafe { x86::decode_f16(bytes, out) }
    } else {
        0
    };
    for (o, c) in out[done..]
        .iter_mut()
        .zip(bytes[2 * done..].chunks_exact(2))
    {
        *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
    }
}

/// Appends `values` as little-endian bf16 to `out`.
pub fn encode_bf16(values: &[f32], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + 2 * values.len(), 0);
    for (c, v) in out[start..].chunks_exact_mut(2).zip(values) {
        c.copy_from_slice(&bf16_bits(*v).to_le_bytes());
    }
}

/// Appends `values` as little-endian f16 to `out`.
pub fn encode_f16(values: &[f32], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + 2 * values.len(), 0);
    let dst = &mut out[start..];
    let done = if f16c() {
        // SAFETY: the CPU has F16C and AVX (checked above).
        unsafe { x86::encode_f16(values, dst) }
    } else {
        0
    };
    for (c, v) in dst[2 * done..].chunks_exact_mut(2).zip(&values[done..]) {
        c.copy_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
    }
}

/// Rounds every value of `xs` to bf16 in place.
pub fn round_bf16_slice(xs: &mut [f32]) {
    for x in xs {
        *x = round_bf16(*x);
    }
}

/// Rounds every value of `xs` to f16 in place.
pub fn round_f16_slice(xs: &mut [f32]) {
    let done = if f16c() {
        // SAFETY: the CPU has F16C and AVX (checked above).
        unsafe { x86::round_f16(xs) }
    } else {
        0
    };
    for x in &mut xs[done..] {
        *x = f16::from_f32(*x).to_f32();
    }
}

/// Widens, in place, `buf.len()` little-endian half-precision elements stored at the start of
/// `buf`'s memory into `f32`s, with `decode` converting a block of them.
pub fn widen_half_in_place(buf: &mut [f32], decode: fn(&[u8], &mut [f32])) {
    const B: usize = 64;
    let n = buf.len();
    let mut end = n;
    // back to front, a block at a time: block [s, e) reads bytes [2s, 2e) into a copy before
    // writing bytes [4s, 4e); 4s >= 2s, so no unread element below s is overwritten, and the
    // elements at and above e are already done
    let mut raw = [0u8; 2 * B];
    let mut vals = [0f32; B];
    while end > 0 {
        let start = end.saturating_sub(B);
        let k = end - start;
        {
            // SAFETY: bytes [2·start, 2·end) lie within `buf`'s 4n bytes, which we hold
            // mutably; the shared view ends before `buf` is written below.
            let bytes = unsafe {
                std::slice::from_raw_parts((buf.as_ptr() as *const u8).add(2 * start), 2 * k)
            };
            raw[..2 * k].copy_from_slice(bytes);
        }
        decode(&raw[..2 * k], &mut vals[..k]);
        buf[start..end].copy_from_slice(&vals[..k]);
        end = start;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The F16C loops: eight lanes per instruction; each returns how many elements it did
    //! (a multiple of 8), the caller does the rest.
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support F16C and AVX.
    #[target_feature(enable = "f16c,avx")]
    pub unsafe fn decode_f16(bytes: &[u8], out: &mut [f32]) -> usize {
        let n = out.len().min(bytes.len() / 2) / 8 * 8;
        for i in (0..n).step_by(8) {
            // SAFETY: elements i..i+8 are in bounds of both slices (n is a bound of both);
            // unaligned loads and stores are used.
            unsafe {
                let h = _mm_loadu_si128(bytes.as_ptr().add(2 * i) as *const __m128i);
                _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            }
        }
        n
    }

    /// # Safety
    /// The CPU must support F16C and AVX.
    #[target_feature(enable = "f16c,avx")]
    pub unsafe fn encode_f16(values: &[f32], out: &mut [u8]) -> usize {
        let n = values.len().min(out.len() / 2) / 8 * 8;
        for i in (0..n).step_by(8) {
            // SAFETY: as in decode_f16.
            unsafe {
                let v = _mm256_loadu_ps(values.as_ptr().add(i));
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                _mm_storeu_si128(out.as_mut_ptr().add(2 * i) as *mut __m128i, h);
            }
        }
        n
    }

    /// # Safety
    /// The CPU must support F16C and AVX.
    #[target_feature(enable = "f16c,avx")]
    pub unsafe fn round_f16(xs: &mut [f32]) -> usize {
        let n = xs.len() / 8 * 8;
        for i in (0..n).step_by(8) {
            // SAFETY: as in decode_f16.
            unsafe {
                let p = xs.as_mut_ptr().add(i);
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(p));
                _mm256_storeu_ps(p, _mm256_cvtph_ps(h));
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    /// Every 1021st f32 bit pattern plus the edge cases (ties, subnormals, NaN, infinities).
    fn sweep() -> Vec<f32> {
        let mut v: Vec<f32> = (0..=u32::MAX / 1021)
            .map(|i| f32::from_bits(i * 1021))
            .collect();
        for b in [
            0x3f80_8000u32,
            0x3f81_8000,
            0x7f7f_8000,
            0x0000_8000,
            0x8001_8000,
            0x3380_0000, // 2^-24: smallest f16 subnormal
            0x3300_0000, // 2^-25: a tie to zero
            0x477f_f000, // 65520: rounds to f16 infinity
            0x7f80_0000,
            0xff80_0000,
            0x7f80_0001,
            0x7fc0_0000,
            0xffbf_ffff,
        ] {
            v.push(f32::from_bits(b));
        }
        v
    }

    #[test]
    fn bf16_and_f16_slices_match_half_bit_for_bit() {
        let xs = sweep();
        let mut b = Vec::new();
        encode_bf16(&xs, &mut b);
        let mut h = Vec::new();
        encode_f16(&xs, &mut h);
        let (mut rb, mut rh) = (xs.clone(), xs.clone());
        round_bf16_slice(&mut rb);
        round_f16_slice(&mut rh);
        for (i, x) in xs.iter().enumerate() {
            let want_b = bf16::from_f32(*x).to_bits();
            let want_h = f16::from_f32(*x).to_bits();
            assert_eq!(
                u16::from_le_bytes([b[2 * i], b[2 * i + 1]]),
                want_b,
                "{x:e}"
            );
            assert_eq!(
                u16::from_le_bytes([h[2 * i], h[2 * i + 1]]),
                want_h,
                "{x:e}"
            );
            assert_eq!(rb[i].to_bits(), bf16::from_bits(want_b).to_f32().to_bits());
            assert_eq!(rh[i].to_bits(), f16::from_bits(want_h).to_f32().to_bits());
        }
        let (mut db, mut dh) = (vec![0f32; xs.len()], vec![0f32; xs.len()]);
        decode_bf16(&b, &mut db);
        decode_f16(&h, &mut dh);
        assert_eq!(
            db.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            rb.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(
            dh.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            rh.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn every_f16_pattern_decodes_as_half_does() {
        let bytes: Vec<u8> = (0..=u16::MAX).flat_map(|b| b.to_le_bytes()).collect();
        let mut out = vec![0f32; 1 << 16];
        decode_f16(&bytes, &mut out);
        for (b, o) in (0..=u16::MAX).zip(&out) {
            assert_eq!(o.to_bits(), f16::from_bits(b).to_f32().to_bits(), "{b:#x}");
        }
    }

    #[test]
    fn widening_in_place_equals_decoding() {
        for n in [0usize, 1, 7, 63, 64, 65, 200] {
            let xs: Vec<f32> = (0..n).map(|i| i as f32 * 0.37 - 11.0).collect();
            for (enc, dec) in [
                (
                    encode_bf16 as fn(&[f32], &mut Vec<u8>),
                    decode_bf16 as fn(&[u8], &mut [f32]),
                ),
                (encode_f16, decode_f16),
            ] {
                let mut bytes = Vec::new();
                enc(&xs, &mut bytes);
                let mut want = vec![0f32; n];
                dec(&bytes, &mut want);
                let mut buf = vec![0f32; n];
                // SAFETY: test-only byte view of buf's memory (2n <= 4n bytes).
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        bytes.as_ptr(),
                        buf.as_mut_ptr() as *mut u8,
                        bytes.len(),
                    );
                }
                widen_half_in_place(&mut buf, dec);
                assert_eq!(buf, want, "n = {n}");
            }
        }
    }
}
