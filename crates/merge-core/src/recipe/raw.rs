//! The YAML form of a recipe (serde, strict) and its conversion into [`Recipe`].

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value as Json;
use serde_saphyr::Spanned;

use super::params::{Conditional, Setting, Value};
use super::{ModelEntry, ModelRef, ParamMap, Pos, Recipe, Slice, SliceSource};
use crate::dtype::DType;
use crate::error::{Error, Result};

type RawParams = BTreeMap<String, Spanned<Json>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipe {
    merge_method: Option<Spanned<String>>,
    models: Option<Vec<RawModel>>,
    slices: Option<Vec<RawSlice>>,
    modules: Option<Spanned<Json>>,
    base_model: Option<Spanned<RawRef>>,
    parameters: Option<RawParams>,
    dtype: Option<Spanned<String>>,
    out_dtype: Option<Spanned<String>>,
    tokenizer_source: Option<Spanned<Json>>,
    tokenizer: Option<Spanned<Json>>,
    chat_template: Option<Spanned<String>>,
    // accepted and ignored by mergekit-yaml; meaningful to batches
    name: Option<Spanned<String>>,
    // obsolete mergekit keys: warned about and ignored
    embed_slerp: Option<Spanned<Json>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    model: Spanned<RawRef>,
    parameters: Option<RawParams>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlice {
    sources: Vec<RawSource>,
    base_model: Option<Spanned<RawRef>>,
    parameters: Option<RawParams>,
    residual_weight: Option<Spanned<Json>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    model: Spanned<RawRef>,
    layer_range: Option<Spanned<Vec<i64>>>,
    parameters: Option<RawParams>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawRef {
    Str(String),
    Dict(RawRefDict),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRefDict {
    model: RawPathRev,
    lora: Option<RawPathRev>,
    override_architecture: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawPathRev {
    Str(String),
    Dict {
        path: String,
        revision: Option<String>,
    },
}

fn pos<T>(s: &Spanned<T>) -> Pos {
    Pos {
        line: s.referenced.line(),
        column: s.referenced.column(),
    }
}

struct Ctx<'a> {
    path: &'a Path,
    warnings: Vec<String>,
}

impl Ctx<'_> {
    fn err(&self, p: Pos, msg: impl std::fmt::Display) -> Error {
        Error::Recipe {
            path: self.path.to_path_buf(),
            message: if p.line == 0 {
                msg.to_string()
            } else {
                format!("{p}: {msg}")
            },
        }
    }

    fn model_ref(&self, r: &Spanned<RawRef>) -> Result<ModelRef> {
        let p = pos(r);
        match &r.value {
            RawRef::Str(s) => ModelRef::parse(s).map_err(|m| self.err(p, m)),
            RawRef::Dict(d) => {
                let split = |x: &RawPathRev| match x {
                    RawPathRev::Str(s) => match s.split_once('@') {
                        Some((a, b)) => (a.to_string(), Some(b.to_string())),
                        None => (s.clone(), None),
                    },
                    RawPathRev::Dict { path, revision } => (path.clone(), revision.clone()),
                };
                let (path, revision) = split(&d.model);
                Ok(ModelRef {
                    path,
                    revision,
                    lora: d.lora.as_ref().map(split),
                    override_architecture: d.override_architecture.clone(),
                })
            }
        }
    }

    fn params(&self, raw: &Option<RawParams>) -> Result<ParamMap> {
        let mut out = ParamMap::new();
        for (k, v) in raw.iter().flatten() {
            let p = pos(v);
            if v.value.is_null() {
                continue;
            }
            let s = setting(&v.value).map_err(|m| self.err(p, format!("parameter `{k}`: {m}")))?;
            out.insert(k.clone(), (s, p));
        }
        Ok(out)
    }
}

fn number(v: &Json) -> std::result::Result<f64, String> {
    match v {
        Json::Number(n) => n.as_f64().ok_or_else(|| format!("{n} is not a number")),
        Json::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
        Json::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("expected a number, found the string {s:?}")),
        Json::Null => Err("expected a number, found null".into()),
        Json::Array(_) => Err("expected a number, found a list".into()),
        Json::Object(_) => Err("expected a number, found a mapping".into()),
    }
}

fn value(v: &Json) -> std::result::Result<Value, String> {
    match v {
        Json::Array(items) => {
            if items.is_empty() {
                return Err("a gradient needs at least one number".into());
            }
            Ok(Value::Gradient(
                items
                    .iter()
                    .map(number)
                    .collect::<std::result::Result<_, _>>()?,
            ))
        }
        other => Ok(Value::Scalar(number(other)?)),
    }
}

fn setting(v: &Json) -> std::result::Result<Setting, String> {
    match v {
        Json::Array(items) if items.iter().any(|i| i.is_object()) => {
            let mut entries = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let Json::Object(map) = item else {
                    return Err(format!(
                        "entry {i} of a conditional list must be a {{filter, value}} mapping"
                    ));
                };
                for key in map.keys() {
                    if key != "filter" && key != "value" {
                        return Err(format!(
                            "unknown key `{key}` in conditional entry {i}; allowed: filter, value"
                        ));
                    }
                }
                let filter = match map.get("filter") {
                    None | Some(Json::Null) => None,
                    Some(Json::String(s)) => Some(s.clone()),
                    Some(other) => {
                        return Err(format!(
                            "filter of entry {i} must be a string, found {other}"
                        ));
                    }
                };
                let val = map
                    .get("value")
                    .ok_or_else(|| format!("conditional entry {i} has no `value`"))?;
                entries.push(Conditional {
                    filter,
                    value: value(val).map_err(|m| format!("entry {i}: {m}"))?,
                });
            }
            Ok(Setting::Conditional(entries))
        }
        Json::Object(_) => Err(
            "a single {filter, value} mapping is not a valid setting; write it as a list: \
             `- filter: ...` / `  value: ...`"
                .into(),
        ),
        other => Ok(Setting::Value(value(other)?)),
    }
}

