//! PEFT LoRA adapters: reading an adapter folder and adding its low-rank deltas to base
//! weights, as PEFT's `merge_and_unload` does for a `model+lora` reference (spec §1.2).
//!
//! An adapter folder holds `adapter_config.json` and `adapter_model.safetensors` (or a torch
//! `adapter_model.bin`, read with [`smelt_formats::torch`]). Tensor keys look like
//! `base_model.model.<module>.lora_A.weight` / `.lora_B.weight` (linear layers; A is
//! `r × in`, B is `out × r`) or `base_model.model.<module>.lora_embedding_A` / `_B` (embeddings,
//! with or without a trailing `.weight`; A is `r × num_embeddings`, B is `dim × r`). Each module
//! changes the base tensor `<module>.weight`:
//!
//! * linear: `W (out × in) += scale · (B @ A)`, or with `fan_in_fan_out` (GPT-2 `Conv1D`,
//!   `W` stored `in × out`) `W += scale · (B @ A)ᵀ`;
//! * embedding: `W (num_embeddings × dim) += scale · (B @ A)ᵀ`;
//! * `scale = alpha / r`, or `alpha / √r` with `use_rslora`; computed in f64 and rounded to f32,
//!   the precision torch uses when it multiplies an f32 tensor by a Python float.
//!
//! **Per-module rank and alpha.** `rank_pattern` / `alpha_pattern` keys are matched the way PEFT
//! (`peft.utils.other.get_pattern_key`) matches them: a key `K` applies to module name `M` when
//! `M` matches the regex `(.*\.)?(K)$` from its start, i.e. `M` equals `K` or ends with `.K`
//! (a leading `^` in `K` makes it match the whole name only); the first matching key in the
//! file's order wins, and rank and alpha are looked up independently (default: `r`,
//! `lora_alpha`). In `K`, `.` matches any character and `\.` a literal dot, as in Python regex;
//! keys using other regex syntax (`*`, `[`, `(`, `|`, ...) are rejected with an error rather
//! than matched approximately. The rank found must equal the rows of `lora_A`.
//!
//! `target_modules` is parsed and kept for information: which modules change is decided by
//! the tensors present in the adapter. Adapters smelt cannot apply faithfully are refused:
//! DoRA (`use_dora`, `lora_magnitude_vector`), trained biases, `modules_to_save` copies and any
//! other unknown tensor key.
//!
//! [`apply_lora`] computes the delta in f32 with a fixed summation order (rank index ascending,
//! each step a fused multiply-add), in parallel over rows, so results are identical at any
//! thread count. With that order the fixture adapter reproduces mergekit's (PEFT on CPU)
//! merged weights bit for bit; a plain multiply-then-add sum matches only ~96 % of values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::dtype::DType;
use crate::error::{Error, Result};

/// The `target_modules` setting of an adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetModules {
    /// A list of module-name suffixes.
    List(Vec<String>),
    /// A regular expression matched against full module names.
    Regex(String),
    /// Not given.
    None,
}

/// The parts of a PEFT `adapter_config.json` that affect merging.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// Default rank.
    pub r: usize,
    /// Default alpha.
    pub lora_alpha: f64,
    /// Which modules were adapted (informational).
    pub target_modules: TargetModules,
    /// Rank overrides, pattern → rank, in file order.
    pub rank_pattern: Vec<(String, usize)>,
    /// Alpha overrides, pattern → alpha, in file order.
    pub alpha_pattern: Vec<(String, f64)>,
    /// Whether linear weights are stored `in × out` (GPT-2 `Conv1D`).
    pub fan_in_fan_out: bool,
    /// Rank-stabilised scaling `alpha / √r`.
    pub use_rslora: bool,
}

