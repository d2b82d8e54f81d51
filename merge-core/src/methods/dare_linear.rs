//! `dare_linear`: DARE without sign consensus: random drop (kept with probability `density`), L1 rescale (`rescale` defaults to true), weighted sum of the task vectors.
//!
//! The computation is the shared engine in [`super::task_family`] (mergekit spec §2.6); this
//! file only configures it.

super::task_family::family_method! {
    /// The `dare_linear` method.
    DareLinear {
        name: "dare_linear",
        pretty_name: "Linear DARE",
        url: "https://arxiv.org/abs/2311.03099",
        extra_params: [],
        sparsification: Random,
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
    fn kept_fraction_matches_density() {
        let n = 50_000;
        let base = vec![0.0f32; n];
        let a = vec![1.0f32; n];
        for density in [0.2, 0.6] {
            let models: [(&[f32], f64, f64); 1] = [(&a, 1.0, density)];
            let out =
                run_family(&DareLinear, &base, &models, &[("rescale", 0.0)], DType::F32).unwrap();
            let kept = out.iter().filter(|v| **v != 0.0).count() as f64 / n as f64;
            assert!((kept - density).abs() < 0.01, "{density}: {kept}");
        }
    }

    #[test]
    fn rescale_preserves_l1_norm() {
        // default rescale: survivors scaled by ‖δ‖₁/‖masked‖₁, so the L1 norm is kept
        let n = 20_000;
        let base = vec![0.0f32; n];
        let a: Vec<f32> = (0..n).map(|i| ((i % 17) as f32 - 8.0) * 0.5).collect();
        let models: [(&[f32], f64, f64); 1] = [(&a, 1.0, 0.5)];
        let out = run_family(&DareLinear, &base, &models, &[], DType::F32).unwrap();
        let l1 = |v: &[f32]| v.iter().map(|x| x.abs() as f64).sum::<f64>();
        assert!((l1(&out) / l1(&a) - 1.0).abs() < 1e-5);
        assert!(out.iter().filter(|v| **v == 0.0).count() > n / 3);
    }

    #[test]
    fn density_one_equals_task_arithmetic() {
        let base = [1.0f32, 1.0];
        let models: [(&[f32], f64, f64); 2] = [(&[2.0, 0.0], 0.5, 1.0), (&[0.0, 3.0], 1.0, 1.0)];
        let out = run_family(&DareLinear, &base, &models, &[], DType::F32).unwrap();
        assert_eq!(out, vec![0.5, 2.5]);
    }
}
