//! The tokenizer options of a recipe (mergekit §4.2–4.4, §4.6), parsed strictly from the raw
//! YAML values the recipe keeps: `tokenizer_source`, the `tokenizer:` block and
//! `chat_template`. Unknown keys are errors naming the key and the keys allowed there.

use serde_json::Value as Json;

use super::chat;
use crate::error::Result;
use crate::recipe::{ModelRef, Pos, Recipe};

/// Which tokenizer the output vocabulary starts from (`tokenizer_source` / `tokenizer.source`).
#[derive(Debug, Clone, PartialEq)]
pub enum SourceKind {
    /// The base model's (else the first model's) tokenizer, stripped of ids ≥ its `vocab_size`.
    Base,
    /// The stripped base tokenizer plus every other model's tokens.
    Union,
    /// That model's tokenizer, unstripped.
    Model(ModelRef),
}

/// A token's row reference inside one model (`kind: model_token`).
#[derive(Debug, Clone, PartialEq)]
pub enum TokenRef {
    /// By string, looked up in the model's own vocabulary.
    Token(String),
    /// By raw row index.
    Id(usize),
}

/// Where a configured token's default embedding comes from (`tokens.<tok>.source`).
#[derive(Debug, Clone, PartialEq)]
pub enum EmbedSource {
    /// That model's row for this token.
    Model(ModelRef),
    /// A row of a model chosen by another token or a raw index.
    ModelToken {
        /// The model.
        model: ModelRef,
        /// The row.
        token: TokenRef,
    },
    /// A zero vector.
    Zero,
}

/// One entry of `tokenizer.tokens`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenSpec {
    /// The token (added to the output vocabulary when absent).
    pub token: String,
    /// Its default embedding (`None`: mergekit's default rules).
    pub source: Option<EmbedSource>,
    /// Use the source for every model, even those that have the token.
    pub force: bool,
}

/// The tokenizer to build.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizerSpec {
    /// Where the vocabulary starts from.
    pub source: SourceKind,
    /// Round the number of rows up to a multiple of this.
    pub pad_to_multiple_of: Option<usize>,
    /// Configured tokens, in recipe order.
    pub tokens: Vec<TokenSpec>,
    /// Where the option is in the recipe (for messages).
    pub pos: Pos,
}

/// The `chat_template` option.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatTemplate {
    /// The most common template among the input models.
    Auto,
    /// A bundled template, by name.
    Builtin(&'static str),
    /// A literal Jinja template.
    Literal(String),
}

/// Every tokenizer-related option of a recipe.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VocabOptions {
    /// Build a tokenizer (`tokenizer_source` or `tokenizer:`).
    pub tokenizer: Option<TokenizerSpec>,
    /// `chat_template`.
    pub chat_template: Option<ChatTemplate>,
}

fn kind_name(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "a mapping",
    }
}

fn model_ref(v: &Json, what: &str) -> std::result::Result<ModelRef, String> {
    match v {
        Json::String(s) => ModelRef::parse(s).map_err(|e| format!("{what}: {e}")),
        other => Err(format!(
            "{what} must be a model reference (a string), found {}",
            kind_name(other)
        )),
    }
}

fn check_keys(
    map: &serde_json::Map<String, Json>,
    allowed: &[&str],
    what: &str,
) -> std::result::Result<(), String> {
    for k in map.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(format!(
                "unknown key `{k}` in {what}; allowed: {}",
                allowed.join(", ")
            ));
        }
    }
    Ok(())
}

fn source_kind(v: &Json, what: &str) -> std::result::Result<SourceKind, String> {
    match v {
        Json::String(s) if s == "base" => Ok(SourceKind::Base),
        Json::String(s) if s == "union" => Ok(SourceKind::Union),
        Json::String(s) if s.starts_with("model:") => Err(format!(
            "{what}: `model:PATH` is mergekit's old syntax; write the model reference itself (`{}`)",
            &s["model:".len()..]
        )),
        Json::String(_) => model_ref(v, what).map(SourceKind::Model),
        other => Err(format!(
            "{what} must be `union`, `base` or a model reference, found {}",
            kind_name(other)
        )),
    }
}

