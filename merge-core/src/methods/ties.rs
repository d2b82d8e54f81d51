//! `ties`: TIES-merging: magnitude top-k pruning of every task vector (`density`), TIES sign election on the weighted deltas, then the per-element mean of the agreeing weighted deltas (`normalize` defaults to true).
//!
//! The computation is the shared engine in [`super::task_family`] (mergekit spec §2.6); this
//! file only configures it.

super::task_family::family_method! {
    /// The `ties` method.
    Ties {
        name: "ties",
        pretty_name: "TIES",
        url: "https://arxiv.org/abs/2306.01708",
        extra_params: [],
        sparsification: Magnitude,
        consensus: true,
        normalize: true,
        rescale: false,
        elementwise: false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::task_family::tests::run_family;
    use super::*;
    use crate::dtype::DType;

    #[test]
    fn example_from_spec() {
        // §2.6: base 0, density .5; A=[1,−2,3,−.5] w=1, B=[−1.5,.25,2,1] w=.5
        // → [−1.5, −2, 2.6667, 0]
        let base = [0.0f32; 4];
        let models: [(&[f32], f64, f64); 2] = [
            (&[1.0, -2.0, 3.0, -0.5], 1.0, 0.5),
            (&[-1.5, 0.25, 2.0, 1.0], 0.5, 0.5),
        ];
        let out = run_family(&Ties, &base, &models, &[("normalize", 1.0)], DType::F32).unwrap();
        assert_eq!(out[0], -1.5);
        assert_eq!(out[1], -2.0);
        assert!((out[2] - 8.0 / 3.0).abs() < 1e-6, "{out:?}");
        assert_eq!(out[3], 0.0);
    }

    #[test]
    fn normalize_defaults_to_true() {
        let base = [0.0f32; 4];
        let models: [(&[f32], f64, f64); 2] = [
            (&[1.0, -2.0, 3.0, -0.5], 1.0, 0.5),
            (&[-1.5, 0.25, 2.0, 1.0], 0.5, 0.5),
        ];
        let out = run_family(&Ties, &base, &models, &[], DType::F32).unwrap();
        assert!((out[2] - 8.0 / 3.0).abs() < 1e-6, "{out:?}");
        // without normalize: the sum of agreeing weighted deltas
        let out = run_family(&Ties, &base, &models, &[("normalize", 0.0)], DType::F32).unwrap();
        assert_eq!(out, vec![-0.75, -2.0, 4.0, 0.0]);
    }

    #[test]
    fn tiny_tensor_at_low_density_keeps_base() {
        // divergence: k = int(0.1·5) = 0 zeroes the task vector instead of asserting
        let base = [1.0f32; 5];
        let models: [(&[f32], f64, f64); 1] = [(&[2.0, 3.0, 4.0, 5.0, 6.0], 1.0, 0.1)];
        let out = run_family(&Ties, &base, &models, &[], DType::F32).unwrap();
        assert_eq!(out, base.to_vec());
    }

    #[test]
    fn int8_mask_changes_nothing() {
        let base = [0.0f32; 4];
        let models: [(&[f32], f64, f64); 2] = [
            (&[1.0, -2.0, 3.0, -0.5], 1.0, 0.5),
            (&[-1.5, 0.25, 2.0, 1.0], 0.5, 0.5),
        ];
        let a = run_family(&Ties, &base, &models, &[("int8_mask", 1.0)], DType::F32).unwrap();
        let b = run_family(&Ties, &base, &models, &[("int8_mask", 0.0)], DType::F32).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn exact_k_and_same_bits_at_any_thread_count() {
        // bf16 deltas with many equal magnitudes around the threshold, over several chunks
        let n = 300_000;
        let base = vec![0.0f32; n];
        let a: Vec<f32> = (0..n)
            .map(|i| ((i * 31 % 17) as f32 - 8.0) * 0.125)
            .collect();
        let models: [(&[f32], f64, f64); 1] = [(&a, 1.0, 0.37)];
        let run_in = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| run_family(&Ties, &base, &models, &[], DType::BF16).unwrap())
        };
        let one = run_in(1);
        let four = run_in(4);
        assert!(
            one.iter()
                .zip(&four)
                .all(|(x, y)| x.to_bits() == y.to_bits())
        );
        let k = (0.37 * n as f64) as usize;
        assert_eq!(one.iter().filter(|v| **v != 0.0).count(), k);
    }
}
