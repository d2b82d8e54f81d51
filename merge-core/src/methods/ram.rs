//! `ram` (Reinforced Agent Merging) and the shared kernel of `ramplus_tl` (mergekit spec §2.13).
//! Base required; global `epsilon` (default 1e-5).
//!
//! With `τᵢ = round(xᵢ − base)`: model i is *active* at an element when `|τᵢ| > ε` (ε rounded
//! to the math dtype, as PyTorch's comparison with a scalar does); `c` = number of active
//! models. An element with `c = 1` takes the single active value, one with `c > 1` the sum of
//! `round(τᵢ / c)` over the active models (the mean, computed as mergekit does), an inactive
//! one keeps the base. `ramplus_tl` additionally multiplies model i's unique contributions by
//! `λᵢ = 1 + r·clamp(ρᵢ, 0, α)` where `ρᵢ` = (elements where i is active and shared) /
//! max(elements where i is the only active model, ε), computed in `f32`. In mergekit the `f32`
//! `λ` promotes the whole `ramplus_tl` result to `f32` (its method info says so), so its unique
//! terms and the final sum are not rounded to the math dtype.
//!
//! # Divergence from mergekit
//! mergekit passes the non-base tensors in Python `set` order (arbitrary); smelt uses source
//! order. Only the `f32` rounding of the sums over models can differ. A `ramplus_tl` tensor
//! with no non-base input is the base, returned as `f32` like every other `ramplus_tl` tensor
//! (mergekit keeps the base dtype for it; the values are identical).

use super::round::{Round, with_round};
use super::sparsify::{CHUNK, round_scalar};
use super::{BaseUse, MergeCtx, MergeMethod, MethodInfo, ParamSpec};
use rayon::prelude::*;

/// The `ram` method.
pub struct Ram;

/// Below this magnitude a task-vector element is inactive (shared with `ramplus_tl`).
pub(super) const EPSILON: ParamSpec = ParamSpec::global("epsilon", 1e-5);

static INFO: MethodInfo = MethodInfo {
    name: "ram",
    pretty_name: "Reinforced Agent Merging",
    url: Some("https://arxiv.org/abs/2601.13572"),
    params: &[EPSILON],
    base: BaseUse::Required,
    rectify_embeddings: false,
    result_dtype: None,
    elementwise: true,
};

impl MergeMethod for Ram {
    fn info(&self) -> &'static MethodInfo {
        &INFO
    }

    fn merge(&self, ctx: &MergeCtx<'_>, out: &mut [f32]) -> Result<(), String> {
        merge_ram(ctx, out, None)
    }
}

/// The RAM kernel; `plus = Some((r, alpha))` for `ramplus_tl`.
pub fn merge_ram(
    ctx: &MergeCtx<'_>,
    out: &mut [f32],
    plus: Option<(f64, f64)>,
) -> Result<(), String> {
    with_round!(ctx.math, R => ram_with::<R>(ctx, out, plus))
}

fn ram_with<R: Round>(
    ctx: &MergeCtx<'_>,
    out: &mut [f32],
    plus: Option<(f64, f64)>,
) -> Result<(), String> {
    let m = ctx.math;
    let base = ctx
        .base()
        .ok_or("this method needs a base model (set `base_model`)")?
        .data;
    let xs: Vec<&[f32]> = ctx.others().map(|i| i.data).collect();
    let n = out.len();
    if xs.is_empty() {
        out.copy_from_slice(base);
        return Ok(());
    }
    let nm = xs.len();
    let eps = EPSILON.number(ctx.global);
    let eps_m = round_scalar(m, eps);
    let tau = |i: usize, j: usize| R::round(xs[i][j] - base[j]);
    let active = |t: f32| t.abs() > eps_m;
    let count = |j: usize| (0..nm).filter(|&i| active(tau(i, j))).count();

    // ramplus_tl: per-model factor on unique contributions
    let lambdas: Option<Vec<f32>> = plus.map(|(r, alpha)| {
        let parts: Vec<Vec<(u64, u64)>> = (0..n.div_ceil(CHUNK))
            .into_par_iter()
            .map(|c| {
                let mut acc = vec![(0u64, 0u64); nm];
                for j in c * CHUNK..((c + 1) * CHUNK).min(n) {
                    let cnt = count(j);
                    for (i, a) in acc.iter_mut().enumerate() {
                        if active(tau(i, j)) {
                            if cnt > 1 {
                                a.0 += 1;
                            } else {
                                a.1 += 1;
                            }
                        }
                    }
                }
                acc
            })
            .collect();
        let mut tot = vec![(0u64, 0u64); nm];
        for part in parts {
            for (t, p) in tot.iter_mut().zip(part) {
                t.0 += p.0;
                t.1 += p.1;
            }
        }
        tot.iter()
            .map(|(shared, unique)| {
                let rho = *shared as f32 / (*unique as f32).max(eps as f32);
                1.0 + (r as f32) * rho.clamp(0.0, alpha as f32)
            })
            .collect()
    });
    let lambdas = &lambdas;

    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, oc)| {
        for (l, o) in oc.iter_mut().enumerate() {
            let j = c * CHUNK + l;
            let b = base[j];
            let cnt = count(j);
            let mut s = 0.0f32;
            for i in 0..nm {
                let t = tau(i, j);
                if !active(t) {
                    continue;
                }
                s += if cnt == 1 {
                    match lambdas {
                        Some(lam) => t * lam[i],
                        None => t,
                    }
                } else {
                    R::round(t / cnt as f32)
                };
            }
            *o = match lambdas {
                Some(_) => b + s,
                None => R::round(b + R::round(s)),
            };
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{p, run};
    use super::*;
    use crate::dtype::DType;

    #[test]
    fn example_from_spec() {
        // §2.13: A=[0,.5,1,0], B=[0,0,3,2] (base 0) → [0, .5, 2, 2]
        let base = [0.0f32; 4];
        let a = [0.0f32, 0.5, 1.0, 0.0];
        let b = [0.0f32, 0.0, 3.0, 2.0];
        let out = run(
            &Ram,
            &[
                (&base, true, p(&[])),
                (&a, false, p(&[])),
                (&b, false, p(&[])),
            ],
            p(&[("epsilon", 1e-5)]),
            DType::F32,
        )
        .unwrap();
        assert_eq!(out, vec![0.0, 0.5, 2.0, 2.0]);
    }

    #[test]
    fn below_epsilon_is_inactive() {
        let base = [1.0f32, 1.0];
        let a = [1.000001f32, 2.0];
        let out = run(
            &Ram,
            &[(&base, true, p(&[])), (&a, false, p(&[]))],
            p(&[("epsilon", 1e-5)]),
            DType::F32,
        )
        .unwrap();
        assert_eq!(out, vec![1.0, 2.0]);
    }
}
