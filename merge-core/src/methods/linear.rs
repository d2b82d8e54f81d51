//! `linear`: the weighted average Σ wᵢ·xᵢ (divided by Σ wᵢ when `normalize`, the default).
//!
//! Matches mergekit's numbers bit for bit on f32 inputs: PyTorch evaluates
//! `(weights * tensors).sum(dim=0)` as a fused multiply-add chain in source order,
//! `acc = fma(wᵢ, xᵢ, acc)` starting from 0 (checked against mergekit's own output, where a
//! separately rounded product differs in ~20% of elements). We use the CPU's fused
//! multiply-add ([`fma_pass`]; a correctly rounded software FMA where there is none), so each
//! step is rounded once, as PyTorch's is.
//!
//! Half-precision recipes (`dtype: bfloat16` / `float16`) are computed as mergekit 0.1.5
//! computes them: the inputs rounded to the math dtype, then everything in float32 (the
//! weights as float32 values, not rounded to bf16; the FMA chain; the division by the float32
//! weight sum), rounded to the math dtype once at the end. Bit-identical to mergekit on the
//! public `linear_bf16` fixture (rounding the weights and the undivided sum to bf16 along the
//! way, as smelt did before, differed in ~27% of values by one ulp). A base model, if set, is
//! an ordinary input that needs a weight.

use super::round::{Round, with_round};
use super::{BaseUse, Input, MergeCtx, MergeMethod, MethodInfo, ParamSpec, WEIGHT};
use crate::dtype::DType;

/// Divide by the sum of the weights.
const NORMALIZE: ParamSpec = ParamSpec::global_bool("normalize", true);

/// The linear method.
pub struct Linear;

static INFO: MethodInfo = MethodInfo {
    name: "linear",
    pretty_name: "Linear",
    url: Some("https://arxiv.org/abs/2203.05482"),
    params: &[WEIGHT, NORMALIZE],
    base: BaseUse::None,
    rectify_embeddings: true,
    result_dtype: None,
    elementwise: true,
};

impl MergeMethod for Linear {
    fn info(&self) -> &'static MethodInfo {
        &INFO
    }

    fn merge(&self, ctx: &MergeCtx<'_>, out: &mut [f32]) -> Result<(), String> {
        let m = ctx.math;
        let weights: Vec<f32> = ctx
            .inputs
            .iter()
            .map(|i: &Input| WEIGHT.of_model(i).map(|w| w as f32))
            .collect::<Result<_, _>>()?;
        let normalize = NORMALIZE.flag(ctx.global);
        let divisor = weights.iter().fold(0.0f32, |a, w| a + w);
        if normalize && divisor == 0.0 {
            return Err(format!(
                "the weights ({}) sum to 0 and `normalize` is on, so every value would be divided by 0; change the weights or set `normalize: false`",
                weights
                    .iter()
                    .map(|w| w.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        // model-major, so each pass is a simple loop the compiler vectorises; the chain starts
        // from +0 (fma(w, x, +0) is not always w·x: -0 becomes +0)
        for (k, (inp, w)) in ctx.inputs.iter().zip(&weights).enumerate() {
            fma_pass(*w, inp.data, out, k == 0);
        }
        with_round!(m, R => finish::<R>(out, normalize.then_some(divisor)));
        Ok(())
    }
}

/// The float32 sum divided by the float32 weight sum, then rounded to the math dtype once.
fn finish<R: Round>(out: &mut [f32], divisor: Option<f32>) {
    if R::DTYPE == DType::F16 {
        // f16 rounds a slice at a time (F16C), not an element at a time
        if let Some(d) = divisor {
            out.iter_mut().for_each(|o| *o /= d);
        }
        R::DTYPE.round_slice(out);
        return;
    }
    match divisor {
        Some(d) => out.iter_mut().for_each(|o| *o = R::round(*o / d)),
        None => out.iter_mut().for_each(|o| *o = R::round(*o)),
    }
}

/// `acc[i] = fma(w, x[i], acc[i])` for every element (`acc[i]` taken as +0 when `first`):
/// `w·x[i] + acc[i]` rounded once to f32, with the CPU's fused multiply-add when it has one
/// (eight lanes at a time), else the correctly rounded software `f32::mul_add`: the same bits
/// either way.
pub fn fma_pass(w: f32, x: &[f32], acc: &mut [f32], first: bool) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has FMA and AVX2 (checked above).
        unsafe { fma_pass_x86(w, x, acc, first) };
        return;
    }
    fma_pass_portable(w, x, acc, first);
}

#[inline(always)]
fn fma_pass_portable(w: f32, x: &[f32], acc: &mut [f32], first: bool) {
    if first {
        acc.iter_mut()
            .zip(x)
            .for_each(|(a, x)| *a = w.mul_add(*x, 0.0));
    } else {
        acc.iter_mut()
            .zip(x)
            .for_each(|(a, x)| *a = w.mul_add(*x, *a));
    }
}

/// [`fma_pass`] compiled for FMA and AVX2 (`mul_add` becomes `vfmadd`).
///
/// # Safety
/// The CPU must support FMA and AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma,avx2")]
unsafe fn fma_pass_x86(w: f32, x: &[f32], acc: &mut [f32], first: bool) {
    fma_pass_portable(w, x, acc, first);
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{p, run};
    use super::*;

    #[test]
    fn weighted_mean() {
        let a = [1.0f32, 2.0];
        let b = [3.0f32, -2.0];
        let out = run(
            &Linear,
            &[
                (&a, false, p(&[("weight", 1.0)])),
                (&b, false, p(&[("weight", 3.0)])),
            ],
            p(&[("normalize", 1.0)]),
            DType::F32,
        )
        .unwrap();
        assert_eq!(out, vec![2.5, -1.0]);
    }

    #[test]
    fn no_normalize_sums() {
        let a = [1.0f32];
        let b = [3.0f32];
        let out = run(
            &Linear,
            &[
                (&a, false, p(&[("weight", 0.5)])),
                (&b, false, p(&[("weight", 1.0)])),
            ],
            p(&[("normalize", 0.0)]),
            DType::F32,
        )
        .unwrap();
        assert_eq!(out, vec![3.5]);
    }

    #[test]
    fn bf16_math_rounds_once_at_the_end() {
        // float32 weights: 0.3·1 + 0.3·1 = 0.6 (0.6f32 rounds to bf16 0.6015625); rounding
        // each weight to bf16 first would give 2·0.30078125 = 0.6015625 as well, so use a
        // case where the two differ: 0.3·3 in f32 is 0.90000004 → bf16 0.8984375, while
        // bf16(0.3)·3 = 0.90234375
        let a = [3.0f32];
        let out = run(
            &Linear,
            &[(&a, false, p(&[("weight", 0.3)]))],
            p(&[("normalize", 0.0)]),
            DType::BF16,
        )
        .unwrap();
        assert_eq!(out, vec![0.8984375]);
    }
}
