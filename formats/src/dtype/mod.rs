//! Element types of checkpoint tensors and the conversions between their bytes and `f32`.
//!
//! Merge math runs on `f32` values. A recipe's `dtype` (the math dtype) is emulated by rounding
//! values to that type ([`DType::round`]); output conversion rounds to nearest even, as PyTorch
//! does, via the `half` crate.

use half::f16;

pub mod slices;

/// A tensor element type, named as in safetensors headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE binary64.
    F64,
    /// Signed 64-bit integer.
    I64,
    /// Signed 32-bit integer.
    I32,
    /// Signed 16-bit integer.
    I16,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 8-bit integer.
    U8,
    /// Unsigned 16-bit integer.
    U16,
    /// Unsigned 32-bit integer.
    U32,
    /// Unsigned 64-bit integer.
    U64,
    /// Boolean (one byte).
    Bool,
    /// 8-bit float, e4m3.
    F8E4M3,
    /// 8-bit float, e5m2.
    F8E5M2,
}

impl DType {
    /// Parses a safetensors dtype string (`"BF16"`, `"F32"`, ...).
    pub fn from_safetensors(s: &str) -> Option<DType> {
        Some(match s {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "F64" => DType::F64,
            "I64" => DType::I64,
            "I32" => DType::I32,
            "I16" => DType::I16,
            "I8" => DType::I8,
            "U8" => DType::U8,
            "U16" => DType::U16,
            "U32" => DType::U32,
            "U64" => DType::U64,
            "BOOL" => DType::Bool,
            "F8_E4M3" => DType::F8E4M3,
            "F8_E5M2" => DType::F8E5M2,
            _ => return None,
        })
    }

    /// The safetensors spelling of this dtype.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F64 => "F64",
            DType::I64 => "I64",
            DType::I32 => "I32",
            DType::I16 => "I16",
            DType::I8 => "I8",
            DType::U8 => "U8",
            DType::U16 => "U16",
            DType::U32 => "U32",
            DType::U64 => "U64",
            DType::Bool => "BOOL",
            DType::F8E4M3 => "F8_E4M3",
            DType::F8E5M2 => "F8_E5M2",
        }
    }

    /// Parses a recipe dtype (`bfloat16`, `float16`, `float32`, `int64`, optionally prefixed
    /// with `torch.`), as mergekit accepts them.
    pub fn from_recipe(s: &str) -> Option<DType> {
        let s = s.strip_prefix("torch.").unwrap_or(s);
        Some(match s {
            "bfloat16" => DType::BF16,
            "float16" => DType::F16,
            "float32" => DType::F32,
            "int64" => DType::I64,
            _ => return None,
        })
    }

    /// The name transformers writes into `config.json` (`torch_dtype` / `dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F64 => "float64",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::U16 => "uint16",
            DType::U32 => "uint32",
            DType::U64 => "uint64",
            DType::Bool => "bool",
            DType::F8E4M3 => "float8_e4m3fn",
            DType::F8E5M2 => "float8_e5m2",
        }
    }

    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 | DType::U64 => 8,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::I8 | DType::U8 | DType::Bool | DType::F8E4M3 | DType::F8E5M2 => 1,
        }
    }

    /// Whether merge math can read this dtype (F32, F16, BF16).
    pub fn is_math(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// Rounds an `f32` value to this dtype and back: the value a tensor of this dtype would
    /// hold. Identity for `F32` and for non-math dtypes.
    #[inline]
    pub fn round(self, x: f32) -> f32 {
        match self {
            DType::BF16 => slices::round_bf16(x),
            DType::F16 => f16::from_f32(x).to_f32(),
            _ => x,
        }
    }

    /// Rounds every value of `xs` in place to this dtype (see [`DType::round`]).
    pub fn round_slice(self, xs: &mut [f32]) {
        match self {
            DType::BF16 => slices::round_bf16_slice(xs),
            DType::F16 => slices::round_f16_slice(xs),
            _ => {}
        }
    }

    /// Decodes little-endian elements of a math dtype into `out` (`bytes.len()` must equal
    /// `out.len() * self.size()`).
    pub fn decode_f32(self, bytes: &[u8], out: &mut [f32]) {
        debug_assert_eq!(bytes.len(), out.len() * self.size());
        match self {
            DType::F32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            DType::F16 => slices::decode_f16(bytes, out),
            DType::BF16 => slices::decode_bf16(bytes, out),
            DType::F64 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                    *o = f64::from_le_bytes(c.try_into().unwrap()) as f32;
                }
            }
            other => unreachable!("decode_f32 on non-math dtype {other:?}"),
        }
    }

    /// Widens, in place, elements stored as little-endian bytes of this math dtype at the start
    /// of `buf`'s memory (`buf.len()` elements, `buf.len() * self.size()` bytes) into `f32`s.
    pub fn widen_in_place(self, buf: &mut [f32]) {
        match self {
            DType::F32 => {
                for x in buf.iter_mut() {
                    *x = f32::from_bits(u32::from_le(x.to_bits()));
                }
            }
            DType::F16 => slices::widen_half_in_place(buf, slices::decode_f16),
            DType::BF16 => slices::widen_half_in_place(buf, slices::decode_bf16),
            other => unreachable!("widen_in_place on {other:?}"),
        }
    }

    /// Encodes `values` into little-endian bytes of this math dtype, appending to `out`.
    /// Rounds to nearest even.
    pub fn encode_f32(self, values: &[f32], out: &mut Vec<u8>) {
        out.reserve(values.len() * self.size());
        match self {
            DType::F32 => {
                for v in values {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            DType::F16 => slices::encode_f16(values, out),
            DType::BF16 => slices::encode_bf16(values, out),
            DType::F64 => {
                for v in values {
                    out.extend_from_slice(&(*v as f64).to_le_bytes());
                }
            }
            other => unreachable!("encode_f32 on non-math dtype {other:?}"),
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.safetensors_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_bf16_and_f16() {
        let xs = [0.0f32, -1.5, 3.140625, 65504.0, 1e-8];
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let mut bytes = Vec::new();
            dt.encode_f32(&xs, &mut bytes);
            let mut back = vec![0.0; xs.len()];
            dt.decode_f32(&bytes, &mut back);
            for (x, b) in xs.iter().zip(&back) {
                assert_eq!(dt.round(*x), *b, "{dt} {x}");
            }
        }
    }

    #[test]
    fn recipe_names() {
        assert_eq!(DType::from_recipe("torch.bfloat16"), Some(DType::BF16));
        assert_eq!(DType::from_recipe("bf16"), None);
        assert_eq!(DType::from_recipe("float64"), None);
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 0.3 in bf16 is 0.30078125 (the value mergekit's weights take with dtype bfloat16)
        assert_eq!(DType::BF16.round(0.3), 0.30078125);
    }
}
