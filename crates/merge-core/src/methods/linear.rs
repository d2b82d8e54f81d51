//! `linear`: the weighted average Σ wᵢ·xᵢ (divided by Σ wᵢ when `normalize`, the default).
//!
//! Matches mergekit's numbers bit for bit on f32 inputs: PyTorch evaluates
//! `(weights * tensors).sum(dim=0)` as a fused multiply-add chain in source order,
//! `acc = fma(wᵢ, xᵢ, acc)` starting from 0 (checked against mergekit's own output, where a
//! separately rounded product differs in ~20% of elements). We evaluate each step exactly in
//! f64 (the product of two f32 is exact there) and round to f32, which equals the fused result
//! except for double-rounding ties too rare to matter. Weights are first rounded to the math
//! dtype; the sum is rounded to it once, then divided by Σ wᵢ (summed the same way) when
//! `normalize`. A base model, if set, is an ordinary input that needs a weight.

use super::{BaseUse, Input, MergeCtx, MergeMethod, MethodInfo, ParamSpec};

/// The linear method.
pub struct Linear;

static INFO: MethodInfo = MethodInfo {
    name: "linear",
    pretty_name: "Linear",
    url: Some("https://arxiv.org/abs/2203.05482"),
    params: &[
        ParamSpec::model_required("weight"),
        ParamSpec::global_bool("normalize", true),
    ],
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
            .map(|i: &Input| weight_of(i).map(|w| m.round(w as f32)))
            .collect::<Result<_, _>>()?;
        let normalize = ctx.global.flag("normalize", true);
        let divisor = m.round(weights.iter().fold(0.0f32, |a, w| a + w));
        // model-major, so each pass is a simple loop the compiler vectorises
        out.fill(0.0);
        for (inp, w) in ctx.inputs.iter().zip(&weights) {
            for (o, x) in out.iter_mut().zip(inp.data) {
                *o = fma(*w, *x, *o);
            }
        }
        for o in out.iter_mut() {
            let s = m.round(*o);
            *o = if normalize { m.round(s / divisor) } else { s };
        }
        Ok(())
    }
}

/// `a·b + c` rounded once to f32 (the product of two f32 values is exact in f64).
#[inline]
pub fn fma(a: f32, b: f32, c: f32) -> f32 {
    (a as f64 * b as f64 + c as f64) as f32
}

fn weight_of(i: &Input) -> Result<f64, String> {
    i.params
        .get("weight")
        .ok_or_else(|| format!("missing required parameter `weight` for model {}", i.model))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{p, run};
    use super::*;
    use crate::dtype::DType;

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
    fn bf16_weights_are_rounded() {
        let a = [1.0f32];
        let out = run(
            &Linear,
            &[(&a, false, p(&[("weight", 0.3)]))],
            p(&[("normalize", 0.0)]),
            DType::BF16,
        )
        .unwrap();
        assert_eq!(out, vec![0.30078125]);
    }
}
