//! `dare_ties`: DARE with TIES sign consensus: every task vector element is dropped at random (kept with probability `density`), the survivors are L1-rescaled (`rescale` defaults to true), then TIES sign election. `normalize` defaults to false.
//!
//! The computation is the shared engine in [`super::task_family`] (mergekit spec §2.6); this
//! file only configures it.

super::task_family::family_method! {
    /// The `dare_ties` method.
    DareTies {
        name: "dare_ties",
        pretty_name: "DARE TIES",
        url: "https://arxiv.org/abs/2311.03099",
        extra_params: [],
        sparsification: Random,
        consensus: true,
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

    fn inputs(n: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let base: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01)
            .collect();
        let a: Vec<f32> = base
            .iter()
            .enumerate()
            .map(|(i, b)| b + ((i * 13 % 29) as f32 - 14.0) * 1e-3)
            .collect();
        let c: Vec<f32> = base
            .iter()
            .enumerate()
            .map(|(i, b)| b + ((i * 7 % 31) as f32 - 15.0) * 1e-3)
            .collect();
        (base, a, c)
    }

    #[test]
    fn density_one_is_deterministic_sign_consensus() {
        // density 1: no drop, no rescale: exactly TIES at density 1 without normalize
        let (base, a, c) = inputs(1000);
        let models: [(&[f32], f64, f64); 2] = [(&a, 0.6, 1.0), (&c, 0.4, 1.0)];
        let out = run_family(&DareTies, &base, &models, &[], DType::F32).unwrap();
        let ties = run_family(
            &super::super::ties::Ties,
            &base,
            &models,
            &[("normalize", 0.0)],
            DType::F32,
        )
        .unwrap();
        assert_eq!(out, ties);
    }

    #[test]
    fn same_bits_at_any_thread_count() {
        let (base, a, c) = inputs(300_000);
        let models: [(&[f32], f64, f64); 2] = [(&a, 0.6, 0.3), (&c, 0.4, 0.5)];
        let run_in = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| run_family(&DareTies, &base, &models, &[], DType::BF16).unwrap())
        };
        let one = run_in(1);
        let four = run_in(4);
        assert!(
            one.iter()
                .zip(&four)
                .all(|(x, y)| x.to_bits() == y.to_bits())
        );
        assert_ne!(one, base); // something was merged
    }
}