impl LoraConfig {
    /// Parses `adapter_config.json` text; `path` is used in error messages.
    pub fn from_json(text: &str, path: &Path) -> Result<LoraConfig> {
        let bad = |reason: String| Error::bad_checkpoint(path, reason);
        let j: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let field = |k: &str| j.get(k).filter(|v| !v.is_null());
        if let Some(t) = field("peft_type").and_then(|v| v.as_str())
            && t != "LORA"
        {
            return Err(bad(format!(
                "peft_type is {t}; only LORA adapters are supported"
            )));
        }
        if field("use_dora").and_then(|v| v.as_bool()) == Some(true) {
            return Err(bad("DoRA adapters (use_dora) are not supported".into()));
        }
        let pos_int = |v: &serde_json::Value, what: &str| -> Result<usize> {
            v.as_u64()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| bad(format!("{what} must be a positive integer, found {v}")))
        };
        let number = |v: &serde_json::Value, what: &str| -> Result<f64> {
            v.as_f64()
                .ok_or_else(|| bad(format!("{what} must be a number, found {v}")))
        };
        let r = pos_int(field("r").ok_or_else(|| bad("missing `r`".into()))?, "r")?;
        let lora_alpha = match field("lora_alpha") {
            Some(v) => number(v, "lora_alpha")?,
            None => 8.0, // PEFT's default
        };
        let target_modules = match field("target_modules") {
            None => TargetModules::None,
            Some(serde_json::Value::String(s)) => TargetModules::Regex(s.clone()),
            Some(serde_json::Value::Array(a)) => TargetModules::List(
                a.iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| bad(format!("target_modules entry {v} is not a string")))
                    })
                    .collect::<Result<_>>()?,
            ),
            Some(v) => return Err(bad(format!("target_modules must be a list or string: {v}"))),
        };
        let patterns = |k: &str| -> Result<Vec<(String, serde_json::Value)>> {
            match field(k) {
                None => Ok(Vec::new()),
                Some(serde_json::Value::Object(m)) => {
                    Ok(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                }
                Some(v) => Err(bad(format!("{k} must be an object, found {v}"))),
            }
        };
        let rank_pattern = patterns("rank_pattern")?
            .into_iter()
            .map(|(k, v)| Ok((k.clone(), pos_int(&v, &format!("rank_pattern[{k}]"))?)))
            .collect::<Result<_>>()?;
        let alpha_pattern = patterns("alpha_pattern")?
            .into_iter()
            .map(|(k, v)| Ok((k.clone(), number(&v, &format!("alpha_pattern[{k}]"))?)))
            .collect::<Result<_>>()?;
        let flag = |k: &str| field(k).and_then(|v| v.as_bool()).unwrap_or(false);
        Ok(LoraConfig {
            r,
            lora_alpha,
            target_modules,
            rank_pattern,
            alpha_pattern,
            fan_in_fan_out: flag("fan_in_fan_out"),
            use_rslora: flag("use_rslora"),
        })
    }

    /// The (rank, alpha) PEFT uses for `module` (a module name like
    /// `model.layers.0.mlp.down_proj`), following `rank_pattern` / `alpha_pattern`.
    pub fn rank_and_alpha(&self, module: &str) -> std::result::Result<(usize, f64), String> {
        let mut r = self.r;
        for (k, v) in &self.rank_pattern {
            if pattern_matches(k, module)? {
                r = *v;
                break;
            }
        }
        let mut alpha = self.lora_alpha;
        for (k, v) in &self.alpha_pattern {
            if pattern_matches(k, module)? {
                alpha = *v;
                break;
            }
        }
        Ok((r, alpha))
    }

    /// The f32 scale PEFT applies for a module of rank `r` and alpha `alpha`.
    pub fn scale(&self, r: usize, alpha: f64) -> f32 {
        let r = r as f64;
        (if self.use_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }) as f32
    }
}

/// One token of a pattern key: any character (`.`) or a literal one.
#[derive(Clone, Copy, PartialEq)]
enum Tok {
    Any,
    Lit(char),
}

/// Whether `module` matches PEFT's regex `(.*\.)?(key)$` (anchored at the start by
/// `re.match`); see the module doc for the supported key syntax.
fn pattern_matches(key: &str, module: &str) -> std::result::Result<bool, String> {
    let (anchored, body) = match key.strip_prefix('^') {
        Some(rest) => (true, rest),
        None => (false, key),
    };
    let body = body.strip_suffix('$').unwrap_or(body);
    let mut toks = Vec::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '.' => toks.push(Tok::Any),
            '\\' => match chars.next() {
                Some(e @ ('.' | '_' | '-' | '/')) => toks.push(Tok::Lit(e)),
                _ => return Err(unsupported(key)),
            },
            '*' | '+' | '?' | '[' | ']' | '(' | ')' | '{' | '}' | '|' | '^' | '$' => {
                return Err(unsupported(key));
            }
            c => toks.push(Tok::Lit(c)),
        }
    }
    let name: Vec<char> = module.chars().collect();
    let fits = |start: usize| {
        name.len() - start == toks.len()
            && toks
                .iter()
                .zip(&name[start..])
                .all(|(t, c)| matches!(t, Tok::Any) || *t == Tok::Lit(*c))
    };
    if fits(0) {
        return Ok(true);
    }
    if anchored {
        return Ok(false);
    }
    Ok((1..name.len()).any(|p| name[p - 1] == '.' && fits(p)))
}

fn unsupported(key: &str) -> String {
    format!(
        "rank/alpha pattern `{key}` uses regex syntax smelt does not support (only names, \
         `.`, `\\.` and a leading `^`)"
    )
}

