//! Embedding row maps (mergekit §4.3): for each output row of an embedding or head tensor and
//! each of its input models, where the row comes from — the model's own row, a default
//! embedding shared by all models (another model's row, the mean of the models that have the
//! token, a configured row, or zero), or, beyond the real vocabulary, the mean of the model's
//! real rows. The planner builds a [`RowMap`] per tensor; the executor calls
//! [`read_remapped`] to build each input's matrix in output-vocabulary order before the merge
//! method runs.

use std::collections::HashMap;

use super::config::{EmbedSource, TokenRef, TokenizerSpec};
use super::{Slot, Vocabulary};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::methods::vecmath::torch_sum_dim0;
use crate::plan::{Plan, PlannedTensor};

/// Where one real output row of one input comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowSrc {
    /// That row of the input's own tensor.
    Own(usize),
    /// Entry of [`RowMap::defaults`].
    Default(usize),
}

/// A default embedding, shared by every input that lacks the token (or all, when forced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultRow {
    /// A zero vector.
    Zero,
    /// Row `row` of the tensor's source `source` (index into `PlannedTensor::sources`).
    Row {
        /// The source.
        source: usize,
        /// The row.
        row: usize,
    },
    /// The mean of these `(source, row)` rows, summed in this order in the math dtype.
    Mean(Vec<(usize, usize)>),
}

/// How every input of one embedding tensor is remapped to the output vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowMap {
    /// Output rows (the vocabulary padded to `pad_to_multiple_of`).
    pub rows: usize,
    /// Rows that hold a token; the rest are padding (the mean of the input's real rows).
    pub real: usize,
    /// The default embeddings the inputs use.
    pub defaults: Vec<DefaultRow>,
    /// Per source (as in `PlannedTensor::sources`), the origin of each real row.
    pub sources: Vec<Vec<RowSrc>>,
}

/// One input of the tensor being mapped.
#[derive(Debug, Clone, Copy)]
pub struct MapSource {
    /// Index of the model in the plan (and in [`Vocabulary::perms`]).
    pub model: usize,
    /// Whether it is the base model of the tensor's slice.
    pub is_base: bool,
    /// Rows of its tensor.
    pub rows: usize,
}

/// Builds the row map of tensor `tensor` whose inputs are `sources`. `model_of` resolves a
/// model named in `tokens:` to its plan index; `name` gives a model's name for messages.
/// Findings that mergekit would crash on (a token at an id beyond a model's `vocab_size`)
/// fall back to the default rules and are reported in `warnings`.
pub fn build_row_map(
    vocab: &Vocabulary,
    spec: &TokenizerSpec,
    tensor: &str,
    sources: &[MapSource],
    model_of: &dyn Fn(&crate::recipe::ModelRef) -> Option<usize>,
    name: &dyn Fn(usize) -> String,
    warnings: &mut Vec<String>,
) -> Result<RowMap> {
    let cfg: HashMap<&str, &super::config::TokenSpec> =
        spec.tokens.iter().map(|t| (t.token.as_str(), t)).collect();
    let mut defaults = Vec::new();
    let mut per: Vec<Vec<RowSrc>> = vec![Vec::with_capacity(vocab.tokens.len()); sources.len()];
    let mut unusable = Unusable {
        beyond: vec![Vec::new(); sources.len()],
        short: vec![Vec::new(); sources.len()],
        nowhere: Vec::new(),
    };
    let err = |reason: String| Error::TokenRowSource {
        tensor: tensor.to_string(),
        reason,
    };
    let source_of = |r: &crate::recipe::ModelRef, what: &str| -> Result<(usize, usize)> {
        let m = model_of(r).ok_or_else(|| {
            err(format!(
                "{what} names model `{r}`, which is not part of the merge"
            ))
        })?;
        let s = sources.iter().position(|s| s.model == m).ok_or_else(|| {
            err(format!(
                "{what} names model `{r}`, which does not contribute this tensor"
            ))
        })?;
        Ok((m, s))
    };
    let mut has = vec![None; sources.len()];
    for (id, tok) in vocab.tokens.iter().enumerate() {
        for (k, s) in sources.iter().enumerate() {
            has[k] = match vocab.perms[s.model][id] {
                Slot::Row(r) if r < s.rows => Some(r),
                Slot::Row(_) => {
                    unusable.short[k].push(tok.clone());
                    None
                }
                Slot::Beyond(_) => {
                    unusable.beyond[k].push(tok.clone());
                    None
                }
                Slot::Absent => None,
            };
        }
        let c = cfg.get(tok.as_str()).copied();
        let force = c.is_some_and(|c| c.force);
        let default = if force || has.iter().any(|h| h.is_none()) {
            let what = format!("`tokenizer.tokens.{tok}.source`");
            let d = match c.and_then(|c| c.source.as_ref()) {
                Some(EmbedSource::Zero) => DefaultRow::Zero,
                Some(EmbedSource::Model(r)) => {
                    let (_, s) = source_of(r, &what)?;
                    let row = has[s].ok_or_else(|| {
                        err(format!(
                            "{what}: token {tok:?} is not in model `{r}`'s vocabulary"
                        ))
                    })?;
                    DefaultRow::Row { source: s, row }
                }
                Some(EmbedSource::ModelToken { model, token }) => {
                    let (m, s) = source_of(model, &what)?;
                    let row = match token {
                        TokenRef::Id(i) => *i,
                        TokenRef::Token(t) => *vocab.original[m].get(t).ok_or_else(|| {
                            err(format!(
                                "{what}: token {t:?} is not in model `{model}`'s vocabulary"
                            ))
                        })?,
                    };
                    if row >= sources[s].rows {
                        return Err(err(format!(
                            "{what}: row {row} is out of range for model `{model}` ({} rows)",
                            sources[s].rows
                        )));
                    }
                    DefaultRow::Row { source: s, row }
                }
                None => {
                    let present: Vec<(usize, usize)> = has
                        .iter()
                        .enumerate()
                        .filter_map(|(k, h)| h.map(|r| (k, r)))
                        .collect();
                    match present.as_slice() {
                        [] => {
                            unusable.nowhere.push(tok.clone());
                            DefaultRow::Zero
                        }
                        [(s, row)] => DefaultRow::Row {
                            source: *s,
                            row: *row,
                        },
                        _ => match present.iter().find(|(k, _)| sources[*k].is_base) {
                            Some(&(s, row)) => DefaultRow::Row { source: s, row },
                            None => DefaultRow::Mean(present),
                        },
                    }
                }
            };
            defaults.push(d);
            Some(defaults.len() - 1)
        } else {
            None
        };
        for (k, h) in has.iter().enumerate() {
            per[k].push(match (h, default) {
                (Some(r), _) if !force => RowSrc::Own(*r),
                (_, Some(d)) => RowSrc::Default(d),
                (Some(r), None) => RowSrc::Own(*r),
                (None, None) => unreachable!("a default exists whenever a source lacks the token"),
            });
        }
    }
    unusable.report(vocab, tensor, sources, name, warnings);
    Ok(RowMap {
        rows: vocab.rows,
        real: vocab.tokens.len(),
        defaults,
        sources: per,
    })
}

