//! `task_arithmetic`: task vectors summed with their weights: `base + λ·Σ wᵢ·δᵢ` (optionally normalised by Σ wᵢ). No sparsification, no sign consensus; `normalize` and `rescale` default to false.
//!
//! The computation is the shared engine in [`super::task_family`] (mergekit spec §2.6); this
//! file only configures it.

super::task_family::family_method! {
    /// The `task_arithmetic` method.
    TaskArithmetic {
        name: "task_arithmetic",
        pretty_name: "Task Arithmetic",
        url: "https://arxiv.org/abs/2212.04089",
        extra_params: [],
        sparsification: None,
        consensus: false,
        normalize: false,
        rescale: false,
        elementwise: true,
    }
}

#[cfg(test)]
mod tests {
    use super::super::task_family::tests::run_family;
    use super::*;
    use crate::dtype::DType;

    #[test]
    fn example_from_spec() {
        // §2.6: base [1,1], A=[2,0] w=.5, B=[0,3] w=1 → [0.5, 2.5]; normalized → [0.6667, 2.0]
        let base = [1.0f32, 1.0];
        let models: [(&[f32], f64, f64); 2] = [(&[2.0, 0.0], 0.5, 1.0), (&[0.0, 3.0], 1.0, 1.0)];
        let out = run_family(&TaskArithmetic, &base, &models, &[], DType::F32).unwrap();
        assert_eq!(out, vec![0.5, 2.5]);
        let out = run_family(
            &TaskArithmetic,
            &base,
            &models,
            &[("normalize", 1.0)],
            DType::F32,
        )
        .unwrap();
        assert!(
            (out[0] - 2.0 / 3.0).abs() < 1e-6 && out[1] == 2.0,
            "{out:?}"
        );
    }

    #[test]
    fn lambda_scales_the_mixed_delta() {
        let base = [1.0f32, 1.0];
        let models: [(&[f32], f64, f64); 2] = [(&[2.0, 0.0], 0.5, 1.0), (&[0.0, 3.0], 1.0, 1.0)];
        let out = run_family(
            &TaskArithmetic,
            &base,
            &models,
            &[("lambda", 2.0)],
            DType::F32,
        )
        .unwrap();
        // mixed [−0.5, 1.5] · 2 + base
        assert_eq!(out, vec![0.0, 4.0]);
    }

    #[test]
    fn bf16_weights_are_rounded() {
        // with bf16 math a weight of 0.3 is 0.30078125
        let base = [0.0f32];
        let models: [(&[f32], f64, f64); 1] = [(&[1.0], 0.3, 1.0)];
        let out = run_family(&TaskArithmetic, &base, &models, &[], DType::BF16).unwrap();
        assert_eq!(out, vec![0.30078125]);
    }

    #[test]
    fn negative_weights_subtract() {
        let base = [1.0f32];
        let models: [(&[f32], f64, f64); 2] = [(&[3.0], 1.0, 1.0), (&[2.0], -1.0, 1.0)];
        let out = run_family(&TaskArithmetic, &base, &models, &[], DType::F32).unwrap();
        assert_eq!(out, vec![2.0]);
    }
}
