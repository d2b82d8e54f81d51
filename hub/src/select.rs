//! Which files of a repository a merge needs: weights (safetensors, or `.bin` only when the
//! repository has no safetensors weights), their index, config.json, generation_config.json,
//! the tokenizer files and a LoRA adapter's files. Only files at the repository's root: never
//! `original/`, `onnx/` or other folders, nor GGUF, ONNX, TensorFlow or Flax weights.

/// Small files always taken when present.
pub const SMALL_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "adapter_config.json",
];

/// The safetensors index.
pub const ST_INDEX: &str = "model.safetensors.index.json";
/// The PyTorch index.
pub const BIN_INDEX: &str = "pytorch_model.bin.index.json";

/// The index file whose shard list decides the weights, if the repository has one
/// (safetensors preferred).
pub fn index_file(files: &[String]) -> Option<&'static str> {
    let has = |n: &str| files.iter().any(|f| f == n);
    if has(ST_INDEX) {
        Some(ST_INDEX)
    } else if has("model.safetensors") {
        None
    } else if has(BIN_INDEX) {
        Some(BIN_INDEX)
    } else {
        None
    }
}

/// The files to download from `files` (the repository's listing); `shards` are the files the
/// index returned by [`index_file`] lists (ignored when there is no index).
pub fn needed_files(files: &[String], shards: &[String]) -> Vec<String> {
    let has = |n: &str| files.iter().any(|f| f == n);
    let mut out: Vec<String> = SMALL_FILES
        .iter()
        .filter(|n| has(n))
        .map(|n| n.to_string())
        .collect();
    match index_file(files) {
        Some(index) => {
            out.push(index.to_string());
            for s in shards {
                // a shard must be a plain file at the root, listed by the repository
                if !s.contains('/') && has(s) && !out.contains(s) {
                    out.push(s.clone());
                }
            }
        }
        None => {
            if has("model.safetensors") {
                out.push("model.safetensors".into());
            } else if has("pytorch_model.bin") {
                out.push("pytorch_model.bin".into());
            }
        }
    }
    if has("adapter_model.safetensors") {
        out.push("adapter_model.safetensors".into());
    } else if has("adapter_model.bin") {
        out.push("adapter_model.bin".into());
    }
    out
}

/// The shard file names an index (`weight_map`) lists, sorted, each once.
pub fn index_shards(index: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.values()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn safetensors_preferred_and_folders_skipped() {
        let files = s(&[
            "config.json",
            "model.safetensors",
            "pytorch_model.bin",
            "original/consolidated.00.pth",
            "onnx/model.onnx",
            "model.gguf",
            "tokenizer.json",
            "README.md",
            "tf_model.h5",
        ]);
        assert_eq!(index_file(&files), None);
        assert_eq!(
            needed_files(&files, &[]),
            s(&["config.json", "tokenizer.json", "model.safetensors"])
        );
    }

    #[test]
    fn sharded_takes_only_the_indexed_shards() {
        let files = s(&[
            "config.json",
            "consolidated.safetensors",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            ST_INDEX,
            BIN_INDEX,
            "pytorch_model-00001-of-00002.bin",
        ]);
        assert_eq!(index_file(&files), Some(ST_INDEX));
        let index = serde_json::json!({"weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
            "c": "model-00001-of-00002.safetensors"}});
        let shards = index_shards(&index);
        assert_eq!(
            needed_files(&files, &shards),
            s(&[
                "config.json",
                ST_INDEX,
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ])
        );
    }

    #[test]
    fn bin_only_without_safetensors() {
        let files = s(&[
            "config.json",
            "pytorch_model.bin",
            "vocab.json",
            "merges.txt",
        ]);
        assert_eq!(
            needed_files(&files, &[]),
            s(&[
                "config.json",
                "vocab.json",
                "merges.txt",
                "pytorch_model.bin"
            ])
        );
        let files = s(&[BIN_INDEX, "pytorch_model-00001-of-00001.bin", "../evil.bin"]);
        assert_eq!(index_file(&files), Some(BIN_INDEX));
        assert_eq!(
            needed_files(
                &files,
                &s(&["pytorch_model-00001-of-00001.bin", "../evil.bin"])
            ),
            s(&[BIN_INDEX, "pytorch_model-00001-of-00001.bin"])
        );
    }
}
