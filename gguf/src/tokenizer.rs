//! Tokenizer metadata (`tokenizer.*` keys, spec §5) from an HF model folder, as llama.cpp's
//! converter writes it.
//!
//! Two paths, chosen like the converter chooses them: a folder with `tokenizer.model` takes the
//! SentencePiece path (the `.model` protobuf is parsed here by a small protobuf reader:
//! pieces, scores, types, plus the trainer and normalizer fields smelt reports), otherwise a
//! byte-level BPE `tokenizer.json` takes the `gpt2` path (tokens, token types, merges). Both
//! then get the special-token ids, the add-BOS/SEP/EOS flags and the chat template the way
//! gguf-py's `SpecialVocab` derives them from `tokenizer.json`, `tokenizer_config.json` and
//! `config.json`. The vocabulary is padded with `[PAD{id}]` tokens up to the embedding rows.
//!
//! `tokenizer.ggml.pre` (BPE only) is taken from the caller's override or recognised from the
//! tokenizer (see [`crate::pretok`]); an unrecognised tokenizer is an error that names the
//! `--pre` option.

use std::path::Path;

use serde_json::Value;

use super::error::{GgufError, GgufResult};
use super::file::GgufValue;

/// llama.cpp token types.
pub mod token_type {
    /// Ordinary token.
    pub const NORMAL: i32 = 1;
    /// The unknown token.
    pub const UNKNOWN: i32 = 2;
    /// Control / special token.
    pub const CONTROL: i32 = 3;
    /// User-defined (added, matched whole).
    pub const USER_DEFINED: i32 = 4;
    /// Unused slot.
    pub const UNUSED: i32 = 5;
    /// Byte-fallback token `<0xNN>`.
    pub const BYTE: i32 = 6;
}

/// One SentencePiece piece.
#[derive(Debug, Clone, PartialEq)]
pub struct SpPiece {
    /// Piece text (`▁` for spaces).
    pub piece: String,
    /// Score.
    pub score: f32,
    /// SentencePiece type: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub kind: i32,
}

/// The parts of a SentencePiece `ModelProto` smelt uses.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SpModel {
    /// Pieces in id order.
    pub pieces: Vec<SpPiece>,
    /// trainer_spec.model_type (1 unigram, 2 BPE, 3 word, 4 char), if set.
    pub model_type: Option<u64>,
    /// trainer_spec.byte_fallback.
    pub byte_fallback: bool,
    /// normalizer_spec.add_dummy_prefix (default true).
    pub add_dummy_prefix: bool,
    /// normalizer_spec.remove_extra_whitespaces (default true).
    pub remove_extra_whitespaces: bool,
    /// normalizer_spec.name, if set.
    pub normalizer_name: Option<String>,
}

/// A minimal protobuf wire-format reader.
struct Proto<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Proto<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Proto { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| format!("truncated varint at byte {}", self.pos))?;
            self.pos += 1;
            v |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("varint too long at byte {}", self.pos))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "field of {n} bytes at byte {} overruns the message",
                    self.pos
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Next (field number, wire value).
    fn field(&mut self) -> Result<(u64, Wire<'a>), String> {
        let key = self.varint()?;
        let field = key >> 3;
        let w = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                let b = self.take(8)?;
                Wire::Fixed64(u64::from_le_bytes(b.try_into().expect("8 bytes")))
            }
            2 => {
                let n = self.varint()?;
                let n = usize::try_from(n).map_err(|_| "length overflow".to_string())?;
                Wire::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Wire::Fixed32(u32::from_le_bytes(b.try_into().expect("4 bytes")))
            }
            t => {
                return Err(format!(
                    "unsupported protobuf wire type {t} (field {field})"
                ));
            }
        };
        Ok((field, w))
    }
}

enum Wire<'a> {
    Varint(u64),
    Fixed64(#[allow(dead_code)] u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

impl SpModel {
    /// Parses a `tokenizer.model` file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<SpModel, String> {
        let mut m = SpModel {
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            ..SpModel::default()
        };
        let mut p = Proto::new(bytes);
        while !p.done() {
            match p.field()? {
                (1, Wire::Bytes(b)) => m.pieces.push(parse_piece(b)?),
                (2, Wire::Bytes(b)) => {
                    let mut t = Proto::new(b);
                    while !t.done() {
                        match t.field()? {
                            (3, Wire::Varint(v)) => m.model_type = Some(v),
                            (35, Wire::Varint(v)) => m.byte_fallback = v != 0,
                            _ => {}
                        }
                    }
                }
                (3, Wire::Bytes(b)) => {
                    let mut t = Proto::new(b);
                    while !t.done() {
                        match t.field()? {
                            (1, Wire::Bytes(s)) => {
                                m.normalizer_name = Some(String::from_utf8_lossy(s).into_owned())
                            }
                            (3, Wire::Varint(v)) => m.add_dummy_prefix = v != 0,
                            (4, Wire::Varint(v)) => m.remove_extra_whitespaces = v != 0,
                            _ => {}
                        }
                    }
                }
                (1..=3, _) => return Err("ModelProto field has the wrong wire type".into()),
                _ => {}
            }
        }
        if m.pieces.is_empty() {
            return Err("no pieces: not a SentencePiece model".into());
        }
        Ok(m)
    }
}

