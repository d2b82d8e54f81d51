//! Per-architecture HF→GGUF knowledge: which HF architectures smelt exports, the
//! `general.architecture` name, every architecture metadata key with the GGUF value type
//! llama.cpp's loader expects (spec §4.5, §9.1), the tensor-name map (§4.3), and the tensor
//! transforms the reference converter applies: the Q/K row permutation for the `llama`
//! architecture (§4.4), Gemma's `norm + 1`, dropped tensors (rotary caches, Gemma's `lm_head`,
//! a tied `lm_head`).

use serde_json::Value;

use super::error::{GgufError, GgufResult};
use super::file::GgufValue;

/// A supported llama.cpp architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// `llama` (Llama, Mistral).
    Llama,
    /// `qwen2`.
    Qwen2,
    /// `qwen3`.
    Qwen3,
    /// `gemma`.
    Gemma,
    /// `gemma2`.
    Gemma2,
    /// `phi3`.
    Phi3,
}

/// HF `architectures[0]` values smelt exports, and the llama.cpp architecture of each.
pub const SUPPORTED: [(&str, Arch); 7] = [
    ("LlamaForCausalLM", Arch::Llama),
    ("MistralForCausalLM", Arch::Llama),
    ("Qwen2ForCausalLM", Arch::Qwen2),
    ("Qwen3ForCausalLM", Arch::Qwen3),
    ("GemmaForCausalLM", Arch::Gemma),
    ("Gemma2ForCausalLM", Arch::Gemma2),
    ("Phi3ForCausalLM", Arch::Phi3),
];

impl Arch {
    /// The `general.architecture` value and key prefix.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma => "gemma",
            Arch::Gemma2 => "gemma2",
            Arch::Phi3 => "phi3",
        }
    }

    /// Detects the architecture from config.json (`architectures[0]`, else `model_type`).
    pub fn detect(config: &Value) -> GgufResult<Arch> {
        let supported = || {
            SUPPORTED
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(a) = config
            .get("architectures")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
        {
            return SUPPORTED
                .iter()
                .find(|(n, _)| *n == a)
                .map(|(_, arch)| *arch)
                .ok_or_else(|| GgufError::UnsupportedArch {
                    arch: a.to_string(),
                    supported: supported(),
                });
        }
        let mt = config
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("<none>");
        Ok(match mt {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "gemma" => Arch::Gemma,
            "gemma2" => Arch::Gemma2,
            "phi3" => Arch::Phi3,
            other => {
                return Err(GgufError::UnsupportedArch {
                    arch: format!("model_type {other}"),
                    supported: supported(),
                });
            }
        })
    }

    /// Whether llama.cpp's converter permutes Q/K rows for this architecture.
    pub fn permutes_qk(self) -> bool {
        self == Arch::Llama
    }

    /// Whether the converter adds 1 to every `*norm.weight`.
    pub fn norm_plus_one(self) -> bool {
        matches!(self, Arch::Gemma | Arch::Gemma2)
    }

    /// Whether the tokenizer gets `tokenizer.ggml.add_space_prefix = false` (Gemma).
    pub fn no_space_prefix(self) -> bool {
        matches!(self, Arch::Gemma | Arch::Gemma2)
    }
}

/// The hyperparameters the conversion needs, read from config.json.
#[derive(Debug, Clone, PartialEq)]
pub struct Hparams {
    /// `num_hidden_layers`.
    pub n_layer: u32,
    /// `hidden_size`.
    pub n_embd: u32,
    /// `intermediate_size`.
    pub n_ff: u32,
    /// `num_attention_heads`.
    pub n_head: u32,
    /// `num_key_value_heads` (default `n_head`).
    pub n_head_kv: u32,
    /// `head_dim` if config.json has it.
    pub head_dim: Option<u32>,
    /// `vocab_size` if present.
    pub vocab_size: Option<u32>,
    /// `tie_word_embeddings` (default false).
    pub tied: bool,
}

