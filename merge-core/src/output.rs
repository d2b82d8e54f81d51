//! The output folder: built under a hidden temporary name beside the target and renamed into
//! place only when complete, so a crash or a kill never leaves a folder that looks like a
//! finished model. Also writes the small files: config.json, the shard index, tokenizer files
//! copied from the donor (mergekit §6.5), the model card and `mergekit_config.yml`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::writer::WrittenFile;

/// A temporary output folder that becomes the final one on [`OutputDir::commit`] and is
/// removed if dropped before that.
#[derive(Debug)]
pub struct OutputDir {
    target: PathBuf,
    tmp: PathBuf,
    force: bool,
    committed: bool,
    swept: Vec<(PathBuf, u32)>,
}

fn canonical_or_absolute(p: &Path) -> PathBuf {
    p.canonicalize()
        .unwrap_or_else(|_| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()))
}

impl OutputDir {
    /// Checks that `target` may be written (refusing a non-empty folder unless `force`, and
    /// always refusing one that is, contains or lies inside an input) and creates the
    /// temporary folder beside it.
    pub fn prepare(target: &Path, force: bool, inputs: &[PathBuf]) -> Result<OutputDir> {
        let out_err = |reason: String| Error::Output {
            path: target.to_path_buf(),
            reason,
        };
        let abs = canonical_or_absolute(target);
        for i in inputs {
            let ia = canonical_or_absolute(i);
            if ia == abs || ia.starts_with(&abs) || abs.starts_with(&ia) {
                return Err(out_err(format!(
                    "it overlaps the input {}; inputs are never written",
                    i.display()
                )));
            }
        }
        if target.is_file() {
            return Err(out_err("it is a file, not a folder".into()));
        }
        if target.is_dir() {
            let non_empty = std::fs::read_dir(target)
                .map_err(|e| Error::io(target, e))?
                .next()
                .is_some();
            if non_empty && !force {
                return Err(out_err(
                    "the folder exists and is not empty; pass --force to replace it".into(),
                ));
            }
        }
        let parent = match abs.parent() {
            Some(p) => p.to_path_buf(),
            None => return Err(out_err("it has no parent folder".into())),
        };
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let base = abs
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        let swept = crate::partial::sweep(&parent, &base);
        let tmp = parent.join(format!(".{base}.smelt-partial-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        crate::partial::register(&tmp);
        Ok(OutputDir {
            target: abs,
            tmp,
            force,
            committed: false,
            swept,
        })
    }

    /// Notices for the partial outputs of interrupted runs removed while preparing.
    pub fn swept_notices(&self) -> Vec<String> {
        self.swept
            .iter()
            .map(|(p, pid)| crate::partial::swept_notice(p, *pid))
            .collect()
    }

    /// The temporary folder to write into.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// The final location.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Moves the finished folder into place (replacing an existing one when forced).
    pub fn commit(mut self) -> Result<PathBuf> {
        if let Ok(d) = std::fs::File::open(&self.tmp) {
            let _ = d.sync_all();
        }
        if self.target.exists() {
            let empty = std::fs::read_dir(&self.target)
                .map(|mut r| r.next().is_none())
                .unwrap_or(false);
            if !empty && !self.force {
                return Err(Error::Output {
                    path: self.target.clone(),
                    reason: "the folder appeared while merging; not replacing it".into(),
                });
            }
            let old = self.tmp.with_extension("old");
            std::fs::rename(&self.target, &old).map_err(|e| Error::io(&self.target, e))?;
            std::fs::rename(&self.tmp, &self.target).map_err(|e| Error::io(&self.target, e))?;
            crate::partial::unregister(&self.tmp);
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        } else {
            std::fs::rename(&self.tmp, &self.target).map_err(|e| Error::io(&self.target, e))?;
            crate::partial::unregister(&self.tmp);
        }
        if let Some(p) = self.target.parent()
            && let Ok(d) = std::fs::File::open(p)
        {
            let _ = d.sync_all();
        }
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
            crate::partial::unregister(&self.tmp);
        }
    }
}

/// Writes `text` to `dir/name`, returning the file record.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<WrittenFile> {
    let p = dir.join(name);
    std::fs::write(&p, bytes).map_err(|e| Error::io(&p, e))?;
    Ok(WrittenFile {
        name: name.to_string(),
        size: bytes.len() as u64,
        sha256: Some(crate::lock::sha256_hex(bytes)),
    })
}

/// The shard index (`model.safetensors.index.json`), written only for 2 or more shards.
pub fn index_json(plan: &Plan) -> Option<String> {
    if plan.shards.len() < 2 {
        return None;
    }
    let mut map = std::collections::BTreeMap::new();
    for s in &plan.shards {
        for &i in &s.tensors {
            map.insert(plan.tensors[i].name.clone(), s.file.clone());
        }
    }
    let v = serde_json::json!({
        "metadata": {"total_size": plan.output_bytes(), "smelt_version": env!("CARGO_PKG_VERSION")},
        "weight_map": map,
    });
    Some(serde_json::to_string_pretty(&v).expect("json") + "\n")
}

