//! The YAML form of a recipe (serde) and its conversion into [`Recipe`], collecting every
//! problem on the way. Unknown keys are not serde's business here: the key check (`keys`)
//! reports them with positions, and serde ignores them and keeps the last of repeated keys.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value as Json;
use serde_saphyr::{DuplicateKeyPolicy, Spanned};

use super::keys::{TOKEN, TOKENIZER, token_source_keys};
use super::params::setting;
use super::problem::{Problem, ProblemKind, render};
use super::{ModelEntry, ModelRef, ParamMap, ParseOptions, Pos, Recipe, Slice, SliceSource};
use crate::dtype::DType;
use crate::error::{Error, Result};

type RawParams = BTreeMap<String, Spanned<Json>>;

#[derive(Debug, Deserialize)]
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
struct RawModel {
    model: Spanned<RawRef>,
    parameters: Option<RawParams>,
}

#[derive(Debug, Deserialize)]
struct RawSlice {
    sources: Vec<RawSource>,
    base_model: Option<Spanned<RawRef>>,
    parameters: Option<RawParams>,
    residual_weight: Option<Spanned<Json>>,
}

#[derive(Debug, Deserialize)]
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

/// The state of one conversion: the problems and warnings found so far.
struct Ctx {
    /// The parameters of the recipe's merge method, when the method is known.
    params: Option<Vec<&'static str>>,
    problems: Vec<Problem>,
    warnings: Vec<String>,
}

impl Ctx {
    fn bad(&mut self, pos: Pos, msg: impl std::fmt::Display) {
        self.problems.push(Problem {
            pos,
            kind: ProblemKind::Invalid(msg.to_string()),
        });
    }

    fn model_ref(&mut self, r: &Spanned<RawRef>) -> Option<ModelRef> {
        match &r.value {
            RawRef::Str(s) => match ModelRef::parse(s) {
                Ok(m) => Some(m),
                Err(m) => {
                    self.bad(pos(r), m);
                    None
                }
            },
            RawRef::Dict(d) => {
                let split = |x: &RawPathRev| match x {
                    RawPathRev::Str(s) => match s.split_once('@') {
                        Some((a, b)) => (a.to_string(), Some(b.to_string())),
                        None => (s.clone(), None),
                    },
                    RawPathRev::Dict { path, revision } => (path.clone(), revision.clone()),
                };
                let (path, revision) = split(&d.model);
                Some(ModelRef {
                    path,
                    revision,
                    lora: d.lora.as_ref().map(split),
                    override_architecture: d.override_architecture.clone(),
                })
            }
        }
    }

    /// The settings of a parameter map, without the parameters the merge method does not
    /// read (the key check reported them; mergekit ignores them).
    fn params(&mut self, raw: &Option<RawParams>) -> ParamMap {
        let mut out = ParamMap::new();
        for (k, v) in raw.iter().flatten() {
            let p = pos(v);
            if self
                .params
                .as_ref()
                .is_some_and(|known| !known.contains(&k.as_str()))
            {
                continue;
            }
            if v.value.is_null() {
                continue;
            }
            match setting(&v.value) {
                Ok(s) => {
                    out.insert(k.clone(), (s, p));
                }
                Err(m) => self.bad(p, format!("parameter `{k}`: {m}")),
            }
        }
        out
    }

    fn dtype(&mut self, d: &Option<Spanned<String>>, key: &str) -> Option<DType> {
        let s = d.as_ref()?;
        let t = DType::from_recipe(&s.value);
        if t.is_none() {
            self.bad(
                pos(s),
                format!(
                    "`{key}: {}` is not a supported dtype; use one of bfloat16, float16, float32",
                    s.value
                ),
            );
        }
        t
    }

    fn layer_range(&mut self, lr: &Option<Spanned<Vec<i64>>>) -> Option<(i64, i64)> {
        let lr = lr.as_ref()?;
        match lr.value.as_slice() {
            [a, b] if *a < 0 || *b <= *a => self.bad(
                pos(lr),
                format!(
                    "`layer_range` [{a}, {b}] holds no layers: it is [start, end) with 0 <= start < end"
                ),
            ),
            [a, b] => return Some((*a, *b)),
            _ => self.bad(pos(lr), "`layer_range` must be [start, end]"),
        }
        None
    }

