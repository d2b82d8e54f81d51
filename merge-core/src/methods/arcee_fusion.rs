//! `arcee_fusion`: keep the other model's change only where it is important — where
//! `|x − base|` times the row's KL divergence between the softmaxed rows is an outlier
//! (at least median + 1.5·IQR of all importances).
//!
//! Follows mergekit's `arcee_fusion`: the base plus exactly one other model. Importance
//! `|x − base| · KL(softmax(x) + 1e-8 ‖ softmax(base) + 1e-8)`, the KL taken along the last
//! axis (`Σ p·ln(p/q)`) and broadcast over its row (a 1-D tensor is one row). Threshold
//! `median + 1.5·(q₃ − q₁)` of the importances, quantile `q` being element `⌊q·(n−1)⌋` of the
//! sorted values; above 1,000,000 elements the quantiles come from 1,000,000 elements drawn
//! uniformly with replacement. Result `base + (x − base)·mask` with a float32 mask, which
//! PyTorch promotes to float32: [`MethodInfo::result_dtype`] is F32 whatever the math dtype
//! (mergekit issue #604).
//!
//! Numbers: elementwise steps rounded to the math dtype as PyTorch does; the KL sums replay
//! PyTorch's float32 reduction order ([`torch_sum`]); the softmax (whose `exp` PyTorch takes
//! from a vectorised approximation) sums in `f64`; the three quantiles are found by
//! selection, not a full sort. The sample of a large tensor is drawn from
//! [`super::rng::RngKey`] (seed and tensor name), so it is reproducible at any thread count
//! but is not the sample mergekit's `torch.randint` draws: on such tensors the threshold, and
//! so a few borderline elements, can differ from mergekit's (as they differ between two
//! mergekit runs without `--random-seed`).

use super::rng::RngKey;
use super::vecmath::{Lines, torch_sum, unary};
use super::{BaseUse, MergeCtx, MergeMethod, MethodInfo};
use crate::dtype::DType;
use rayon::prelude::*;

/// The Arcee Fusion method.
pub struct ArceeFusion;

/// Above this many elements the quantiles are estimated from a sample of this size.
const SAMPLE: usize = 1_000_000;
/// Added to both softmax outputs before the KL divergence.
const SOFTMAX_EPS: f32 = 1e-8;

static INFO: MethodInfo = MethodInfo {
    name: "arcee_fusion",
    pretty_name: "Arcee Fusion",
    url: Some("https://arcee.ai"),
    params: &[],
    base: BaseUse::Required,
    rectify_embeddings: true,
    result_dtype: Some(DType::F32),
    elementwise: false,
};

impl MergeMethod for ArceeFusion {
    fn info(&self) -> &'static MethodInfo {
        &INFO
    }

    fn merge(&self, ctx: &MergeCtx<'_>, out: &mut [f32]) -> Result<(), String> {
        if ctx.inputs.len() == 1 {
            out.copy_from_slice(ctx.inputs[0].data);
            return Ok(());
        }
        let base = ctx
            .base()
            .ok_or("arcee_fusion: the base model's tensor is missing")?
            .data;
        let others: Vec<&[f32]> = ctx.others().map(|i| i.data).collect();
        let [x] = others[..] else {
            return Err(format!(
                "arcee_fusion merges exactly two models (the base and one other), got {}",
                others.len() + 1
            ));
        };
        let m = ctx.math;
        let lines = Lines::last_axis(ctx.shape);
        if lines.count * lines.len != out.len() {
            return Err(format!(
                "arcee_fusion: shape {:?} does not match {} elements",
                ctx.shape,
                out.len()
            ));
        }
        // KL divergence per row.
        let kl: Vec<f32> = (0..lines.count)
            .into_par_iter()
            .map(|k| {
                let row = |d: &[f32]| -> Vec<f32> {
                    let vals: Vec<f32> = (0..lines.len).map(|i| d[lines.index(k, i)]).collect();
                    softmax_plus_eps(m, &vals)
                };
                let (p, q) = (row(x), row(base));
                let s = torch_sum(p.len(), |i| {
                    m.round(p[i] * unary(m, m.round(p[i] / q[i]), f64::ln))
                });
                m.round(s)
            })
            .collect();
        // Importance, kept in `out` until the mask is applied.
        out.par_iter_mut().enumerate().for_each(|(j, o)| {
            let diff = m.round(m.round(x[j] - base[j]).abs());
            *o = m.round(diff * kl[lines.line_of(j)]);
        });
        let threshold = threshold(m, out, RngKey::new(ctx.seed, ctx.tensor));
        out.par_iter_mut().enumerate().for_each(|(j, o)| {
            let mask = if *o >= threshold { 1.0f32 } else { 0.0 };
            *o = base[j] + m.round(x[j] - base[j]) * mask;
        });
        Ok(())
    }
}

/// `softmax(v) + 1e-8` as PyTorch computes it for dtype `m` (max-shifted exponentials, their
/// sum inverted once, each output rounded to `m`).
fn softmax_plus_eps(m: DType, v: &[f32]) -> Vec<f32> {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = v.iter().map(|&x| ((x - max) as f64).exp() as f32).collect();
    let sum = e.iter().map(|&x| x as f64).sum::<f64>() as f32;
    let inv = 1.0 / sum;
    e.iter()
        .map(|&x| m.round(m.round(x * inv) + SOFTMAX_EPS))
        .collect()
}

