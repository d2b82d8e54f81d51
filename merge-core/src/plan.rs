//! The planner: recipe + opened checkpoints → a [`Plan`], pure data saying *what* to compute.
//!
//! Every output tensor gets its name, shape, math and output dtypes, the input tensors it reads
//! (model, input name, crop), and every parameter already resolved to a number for this tensor
//! (mergekit's precedence, gradients and filters, §1.5–1.7). Also decided here: the output
//! layer count, the config/tokenizer donor and the shard layout.

use std::path::{Path, PathBuf};

use crate::arch::{self, Arch, WeightDef};
use crate::checkpoint::{Checkpoint, TensorInfo, hub, json_path};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::methods::{self, BaseUse, MergeMethod, ParamSpec, ParamValues, Scope};
use crate::recipe::params::layer_t;
use crate::recipe::{ModelRef, ParamMap, Recipe};

/// Options that change what is planned.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Allow inputs of different architectures (mergekit's `--allow-crimes`).
    pub allow_crimes: bool,
    /// Maximum bytes of tensor data per output shard (≤ 0: one shard).
    pub shard_size: i64,
    /// Random seed for the random methods.
    pub seed: u64,
    /// Hub commits to resolve references at instead of their revision, by the reference as
    /// written (`--locked`: the commits of the lock's inputs).
    pub hub_commits: std::collections::BTreeMap<String, String>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            allow_crimes: false,
            shard_size: 5_000_000_000,
            seed: DEFAULT_SEED,
            hub_commits: Default::default(),
        }
    }
}

/// The seed used when the user gives none (recorded in the plan and the lock file).
pub const DEFAULT_SEED: u64 = 42;

/// One input model of the plan.
#[derive(Debug)]
pub struct PlanModel {
    /// The reference as written.
    pub reference: ModelRef,
    /// Where it was found.
    pub path: PathBuf,
    /// Where its LoRA adapter was found (`model+lora`).
    pub lora_path: Option<PathBuf>,
    /// The opened checkpoint.
    pub checkpoint: Checkpoint,
}

/// One input of an output tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedSource {
    /// Index into [`Plan::models`].
    pub model: usize,
    /// The tensor's name in that model.
    pub tensor: String,
    /// Whether this is the base model.
    pub is_base: bool,
    /// Resolved per-model parameters.
    pub params: ParamValues,
    /// Row remapping to the output vocabulary (embedding tensors, when a tokenizer is built);
    /// shared by all sources of the tensor.
    pub rows: Option<std::sync::Arc<crate::vocab::RowMap>>,
}

/// One output tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTensor {
    /// Output name.
    pub name: String,
    /// Output shape.
    pub shape: Vec<usize>,
    /// The dtype math runs in.
    pub math: DType,
    /// The dtype written.
    pub out_dtype: DType,
    /// Embedding / head tensor.
    pub is_embed: bool,
    /// The inputs, in source order.
    pub sources: Vec<PlannedSource>,
    /// Resolved global parameters.
    pub global: ParamValues,
    /// Copy the single source's bytes unchanged (non-float tensors).
    pub raw_copy: bool,
}

impl PlannedTensor {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Output bytes.
    pub fn nbytes(&self) -> usize {
        self.numel() * self.out_dtype.size()
    }
}

/// One output shard: file name and the tensors it holds, in data order.
#[derive(Debug, Clone, PartialEq)]
pub struct Shard {
    /// File name inside the output folder.
    pub file: String,
    /// Indices into [`Plan::tensors`], in the order their data is laid out.
    pub tensors: Vec<usize>,
}

/// A complete merge plan.
#[derive(Debug)]
pub struct Plan {
    /// The merge method.
    pub method: &'static dyn MergeMethod,
    /// The input models.
    pub models: Vec<PlanModel>,
    /// The output tensors in architectural order.
    pub tensors: Vec<PlannedTensor>,
    /// The shard layout.
    pub shards: Vec<Shard>,
    /// The architecture used.
    pub arch: Arch,
    /// Index of the model that donates config.json and tokenizer files.
    pub donor: Option<usize>,
    /// Index of the global base model, if any.
    pub base: Option<usize>,
    /// The output config.json (`None` when the donor has none).
    pub config: Option<serde_json::Value>,
    /// Output layer count.
    pub num_layers: usize,
    /// The random seed.
    pub seed: u64,
    /// Non-fatal findings.
    pub warnings: Vec<String>,
    /// The tokenizer built from the recipe's tokenizer options (written instead of the
    /// donor's files).
    pub tokenizer: Option<crate::vocab::TokenizerFiles>,
    /// The resolved `chat_template` (applied to the tokenizer files written).
    pub chat_template: Option<String>,
}

