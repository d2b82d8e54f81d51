//! Vocabulary merging (mergekit §4): the recipe's tokenizer options, the output vocabulary
//! (`base`, `union` or a model's tokenizer, plus configured tokens, padded), each input
//! model's map from output tokens to its own rows, the row maps of the embedding and head
//! tensors ([`rows`]), the tokenizer files written with the merge, and chat templates.
//!
//! The planner calls [`apply`] once the output tensors are known: it builds the vocabulary,
//! gives every embedding tensor's sources a shared [`RowMap`] and the tensor its new row
//! count, sets `vocab_size` in the output config and returns the files to write. Without a
//! tokenizer option nothing is remapped; differing vocabulary sizes are then cropped by the
//! planner (mergekit §4.1) with a warning from [`crop_warnings`].

pub mod chat;
pub mod config;
pub mod rows;
pub mod tokenizer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value as Json};

pub use config::{
    ChatTemplate, EmbedSource, SourceKind, TokenRef, TokenSpec, TokenizerSpec, VocabOptions,
};
pub use rows::{DefaultRow, RowMap, RowSrc, read_remapped};
use tokenizer::{Builder, ModelTokenizer, full_vocab, model_vocab, plain_token};

use crate::error::{Error, Result};
use crate::plan::{PlanModel, PlannedTensor};
use crate::recipe::Recipe;

/// What one model's tokenizer says about an output token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The model has it at this row.
    Row(usize),
    /// The model does not have it.
    Absent,
    /// The model's tokenizer lists it at this id, which is ≥ the model's `vocab_size`.
    Beyond(usize),
}

/// The output vocabulary and how every input model maps onto it.
#[derive(Debug, Clone)]
pub struct Vocabulary {
    /// Output tokens by id.
    pub tokens: Vec<String>,
    /// Output rows (the vocabulary padded to `pad_to_multiple_of`).
    pub rows: usize,
    /// Per input model (plan order), per output id.
    pub perms: Vec<Vec<Slot>>,
    /// Per input model, its vocabulary (token → id; the base's stripped).
    pub original: Vec<HashMap<String, usize>>,
    /// Per input model, its `vocab_size` (config.json, else its tokenizer's size).
    pub vocab_sizes: Vec<usize>,
    /// The output `tokenizer.json`.
    pub json: Json,
    /// The tokenizer whose `tokenizer_config.json`, `special_tokens_map.json` and chat
    /// template file the output follows.
    pub template_source: ModelTokenizer,
}

/// One input model as the vocabulary builder sees it.
#[derive(Debug, Clone)]
pub struct VocabInput<'a> {
    /// Its name (the reference as written).
    pub name: String,
    /// Its folder (`None` for a bare weights file).
    pub dir: Option<&'a Path>,
    /// Its `config.json`.
    pub config: Option<&'a Json>,
}

/// Where the output vocabulary starts from, resolved.
#[derive(Debug, Clone)]
pub enum Start {
    /// The stripped base tokenizer.
    Base,
    /// The stripped base plus every model's tokens.
    Union,
    /// Input model `i`'s tokenizer, unstripped.
    Input(usize),
    /// The tokenizer in this folder (a model outside the merge).
    Dir(PathBuf),
}

fn config_vocab_size(cfg: Option<&Json>) -> Option<usize> {
    cfg.and_then(|c| c.get("vocab_size"))
        .and_then(|v| v.as_u64())
        .map(|v| v as usize)
}