fn parse_piece(b: &[u8]) -> Result<SpPiece, String> {
    let mut p = Proto::new(b);
    let mut piece = SpPiece {
        piece: String::new(),
        score: 0.0,
        kind: 1,
    };
    while !p.done() {
        match p.field()? {
            (1, Wire::Bytes(s)) => {
                piece.piece = String::from_utf8(s.to_vec())
                    .map_err(|_| "piece text is not UTF-8".to_string())?
            }
            (2, Wire::Fixed32(v)) => piece.score = f32::from_bits(v),
            (3, Wire::Varint(v)) => piece.kind = v as i32,
            (1..=3, _) => return Err("SentencePiece field has the wrong wire type".into()),
            _ => {}
        }
    }
    Ok(piece)
}

/// What the converter would write for the `tokenizer.*` keys.
#[derive(Debug, Clone)]
pub struct TokenizerMetadata {
    /// The `tokenizer.*` pairs, in the converter's order.
    pub kvs: Vec<(String, GgufValue)>,
    /// Number of tokens (the length of `tokenizer.ggml.tokens`).
    pub n_tokens: usize,
}

/// Options for [`tokenizer_metadata`].
#[derive(Debug, Clone, Default)]
pub struct TokenizerOptions {
    /// `tokenizer.ggml.pre` to use instead of recognising it (BPE only).
    pub pre_override: Option<String>,
    /// Number of token ids to provide (embedding rows). Defaults to config.json's `vocab_size`.
    pub n_vocab: Option<usize>,
    /// Write `tokenizer.ggml.add_space_prefix = false` (Gemma).
    pub no_space_prefix: bool,
    /// Add the CodeGemma fill-in-the-middle ids the converter writes for Gemma.
    pub gemma_special_ids: bool,
    /// Phi-3's own SentencePiece overlay (added tokens from tokenizer_config.json and
    /// tokenizer.json become USER_DEFINED or CONTROL) and its `GPT2Tokenizer` switch.
    pub phi3: bool,
}

fn read_json(path: &Path) -> GgufResult<Option<Value>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| GgufError::Tokenizer {
                path: path.to_path_buf(),
                reason: format!("invalid JSON: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(GgufError::io(path, e)),
    }
}