/// The tokens of the output vocabulary a tensor's sources cannot give rows for.
struct Unusable {
    /// Per source: tokens at ids ≥ the model's `vocab_size` in its tokenizer.
    beyond: Vec<Vec<String>>,
    /// Per source: tokens at ids beyond the rows of its tensor.
    short: Vec<Vec<String>>,
    /// Tokens in no input model.
    nowhere: Vec<String>,
}

impl Unusable {
    /// One warning per source with unusable tokens (a sample of them), and one for the
    /// tokens in no model.
    fn report(
        &self,
        vocab: &Vocabulary,
        tensor: &str,
        sources: &[MapSource],
        name: &dyn Fn(usize) -> String,
        warnings: &mut Vec<String>,
    ) {
        let sample = |v: &[String]| {
            let mut s: Vec<String> = v.iter().take(5).map(|t| format!("{t:?}")).collect();
            if v.len() > 5 {
                s.push("…".into());
            }
            s.join(", ")
        };
        for (k, s) in sources.iter().enumerate() {
            if !self.beyond[k].is_empty() {
                warnings.push(format!(
                    "model `{}`: {} token(s) of the output vocabulary sit at ids ≥ its vocab_size {} in its tokenizer ({}); mergekit fails on these (KeyError), smelt gives them the default embedding",
                    name(s.model),
                    self.beyond[k].len(),
                    vocab.vocab_sizes[s.model],
                    sample(&self.beyond[k])
                ));
            }
            if !self.short[k].is_empty() {
                warnings.push(format!(
                    "model `{}`: {} token(s) have ids beyond the {} rows of its tensor `{tensor}` ({}); they get the default embedding",
                    name(s.model),
                    self.short[k].len(),
                    s.rows,
                    sample(&self.short[k])
                ));
            }
        }
        if !self.nowhere.is_empty() {
            warnings.push(format!(
                "{} token(s) of the output vocabulary are in no input model ({}); their embedding is zero",
                self.nowhere.len(),
                sample(&self.nowhere)
            ));
        }
    }
}

/// Reads rows of one source of `t` in the math dtype (whole tensor when a LoRA delta applies).
struct RowReader<'a> {
    plan: &'a Plan,
    t: &'a PlannedTensor,
    full: HashMap<usize, Vec<f32>>,
}