fn embed_source(v: &Json, tok: &str) -> std::result::Result<EmbedSource, String> {
    let what = format!("`tokenizer.tokens.{tok}.source`");
    let map = match v {
        Json::String(_) => return model_ref(v, &what).map(EmbedSource::Model),
        Json::Object(m) => m,
        other => {
            return Err(format!(
                "{what} must be a model reference or a mapping with `kind`, found {}",
                kind_name(other)
            ));
        }
    };
    match map.get("kind").and_then(|k| k.as_str()) {
        Some("zero") => {
            check_keys(map, &["kind"], &what)?;
            Ok(EmbedSource::Zero)
        }
        Some("model_token") => {
            check_keys(map, &["kind", "model", "token", "token_id"], &what)?;
            let model = model_ref(
                map.get("model")
                    .ok_or_else(|| format!("{what}: `kind: model_token` needs `model`"))?,
                &format!("{what}.model"),
            )?;
            let token = match (map.get("token"), map.get("token_id")) {
                (Some(Json::String(s)), None) => TokenRef::Token(s.clone()),
                (None, Some(Json::Number(n))) => match n.as_u64() {
                    Some(i) => TokenRef::Id(i as usize),
                    None => {
                        return Err(format!(
                            "{what}.token_id must be a non-negative integer, found {n}"
                        ));
                    }
                },
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "{what}: give exactly one of `token` and `token_id`, not both"
                    ));
                }
                (None, None) => {
                    return Err(format!(
                        "{what}: `kind: model_token` needs `token` or `token_id`"
                    ));
                }
                (Some(o), None) => {
                    return Err(format!(
                        "{what}.token must be a string, found {}",
                        kind_name(o)
                    ));
                }
                (None, Some(o)) => {
                    return Err(format!(
                        "{what}.token_id must be an integer, found {}",
                        kind_name(o)
                    ));
                }
            };
            Ok(EmbedSource::ModelToken { model, token })
        }
        Some(k) => Err(format!(
            "{what}: unknown `kind: {k}`; allowed: model_token, zero"
        )),
        None => Err(format!(
            "{what} must be a model reference (a string) or a mapping with `kind: model_token` or `kind: zero`"
        )),
    }
}

fn token_spec(tok: &str, v: &Json) -> std::result::Result<TokenSpec, String> {
    let what = format!("`tokenizer.tokens.{tok}`");
    let Json::Object(map) = v else {
        return Err(format!(
            "{what} must be a mapping with `source` and optionally `force`, found {}",
            kind_name(v)
        ));
    };
    check_keys(map, &["source", "force"], &what)?;
    let source = match map.get("source") {
        None | Some(Json::Null) => None,
        Some(s) => Some(embed_source(s, tok)?),
    };
    let force = match map.get("force") {
        None | Some(Json::Null) => false,
        Some(Json::Bool(b)) => *b,
        Some(o) => {
            return Err(format!(
                "{what}.force must be true or false, found {}",
                kind_name(o)
            ));
        }
    };
    if force && source.is_none() {
        return Err(format!("{what}: `force: true` needs a `source`"));
    }
    Ok(TokenSpec {
        token: tok.to_string(),
        source,
        force,
    })
}

fn tokenizer_block(
    v: &Json,
) -> std::result::Result<(SourceKind, Option<usize>, Vec<TokenSpec>), String> {
    let Json::Object(map) = v else {
        return Err(format!(
            "`tokenizer` must be a mapping (source, pad_to_multiple_of, tokens), found {}",
            kind_name(v)
        ));
    };
    check_keys(
        map,
        &["source", "pad_to_multiple_of", "tokens"],
        "`tokenizer`",
    )?;
    let source = match map.get("source") {
        None | Some(Json::Null) => SourceKind::Union,
        Some(s) => source_kind(s, "`tokenizer.source`")?,
    };
    let pad = match map.get("pad_to_multiple_of") {
        None | Some(Json::Null) => None,
        Some(Json::Number(n)) => match n.as_u64() {
            Some(p) if p > 0 => Some(p as usize),
            _ => {
                return Err(format!(
                    "`tokenizer.pad_to_multiple_of` must be a positive integer, found {n}"
                ));
            }
        },
        Some(o) => {
            return Err(format!(
                "`tokenizer.pad_to_multiple_of` must be a positive integer, found {}",
                kind_name(o)
            ));
        }
    };
    let tokens = match map.get("tokens") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Object(t)) => t
            .iter()
            .map(|(k, v)| token_spec(k, v))
            .collect::<std::result::Result<_, _>>()?,
        Some(o) => {
            return Err(format!(
                "`tokenizer.tokens` must be a mapping of token → {{source, force}}, found {}",
                kind_name(o)
            ));
        }
    };
    Ok((source, pad, tokens))
}

