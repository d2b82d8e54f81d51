//! The recipe model: mergekit's YAML schema, parsed strictly by default.
//!
//! `keys` checks every key of the YAML against the schema (unknown and repeated keys, with
//! positions); `raw` mirrors the YAML with serde and turns it into a validated [`Recipe`]:
//! model references parsed, parameter settings typed ([`Setting`]), parameters checked against
//! the merge method, dtypes checked. Every problem of a file is collected ([`Problem`]) and
//! reported at once. What mergekit silently tolerates (unknown keys and parameters, repeated
//! keys, `tokenizer_source: model:PATH`) is an error unless [`ParseOptions::lenient`] is set,
//! which turns it into warnings and reads the recipe as mergekit does. No defaults are applied
//! here and no checkpoint is opened; [`params`] evaluates settings for a tensor (precedence,
//! gradients, filters).

mod keys;
pub mod params;
mod problem;
mod raw;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::dtype::DType;
use crate::error::{Error, Result};

pub use params::Setting;
pub use problem::{Problem, ProblemKind};

/// How a recipe is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParseOptions {
    /// Read the recipe as mergekit does: unknown keys and parameters are ignored, a repeated
    /// key keeps its last value, `tokenizer_source: model:PATH` means `PATH`; each gives a
    /// warning. Off (strict), each is an error.
    pub lenient: bool,
}

/// A position in the recipe text (1-based), for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// Line, 1-based (0 = unknown).
    pub line: u64,
    /// Column, 1-based.
    pub column: u64,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            Ok(())
        } else {
            write!(f, "line {} column {}", self.line, self.column)
        }
    }
}

/// A model reference: `PATH[@REVISION][+LORA[@REVISION]]`, or the dict form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelRef {
    /// Local path or hub id.
    pub path: String,
    /// Hub revision (`@rev`).
    pub revision: Option<String>,
    /// LoRA adapter applied on top (`+path[@rev]`).
    pub lora: Option<(String, Option<String>)>,
    /// Replaces `config.architectures` when resolving the architecture.
    pub override_architecture: Option<String>,
}

impl ModelRef {
    /// Parses the string form, as mergekit does: split on `+` (model, LoRA), then on `@`.
    pub fn parse(s: &str) -> std::result::Result<ModelRef, String> {
        let parts: Vec<&str> = s.split('+').collect();
        if parts.len() > 2 {
            return Err(format!(
                "can't parse model reference `{s}`: more than one `+`"
            ));
        }
        let split_rev = |p: &str| -> std::result::Result<(String, Option<String>), String> {
            let bits: Vec<&str> = p.split('@').collect();
            match bits.as_slice() {
                [path] if !path.is_empty() => Ok((path.to_string(), None)),
                [path, rev] if !path.is_empty() && !rev.is_empty() => {
                    Ok((path.to_string(), Some(rev.to_string())))
                }
                _ => Err(format!("can't parse model reference `{s}`")),
            }
        };
        let (path, revision) = split_rev(parts[0])?;
        let lora = match parts.get(1) {
            Some(l) => Some(split_rev(l)?),
            None => None,
        };
        Ok(ModelRef {
            path,
            revision,
            lora,
            override_architecture: None,
        })
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)?;
        if let Some(r) = &self.revision {
            write!(f, "@{r}")?;
        }
        if let Some((l, r)) = &self.lora {
            write!(f, "+{l}")?;
            if let Some(r) = r {
                write!(f, "@{r}")?;
            }
        }
        Ok(())
    }
}

/// A named parameter map at one level of the recipe.
pub type ParamMap = BTreeMap<String, (Setting, Pos)>;

/// One `models:` entry.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    /// The model.
    pub model: ModelRef,
    /// Its per-model parameters.
    pub parameters: ParamMap,
    /// Where it is in the recipe.
    pub pos: Pos,
}

/// One source of an output slice.
#[derive(Debug, Clone)]
pub struct SliceSource {
    /// The model.
    pub model: ModelRef,
    /// Half-open input layer range; `None` means all layers.
    pub layer_range: Option<(i64, i64)>,
    /// Per-model parameters for this slice.
    pub parameters: ParamMap,
    /// Where it is in the recipe.
    pub pos: Pos,
}

/// One output slice (`slices:` entry).
#[derive(Debug, Clone)]
pub struct Slice {
    /// The sources, merged layer by layer.
    pub sources: Vec<SliceSource>,
    /// Per-slice base model (overrides the global one).
    pub base_model: Option<ModelRef>,
    /// Slice-level parameters.
    pub parameters: ParamMap,
    /// Where it is in the recipe.
    pub pos: Pos,
}

