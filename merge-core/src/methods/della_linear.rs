//! `della_linear`: DELLA pruning (magnitude-ranked random drop, L1 rescale) without sign consensus: a weighted sum of the task vectors.
//!
//! The computation is the shared engine in [`super::task_family`] (mergekit spec §2.6); this
//! file only configures it.

super::task_family::family_method! {
    /// The `della_linear` method.
    DellaLinear {
        name: "della_linear",
        pretty_name: "Linear DELLA",
        url: "https://arxiv.org/abs/2406.11617",
        extra_params: [super::task_family::EPSILON],
        sparsification: DellaMagprune,
        consensus: false,
        normalize: false,
        rescale: true,
        elementwise: false,
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