impl Plan {
    /// Total bytes of output tensor data.
    pub fn output_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.nbytes() as u64).sum()
    }
    /// Total bytes of input tensor data read.
    pub fn input_bytes(&self) -> u64 {
        self.tensors
            .iter()
            .flat_map(|t| t.sources.iter())
            .map(|s| self.source_info(s).range.len() as u64)
            .sum()
    }
    /// The checkpoint entry of a source.
    pub fn source_info(&self, s: &PlannedSource) -> &TensorInfo {
        &self.models[s.model].checkpoint.tensors[&s.tensor]
    }
}

/// Resolves a model reference to a folder or file: relative to the recipe's folder, then to
/// the current directory, then as a hub id in the local Hugging Face cache.
pub fn resolve_model(r: &ModelRef, recipe_dir: &Path) -> Result<PathBuf> {
    resolve_path(&r.path, r.revision.as_deref(), &r.to_string(), recipe_dir)
}

fn resolve_path(
    path: &str,
    revision: Option<&str>,
    reference: &str,
    recipe_dir: &Path,
) -> Result<PathBuf> {
    let r = ModelRef {
        path: path.to_string(),
        revision: revision.map(String::from),
        lora: None,
        override_architecture: None,
    };
    let p = Path::new(&r.path);
    let mut looked = Vec::new();
    let candidates: Vec<PathBuf> = if p.is_absolute() {
        vec![p.to_path_buf()]
    } else {
        vec![recipe_dir.join(p), p.to_path_buf()]
    };
    for c in candidates {
        if c.exists() {
            return Ok(c);
        }
        looked.push(c.display().to_string());
    }
    if hub::looks_like_hub_id(&r.path) {
        match hub::find(&r.path, r.revision.as_deref()) {
            Ok(p) => return Ok(p),
            Err(dirs) => looked.extend(dirs.iter().map(|d| d.display().to_string())),
        }
    }
    Err(Error::ModelNotFound {
        reference: reference.to_string(),
        reason: format!("`{}`: looked in {}", r.path, looked.join(", ")),
    })
}

/// Opens every model the recipe references (each once).
pub fn open_models(recipe: &Recipe) -> Result<Vec<PlanModel>> {
    open_models_at(recipe, &Default::default())
}

/// [`open_models`], hub ids whose reference is in `commits` resolved at that commit.
pub fn open_models_at(
    recipe: &Recipe,
    commits: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<PlanModel>> {
    let mut out = Vec::new();
    for r in recipe.referenced_models() {
        let rev = commits.get(&r.to_string()).or(r.revision.as_ref());
        let path = resolve_path(
            &r.path,
            rev.map(String::as_str),
            &r.to_string(),
            &recipe.dir,
        )?;
        let mut checkpoint = Checkpoint::open(&path, &r.to_string())?;
        let mut lora_path = None;
        if let Some((l, rev)) = &r.lora {
            let lp = resolve_path(l, rev.as_deref(), &r.to_string(), &recipe.dir)?;
            checkpoint.attach_lora(crate::lora::LoraAdapter::load(&lp)?)?;
            lora_path = Some(lp);
        }
        out.push(PlanModel {
            reference: r,
            path,
            lora_path,
            checkpoint,
        });
    }
    Ok(out)
}

struct SourceSpec<'a> {
    model: usize,
    range: (usize, usize),
    params: Option<&'a ParamMap>,
}

struct SliceSpec<'a> {
    sources: Vec<SourceSpec<'a>>,
    base: Option<usize>,
    params: Option<&'a ParamMap>,
}