/// A validated recipe.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// The recipe file (or `<string>`).
    pub path: PathBuf,
    /// Folder relative model paths are resolved against first.
    pub dir: PathBuf,
    /// The verbatim YAML text.
    pub text: String,
    /// `merge_method`.
    pub merge_method: String,
    /// Position of `merge_method`.
    pub merge_method_pos: Pos,
    /// `models:` entries (exclusive with `slices`).
    pub models: Vec<ModelEntry>,
    /// `slices:` (exclusive with `models`).
    pub slices: Vec<Slice>,
    /// Global base model.
    pub base_model: Option<ModelRef>,
    /// Global parameters.
    pub parameters: ParamMap,
    /// Math dtype.
    pub dtype: Option<DType>,
    /// Output dtype.
    pub out_dtype: Option<DType>,
    /// `tokenizer_source` as written (parsed, not yet supported).
    pub tokenizer_source: Option<(serde_json::Value, Pos)>,
    /// `tokenizer:` block as written (parsed, not yet supported).
    pub tokenizer: Option<(serde_json::Value, Pos)>,
    /// `chat_template` as written (parsed, not yet supported).
    pub chat_template: Option<(String, Pos)>,
    /// `name` (only meaningful in multi-document batches).
    pub name: Option<String>,
    /// Non-fatal findings (ignored keys, ...).
    pub warnings: Vec<String>,
}

impl Recipe {
    /// Reads and validates the recipe at `path`, strictly.
    pub fn load(path: &Path) -> Result<Recipe> {
        Recipe::load_with(path, &ParseOptions::default())
    }

    /// Reads and validates the recipe at `path` as `opts` say.
    pub fn load_with(path: &Path, opts: &ParseOptions) -> Result<Recipe> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let dir = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Recipe::parse_with(&text, path, &dir, opts)
    }

    /// Parses and validates recipe `text`, strictly; `path` is used in messages, `dir` to
    /// resolve relative model paths.
    pub fn parse(text: &str, path: &Path, dir: &Path) -> Result<Recipe> {
        Recipe::parse_with(text, path, dir, &ParseOptions::default())
    }

    /// Parses and validates recipe `text` as `opts` say. Every problem found is in the
    /// returned [`Error::RecipeProblems`].
    pub fn parse_with(text: &str, path: &Path, dir: &Path, opts: &ParseOptions) -> Result<Recipe> {
        raw::parse(text, path, dir, opts)
    }

    /// Every model the recipe references, in YAML order (models/slices, then base models),
    /// without duplicates.
    pub fn referenced_models(&self) -> Vec<ModelRef> {
        let mut out: Vec<ModelRef> = Vec::new();
        let mut push = |m: &ModelRef| {
            if !out.contains(m) {
                out.push(m.clone());
            }
        };
        for e in &self.models {
            push(&e.model);
        }
        for s in &self.slices {
            for src in &s.sources {
                push(&src.model);
            }
        }
        for s in &self.slices {
            if let Some(b) = &s.base_model {
                push(b);
            }
        }
        if let Some(b) = &self.base_model {
            push(b);
        }
        out
    }

    /// The model that donates config.json and tokenizer files: the base model, else the
    /// first model in YAML order (mergekit picks an arbitrary one; smelt documents this rule).
    pub fn donor(&self) -> Option<ModelRef> {
        self.base_model
            .clone()
            .or_else(|| self.referenced_models().into_iter().next())
    }

    /// One error listing every problem of `errors` (errors about this recipe, found by checks
    /// that run independently), each with its lines of the recipe.
    pub fn problems_error(&self, errors: Vec<Error>) -> Error {
        let problems: Vec<Problem> = errors.into_iter().flat_map(problem::from_error).collect();
        Error::RecipeProblems {
            path: self.path.clone(),
            report: problem::render(&self.path, &self.text, &problems),
            problems,
        }
    }

    /// Builds an error about this recipe at `pos`.
    pub fn error(&self, pos: Pos, msg: impl fmt::Display) -> Error {
        let message = if pos.line == 0 {
            msg.to_string()
        } else {
            format!("{pos}: {msg}")
        };
        Error::Recipe {
            path: self.path.clone(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ref_forms() {
        let r = ModelRef::parse("org/name@v1+lora/x@abc").unwrap();
        assert_eq!(r.path, "org/name");
        assert_eq!(r.revision.as_deref(), Some("v1"));
        assert_eq!(r.lora, Some(("lora/x".into(), Some("abc".into()))));
        assert_eq!(r.to_string(), "org/name@v1+lora/x@abc");
        assert!(ModelRef::parse("a+b+c").is_err());
        assert!(ModelRef::parse("a@@b").is_err());
        assert!(ModelRef::parse("a@b@c").is_err());
    }
}