/// Builds the output vocabulary from `inputs` (plan order) with `base` as the base model
/// (the base, else the first model).
pub fn build_vocabulary(
    spec: &TokenizerSpec,
    start: &Start,
    inputs: &[VocabInput],
    base: usize,
    warnings: &mut Vec<String>,
) -> Result<Vocabulary> {
    let toks: Vec<Option<ModelTokenizer>> = inputs
        .iter()
        .map(|i| match i.dir {
            Some(d) => ModelTokenizer::load(d),
            None => Ok(None),
        })
        .collect::<Result<_>>()?;
    let Some(base_tok) = toks[base].clone() else {
        return Err(Error::BaseWithoutTokenizer {
            model: inputs[base].name.clone(),
            location: inputs[base]
                .dir
                .map(|d| d.display().to_string())
                .unwrap_or_else(|| "a bare weights file".into()),
        });
    };
    let base_path = base_tok.path();
    // the stripped base
    let mut base_json = base_tok.json.clone();
    let base_vs = config_vocab_size(inputs[base].config).unwrap_or_else(|| {
        full_vocab(&base_json, &base_path)
            .map(|v| v.len())
            .unwrap_or(0)
    });
    let removed = tokenizer::strip(&mut base_json, base_vs, &base_path)?;
    if !removed.is_empty() {
        warnings.push(format!(
            "model `{}`: {} token(s) at ids ≥ its vocab_size {base_vs} are dropped from its tokenizer",
            inputs[base].name,
            removed.len()
        ));
    }
    // each model's vocabulary: the base's stripped, a model without a tokenizer.json the base's
    let mut jsons: Vec<&Json> = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        if i == base {
            jsons.push(&base_json);
        } else if let Some(t) = t {
            jsons.push(&t.json);
        } else {
            warnings.push(format!(
                "model `{}` has no tokenizer.json; assuming the same vocabulary as `{}` (as mergekit)",
                inputs[i].name, inputs[base].name
            ));
            jsons.push(&base_json);
        }
    }
    let paths: Vec<PathBuf> = (0..inputs.len())
        .map(|i| match &toks[i] {
            Some(t) if i != base => t.path(),
            _ => base_path.clone(),
        })
        .collect();
    let mut originals = Vec::new();
    let mut sizes = Vec::new();
    for (i, j) in jsons.iter().enumerate() {
        let v = full_vocab(j, &paths[i])?;
        sizes.push(config_vocab_size(inputs[i].config).unwrap_or(v.len()));
        originals.push(v);
    }

    // the output tokenizer
    let (mut builder, template_source) = match start {
        Start::Base => (
            Builder::new(base_json.clone(), &base_path)?,
            base_tok.clone(),
        ),
        Start::Input(i) => {
            let t = toks[*i]
                .clone()
                .ok_or_else(|| Error::TokenizerSourceWithoutTokenizer {
                    tokenizer_source: format!("`{}`", inputs[*i].name),
                })?;
            (Builder::new(t.json.clone(), &t.path())?, t)
        }
        Start::Dir(d) => {
            let t =
                ModelTokenizer::load(d)?.ok_or_else(|| Error::TokenizerSourceWithoutTokenizer {
                    tokenizer_source: d.display().to_string(),
                })?;
            (Builder::new(t.json.clone(), &t.path())?, t)
        }
        Start::Union => {
            let union = Union {
                inputs,
                toks: &toks,
                base,
                jsons: &jsons,
                paths: &paths,
                originals: &originals,
                base_json: &base_json,
                base_path: &base_path,
            };
            (union.builder(warnings)?, base_tok.clone())
        }
    };
    for t in &spec.tokens {
        builder.add(plain_token(&t.token));
    }
    let tokens = tokens_by_id(builder.vocab())?;
    let real = tokens.len();
    let rows = match spec.pad_to_multiple_of {
        Some(p) => real.div_ceil(p) * p,
        None => real,
    };
    let perms = originals
        .iter()
        .zip(&sizes)
        .map(|(v, &vs)| {
            tokens
                .iter()
                .map(|t| match v.get(t) {
                    None => Slot::Absent,
                    Some(&i) if i >= vs => Slot::Beyond(i),
                    Some(&i) => Slot::Row(i),
                })
                .collect()
        })
        .collect();
    Ok(Vocabulary {
        tokens,
        rows,
        perms,
        original: originals,
        vocab_sizes: sizes,
        json: builder.finish(),
        template_source,
    })
}

/// The tokens of `vocab` (token → id) in id order; an error if the ids have a hole.
fn tokens_by_id(vocab: HashMap<String, usize>) -> Result<Vec<String>> {
    let mut tokens: Vec<(usize, String)> = vocab.into_iter().map(|(t, id)| (id, t)).collect();
    tokens.sort();
    if let Some((k, (id, t))) = tokens.iter().enumerate().find(|(k, (id, _))| k != id) {
        return Err(Error::VocabularyIdsNotContiguous {
            tokens: tokens.len(),
            token: t.clone(),
            id: *id,
            expected: k,
        });
    }
    Ok(tokens.into_iter().map(|(_, t)| t).collect())
}

