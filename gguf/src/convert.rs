//! HF → GGUF conversion plan: from a model folder's config.json, tokenizer files and tensor
//! list, everything a GGUF file needs except the tensor values — metadata (general,
//! architecture, tokenizer) and the ordered tensor infos (GGUF name, ggml shape, chosen type,
//! source HF tensor, transform) — plus [`encode_tensor`], which turns a source tensor's `f32`
//! values into the planned type's bytes.
//!
//! The plan reproduces llama.cpp's converter (`convert_hf_to_gguf.py`) for F32/F16/BF16 and
//! its converter + `llama_model_quantize` pipeline for the quantized file types, including
//! tensor order (converter: HF names sorted; quantizer: loader order) and key order.

use std::path::Path;

use serde_json::Value;

use super::arch::{self, Arch, Hparams, Transform};
use super::error::{GgufError, GgufResult};
use super::file::{GgufValue, TensorSpec};
use super::mixture::{self, FileType, MixtureModel, MixtureTensor};
use super::quant;
use super::tokenizer::{self, TokenizerOptions};
use super::types::GgmlType;

/// A tensor of the HF checkpoint: name and shape (PyTorch order, outermost first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfTensor {
    /// HF tensor name.
    pub name: String,
    /// HF shape, e.g. `[out_features, in_features]`.
    pub shape: Vec<u64>,
}

/// One tensor of the planned GGUF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTensor {
    /// GGUF name.
    pub name: String,
    /// ggml shape (`ne[0]` = row length = the HF shape reversed).
    pub dims: Vec<u64>,
    /// The tensor type chosen for the file type.
    pub ty: GgmlType,
    /// The HF tensor it comes from.
    pub source: String,
    /// Transform to apply to the source values.
    pub transform: Transform,
}

impl PlannedTensor {
    /// The writer's view of this tensor.
    pub fn spec(&self) -> TensorSpec {
        TensorSpec {
            name: self.name.clone(),
            dims: self.dims.clone(),
            ty: self.ty,
        }
    }
}

/// A complete GGUF plan.
#[derive(Debug, Clone)]
pub struct GgufPlan {
    /// The llama.cpp architecture.
    pub arch: Arch,
    /// The file type.
    pub ftype: FileType,
    /// Every metadata pair, in write order.
    pub metadata: Vec<(String, GgufValue)>,
    /// Every tensor, in write order.
    pub tensors: Vec<PlannedTensor>,
    /// Values of the tensors generated from config.json ([`Transform::Generated`]).
    pub generated: Vec<(String, Vec<f32>)>,
}

impl GgufPlan {
    /// The value of metadata key `key`.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The values of generated tensor `name`.
    pub fn generated_values(&self, name: &str) -> Option<&[f32]> {
        self.generated
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Writer specs for every tensor, in write order.
    pub fn specs(&self) -> Vec<TensorSpec> {
        self.tensors.iter().map(PlannedTensor::spec).collect()
    }
}

/// Options of a conversion.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// The llama.cpp file type to produce.
    pub ftype: FileType,
    /// `tokenizer.ggml.pre` to use for a BPE tokenizer instead of recognising it.
    pub pre_override: Option<String>,
    /// `general.name`; defaults to the model folder's name.
    pub name: Option<String>,
    /// More `general.*` pairs (size label, base models, ...), written right after
    /// `general.name` as the converter does.
    pub general: Vec<(String, GgufValue)>,
}

/// Merges `text_config` over the root, as the converter does for multimodal configs.
fn effective_config(config: &Value) -> Value {
    match (
        config.as_object(),
        config.get("text_config").and_then(Value::as_object),
    ) {
        (Some(root), Some(text)) => {
            let mut m = root.clone();
            for (k, v) in text {
                m.insert(k.clone(), v.clone());
            }
            Value::Object(m)
        }
        _ => config.clone(),
    }
}