fn dtype(ctx: &Ctx, d: &Option<Spanned<String>>, key: &str) -> Result<Option<DType>> {
    match d {
        None => Ok(None),
        Some(s) => DType::from_recipe(&s.value).map(Some).ok_or_else(|| {
            ctx.err(
                pos(s),
                format!(
                    "`{key}: {}` is not a supported dtype; use one of bfloat16, float16, float32",
                    s.value
                ),
            )
        }),
    }
}

pub(super) fn parse(text: &str, path: &Path, dir: &Path) -> Result<Recipe> {
    let raw: RawRecipe = serde_saphyr::from_str(text).map_err(|e| Error::Recipe {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut ctx = Ctx {
        path,
        warnings: Vec::new(),
    };
    let Some(method) = &raw.merge_method else {
        return Err(ctx.err(Pos::default(), "missing required key `merge_method`"));
    };
    if let Some(m) = &raw.modules {
        return Err(ctx.err(
            pos(m),
            "`modules:` (multi-module architectures) is not supported yet; use `models:` or `slices:`",
        ));
    }
    if let Some(e) = &raw.embed_slerp {
        ctx.warnings.push(format!(
            "{}: `embed_slerp` is obsolete and ignored (as in current mergekit)",
            pos(e)
        ));
    }
    let mut models = Vec::new();
    for m in raw.models.iter().flatten() {
        models.push(ModelEntry {
            model: ctx.model_ref(&m.model)?,
            parameters: ctx.params(&m.parameters)?,
            pos: pos(&m.model),
        });
    }
    let mut slices = Vec::new();
    for s in raw.slices.iter().flatten() {
        if let Some(r) = &s.residual_weight {
            ctx.warnings.push(format!(
                "{}: `residual_weight` is ignored (as in mergekit)",
                pos(r)
            ));
        }
        let mut sources = Vec::new();
        for src in &s.sources {
            let layer_range = match &src.layer_range {
                None => None,
                Some(lr) => match lr.value.as_slice() {
                    [a, b] if *a < 0 || *b <= *a => {
                        return Err(ctx.err(
                            pos(lr),
                            format!(
                                "`layer_range` [{a}, {b}] holds no layers: it is [start, end) with 0 <= start < end"
                            ),
                        ));
                    }
                    [a, b] => Some((*a, *b)),
                    _ => {
                        return Err(ctx.err(pos(lr), "`layer_range` must be [start, end]"));
                    }
                },
            };
            sources.push(SliceSource {
                model: ctx.model_ref(&src.model)?,
                layer_range,
                parameters: ctx.params(&src.parameters)?,
                pos: pos(&src.model),
            });
        }
        let first_pos = sources.first().map(|s| s.pos).unwrap_or_default();
        if sources.is_empty() {
            return Err(ctx.err(Pos::default(), "a slice needs at least one source"));
        }
        slices.push(Slice {
            sources,
            base_model: s
                .base_model
                .as_ref()
                .map(|b| ctx.model_ref(b))
                .transpose()?,
            parameters: ctx.params(&s.parameters)?,
            pos: first_pos,
        });
    }
    match (models.is_empty(), slices.is_empty()) {
        (true, true) => {
            return Err(ctx.err(pos(method), "the recipe needs `models:` or `slices:`"));
        }
        (false, false) => {
            return Err(ctx.err(pos(method), "use either `models:` or `slices:`, not both"));
        }
        _ => {}
    }
    if let (Some(a), Some(b)) = (&raw.tokenizer_source, &raw.tokenizer) {
        let _ = a;
        return Err(ctx.err(
            pos(b),
            "`tokenizer_source` and `tokenizer` are mutually exclusive",
        ));
    }
    let recipe = Recipe {
        path: path.to_path_buf(),
        dir: dir.to_path_buf(),
        text: text.to_string(),
        merge_method: method.value.clone(),
        merge_method_pos: pos(method),
        models,
        slices,
        base_model: raw
            .base_model
            .as_ref()
            .map(|b| ctx.model_ref(b))
            .transpose()?,
        parameters: ctx.params(&raw.parameters)?,
        dtype: dtype(&ctx, &raw.dtype, "dtype")?,
        out_dtype: dtype(&ctx, &raw.out_dtype, "out_dtype")?,
        tokenizer_source: raw
            .tokenizer_source
            .as_ref()
            .map(|s| (s.value.clone(), pos(s))),
        tokenizer: raw.tokenizer.as_ref().map(|s| (s.value.clone(), pos(s))),
        chat_template: raw
            .chat_template
            .as_ref()
            .map(|s| (s.value.clone(), pos(s))),
        name: raw.name.as_ref().map(|s| s.value.clone()),
        warnings: ctx.warnings,
    };
    Ok(recipe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Recipe> {
        parse(text, Path::new("r.yml"), Path::new("."))
    }

    #[test]
    fn unknown_key_names_key_line_and_allowed_keys() {
        let e = p("merge_method: ties\nmodels:\n  - model: a\n    paramters:\n      w: 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("paramters") && e.contains("line 4") && e.contains("parameters"),
            "{e}"
        );
    }

    #[test]
    fn malformed_yaml_has_line_and_column() {
        let e = p("merge_method: [ties\nmodels: 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line"), "{e}");
    }

    #[test]
    fn settings_coerce_like_pydantic() {
        let r = p("merge_method: linear\nmodels:\n  - model: a\n    parameters:\n      weight: '0.5'\n\
                   parameters:\n  normalize: yes\n  t:\n    - filter: mlp\n      value: [0, 1]\n    - value: 0.5\n")
            .unwrap();
        assert_eq!(
            r.models[0].parameters["weight"].0,
            Setting::Value(Value::Scalar(0.5))
        );
        assert_eq!(
            r.parameters["normalize"].0,
            Setting::Value(Value::Scalar(1.0))
        );
        assert_eq!(r.parameters["t"].0.eval("x.mlp.y", 0.5), Some(0.5));
        assert_eq!(r.parameters["t"].0.eval("other", 0.0), Some(0.5));
    }

    #[test]
    fn bare_conditional_mapping_is_an_error() {
        let e = p("merge_method: slerp\nmodels:\n  - model: a\nparameters:\n  t: {filter: mlp, value: 1}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 5") && e.contains("as a list"), "{e}");
    }

    #[test]
    fn ignored_keys_warn() {
        let r = p("name: x\nmerge_method: passthrough\nslices:\n  - sources:\n      - model: a\n        layer_range: [0, 2]\n    residual_weight: 0.5\n")
            .unwrap();
        assert_eq!(r.name.as_deref(), Some("x"));
        assert!(r.warnings[0].contains("residual_weight"));
    }

    #[test]
    fn bad_dtype() {
        let e = p("merge_method: linear\nmodels:\n  - model: a\ndtype: bf16\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bf16") && e.contains("bfloat16"), "{e}");
    }

    #[test]
    fn dict_model_reference() {
        let r = p(
            "merge_method: linear\nmodels:\n  - model: {model: {path: a, revision: r1}, lora: b}\n",
        )
        .unwrap();
        assert_eq!(r.models[0].model.to_string(), "a@r1+b");
    }
}