    fn slice(&mut self, s: &RawSlice) -> Option<Slice> {
        if let Some(r) = &s.residual_weight {
            self.warnings.push(format!(
                "{}: `residual_weight` is ignored (as in mergekit)",
                pos(r)
            ));
        }
        let mut sources = Vec::new();
        for src in &s.sources {
            let layer_range = self.layer_range(&src.layer_range);
            let parameters = self.params(&src.parameters);
            if let Some(model) = self.model_ref(&src.model) {
                sources.push(SliceSource {
                    model,
                    layer_range,
                    parameters,
                    pos: pos(&src.model),
                });
            }
        }
        if s.sources.is_empty() {
            self.bad(Pos::default(), "a slice needs at least one source");
        }
        let base_model = s.base_model.as_ref().and_then(|b| self.model_ref(b));
        let first_pos = sources.first().map(|s| s.pos).unwrap_or_default();
        Some(Slice {
            sources,
            base_model,
            parameters: self.params(&s.parameters),
            pos: first_pos,
        })
    }

    /// `tokenizer_source`, with `model:PATH` (mergekit's old syntax) read as `PATH`.
    fn tokenizer_source(&mut self, s: &Spanned<Json>) -> (Json, Pos) {
        if let Json::String(v) = &s.value
            && let Some(path) = v.strip_prefix("model:")
        {
            self.problems.push(Problem {
                pos: pos(s),
                kind: ProblemKind::OldTokenizerSyntax {
                    path: path.to_string(),
                },
            });
            return (Json::String(path.to_string()), pos(s));
        }
        (s.value.clone(), pos(s))
    }
}

/// Drops the keys of `v` (a mapping) that are not in `allowed`: the key check has reported
/// them.
fn prune(v: &mut Json, allowed: &[&str]) {
    if let Json::Object(map) = v {
        map.retain(|k, _| allowed.contains(&k.as_str()));
    }
}

/// The `tokenizer:` block without the keys the key check reported.
fn prune_tokenizer(mut v: Json) -> Json {
    prune(&mut v, TOKENIZER);
    if let Json::Object(map) = &mut v
        && let Some(Json::Object(tokens)) = map.get_mut("tokens")
    {
        for t in tokens.values_mut() {
            prune(t, TOKEN);
            if let Json::Object(t) = t
                && let Some(src) = t.get_mut("source")
                && let Some(allowed) = token_source_keys(src.get("kind").and_then(Json::as_str))
            {
                prune(src, allowed);
            }
        }
    }
    v
}

/// The problem a serde-saphyr error is: position and message, without its own snippet.
fn yaml_problem(e: &serde_saphyr::Error) -> Problem {
    let pos = e
        .location()
        .map(|l| Pos {
            line: l.line(),
            column: l.column(),
        })
        .unwrap_or_default();
    let mut msg = e.without_snippet().to_string();
    // the position is ours to print
    if let Some(rest) = msg.strip_prefix("error: ") {
        msg = rest.to_string();
    }
    let prefix = format!("line {} column {}: ", pos.line, pos.column);
    if let Some(rest) = msg.strip_prefix(&prefix) {
        msg = rest.to_string();
    }
    Problem {
        pos,
        kind: ProblemKind::Yaml(msg.trim_end().to_string()),
    }
}

pub(super) fn parse(text: &str, path: &Path, dir: &Path, opts: &ParseOptions) -> Result<Recipe> {
    let options = serde_saphyr::options!(duplicate_keys: DuplicateKeyPolicy::LastWins);
    let mut ctx = Ctx {
        params: None,
        problems: super::keys::check(text),
        warnings: Vec::new(),
    };
    let recipe = match serde_saphyr::from_str_with_options::<RawRecipe>(text, options) {
        Ok(raw) => convert(&mut ctx, &raw, text, path, dir),
        Err(e) => {
            ctx.problems.push(yaml_problem(&e));
            None
        }
    };
    let Ctx {
        mut problems,
        warnings,
        ..
    } = ctx;
    problems.sort_by_key(|p| (p.pos.line, p.pos.column));
    let mut lenient_warnings = Vec::new();
    if opts.lenient {
        problems.retain(|p| {
            let ok = p.kind.lenient_ok();
            if ok {
                lenient_warnings.push(p.warning());
            }
            !ok
        });
    }
    match recipe {
        Some(mut r) if problems.is_empty() => {
            lenient_warnings.extend(warnings);
            r.warnings = lenient_warnings;
            Ok(r)
        }
        _ => Err(Error::RecipeProblems {
            path: path.to_path_buf(),
            report: render(path, text, &problems),
            problems,
        }),
    }
}