/// The tokenizer files copied from the donor when no tokenizer is built (mergekit §6.5).
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "added_tokens.json",
    "merges.txt",
    "chat_template.jinja",
    "generation_config.json",
    "chat_template.json",
    "video_preprocessor_config.json",
];

/// Writes the tokenizer built from the recipe's tokenizer options (mergekit §6.5: its files
/// replace the donor's, and `generation_config.json` is not copied).
pub fn write_tokenizer(plan: &Plan, dir: &Path) -> Result<Vec<WrittenFile>> {
    let mut out = Vec::new();
    for (name, bytes) in plan.tokenizer.iter().flat_map(|t| t.files.iter()) {
        out.push(write_file(dir, name, bytes)?);
    }
    Ok(out)
}

/// Copies the donor's tokenizer files into `dir`; returns what was copied and warnings.
/// With a `chat_template`, the template is written into the copies (`tokenizer_config.json`,
/// `chat_template.jinja`) and `generation_config.json` is left out, as mergekit's
/// re-serialised tokenizer does.
pub fn copy_tokenizer(plan: &Plan, dir: &Path) -> Result<(Vec<WrittenFile>, Vec<String>)> {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    let Some(src) = plan
        .donor
        .and_then(|d| plan.models[d].checkpoint.dir.clone())
    else {
        return Ok((out, warnings));
    };
    let has_tok = src.join("tokenizer.json").is_file() || src.join("tokenizer.model").is_file();
    if !src.join("tokenizer_config.json").is_file() || !has_tok {
        warnings.push(format!(
            "{} has no tokenizer_config.json with tokenizer.json or tokenizer.model; no tokenizer copied",
            src.display()
        ));
        return Ok((out, warnings));
    }
    for f in TOKENIZER_FILES {
        let p = src.join(f);
        if plan.chat_template.is_some() && *f == "generation_config.json" {
            continue;
        }
        if p.is_file() {
            let mut bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
            if let Some(t) = &plan.chat_template {
                bytes = crate::vocab::template_copied_file(f, bytes, t, &p)?;
            }
            out.push(write_file(dir, f, &bytes)?);
        }
    }
    Ok((out, warnings))
}

/// Whether a model reference looks like a hub id rather than a local path (model card rule).
fn is_hub_id(path: &str) -> bool {
    !path.starts_with(['/', '~', '.'])
        && path.matches('/').count() == 1
        && !Path::new(path).exists()
}

/// The README.md model card: front matter, method, models and the verbatim recipe.
pub fn model_card(plan: &Plan, recipe_text: &str, out_name: &str) -> String {
    let info = plan.method.info();
    let hub: Vec<String> = plan
        .models
        .iter()
        .flat_map(|m| {
            let mut v = vec![m.reference.path.clone()];
            if let Some((l, _)) = &m.reference.lora {
                v.push(l.clone());
            }
            v
        })
        .filter(|p| is_hub_id(p))
        .collect();
    let mut s = String::from("---\nbase_model:");
    if hub.is_empty() {
        s.push_str(" []\n");
    } else {
        s.push('\n');
        for h in &hub {
            s.push_str(&format!("- {h}\n"));
        }
    }
    s.push_str("library_name: transformers\ntags:\n- mergekit\n- merge\n- smelt\n---\n");
    let link = |r: &str| {
        if is_hub_id(r) {
            format!("[{r}](https://huggingface.co/{r})")
        } else {
            r.to_string()
        }
    };
    let method = match info.url {
        Some(u) => format!("[{}]({u})", info.pretty_name),
        None => info.pretty_name.to_string(),
    };
    s.push_str(&format!(
        "# {out_name}\n\nThis is a merge of pre-trained language models created with smelt, a \
         mergekit-compatible merging tool.\n\n## Merge Details\n### Merge Method\n\nThis model was merged using the {method} merge method"
    ));
    let base = plan.base.filter(|_| info.name != "slerp");
    if let Some(b) = base {
        s.push_str(&format!(
            " using {} as a base",
            link(&plan.models[b].reference.to_string())
        ));
    }
    s.push_str(".\n\n### Models Merged\n\nThe following models were included in the merge:\n");
    for (i, m) in plan.models.iter().enumerate() {
        if Some(i) == base {
            continue;
        }
        let r = &m.reference;
        let name = match &r.lora {
            Some((l, _)) => format!("{} + {}", link(&r.path), link(l)),
            None => link(&r.path),
        };
        s.push_str(&format!("* {name}\n"));
    }
    s.push_str(&format!(
        "\n### Configuration\n\nThe following YAML configuration was used to produce this model:\n\n```yaml\n{}\n```\n",
        recipe_text.trim_end()
    ));
    s
}