/// Builds the plan for `recipe` over the opened `models`.
pub fn build(recipe: &Recipe, models: Vec<PlanModel>, opts: &PlanOptions) -> Result<Plan> {
    let method = lookup_method(recipe)?;
    check_structure(recipe, method)?;
    let mut warnings = recipe.warnings.clone();
    warnings.extend(check_params(recipe, method)?);
    let vocab_opts = crate::vocab::VocabOptions::from_recipe(recipe)?;
    let idx = |r: &ModelRef| {
        models
            .iter()
            .position(|m| &m.reference == r)
            .expect("opened every referenced model")
    };

    // architecture
    let arch = resolve_arch(&models, opts.allow_crimes, &mut warnings)?;
    let layers_of = |m: usize| -> Result<usize> {
        models[m]
            .checkpoint
            .num_layers(arch.num_layers_key.as_deref())
            .ok_or_else(|| Error::UnknownLayerCount {
                model: models[m].reference.to_string(),
            })
    };

    // normalise to slices
    let base = recipe.base_model.as_ref().map(idx);
    let mut slices: Vec<SliceSpec> = Vec::new();
    if !recipe.models.is_empty() {
        let mut sources = Vec::new();
        for e in &recipe.models {
            let m = idx(&e.model);
            if sources.iter().any(|s: &SourceSpec| s.model == m) {
                warnings.push(format!(
                    "model `{}` is listed twice; as in mergekit the entries collapse into one input and the first entry's parameters are used",
                    e.model
                ));
                continue;
            }
            sources.push(SourceSpec {
                model: m,
                range: (0, layers_of(m)?),
                params: Some(&e.parameters),
            });
        }
        if let Some(b) = base
            && !sources.iter().any(|s| s.model == b)
            && method.info().base != BaseUse::None
        {
            sources.push(SourceSpec {
                model: b,
                range: (0, layers_of(b)?),
                params: None,
            });
        }
        if let Some(b) = base
            && method.info().base == BaseUse::None
            && !sources.iter().any(|s| s.model == b)
        {
            warnings.push(format!(
                "`base_model` {} is not used by merge method `{}` (it only donates config and tokenizer)",
                models[b].reference, method.info().name
            ));
        }
        slices.push(SliceSpec {
            sources,
            base,
            params: None,
        });
    } else {
        for (si, s) in recipe.slices.iter().enumerate() {
            let mut sources = Vec::new();
            for src in &s.sources {
                let m = idx(&src.model);
                let n = layers_of(m)?;
                let (a, b) = match src.layer_range {
                    None => (0, n),
                    Some((a, b)) => {
                        if a < 0 || b < a {
                            return Err(recipe.error(
                                src.pos,
                                format!(
                                    "slice {}: layer_range [{a}, {b}] is not a valid range",
                                    si + 1
                                ),
                            ));
                        }
                        let (a, b) = (a as usize, b as usize);
                        if b > n {
                            return Err(recipe.error(
                                src.pos,
                                format!("slice {}: layer_range [{a}, {b}] goes beyond model `{}`, which has {n} layers", si + 1, src.model),
                            ));
                        }
                        (a, b)
                    }
                };
                sources.push(SourceSpec {
                    model: m,
                    range: (a, b),
                    params: Some(&src.parameters),
                });
            }
            let len0 = sources[0].range.1 - sources[0].range.0;
            if let Some(bad) = sources.iter().find(|s| s.range.1 - s.range.0 != len0) {
                return Err(recipe.error(
                    s.pos,
                    format!(
                        "slice {}: all sources must have the same number of layers ({} has {}, {} has {})",
                        si + 1,
                        models[sources[0].model].reference,
                        len0,
                        models[bad.model].reference,
                        bad.range.1 - bad.range.0
                    ),
                ));
            }
            let sbase = s.base_model.as_ref().map(idx).or(base);
            if method.info().base == BaseUse::Required
                && let Some(b) = sbase
                && !sources.iter().any(|s| s.model == b)
            {
                return Err(recipe.error(
                    s.pos,
                    format!(
                        "slice {}: the base model `{}` must be listed among the slice's sources for `{}` (as in mergekit, slices do not add it)",
                        si + 1,
                        models[b].reference,
                        method.info().name
                    ),
                ));
            }
            slices.push(SliceSpec {
                sources,
                base: sbase,
                params: Some(&s.parameters),
            });
        }
    }
    if method.info().base == BaseUse::Required && slices.iter().any(|s| s.base.is_none()) {
        return Err(recipe.error(
            recipe.merge_method_pos,
            format!("merge method `{}` needs a `base_model`", method.info().name),
        ));
    }

    // output tensors
    let mut tensors = Vec::new();
    let ctx = Ctx {
        recipe,
        models: &models,
        method,
        remap: vocab_opts.tokenizer.is_some(),
    };
    let first = &slices[0];
    let last = slices.last().expect("at least one slice");
    for w in &arch.pre {
        ctx.push_tensor(&mut tensors, w, &w.name, first, 0, 0.0)?;
    }
    let mut out_layer = 0usize;
    for s in &slices {
        let len = s.sources[0].range.1 - s.sources[0].range.0;
        for k in 0..len {
            let t = layer_t(k, len);
            for w in &arch.layer {
                let oname = w.render(out_layer);
                ctx.push_tensor(&mut tensors, w, &oname, s, k, t)?;
            }
            out_layer += 1;
        }
    }
    for w in &arch.post {
        ctx.push_tensor(&mut tensors, w, &w.name, last, 0, 0.0)?;
    }
    warn_unused(&models, &tensors, &mut warnings);
    warnings.extend(unusual_values(method, &tensors));

    // config and donor
    let donor = recipe.donor().map(|d| idx(&d));
    let mut config = donor.and_then(|d| models[d].checkpoint.config.clone());
    if let Some(cfg) = config.as_mut() {
        let dt = recipe.out_dtype.or(recipe.dtype);
        if let (Some(dt), Some(obj)) = (dt, cfg.as_object_mut()) {
            let mut set = false;
            for k in ["torch_dtype", "dtype"] {
                if obj.contains_key(k) {
                    obj.insert(k.into(), dt.torch_name().into());
                    set = true;
                }
            }
            if !set {
                obj.insert("torch_dtype".into(), dt.torch_name().into());
            }
        }
        if !recipe.slices.is_empty()
            && let Some(key) = &arch.num_layers_key
        {
            set_json_path(cfg, key, out_layer.into());
        }
    }
    let vocab = crate::vocab::apply(
        recipe,
        &vocab_opts,
        &models,
        donor,
        &mut tensors,
        &mut config,
        &mut warnings,
    )?;
    warnings.extend(crate::vocab::crop_warnings(&models, &tensors));
    let shards = layout_shards(&tensors, opts.shard_size);
    Ok(Plan {
        method,
        models,
        tensors,
        shards,
        arch,
        donor,
        base,
        config,
        num_layers: out_layer,
        seed: opts.seed,
        warnings,
        tokenizer: vocab.tokenizer,
        chat_template: vocab.chat_template,
    })
}

