//! llama.cpp file types ("Q4_K_M" and friends) and the per-tensor type each one picks.
//!
//! F32/F16/BF16 follow `convert_hf_to_gguf.py`: 1-D tensors, `*_norm.weight` and every
//! non-`.weight` tensor stay F32, every other tensor takes the output type. The quantized
//! file types follow `llama_model_quantize` at the llama.cpp commit the reference fixtures were
//! made with (`0c1e57098bba`, spec §3 including the §3.7 drift): which tensors are quantized
//! at all, the base type, the output / tied-embedding rule, the per-category overrides that
//! depend on the layer counter, `n_layer` and GQA, and the shape fallbacks when a row is not a
//! multiple of the block size (Q2_K/Q3_K → Q4_0, Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, then
//! F16). Fused `attn_qkv` counts and is treated as `attn_v`.

use std::str::FromStr;

use super::error::{GgufError, GgufResult};
use super::types::GgmlType;

/// A llama.cpp file type (`llama_ftype`), the value of `general.file_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum FileType {
    /// All F32.
    F32,
    /// 2-D weights F16.
    F16,
    /// 2-D weights BF16.
    BF16,
    /// Q8_0.
    Q8_0,
    /// Q4_0.
    Q4_0,
    /// Q4_1.
    Q4_1,
    /// Q5_0.
    Q5_0,
    /// Q5_1.
    Q5_1,
    /// Q2_K mixture.
    Q2_K,
    /// Q3_K small.
    Q3_K_S,
    /// Q3_K medium.
    Q3_K_M,
    /// Q3_K large.
    Q3_K_L,
    /// Q4_K small.
    Q4_K_S,
    /// Q4_K medium.
    Q4_K_M,
    /// Q5_K small.
    Q5_K_S,
    /// Q5_K medium.
    Q5_K_M,
    /// Q6_K.
    Q6_K,
}

impl FileType {
    /// Every supported file type.
    pub const ALL: [FileType; 17] = [
        FileType::F32,
        FileType::F16,
        FileType::BF16,
        FileType::Q8_0,
        FileType::Q4_0,
        FileType::Q4_1,
        FileType::Q5_0,
        FileType::Q5_1,
        FileType::Q2_K,
        FileType::Q3_K_S,
        FileType::Q3_K_M,
        FileType::Q3_K_L,
        FileType::Q4_K_S,
        FileType::Q4_K_M,
        FileType::Q5_K_S,
        FileType::Q5_K_M,
        FileType::Q6_K,
    ];

    /// The conventional name (`"Q4_K_M"`).
    pub fn name(self) -> &'static str {
        match self {
            FileType::F32 => "F32",
            FileType::F16 => "F16",
            FileType::BF16 => "BF16",
            FileType::Q8_0 => "Q8_0",
            FileType::Q4_0 => "Q4_0",
            FileType::Q4_1 => "Q4_1",
            FileType::Q5_0 => "Q5_0",
            FileType::Q5_1 => "Q5_1",
            FileType::Q2_K => "Q2_K",
            FileType::Q3_K_S => "Q3_K_S",
            FileType::Q3_K_M => "Q3_K_M",
            FileType::Q3_K_L => "Q3_K_L",
            FileType::Q4_K_S => "Q4_K_S",
            FileType::Q4_K_M => "Q4_K_M",
            FileType::Q5_K_S => "Q5_K_S",
            FileType::Q5_K_M => "Q5_K_M",
            FileType::Q6_K => "Q6_K",
        }
    }

    /// Parses a name, case-insensitively (`q4_k_m`, `Q8_0`, `bf16`).
    pub fn parse(name: &str) -> GgufResult<FileType> {
        FileType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| GgufError::UnknownFileType {
                name: name.to_string(),
                supported: FileType::ALL.map(FileType::name).join(", "),
            })
    }

    /// The `general.file_type` value (llama_ftype numbering, spec §3.1).
    pub fn llama_ftype(self) -> u32 {
        match self {
            FileType::F32 => 0,
            FileType::F16 => 1,
            FileType::Q4_0 => 2,
            FileType::Q4_1 => 3,
            FileType::Q8_0 => 7,
            FileType::Q5_0 => 8,
            FileType::Q5_1 => 9,
            FileType::Q2_K => 10,
            FileType::Q3_K_S => 11,
            FileType::Q3_K_M => 12,
            FileType::Q3_K_L => 13,
            FileType::Q4_K_S => 14,
            FileType::Q4_K_M => 15,
            FileType::Q5_K_S => 16,
            FileType::Q5_K_M => 17,
            FileType::Q6_K => 18,
            FileType::BF16 => 32,
        }
    }

    /// The base (default) tensor type.
    pub fn base_type(self) -> GgmlType {
        match self {
            FileType::F32 => GgmlType::F32,
            FileType::F16 => GgmlType::F16,
            FileType::BF16 => GgmlType::BF16,
            FileType::Q8_0 => GgmlType::Q8_0,
            FileType::Q4_0 => GgmlType::Q4_0,
            FileType::Q4_1 => GgmlType::Q4_1,
            FileType::Q5_0 => GgmlType::Q5_0,
            FileType::Q5_1 => GgmlType::Q5_1,
            FileType::Q2_K => GgmlType::Q2_K,
            FileType::Q3_K_S | FileType::Q3_K_M | FileType::Q3_K_L => GgmlType::Q3_K,
            FileType::Q4_K_S | FileType::Q4_K_M => GgmlType::Q4_K,
            FileType::Q5_K_S | FileType::Q5_K_M => GgmlType::Q5_K,
            FileType::Q6_K => GgmlType::Q6_K,
        }
    }

    /// True for the float types the converter writes directly (F32, F16, BF16); false for the
    /// quantized types `llama_model_quantize` makes.
    pub fn is_float(self) -> bool {
        matches!(self, FileType::F32 | FileType::F16 | FileType::BF16)
    }
}

