//! `della`: DELLA: magnitude-ranked random drop (keep probability `density ± epsilon` by rank within each row), L1 rescale, TIES sign election, weighted mean (`normalize` and `rescale` default to true).
//!
//! The computation is the shared engine in [`super::task_family`] (mergekit spec §2.6); this
//! file only configures it.

super::task_family::family_method! {
    /// The `della` method.
    Della {
        name: "della",
        pretty_name: "DELLA",
        url: "https://arxiv.org/abs/2406.11617",
        extra_params: [super::task_family::EPSILON],
        sparsification: DellaMagprune,
        consensus: true,
        normalize: true,
        rescale: true,
        elementwise: false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::task_family::tests::run_family;
    use super::super::testutil::{p, run};
    use super::*;
    use crate::dtype::DType;

    #[test]
    fn density_one_equals_ties() {
        let base = [0.0f32; 4];
        let models: [(&[f32], f64, f64); 2] = [
            (&[1.0, -2.0, 3.0, -0.5], 1.0, 1.0),
            (&[-1.5, 0.25, 2.0, 1.0], 0.5, 1.0),
        ];
        let della = run_family(&Della, &base, &models, &[], DType::F32).unwrap();
        let ties = run_family(&super::super::ties::Ties, &base, &models, &[], DType::F32).unwrap();
        assert_eq!(della, ties);
    }

    #[test]
    fn epsilon_out_of_range_is_an_error() {
        let base = [0.0f32; 4];
        let a = [1.0f32; 4];
        let e = run(
            &Della,
            &[
                (&base, true, p(&[])),
                (
                    &a,
                    false,
                    p(&[("weight", 1.0), ("density", 0.9), ("epsilon", 0.15)]),
                ),
            ],
            p(&[]),
            DType::F32,
        )
        .unwrap_err();
        assert!(
            e.contains("0.9") && e.contains("0.15") && e.contains("m1"),
            "{e}"
        );
    }

    #[test]
    fn kept_fraction_matches_density() {
        let (rows, cols) = (100, 200);
        let base = vec![0.0f32; rows * cols];
        let a: Vec<f32> = (0..rows * cols).map(|i| 1.0 + (i % 97) as f32).collect();
        let models: [(&[f32], f64, f64); 1] = [(&a, 1.0, 0.4)];
        // run_family uses a 1-D shape: one row of 20000 elements
        let out = run_family(&Della, &base, &models, &[("rescale", 0.0)], DType::F32).unwrap();
        let kept = out.iter().filter(|v| **v != 0.0).count() as f64 / a.len() as f64;
        assert!((kept - 0.4).abs() < 0.01, "{kept}");
    }

    #[test]
    fn same_bits_at_any_thread_count() {
        let n = 200_000;
        let base = vec![0.5f32; n];
        let a: Vec<f32> = (0..n)
            .map(|i| 0.5 + ((i * 13 % 101) as f32 - 50.0) * 1e-3)
            .collect();
        let c: Vec<f32> = (0..n)
            .map(|i| 0.5 + ((i * 7 % 89) as f32 - 44.0) * 1e-3)
            .collect();
        let models: [(&[f32], f64, f64); 2] = [(&a, 0.5, 0.4), (&c, 0.5, 0.6)];
        let run_in = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| run_family(&Della, &base, &models, &[], DType::F32).unwrap())
        };
        let one = run_in(1);
        let four = run_in(4);
        assert!(
            one.iter()
                .zip(&four)
                .all(|(x, y)| x.to_bits() == y.to_bits())
        );
        assert_ne!(one, base);
    }
}
