//! `breadcrumbs_ties`: Model Breadcrumbs pruning (`density`, `gamma`) followed by TIES sign election. `normalize` defaults to false.
//!
//! The computation is the shared engine in [`super::task_family`] (mergekit spec §2.6); this
//! file only configures it.

super::task_family::family_method! {
    /// The `breadcrumbs_ties` method.
    BreadcrumbsTies {
        name: "breadcrumbs_ties",
        pretty_name: "Model Breadcrumbs with TIES",
        url: "https://arxiv.org/abs/2312.06795",
        extra_params: [super::task_family::GAMMA],
        sparsification: MagnitudeOutliers,
        consensus: true,
        normalize: false,
        rescale: false,
        elementwise: false,
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
