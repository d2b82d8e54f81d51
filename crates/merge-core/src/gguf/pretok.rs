//! Recognising `tokenizer.ggml.pre` for byte-level BPE tokenizers the way llama.cpp's converter
//! does: it tokenizes a fixed check text with the HF tokenizer, hashes the printed id list
//! with SHA-256 and looks the digest up in a table of known tokenizers (spec §5.3).

use serde_json::Value;

use super::error::{GgufError, GgufResult};

/// Recognises the pre-tokenizer of `tokenizer_json` (whose tokens, in id order, are
/// `tokens`), or explains why it cannot.
pub fn recognise(_tokenizer_json: &Value, _tokens: &[String]) -> GgufResult<String> {
    Err(GgufError::UnknownPreTokenizer {
        reason: "smelt does not yet tokenize the converter's check text".into(),
    })
}
