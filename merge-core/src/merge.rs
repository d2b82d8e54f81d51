//! `smelt run` as a library call: open the inputs, plan, execute into a temporary folder,
//! write the small files, and move the folder into place.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::exec::{self, ExecOptions, Progress, TensorSink};
use crate::gguf::sink::{GgufSink, Tee};
use crate::lock::{self, FileRecord, HashCache, InputRecord, Lock, RecipeRecord};
use crate::output::{self, OutputDir};
use crate::plan::{self, Plan, PlanOptions};
use crate::recipe::Recipe;
use crate::writer::{SafetensorsWriter, WrittenFile};
use smelt_gguf::FileType;

/// Options of a merge run.
#[derive(Debug, Clone)]
pub struct MergeOptions {
    /// Planning options (crimes, shard size, seed).
    pub plan: PlanOptions,
    /// Worker threads (0: all cores).
    pub threads: usize,
    /// Working-memory budget in bytes.
    pub memory_budget: u64,
    /// Copy the donor's tokenizer files.
    pub copy_tokenizer: bool,
    /// Write README.md and mergekit_config.yml.
    pub write_card: bool,
    /// Replace a non-empty output folder.
    pub force: bool,
    /// Also write the lock file here (e.g. beside the recipe, to commit it).
    pub lock_path: Option<PathBuf>,
    /// Refuse to merge unless the recipe, seed and inputs equal this lock's.
    pub locked: Option<Lock>,
    /// Where input digests are cached (`None`: no cache).
    pub hash_cache: Option<PathBuf>,
    /// Write a GGUF file (quantized in the same pass) instead of, or besides, safetensors.
    pub gguf: Option<GgufOptions>,
}

/// The one-pass GGUF route of `smelt run --gguf`.
#[derive(Debug, Clone)]
pub struct GgufOptions {
    /// The llama.cpp file type.
    pub ftype: FileType,
    /// `tokenizer.ggml.pre` override for an unrecognised BPE tokenizer.
    pub pre: Option<String>,
    /// Also write the safetensors shards.
    pub keep_safetensors: bool,
}

impl Default for MergeOptions {
    fn default() -> Self {
        MergeOptions {
            plan: PlanOptions::default(),
            threads: 0,
            memory_budget: exec::DEFAULT_BUDGET,
            copy_tokenizer: true,
            write_card: true,
            force: false,
            lock_path: None,
            locked: None,
            hash_cache: HashCache::default_path(),
            gguf: None,
        }
    }
}

/// What a merge produced.
#[derive(Debug, Clone)]
pub struct MergeReport {
    /// The output folder.
    pub out: PathBuf,
    /// Every file written, in name order.
    pub files: Vec<WrittenFile>,
    /// Number of tensors written.
    pub tensors: usize,
    /// Input tensor bytes read.
    pub input_bytes: u64,
    /// Output tensor bytes written.
    pub output_bytes: u64,
    /// Non-fatal findings.
    pub warnings: Vec<String>,
    /// Wall time.
    pub elapsed: Duration,
    /// The lock written into the output folder.
    pub lock: Lock,
}

