//! Math-dtype rounding for hot loops, monomorphised per dtype ([`Round`]) and branch-free for
//! bf16. `half`'s bf16 conversion branches on the rounding bit, which is a coin flip on real
//! data; the add-and-mask form below gives the same bits (round to nearest, ties to even, NaN
//! handled by `half`) without a data-dependent branch, and lets F32 kernels compile to plain
//! arithmetic. Values are the same as [`DType::round`].

use crate::dtype::DType;

/// Rounding of `f32` values to a math dtype, chosen at compile time.
pub trait Round: Copy + Send + Sync + 'static {
    /// The dtype rounded to.
    const DTYPE: DType;
    /// `x` rounded to [`Self::DTYPE`] and back.
    fn round(x: f32) -> f32;
}

/// F32 math: rounding is the identity.
#[derive(Debug, Clone, Copy)]
pub struct F32;
/// bf16 math.
#[derive(Debug, Clone, Copy)]
pub struct Bf16;
/// f16 math.
#[derive(Debug, Clone, Copy)]
pub struct F16;

impl Round for F32 {
    const DTYPE: DType = DType::F32;
    #[inline(always)]
    fn round(x: f32) -> f32 {
        x
    }
}

impl Round for Bf16 {
    const DTYPE: DType = DType::BF16;
    #[inline(always)]
    fn round(x: f32) -> f32 {
        round_bf16(x)
    }
}

impl Round for F16 {
    const DTYPE: DType = DType::F16;
    #[inline(always)]
    fn round(x: f32) -> f32 {
        DType::F16.round(x)
    }
}

pub use crate::dtype::slices::round_bf16;

/// [`DType::round`] with the branch-free bf16 path, for a dtype known only at run time.
#[inline(always)]
pub fn round_dyn(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::BF16 => round_bf16(x),
        DType::F16 => DType::F16.round(x),
        _ => x,
    }
}

/// Evaluates `$body` with the type alias `$r` bound to the [`Round`] of `$dtype`.
macro_rules! with_round {
    ($dtype:expr, $r:ident => $body:expr) => {
        match $dtype {
            $crate::dtype::DType::BF16 => {
                type $r = $crate::methods::round::Bf16;
                $body
            }
            $crate::dtype::DType::F16 => {
                type $r = $crate::methods::round::F16;
                $body
            }
            _ => {
                type $r = $crate::methods::round::F32;
                $body
            }
        }
    };
}

pub(crate) use with_round;
