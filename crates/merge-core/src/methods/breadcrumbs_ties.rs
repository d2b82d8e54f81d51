//! `breadcrumbs_ties`: Model Breadcrumbs pruning (`density`, `gamma`) followed by TIES sign election. `normalize` defaults to false.
//!
//! The computation is the shared engine in [`super::task_family`] (mergekit spec §2.6); this
//! file only configures it.

use super::task_family::{self, Family, Sparsification};
use super::{BaseUse, ChunkSink, ChunkSource, MergeCtx, MergeMethod, MethodInfo, ParamSpec};

/// The `breadcrumbs_ties` method.
pub struct BreadcrumbsTies;

const GLOBAL: [ParamSpec; 4] = task_family::global_params(false, false);

static INFO: MethodInfo = MethodInfo {
    name: "breadcrumbs_ties",
    pretty_name: "Model Breadcrumbs with TIES",
    url: Some("https://arxiv.org/abs/2312.06795"),
    params: &[
        ParamSpec::model_required("weight"),
        ParamSpec::model("density", 1.0),
        ParamSpec::model("gamma", 0.01),
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
    sparsification: Sparsification::MagnitudeOutliers,
    consensus: true,
    default_normalize: false,
    default_rescale: false,
};

impl MergeMethod for BreadcrumbsTies {
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
    use super::super::testutil::{p, run};
    use super::*;
    use crate::dtype::DType;

    #[test]
    fn prunes_then_elects_signs() {
        // A keeps 5..9 of |1..10| (density .5, gamma .1); B = −1 everywhere, fully kept.
        let base = [0.0f32; 10];
        let a: Vec<f32> = (1..=10).map(|i| i as f32).collect();
        let b = [-1.0f32; 10];
        let out = run(
            &BreadcrumbsTies,
            &[
                (&base, true, p(&[])),
                (
                    &a,
                    false,
                    p(&[("weight", 1.0), ("density", 0.5), ("gamma", 0.1)]),
                ),
                (
                    &b,
                    false,
                    p(&[("weight", 1.0), ("density", 1.0), ("gamma", 0.1)]),
                ),
            ],
            p(&[]),
            DType::F32,
        )
        .unwrap();
        // where A survives its positive value wins the election and B is erased
        let want: Vec<f32> = (1..=10)
            .map(|i| if (5..=9).contains(&i) { i as f32 } else { -1.0 })
            .collect();
        assert_eq!(out, want);
    }
}
