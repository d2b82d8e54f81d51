//! Architectures: which tensors a model has before, in and after its layers, which are
//! embeddings, which may be missing or tied, and where config.json keeps the layer count.
//!
//! Known: llama, mistral, qwen2, qwen3, gemma, gemma2, phi3 (as mergekit's definitions, §5.1).
//! Anything else is inferred from tensor names as mergekit does (§5.3): the first `.N.` in a
//! name marks a layer; every other tensor is a pre-layer weight.

use std::collections::BTreeSet;

/// Placeholder for the layer index in layer templates.
pub const LAYER: &str = "${layer_index}";

/// One weight of an architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightDef {
    /// Canonical name (layer templates contain [`LAYER`]).
    pub name: String,
    /// Input embedding or output head (vocabulary rows).
    pub is_embed: bool,
    /// May be absent from every input (then it is not written).
    pub optional: bool,
    /// Other names the tensor may have in an input.
    pub aliases: Vec<String>,
    /// Names of tensors a model without this one contributes instead (tied embeddings).
    pub tied: Vec<String>,
}

impl WeightDef {
    fn plain(name: &str) -> Self {
        WeightDef {
            name: name.into(),
            is_embed: false,
            optional: false,
            aliases: vec![],
            tied: vec![],
        }
    }
    fn embed(name: &str) -> Self {
        WeightDef {
            is_embed: true,
            ..WeightDef::plain(name)
        }
    }
    fn lm_head() -> Self {
        WeightDef {
            is_embed: true,
            optional: true,
            tied: vec!["model.embed_tokens.weight".into()],
            ..WeightDef::plain("lm_head.weight")
        }
    }

    /// The name for layer `k` (templates) or the name itself.
    pub fn render(&self, k: usize) -> String {
        self.name.replace(LAYER, &k.to_string())
    }
}

/// A model architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arch {
    /// `model_type`-style name (`llama`, ...; `inferred` when inferred).
    pub name: String,
    /// Weights before the layers.
    pub pre: Vec<WeightDef>,
    /// Per-layer weight templates.
    pub layer: Vec<WeightDef>,
    /// Weights after the layers.
    pub post: Vec<WeightDef>,
    /// config.json key holding the layer count.
    pub num_layers_key: Option<String>,
    /// Whether the architecture is one of the known ones.
    pub known: bool,
}

fn layer_weights(extra_attn: &[&str], extra: &[&str]) -> Vec<WeightDef> {
    let p = |s: &str| WeightDef::plain(&format!("model.layers.{LAYER}.{s}"));
    let mut v = vec![p("input_layernorm.weight")];
    for s in ["q_proj", "k_proj", "v_proj"] {
        v.push(p(&format!("self_attn.{s}.weight")));
        if extra_attn.contains(&"bias") {
            v.push(p(&format!("self_attn.{s}.bias")));
        }
    }
    if extra_attn.contains(&"qk_norm") {
        v.push(p("self_attn.q_norm.weight"));
        v.push(p("self_attn.k_norm.weight"));
    }
    v.push(p("self_attn.o_proj.weight"));
    v.push(p("post_attention_layernorm.weight"));
    for s in extra {
        v.push(p(s));
    }
    v.push(p("mlp.gate_proj.weight"));
    v.push(p("mlp.up_proj.weight"));
    v.push(p("mlp.down_proj.weight"));
    v
}

/// The names of the architectures smelt knows (HF `architectures[0]` values).
pub const KNOWN: &[&str] = &[
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
    "Phi3ForCausalLM",
];

/// The definition of a known architecture by its HF class name.
pub fn known(class: &str) -> Option<Arch> {
    let (name, layer, lm_head) = match class {
        "LlamaForCausalLM" | "LLaMaForCausalLM" => ("llama", layer_weights(&[], &[]), true),
        "MistralForCausalLM" => ("mistral", layer_weights(&[], &[]), true),
        "Qwen2ForCausalLM" => ("qwen2", layer_weights(&["bias"], &[]), true),
        "Qwen3ForCausalLM" => ("qwen3", layer_weights(&["qk_norm"], &[]), true),
        "GemmaForCausalLM" => ("gemma", layer_weights(&[], &[]), false),
        "Gemma2ForCausalLM" => (
            "gemma2",
            layer_weights(
                &[],
                &[
                    "pre_feedforward_layernorm.weight",
                    "post_feedforward_layernorm.weight",
                ],
            ),
            true,
        ),
        "Phi3ForCausalLM" => {
            let p = |s: &str| WeightDef::plain(&format!("model.layers.{LAYER}.{s}"));
            (
                "phi3",
                vec![
                    p("input_layernorm.weight"),
                    p("self_attn.qkv_proj.weight"),
                    p("self_attn.o_proj.weight"),
                    p("post_attention_layernorm.weight"),
                    p("mlp.gate_up_proj.weight"),
                    p("mlp.down_proj.weight"),
                ],
                true,
            )
        }
        _ => return None,
    };
    let mut post = vec![WeightDef::plain("model.norm.weight")];
    if lm_head {
        post.push(WeightDef::lm_head());
    }
    Some(Arch {
        name: name.into(),
        pre: vec![WeightDef::embed("model.embed_tokens.weight")],
        layer,
        post,
        num_layers_key: Some("num_hidden_layers".into()),
        known: true,
    })
}

