//! `tokenizer.json` as plain JSON (no `tokenizers` crate): the vocabulary of a model's
//! tokenizer, stripping tokens beyond a model's `vocab_size` (mergekit's stripped base), and
//! adding tokens with the id rules of the `tokenizers` library's added vocabulary, so the
//! output vocabulary (mergekit §4.2) can be built and written back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};

use crate::error::{Error, Result};

/// A model folder's tokenizer files.
#[derive(Debug, Clone)]
pub struct ModelTokenizer {
    /// The folder.
    pub dir: PathBuf,
    /// `tokenizer.json`.
    pub json: Json,
    /// `tokenizer_config.json`, if present.
    pub config: Option<Json>,
    /// `special_tokens_map.json`, if present.
    pub special: Option<Json>,
    /// Whether the folder keeps its chat template in `chat_template.jinja`.
    pub has_jinja: bool,
}

fn read_json(p: &Path) -> Result<Option<Json>> {
    if !p.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::bad_checkpoint(p, e.to_string()))
}

impl ModelTokenizer {
    /// Reads the tokenizer files of folder `dir` (`None` when it has no `tokenizer.json`).
    pub fn load(dir: &Path) -> Result<Option<ModelTokenizer>> {
        let Some(json) = read_json(&dir.join("tokenizer.json"))? else {
            return Ok(None);
        };
        // validate the parts we use now, so later steps can rely on them
        model_vocab(&json, &dir.join("tokenizer.json"))?;
        added_entries(&json, &dir.join("tokenizer.json"))?;
        Ok(Some(ModelTokenizer {
            dir: dir.to_path_buf(),
            json,
            config: read_json(&dir.join("tokenizer_config.json"))?,
            special: read_json(&dir.join("special_tokens_map.json"))?,
            has_jinja: dir.join("chat_template.jinja").is_file(),
        }))
    }

    /// The path of its `tokenizer.json` (for messages).
    pub fn path(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }
}

/// The model's own vocabulary (`model.vocab`): an object token → id (BPE, WordPiece,
/// WordLevel) or a list of `[token, score]` whose index is the id (Unigram).
pub fn model_vocab(json: &Json, path: &Path) -> Result<Vec<(String, usize)>> {
    let bad = |m: &str| Error::bad_checkpoint(path, m.to_string());
    match json.get("model").and_then(|m| m.get("vocab")) {
        Some(Json::Object(map)) => map
            .iter()
            .map(|(k, v)| {
                v.as_u64()
                    .map(|i| (k.clone(), i as usize))
                    .ok_or_else(|| bad(&format!("model.vocab entry `{k}` is not an id")))
            })
            .collect(),
        Some(Json::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, e)| {
                e.get(0)
                    .and_then(|t| t.as_str())
                    .map(|t| (t.to_string(), i))
                    .ok_or_else(|| bad(&format!("model.vocab entry {i} is not [token, score]")))
            })
            .collect(),
        _ => Err(bad("no model.vocab")),
    }
}

/// One `added_tokens` entry: `(id, content, the whole entry)`.
pub type AddedEntry = (usize, String, Map<String, Json>);

/// The `added_tokens` entries.
pub fn added_entries(json: &Json, path: &Path) -> Result<Vec<AddedEntry>> {
    let Some(list) = json.get("added_tokens") else {
        return Ok(Vec::new());
    };
    let Json::Array(list) = list else {
        return Err(Error::bad_checkpoint(path, "added_tokens is not a list"));
    };
    list.iter()
        .enumerate()
        .map(|(i, e)| {
            let obj = e.as_object();
            match (
                obj.and_then(|o| o.get("id")).and_then(|v| v.as_u64()),
                obj.and_then(|o| o.get("content")).and_then(|v| v.as_str()),
            ) {
                (Some(id), Some(c)) => {
                    Ok((id as usize, c.to_string(), obj.cloned().unwrap_or_default()))
                }
                _ => Err(Error::bad_checkpoint(
                    path,
                    format!("added_tokens entry {i} lacks an id or content"),
                )),
            }
        })
        .collect()
}

/// The full vocabulary (what transformers' `get_vocab()` returns): the model's vocabulary
/// with the added tokens over it.
pub fn full_vocab(json: &Json, path: &Path) -> Result<HashMap<String, usize>> {
    let mut v: HashMap<String, usize> = model_vocab(json, path)?.into_iter().collect();
    for (id, c, _) in added_entries(json, path)? {
        v.insert(c, id);
    }
    Ok(v)
}