/// What the union start reads of the inputs: the base's stripped tokenizer and every model's
/// vocabulary (a model without a tokenizer.json counts as the base).
struct Union<'a> {
    inputs: &'a [VocabInput<'a>],
    toks: &'a [Option<ModelTokenizer>],
    base: usize,
    jsons: &'a [&'a Json],
    paths: &'a [PathBuf],
    originals: &'a [HashMap<String, usize>],
    base_json: &'a Json,
    base_path: &'a Path,
}

impl Union<'_> {
    /// The stripped base plus every model's tokens (base first, then recipe order) not at
    /// ids beyond the model's vocab_size; an added token keeps its first definition.
    fn builder(&self, warnings: &mut Vec<String>) -> Result<Builder> {
        let mut order = vec![self.base];
        order.extend((0..self.inputs.len()).filter(|&i| i != self.base && self.toks[i].is_some()));
        let mut out_vocab: Vec<String> = Vec::new();
        let mut seen_vocab: std::collections::HashSet<String> = Default::default();
        let mut out_added: Vec<(String, Map<String, Json>)> = Vec::new();
        let mut added_at: HashMap<String, usize> = HashMap::new();
        let mut warned: std::collections::HashSet<String> = Default::default();
        for &m in &order {
            let j = self.jsons[m];
            let vs = config_vocab_size(self.inputs[m].config)
                .unwrap_or(model_vocab(j, &self.paths[m])?.len());
            let added = tokenizer::added_entries(j, &self.paths[m])?;
            let added_names: std::collections::HashSet<&str> =
                added.iter().map(|(_, c, _)| c.as_str()).collect();
            let mut by_id: Vec<(usize, &String)> =
                self.originals[m].iter().map(|(t, id)| (*id, t)).collect();
            by_id.sort();
            let mut beyond = 0;
            for (id, t) in by_id {
                if id >= vs {
                    beyond += 1;
                    continue;
                }
                if added_names.contains(t.as_str()) {
                    continue;
                }
                if seen_vocab.insert(t.clone()) {
                    out_vocab.push(t.clone());
                }
            }
            if beyond > 0 {
                warnings.push(format!(
                    "model `{}`: {beyond} token(s) of its tokenizer sit at ids ≥ its vocab_size {vs}; left out of the union",
                    self.inputs[m].name
                ));
            }
            let mut added = added;
            added.sort_by_key(|(id, _, _)| *id);
            for (id, c, mut e) in added {
                if id >= vs {
                    continue;
                }
                e.remove("id");
                match added_at.get(&c) {
                    Some(&k) => {
                        if out_added[k].1 != e && warned.insert(c.clone()) {
                            warnings.push(format!(
                                "token {c:?} is added with different settings by several models (`{}` differs); the first definition is used (base first, then recipe order)",
                                self.inputs[m].name
                            ));
                        }
                    }
                    None => {
                        added_at.insert(c.clone(), out_added.len());
                        out_added.push((c, e));
                    }
                }
            }
        }
        let mut b = Builder::new(self.base_json.clone(), self.base_path)?;
        let base_vocab = &self.originals[self.base];
        for t in &out_vocab {
            if !added_at.contains_key(t) && !base_vocab.contains_key(t) {
                b.add(plain_token(t));
            }
        }
        for (_, e) in out_added {
            b.add(e);
        }
        Ok(b)
    }
}

/// The tokenizer files a merge writes (built tokenizer).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizerFiles {
    /// `(file name, contents)`, in writing order.
    pub files: Vec<(String, Vec<u8>)>,
    /// The output vocabulary size (rows, padded).
    pub vocab_size: usize,
}

fn pretty(v: &Json) -> Vec<u8> {
    (serde_json::to_string_pretty(v).expect("json") + "\n").into_bytes()
}