fn tok_err(path: &Path, reason: impl Into<String>) -> GgufError {
    GgufError::Tokenizer {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Whether the converter treats an added token's text as special-looking.
pub fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// Builds the tokenizer metadata for the HF model folder `dir` with config.json `config`.
pub fn tokenizer_metadata(
    dir: &Path,
    config: &Value,
    opts: &TokenizerOptions,
) -> GgufResult<TokenizerMetadata> {
    let tokenizer_json = read_json(&dir.join("tokenizer.json"))?;
    let tokenizer_config = read_json(&dir.join("tokenizer_config.json"))?;
    let config_vocab = config
        .get("vocab_size")
        .and_then(Value::as_u64)
        .map(|v| v as usize);
    let spm_path = dir.join("tokenizer.model");
    let gpt2_class = tokenizer_config
        .as_ref()
        .and_then(|c| c.get("tokenizer_class"))
        .and_then(Value::as_str)
        == Some("GPT2Tokenizer");
    if opts.phi3 && !gpt2_class && !spm_path.is_file() {
        return Err(tok_err(&spm_path, "Phi-3 needs tokenizer.model"));
    }
    let use_spm = spm_path.is_file() && !(opts.phi3 && gpt2_class);
    let mut kvs: Vec<(String, GgufValue)> = Vec::new();
    let n_tokens;
    let mut merges: Option<Vec<String>> = None;
    if use_spm {
        let bytes = std::fs::read(&spm_path).map_err(|e| GgufError::io(&spm_path, e))?;
        let sp = SpModel::parse(&bytes).map_err(|r| tok_err(&spm_path, r))?;
        let vocab_size = opts.n_vocab.or(config_vocab).unwrap_or(sp.pieces.len());
        let (tokens, scores, types) = if opts.phi3 {
            phi3_vocab(
                &sp,
                vocab_size,
                tokenizer_config.as_ref(),
                tokenizer_json.as_ref(),
            )
        } else {
            spm_vocab(&sp, vocab_size, dir, tokenizer_config.as_ref())?
        };
        n_tokens = tokens.len();
        kvs.push((
            "tokenizer.ggml.model".into(),
            GgufValue::String("llama".into()),
        ));
        kvs.push((
            "tokenizer.ggml.pre".into(),
            GgufValue::String("default".into()),
        ));
        kvs.push((
            "tokenizer.ggml.tokens".into(),
            GgufValue::string_array(tokens),
        ));
        kvs.push(("tokenizer.ggml.scores".into(), GgufValue::f32_array(scores)));
        kvs.push((
            "tokenizer.ggml.token_type".into(),
            GgufValue::i32_array(types),
        ));
    } else {
        let tj_path = dir.join("tokenizer.json");
        let tj = tokenizer_json.as_ref().ok_or_else(|| {
            tok_err(
                dir,
                "no tokenizer.model or tokenizer.json in the model folder",
            )
        })?;
        let model = tj
            .get("model")
            .ok_or_else(|| tok_err(&tj_path, "no `model` section"))?;
        let kind = model.get("type").and_then(Value::as_str).unwrap_or("");
        let byte_fallback = model
            .get("byte_fallback")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if kind != "BPE" || byte_fallback {
            return Err(tok_err(
                &tj_path,
                format!(
                    "only byte-level BPE tokenizer.json files are supported without a \
                     tokenizer.model (found model type `{kind}`{})",
                    if byte_fallback {
                        " with byte_fallback"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let vocab_size = opts.n_vocab.or(config_vocab);
        let (tokens, types) = bpe_vocab(tj, &tj_path, vocab_size)?;
        let pre = match &opts.pre_override {
            Some(p) => p.clone(),
            None => super::pretok::recognise(tj)?,
        };
        n_tokens = tokens.len();
        kvs.push((
            "tokenizer.ggml.model".into(),
            GgufValue::String("gpt2".into()),
        ));
        kvs.push(("tokenizer.ggml.pre".into(), GgufValue::String(pre)));
        kvs.push((
            "tokenizer.ggml.tokens".into(),
            GgufValue::string_array(tokens),
        ));
        kvs.push((
            "tokenizer.ggml.token_type".into(),
            GgufValue::i32_array(types),
        ));
        merges = Some(load_merges(tj, dir)?);
    }
    let special = SpecialVocab::load(
        tokenizer_json.as_ref(),
        tokenizer_config.as_ref(),
        config,
        dir,
        // gguf-py range-checks special ids only on the SentencePiece path.
        if use_spm { n_tokens } else { usize::MAX },
    )?;
    if let Some(m) = merges
        && !m.is_empty()
    {
        kvs.push(("tokenizer.ggml.merges".into(), GgufValue::string_array(m)));
    }
    special.push_kvs(&mut kvs);
    if opts.gemma_special_ids {
        for (k, id) in [
            ("prefix", 67u32),
            ("suffix", 69),
            ("middle", 68),
            ("fsep", 70),
            ("eot", 107),
        ] {
            let key = format!("tokenizer.ggml.{k}_token_id");
            if !kvs.iter().any(|(kk, _)| *kk == key) {
                kvs.push((key, GgufValue::U32(id)));
            }
        }
    }
    if let Some(prefix) = tokenizer_config
        .as_ref()
        .and_then(|c| c.get("add_prefix_space"))
        .and_then(Value::as_bool)
        && !opts.no_space_prefix
    {
        kvs.push((
            "tokenizer.ggml.add_space_prefix".into(),
            GgufValue::Bool(prefix),
        ));
    }
    if opts.no_space_prefix {
        kvs.push((
            "tokenizer.ggml.add_space_prefix".into(),
            GgufValue::Bool(false),
        ));
    }
    Ok(TokenizerMetadata { kvs, n_tokens })
}

type SpmVocab = (Vec<String>, Vec<f32>, Vec<i32>);

/// The model's pieces as tokens, scores and token types, padded to `vocab_size` with
/// `[PADi]` entries (score -10000, UNUSED) as the converter pads.
fn spm_pieces(sp: &SpModel, vocab_size: usize) -> SpmVocab {
    let mut tokens: Vec<String> = (0..vocab_size).map(|i| format!("[PAD{i}]")).collect();
    let mut scores = vec![-10000.0f32; vocab_size];
    let mut types = vec![token_type::UNUSED; vocab_size];
    for (id, p) in sp.pieces.iter().enumerate().take(vocab_size) {
        tokens[id] = p.piece.clone();
        scores[id] = p.score;
        types[id] = match p.kind {
            2 => token_type::UNKNOWN,
            3 => token_type::CONTROL,
            5 => token_type::UNUSED,
            6 => token_type::BYTE,
            _ => token_type::NORMAL,
        };
    }
    (tokens, scores, types)
}

fn spm_vocab(
    sp: &SpModel,
    vocab_size: usize,
    dir: &Path,
    tokenizer_config: Option<&Value>,
) -> GgufResult<SpmVocab> {
    let (mut tokens, mut scores, mut types) = spm_pieces(sp, vocab_size);
    let added_path = dir.join("added_tokens.json");
    if let Some(added) = read_json(&added_path)? {
        let obj = added
            .as_object()
            .ok_or_else(|| tok_err(&added_path, "expected an object of token → id"))?;
        for (text, id) in obj {
            let id = id
                .as_u64()
                .ok_or_else(|| tok_err(&added_path, format!("id of `{text}` is not an integer")))?
                as usize;
            if id < vocab_size {
                tokens[id] = text.clone();
                scores[id] = -1000.0;
                types[id] = token_type::USER_DEFINED;
            }
        }
    }
    if let Some(decoder) = tokenizer_config
        .and_then(|c| c.get("added_tokens_decoder"))
        .and_then(Value::as_object)
    {
        for (id, data) in decoder {
            let id: usize = id.parse().map_err(|_| {
                tok_err(
                    &dir.join("tokenizer_config.json"),
                    format!("added_tokens_decoder key `{id}` is not an id"),
                )
            })?;
            let Some(content) = data.get("content").and_then(Value::as_str) else {
                continue;
            };
            if id >= vocab_size {
                continue;
            }
            let special = data
                .get("special")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if special || looks_special(content) {
                types[id] = token_type::CONTROL;
                tokens[id] = content.to_string();
            } else {
                types[id] = token_type::USER_DEFINED;
                tokens[id] = content.replace('\u{2581}', " ");
            }
            scores[id] = -1000.0;
        }
    }
    Ok((tokens, scores, types))
}

/// Phi-3's variant of the SentencePiece vocabulary: added tokens (added_tokens.json is not
/// read) from tokenizer_config.json's `added_tokens_decoder`, then tokenizer.json's
/// `added_tokens`, each USER_DEFINED (CONTROL if `special`) with score -1000.
fn phi3_vocab(
    sp: &SpModel,
    vocab_size: usize,
    tokenizer_config: Option<&Value>,
    tokenizer_json: Option<&Value>,
) -> SpmVocab {
    let (mut tokens, mut scores, mut types) = spm_pieces(sp, vocab_size);
    let mut overlay = |id: usize, content: &str, special: bool| {
        if id < vocab_size {
            tokens[id] = content.to_string();
            scores[id] = -1000.0;
            types[id] = if special {
                token_type::CONTROL
            } else {
                token_type::USER_DEFINED
            };
        }
    };
    if let Some(dec) = tokenizer_config
        .and_then(|c| c.get("added_tokens_decoder"))
        .and_then(Value::as_object)
    {
        for (id, d) in dec {
            if let (Ok(id), Some(c)) = (
                id.parse::<usize>(),
                d.get("content").and_then(Value::as_str),
            ) {
                overlay(
                    id,
                    c,
                    d.get("special").and_then(Value::as_bool).unwrap_or(false),
                );
            }
        }
    }
    for a in tokenizer_json
        .and_then(|t| t.get("added_tokens"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let (Some(id), Some(c)) = (
            a.get("id").and_then(Value::as_u64),
            a.get("content").and_then(Value::as_str),
        ) {
            overlay(
                id as usize,
                c,
                a.get("special").and_then(Value::as_bool).unwrap_or(false),
            );
        }
    }
    (tokens, scores, types)
}

fn bpe_vocab(
    tj: &Value,
    path: &Path,
    vocab_size: Option<usize>,
) -> GgufResult<(Vec<String>, Vec<i32>)> {
    let vocab = tj
        .get("model")
        .and_then(|m| m.get("vocab"))
        .and_then(Value::as_object)
        .ok_or_else(|| tok_err(path, "`model.vocab` is missing"))?;
    let mut by_id: std::collections::BTreeMap<usize, (String, Option<i32>)> = Default::default();
    for (tok, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| tok_err(path, format!("id of `{tok}` is not an integer")))?;
        by_id.insert(id as usize, (tok.clone(), None));
    }
    if let Some(added) = tj.get("added_tokens").and_then(Value::as_array) {
        for a in added {
            let (Some(id), Some(content)) = (
                a.get("id").and_then(Value::as_u64),
                a.get("content").and_then(Value::as_str),
            ) else {
                return Err(tok_err(path, "an added token lacks `id` or `content`"));
            };
            let special = a.get("special").and_then(Value::as_bool).unwrap_or(false);
            let (text, ty) = if special || looks_special(content) {
                (content.to_string(), token_type::CONTROL)
            } else {
                (content.replace('\u{2581}', " "), token_type::USER_DEFINED)
            };
            by_id.insert(id as usize, (text, Some(ty)));
        }
    }
    let max_id = by_id.keys().next_back().copied().unwrap_or(0);
    let n = vocab_size.unwrap_or(max_id + 1);
    if max_id >= n {
        return Err(tok_err(
            path,
            format!(
                "token id {max_id} does not fit a vocabulary of {n} (config.json vocab_size / embedding rows)"
            ),
        ));
    }
    let mut tokens = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    for i in 0..n {
        match by_id.remove(&i) {
            Some((t, ty)) => {
                tokens.push(t);
                types.push(ty.unwrap_or(token_type::NORMAL));
            }
            None => {
                tokens.push(format!("[PAD{i}]"));
                types.push(token_type::UNUSED);
            }
        }
    }
    Ok((tokens, types))
}

/// BPE merges in llama.cpp's `"left right"` form, from tokenizer.json or merges.txt.
fn load_merges(tj: &Value, dir: &Path) -> GgufResult<Vec<String>> {
    let path = dir.join("tokenizer.json");
    if let Some(list) = tj
        .get("model")
        .and_then(|m| m.get("merges"))
        .and_then(Value::as_array)
        .filter(|l| !l.is_empty())
    {
        let mut out = Vec::with_capacity(list.len());
        for m in list {
            match m {
                Value::String(s) => out.push(s.clone()),
                Value::Array(pair) if pair.len() == 2 => {
                    let part = |v: &Value| -> GgufResult<String> {
                        v.as_str()
                            .map(|s| s.replace(' ', "\u{0120}"))
                            .ok_or_else(|| tok_err(&path, "a merge pair holds a non-string"))
                    };
                    out.push(format!("{} {}", part(&pair[0])?, part(&pair[1])?));
                }
                _ => return Err(tok_err(&path, "unknown tokenizer merges format")),
            }
        }
        return Ok(out);
    }
    let mpath = dir.join("merges.txt");
    match std::fs::read_to_string(&mpath) {
        Ok(text) => {
            let mut lines = text.lines().peekable();
            if lines.peek().is_some_and(|l| l.trim().starts_with('#')) {
                lines.next();
            }
            Ok(lines
                .filter_map(|l| {
                    let parts: Vec<&str> = l.split_whitespace().collect();
                    (parts.len() == 2).then(|| format!("{} {}", parts[0], parts[1]))
                })
                .collect())
        }
        Err(_) => Ok(Vec::new()),
    }
}

/// gguf-py's `SpecialVocab`: special-token ids, add flags and the chat template.
#[derive(Debug, Default)]
struct SpecialVocab {
    ids: Vec<(&'static str, u32)>,
    add: Vec<(&'static str, bool)>,
    chat_template: Option<ChatTemplate>,
}

#[derive(Debug)]
enum ChatTemplate {
    One(String),
    Named(Vec<(String, String)>),
}

/// The chat template of `tokenizer_config.json` (`tc`), else of `chat_template.jinja` or
/// `chat_template.json` in `dir`.
fn chat_template(tc: &Value, dir: &Path) -> GgufResult<Option<ChatTemplate>> {
    let jinja = dir.join("chat_template.jinja");
    let json = dir.join("chat_template.json");
    let alt = if let Ok(t) = std::fs::read_to_string(&jinja) {
        Some(Value::String(t))
    } else {
        read_json(&json)?.and_then(|v| v.get("chat_template").cloned())
    };
    let tmpl = tc.get("chat_template").cloned().or(alt);
    Ok(match tmpl {
        Some(Value::String(s)) => Some(ChatTemplate::One(s)),
        Some(Value::Array(list)) => {
            let mut named = Vec::new();
            for t in list {
                if let (Some(n), Some(tt)) = (
                    t.get("name").and_then(Value::as_str),
                    t.get("template").and_then(Value::as_str),
                ) {
                    named.push((n.to_string(), tt.to_string()));
                }
            }
            Some(ChatTemplate::Named(named))
        }
        _ => None,
    })
}

/// The id of a `{"SpecialToken": {"id": …}}` piece of a TemplateProcessing template.
fn special_id(v: Option<&Value>) -> Option<String> {
    v?.get("SpecialToken")?
        .get("id")?
        .as_str()
        .map(String::from)
}

/// The id (`A` or `B`) of a `{"Sequence": {"id": …}}` piece of a TemplateProcessing template.
fn seq_id(v: Option<&Value>) -> Option<String> {
    v?.get("Sequence")?.get("id")?.as_str().map(String::from)
}

/// What the `single` template of a TemplateProcessing said: its first and last special
/// tokens, with the SEP and EOS tokens known so far.
struct TemplateEnds<'a> {
    first: &'a Option<String>,
    last: &'a Option<String>,
    sep: Option<&'a String>,
    eos: Option<&'a String>,
}

impl TemplateEnds<'_> {
    /// Whether the `pair` template puts a SEP (or EOS) between the two sequences, as
    /// llama.cpp's converter reads it; `None` when the template does not say.
    fn pair_adds_sep(&self, pair: &[Value]) -> Option<bool> {
        if pair.is_empty() {
            return None;
        }
        let (first, last) = (self.first, self.last);
        let start = usize::from(first.is_some() && special_id(pair.first()) == *first);
        let stop = if last.is_some() && special_id(pair.last()) == *last {
            pair.len() - 1
        } else {
            pair.len()
        };
        let mid: &[Value] = if start < stop {
            &pair[start..stop]
        } else {
            &[]
        };
        if mid.is_empty() {
            return None;
        }
        let a = seq_id(mid.first());
        let b = seq_id(mid.last());
        if !(a.as_deref() == Some("A") && b.as_deref() == Some("B") && mid.len() > 2) {
            return None;
        }
        let inner = &mid[1..mid.len() - 1];
        let mut add_sep = false;
        let is_sep_or_eos = |s: &String| Some(s) == self.sep || Some(s) == self.eos;
        if let Some(e) = special_id(inner.first())
            && is_sep_or_eos(&e)
            && last.is_none()
        {
            add_sep = true;
        }
        if inner.len() == 2
            && let Some(e) = special_id(inner.get(1))
            && is_sep_or_eos(&e)
        {
            add_sep = true;
        }
        Some(add_sep)
    }
}

const SPECIAL_TYPES: [&str; 7] = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"];

impl SpecialVocab {
    fn set_id(&mut self, typ: &'static str, id: Option<&Value>, n_vocab: usize) {
        let Some(id) = id.and_then(Value::as_u64) else {
            return;
        };
        if (id as usize) < n_vocab && !self.ids.iter().any(|(t, _)| *t == typ) {
            self.ids.push((typ, id as u32));
        }
    }

    fn set_add(&mut self, typ: &'static str, v: bool) {
        match self.add.iter_mut().find(|(t, _)| *t == typ) {
            Some(e) => e.1 = v,
            None => self.add.push((typ, v)),
        }
    }

    fn load(
        tj: Option<&Value>,
        tc: Option<&Value>,
        config: &Value,
        dir: &Path,
        n_vocab: usize,
    ) -> GgufResult<SpecialVocab> {
        let mut sv = SpecialVocab::default();
        let mut types: Vec<&'static str> = SPECIAL_TYPES.to_vec();
        let content = |v: Option<&Value>| -> Option<String> {
            match v? {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
                _ => None,
            }
        };
        let mut tc_owned = tc.cloned();
        let added: Vec<Value> = tj
            .and_then(|t| t.get("added_tokens"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(tj) = tj {
            let cfg = tc_owned.as_ref();
            let mut bos = content(cfg.and_then(|c| c.get("bos_token")));
            let cls = content(cfg.and_then(|c| c.get("cls_token")));
            let mut eos = content(cfg.and_then(|c| c.get("eos_token")));
            let sep = content(cfg.and_then(|c| c.get("sep_token")));
            if bos.is_none()
                && let (Some(c), Some(obj)) =
                    (&cls, tc_owned.as_mut().and_then(Value::as_object_mut))
            {
                obj.insert("bos_token".into(), Value::String(c.clone()));
                bos = Some(c.clone());
            }
            if eos.is_none()
                && let (Some(s), Some(obj)) =
                    (&sep, tc_owned.as_mut().and_then(Value::as_object_mut))
            {
                obj.insert("eos_token".into(), Value::String(s.clone()));
                eos = Some(s.clone());
            }
            if let Some(pp) = tj.get("post_processor").filter(|p| !p.is_null()) {
                let procs: Vec<&Value> = match pp.get("processors").and_then(Value::as_array) {
                    Some(list) => list.iter().collect(),
                    None => vec![pp],
                };
                for proc in procs {
                    let ty = proc.get("type").and_then(Value::as_str).unwrap_or("");
                    if ty == "RobertaProcessing" {
                        sv.set_add("bos", true);
                        sv.set_add("eos", true);
                        sv.set_add("sep", true);
                        continue;
                    }
                    if ty != "TemplateProcessing" {
                        continue;
                    }
                    let single: Vec<Value> = proc
                        .get("single")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    let pair: Vec<Value> = proc
                        .get("pair")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    let mut first = None;
                    let mut last = None;
                    if single.len() > 1 {
                        first = special_id(single.first());
                        if let Some(f) = &first {
                            if tc_owned.is_none() {
                                bos = Some(f.clone());
                            }
                            let is_bos = Some(f) == bos.as_ref() || Some(f) == cls.as_ref();
                            sv.set_add("bos", is_bos);
                        }
                        last = special_id(single.last());
                        if let Some(l) = &last {
                            if tc_owned.is_none() {
                                eos = Some(l.clone());
                            } else if Some(l) != eos.as_ref() {
                                // The template ends with another token: it becomes the EOS and
                                // the configured EOS is kept as EOT (or EOM).
                                let extra = if !types.contains(&"eot") {
                                    Some("eot")
                                } else if !types.contains(&"eom") {
                                    Some("eom")
                                } else {
                                    None
                                };
                                if let Some(obj) = tc_owned.as_mut().and_then(Value::as_object_mut)
                                {
                                    if let Some(extra) = extra {
                                        types.push(extra);
                                        let old =
                                            eos.clone().map(Value::String).unwrap_or(Value::Null);
                                        obj.insert(format!("{extra}_token"), old);
                                    }
                                    obj.insert("eos_token".into(), Value::String(l.clone()));
                                }
                                eos = Some(l.clone());
                            }
                            let is_eos = Some(l) == eos.as_ref();
                            sv.set_add("eos", is_eos);
                        }
                    }
                    let ends = TemplateEnds {
                        first: &first,
                        last: &last,
                        sep: sep.as_ref(),
                        eos: eos.as_ref(),
                    };
                    if let Some(add_sep) = ends.pair_adds_sep(&pair) {
                        sv.set_add("sep", add_sep);
                    }
                }
            }
        }
        if let Some(tc) = tc_owned.as_ref() {
            sv.chat_template = chat_template(tc, dir)?;
            for &typ in &types {
                if let Some(b) = tc.get(format!("add_{typ}_token")).and_then(Value::as_bool) {
                    sv.set_add(typ, b);
                }
                let Some(c) = content(tc.get(format!("{typ}_token"))) else {
                    continue;
                };
                let id = added
                    .iter()
                    .find(|a| a.get("content").and_then(Value::as_str) == Some(c.as_str()))
                    .and_then(|a| a.get("id"));
                sv.set_id(typ, id, n_vocab);
            }
        }
        for &typ in &types {
            let id = config.get(format!("{typ}_token_id")).or_else(|| {
                config
                    .get("text_config")
                    .and_then(|t| t.get(format!("{typ}_token_id")))
            });
            sv.set_id(typ, id, n_vocab);
        }
        Ok(sv)
    }

    fn push_kvs(&self, kvs: &mut Vec<(String, GgufValue)>) {
        for (typ, id) in &self.ids {
            let key = match *typ {
                "unk" => "unknown".to_string(),
                "pad" => "padding".to_string(),
                "sep" => "seperator".to_string(),
                t => t.to_string(),
            };
            kvs.push((
                format!("tokenizer.ggml.{key}_token_id"),
                GgufValue::U32(*id),
            ));
        }
        for (typ, v) in &self.add {
            kvs.push((
                format!("tokenizer.ggml.add_{typ}_token"),
                GgufValue::Bool(*v),
            ));
        }
        match &self.chat_template {
            Some(ChatTemplate::One(s)) => kvs.push((
                "tokenizer.chat_template".into(),
                GgufValue::String(s.clone()),
            )),
            Some(ChatTemplate::Named(list)) => {
                let mut names = Vec::new();
                for (name, t) in list {
                    let clean: String = name
                        .chars()
                        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                        .collect();
                    if name == "default" {
                        kvs.push((
                            "tokenizer.chat_template".into(),
                            GgufValue::String(t.clone()),
                        ));
                    } else {
                        names.push(clean.clone());
                        kvs.push((
                            format!("tokenizer.chat_template.{clean}"),
                            GgufValue::String(t.clone()),
                        ));
                    }
                }
                if !names.is_empty() {
                    kvs.push((
                        "tokenizer.chat_templates".into(),
                        GgufValue::string_array(names),
                    ));
                }
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7F) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    /// A ModelProto built by hand from the protobuf wire format.
    fn model_proto() -> Vec<u8> {
        let mut out = Vec::new();
        for (piece, score, kind) in [("<unk>", 0.0f32, 2u64), ("▁a", -1.5, 1), ("<0x0A>", 0.0, 6)]
        {
            let mut p = Vec::new();
            p.push(0x0A);
            varint(piece.len() as u64, &mut p);
            p.extend_from_slice(piece.as_bytes());
            p.push(0x15);
            p.extend_from_slice(&score.to_le_bytes());
            p.push(0x18);
            varint(kind, &mut p);
            out.push(0x0A);
            varint(p.len() as u64, &mut out);
            out.extend_from_slice(&p);
        }
        // trainer_spec { model_type: BPE (field 3), byte_fallback: true (field 35) }
        let t = [0x18, 0x02, 0x98, 0x02, 0x01];
        out.push(0x12);
        varint(t.len() as u64, &mut out);
        out.extend_from_slice(&t);
        // normalizer_spec { add_dummy_prefix: false (field 3) }
        let n = [0x18, 0x00];
        out.push(0x1A);
        varint(n.len() as u64, &mut out);
        out.extend_from_slice(&n);
        out
    }

    #[test]
    fn protobuf_model_parses() {
        let m = SpModel::parse(&model_proto()).unwrap();
        assert_eq!(m.pieces.len(), 3);
        assert_eq!(m.pieces[1].piece, "▁a");
        assert_eq!(m.pieces[1].score, -1.5);
        assert_eq!(m.pieces[0].kind, 2);
        assert_eq!(m.pieces[2].kind, 6);
        assert_eq!(m.model_type, Some(2));
        assert!(m.byte_fallback);
        assert!(!m.add_dummy_prefix);
        assert!(m.remove_extra_whitespaces);
    }

    #[test]
    fn protobuf_garbage_is_an_error_not_a_panic() {
        let good = model_proto();
        for cut in 0..good.len() {
            let _ = SpModel::parse(&good[..cut]);
        }
        assert!(SpModel::parse(&good[..good.len() - 1]).is_err());
        assert!(SpModel::parse(b"").is_err());
        assert!(SpModel::parse(&[0x0B]).is_err()); // wire type 3 (group)
        assert!(
            SpModel::parse(&[
                0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01
            ])
            .is_err()
        );
        let mut state = 7u64;
        for _ in 0..300 {
            let b: Vec<u8> = (0..64)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (state >> 56) as u8
                })
                .collect();
            let _ = SpModel::parse(&b);
        }
    }

    fn bpe_dir(tj: Value, tc: Option<Value>) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("tokenizer.json"), tj.to_string()).unwrap();
        if let Some(tc) = tc {
            std::fs::write(d.path().join("tokenizer_config.json"), tc.to_string()).unwrap();
        }
        d
    }

    fn get<'a>(md: &'a TokenizerMetadata, k: &str) -> Option<&'a GgufValue> {
        md.kvs.iter().find(|(kk, _)| kk == k).map(|(_, v)| v)
    }

    #[test]
    fn bpe_vocab_types_padding_and_merges() {
        let tj = json!({
            "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "a b": 2, "ab": 3},
                      "merges": [["a", "b"], ["a b", "c"]]},
            "added_tokens": [
                {"id": 4, "content": "<|im_end|>", "special": false},
                {"id": 5, "content": "▁hello", "special": false},
                {"id": 6, "content": "<eos>", "special": true}
            ],
            "post_processor": {"type": "RobertaProcessing", "sep": ["<eos>", 6], "cls": ["<eos>", 6]}
        });
        let tc = json!({"eos_token": {"content": "<eos>"}, "chat_template": [
            {"name": "default", "template": "D"}, {"name": "tool use", "template": "T"}]});
        let d = bpe_dir(tj, Some(tc));
        let md = tokenizer_metadata(
            d.path(),
            &json!({"vocab_size": 9, "eos_token_id": 1}),
            &TokenizerOptions {
                pre_override: Some("gpt-2".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(md.n_tokens, 9);
        let tokens = get(&md, "tokenizer.ggml.tokens")
            .unwrap()
            .as_array()
            .unwrap();
        let names: Vec<&str> = tokens.iter().map(|t| t.as_str().unwrap()).collect();
        assert_eq!(
            names,
            vec![
                "a",
                "b",
                "a b",
                "ab",
                "<|im_end|>",
                " hello",
                "<eos>",
                "[PAD7]",
                "[PAD8]"
            ]
        );
        let types: Vec<u64> = get(&md, "tokenizer.ggml.token_type")
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap())
            .collect();
        assert_eq!(types, vec![1, 1, 1, 1, 3, 4, 3, 5, 5]);
        let merges = get(&md, "tokenizer.ggml.merges")
            .unwrap()
            .as_array()
            .unwrap();
        assert_eq!(merges[0].as_str(), Some("a b"));
        assert_eq!(merges[1].as_str(), Some("a\u{120}b c"));
        // tokenizer_config's eos wins over config.json's; Roberta adds bos/eos/sep
        assert_eq!(
            get(&md, "tokenizer.ggml.eos_token_id"),
            Some(&GgufValue::U32(6))
        );
        assert_eq!(
            get(&md, "tokenizer.ggml.add_sep_token"),
            Some(&GgufValue::Bool(true))
        );
        assert_eq!(
            get(&md, "tokenizer.chat_template"),
            Some(&GgufValue::String("D".into()))
        );
        assert_eq!(
            get(&md, "tokenizer.chat_template.tool_use"),
            Some(&GgufValue::String("T".into()))
        );
        assert_eq!(
            get(&md, "tokenizer.chat_templates"),
            Some(&GgufValue::string_array(["tool_use"]))
        );
    }

    #[test]
    fn template_eos_becomes_eos_and_old_eos_eot() {
        // Llama-3-Instruct style: the post-processor appends a token other than the configured
        // EOS; gguf-py makes it the EOS and keeps the configured one as EOT.
        let tj = json!({
            "model": {"type": "BPE", "vocab": {"x": 0}, "merges": []},
            "added_tokens": [{"id": 1, "content": "<bos>", "special": true},
                             {"id": 2, "content": "<eot>", "special": true},
                             {"id": 3, "content": "<end>", "special": true}],
            "post_processor": {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<bos>"}}, {"Sequence": {"id": "A"}}, {"SpecialToken": {"id": "<end>"}}],
                "special_tokens": {}}
        });
        let tc = json!({"bos_token": "<bos>", "eos_token": "<eot>"});
        let d = bpe_dir(tj, Some(tc));
        let md = tokenizer_metadata(
            d.path(),
            &json!({}),
            &TokenizerOptions {
                pre_override: Some("llama-bpe".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            get(&md, "tokenizer.ggml.eos_token_id"),
            Some(&GgufValue::U32(3))
        );
        assert_eq!(
            get(&md, "tokenizer.ggml.eot_token_id"),
            Some(&GgufValue::U32(2))
        );
        assert_eq!(
            get(&md, "tokenizer.ggml.add_bos_token"),
            Some(&GgufValue::Bool(true))
        );
        assert_eq!(
            get(&md, "tokenizer.ggml.add_eos_token"),
            Some(&GgufValue::Bool(true))
        );
        assert!(get(&md, "tokenizer.ggml.merges").is_none());
    }

    #[test]
    fn unsupported_tokenizers_are_clear_errors() {
        let d = bpe_dir(json!({"model": {"type": "Unigram", "vocab": []}}), None);
        let e = tokenizer_metadata(d.path(), &json!({}), &TokenizerOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("Unigram"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = tokenizer_metadata(empty.path(), &json!({}), &TokenizerOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no tokenizer.model or tokenizer.json"), "{e}");
        let d = bpe_dir(json!({"model": {"type": "BPE", "vocab": {"a": 7}}}), None);
        let e = tokenizer_metadata(
            d.path(),
            &json!({"vocab_size": 4}),
            &TokenizerOptions {
                pre_override: Some("gpt-2".into()),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("does not fit"), "{e}");
    }
}