/// The low-rank update of one base tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraDelta {
    /// The adapted module (`model.layers.0.self_attn.q_proj`).
    pub module: String,
    /// `lora_A` (or `lora_embedding_A`) values, `r × in`, row-major.
    pub a: Vec<f32>,
    /// `lora_B` (or `lora_embedding_B`) values, `out × r`, row-major.
    pub b: Vec<f32>,
    /// Rank.
    pub r: usize,
    /// Alpha used for this module.
    pub alpha: f64,
    /// The f32 factor applied to `B @ A`.
    pub scale: f32,
    /// Input features (columns of A; the vocabulary size for embeddings).
    pub in_features: usize,
    /// Output features (rows of B; the hidden size for embeddings).
    pub out_features: usize,
    /// Whether the base weight is stored `in × out` (embeddings, `fan_in_fan_out` linears),
    /// so the delta is added transposed.
    pub transposed: bool,
    /// Whether this is an embedding adapter.
    pub embedding: bool,
}

impl LoraDelta {
    /// Shape the base tensor must have: `[out, in]`, or `[in, out]` when transposed.
    pub fn base_shape(&self) -> [usize; 2] {
        if self.transposed {
            [self.in_features, self.out_features]
        } else {
            [self.out_features, self.in_features]
        }
    }

    /// Adds this delta to the base tensor `tensor` (values `base`, shape `shape`).
    pub fn apply(&self, tensor: &str, base: &mut [f32], shape: &[usize]) -> Result<()> {
        if shape != self.base_shape() {
            return Err(Error::ShapeMismatch {
                tensor: tensor.to_string(),
                detail: format!(
                    "base weight has shape {shape:?} but the LoRA for `{}` (r {}, A {}x{}, B \
                     {}x{}) needs {:?}",
                    self.module,
                    self.r,
                    self.r,
                    self.in_features,
                    self.out_features,
                    self.r,
                    self.base_shape()
                ),
            });
        }
        let [rows, cols] = self.base_shape();
        apply_lora(
            base,
            rows,
            cols,
            &self.a,
            &self.b,
            self.r,
            self.scale,
            self.transposed,
        )
        .map_err(|detail| Error::ShapeMismatch {
            tensor: tensor.to_string(),
            detail,
        })
    }
}

/// A loaded LoRA adapter: its config and the delta for each base tensor it changes.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// The adapter folder.
    pub dir: PathBuf,
    /// Its parsed `adapter_config.json`.
    pub config: LoraConfig,
    /// Base tensor name (`<module>.weight`) → delta.
    pub deltas: BTreeMap<String, LoraDelta>,
}

#[derive(Default)]
struct Pair {
    a: Option<(Vec<usize>, Vec<f32>)>,
    b: Option<(Vec<usize>, Vec<f32>)>,
    embedding: bool,
}

impl LoraAdapter {
    /// Loads the adapter in folder `dir` (`adapter_config.json` plus
    /// `adapter_model.safetensors`, else `adapter_model.bin`).
    pub fn load(dir: &Path) -> Result<LoraAdapter> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let config = LoraConfig::from_json(&text, &cfg_path)?;

        let st_path = dir.join("adapter_model.safetensors");
        let bin_path = dir.join("adapter_model.bin");
        let (path, tensors) = if st_path.exists() {
            (st_path.clone(), read_safetensors(&st_path)?)
        } else if bin_path.exists() {
            (bin_path.clone(), read_bin(&bin_path)?)
        } else {
            return Err(Error::ModelNotFound {
                reference: dir.display().to_string(),
                reason: "no adapter_model.safetensors or adapter_model.bin in the LoRA folder"
                    .into(),
            });
        };
        let bad = |reason: String| Error::bad_checkpoint(&path, reason);

        let mut pairs: BTreeMap<String, Pair> = BTreeMap::new();
        for (key, shape, values) in tensors {
            let rest = key.strip_prefix("base_model.model.").unwrap_or(&key);
            let rest = rest.strip_suffix(".weight").unwrap_or(rest);
            let (module, which, embedding) = if let Some(m) = rest.strip_suffix(".lora_A") {
                (m, 'A', false)
            } else if let Some(m) = rest.strip_suffix(".lora_B") {
                (m, 'B', false)
            } else if let Some(m) = rest.strip_suffix(".lora_embedding_A") {
                (m, 'A', true)
            } else if let Some(m) = rest.strip_suffix(".lora_embedding_B") {
                (m, 'B', true)
            } else {
                return Err(bad(format!(
                    "tensor `{key}` is not a LoRA A/B matrix (DoRA magnitudes, biases and \
                     modules_to_save are not supported)"
                )));
            };
            if shape.len() != 2 {
                return Err(bad(format!(
                    "tensor `{key}` has shape {shape:?}, expected 2-D"
                )));
            }
            let p = pairs.entry(module.to_string()).or_default();
            p.embedding |= embedding;
            let slot = if which == 'A' { &mut p.a } else { &mut p.b };
            if slot.replace((shape, values)).is_some() {
                return Err(bad(format!(
                    "module `{module}` has two lora_{which} tensors"
                )));
            }
        }