impl RowReader<'_> {
    fn row(&mut self, src: usize, row: usize, dst: &mut [f32]) -> Result<()> {
        let s = &self.t.sources[src];
        let ck = &self.plan.models[s.model].checkpoint;
        let info = self.plan.source_info(s);
        let cols = info.shape[1];
        if ck.has_delta(&s.tensor) {
            if let std::collections::hash_map::Entry::Vacant(e) = self.full.entry(src) {
                let mut v = vec![0f32; info.numel()];
                ck.read_tensor_f32(&s.tensor, info, &mut v)?;
                e.insert(v);
            }
            dst.copy_from_slice(&self.full[&src][row * cols..(row + 1) * cols]);
        } else {
            ck.read_f32(info, row * cols..(row + 1) * cols, dst)?;
        }
        self.t.math.round_slice(dst);
        Ok(())
    }
}

/// Builds source `si`'s matrix of tensor `t` in output-vocabulary order into `out`
/// (`t.shape` elements), in `t.math`: own rows, default embeddings (means summed in source
/// order, each step rounded to the math dtype, as PyTorch does), then padding rows set to the
/// column mean of the real rows (PyTorch's `mean(dim=0)`: its float32 sum, divided, rounded).
pub fn read_remapped(
    plan: &Plan,
    t: &PlannedTensor,
    si: usize,
    map: &RowMap,
    out: &mut [f32],
) -> Result<()> {
    let cols = t.shape[1];
    let m = t.math;
    let mut rd = RowReader {
        plan,
        t,
        full: HashMap::new(),
    };
    let mut computed: HashMap<usize, Vec<f32>> = HashMap::new();
    let mut tmp = vec![0f32; cols];
    for (r, src) in map.sources[si].iter().enumerate() {
        let dst = &mut out[r * cols..(r + 1) * cols];
        match *src {
            RowSrc::Own(row) => rd.row(si, row, dst)?,
            RowSrc::Default(d) => {
                if let std::collections::hash_map::Entry::Vacant(slot) = computed.entry(d) {
                    let v = match &map.defaults[d] {
                        DefaultRow::Zero => vec![0f32; cols],
                        DefaultRow::Row { source, row } => {
                            let mut v = vec![0f32; cols];
                            rd.row(*source, *row, &mut v)?;
                            v
                        }
                        DefaultRow::Mean(list) => {
                            let mut acc = vec![0f32; cols];
                            for &(source, row) in list {
                                rd.row(source, row, &mut tmp)?;
                                for (a, x) in acc.iter_mut().zip(&tmp) {
                                    *a = m.round(*a + *x);
                                }
                            }
                            let n = list.len() as f32;
                            acc.iter_mut().for_each(|a| *a = m.round(*a / n));
                            acc
                        }
                    };
                    slot.insert(v);
                }
                dst.copy_from_slice(&computed[&d]);
            }
        }
    }
    if map.rows > map.real && map.real > 0 {
        let half = m != DType::F32;
        let real = &out[..map.real * cols];
        let sums = torch_sum_dim0(map.real, cols, half, |r, c| real[r * cols + c]);
        let n = map.real as f32;
        let mean: Vec<f32> = sums.iter().map(|s| m.round(s / n)).collect();
        for r in map.real..map.rows {
            out[r * cols..(r + 1) * cols].copy_from_slice(&mean);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::ModelRef;
    use crate::vocab::config::{SourceKind, TokenSpec};
    use crate::vocab::tokenizer::ModelTokenizer;

    fn vocab(tokens: &[&str], perms: Vec<Vec<Slot>>, rows: usize) -> Vocabulary {
        Vocabulary {
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            rows,
            original: perms
                .iter()
                .map(|p| {
                    p.iter()
                        .zip(tokens)
                        .filter_map(|(s, t)| match s {
                            Slot::Row(r) => Some((t.to_string(), *r)),
                            _ => None,
                        })
                        .collect()
                })
                .collect(),
            vocab_sizes: vec![4; perms.len()],
            perms,
            json: serde_json::json!({}),
            template_source: ModelTokenizer {
                dir: Default::default(),
                json: serde_json::json!({}),
                config: None,
                special: None,
                has_jinja: false,
            },
        }
    }

    fn spec(tokens: Vec<TokenSpec>) -> TokenizerSpec {
        TokenizerSpec {
            source: SourceKind::Union,
            pad_to_multiple_of: None,
            tokens,
            pos: Default::default(),
        }
    }

    fn src(model: usize, is_base: bool) -> MapSource {
        MapSource {
            model,
            is_base,
            rows: 4,
        }
    }

    #[test]
    fn default_rules_choose_single_base_mean_zero() {
        use Slot::*;
        // tokens: shared, only-in-1, base-and-2, in-1-and-2, nowhere, beyond-in-2
        let v = vocab(
            &["s", "one", "b2", "m12", "none", "bey"],
            vec![
                vec![Row(0), Absent, Row(1), Absent, Absent, Absent],
                vec![Row(0), Row(3), Absent, Row(1), Absent, Absent],
                vec![Row(0), Absent, Row(2), Row(3), Absent, Beyond(9)],
            ],
            8,
        );
        let mut w = Vec::new();
        let map = build_row_map(
            &v,
            &spec(vec![]),
            "t",
            &[src(0, true), src(1, false), src(2, false)],
            &|_| None,
            &|i| format!("m{i}"),
            &mut w,
        )
        .unwrap();
        assert_eq!((map.rows, map.real), (8, 6));
        let d = |k: usize, r: usize| match map.sources[k][r] {
            RowSrc::Default(i) => map.defaults[i].clone(),
            RowSrc::Own(o) => panic!("source {k} row {r}: own {o}"),
        };
        assert_eq!(map.sources[0][0], RowSrc::Own(0));
        assert_eq!(d(0, 1), DefaultRow::Row { source: 1, row: 3 });
        assert_eq!(
            d(1, 2),
            DefaultRow::Row { source: 0, row: 1 },
            "base has it"
        );
        assert_eq!(d(0, 3), DefaultRow::Mean(vec![(1, 1), (2, 3)]));
        assert_eq!(d(1, 4), DefaultRow::Zero);
        assert_eq!(
            d(2, 5),
            DefaultRow::Zero,
            "beyond vocab_size: treated as absent"
        );
        assert!(
            w.iter().any(|m| m.contains("KeyError") && m.contains("m2")),
            "{w:?}"
        );
        assert!(w.iter().any(|m| m.contains("no input model")), "{w:?}");
    }

    #[test]
    fn configured_sources_and_force() {
        use Slot::*;
        let v = vocab(
            &["a", "b", "c"],
            vec![vec![Row(0), Absent, Row(2)], vec![Row(1), Row(2), Absent]],
            3,
        );
        let m1 = ModelRef::parse("m1").unwrap();
        let tokens = vec![
            TokenSpec {
                token: "a".into(),
                source: Some(EmbedSource::ModelToken {
                    model: m1.clone(),
                    token: TokenRef::Token("b".into()),
                }),
                force: true,
            },
            TokenSpec {
                token: "c".into(),
                source: Some(EmbedSource::Zero),
                force: false,
            },
        ];
        let model_of = |r: &ModelRef| (r.path == "m1").then_some(1);
        let mut w = Vec::new();
        let map = build_row_map(
            &v,
            &spec(tokens),
            "t",
            &[src(0, false), src(1, false)],
            &model_of,
            &|i| format!("m{i}"),
            &mut w,
        )
        .unwrap();
        // forced: both models take model 1's row of token "b" (its row 2)
        for k in 0..2 {
            let RowSrc::Default(i) = map.sources[k][0] else {
                panic!("forced")
            };
            assert_eq!(map.defaults[i], DefaultRow::Row { source: 1, row: 2 });
        }
        // not forced: model 0 keeps its own row of "c", model 1 gets zero
        assert_eq!(map.sources[0][2], RowSrc::Own(2));
        let RowSrc::Default(i) = map.sources[1][2] else {
            panic!()
        };
        assert_eq!(map.defaults[i], DefaultRow::Zero);
        // a configured model that is not an input, or a row out of range, is an error
        let bad = spec(vec![TokenSpec {
            token: "b".into(),
            source: Some(EmbedSource::ModelToken {
                model: m1,
                token: TokenRef::Id(4),
            }),
            force: false,
        }]);
        let e = build_row_map(
            &v,
            &bad,
            "t",
            &[src(0, false), src(1, false)],
            &model_of,
            &|i| format!("m{i}"),
            &mut w,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("out of range"), "{e}");
    }

    #[test]
    fn column_sums_follow_pytorchs_outer_reduction() {
        // 10 rows (< one cascade level): a grouped column is the plain sequential sum; a
        // column outside the groups of 32 is the four-way interleaved sum
        let rows = 10;
        let f = |r: usize, c: usize| ((r * 7 + c * 3) % 11) as f32 * 0.1 + 1e-4 * r as f32;
        let seq = |c: usize| (0..rows).fold(0f32, |a, r| a + f(r, c));
        let ilp = |c: usize| {
            let mut p = [0f32; 4];
            for (k, pk) in p.iter_mut().enumerate() {
                for i in 0..rows / 4 {
                    *pk += f(i * 4 + k, c);
                }
            }
            for r in rows / 4 * 4..rows {
                p[0] += f(r, c);
            }
            ((p[0] + p[1]) + p[2]) + p[3]
        };
        let s = torch_sum_dim0(rows, 40, false, f);
        for (c, v) in s.iter().enumerate() {
            let want = if c < 32 { seq(c) } else { ilp(c) };
            assert_eq!(v.to_bits(), want.to_bits(), "col {c}");
        }
    }
}