/// Removes every token whose id is ≥ `vocab_size` (mergekit's `get_stripped_tokenizer`):
/// added tokens at such ids, model vocabulary entries of those tokens and the merges that
/// mention them or produce them. Only BPE tokenizers can be stripped. Returns the removed tokens.
pub fn strip(json: &mut Json, vocab_size: usize, path: &Path) -> Result<Vec<String>> {
    let full = full_vocab(json, path)?;
    let mut unused: Vec<(usize, String)> = full
        .into_iter()
        .filter(|(_, id)| *id >= vocab_size)
        .map(|(t, id)| (id, t))
        .collect();
    if unused.is_empty() {
        return Ok(Vec::new());
    }
    unused.sort();
    let kind = json
        .get("model")
        .and_then(|m| m.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("?")
        .to_string();
    if kind != "BPE" {
        return Err(Error::bad_checkpoint(
            path,
            format!(
                "{} token(s) sit at ids ≥ the model's vocab_size {vocab_size} and only BPE tokenizers can be stripped of them (this one is {kind})",
                unused.len()
            ),
        ));
    }
    let gone: std::collections::HashSet<&str> = unused.iter().map(|(_, t)| t.as_str()).collect();
    if let Some(Json::Array(list)) = json.get_mut("added_tokens") {
        list.retain(|e| {
            e.get("id")
                .and_then(|v| v.as_u64())
                .is_some_and(|id| (id as usize) < vocab_size)
        });
    }
    let model = json
        .get_mut("model")
        .and_then(|m| m.as_object_mut())
        .expect("validated");
    if let Some(Json::Object(vocab)) = model.get_mut("vocab") {
        vocab.retain(|k, _| !gone.contains(k.as_str()));
    }
    if let Some(Json::Array(merges)) = model.get_mut("merges") {
        let mut bad = None;
        merges.retain(|m| {
            let parts: Vec<&str> = match m {
                Json::String(s) => s.split(' ').collect(),
                Json::Array(a) => a.iter().filter_map(|x| x.as_str()).collect(),
                other => {
                    bad = Some(other.to_string());
                    return true;
                }
            };
            // the merge's parts (as mergekit) and its result (else the BPE model is invalid)
            !parts.iter().any(|p| gone.contains(p)) && !gone.contains(parts.concat().as_str())
        });
        if let Some(b) = bad {
            return Err(Error::bad_checkpoint(path, format!("unexpected merge {b}")));
        }
    }
    Ok(unused.into_iter().map(|(_, t)| t).collect())
}

/// A tokenizer being extended with added tokens (the `tokenizers` library's rules: a token
/// already added is left alone; one in the model's vocabulary is marked added under its id;
/// a new one gets the next id after the model vocabulary and the added tokens).
#[derive(Debug)]
pub struct Builder {
    json: Json,
    model: HashMap<String, usize>,
    model_len: usize,
    added: Vec<(usize, Map<String, Json>)>,
    added_ids: HashMap<String, usize>,
}

/// The `added_tokens` entry of a plain string token (`add_tokens("tok")`: not special,
/// normalized).
pub fn plain_token(content: &str) -> Map<String, Json> {
    let mut m = Map::new();
    m.insert("content".into(), content.into());
    m.insert("single_word".into(), false.into());
    m.insert("lstrip".into(), false.into());
    m.insert("rstrip".into(), false.into());
    m.insert("normalized".into(), true.into());
    m.insert("special".into(), false.into());
    m
}

impl Builder {
    /// Starts from `json` (already validated by [`ModelTokenizer::load`]).
    pub fn new(json: Json, path: &Path) -> Result<Builder> {
        let mv = model_vocab(&json, path)?;
        let model_len = mv.len();
        let added: Vec<(usize, Map<String, Json>)> = added_entries(&json, path)?
            .into_iter()
            .map(|(id, _, e)| (id, e))
            .collect();
        let added_ids = added
            .iter()
            .map(|(id, e)| (e["content"].as_str().unwrap_or_default().to_string(), *id))
            .collect();
        Ok(Builder {
            json,
            model: mv.into_iter().collect(),
            model_len,
            added,
            added_ids,
        })
    }

    /// Whether `token` is in the vocabulary (model or added).
    pub fn contains(&self, token: &str) -> bool {
        self.added_ids.contains_key(token) || self.model.contains_key(token)
    }

    /// Adds a token given as an `added_tokens` entry (its `id` is ignored).
    pub fn add(&mut self, mut entry: Map<String, Json>) {
        let content = entry
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_string();
        if content.is_empty() || self.added_ids.contains_key(&content) {
            return;
        }
        let id = match self.model.get(&content) {
            Some(&id) => id,
            None => match self.added.iter().map(|(id, _)| *id).max() {
                Some(m) if m >= self.model_len || self.model_len == 0 => m + 1,
                _ => self.model_len,
            },
        };
        entry.remove("id");
        let mut e = Map::new();
        e.insert("id".into(), id.into());
        e.extend(entry);
        self.added_ids.insert(content, id);
        self.added.push((id, e));
    }

    /// The full vocabulary, token → id.
    pub fn vocab(&self) -> HashMap<String, usize> {
        let mut v = self.model.clone();
        v.extend(self.added_ids.iter().map(|(k, id)| (k.clone(), *id)));
        v
    }

    /// The added tokens as `(id, entry)`, by id.
    pub fn added(&self) -> Vec<(usize, Map<String, Json>)> {
        let mut a = self.added.clone();
        a.sort_by_key(|(id, _)| *id);
        a
    }

    /// The resulting `tokenizer.json` (added tokens sorted by id, as `tokenizers` writes them).
    pub fn finish(mut self) -> Json {
        let added: Vec<Json> = self
            .added()
            .into_iter()
            .map(|(_, e)| Json::Object(e))
            .collect();
        if let Some(o) = self.json.as_object_mut() {
            o.insert("added_tokens".into(), Json::Array(added));
        }
        self.json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(vocab: &[&str], added: &[(usize, &str, bool)], merges: &[&str]) -> Json {
        let v: Map<String, Json> = vocab
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), Json::from(i)))
            .collect();
        let a: Vec<Json> = added
            .iter()
            .map(|(id, c, special)| {
                let mut e = plain_token(c);
                e.insert("special".into(), (*special).into());
                let mut o = Map::new();
                o.insert("id".into(), (*id).into());
                o.extend(e);
                Json::Object(o)
            })
            .collect();
        serde_json::json!({"version": "1.0", "added_tokens": a,
            "model": {"type": "BPE", "vocab": v, "merges": merges}})
    }

    #[test]
    fn strip_removes_ids_beyond_vocab_size_and_their_merges() {
        let p = Path::new("t.json");
        let mut j = tok(
            &["a", "b", "ab", "c", "abc"],
            &[(0, "a", true), (5, "<pad>", true)],
            &["a b", "ab c"],
        );
        let removed = strip(&mut j, 4, p).unwrap();
        assert_eq!(removed, ["abc", "<pad>"]);
        let v = full_vocab(&j, p).unwrap();
        assert_eq!(v.len(), 4);
        assert!(!v.contains_key("abc") && !v.contains_key("<pad>"));
        assert_eq!(j["model"]["merges"], serde_json::json!(["a b"]));
        // nothing beyond: unchanged
        let mut k = tok(&["a", "b"], &[], &[]);
        assert!(strip(&mut k, 2, p).unwrap().is_empty());
        // only BPE can be stripped
        let mut u =
            serde_json::json!({"model": {"type": "Unigram", "vocab": [["a", 0.0], ["b", 0.0]]}});
        assert!(
            strip(&mut u, 1, p)
                .unwrap_err()
                .to_string()
                .contains("Unigram")
        );
    }

    #[test]
    fn added_token_ids_follow_the_tokenizers_rules() {
        let p = Path::new("t.json");
        let j = tok(&["a", "b", "c"], &[(0, "a", true)], &[]);
        let mut b = Builder::new(j, p).unwrap();
        b.add(plain_token("x")); // new: after the model vocabulary
        b.add(plain_token("b")); // in the model vocabulary: keeps its id
        b.add(plain_token("a")); // already added: unchanged
        b.add(plain_token("y"));
        b.add(plain_token(""));
        let v = b.vocab();
        assert_eq!((v["x"], v["b"], v["a"], v["y"]), (3, 1, 0, 4));
        let out = b.finish();
        let ids: Vec<u64> = out["added_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, [0, 1, 3, 4]);
        assert_eq!(
            out["added_tokens"][0]["special"], true,
            "existing entry kept"
        );
        assert_eq!(out["added_tokens"][2]["normalized"], true);
        assert_eq!(out["added_tokens"][2]["special"], false);
        // an added token already beyond the model vocabulary pushes new ids after it
        let j = tok(&["a", "b"], &[(7, "<s>", true)], &[]);
        let mut b = Builder::new(j, p).unwrap();
        b.add(plain_token("z"));
        assert_eq!(b.vocab()["z"], 8);
    }
}