impl Hparams {
    /// Reads the hyperparameters (`text_config` merged over the root, as the converter does).
    pub fn from_config(config: &Value) -> GgufResult<Hparams> {
        let n_layer = req_u32(
            config,
            &["n_layers", "num_hidden_layers", "n_layer", "num_layers"],
        )?;
        let n_embd = req_u32(config, &["hidden_size", "n_embd", "dim"])?;
        let n_ff = req_u32(config, &["intermediate_size", "n_inner", "hidden_dim"])?;
        let n_head = req_u32(config, &["num_attention_heads", "n_head", "n_heads"])?;
        let n_head_kv = opt_u32(config, &["num_key_value_heads", "n_kv_heads"])?.unwrap_or(n_head);
        if n_head == 0 || n_head_kv == 0 {
            return Err(GgufError::Config("head counts must be positive".into()));
        }
        Ok(Hparams {
            n_layer,
            n_embd,
            n_ff,
            n_head,
            n_head_kv,
            head_dim: opt_u32(config, &["head_dim"])?,
            vocab_size: opt_u32(config, &["vocab_size"])?,
            tied: config
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }

    /// The attention head size (`head_dim`, else `hidden_size / num_attention_heads`).
    pub fn head_size(&self) -> u32 {
        self.head_dim.unwrap_or(self.n_embd / self.n_head)
    }
}

fn lookup<'a>(config: &'a Value, keys: &[&str]) -> Option<(&'a str, &'a Value)> {
    let obj = config.as_object()?;
    keys.iter().find_map(|k| {
        obj.get_key_value(*k)
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.as_str(), v))
    })
}

fn opt_u32(config: &Value, keys: &[&str]) -> GgufResult<Option<u32>> {
    match lookup(config, keys) {
        None => Ok(None),
        Some((k, v)) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                GgufError::Config(format!("`{k}` must be a non-negative integer, got {v}"))
            }),
    }
}

fn req_u32(config: &Value, keys: &[&str]) -> GgufResult<u32> {
    opt_u32(config, keys)?.ok_or_else(|| {
        GgufError::Config(format!(
            "missing required key (one of: {})",
            keys.join(", ")
        ))
    })
}

fn opt_f32(config: &Value, keys: &[&str]) -> GgufResult<Option<f32>> {
    match lookup(config, keys) {
        None => Ok(None),
        Some((k, v)) => v
            .as_f64()
            .map(|f| Some(f as f32))
            .ok_or_else(|| GgufError::Config(format!("`{k}` must be a number, got {v}"))),
    }
}