impl VocabOptions {
    /// Parses the tokenizer options of `recipe` (errors carry the option's line and column).
    pub fn from_recipe(recipe: &Recipe) -> Result<VocabOptions> {
        let mut out = VocabOptions::default();
        if let Some((v, pos)) = &recipe.tokenizer_source {
            let source = source_kind(v, "`tokenizer_source`").map_err(|m| recipe.error(*pos, m))?;
            out.tokenizer = Some(TokenizerSpec {
                source,
                pad_to_multiple_of: None,
                tokens: Vec::new(),
                pos: *pos,
            });
        }
        if let Some((v, pos)) = &recipe.tokenizer {
            let (source, pad, tokens) = tokenizer_block(v).map_err(|m| recipe.error(*pos, m))?;
            out.tokenizer = Some(TokenizerSpec {
                source,
                pad_to_multiple_of: pad,
                tokens,
                pos: *pos,
            });
        }
        if let Some((s, pos)) = &recipe.chat_template {
            out.chat_template = Some(chat::parse(s).map_err(|m| recipe.error(*pos, m))?);
        }
        Ok(out)
    }

    /// Checks that every model named under `tokens:` is part of the merge (mergekit: an
    /// assertion error at merge time).
    pub fn check_models(&self, recipe: &Recipe) -> Result<()> {
        let models = recipe.referenced_models();
        for (r, what) in self.named_models() {
            if !models.contains(r) {
                let pos = self.tokenizer.as_ref().map(|t| t.pos).unwrap_or_default();
                return Err(recipe.error(
                    pos,
                    format!("{what} names model `{r}`, which is not part of the merge"),
                ));
            }
        }
        Ok(())
    }