/// The files a merge reads from each input: weights, indexes, config and tokenizer files
/// (as `(model index, folder, file name)`; for a bare file the folder is its parent).
pub fn input_files(plan: &Plan) -> Vec<(usize, PathBuf, String)> {
    let mut out = Vec::new();
    for (i, m) in plan.models.iter().enumerate() {
        let ck = &m.checkpoint;
        let dir = ck
            .dir
            .clone()
            .unwrap_or_else(|| m.path.parent().map(Path::to_path_buf).unwrap_or_default());
        let mut names: Vec<String> = ck
            .files
            .iter()
            .filter_map(|f| f.path.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        if ck.dir.is_some() {
            let extra = [
                "config.json",
                "model.safetensors.index.json",
                "pytorch_model.bin.index.json",
            ];
            for n in extra.iter().chain(output::TOKENIZER_FILES) {
                if dir.join(n).is_file() && !names.iter().any(|x| x == n) {
                    names.push(n.to_string());
                }
            }
        }
        names.sort();
        out.extend(names.into_iter().map(|n| (i, dir.clone(), n)));
    }
    out
}

fn lora_files(dir: &Path) -> Vec<String> {
    [
        "adapter_config.json",
        "adapter_model.safetensors",
        "adapter_model.bin",
    ]
    .iter()
    .filter(|n| dir.join(n).is_file())
    .map(|n| n.to_string())
    .collect()
}

/// Hashes every input file (through the cache) into lock records.
pub fn hash_inputs(plan: &Plan, cache: &HashCache) -> Result<Vec<InputRecord>> {
    let files = input_files(plan);
    let records: Vec<FileRecord> = files
        .par_iter()
        .map(|(_, dir, name)| cache.record(&dir.join(name), name))
        .collect::<Result<_>>()?;
    let mut out = Vec::new();
    for (i, m) in plan.models.iter().enumerate() {
        let own: Vec<FileRecord> = files
            .iter()
            .zip(&records)
            .filter(|((k, _, _), _)| *k == i)
            .map(|(_, r)| r.clone())
            .collect();
        let lora_files = match &m.lora_path {
            Some(d) => lora_files(d)
                .into_iter()
                .map(|n| cache.record(&d.join(&n), &n))
                .collect::<Result<_>>()?,
            None => Vec::new(),
        };
        out.push(InputRecord {
            reference: m.reference.to_string(),
            path: m.path.canonicalize().unwrap_or_else(|_| m.path.clone()),
            files: own,
            lora_path: m
                .lora_path
                .as_ref()
                .map(|p| p.canonicalize().unwrap_or_else(|_| p.clone())),
            lora_files,
            commit: crate::checkpoint::hub::snapshot_commit(&m.path),
        });
    }
    Ok(out)
}

/// The output-shaping options recorded in a lock.
pub fn lock_options(opts: &MergeOptions) -> std::collections::BTreeMap<String, String> {
    [
        ("out_shard_size", opts.plan.shard_size.to_string()),
        ("allow_crimes", opts.plan.allow_crimes.to_string()),
        ("copy_tokenizer", opts.copy_tokenizer.to_string()),
        ("write_model_card", opts.write_card.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Differences between a lock and what a run would use (recipe, seed, inputs).
pub fn lock_differences(
    lock: &Lock,
    recipe: &Recipe,
    seed: u64,
    inputs: &[InputRecord],
) -> Vec<String> {
    let mut d = Vec::new();
    if lock.recipe.sha256 != lock::sha256_hex(recipe.text.as_bytes()) {
        d.push("the recipe text differs from the locked one".to_string());
    }
    if lock.seed != seed {
        d.push(format!(
            "the seed {seed} differs from the locked {}",
            lock.seed
        ));
    }
    for inp in inputs {
        match lock.inputs.iter().find(|l| l.reference == inp.reference) {
            None => d.push(format!("input `{}` is not in the lock", inp.reference)),
            Some(l) => {
                for (what, a, b) in [
                    ("", &l.files, &inp.files),
                    ("LoRA ", &l.lora_files, &inp.lora_files),
                ] {
                    for f in b {
                        match a.iter().find(|x| x.name == f.name) {
                            Some(x) if x.sha256 == f.sha256 => {}
                            Some(_) => d.push(format!(
                                "input `{}`: {what}file {} changed",
                                inp.reference, f.name
                            )),
                            None => d.push(format!(
                                "input `{}`: {what}file {} is not in the lock",
                                inp.reference, f.name
                            )),
                        }
                    }
                    for x in a {
                        if !b.iter().any(|f| f.name == x.name) {
                            d.push(format!(
                                "input `{}`: locked {what}file {} is gone",
                                inp.reference, x.name
                            ));
                        }
                    }
                }
            }
        }
    }
    for l in &lock.inputs {
        if !inputs.iter().any(|i| i.reference == l.reference) {
            d.push(format!("locked input `{}` is no longer used", l.reference));
        }
    }
    d
}

/// Opens the recipe's models and builds its plan.
pub fn plan(recipe: &Recipe, opts: &PlanOptions) -> Result<Plan> {
    let models = plan::open_models_at(recipe, &opts.hub_commits)?;
    plan::build(recipe, models, opts)
}

/// Checks that `--lock PATH` may be written: never an input model's file, never the recipe,
/// and an existing file only if it is a smelt lock (or with `force`).
pub fn check_lock_path(p: &Path, inputs: &[PathBuf], recipe: &Recipe, force: bool) -> Result<()> {
    let refuse = |reason: String| {
        Err(Error::Output {
            path: p.to_path_buf(),
            reason,
        })
    };
    let abs = p
        .canonicalize()
        .unwrap_or_else(|_| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()));
    for i in inputs {
        let ia = i.canonicalize().unwrap_or_else(|_| i.clone());
        if abs == ia || abs.starts_with(&ia) {
            return refuse(format!(
                "the lock file would overwrite the input {}; inputs are never written",
                i.display()
            ));
        }
    }
    if recipe.path.canonicalize().is_ok_and(|r| r == abs) {
        return refuse("the lock file would overwrite the recipe".into());
    }
    if abs.is_dir() {
        return refuse("it is a folder; --lock takes a file path".into());
    }
    if abs.is_file() && !force && Lock::read(&abs).is_err() {
        return refuse(
            "the file exists and is not a smelt lock; pass --force to replace it".into(),
        );
    }
    Ok(())
}

/// Writes config.json, the tokenizer files and the model card into the output folder (before
/// the tensors: the GGUF route reads config and tokenizer from there); adds warnings.
fn write_small_files(
    plan: &Plan,
    recipe: &Recipe,
    opts: &MergeOptions,
    dir: &OutputDir,
    name: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<WrittenFile>> {
    let mut files = Vec::new();
    if let Some(cfg) = &plan.config {
        let text = serde_json::to_string_pretty(cfg).expect("json") + "\n";
        files.push(output::write_file(
            dir.path(),
            "config.json",
            text.as_bytes(),
        )?);
    } else {
        warnings.push("no config.json written: the donor model has none".into());
    }
    if plan.tokenizer.is_some() {
        files.extend(output::write_tokenizer(plan, dir.path())?);
    } else if opts.copy_tokenizer || opts.gguf.is_some() {
        let (f, w) = output::copy_tokenizer(plan, dir.path())?;
        files.extend(f);
        warnings.extend(w);
    } else if plan.chat_template.is_some() {
        warnings.push(
            "a chat_template is set but no tokenizer is written (--no-copy-tokenizer); the template is not saved"
                .into(),
        );
    }
    if opts.write_card {
        files.push(output::write_file(
            dir.path(),
            "README.md",
            output::model_card(plan, &recipe.text, name).as_bytes(),
        )?);
        files.push(output::write_file(
            dir.path(),
            "mergekit_config.yml",
            recipe.text.as_bytes(),
        )?);
    }
    Ok(files)
}

/// The plan options, with `--locked`'s hub commits added (hub inputs resolved at the locked
/// commit rather than where their branch points now).
pub fn locked_plan_options(opts: &MergeOptions) -> PlanOptions {
    let mut p = opts.plan.clone();
    for i in opts.locked.iter().flat_map(|l| &l.inputs) {
        if let Some(c) = &i.commit {
            p.hub_commits
                .entry(i.reference.clone())
                .or_insert_with(|| c.clone());
        }
    }
    p
}

/// Runs `recipe` into the folder `out`.
pub fn run(
    recipe: &Recipe,
    out: &Path,
    opts: &MergeOptions,
    progress: Option<&(dyn Fn(&Progress) + Sync)>,
) -> Result<MergeReport> {
    let start = Instant::now();
    let plan = plan(recipe, &locked_plan_options(opts))?;
    let cache = HashCache::load(opts.hash_cache.clone());
    check_locked(&plan, recipe, opts, &cache)?;
    let inputs: Vec<PathBuf> = plan
        .models
        .iter()
        .flat_map(|m| std::iter::once(m.path.clone()).chain(m.lora_path.clone()))
        .collect();
    if let Some(p) = &opts.lock_path {
        check_lock_path(p, &inputs, recipe, opts.force)?;
    }
    let dir = OutputDir::prepare(out, opts.force, &inputs)?;
    let name = dir
        .target()
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    // the small files first: the GGUF route reads config and tokenizer from the output
    let mut warnings = plan.warnings.clone();
    warnings.extend(dir.swept_notices());
    let mut files = write_small_files(&plan, recipe, opts, &dir, &name, &mut warnings)?;
    let sinks = Sinks::create(&plan, opts, &dir, &name)?;
    // inputs are hashed on a thread of their own while the merge reads them
    let exec_opts = ExecOptions {
        threads: opts.threads,
        memory_budget: opts.memory_budget,
        progress,
    };
    let (merged, inputs) = std::thread::scope(|s| {
        let hashing = s.spawn(|| hash_inputs(&plan, &cache));
        let merged = sinks.with_sink(|sink| exec::execute(&plan, sink, &exec_opts));
        let hashed = hashing.join().unwrap_or_else(|_| {
            Err(Error::ThreadFailed {
                what: "input hashing".into(),
            })
        });
        (merged, hashed)
    });
    warnings.extend(merged?);
    let inputs = inputs?;
    cache.save();
    sinks.finish(&plan, dir.path(), &mut files)?;
    if !opts.copy_tokenizer && opts.gguf.is_some() && plan.tokenizer.is_none() {
        // the tokenizer was needed for the GGUF metadata only
        for f in output::TOKENIZER_FILES {
            let p = dir.path().join(f);
            if p.is_file() {
                std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
                files.retain(|w| w.name != *f);
            }
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    let lock = Lock {
        lock_version: lock::LOCK_VERSION,
        smelt_version: env!("CARGO_PKG_VERSION").to_string(),
        recipe: RecipeRecord {
            sha256: lock::sha256_hex(recipe.text.as_bytes()),
            text: recipe.text.clone(),
        },
        seed: plan.seed,
        options: lock_options(opts),
        inputs,
        outputs: output_records(dir.path(), &files)?,
    };
    let lock_json = lock.to_json();
    files.push(output::write_file(
        dir.path(),
        lock::LOCK_FILE,
        lock_json.as_bytes(),
    )?);
    let out = dir.commit()?;
    if let Some(p) = &opts.lock_path {
        let tmp = p.with_extension("lock.partial");
        std::fs::write(&tmp, &lock_json).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, p).map_err(|e| Error::io(p, e))?;
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(MergeReport {
        out,
        files,
        tensors: plan.tensors.len(),
        input_bytes: plan.input_bytes(),
        output_bytes: plan.output_bytes(),
        warnings,
        elapsed: start.elapsed(),
        lock,
    })
}

/// `--locked`: hashes the inputs and refuses a merge that differs from the lock.
fn check_locked(
    plan: &Plan,
    recipe: &Recipe,
    opts: &MergeOptions,
    cache: &HashCache,
) -> Result<()> {
    let Some(locked) = &opts.locked else {
        return Ok(());
    };
    let inputs = hash_inputs(plan, cache)?;
    cache.save();
    let differences = lock_differences(locked, recipe, plan.seed, &inputs);
    if differences.is_empty() {
        Ok(())
    } else {
        Err(Error::LockMismatch { differences })
    }
}

/// Where the merged tensors go: safetensors shards, a GGUF file (its name and writer), or both.
struct Sinks<'a> {
    shards: Option<SafetensorsWriter<'a>>,
    gguf: Option<(String, GgufSink<'a>)>,
}

impl<'a> Sinks<'a> {
    /// Opens the sinks `opts` asks for in the output folder `dir` of the model `name`.
    fn create(plan: &'a Plan, opts: &MergeOptions, dir: &OutputDir, name: &str) -> Result<Self> {
        let shards = match &opts.gguf {
            Some(g) if !g.keep_safetensors => None,
            _ => Some(SafetensorsWriter::create(plan, dir.path())?),
        };
        let gguf = match &opts.gguf {
            Some(g) => {
                let file = format!("{name}-{}.gguf", g.ftype.name());
                let sink = GgufSink::create(
                    plan,
                    dir.path(),
                    &dir.path().join(&file),
                    g.ftype,
                    g.pre.as_deref(),
                    name,
                )?;
                Some((file, sink))
            }
            None => None,
        };
        Ok(Sinks { shards, gguf })
    }

    /// Calls `f` with one sink writing to every open one.
    fn with_sink<R>(&self, f: impl FnOnce(&dyn TensorSink) -> R) -> R {
        match (&self.shards, &self.gguf) {
            (Some(w), Some((_, g))) => f(&Tee(g, w)),
            (Some(w), None) => f(w),
            (None, Some((_, g))) => f(g),
            (None, None) => unreachable!("at least one sink"),
        }
    }

    /// Completes every file (and the shard index), adding them to `files`.
    fn finish(self, plan: &Plan, dir: &Path, files: &mut Vec<WrittenFile>) -> Result<()> {
        if let Some(w) = self.shards {
            files.extend(w.finish()?);
            if let Some(idx) = output::index_json(plan) {
                files.push(output::write_file(
                    dir,
                    "model.safetensors.index.json",
                    idx.as_bytes(),
                )?);
            }
        }
        if let Some((file, g)) = self.gguf {
            g.finish()?;
            let size = std::fs::metadata(dir.join(&file))
                .map_err(|e| Error::io(dir.join(&file), e))?
                .len();
            files.push(WrittenFile {
                name: file,
                size,
                sha256: None,
            });
        }
        Ok(())
    }
}

/// The lock's record of every file written to `dir` (hashing those not hashed while written).
fn output_records(dir: &Path, files: &[WrittenFile]) -> Result<Vec<FileRecord>> {
    files
        .par_iter()
        .map(|f| {
            let p = dir.join(&f.name);
            let size = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?.len();
            let sha256 = match &f.sha256 {
                Some(h) => h.clone(),
                None => lock::sha256_file(&p)?,
            };
            Ok(FileRecord {
                name: f.name.clone(),
                size,
                sha256,
            })
        })
        .collect()
}