/// The rope parameters dict (`rope_parameters`, else `rope_scaling`), with `rope_theta` and
/// `rope_type` mirrored from the root as the converter does.
fn rope_params(config: &Value) -> serde_json::Map<String, Value> {
    let mut p = config
        .get("rope_parameters")
        .or_else(|| config.get("rope_scaling"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(full) = p.get("full_attention").and_then(Value::as_object) {
        return full.clone();
    }
    if !p.contains_key("rope_theta")
        && let Some((_, v)) = lookup(
            config,
            &[
                "global_rope_theta",
                "rope_global_theta",
                "rope_theta_global",
                "rope_theta",
                "rotary_emb_base",
            ],
        )
    {
        p.insert("rope_theta".into(), v.clone());
    }
    if !p.contains_key("rope_type")
        && let Some(t) = p.get("type").cloned()
    {
        p.insert("rope_type".into(), t);
    }
    p
}

/// The architecture metadata (every `{arch}.*` key), with llama.cpp's value types.
pub fn arch_metadata(
    arch: Arch,
    config: &Value,
    hp: &Hparams,
) -> GgufResult<Vec<(String, GgufValue)>> {
    let a = arch.name();
    let mut md: Vec<(String, GgufValue)> = Vec::new();
    let mut put = |k: &str, v: GgufValue| md.push((format!("{a}.{k}"), v));
    match arch {
        Arch::Llama | Arch::Qwen2 | Arch::Qwen3 => {
            put("block_count", GgufValue::U32(hp.n_layer));
            if let Some(n) = opt_u32(
                config,
                &[
                    "max_position_embeddings",
                    "n_ctx",
                    "n_positions",
                    "max_length",
                    "max_sequence_length",
                    "model_max_length",
                ],
            )? {
                put("context_length", GgufValue::U32(n));
            }
            put("embedding_length", GgufValue::U32(hp.n_embd));
            put("feed_forward_length", GgufValue::U32(hp.n_ff));
            put("attention.head_count", GgufValue::U32(hp.n_head));
            if opt_u32(config, &["num_key_value_heads", "n_kv_heads"])?.is_some() {
                put("attention.head_count_kv", GgufValue::U32(hp.n_head_kv));
            }
            let rp = rope_params(config);
            if let Some(rt) = rp.get("rope_type").and_then(Value::as_str) {
                let factor = rp.get("factor").and_then(Value::as_f64);
                match (rt, factor) {
                    ("linear", Some(f)) => {
                        put("rope.scaling.type", GgufValue::String("linear".into()));
                        put("rope.scaling.factor", GgufValue::F32(f as f32));
                    }
                    ("yarn", Some(f)) => {
                        put("rope.scaling.type", GgufValue::String("yarn".into()));
                        put("rope.scaling.factor", GgufValue::F32(f as f32));
                        let orig = rp
                            .get("original_max_position_embeddings")
                            .and_then(Value::as_u64)
                            .and_then(|n| u32::try_from(n).ok())
                            .ok_or_else(|| {
                                GgufError::Config(
                                    "yarn rope scaling needs original_max_position_embeddings"
                                        .into(),
                                )
                            })?;
                        put("rope.scaling.original_context_length", GgufValue::U32(orig));
                        for (src, dst) in [
                            ("extrapolation_factor", "rope.scaling.yarn_ext_factor"),
                            ("attention_factor", "rope.scaling.yarn_attn_factor"),
                            ("beta_fast", "rope.scaling.yarn_beta_fast"),
                            ("beta_slow", "rope.scaling.yarn_beta_slow"),
                        ] {
                            if let Some(v) = rp.get(src).and_then(Value::as_f64) {
                                put(dst, GgufValue::F32(v as f32));
                            }
                        }
                    }
                    ("su" | "longrope", _) => {
                        put("rope.scaling.type", GgufValue::String("longrope".into()));
                    }
                    // llama3: no keys; the `rope_freqs.weight` tensor (see generated_tensors)
                    _ => {}
                }
            }
            if let Some(theta) = rp.get("rope_theta").and_then(Value::as_f64) {
                put("rope.freq_base", GgufValue::F32(theta as f32));
            }
            if let Some(eps) = opt_f32(config, &["rms_norm_eps", "norm_eps"])? {
                put("attention.layer_norm_rms_epsilon", GgufValue::F32(eps));
            }
            if let Some(hd) = hp.head_dim {
                put("attention.key_length", GgufValue::U32(hd));
                put("attention.value_length", GgufValue::U32(hd));
            }
            if arch == Arch::Llama {
                let vs = hp
                    .vocab_size
                    .ok_or_else(|| GgufError::Config("missing `vocab_size`".into()))?;
                put("vocab_size", GgufValue::U32(vs));
                put("rope.dimension_count", GgufValue::U32(hp.head_size()));
            }
        }
        Arch::Gemma | Arch::Gemma2 => {
            let ctx = req_u32(config, &["max_position_embeddings"])?;
            put("context_length", GgufValue::U32(ctx));
            put("embedding_length", GgufValue::U32(hp.n_embd));
            put("block_count", GgufValue::U32(hp.n_layer));
            put("feed_forward_length", GgufValue::U32(hp.n_ff));
            put("attention.head_count", GgufValue::U32(hp.n_head));
            put("attention.head_count_kv", GgufValue::U32(hp.n_head_kv));
            let eps = opt_f32(config, &["rms_norm_eps"])?
                .ok_or_else(|| GgufError::Config("missing `rms_norm_eps`".into()))?;
            put("attention.layer_norm_rms_epsilon", GgufValue::F32(eps));
            let hd = hp
                .head_dim
                .ok_or_else(|| GgufError::Config("missing `head_dim`".into()))?;
            put("attention.key_length", GgufValue::U32(hd));
            put("attention.value_length", GgufValue::U32(hd));
            if arch == Arch::Gemma2 {
                for (src, dst) in [
                    ("attn_logit_softcapping", "attn_logit_softcapping"),
                    ("final_logit_softcapping", "final_logit_softcapping"),
                ] {
                    let v = opt_f32(config, &[src])?
                        .ok_or_else(|| GgufError::Config(format!("missing `{src}`")))?;
                    put(dst, GgufValue::F32(v));
                }
                let sw = req_u32(config, &["sliding_window"])?;
                put("attention.sliding_window", GgufValue::U32(sw));
            }
        }
        Arch::Phi3 => {
            let rp = rope_params(config);
            let ctx = req_u32(config, &["n_positions", "max_position_embeddings"])?;
            put("context_length", GgufValue::U32(ctx));
            let orig = phi3_orig_ctx(config, &rp)?;
            put("rope.scaling.original_context_length", GgufValue::U32(orig));
            put("embedding_length", GgufValue::U32(hp.n_embd));
            put("feed_forward_length", GgufValue::U32(hp.n_ff));
            put("block_count", GgufValue::U32(hp.n_layer));
            put("attention.head_count", GgufValue::U32(hp.n_head));
            put("attention.head_count_kv", GgufValue::U32(hp.n_head_kv));
            let eps = opt_f32(config, &["rms_norm_eps"])?
                .ok_or_else(|| GgufError::Config("missing `rms_norm_eps`".into()))?;
            put("attention.layer_norm_rms_epsilon", GgufValue::F32(eps));
            put(
                "rope.dimension_count",
                GgufValue::U32(phi3_rope_dims(config, &rp, hp)),
            );
            let theta = rp
                .get("rope_theta")
                .and_then(Value::as_f64)
                .ok_or_else(|| GgufError::Config("missing `rope_theta`".into()))?;
            put("rope.freq_base", GgufValue::F32(theta as f32));
            let sw = opt_u32(config, &["sliding_window"])?.unwrap_or(0);
            put("attention.sliding_window", GgufValue::U32(sw));
            if let Some((attn_factor, _, _)) = phi3_long_rope(config, hp)? {
                put("rope.scaling.attn_factor", GgufValue::F32(attn_factor));
            }
        }
    }
    Ok(md)
}

fn phi3_orig_ctx(config: &Value, rp: &serde_json::Map<String, Value>) -> GgufResult<u32> {
    rp.get("original_max_position_embeddings")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .map(Ok)
        .unwrap_or_else(|| req_u32(config, &["original_max_position_embeddings"]))
}

fn phi3_rope_dims(config: &Value, rp: &serde_json::Map<String, Value>, hp: &Hparams) -> u32 {
    let rot = rp
        .get("partial_rotary_factor")
        .or_else(|| config.get("partial_rotary_factor"))
        .and_then(Value::as_f64)
        .unwrap_or(1.0);
    (rot * f64::from(hp.n_embd)) as u32 / hp.n_head
}

type LongRope = (f32, Vec<f32>, Vec<f32>);

/// Phi-3 long-context rope: attention factor and the long/short factor lists.
fn phi3_long_rope(config: &Value, hp: &Hparams) -> GgufResult<Option<LongRope>> {
    let rp = rope_params(config);
    let Some(long) = rp
        .get("long_factor")
        .and_then(Value::as_array)
        .filter(|l| !l.is_empty())
    else {
        return Ok(None);
    };
    let max_pos = f64::from(req_u32(
        config,
        &["n_positions", "max_position_embeddings"],
    )?);
    let orig = f64::from(phi3_orig_ctx(config, &rp)?);
    let scale = max_pos / orig;
    let kind = rp
        .get("rope_type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_ascii_lowercase();
    let attn = match kind.as_str() {
        "su" | "longrope" if scale > 1.0 => (1.0 + scale.ln() / orig.ln()).sqrt(),
        "yarn" if scale > 1.0 => 0.1 * scale.ln() + 1.0,
        "su" | "longrope" | "yarn" => 1.0,
        "" => return Err(GgufError::Config("rope scaling without a type".into())),
        other => {
            return Err(GgufError::Config(format!(
                "Phi-3 rope scaling type `{other}` is not supported"
            )));
        }
    };
    let floats = |v: &Value, what: &str| -> GgufResult<Vec<f32>> {
        v.as_array()
            .ok_or_else(|| GgufError::Config(format!("rope scaling `{what}` missing")))?
            .iter()
            .map(|x| {
                x.as_f64()
                    .map(|f| f as f32)
                    .ok_or_else(|| GgufError::Config(format!("`{what}` holds a non-number")))
            })
            .collect()
    };
    let long = floats(&Value::Array(long.clone()), "long_factor")?;
    let short = floats(
        rp.get("short_factor").unwrap_or(&Value::Null),
        "short_factor",
    )?;
    let half = (phi3_rope_dims(config, &rp, hp) / 2) as usize;
    if long.len() != short.len() || long.len() != half {
        return Err(GgufError::Config(format!(
            "rope long/short factors must have {half} entries (found {} and {})",
            long.len(),
            short.len()
        )));
    }
    Ok(Some((attn as f32, long, short)))
}

/// Tensors the converter generates from config.json rather than copies: Llama-3.1's
/// `rope_freqs.weight` and Phi-3's `rope_factors_long/short.weight` (F32, 1-D).
pub fn generated_tensors(
    arch: Arch,
    config: &Value,
    hp: &Hparams,
) -> GgufResult<Vec<(String, Vec<f32>)>> {
    let rp = rope_params(config);
    match arch {
        Arch::Llama
            if rp
                .get("rope_type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.eq_ignore_ascii_case("llama3")) =>
        {
            let num = |k: &str, d: f64| rp.get(k).and_then(Value::as_f64).unwrap_or(d);
            let base = num("rope_theta", 10000.0);
            let dim = hp.head_size();
            let factor = num("factor", 8.0);
            let low = num("low_freq_factor", 1.0);
            let high = num("high_freq_factor", 4.0);
            let old_ctx = config
                .get("original_max_position_embeddings")
                .or_else(|| rp.get("original_max_position_embeddings"))
                .and_then(Value::as_f64)
                .unwrap_or(8192.0);
            Ok(vec![(
                "rope_freqs.weight".into(),
                llama3_rope_factors(base, dim, factor, low, high, old_ctx),
            )])
        }
        Arch::Phi3 => Ok(match phi3_long_rope(config, hp)? {
            Some((_, long, short)) => vec![
                ("rope_factors_long.weight".into(), long),
                ("rope_factors_short.weight".into(), short),
            ],
            None => Vec::new(),
        }),
        _ => Ok(Vec::new()),
    }
}

/// Llama-3.1 rope frequency factors, computed in f32 as the converter's torch code does.
pub fn llama3_rope_factors(
    base: f64,
    dim: u32,
    factor: f64,
    low: f64,
    high: f64,
    old_ctx: f64,
) -> Vec<f32> {
    let low_wavelen = old_ctx / low;
    let high_wavelen = old_ctx / high;
    (0..dim)
        .step_by(2)
        .map(|i| {
            let e = i as f32 / dim as f32;
            let freq = 1.0f32 / (base as f32).powf(e);
            let wavelen = std::f32::consts::TAU / freq;
            if f64::from(wavelen) < high_wavelen {
                1.0
            } else if f64::from(wavelen) > low_wavelen {
                factor as f32
            } else {
                let smooth = ((old_ctx as f32) / wavelen - low as f32) / ((high - low) as f32);
                1.0 / ((1.0 - smooth) / factor as f32 + smooth)
            }
        })
        .collect()
}

/// A data transform applied while converting a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// Bytes as they are (after dtype conversion).
    None,
    /// llama.cpp's rotary row permutation with this many heads (§4.4).
    PermuteRows {
        /// Heads the rows are grouped into (`n_head` for Q, `n_head_kv` for K).
        n_head: u32,
    },
    /// Add 1 to every element (Gemma norms).
    AddOne,
    /// Not read from the checkpoint: values generated from config.json (see
    /// [`generated_tensors`]).
    Generated,
}

/// Where one HF tensor goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedTensor {
    /// GGUF name.
    pub name: String,
    /// Transform to apply to the values.
    pub transform: Transform,
}

/// Maps an HF tensor name. `Ok(None)` means the converter drops the tensor.
pub fn map_tensor(arch: Arch, hp: &Hparams, hf: &str) -> GgufResult<Option<MappedTensor>> {
    if hf.ends_with(".rotary_emb.inv_freq")
        || hf.ends_with(".attention.masked_bias")
        || hf.ends_with(".attention.bias")
    {
        return Ok(None);
    }
    let plain = |n: &str| {
        Some(MappedTensor {
            name: n.to_string(),
            transform: Transform::None,
        })
    };
    let unknown = || {
        GgufError::tensor(
            hf,
            format!(
                "no GGUF name for this tensor in architecture `{}`",
                arch.name()
            ),
        )
    };
    let mut out = match hf {
        "model.embed_tokens.weight" => plain("token_embd.weight"),
        "model.norm.weight" => plain("output_norm.weight"),
        "lm_head.weight" => {
            if hp.tied || matches!(arch, Arch::Gemma | Arch::Gemma2) {
                None
            } else {
                plain("output.weight")
            }
        }
        _ => {
            let rest = hf.strip_prefix("model.layers.").ok_or_else(unknown)?;
            let (bid, tail) = rest.split_once('.').ok_or_else(unknown)?;
            let bid: u32 = bid.parse().map_err(|_| unknown())?;
            if bid >= hp.n_layer {
                return Err(GgufError::tensor(
                    hf,
                    format!("layer {bid} but config.json has {} layers", hp.n_layer),
                ));
            }
            let (stem, suffix) = tail.rsplit_once('.').ok_or_else(unknown)?;
            if suffix != "weight" && suffix != "bias" {
                return Err(unknown());
            }
            let g = match (arch, stem) {
                (_, "input_layernorm") => "attn_norm",
                (Arch::Gemma2, "post_attention_layernorm") => "post_attention_norm",
                (Arch::Gemma2, "pre_feedforward_layernorm") => "ffn_norm",
                (Arch::Gemma2, "post_feedforward_layernorm") => "post_ffw_norm",
                (_, "post_attention_layernorm") => "ffn_norm",
                (Arch::Phi3, "self_attn.qkv_proj") => "attn_qkv",
                (Arch::Phi3, "mlp.gate_up_proj") => "ffn_up",
                (Arch::Phi3, "self_attn.q_proj" | "self_attn.k_proj" | "self_attn.v_proj") => {
                    return Err(unknown());
                }
                (_, "self_attn.q_proj") => "attn_q",
                (_, "self_attn.k_proj") => "attn_k",
                (_, "self_attn.v_proj") => "attn_v",
                (_, "self_attn.o_proj") => "attn_output",
                (Arch::Qwen3, "self_attn.q_norm") => "attn_q_norm",
                (Arch::Qwen3, "self_attn.k_norm") => "attn_k_norm",
                (Arch::Phi3, "mlp.gate_proj") => return Err(unknown()),
                (_, "mlp.gate_proj") => "ffn_gate",
                (_, "mlp.up_proj") => "ffn_up",
                (_, "mlp.down_proj") => "ffn_down",
                _ => return Err(unknown()),
            };
            let transform = match (arch.permutes_qk(), stem) {
                (true, "self_attn.q_proj") => Transform::PermuteRows { n_head: hp.n_head },
                (true, "self_attn.k_proj") => Transform::PermuteRows {
                    n_head: hp.n_head_kv,
                },
                _ => Transform::None,
            };
            Some(MappedTensor {
                name: format!("blk.{bid}.{g}.{suffix}"),
                transform,
            })
        }
    };
    if arch.norm_plus_one()
        && hf.ends_with("norm.weight")
        && let Some(m) = out.as_mut()
    {
        m.transform = Transform::AddOne;
    }
    Ok(out)
}

/// llama.cpp's Q/K row permutation of a row-major `[rows, cols]` matrix (or a bias, `cols` =
/// 1): `new_row[h·hd + 2j + s] = old_row[h·hd + s·hd/2 + j]`, `hd = rows / n_head`.
pub fn permute_rows<T: Copy>(
    data: &[T],
    rows: usize,
    cols: usize,
    n_head: usize,
) -> Result<Vec<T>, String> {
    if n_head == 0
        || !rows.is_multiple_of(n_head)
        || !(rows / n_head).is_multiple_of(2)
        || data.len() != rows * cols
    {
        return Err(format!(
            "cannot permute {rows}x{cols} rows into {n_head} rotary heads"
        ));
    }
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = Vec::with_capacity(data.len());
    for h in 0..n_head {
        for j in 0..half {
            for s in 0..2 {
                let old = h * hd + s * half + j;
                out.extend_from_slice(&data[old * cols..(old + 1) * cols]);
            }
        }
    }
    Ok(out)
}

/// Where [`permute_rows`] puts row `r` of a matrix of `rows` rows split into `n_head` heads.
pub fn permuted_row(r: usize, rows: usize, n_head: usize) -> usize {
    let hd = rows / n_head;
    let half = hd / 2;
    let (h, rem) = (r / hd, r % hd);
    let (s, j) = (rem / half, rem % half);
    h * hd + 2 * j + s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn detect_and_reject() {
        let c = json!({"architectures": ["MistralForCausalLM"]});
        assert_eq!(Arch::detect(&c).unwrap(), Arch::Llama);
        let c = json!({"model_type": "qwen2"});
        assert_eq!(Arch::detect(&c).unwrap(), Arch::Qwen2);
        let e = Arch::detect(&json!({"architectures": ["FalconForCausalLM"]}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("FalconForCausalLM"), "{e}");
        assert!(
            e.contains("Phi3ForCausalLM") && e.contains("Gemma2ForCausalLM"),
            "{e}"
        );
    }

    #[test]
    fn permutation_matches_numpy_reshape_swapaxes() {
        // The converter's w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2), computed by
        // hand for rows = 8, n_head = 2 (hd = 4): head 0 rows [0, 2, 1, 3], head 1 [4, 6, 5, 7].
        let data: Vec<u32> = (0..8).collect();
        assert_eq!(
            permute_rows(&data, 8, 1, 2).unwrap(),
            vec![0, 2, 1, 3, 4, 6, 5, 7]
        );
        let data: Vec<u32> = (0..16).collect();
        assert_eq!(
            permute_rows(&data, 8, 2, 1).unwrap(),
            vec![0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15]
        );
        assert!(permute_rows(&data, 8, 2, 3).is_err());
    }

    #[test]
    fn names() {
        let hp = Hparams {
            n_layer: 2,
            n_embd: 8,
            n_ff: 8,
            n_head: 2,
            n_head_kv: 1,
            head_dim: None,
            vocab_size: Some(4),
            tied: false,
        };
        let m = |arch, n| map_tensor(arch, &hp, n).unwrap();
        assert_eq!(
            m(Arch::Llama, "model.layers.1.self_attn.k_proj.weight").unwrap(),
            MappedTensor {
                name: "blk.1.attn_k.weight".into(),
                transform: Transform::PermuteRows { n_head: 1 }
            }
        );
        assert_eq!(
            m(Arch::Qwen2, "model.layers.0.self_attn.q_proj.bias")
                .unwrap()
                .transform,
            Transform::None
        );
        assert_eq!(
            m(
                Arch::Gemma2,
                "model.layers.0.post_feedforward_layernorm.weight"
            )
            .unwrap(),
            MappedTensor {
                name: "blk.0.post_ffw_norm.weight".into(),
                transform: Transform::AddOne
            }
        );
        assert_eq!(
            m(Arch::Gemma, "model.norm.weight").unwrap().transform,
            Transform::AddOne
        );
        assert_eq!(m(Arch::Gemma, "lm_head.weight"), None);
        assert_eq!(
            m(Arch::Phi3, "model.layers.0.mlp.gate_up_proj.weight")
                .unwrap()
                .name,
            "blk.0.ffn_up.weight"
        );
        assert_eq!(
            m(Arch::Llama, "model.layers.0.self_attn.rotary_emb.inv_freq"),
            None
        );
        assert!(map_tensor(Arch::Llama, &hp, "model.layers.2.mlp.up_proj.weight").is_err());
        assert!(map_tensor(Arch::Llama, &hp, "vision_tower.x.weight").is_err());
    }

    #[test]
    fn llama3_rope_freqs() {
        // Llama-3.1-8B: theta 500000, head_dim 128, factor 8, low 1, high 4, original 8192.
        let f = llama3_rope_factors(500000.0, 128, 8.0, 1.0, 4.0, 8192.0);
        assert_eq!(f.len(), 64);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[63], 8.0);
        assert!(f.windows(2).all(|w| w[0] <= w[1]));
        // the smooth band: wavelength between 2048 and 8192; check one entry in f64
        let i = f.iter().position(|&x| x > 1.0 && x < 8.0).unwrap();
        let freq = 1.0 / 500000f64.powf((2 * i) as f64 / 128.0);
        let wl = 2.0 * std::f64::consts::PI / freq;
        let smooth = (8192.0 / wl - 1.0) / 3.0;
        let want = 1.0 / ((1.0 - smooth) / 8.0 + smooth);
        assert!((f64::from(f[i]) - want).abs() < 1e-4, "{} vs {want}", f[i]);
    }

    #[test]
    fn phi3_long_rope_factors() {
        let half = 48;
        let c = json!({
            "architectures": ["Phi3ForCausalLM"], "hidden_size": 3072, "num_attention_heads": 32,
            "num_key_value_heads": 32, "num_hidden_layers": 32, "intermediate_size": 8192,
            "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "vocab_size": 32064,
            "rope_scaling": {"type": "longrope", "long_factor": vec![1.5; half], "short_factor": vec![1.0; half]}
        });
        let hp = Hparams::from_config(&c).unwrap();
        let md = arch_metadata(Arch::Phi3, &c, &hp).unwrap();
        let get = |k: &str| md.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
        // sqrt(1 + ln(32) / ln(4096))
        let want = (1.0 + 32f64.ln() / 4096f64.ln()).sqrt() as f32;
        assert_eq!(
            get("phi3.rope.scaling.attn_factor"),
            Some(GgufValue::F32(want))
        );
        assert_eq!(get("phi3.rope.dimension_count"), Some(GgufValue::U32(96)));
        assert_eq!(
            get("phi3.rope.scaling.original_context_length"),
            Some(GgufValue::U32(4096))
        );
        assert_eq!(
            get("phi3.attention.sliding_window"),
            Some(GgufValue::U32(0))
        );
        let g = generated_tensors(Arch::Phi3, &c, &hp).unwrap();
        assert_eq!(g[0].0, "rope_factors_long.weight");
        assert_eq!(g[0].1, vec![1.5f32; half]);
        assert_eq!(g[1].0, "rope_factors_short.weight");
        let mut bad = c.clone();
        bad["rope_scaling"]["short_factor"] = json!([1.0]);
        assert!(generated_tensors(Arch::Phi3, &bad, &hp).is_err());
    }
}
