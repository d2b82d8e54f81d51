//! `smelt run` as a library call: open the inputs, plan, execute into a temporary folder,
//! write the small files, and move the folder into place.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::exec::{self, ExecOptions, Progress};
use crate::output::{self, OutputDir};
use crate::plan::{self, Plan, PlanOptions};
use crate::recipe::Recipe;
use crate::writer::{SafetensorsWriter, WrittenFile};

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
}

/// Opens the recipe's models and builds its plan.
pub fn plan(recipe: &Recipe, opts: &PlanOptions) -> Result<Plan> {
    let models = plan::open_models(recipe)?;
    plan::build(recipe, models, opts)
}

/// Runs `recipe` into the folder `out`.
pub fn run(
    recipe: &Recipe,
    out: &Path,
    opts: &MergeOptions,
    progress: Option<&(dyn Fn(&Progress) + Sync)>,
) -> Result<MergeReport> {
    let start = Instant::now();
    let plan = plan(recipe, &opts.plan)?;
    let inputs: Vec<PathBuf> = plan.models.iter().map(|m| m.path.clone()).collect();
    let dir = OutputDir::prepare(out, opts.force, &inputs)?;
    let writer = SafetensorsWriter::create(&plan, dir.path())?;
    exec::execute(
        &plan,
        &writer,
        &ExecOptions {
            threads: opts.threads,
            memory_budget: opts.memory_budget,
            progress,
        },
    )?;
    let mut files = writer.finish()?;
    let mut warnings = plan.warnings.clone();
    if let Some(idx) = output::index_json(&plan) {
        files.push(output::write_file(
            dir.path(),
            "model.safetensors.index.json",
            idx.as_bytes(),
        )?);
    }
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
    if opts.copy_tokenizer {
        let (f, w) = output::copy_tokenizer(&plan, dir.path())?;
        files.extend(f);
        warnings.extend(w);
    }
    if opts.write_card {
        let name = dir
            .target()
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        files.push(output::write_file(
            dir.path(),
            "README.md",
            output::model_card(&plan, &recipe.text, &name).as_bytes(),
        )?);
        files.push(output::write_file(
            dir.path(),
            "mergekit_config.yml",
            recipe.text.as_bytes(),
        )?);
    }
    let out = dir.commit()?;
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(MergeReport {
        out,
        files,
        tensors: plan.tensors.len(),
        input_bytes: plan.input_bytes(),
        output_bytes: plan.output_bytes(),
        warnings,
        elapsed: start.elapsed(),
    })
}