    /// Every model reference named under `tokens:`, with what names it.
    pub fn named_models(&self) -> Vec<(&ModelRef, String)> {
        let mut out = Vec::new();
        if let Some(t) = &self.tokenizer {
            for s in &t.tokens {
                match &s.source {
                    Some(EmbedSource::Model(m))
                    | Some(EmbedSource::ModelToken { model: m, .. }) => {
                        out.push((m, format!("`tokenizer.tokens.{}.source`", s.token)))
                    }
                    _ => {}
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn opts(yaml_tail: &str) -> std::result::Result<VocabOptions, String> {
        let text =
            format!("merge_method: linear\nmodels:\n  - model: a\n  - model: b\n{yaml_tail}");
        let r =
            Recipe::parse(&text, Path::new("r.yml"), Path::new(".")).map_err(|e| e.to_string())?;
        VocabOptions::from_recipe(&r).map_err(|e| e.to_string())
    }

    #[test]
    fn tokenizer_source_forms() {
        let o = opts("tokenizer_source: union\n").unwrap();
        assert_eq!(o.tokenizer.unwrap().source, SourceKind::Union);
        let o = opts("tokenizer_source: base\n").unwrap();
        assert_eq!(o.tokenizer.unwrap().source, SourceKind::Base);
        let o = opts("tokenizer_source: org/model\n").unwrap();
        assert_eq!(
            o.tokenizer.unwrap().source,
            SourceKind::Model(ModelRef::parse("org/model").unwrap())
        );
        let e = opts("tokenizer_source: model:org/x\n").unwrap_err();
        assert!(e.contains("old syntax") && e.contains("`org/x`"), "{e}");
        let e = opts("tokenizer_source: [a]\n").unwrap_err();
        assert!(
            e.contains("tokenizer_source") && e.contains("line 5"),
            "{e}"
        );
    }

    #[test]
    fn tokenizer_block_full() {
        let o = opts(
            "tokenizer:\n  source: base\n  pad_to_multiple_of: 16\n  tokens:\n    \"<|im_start|>\":\n      source: b\n    \"<|im_end|>\":\n      source:\n        kind: model_token\n        model: a\n        token: \"</s>\"\n      force: true\n    \"<x>\":\n      source: {kind: model_token, model: a, token_id: 7}\n    \"<z>\":\n      source: {kind: zero}\n",
        )
        .unwrap();
        let t = o.tokenizer.unwrap();
        assert_eq!(t.source, SourceKind::Base);
        assert_eq!(t.pad_to_multiple_of, Some(16));
        let names: Vec<&str> = t.tokens.iter().map(|s| s.token.as_str()).collect();
        assert_eq!(names, ["<|im_start|>", "<|im_end|>", "<x>", "<z>"]);
        assert_eq!(
            t.tokens[0].source,
            Some(EmbedSource::Model(ModelRef::parse("b").unwrap()))
        );
        assert!(!t.tokens[0].force && t.tokens[1].force);
        assert_eq!(
            t.tokens[1].source,
            Some(EmbedSource::ModelToken {
                model: ModelRef::parse("a").unwrap(),
                token: TokenRef::Token("</s>".into())
            })
        );
        assert_eq!(
            t.tokens[2].source,
            Some(EmbedSource::ModelToken {
                model: ModelRef::parse("a").unwrap(),
                token: TokenRef::Id(7)
            })
        );
        assert_eq!(t.tokens[3].source, Some(EmbedSource::Zero));
        // default source is union
        let o = opts("tokenizer:\n  pad_to_multiple_of: 8\n").unwrap();
        assert_eq!(o.tokenizer.unwrap().source, SourceKind::Union);
    }

    #[test]
    fn unknown_keys_name_key_and_allowed() {
        let e = opts("tokenizer:\n  sorce: base\n").unwrap_err();
        assert!(
            e.contains("`sorce`") && e.contains("source, pad_to_multiple_of, tokens"),
            "{e}"
        );
        let e = opts("tokenizer:\n  tokens:\n    x:\n      source: a\n      forse: true\n")
            .unwrap_err();
        assert!(e.contains("`forse`") && e.contains("source, force"), "{e}");
        let e = opts("tokenizer:\n  tokens:\n    x:\n      source: {kind: zero, model: a}\n")
            .unwrap_err();
        assert!(e.contains("`model`") && e.contains("allowed: kind"), "{e}");
        let e = opts(
            "tokenizer:\n  tokens:\n    x:\n      source: {kind: model_token, model: a, tokn: y}\n",
        )
        .unwrap_err();
        assert!(e.contains("`tokn`") && e.contains("token_id"), "{e}");
        let e = opts("tokenizer:\n  tokens:\n    x:\n      source: {kind: nope}\n").unwrap_err();
        assert!(e.contains("nope") && e.contains("model_token, zero"), "{e}");
    }

    #[test]
    fn invalid_values() {
        let e = opts("tokenizer:\n  tokens:\n    x:\n      source: {kind: model_token, model: a, token: y, token_id: 3}\n").unwrap_err();
        assert!(e.contains("exactly one"), "{e}");
        let e =
            opts("tokenizer:\n  tokens:\n    x:\n      source: {kind: model_token, model: a}\n")
                .unwrap_err();
        assert!(e.contains("`token` or `token_id`"), "{e}");
        let e = opts("tokenizer:\n  pad_to_multiple_of: 0\n").unwrap_err();
        assert!(e.contains("positive integer"), "{e}");
        let e = opts("tokenizer:\n  pad_to_multiple_of: -3\n").unwrap_err();
        assert!(e.contains("positive integer"), "{e}");
        let e = opts("tokenizer:\n  tokens:\n    x:\n      force: true\n").unwrap_err();
        assert!(e.contains("needs a `source`"), "{e}");
        let e = opts("tokenizer_source: base\ntokenizer:\n  source: base\n").unwrap_err();
        assert!(e.contains("mutually exclusive"), "{e}");
    }

    #[test]
    fn chat_template_forms() {
        assert_eq!(
            opts("chat_template: auto\n").unwrap().chat_template,
            Some(ChatTemplate::Auto)
        );
        assert_eq!(
            opts("chat_template: chatml\n").unwrap().chat_template,
            Some(ChatTemplate::Builtin("chatml"))
        );
        let lit = "{% for m in messages %}{{ m['content'] }}{% endfor %}";
        assert_eq!(
            opts(&format!("chat_template: \"{lit}\"\n"))
                .unwrap()
                .chat_template,
            Some(ChatTemplate::Literal(lit.into()))
        );
        // too short, or no `{`: invalid, as in mergekit
        let e = opts("chat_template: vicuna\n").unwrap_err();
        assert!(
            e.contains("Invalid chat template") && e.contains("chatml"),
            "{e}"
        );
        let e = opts("chat_template: \"this is a long template without braces\"\n").unwrap_err();
        assert!(e.contains("Invalid chat template"), "{e}");
        let e = opts("chat_template: \"{{ short }}\"\n").unwrap_err();
        assert!(e.contains("Invalid chat template"), "{e}");
    }
}