impl FromStr for FileType {
    type Err = GgufError;
    fn from_str(s: &str) -> GgufResult<Self> {
        FileType::parse(s)
    }
}

impl std::fmt::Display for FileType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The model facts the mixture rules look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MixtureModel {
    /// Number of layers (`block_count`).
    pub n_layer: u32,
    /// Attention heads.
    pub n_head: u32,
    /// Key/value heads.
    pub n_head_kv: u32,
    /// llama.cpp classifies the model as "70B" (llama arch, 80 layers, GQA): bumps attn_v.
    pub is_70b: bool,
}

impl MixtureModel {
    fn n_gqa(&self) -> u32 {
        self.n_head.checked_div(self.n_head_kv).unwrap_or(0)
    }
}

/// A tensor as the mixture sees it: GGUF name and ggml shape.
#[derive(Debug, Clone, Copy)]
pub struct MixtureTensor<'a> {
    /// GGUF name.
    pub name: &'a str,
    /// ggml shape (`ne[0]` first).
    pub dims: &'a [u64],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    AttnQ,
    AttnV,
    AttnK,
    AttnQkv,
    AttnKvB,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Output,
    Other,
}

impl Category {
    fn of(name: &str) -> Category {
        if name == "output.weight" {
            Category::Output
        } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
            Category::TokenEmbd
        } else if name.contains("attn_qkv.weight") {
            Category::AttnQkv
        } else if name.contains("attn_kv_b.weight") {
            Category::AttnKvB
        } else if name.contains("attn_v.weight") {
            Category::AttnV
        } else if name.contains("attn_k.weight") {
            Category::AttnK
        } else if name.contains("attn_q.weight") {
            Category::AttnQ
        } else if name.contains("attn_output.weight") {
            Category::AttnOutput
        } else if name.contains("ffn_up") {
            Category::FfnUp
        } else if name.contains("ffn_gate") {
            Category::FfnGate
        } else if name.contains("ffn_down") {
            Category::FfnDown
        } else {
            Category::Other
        }
    }

    fn is_attn_v(self) -> bool {
        matches!(
            self,
            Category::AttnV | Category::AttnQkv | Category::AttnKvB
        )
    }
}

/// The type the converter gives a tensor for a float file type (F32/F16/BF16).
pub fn converter_type(ftype: FileType, t: &MixtureTensor<'_>) -> GgmlType {
    if t.dims.len() <= 1 || t.name.ends_with("_norm.weight") || !t.name.ends_with(".weight") {
        return GgmlType::F32;
    }
    match ftype {
        FileType::F16 => GgmlType::F16,
        FileType::BF16 => GgmlType::BF16,
        _ => GgmlType::F32,
    }
}

