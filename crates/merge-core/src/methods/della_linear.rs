//! `della_linear`: DELLA pruning (magnitude-ranked random drop, L1 rescale) without sign consensus: a weighted sum of the task vectors.
//!
//! The computation is the shared engine in [`super::task_family`] (mergekit spec §2.6); this
//! file only configures it.

use super::task_family::{self, Family, Sparsification};
use super::{BaseUse, ChunkSink, ChunkSource, MergeCtx, MergeMethod, MethodInfo, ParamSpec};

/// The `della_linear` method.
pub struct DellaLinear;

const GLOBAL: [ParamSpec; 4] = task_family::global_params(false, true);

static INFO: MethodInfo = MethodInfo {
    name: "della_linear",
    pretty_name: "Linear DELLA",
    url: Some("https://arxiv.org/abs/2406.11617"),
    params: &[
        ParamSpec::model_required("weight"),
        ParamSpec::model("density", 1.0),
        ParamSpec::model("epsilon", 0.15),
        GLOBAL[0],
        GLOBAL[1],
        GLOBAL[2],
        GLOBAL[3],
    ],
    base: BaseUse::Required,
    rectify_embeddings: true,
    result_dtype: None,
    elementwise: false,
};

static FAMILY: Family = Family {
    sparsification: Sparsification::DellaMagprune,
    consensus: false,
    default_normalize: false,
    default_rescale: true,
};

impl MergeMethod for DellaLinear {
    fn info(&self) -> &'static MethodInfo {
        &INFO
    }

    fn merge(&self, ctx: &MergeCtx<'_>, out: &mut [f32]) -> Result<(), String> {
        task_family::merge(&FAMILY, ctx, out)
    }

    fn can_stream(&self) -> bool {
        true
    }

    fn merge_streaming(
        &self,
        ctx: &MergeCtx<'_>,
        src: &dyn ChunkSource,
        out: &dyn ChunkSink,
    ) -> Result<(), String> {
        task_family::merge_streaming(&FAMILY, ctx, src, out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::task_family::tests::run_family;
    use super::*;
    use crate::dtype::DType;

    #[test]
    fn density_one_equals_task_arithmetic() {
        let base = [1.0f32, 1.0];
        let models: [(&[f32], f64, f64); 2] = [(&[2.0, 0.0], 0.5, 1.0), (&[0.0, 3.0], 1.0, 1.0)];
        let out = run_family(&DellaLinear, &base, &models, &[], DType::F32).unwrap();
        assert_eq!(out, vec![0.5, 2.5]);
    }

    #[test]
    fn rescale_preserves_l1_norm() {
        let n = 10_000;
        let base = vec![0.0f32; n];
        let a: Vec<f32> = (0..n).map(|i| ((i % 13) as f32 - 6.0) * 0.25).collect();
        let models: [(&[f32], f64, f64); 1] = [(&a, 1.0, 0.5)];
        let out = run_family(&DellaLinear, &base, &models, &[], DType::F32).unwrap();
        let l1 = |v: &[f32]| v.iter().map(|x| x.abs() as f64).sum::<f64>();
        assert!((l1(&out) / l1(&a) - 1.0).abs() < 1e-5);
    }
}