/// Renders the output tokenizer files: `tokenizer.json`, `tokenizer_config.json` (the
/// source's, with `added_tokens_decoder` updated where it has one and the chat template
/// set), `special_tokens_map.json` and `chat_template.jinja` where the source has them.
pub fn tokenizer_files(v: &Vocabulary, template: Option<&str>) -> TokenizerFiles {
    let mut files = vec![("tokenizer.json".to_string(), pretty(&v.json))];
    let src = &v.template_source;
    let mut cfg = src.config.clone();
    if cfg.is_none() && template.is_some() {
        cfg = Some(Json::Object(Map::new()));
    }
    if let Some(Json::Object(c)) = cfg.as_mut() {
        if c.contains_key("added_tokens_decoder") {
            let mut dec = Map::new();
            for e in v.json["added_tokens"].as_array().into_iter().flatten() {
                if let Some(o) = e.as_object() {
                    let mut entry = o.clone();
                    let id = entry.remove("id").and_then(|i| i.as_u64()).unwrap_or(0);
                    let mut sorted = Map::new();
                    for k in [
                        "content",
                        "lstrip",
                        "normalized",
                        "rstrip",
                        "single_word",
                        "special",
                    ] {
                        if let Some(x) = entry.remove(k) {
                            sorted.insert(k.into(), x);
                        }
                    }
                    sorted.extend(entry);
                    dec.insert(id.to_string(), Json::Object(sorted));
                }
            }
            c.insert("added_tokens_decoder".into(), Json::Object(dec));
        }
        if let Some(t) = template {
            c.insert("chat_template".into(), t.into());
        }
    }
    if let Some(c) = &cfg {
        files.push(("tokenizer_config.json".into(), pretty(c)));
    }
    if let Some(s) = &src.special {
        files.push(("special_tokens_map.json".into(), pretty(s)));
    }
    if src.has_jinja {
        let text = match template {
            Some(t) => t.as_bytes().to_vec(),
            None => std::fs::read(src.dir.join("chat_template.jinja")).unwrap_or_default(),
        };
        files.push(("chat_template.jinja".into(), text));
    }
    TokenizerFiles {
        files,
        vocab_size: v.rows,
    }
}

/// Applies a chat template to a tokenizer file copied from the donor: `tokenizer_config.json`
/// gets `chat_template`, `chat_template.jinja` is replaced; other files are unchanged.
pub fn template_copied_file(
    name: &str,
    bytes: Vec<u8>,
    template: &str,
    path: &Path,
) -> Result<Vec<u8>> {
    match name {
        "tokenizer_config.json" => {
            let mut v: Json = serde_json::from_slice(&bytes)
                .map_err(|e| Error::bad_checkpoint(path, e.to_string()))?;
            if let Some(o) = v.as_object_mut() {
                o.insert("chat_template".into(), template.into());
            }
            Ok(pretty(&v))
        }
        "chat_template.jinja" => Ok(template.as_bytes().to_vec()),
        _ => Ok(bytes),
    }
}

/// What [`apply`] decided.
#[derive(Debug, Clone, Default)]
pub struct VocabPlan {
    /// The built tokenizer's files (a tokenizer option is set).
    pub tokenizer: Option<TokenizerFiles>,
    /// The chat template to write (resolved `chat_template`).
    pub chat_template: Option<String>,
}

/// Applies the recipe's tokenizer options to a plan being built: builds the vocabulary,
/// remaps every 2-D embedding tensor in `tensors` (its sources get the shared [`RowMap`], its
/// first dimension becomes the padded vocabulary size), sets `vocab_size` in `config` and
/// resolves the chat template.
pub fn apply(
    recipe: &Recipe,
    opts: &VocabOptions,
    models: &[PlanModel],
    donor: Option<usize>,
    tensors: &mut [PlannedTensor],
    config: &mut Option<Json>,
    warnings: &mut Vec<String>,
) -> Result<VocabPlan> {
    let dirs: Vec<&Path> = models
        .iter()
        .filter_map(|m| m.checkpoint.dir.as_deref())
        .collect();
    let chat_template = match &opts.chat_template {
        Some(ct) => chat::resolve(ct, &dirs)?,
        None => None,
    };
    let Some(spec) = &opts.tokenizer else {
        return Ok(VocabPlan {
            tokenizer: None,
            chat_template,
        });
    };
    let model_of = |r: &crate::recipe::ModelRef| models.iter().position(|m| &m.reference == r);
    opts.check_models(recipe)?;
    let start = match &spec.source {
        SourceKind::Base => Start::Base,
        SourceKind::Union => Start::Union,
        SourceKind::Model(r) => match model_of(r) {
            Some(i) => Start::Input(i),
            None => {
                let p = crate::plan::resolve_model(r, &recipe.dir)?;
                Start::Dir(if p.is_file() {
                    p.parent().map(Path::to_path_buf).unwrap_or_default()
                } else {
                    p
                })
            }
        },
    };
    let inputs: Vec<VocabInput> = models
        .iter()
        .map(|m| VocabInput {
            name: m.reference.to_string(),
            dir: m.checkpoint.dir.as_deref(),
            config: m.checkpoint.config.as_ref(),
        })
        .collect();
    let base = donor.unwrap_or(0);
    let vocab = build_vocabulary(spec, &start, &inputs, base, warnings)?;
    let mut found = Vec::new();
    for t in tensors.iter_mut() {
        if !t.is_embed || t.raw_copy || t.shape.len() != 2 {
            continue;
        }
        let sources: Vec<rows::MapSource> = t
            .sources
            .iter()
            .map(|s| rows::MapSource {
                model: s.model,
                is_base: s.is_base,
                rows: models[s.model].checkpoint.tensors[&s.tensor].shape[0],
            })
            .collect();
        let name = |i: usize| models[i].reference.to_string();
        let map = rows::build_row_map(
            &vocab, spec, &t.name, &sources, &model_of, &name, &mut found,
        )?;
        t.shape[0] = map.rows;
        let map = Arc::new(map);
        for s in &mut t.sources {
            s.rows = Some(map.clone());
        }
    }
    for w in found {
        if !warnings.contains(&w) {
            warnings.push(w);
        }
    }
    if let Some(Json::Object(c)) = config.as_mut() {
        c.insert("vocab_size".into(), vocab.rows.into());
    }
    Ok(VocabPlan {
        tokenizer: Some(tokenizer_files(&vocab, chat_template.as_deref())),
        chat_template,
    })
}