fn set_json_path(v: &mut serde_json::Value, path: &str, value: serde_json::Value) {
    let mut cur = v;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            if let Some(o) = cur.as_object_mut() {
                o.insert(p.to_string(), value);
            }
            return;
        }
        match cur.get_mut(*p) {
            Some(next) => cur = next,
            None => return,
        }
    }
}

fn resolve_arch(
    models: &[PlanModel],
    allow_crimes: bool,
    warnings: &mut Vec<String>,
) -> Result<Arch> {
    let class_of = |m: &PlanModel| -> Option<String> {
        if let Some(o) = &m.reference.override_architecture {
            return Some(o.clone());
        }
        m.checkpoint
            .config
            .as_ref()?
            .get("architectures")?
            .get(0)?
            .as_str()
            .map(String::from)
    };
    let classes: Vec<Option<String>> = models.iter().map(class_of).collect();
    let defs: Vec<Option<Arch>> = classes
        .iter()
        .map(|c| c.as_deref().and_then(arch::known))
        .collect();
    if defs.iter().all(|d| d.is_some()) {
        let first = defs[0].clone().expect("checked");
        if let Some((i, _)) = defs
            .iter()
            .enumerate()
            .find(|(_, d)| d.as_ref() != Some(&first))
        {
            let (first, first_arch, other, other_arch) = (
                models[0].reference.to_string(),
                classes[0].as_deref().unwrap_or("?"),
                models[i].reference.to_string(),
                classes[i].as_deref().unwrap_or("?"),
            );
            if !allow_crimes {
                return Err(Error::ArchitectureMismatch {
                    first,
                    first_arch: first_arch.into(),
                    other,
                    other_arch: other_arch.into(),
                });
            }
            warnings.push(format!(
                "models have different architectures: `{first}` is {first_arch} but `{other}` is {other_arch}; using the first model's architecture (--allow-crimes)"
            ));
        }
        return Ok(first);
    }
    let key = models
        .iter()
        .filter_map(|m| m.checkpoint.config.as_ref())
        .find_map(|c| {
            ["num_hidden_layers", "n_layer", "num_layers"]
                .into_iter()
                .find(|k| c.get(*k).is_some())
        })
        .map(String::from);
    let named: Vec<(Vec<&str>, usize)> = models
        .iter()
        .map(|m| {
            let names: Vec<&str> = m.checkpoint.tensors.keys().map(|s| s.as_str()).collect();
            let layers = arch::max_layer_index(names.iter().copied())
                .map(|x| x + 1)
                .unwrap_or(0);
            (names, layers)
        })
        .collect();
    let unknown: Vec<String> = classes
        .iter()
        .flatten()
        .filter(|c| arch::known(c).is_none())
        .cloned()
        .collect();
    warnings.push(format!(
        "architecture {} is not one smelt knows ({}); inferring the layout from tensor names",
        if unknown.is_empty() {
            "(no config.json)".to_string()
        } else {
            unknown.join(", ")
        },
        arch::KNOWN.join(", ")
    ));
    Ok(arch::infer(&named, key))
}

struct Ctx<'a> {
    recipe: &'a Recipe,
    models: &'a [PlanModel],
    method: &'static dyn MergeMethod,
    /// Embedding rows are remapped to a built vocabulary (their counts may differ).
    remap: bool,
}

fn find_tensor(ck: &Checkpoint, mut names: impl Iterator<Item = String>) -> Option<String> {
    names.find(|n| ck.tensors.contains_key(n))
}

