//! `breadcrumbs`: Model Breadcrumbs: each task vector loses its `gamma` fraction of largest magnitudes (outliers) and its smallest ones, keeping `density`; then a weighted sum. No sign consensus.
//!
//! The computation is the shared engine in [`super::task_family`] (mergekit spec §2.6); this
//! file only configures it.

super::task_family::family_method! {
    /// The `breadcrumbs` method.
    Breadcrumbs {
        name: "breadcrumbs",
        pretty_name: "Model Breadcrumbs",
        url: "https://arxiv.org/abs/2312.06795",
        extra_params: [super::task_family::GAMMA],
        sparsification: MagnitudeOutliers,
        consensus: false,
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

    fn crumbs(x: &[f32], density: f64, gamma: f64) -> Vec<f32> {
        let base = vec![0.0f32; x.len()];
        run(
            &Breadcrumbs,
            &[
                (&base, true, p(&[])),
                (
                    x,
                    false,
                    p(&[("weight", 1.0), ("density", density), ("gamma", gamma)]),
                ),
            ],
            p(&[]),
            DType::F32,
        )
        .unwrap()
    }

    #[test]
    fn example_from_spec() {
        // §2.7: |1..10|, density .5, gamma .1 → keeps 5..9
        let x: Vec<f32> = (1..=10).map(|i| i as f32).collect();
        let out = crumbs(&x, 0.5, 0.1);
        assert_eq!(out, vec![0.0, 0.0, 0.0, 0.0, 5.0, 6.0, 7.0, 8.0, 9.0, 0.0]);
    }

    #[test]
    fn small_tensor_with_default_gamma_is_not_zeroed() {
        // divergence: int(0.01·20) == 0; mergekit zeroes the whole task vector
        let x: Vec<f32> = (1..=20).map(|i| i as f32).collect();
        let out = crumbs(&x, 0.5, 0.01);
        let want: Vec<f32> = (1..=20)
            .map(|i| if i > 10 { i as f32 } else { 0.0 })
            .collect();
        assert_eq!(out, want);
    }
}