/// Warnings for embedding tensors cropped to the smallest input (no tokenizer option,
/// mergekit §4.1): the tensor and every input's shape.
pub fn crop_warnings(models: &[PlanModel], tensors: &[PlannedTensor]) -> Vec<String> {
    let mut out = Vec::new();
    for t in tensors {
        if t.raw_copy || t.sources.iter().any(|s| s.rows.is_some()) {
            continue;
        }
        let shapes: Vec<(String, &Vec<usize>)> = t
            .sources
            .iter()
            .map(|s| {
                (
                    models[s.model].reference.to_string(),
                    &models[s.model].checkpoint.tensors[&s.tensor].shape,
                )
            })
            .collect();
        if shapes.iter().any(|(_, sh)| **sh != t.shape) {
            out.push(format!(
                "tensor `{}`: inputs differ in shape ({}); cropped to {:?} as mergekit does (set `tokenizer_source` to merge the vocabularies instead)",
                t.name,
                shapes
                    .iter()
                    .map(|(m, sh)| format!("`{m}` {sh:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                t.shape
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Writes a BPE tokenizer.json with `vocab` (ids in order) and `added` `(id, content,
    /// special)` into `dir`.
    fn write_tok(dir: &Path, vocab: &[&str], added: &[(usize, &str, bool)]) {
        std::fs::create_dir_all(dir).unwrap();
        let v: Map<String, Json> = vocab
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), json!(i)))
            .collect();
        let a: Vec<Json> = added
            .iter()
            .map(|(id, c, sp)| json!({"id": id, "content": c, "single_word": false, "lstrip": false, "rstrip": false, "normalized": !sp, "special": sp}))
            .collect();
        let t = json!({"version": "1.0", "added_tokens": a, "model": {"type": "BPE", "vocab": v, "merges": []}});
        std::fs::write(dir.join("tokenizer.json"), t.to_string()).unwrap();
        std::fs::write(
            dir.join("tokenizer_config.json"),
            json!({"bos_token": "<s>", "added_tokens_decoder": {}}).to_string(),
        )
        .unwrap();
    }

    fn spec(tokens: &[&str], pad: Option<usize>) -> TokenizerSpec {
        TokenizerSpec {
            source: SourceKind::Union,
            pad_to_multiple_of: pad,
            tokens: tokens
                .iter()
                .map(|t| TokenSpec {
                    token: t.to_string(),
                    source: None,
                    force: false,
                })
                .collect(),
            pos: Default::default(),
        }
    }

    #[test]
    fn union_base_and_model_sources() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            tmp.path().join("a"),
            tmp.path().join("b"),
            tmp.path().join("c"),
        );
        // a: 4 tokens + <s> added; vocab_size 5; a padding token at 5 beyond it
        write_tok(
            &a,
            &["<s>", "x", "y", "z", "w"],
            &[(0, "<s>", true), (5, "<pad>", true)],
        );
        // b: a different ordinary token and two added ones (one shared with different flags)
        write_tok(
            &b,
            &["<s>", "x", "q", "z"],
            &[(0, "<s>", false), (4, "<|im|>", true)],
        );
        write_tok(&c, &["<s>", "k"], &[]);
        let ca = json!({"vocab_size": 5});
        let cb = json!({"vocab_size": 5});
        let inputs = vec![
            VocabInput {
                name: "a".into(),
                dir: Some(&a),
                config: Some(&ca),
            },
            VocabInput {
                name: "b".into(),
                dir: Some(&b),
                config: Some(&cb),
            },
            VocabInput {
                name: "c".into(),
                dir: None,
                config: None,
            },
        ];
        let mut w = Vec::new();
        let v =
            build_vocabulary(&spec(&["<t>"], Some(4)), &Start::Union, &inputs, 0, &mut w).unwrap();
        assert_eq!(v.tokens, ["<s>", "x", "y", "z", "w", "q", "<|im|>", "<t>"]);
        assert_eq!(v.rows, 8);
        assert_eq!(v.perms[0][5], Slot::Absent, "stripped base");
        assert_eq!(v.perms[1][5], Slot::Row(2));
        assert_eq!(v.perms[1][6], Slot::Row(4));
        assert_eq!(
            v.perms[2][1],
            Slot::Row(1),
            "no tokenizer: the base's vocabulary"
        );
        assert!(
            w.iter().any(|m| m.contains("dropped from its tokenizer")),
            "{w:?}"
        );
        assert!(
            w.iter()
                .any(|m| m.contains("\"<s>\"") && m.contains("different settings")),
            "{w:?}"
        );
        assert!(
            w.iter().any(|m| m.contains("`c` has no tokenizer.json")),
            "{w:?}"
        );
        let files = tokenizer_files(&v, Some("{{ template }}"));
        let names: Vec<&str> = files.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["tokenizer.json", "tokenizer_config.json"]);
        let cfg: Json = serde_json::from_slice(&files.files[1].1).unwrap();
        assert_eq!(cfg["chat_template"], "{{ template }}");
        assert_eq!(cfg["added_tokens_decoder"]["6"]["content"], "<|im|>");
        assert_eq!(
            cfg["added_tokens_decoder"]["0"]["special"], true,
            "first definition wins"
        );
        let tj: Json = serde_json::from_slice(&files.files[0].1).unwrap();
        assert!(tj["model"]["vocab"].get("<pad>").is_none());

        // base: the stripped base plus the configured token
        let v = build_vocabulary(&spec(&["<t>"], None), &Start::Base, &inputs, 0, &mut w).unwrap();
        assert_eq!(v.tokens, ["<s>", "x", "y", "z", "w", "<t>"]);
        // a model's tokenizer, unstripped, and a folder outside the merge
        let v = build_vocabulary(&spec(&[], None), &Start::Input(0), &inputs, 0, &mut w).unwrap();
        assert_eq!(v.tokens.len(), 6);
        assert_eq!(
            v.perms[0][5],
            Slot::Absent,
            "the base's own map is the stripped one"
        );
        let v =
            build_vocabulary(&spec(&[], None), &Start::Dir(b.clone()), &inputs, 0, &mut w).unwrap();
        assert_eq!(v.tokens, ["<s>", "x", "q", "z", "<|im|>"]);
        // the base needs a tokenizer
        let e = build_vocabulary(&spec(&[], None), &Start::Base, &inputs, 2, &mut w).unwrap_err();
        assert!(matches!(e, Error::BaseWithoutTokenizer { .. }), "{e}");
    }

    #[test]
    fn holes_in_the_output_ids_are_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        write_tok(&a, &["x", "y"], &[(5, "<far>", true)]);
        let inputs = vec![VocabInput {
            name: "a".into(),
            dir: Some(&a),
            config: None,
        }];
        let mut w = Vec::new();
        let e =
            build_vocabulary(&spec(&[], None), &Start::Input(0), &inputs, 0, &mut w).unwrap_err();
        assert!(
            matches!(&e, Error::VocabularyIdsNotContiguous { token, .. } if token == "<far>"),
            "{e}"
        );
        assert!(e.to_string().contains("not contiguous"), "{e}");
    }
}