/// Splits `name` at its first `.N.` component: `(prefix, N, rest)`.
pub fn split_layer(name: &str) -> Option<(&str, usize, &str)> {
    let mut start = 0;
    for part in name.split('.') {
        let end = start + part.len();
        if !part.is_empty()
            && part.bytes().all(|b| b.is_ascii_digit())
            && start > 0
            && end < name.len()
        {
            return Some((&name[..start - 1], part.parse().ok()?, &name[end + 1..]));
        }
        start = end + 1;
    }
    None
}

/// The largest layer index among `names`.
pub fn max_layer_index<'a>(names: impl Iterator<Item = &'a str>) -> Option<usize> {
    names
        .filter_map(|n| split_layer(n).map(|(_, k, _)| k))
        .max()
}

fn is_embed_name(n: &str) -> bool {
    [
        "embed_tokens",
        "lm_head",
        "wte",
        "word_embeddings",
        "embed_in",
        "embed_out",
        "tok_embeddings",
    ]
    .iter()
    .any(|k| n.contains(k))
}

/// Infers an architecture from the tensor names of every input (each a list of names, with
/// the number of layers of that model).
pub fn infer(models: &[(Vec<&str>, usize)], num_layers_key: Option<String>) -> Arch {
    let mut pre: Vec<String> = Vec::new();
    let mut templates: Vec<String> = Vec::new();
    for (names, _) in models {
        for n in names {
            match split_layer(n) {
                Some((prefix, _, rest)) => {
                    let t = format!("{prefix}.{LAYER}.{rest}");
                    if !templates.contains(&t) {
                        templates.push(t);
                    }
                }
                None => {
                    if !pre.iter().any(|p| p == n) {
                        pre.push(n.to_string());
                    }
                }
            }
        }
    }
    let all: Vec<BTreeSet<&str>> = models
        .iter()
        .map(|(n, _)| n.iter().copied().collect())
        .collect();
    let in_all = |name: &str| all.iter().all(|s| s.contains(name));
    let pre = pre
        .into_iter()
        .map(|n| WeightDef {
            optional: !in_all(&n),
            is_embed: is_embed_name(&n),
            ..WeightDef::plain(&n)
        })
        .collect();
    let layer = templates
        .into_iter()
        .map(|t| {
            let optional = models.iter().zip(&all).any(|((_, layers), set)| {
                (0..*layers).any(|k| !set.contains(t.replace(LAYER, &k.to_string()).as_str()))
            });
            WeightDef {
                optional,
                ..WeightDef::plain(&t)
            }
        })
        .collect();
    Arch {
        name: "inferred".into(),
        pre,
        layer,
        post: vec![],
        num_layers_key,
        known: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_layer_names() {
        assert_eq!(
            split_layer("model.layers.12.mlp.up_proj.weight"),
            Some(("model.layers", 12, "mlp.up_proj.weight"))
        );
        assert_eq!(split_layer("model.norm.weight"), None);
        assert_eq!(split_layer("h.3.attn"), Some(("h", 3, "attn")));
        assert_eq!(
            max_layer_index(["a.0.b", "a.7.c", "x"].into_iter()),
            Some(7)
        );
    }

    #[test]
    fn llama_layout() {
        let a = known("LlamaForCausalLM").unwrap();
        assert_eq!(a.layer.len(), 9);
        assert_eq!(
            a.layer[1].render(3),
            "model.layers.3.self_attn.q_proj.weight"
        );
        assert!(a.post[1].optional && a.post[1].is_embed);
        assert!(known("GPT2LMHeadModel").is_none());
    }

    #[test]
    fn infers_from_names() {
        let m1 = vec![
            "wte.weight",
            "h.0.attn.weight",
            "h.1.attn.weight",
            "ln_f.weight",
        ];
        let a = infer(&[(m1.clone(), 2), (m1, 2)], None);
        assert_eq!(a.pre.len(), 2);
        assert!(a.pre[0].is_embed && !a.pre[1].is_embed);
        assert_eq!(a.layer[0].name, "h.${layer_index}.attn.weight");
        assert!(!a.layer[0].optional);
    }
}