impl Ctx<'_> {
    fn push_tensor(
        &self,
        out: &mut Vec<PlannedTensor>,
        w: &WeightDef,
        oname: &str,
        slice: &SliceSpec,
        k: usize,
        t: f64,
    ) -> Result<()> {
        let render = |n: &str, layer: usize| n.replace(arch::LAYER, &layer.to_string());
        let mut sources = Vec::new();
        let mut missing = Vec::new();
        let mut any_direct = false;
        for src in &slice.sources {
            let layer = src.range.0 + k;
            let ck = &self.models[src.model].checkpoint;
            let direct = std::iter::once(render(&w.name, layer))
                .chain(w.aliases.iter().map(|a| render(a, layer)));
            let found = match find_tensor(ck, direct) {
                Some(f) => {
                    any_direct = true;
                    Some(f)
                }
                None => find_tensor(ck, w.tied.iter().map(|a| render(a, layer))),
            };
            match found {
                Some(iname) => sources.push((src, iname)),
                None => missing.push((src.model, render(&w.name, layer))),
            }
        }
        if w.optional && !any_direct {
            return Ok(());
        }
        if !missing.is_empty() && !w.optional {
            let (m, n) = &missing[0];
            let hint = match sources.first() {
                Some((s, iname)) => format!(
                    " (model `{}` has it as `{iname}`)",
                    self.models[s.model].reference
                ),
                None => String::new(),
            };
            return Err(Error::MissingTensor {
                tensor: n.clone(),
                model: self.models[*m].reference.to_string(),
                hint,
            });
        }
        // shapes and dtypes
        let infos: Vec<&TensorInfo> = sources
            .iter()
            .map(|(s, n)| &self.models[s.model].checkpoint.tensors[n])
            .collect();
        let info = self.method.info();
        let base_model = slice.base;
        let first_math = sources
            .iter()
            .zip(&infos)
            .find(|((s, _), _)| Some(s.model) == base_model)
            .or_else(|| sources.iter().zip(&infos).next())
            .map(|(_, i)| i.dtype)
            .expect("at least one source");
        let non_math = infos.iter().zip(&sources).find(|(i, _)| !i.dtype.is_math());
        if let Some((bad, (s, n))) = non_math {
            if sources.len() == 1 {
                out.push(PlannedTensor {
                    name: oname.to_string(),
                    shape: bad.shape.clone(),
                    math: bad.dtype,
                    out_dtype: bad.dtype,
                    is_embed: w.is_embed,
                    sources: vec![PlannedSource {
                        model: s.model,
                        tensor: n.clone(),
                        is_base: Some(s.model) == base_model,
                        params: ParamValues::default(),
                        rows: None,
                    }],
                    global: ParamValues::default(),
                    raw_copy: true,
                });
                return Ok(());
            }
            return Err(Error::Dtype {
                tensor: n.clone(),
                model: self.models[s.model].reference.to_string(),
                reason: format!(
                    "dtype {} cannot be merged (only F32, F16 and BF16 can; a tensor of another dtype passes through only when a single model contributes it)",
                    bad.dtype
                ),
            });
        }
        let shape0 = &infos[0].shape;
        let mut shape = shape0.clone();
        if let Some((j, other)) = infos.iter().enumerate().find(|(_, i)| &i.shape != shape0) {
            let all_2d = w.is_embed && infos.iter().all(|i| i.shape.len() == 2);
            let rectify = info.rectify_embeddings && all_2d;
            // with a built vocabulary only the row counts may differ (rows are remapped)
            let remapped = self.remap && all_2d && infos.iter().all(|i| i.shape[1] == shape0[1]);
            if !rectify && !remapped {
                return Err(Error::ShapeMismatch {
                    tensor: oname.to_string(),
                    detail: format!(
                        "{:?} in `{}` ({}) vs {:?} in `{}` ({})",
                        shape0,
                        self.models[sources[0].0.model].reference,
                        sources[0].1,
                        other.shape,
                        self.models[sources[j].0.model].reference,
                        sources[j].1
                    ),
                });
            }
            if !remapped {
                shape = vec![
                    infos.iter().map(|i| i.shape[0]).min().unwrap_or(0),
                    infos.iter().map(|i| i.shape[1]).min().unwrap_or(0),
                ];
            }
        }
        // parameters
        let mut planned = Vec::new();
        for (src, iname) in &sources {
            let is_base = Some(src.model) == base_model;
            let params = self.resolve(
                Scope::PerModel,
                slice,
                Some(src.model),
                iname,
                t,
                is_base,
                oname,
            )?;
            planned.push(PlannedSource {
                model: src.model,
                tensor: iname.clone(),
                is_base,
                params,
                rows: None,
            });
        }
        let global = self.resolve(Scope::Global, slice, None, oname, t, false, oname)?;
        let math = self.recipe.dtype.unwrap_or(first_math);
        let out_dtype = self.recipe.out_dtype.or(info.result_dtype).unwrap_or(math);
        out.push(PlannedTensor {
            name: oname.to_string(),
            shape,
            math,
            out_dtype,
            is_embed: w.is_embed,
            sources: planned,
            global,
            raw_copy: false,
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn resolve(
        &self,
        scope: Scope,
        slice: &SliceSpec,
        model: Option<usize>,
        name: &str,
        t: f64,
        is_base: bool,
        oname: &str,
    ) -> Result<ParamValues> {
        let mut out = Vec::new();
        for spec in self
            .method
            .info()
            .params
            .iter()
            .filter(|p| p.scope == scope)
        {
            let mut levels: Vec<&ParamMap> = Vec::new();
            if let Some(m) = model
                && let Some(src) = slice.sources.iter().find(|s| s.model == m)
                && let Some(p) = src.params
            {
                levels.push(p);
            }
            if let Some(p) = slice.params {
                levels.push(p);
            }
            levels.push(&self.recipe.parameters);
            let v = levels
                .iter()
                .find_map(|l| l.get(spec.name).and_then(|(s, _)| s.eval(name, t)));
            match v.or(spec.default) {
                Some(v) => {
                    if let Some(r) = spec.range
                        && r.strict
                        && !r.contains(v)
                    {
                        return Err(Error::ParamOutOfRange {
                            name: spec.name.to_string(),
                            value: v,
                            lo: r.lo,
                            hi: r.hi,
                            at: match model {
                                Some(m) => format!(
                                    "model `{}`, tensor `{oname}`",
                                    self.models[m].reference
                                ),
                                None => format!("tensor `{oname}`"),
                            },
                        });
                    }
                    out.push((spec.name, v))
                }
                None if spec.required && !(scope == Scope::PerModel && is_base) => {
                    return Err(Error::MissingParameter {
                        name: spec.name.to_string(),
                        model: model.map(|m| self.models[m].reference.to_string()),
                        tensor: oname.to_string(),
                        method: self.method.info().name.to_string(),
                    });
                }
                None => {}
            }
        }
        Ok(ParamValues(out))
    }
}

/// One warning per parameter value outside its usual range (extrapolation some people use on
/// purpose, e.g. SLERP's `t` beyond [0, 1]), naming the first tensor it applies to.
fn unusual_values(method: &dyn MergeMethod, tensors: &[PlannedTensor]) -> Vec<String> {
    let mut seen: Vec<(&str, u64)> = Vec::new();
    let mut out = Vec::new();
    for t in tensors {
        let sets = std::iter::once(&t.global).chain(t.sources.iter().map(|s| &s.params));
        for (name, v) in sets.flat_map(|p| p.0.iter()) {
            let Some(r) = method
                .info()
                .params
                .iter()
                .find(|s| s.name == *name)
                .and_then(|s| s.range)
            else {
                continue;
            };
            if !r.strict && !r.contains(*v) && !seen.contains(&(name, v.to_bits())) {
                seen.push((name, v.to_bits()));
                out.push(format!(
                    "`{name}` = {v} is outside [{}, {}] (first at tensor `{}`): the merge extrapolates",
                    r.lo, r.hi, t.name
                ));
            }
        }
    }
    out
}

fn warn_unused(models: &[PlanModel], tensors: &[PlannedTensor], warnings: &mut Vec<String>) {
    for (i, m) in models.iter().enumerate() {
        let used: std::collections::BTreeSet<&str> = tensors
            .iter()
            .flat_map(|t| t.sources.iter())
            .filter(|s| s.model == i)
            .map(|s| s.tensor.as_str())
            .collect();
        let unused: Vec<&str> = m
            .checkpoint
            .tensors
            .keys()
            .map(|s| s.as_str())
            .filter(|n| !used.contains(n) && arch::split_layer(n).is_none())
            .collect();
        if !unused.is_empty() && unused.len() < 20 {
            warnings.push(format!(
                "model `{}`: tensors not part of the output layout are skipped: {}",
                m.reference,
                unused.join(", ")
            ));
        }
    }
}

/// The structural rules mergekit enforces when it plans, which the recipe alone shows: no
/// model listed twice as an input (of the merge or of one slice); the sources of a slice
/// whose `layer_range`s are all given span the same number of layers; a slice's base model
/// (its own or the global one) is one of its sources; `slerp` merges exactly two sources.
pub fn check_structure(recipe: &Recipe, method: &dyn MergeMethod) -> Result<()> {
    for (i, m) in recipe.models.iter().enumerate() {
        if let Some(first) = recipe.models[..i].iter().find(|o| o.model == m.model) {
            return Err(recipe.error(
                m.pos,
                format!(
                    "model `{}` is listed twice (first at line {}); each input may appear once",
                    m.model, first.pos.line
                ),
            ));
        }
    }
    // a base_model missing from `models:` is added as an input, as mergekit does
    let inputs = recipe.models.len()
        + usize::from(
            recipe
                .base_model
                .as_ref()
                .is_some_and(|b| !recipe.models.iter().any(|m| &m.model == b)),
        );
    if method.info().name == "slerp" && !recipe.models.is_empty() && inputs != 2 {
        return Err(recipe.error(
            recipe.merge_method_pos,
            format!("slerp merges exactly two models (a base_model and one other), got {inputs}"),
        ));
    }
    for (si, s) in recipe.slices.iter().enumerate() {
        check_slice(recipe, method, si, s)?;
    }
    Ok(())
}

fn check_slice(
    recipe: &Recipe,
    method: &dyn MergeMethod,
    si: usize,
    s: &crate::recipe::Slice,
) -> Result<()> {
    let n = si + 1;
    for (i, src) in s.sources.iter().enumerate() {
        if s.sources[..i].iter().any(|o| o.model == src.model) {
            return Err(recipe.error(
                src.pos,
                format!("slice {n}: model `{}` is a source twice", src.model),
            ));
        }
    }
    let lens: Vec<i64> = s
        .sources
        .iter()
        .filter_map(|src| src.layer_range.map(|(a, b)| b - a))
        .collect();
    if lens.len() == s.sources.len() && lens.windows(2).any(|w| w[0] != w[1]) {
        return Err(recipe.error(
            s.pos,
            format!(
                "slice {n}: all sources must have the same number of layers (their layer_ranges span {})",
                lens.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    if method.info().name == "slerp" && s.sources.len() != 2 {
        return Err(recipe.error(
            s.pos,
            format!(
                "slice {n}: slerp merges exactly two sources, got {}",
                s.sources.len()
            ),
        ));
    }
    let base = s.base_model.as_ref().or(recipe.base_model.as_ref());
    if let Some(b) = base
        && method.info().base != BaseUse::None
        && s.sources.len() > 1
        && !s.sources.iter().any(|src| &src.model == b)
    {
        return Err(recipe.error(
            s.pos,
            format!(
                "slice {n}: the base model `{b}` is not one of its sources; add it to the slice's sources"
            ),
        ));
    }
    Ok(())
}

/// Lints a recipe without opening any model: the method exists, every parameter is known to
/// it with a usable value, required parameters are set for every model, a base is given
/// where the method needs one, and no unsupported option is used. Returns the warnings; the
/// independent checks all run, and their errors are reported together.
pub fn check_recipe(recipe: &Recipe) -> Result<Vec<String>> {
    let method = lookup_method(recipe)?;
    let mut warnings = recipe.warnings.clone();
    let mut errors = Vec::new();
    let mut keep = |r: Result<()>| errors.extend(r.err());
    keep(check_structure(recipe, method));
    keep(check_params(recipe, method).map(|w| warnings.extend(w)));
    keep(crate::vocab::VocabOptions::from_recipe(recipe).and_then(|v| v.check_models(recipe)));
    keep(check_base_given(recipe, method.info()));
    keep(check_required_params(recipe, method.info()));
    match errors.len() {
        0 => Ok(warnings),
        1 => Err(errors.remove(0)),
        _ => Err(recipe.problems_error(errors)),
    }
}

/// A method that needs a base has one (globally, or in every slice).
fn check_base_given(recipe: &Recipe, info: &methods::MethodInfo) -> Result<()> {
    if info.base == BaseUse::Required
        && recipe.base_model.is_none()
        && (recipe.slices.is_empty() || recipe.slices.iter().any(|s| s.base_model.is_none()))
    {
        return Err(recipe.error(
            recipe.merge_method_pos,
            format!("merge method `{}` needs a `base_model`", info.name),
        ));
    }
    Ok(())
}

/// Every required parameter is set for every model (at some level).
fn check_required_params(recipe: &Recipe, info: &methods::MethodInfo) -> Result<()> {
    for spec in info.params.iter().filter(|p| p.required) {
        let global = recipe.parameters.contains_key(spec.name);
        let check = |model: &ModelRef,
                     own: &ParamMap,
                     slice: Option<&ParamMap>,
                     pos: crate::recipe::Pos,
                     base: Option<&ModelRef>| {
            let is_base = base == Some(model);
            let set = own.contains_key(spec.name)
                || slice.is_some_and(|s| s.contains_key(spec.name))
                || global;
            if !(set || spec.scope == Scope::PerModel && is_base) {
                return Err(recipe.error(
                    pos,
                    format!(
                        "missing required parameter `{}` for model `{model}` (merge method `{}`)",
                        spec.name, info.name
                    ),
                ));
            }
            Ok(())
        };
        for m in &recipe.models {
            check(
                &m.model,
                &m.parameters,
                None,
                m.pos,
                recipe.base_model.as_ref(),
            )?;
        }
        for s in &recipe.slices {
            let base = s.base_model.as_ref().or(recipe.base_model.as_ref());
            for src in &s.sources {
                check(
                    &src.model,
                    &src.parameters,
                    Some(&s.parameters),
                    src.pos,
                    base,
                )?;
            }
        }
    }
    Ok(())
}

fn lookup_method(recipe: &Recipe) -> Result<&'static dyn MergeMethod> {
    methods::lookup(&recipe.merge_method).ok_or_else(|| {
        recipe.error(
            recipe.merge_method_pos,
            format!(
                "unknown merge_method `{}`; known: {}",
                recipe.merge_method,
                methods::all()
                    .iter()
                    .map(|m| m.info().name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })
}

/// Checks every parameter of the recipe against the method: unknown names are errors (with
/// the known ones), global parameters set per model are warnings (mergekit ignores them).
pub fn check_params(recipe: &Recipe, method: &dyn MergeMethod) -> Result<Vec<String>> {
    let specs: &[ParamSpec] = method.info().params;
    let mut warnings = Vec::new();
    let known = || specs.iter().map(|p| p.name).collect::<Vec<_>>().join(", ");
    let mut check = |map: &ParamMap, per_model: bool, what: &str| -> Result<()> {
        for (k, (_, pos)) in map {
            match specs.iter().find(|p| p.name == k) {
                None => {
                    return Err(recipe.error(
                        *pos,
                        format!(
                            "unknown parameter `{k}` in {what} for merge method `{}`; it knows: {}",
                            method.info().name,
                            if specs.is_empty() { "no parameters".to_string() } else { known() }
                        ),
                    ));
                }
                Some(p) if per_model && p.scope == Scope::Global => warnings.push(format!(
                    "{}: parameter `{k}` is global for `{}`; setting it per model has no effect (as in mergekit)",
                    pos,
                    method.info().name
                )),
                _ => {}
            }
        }
        Ok(())
    };
    check(&recipe.parameters, false, "parameters")?;
    for m in &recipe.models {
        check(&m.parameters, true, "a model's parameters")?;
    }
    for s in &recipe.slices {
        check(&s.parameters, false, "a slice's parameters")?;
        for src in &s.sources {
            check(&src.parameters, true, "a slice source's parameters")?;
        }
    }
    Ok(warnings)
}

/// mergekit's shard layout: append tensors in order, starting a new shard when the current one
/// is non-empty and the next tensor would take it past `max` bytes. Within a shard, data is
/// ordered by element alignment (8-byte types first), keeping the architectural order
/// otherwise, so every tensor starts aligned.
pub fn layout_shards(tensors: &[PlannedTensor], max: i64) -> Vec<Shard> {
    let mut groups: Vec<Vec<usize>> = vec![Vec::new()];
    let mut cur = 0i64;
    for (i, t) in tensors.iter().enumerate() {
        let n = t.nbytes() as i64;
        let g = groups.last_mut().expect("non-empty");
        if max > 0 && !g.is_empty() && cur + n > max {
            groups.push(vec![i]);
            cur = n;
        } else {
            g.push(i);
            cur += n;
        }
    }
    let count = groups.len();
    groups
        .into_iter()
        .enumerate()
        .map(|(k, mut g)| {
            g.sort_by_key(|&i| std::cmp::Reverse(tensors[i].out_dtype.size()));
            Shard {
                file: if count == 1 {
                    "model.safetensors".into()
                } else {
                    format!("model-{:05}-of-{:05}.safetensors", k + 1, count)
                },
                tensors: g,
            }
        })
        .collect()
}

/// Parses a shard size: `N`, `Nk`, `NM`, `NB` (mergekit: decimal ×1e3/1e6/1e9) and `NKB`,
/// `NMB`, `NGB`, `NTB` (decimal bytes); case-insensitive.
pub fn parse_size(s: &str) -> std::result::Result<i64, String> {
    let t = s.trim().to_ascii_uppercase();
    let (num, mult) = [
        ("TB", 1e12),
        ("GB", 1e9),
        ("MB", 1e6),
        ("KB", 1e3),
        ("B", 1e9),
        ("M", 1e6),
        ("K", 1e3),
        ("G", 1e9),
    ]
    .iter()
    .find_map(|(suf, m)| t.strip_suffix(suf).map(|n| (n.to_string(), *m)))
    .unwrap_or((t.clone(), 1.0));
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid size `{s}` (examples: 5B, 500MB, 2GB)"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("invalid size `{s}`"));
    }
    let bytes = n * mult;
    if bytes < 1.0 {
        return Err(format!("invalid size `{s}`: it must be at least 1 byte"));
    }
    if bytes > i64::MAX as f64 {
        return Err(format!("invalid size `{s}`: too large"));
    }
    Ok(bytes as i64)
}

/// The config.json layer count of `cfg` under `key`.
pub fn config_layers(cfg: &serde_json::Value, key: &str) -> Option<u64> {
    json_path(cfg, key).and_then(|v| v.as_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("5B").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("1k").unwrap(), 1000);
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_size("123").unwrap(), 123);
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn check_recipe_reports_every_independent_problem() {
        let text = "merge_method: ties\nmodels:\n  - model: a\n    parameters: {weight: 1}\n  - model: a\n    parameters: {weight: 1}\n  - model: b\n";
        let r = Recipe::parse(text, Path::new("r.yml"), Path::new(".")).unwrap();
        let Err(Error::RecipeProblems {
            problems, report, ..
        }) = check_recipe(&r)
        else {
            panic!("expected RecipeProblems");
        };
        let lines: Vec<u64> = problems.iter().map(|p| p.pos.line).collect();
        // listed twice (line 5), no base (line 1), no weight for b (line 7)
        assert_eq!(lines, [5, 1, 7], "{report}");
        assert!(report.starts_with("r.yml: 3 problems"), "{report}");
        assert!(report.contains("r.yml:7:"), "{report}");
    }
}