/// Whether `llama_model_quantize` quantizes this tensor at all (spec §3.2).
pub fn allows_quantization(t: &MixtureTensor<'_>) -> bool {
    let n_dims = t.dims.iter().rposition(|&d| d != 1).map_or(1, |p| p + 1);
    if n_dims < 2 || !t.name.ends_with("weight") {
        return false;
    }
    const EXCLUDED: [&str; 30] = [
        "_norm.weight",
        "ffn_gate_inp.weight",
        "ffn_gate_tid2eid.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "shortconv.conv.weight",
        "time_mix_first.weight",
        "time_mix_w0.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_v0.weight",
        "time_mix_v1.weight",
        "time_mix_v2.weight",
        "time_mix_a0.weight",
        "time_mix_a1.weight",
        "time_mix_a2.weight",
        "time_mix_g1.weight",
        "time_mix_g2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight",
        "attn_rel_b.weight",
        ".position_embd",
        ".rel_pos",
        ".patch_embd",
        ".patch_merger",
        "indexer.k_proj.weight",
        "indexer.q_proj.weight",
    ];
    if EXCLUDED.iter().any(|x| t.name.contains(x)) {
        return false;
    }
    t.name != "position_embd.weight" && t.name != "token_types.weight"
}

/// The order `llama_model_quantize` visits (and writes) tensors: names outside `blk.N.` first,
/// then by layer number; by name within each group.
pub fn quantize_order(names: &[&str]) -> Vec<usize> {
    let layer = |n: &str| -> i64 {
        n.strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|d| d.parse::<i64>().ok())
            .unwrap_or(-1)
    };
    let mut idx: Vec<usize> = (0..names.len()).collect();
    idx.sort_by(|&a, &b| {
        layer(names[a])
            .cmp(&layer(names[b]))
            .then_with(|| names[a].cmp(names[b]))
    });
    idx
}

/// Picks every tensor's type for `ftype`. `tensors` may be in any order; the result is in the
/// same order. For quantized file types the rules run in [`quantize_order`], as llama.cpp's
/// running layer counters require.
pub fn choose_types(
    ftype: FileType,
    model: &MixtureModel,
    tensors: &[MixtureTensor<'_>],
) -> Vec<GgmlType> {
    if ftype.is_float() {
        return tensors.iter().map(|t| converter_type(ftype, t)).collect();
    }
    let names: Vec<&str> = tensors.iter().map(|t| t.name).collect();
    let mut state = State {
        n_attention_wv: tensors
            .iter()
            .filter(|t| Category::of(t.name).is_attn_v())
            .count() as u32,
        n_ffn_down: model.n_layer,
        i_attention_wv: 0,
        i_ffn_down: 0,
        tied: !tensors.iter().any(|t| t.name == "output.weight"),
    };
    let mut out = vec![GgmlType::F32; tensors.len()];
    for i in quantize_order(&names) {
        let t = &tensors[i];
        out[i] = if allows_quantization(t) {
            let ty = mixture_type(&mut state, ftype, model, t, Category::of(t.name));
            fallback(ty, t.dims[0])
        } else {
            GgmlType::F32
        };
    }
    out
}

struct State {
    n_attention_wv: u32,
    n_ffn_down: u32,
    i_attention_wv: u32,
    i_ffn_down: u32,
    tied: bool,
}

fn use_more_bits(i: u32, n: u32) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i as i64 - (n / 8) as i64) % 3 == 2
}

