//! `ramplus_tl` (Reinforced Agent Merging Plus, tensor-local): RAM whose unique contributions
//! are amplified per model by `λᵢ = 1 + r·clamp(ρᵢ, 0, α)` (mergekit spec §2.13). Global
//! `r` (0.1), `alpha` (0.2), `epsilon` (1e-5); base required. The kernel and its notes are in
//! [`super::ram`]; the result is `f32` whatever the math dtype, as in mergekit.

use super::{BaseUse, MergeCtx, MergeMethod, MethodInfo, ParamSpec};
use crate::dtype::DType;

/// The `ramplus_tl` method.
pub struct RamPlusTl;

/// The amplification strength.
const R: ParamSpec = ParamSpec::global("r", 0.1);
/// The clamp of the overlap ratio.
const ALPHA: ParamSpec = ParamSpec::global("alpha", 0.2);

static INFO: MethodInfo = MethodInfo {
    name: "ramplus_tl",
    pretty_name: "Reinforced Agent Merging Plus (Tensor-Local)",
    url: Some("https://arxiv.org/abs/2601.13572"),
    params: &[R, ALPHA, super::ram::EPSILON],
    base: BaseUse::Required,
    rectify_embeddings: false,
    result_dtype: Some(DType::F32),
    elementwise: false,
};

impl MergeMethod for RamPlusTl {
    fn info(&self) -> &'static MethodInfo {
        &INFO
    }

    fn merge(&self, ctx: &MergeCtx<'_>, out: &mut [f32]) -> Result<(), String> {
        let r = R.number(ctx.global);
        let alpha = ALPHA.number(ctx.global);
        super::ram::merge_ram(ctx, out, Some((r, alpha)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{p, run};
    use super::*;

    #[test]
    fn unique_contributions_are_amplified() {
        // A=[0,.5,1,0], B=[0,0,3,2]: each model has 1 shared and 1 unique element → ρ = 1,
        // λ = 1 + 0.1·min(1, 0.2) = 1.02 → [0, .5·1.02, (1+3)/2, 2·1.02]
        let base = [0.0f32; 4];
        let a = [0.0f32, 0.5, 1.0, 0.0];
        let b = [0.0f32, 0.0, 3.0, 2.0];
        let out = run(
            &RamPlusTl,
            &[
                (&base, true, p(&[])),
                (&a, false, p(&[])),
                (&b, false, p(&[])),
            ],
            p(&[("r", 0.1), ("alpha", 0.2), ("epsilon", 1e-5)]),
            DType::F32,
        )
        .unwrap();
        let want = [0.0f32, 0.51, 2.0, 2.04];
        for (o, w) in out.iter().zip(want) {
            assert!((o - w).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn no_unique_elements_uses_epsilon_floor() {
        // both models active on the same single element: unique = 0 → ρ = 1/ε, clamped to α
        let base = [0.0f32, 0.0];
        let a = [1.0f32, 0.0];
        let b = [3.0f32, 0.0];
        let out = run(
            &RamPlusTl,
            &[
                (&base, true, p(&[])),
                (&a, false, p(&[])),
                (&b, false, p(&[])),
            ],
            p(&[("r", 0.1), ("alpha", 0.2), ("epsilon", 1e-5)]),
            DType::F32,
        )
        .unwrap();
        assert_eq!(out, vec![2.0, 0.0]);
    }
}