/// Plans the GGUF conversion of the HF model folder `dir` (for its tokenizer files), with
/// config.json `config` and tensors `tensors`.
pub fn plan(
    dir: &Path,
    config: &Value,
    tensors: &[HfTensor],
    opts: &PlanOptions,
) -> GgufResult<GgufPlan> {
    let arch = Arch::detect(config)?;
    let config = effective_config(config);
    let hp = Hparams::from_config(&config)?;

    // Tensors, in the converter's order (HF names sorted).
    let mut sorted: Vec<&HfTensor> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    // Generated tensors come first, as in the converter.
    let generated = arch::generated_tensors(arch, &config, &hp)?;
    let mut planned: Vec<PlannedTensor> = generated
        .iter()
        .map(|(name, vals)| PlannedTensor {
            name: name.clone(),
            dims: vec![vals.len() as u64],
            ty: GgmlType::F32,
            source: "(generated from config.json)".into(),
            transform: Transform::Generated,
        })
        .collect();
    for t in sorted {
        let Some(m) = arch::map_tensor(arch, &hp, &t.name)? else {
            continue;
        };
        if t.shape.is_empty() || t.shape.len() > 4 {
            return Err(GgufError::tensor(
                &t.name,
                format!(
                    "shape {:?} has {} dimensions (1 to 4 supported)",
                    t.shape,
                    t.shape.len()
                ),
            ));
        }
        if let Transform::PermuteRows { n_head } = m.transform {
            let rows = t.shape[0];
            let n = u64::from(n_head);
            if !rows.is_multiple_of(n) || !(rows / n).is_multiple_of(2) {
                return Err(GgufError::tensor(
                    &t.name,
                    format!("{rows} rows cannot be split into {n_head} rotary heads"),
                ));
            }
        }
        planned.push(PlannedTensor {
            name: m.name,
            dims: t.shape.iter().rev().copied().collect(),
            ty: GgmlType::F32,
            source: t.name.clone(),
            transform: m.transform,
        });
    }
    if let Some(dup) = planned
        .iter()
        .enumerate()
        .find(|(i, p)| planned[..*i].iter().any(|q| q.name == p.name))
    {
        return Err(GgufError::tensor(
            &dup.1.source,
            format!("maps to `{}` twice", dup.1.name),
        ));
    }
    let embd = planned
        .iter()
        .find(|p| p.name == "token_embd.weight")
        .ok_or_else(|| {
            GgufError::tensor("model.embed_tokens.weight", "missing from the checkpoint")
        })?;
    if embd.dims.len() != 2 || embd.dims[0] != u64::from(hp.n_embd) {
        return Err(GgufError::tensor(
            &embd.source,
            format!(
                "shape {:?} does not match hidden_size {}",
                embd.dims, hp.n_embd
            ),
        ));
    }
    let n_vocab = embd.dims[1];
    if let Some(vs) = hp.vocab_size
        && u64::from(vs) != n_vocab
    {
        return Err(GgufError::Config(format!(
            "vocab_size is {vs} but the embedding has {n_vocab} rows"
        )));
    }

    // Types.
    let views: Vec<MixtureTensor> = planned
        .iter()
        .map(|p| MixtureTensor {
            name: &p.name,
            dims: &p.dims,
        })
        .collect();
    let model = MixtureModel {
        n_layer: hp.n_layer,
        n_head: hp.n_head,
        n_head_kv: hp.n_head_kv,
        is_70b: arch == Arch::Llama && hp.n_layer == 80 && hp.n_head != hp.n_head_kv,
    };
    let types = mixture::choose_types(opts.ftype, &model, &views);
    drop(views);
    for (p, t) in planned.iter_mut().zip(types) {
        p.ty = t;
    }
    if !opts.ftype.is_float() {
        let names: Vec<&str> = planned.iter().map(|p| p.name.as_str()).collect();
        let order = mixture::quantize_order(&names);
        let mut reordered: Vec<PlannedTensor> = order.iter().map(|&i| planned[i].clone()).collect();
        std::mem::swap(&mut planned, &mut reordered);
    }

    // Metadata.
    let name = opts.name.clone().unwrap_or_else(|| {
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let mut md: Vec<(String, GgufValue)> = vec![
        (
            "general.architecture".into(),
            GgufValue::String(arch.name().into()),
        ),
        ("general.type".into(), GgufValue::String("model".into())),
        ("general.name".into(), GgufValue::String(name)),
    ];
    md.extend(opts.general.iter().cloned());
    let mut arch_md = arch::arch_metadata(arch, &config, &hp)?;
    // The converter writes general.file_type at the end of the common keys, before the
    // llama-only vocab_size / rope.dimension_count; order does not matter to readers.
    let split = arch_md
        .iter()
        .position(|(k, _)| k.ends_with(".vocab_size"))
        .unwrap_or(arch_md.len());
    let tail = arch_md.split_off(split);
    md.extend(arch_md);
    let ftype_kv = (
        "general.file_type".to_string(),
        GgufValue::U32(opts.ftype.llama_ftype()),
    );
    let qv_kv = (
        "general.quantization_version".to_string(),
        GgufValue::U32(2),
    );
    if opts.ftype.is_float() {
        md.push(ftype_kv.clone());
    }
    md.extend(tail);
    if opts.ftype.is_float() {
        md.push(qv_kv.clone());
    }
    let tok = tokenizer::tokenizer_metadata(
        dir,
        &config,
        &TokenizerOptions {
            pre_override: opts.pre_override.clone(),
            n_vocab: Some(n_vocab as usize),
            no_space_prefix: arch.no_space_prefix(),
            gemma_special_ids: arch == Arch::Gemma,
            phi3: arch == Arch::Phi3,
        },
    )?;
    if tok.n_tokens as u64 != n_vocab {
        return Err(GgufError::Tokenizer {
            path: dir.to_path_buf(),
            reason: format!(
                "the tokenizer has {} tokens but the embedding has {n_vocab} rows",
                tok.n_tokens
            ),
        });
    }
    md.extend(tok.kvs);
    if !opts.ftype.is_float() {
        md.push(qv_kv);
        md.push(ftype_kv);
    }
    Ok(GgufPlan {
        arch,
        ftype: opts.ftype,
        metadata: md,
        tensors: planned,
        generated,
    })
}

/// Applies the tensor's transform to its source values (HF layout, row-major) and encodes
/// them as the planned type (ggml's reference conversions and quantizers, bit-exact).
pub fn encode_tensor(t: &PlannedTensor, values: &[f32]) -> GgufResult<Vec<u8>> {
    let n: u64 = t.dims.iter().product();
    if values.len() as u64 != n {
        return Err(GgufError::tensor(
            &t.source,
            format!("{} values given, {n} expected", values.len()),
        ));
    }
    let transformed: Vec<f32>;
    let vals: &[f32] = match t.transform {
        Transform::None | Transform::Generated => values,
        Transform::AddOne => {
            transformed = values.iter().map(|v| v + 1.0).collect();
            &transformed
        }
        Transform::PermuteRows { n_head } => {
            let rows = *t.dims.last().expect("at least one dim") as usize;
            let cols = values.len() / rows.max(1);
            let (rows, cols) = if t.dims.len() == 1 {
                (values.len(), 1)
            } else {
                (rows, cols)
            };
            transformed = arch::permute_rows(values, rows, cols, n_head as usize)
                .map_err(|r| GgufError::tensor(&t.source, r))?;
            &transformed
        }
    };
    if vals.iter().any(|v| !v.is_finite()) {
        return Err(GgufError::tensor(
            &t.source,
            "holds NaN or infinite values, which llama.cpp cannot use",
        ));
    }
    let ne0 = t.dims[0] as usize;
    if ne0 == 0 || !ne0.is_multiple_of(t.ty.block_size()) {
        return Err(GgufError::tensor(
            &t.name,
            format!(
                "row length {ne0} is not a multiple of {}'s block size",
                t.ty
            ),
        ));
    }
    let mut out = vec![0u8; vals.len() / ne0 * t.ty.row_bytes(ne0)];
    quant::quantize_rows(t.ty, vals, ne0, &mut out);
    Ok(out)
}

/// gguf-py's parameter-count label (`853K`, `7.2B`): the count scaled to K/M/B/T, with enough
/// decimals for two significant digits.
pub fn size_label(n_params: u64) -> String {
    let n = n_params as f64;
    let (scaled, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    let digits = format!("{}", scaled.round() as u64);
    let digits = digits.trim_start_matches('0').len();
    let fix = 2usize.saturating_sub(digits);
    format!("{scaled:.fix$}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_labels() {
        // fixture manifest: 852736 -> "853K", 854016 -> "854K"; gguf-py examples
        assert_eq!(size_label(852_736), "853K");
        assert_eq!(size_label(854_016), "854K");
        assert_eq!(size_label(7_241_732_096), "7.2B");
        assert_eq!(size_label(494_032_768), "494M");
        assert_eq!(size_label(70_553_706_496), "71B");
    }
}