fn mixture_type(
    qs: &mut State,
    ftype: FileType,
    model: &MixtureModel,
    t: &MixtureTensor<'_>,
    cat: Category,
) -> GgmlType {
    use FileType as F;
    use GgmlType as G;
    let base = ftype.base_type();
    let mut ty = base;
    if cat == Category::Output || (qs.tied && cat == Category::TokenEmbd) {
        let nx = t.dims[0];
        if !nx.is_multiple_of(base.block_size() as u64) {
            ty = G::Q8_0;
        } else if base != G::Q8_0 {
            ty = G::Q6_K;
        }
    } else if cat == Category::TokenEmbd {
        // untied token embeddings keep the base type for these file types
    } else if cat.is_attn_v() {
        match ftype {
            F::Q2_K => ty = if model.n_gqa() >= 4 { G::Q4_K } else { G::Q3_K },
            F::Q3_K_M => {
                ty = if qs.i_attention_wv < 2 {
                    G::Q5_K
                } else {
                    G::Q4_K
                }
            }
            F::Q3_K_L => ty = G::Q5_K,
            F::Q4_K_M | F::Q5_K_M if use_more_bits(qs.i_attention_wv, qs.n_attention_wv) => {
                ty = G::Q6_K
            }
            F::Q4_K_S if qs.i_attention_wv < 4 => ty = G::Q5_K,
            _ => {}
        }
        if model.is_70b && (ty == G::Q3_K || ty == G::Q4_K) {
            ty = G::Q5_K;
        }
        qs.i_attention_wv += 1;
    } else if cat == Category::FfnDown {
        let (i, n) = (qs.i_ffn_down, qs.n_ffn_down);
        match ftype {
            F::Q2_K => ty = G::Q3_K,
            F::Q3_K_M => ty = if i < n / 16 { G::Q5_K } else { G::Q4_K },
            F::Q3_K_L => ty = G::Q5_K,
            F::Q4_K_M if use_more_bits(i, n) => ty = G::Q6_K,
            F::Q5_K_M if use_more_bits(i, n) => ty = G::Q6_K,
            F::Q4_K_S if i < n / 8 => ty = G::Q5_K,
            _ => {}
        }
        qs.i_ffn_down += 1;
    } else if cat == Category::AttnOutput {
        match ftype {
            F::Q2_K => ty = G::Q3_K,
            F::Q3_K_M => ty = G::Q4_K,
            F::Q3_K_L => ty = G::Q5_K,
            _ => {}
        }
    }
    ty
}