/// `median + 1.5·(q₃ − q₁)` of `imp` (sampled above [`SAMPLE`] elements), in dtype `m`.
fn threshold(m: DType, imp: &[f32], key: RngKey) -> f32 {
    let n = imp.len();
    if n == 0 {
        return 0.0;
    }
    let mut v: Vec<f32> = if n > SAMPLE {
        (0..SAMPLE as u64)
            .into_par_iter()
            .map(|s| {
                let i = ((key.uniform_f64(u32::MAX, s) * n as f64) as usize).min(n - 1);
                imp[i]
            })
            .collect()
    } else {
        imp.to_vec()
    };
    let last = (v.len() - 1) as f32;
    // mergekit: (tensor([.25, .5, .75]) * (n − 1)).long(), in f32.
    let at = |q: f32| (q * last) as usize;
    let [q1, med, q3] = select3(&mut v, [at(0.25), at(0.5), at(0.75)]);
    m.round(med + m.round(1.5 * m.round(q3 - q1)))
}

/// The values of rank `i₁ ≤ i₂ ≤ i₃` in `v` (ascending, NaN last), by selection.
fn select3(v: &mut [f32], [i1, i2, i3]: [usize; 3]) -> [f32; 3] {
    let cmp = |a: &f32, b: &f32| a.total_cmp(b);
    let (left, mid, right) = v.select_nth_unstable_by(i2, cmp);
    let mid = *mid;
    let a = if i1 < i2 {
        *left.select_nth_unstable_by(i1, cmp).1
    } else {
        mid
    };
    let c = if i3 > i2 {
        *right.select_nth_unstable_by(i3 - i2 - 1, cmp).1
    } else {
        mid
    };
    [a, mid, c]
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{p, run};
    use super::super::vecmath::testutil::run_shaped;
    use super::*;

    #[test]
    fn only_outlier_changes_are_kept() {
        // Importances ∝ [0,0,0,1,10]: q₁ = med = 0 (ranks 1, 2), q₃ = 1·KL (rank 3),
        // threshold 1.5·KL: only the last change survives.
        let base = [0.0f32; 5];
        let x = [0.0f32, 0.0, 0.0, 1.0, 10.0];
        let r = run(
            &ArceeFusion,
            &[(&base, true, p(&[])), (&x, false, p(&[]))],
            p(&[]),
            DType::F32,
        )
        .unwrap();
        assert_eq!(r, vec![0.0, 0.0, 0.0, 0.0, 10.0]);
    }

    #[test]
    fn kl_is_per_row() {
        // Row 0 is a constant shift: same softmax as the base, KL 0, importance 0 despite
        // the large change. Row 1: importances K·[1,2,3,4]; sorted all = [0,0,0,0,K,2K,3K,4K],
        // q₁ = med = 0, q₃ = 2K → threshold 3K keeps the last two of row 1.
        let base = [0.0f32; 8];
        let x = [5.0f32, 5.0, 5.0, 5.0, 1.0, 2.0, 3.0, 4.0];
        let r = run_shaped(
            &ArceeFusion,
            &[(&base, true, p(&[])), (&x, false, p(&[]))],
            &[2, 4],
            p(&[]),
            DType::F32,
        )
        .unwrap();
        assert_eq!(r, vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 4.0]);
    }

    #[test]
    fn result_is_float32_even_for_bf16_math() {
        assert_eq!(ArceeFusion.info().result_dtype, Some(DType::F32));
        // All importances but one are 0, so the threshold is 0 and everything is kept:
        // base + (x − base)·mask, computed in f32.
        let base = [1.0f32, 1.0, 1.0, 1.0, 1.0];
        let x = [1.0f32, 1.0, 1.0, 1.0, 3.0];
        let r = run(
            &ArceeFusion,
            &[(&base, true, p(&[])), (&x, false, p(&[]))],
            p(&[]),
            DType::BF16,
        )
        .unwrap();
        assert_eq!(r, vec![1.0, 1.0, 1.0, 1.0, 3.0]);
    }

    #[test]
    fn single_input_and_errors() {
        let a = [0.5f32, 2.0];
        let r = run(&ArceeFusion, &[(&a, false, p(&[]))], p(&[]), DType::F32).unwrap();
        assert_eq!(r, a.to_vec());
        let e = run(
            &ArceeFusion,
            &[(&a, false, p(&[])), (&a, false, p(&[]))],
            p(&[]),
            DType::F32,
        )
        .unwrap_err();
        assert!(e.contains("base"), "{e}");
    }

    #[test]
    fn select3_matches_sorting() {
        let data: Vec<f32> = (0..101).map(|i| ((i * 37) % 101) as f32).collect();
        let mut v = data.clone();
        assert_eq!(select3(&mut v, [25, 50, 75]), [25.0, 50.0, 75.0]);
        let mut v = vec![3.0f32, 1.0];
        assert_eq!(select3(&mut v, [0, 0, 0]), [1.0, 1.0, 1.0]);
    }

    #[test]
    fn large_tensor_sample_is_deterministic() {
        // Above 1e6 elements the quantiles come from a keyed sample: same bits every run,
        // and every output is either the base's or the model's value.
        let shape = [1001usize, 1000];
        let n = shape[0] * shape[1];
        let base: Vec<f32> = (0..n).map(|i| ((i % 13) as f32) * 0.01).collect();
        let x: Vec<f32> = (0..n)
            .map(|i| base[i] + (((i * 7919 % 1009) as f32) / 1009.0).powi(4))
            .collect();
        let ins = [(&base[..], true, p(&[])), (&x[..], false, p(&[]))];
        let r1 = run_shaped(&ArceeFusion, &ins, &shape, p(&[]), DType::F32).unwrap();
        let r2 = run_shaped(&ArceeFusion, &ins, &shape, p(&[]), DType::F32).unwrap();
        assert_eq!(r1, r2);
        let kept = (0..n).filter(|&i| r1[i] != base[i]).count();
        assert!((0..n).all(|i| r1[i] == base[i] || r1[i] == base[i] + (x[i] - base[i])));
        assert!(kept > 0 && kept < n / 2, "{kept}");
    }
}