        let mut deltas = BTreeMap::new();
        for (module, p) in pairs {
            let (Some((ashape, a)), Some((bshape, b))) = (p.a, p.b) else {
                return Err(bad(format!("module `{module}` lacks lora_A or lora_B")));
            };
            let (r, alpha) = config
                .rank_and_alpha(&module)
                .map_err(|e| Error::bad_checkpoint(&cfg_path, e))?;
            if ashape[0] != r || bshape[1] != r {
                return Err(bad(format!(
                    "module `{module}`: lora_A is {ashape:?} and lora_B {bshape:?}, but the \
                     config gives rank {r}"
                )));
            }
            let delta = LoraDelta {
                module: module.clone(),
                r,
                alpha,
                scale: config.scale(r, alpha),
                in_features: ashape[1],
                out_features: bshape[0],
                transposed: p.embedding || config.fan_in_fan_out,
                embedding: p.embedding,
                a,
                b,
            };
            deltas.insert(format!("{module}.weight"), delta);
        }
        Ok(LoraAdapter {
            dir: dir.to_path_buf(),
            config,
            deltas,
        })
    }
}

type Loaded = Vec<(String, Vec<usize>, Vec<f32>)>;

fn decode(dtype: DType, bytes: &[u8], key: &str, path: &Path) -> Result<Vec<f32>> {
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
        return Err(Error::Dtype {
            tensor: key.to_string(),
            model: path.display().to_string(),
            reason: format!("LoRA weights must be floating point, found {dtype}"),
        });
    }
    let mut out = vec![0.0; bytes.len() / dtype.size()];
    dtype.decode_f32(&bytes[..out.len() * dtype.size()], &mut out);
    Ok(out)
}

fn read_safetensors(path: &Path) -> Result<Loaded> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::bad_checkpoint(path, e.to_string()))?;
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let dt = format!("{:?}", view.dtype());
            let dtype = DType::from_safetensors(&dt).ok_or_else(|| {
                Error::bad_checkpoint(path, format!("tensor `{name}` has unknown dtype {dt}"))
            })?;
            let values = decode(dtype, view.data(), &name, path)?;
            Ok((name, view.shape().to_vec(), values))
        })
        .collect()
}

fn read_bin(path: &Path) -> Result<Loaded> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    smelt_formats::torch::read_torch_tensors(&bytes, path)?
        .into_iter()
        .map(|t| {
            let values = decode(t.dtype, &bytes[t.data.clone()], &t.name, path)?;
            Ok((t.name, t.shape, values))
        })
        .collect()
}

/// Adds `scale · (B @ A)` to the row-major matrix `base` (`rows × cols`), in f32.
///
/// Without `fan_in_fan_out`, `base` is `out × in` (`rows = out`, `cols = in`), `a` is `r × in`
/// and `b` is `out × r`. With it, `base` is `in × out` and the transposed product is added
/// (`a` is `r × rows`, `b` is `cols × r`); use this form for embeddings too.
///
/// Each element is `base + scale · Σₖ b·a`: the sum is accumulated in f32 over `k = 0..r` in
/// order with fused multiply-adds (`s = fma(b, a, s)`, as torch's CPU matmul does for these
/// shapes), then multiplied by `scale`, then added — PEFT's order of operations
/// (`(B @ A) * scale`, then `W += delta`). Rows are processed in parallel; the result does not depend on the thread
/// count. Returns an error describing the mismatch when the slice lengths do not fit.
#[allow(clippy::too_many_arguments)]
pub fn apply_lora(
    base: &mut [f32],
    rows: usize,
    cols: usize,
    a: &[f32],
    b: &[f32],
    r: usize,
    scale: f32,
    fan_in_fan_out: bool,
) -> std::result::Result<(), String> {
    let (a_in, b_out) = if fan_in_fan_out {
        (rows, cols)
    } else {
        (cols, rows)
    };
    let want = |x: usize, y: usize| x.checked_mul(y);
    if want(rows, cols) != Some(base.len())
        || want(r, a_in) != Some(a.len())
        || want(b_out, r) != Some(b.len())
    {
        return Err(format!(
            "LoRA sizes do not fit: base {} values for {rows}x{cols}, A {} values for \
             {r}x{a_in}, B {} values for {b_out}x{r}",
            base.len(),
            a.len(),
            b.len()
        ));
    }
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    base.par_chunks_mut(cols).enumerate().for_each(|(i, row)| {
        for (j, w) in row.iter_mut().enumerate() {
            let (bi, aj) = if fan_in_fan_out { (j, i) } else { (i, j) };
            let mut s = 0.0f32;
            for k in 0..r {
                s = b[bi * r + k].mul_add(a[k * a_in + aj], s);
            }
            *w += s * scale;
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests;