/// llama.cpp's replacement when `ne0` is not a multiple of `ty`'s block size (spec §3.4,
/// 2026 rules).
pub fn fallback(ty: GgmlType, ne0: u64) -> GgmlType {
    if ne0.is_multiple_of(ty.block_size() as u64) {
        return ty;
    }
    let alt = match ty {
        GgmlType::Q2_K | GgmlType::Q3_K => GgmlType::Q4_0,
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    if ne0.is_multiple_of(alt.block_size() as u64) {
        alt
    } else {
        GgmlType::F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids() {
        assert_eq!(FileType::parse("q4_k_m").unwrap(), FileType::Q4_K_M);
        assert_eq!(FileType::parse("Bf16").unwrap(), FileType::BF16);
        let e = FileType::parse("Q4_K_X").unwrap_err().to_string();
        assert!(e.contains("Q4_K_X") && e.contains("Q5_K_M"), "{e}");
        // spec §3.1
        let want = [
            ("F32", 0),
            ("F16", 1),
            ("Q4_0", 2),
            ("Q4_1", 3),
            ("Q8_0", 7),
            ("Q5_0", 8),
            ("Q5_1", 9),
            ("Q2_K", 10),
            ("Q3_K_S", 11),
            ("Q3_K_M", 12),
            ("Q3_K_L", 13),
            ("Q4_K_S", 14),
            ("Q4_K_M", 15),
            ("Q5_K_S", 16),
            ("Q5_K_M", 17),
            ("Q6_K", 18),
            ("BF16", 32),
        ];
        for (n, id) in want {
            assert_eq!(FileType::parse(n).unwrap().llama_ftype(), id, "{n}");
        }
    }

    #[test]
    fn more_bits_for_32_layers_matches_spec() {
        let picked: Vec<u32> = (0..32).filter(|&i| use_more_bits(i, 32)).collect();
        assert_eq!(
            picked,
            vec![0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
        );
        let two: Vec<u32> = (0..2).filter(|&i| use_more_bits(i, 2)).collect();
        assert_eq!(two, vec![1]);
    }

    fn mistral7b() -> (MixtureModel, Vec<(String, Vec<u64>)>) {
        let mut ts = vec![
            ("token_embd.weight".to_string(), vec![4096, 32000]),
            ("output.weight".to_string(), vec![4096, 32000]),
            ("output_norm.weight".to_string(), vec![4096]),
        ];
        for l in 0..32 {
            for (n, d) in [
                ("attn_q.weight", vec![4096, 4096]),
                ("attn_k.weight", vec![4096, 1024]),
                ("attn_v.weight", vec![4096, 1024]),
                ("attn_output.weight", vec![4096, 4096]),
                ("ffn_gate.weight", vec![4096, 14336]),
                ("ffn_up.weight", vec![4096, 14336]),
                ("ffn_down.weight", vec![14336, 4096]),
                ("attn_norm.weight", vec![4096]),
                ("ffn_norm.weight", vec![4096]),
            ] {
                ts.push((format!("blk.{l}.{n}"), d));
            }
        }
        (
            MixtureModel {
                n_layer: 32,
                n_head: 32,
                n_head_kv: 8,
                is_70b: false,
            },
            ts,
        )
    }

    fn size_gb(ftype: FileType) -> f64 {
        let (m, ts) = mistral7b();
        let views: Vec<MixtureTensor> = ts
            .iter()
            .map(|(n, d)| MixtureTensor { name: n, dims: d })
            .collect();
        let types = choose_types(ftype, &m, &views);
        let bytes: u64 = ts
            .iter()
            .zip(&types)
            .map(|((_, d), t)| {
                let n: u64 = d.iter().product();
                n / t.block_size() as u64 * t.type_size() as u64
            })
            .sum();
        bytes as f64 / 1e9
    }

    #[test]
    fn mistral_7b_sizes_match_published_files() {
        // spec §3.5: published Mistral-7B Q4_K_M is 4.37 GB, Q5_K_M 5.13 GB
        assert!((size_gb(FileType::Q4_K_M) - 4.37).abs() < 0.01);
        assert!((size_gb(FileType::Q5_K_M) - 5.13).abs() < 0.01);
    }

    #[test]
    fn shape_fallbacks() {
        // spec §3.4: Qwen2-0.5B, n_embd 896
        assert_eq!(fallback(GgmlType::Q4_K, 896), GgmlType::Q5_0);
        assert_eq!(fallback(GgmlType::Q5_K, 896), GgmlType::Q5_1);
        assert_eq!(fallback(GgmlType::Q6_K, 896), GgmlType::Q8_0);
        assert_eq!(fallback(GgmlType::Q3_K, 896), GgmlType::Q4_0);
        assert_eq!(fallback(GgmlType::Q2_K, 896), GgmlType::Q4_0);
        assert_eq!(fallback(GgmlType::Q4_K, 100), GgmlType::F16);
        assert_eq!(fallback(GgmlType::Q4_0, 100), GgmlType::F16);
        assert_eq!(fallback(GgmlType::Q4_K, 4096), GgmlType::Q4_K);
        // output rule: ne0 not a multiple of the base block size -> Q8_0 (then no fallback)
        let m = MixtureModel {
            n_layer: 1,
            n_head: 1,
            n_head_kv: 1,
            is_70b: false,
        };
        let d = [896u64, 1000];
        let t = [MixtureTensor {
            name: "output.weight",
            dims: &d,
        }];
        assert_eq!(choose_types(FileType::Q4_K_M, &m, &t), vec![GgmlType::Q8_0]);
    }

    #[test]
    fn which_tensors_are_quantized() {
        let q = |name: &str, dims: &[u64]| allows_quantization(&MixtureTensor { name, dims });
        assert!(q("blk.0.attn_q.weight", &[256, 256]));
        assert!(!q("blk.0.attn_q.bias", &[256]));
        assert!(!q("blk.0.attn_norm.weight", &[256]));
        assert!(!q("blk.0.ffn_gate_inp.weight", &[256, 8]));
        assert!(!q("blk.0.x.weight", &[256, 1, 1]));
        assert!(!q("rope_freqs.weight", &[32]));
    }

    #[test]
    fn quantize_order_is_loader_order() {
        let names = [
            "blk.10.a",
            "token_embd.weight",
            "blk.2.b",
            "blk.2.a",
            "output.weight",
            "output_norm.weight",
        ];
        let order: Vec<&str> = quantize_order(&names)
            .into_iter()
            .map(|i| names[i])
            .collect();
        assert_eq!(
            order,
            vec![
                "output.weight",
                "output_norm.weight",
                "token_embd.weight",
                "blk.2.a",
                "blk.2.b",
                "blk.10.a"
            ]
        );
    }
}