/// The recipe `raw` describes; problems go to `ctx` (`None` when it cannot be built).
fn convert(ctx: &mut Ctx, raw: &RawRecipe, text: &str, path: &Path, dir: &Path) -> Option<Recipe> {
    let method = raw.merge_method.as_ref();
    if let Some(m) = method {
        ctx.params = crate::methods::lookup(&m.value)
            .map(|m| m.info().params.iter().map(|p| p.name).collect());
    } else {
        ctx.bad(Pos::default(), "missing required key `merge_method`");
    }
    let method_pos = method.map(pos).unwrap_or_default();
    if let Some(m) = &raw.modules {
        ctx.bad(
            pos(m),
            "`modules:` (multi-module architectures) is not supported yet; use `models:` or `slices:`",
        );
    }
    if let Some(e) = &raw.embed_slerp {
        ctx.warnings.push(format!(
            "{}: `embed_slerp` is obsolete and ignored (as in current mergekit)",
            pos(e)
        ));
    }
    let mut models = Vec::new();
    for m in raw.models.iter().flatten() {
        let parameters = ctx.params(&m.parameters);
        if let Some(model) = ctx.model_ref(&m.model) {
            models.push(ModelEntry {
                model,
                parameters,
                pos: pos(&m.model),
            });
        }
    }
    let slices: Vec<Slice> = raw
        .slices
        .iter()
        .flatten()
        .filter_map(|s| ctx.slice(s))
        .collect();
    match (
        raw.models.iter().flatten().count(),
        raw.slices.iter().flatten().count(),
    ) {
        (0, 0) => ctx.bad(method_pos, "the recipe needs `models:` or `slices:`"),
        (a, b) if a > 0 && b > 0 => {
            ctx.bad(method_pos, "use either `models:` or `slices:`, not both")
        }
        _ => {}
    }
    if let (Some(_), Some(b)) = (&raw.tokenizer_source, &raw.tokenizer) {
        ctx.bad(
            pos(b),
            "`tokenizer_source` and `tokenizer` are mutually exclusive",
        );
    }
    let base_model = raw.base_model.as_ref().and_then(|b| ctx.model_ref(b));
    let parameters = ctx.params(&raw.parameters);
    let (dtype, out_dtype) = (
        ctx.dtype(&raw.dtype, "dtype"),
        ctx.dtype(&raw.out_dtype, "out_dtype"),
    );
    let tokenizer_source = raw
        .tokenizer_source
        .as_ref()
        .map(|s| ctx.tokenizer_source(s));
    Some(Recipe {
        path: path.to_path_buf(),
        dir: dir.to_path_buf(),
        text: text.to_string(),
        merge_method: method?.value.clone(),
        merge_method_pos: method_pos,
        models,
        slices,
        base_model,
        parameters,
        dtype,
        out_dtype,
        tokenizer_source,
        tokenizer: raw
            .tokenizer
            .as_ref()
            .map(|s| (prune_tokenizer(s.value.clone()), pos(s))),
        chat_template: raw
            .chat_template
            .as_ref()
            .map(|s| (s.value.clone(), pos(s))),
        name: raw.name.as_ref().map(|s| s.value.clone()),
        warnings: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::Setting;
    use super::super::params::Value;
    use super::*;

    fn p(text: &str) -> Result<Recipe> {
        parse(
            text,
            Path::new("r.yml"),
            Path::new("."),
            &ParseOptions::default(),
        )
    }

    fn lenient(text: &str) -> Result<Recipe> {
        let opts = ParseOptions { lenient: true };
        parse(text, Path::new("r.yml"), Path::new("."), &opts)
    }

    /// The problems of a recipe that fails.
    fn problems(r: Result<Recipe>) -> Vec<Problem> {
        match r {
            Err(Error::RecipeProblems { problems, .. }) => problems,
            other => panic!("expected RecipeProblems, got {other:?}"),
        }
    }

    const MISSPELT: &str = "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\n  - model: b\n    paramters: {weight: 3}\n    parameters: {weight: 1}\n\
                            tokenzer_source: union\nint8_mask: true\nparameters:\n  nomalize: false\n  t:\n    - pattern: mlp\n      value: 1\n";

    #[test]
    fn every_problem_is_reported_at_once() {
        let ps = problems(p(&format!("{MISSPELT}dtype: bf16\n")));
        let lines: Vec<u64> = ps.iter().map(|p| p.pos.line).collect();
        assert_eq!(lines, [6, 8, 9, 11, 12, 13, 15], "{ps:?}");
        assert!(
            matches!(&ps[2].kind, ProblemKind::UnknownKey { key, suggestion: None, .. } if key == "int8_mask")
        );
        assert!(
            matches!(&ps[3].kind, ProblemKind::UnknownParameter { name, suggestion, .. }
            if name == "nomalize" && suggestion.as_deref() == Some("normalize"))
        );
        // `t` is not a parameter of linear either
        assert!(matches!(&ps[4].kind, ProblemKind::UnknownParameter { name, .. } if name == "t"));
        assert!(matches!(&ps[5].kind, ProblemKind::UnknownKey { key, .. } if key == "pattern"));
        assert!(matches!(&ps[6].kind, ProblemKind::Invalid(m) if m.contains("bf16")));
        let e = p(MISSPELT).unwrap_err().to_string();
        assert!(e.starts_with("r.yml: 6 problems"), "{e}");
        assert!(e.contains("pass --lenient"), "{e}");
    }

    #[test]
    fn lenient_ignores_what_mergekit_ignores() {
        let r = lenient(MISSPELT).unwrap();
        assert_eq!(r.models.len(), 2);
        assert_eq!(
            r.models[1].parameters["weight"].0,
            Setting::Value(Value::Scalar(1.0))
        );
        assert!(r.parameters.is_empty(), "{:?}", r.parameters);
        assert!(r.tokenizer_source.is_none());
        assert_eq!(r.warnings.len(), 6, "{:?}", r.warnings);
        assert!(r.warnings[0].starts_with("line 6 column 5: unknown key `paramters`"));
        assert!(r.warnings[0].contains("did you mean `parameters`?"));
        // what mergekit rejects, lenient rejects too
        let ps = problems(lenient(&format!("{MISSPELT}dtype: bf16\n")));
        assert_eq!(ps.len(), 1);
    }

    #[test]
    fn repeated_keys_keep_the_last_value_when_lenient() {
        let text = "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1, weight: 2}\nmerge_method: slerp\n";
        let ps = problems(p(text));
        assert!(ps.iter().any(
            |p| matches!(&p.kind, ProblemKind::DuplicateKey { key, first, again }
            if key == "weight" && first.line == 4 && again.line == 4 && again.column > first.column)
        ));
        assert!(ps.iter().any(
            |p| matches!(&p.kind, ProblemKind::DuplicateKey { key, first, again }
            if key == "merge_method" && first.line == 1 && again.line == 5)
        ));
        let e = p(text).unwrap_err().to_string();
        assert!(
            e.contains("on line 1 and line 5") && !e.contains("DuplicateKeyPolicy"),
            "{e}"
        );
        let r = lenient(text).unwrap();
        assert_eq!(r.merge_method, "slerp");
        assert_eq!(r.models[0].parameters.len(), 0); // weight is not a slerp parameter
        let r = lenient(
            "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1, weight: 2}\n",
        )
        .unwrap();
        assert_eq!(
            r.models[0].parameters["weight"].0,
            Setting::Value(Value::Scalar(2.0))
        );
    }

    #[test]
    fn old_tokenizer_source_syntax() {
        let text = "merge_method: linear\nmodels:\n  - model: a\ntokenizer_source: model:org/x\n";
        let ps = problems(p(text));
        assert!(matches!(&ps[0].kind, ProblemKind::OldTokenizerSyntax { path } if path == "org/x"));
        let r = lenient(text).unwrap();
        assert_eq!(r.tokenizer_source.unwrap().0, Json::String("org/x".into()));
        assert!(
            r.warnings[0].contains("read as `org/x`"),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn lenient_drops_unknown_tokenizer_keys() {
        let r = lenient("merge_method: linear\nmodels:\n  - model: a\ntokenizer:\n  source: union\n  pad_to_multple_of: 8\n  tokens:\n    x: {source: a, forced: true}\n    y: {source: {kind: zero, model: a}}\n").unwrap();
        let t = r.tokenizer.unwrap().0;
        assert_eq!(
            t,
            serde_json::json!({"source": "union", "tokens": {"x": {"source": "a"}, "y": {"source": {"kind": "zero"}}}})
        );
        assert_eq!(r.warnings.len(), 3);
    }

    #[test]
    fn yaml_errors_name_the_file_not_input() {
        let e = p("merge_method: [ties\nmodels: 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("r.yml:") && !e.contains("<input>"), "{e}");
    }

    #[test]
    fn unknown_key_names_key_line_and_allowed_keys() {
        let e = p("merge_method: ties\nmodels:\n  - model: a\n    paramters:\n      weight: 1\n")
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
                   parameters:\n  normalize: yes\n  weight:\n    - filter: mlp\n      value: [0, 1]\n    - value: 0.5\n")
            .unwrap();
        assert_eq!(
            r.models[0].parameters["weight"].0,
            Setting::Value(Value::Scalar(0.5))
        );
        assert_eq!(
            r.parameters["normalize"].0,
            Setting::Value(Value::Scalar(1.0))
        );
        assert_eq!(r.parameters["weight"].0.eval("x.mlp.y", 0.5), Some(0.5));
        assert_eq!(r.parameters["weight"].0.eval("other", 0.0), Some(0.5));
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
