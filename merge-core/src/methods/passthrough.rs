//! `passthrough`: copies its single input, optionally multiplied by the per-model `scale`.
//! Used for frankenmerges, where slices stack layers of different models.

use super::{BaseUse, MergeCtx, MergeMethod, MethodInfo, ParamSpec};

/// The passthrough method.
pub struct Passthrough;

/// The factor the input is multiplied by, if any.
const SCALE: ParamSpec = ParamSpec::model_optional("scale");

static INFO: MethodInfo = MethodInfo {
    name: "passthrough",
    pretty_name: "Passthrough",
    url: None,
    params: &[SCALE],
    base: BaseUse::None,
    rectify_embeddings: false,
    result_dtype: None,
    elementwise: true,
};

impl MergeMethod for Passthrough {
    fn info(&self) -> &'static MethodInfo {
        &INFO
    }

    fn merge(&self, ctx: &MergeCtx<'_>, out: &mut [f32]) -> Result<(), String> {
        let [input] = ctx.inputs else {
            return Err(format!(
                "passthrough needs exactly one input per tensor, got {} ({})",
                ctx.inputs.len(),
                ctx.inputs
                    .iter()
                    .map(|i| i.model)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        match SCALE.get(input.params) {
            Some(s) => {
                let s = ctx.math.round(s as f32);
                for (o, x) in out.iter_mut().zip(input.data) {
                    *o = ctx.math.round(x * s);
                }
            }
            None => out.copy_from_slice(input.data),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{p, run};
    use super::*;
    use crate::dtype::DType;

    #[test]
    fn copies_and_scales() {
        let a = [1.0f32, -2.0];
        let out = run(&Passthrough, &[(&a, false, p(&[]))], p(&[]), DType::F32).unwrap();
        assert_eq!(out, a.to_vec());
        let out = run(
            &Passthrough,
            &[(&a, false, p(&[("scale", 0.5)]))],
            p(&[]),
            DType::F32,
        )
        .unwrap();
        assert_eq!(out, vec![0.5, -1.0]);
    }

    #[test]
    fn two_inputs_is_an_error() {
        let a = [1.0f32];
        let err = run(
            &Passthrough,
            &[(&a, false, p(&[])), (&a, false, p(&[]))],
            p(&[]),
            DType::F32,
        );
        assert!(err.unwrap_err().contains("exactly one input"));
    }
}
