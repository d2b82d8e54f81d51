//! `nearswap`: take the other model's value where it is close to the base's, keep the base's
//! where they differ much (NearSwap, from the QuartetAnemoi model card).
//!
//! Follows mergekit's `nearswap`, element by element: `w = clamp(t / max(|base − x|, 1e-6),
//! 0, 1)`, result `w·x + (1−w)·base`, each step rounded to the math dtype as PyTorch does (the
//! quotient as PyTorch evaluates `t / tensor`: a reciprocal, then a product).
//! Needs the base and at most one other model (the base alone is returned unchanged).

use super::{BaseUse, MergeCtx, MergeMethod, MethodInfo, ParamSpec};

/// The NearSwap method.
pub struct NearSwap;

/// The similarity threshold.
const T: ParamSpec = ParamSpec::global_required("t");

static INFO: MethodInfo = MethodInfo {
    name: "nearswap",
    pretty_name: "NearSwap",
    url: Some("https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001"),
    params: &[T],
    base: BaseUse::Required,
    rectify_embeddings: false,
    result_dtype: None,
    elementwise: true,
};

impl MergeMethod for NearSwap {
    fn info(&self) -> &'static MethodInfo {
        &INFO
    }

    fn merge(&self, ctx: &MergeCtx<'_>, out: &mut [f32]) -> Result<(), String> {
        let base = ctx
            .base()
            .ok_or("nearswap: the base model's tensor is missing")?
            .data;
        let others: Vec<&[f32]> = ctx.others().map(|i| i.data).collect();
        let x = match others[..] {
            [] => {
                out.copy_from_slice(base);
                return Ok(());
            }
            [x] => x,
            _ => {
                return Err(format!(
                    "nearswap merges exactly two models (the base and one other), got {}",
                    others.len() + 1
                ));
            }
        };
        let t = T.get(ctx.global).ok_or("missing required parameter `t`")? as f32;
        let m = ctx.math;
        let floor = m.round(1e-6);
        for ((o, &a), &b) in out.iter_mut().zip(base).zip(x) {
            let diff = m.round(m.round(a - b).abs()).max(floor);
            // `t / tensor` is `tensor.reciprocal() * t` in PyTorch.
            let w = m.round(m.round(1.0 / diff) * t).clamp(0.0, 1.0);
            *o = m.round(m.round(w * b) + m.round(m.round(1.0 - w) * a));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{p, run};
    use super::super::vecmath::testutil::assert_close;
    use super::*;
    use crate::dtype::DType;

    fn nearswap(t: f64, base: &[f32], x: &[f32], m: DType) -> Vec<f32> {
        run(
            &NearSwap,
            &[(base, true, p(&[])), (x, false, p(&[]))],
            p(&[("t", t)]),
            m,
        )
        .unwrap()
    }

    #[test]
    fn spec_example() {
        let r = nearswap(0.001, &[0.0, 1.0, 5.0], &[1e-4, 1.5, 5.00005], DType::F32);
        // Element 1: w = .001/.5 = .002 → .002·1.5 + .998·1 = 1.001.
        assert_close(&r, &[1e-4, 1.001, 5.00005], 1e-6);
    }

    #[test]
    fn equal_values_and_base_only() {
        let r = nearswap(1e-9, &[2.0, -3.0], &[2.0, -3.0], DType::F32);
        assert_eq!(r, vec![2.0, -3.0]);
        let base = [1.0f32, 2.0];
        let r = run(
            &NearSwap,
            &[(&base, true, p(&[]))],
            p(&[("t", 0.1)]),
            DType::F32,
        )
        .unwrap();
        assert_eq!(r, base.to_vec());
    }

    #[test]
    fn errors() {
        let a = [1.0f32];
        let e = run(
            &NearSwap,
            &[(&a, false, p(&[])), (&a, false, p(&[]))],
            p(&[("t", 0.1)]),
            DType::F32,
        )
        .unwrap_err();
        assert!(e.contains("base"), "{e}");
        let e = run(
            &NearSwap,
            &[(&a, true, p(&[])), (&a, false, p(&[])), (&a, false, p(&[]))],
            p(&[("t", 0.1)]),
            DType::F32,
        )
        .unwrap_err();
        assert!(e.contains("exactly two"), "{e}");
    }

    #[test]
    fn bf16_math_rounds() {
        // |0 − 1| = 1, w = 0.3 → bf16 0.30078125; 1 − w = 0.69921875; result w·1.
        let r = nearswap(0.3, &[0.0], &[1.0], DType::BF16);
        assert_eq!(r, vec![0.30078125]);
    }
}
