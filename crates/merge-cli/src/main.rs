//! `smelt`: a thin command-line layer over merge-core. Parses arguments, draws progress,
//! prints warnings and errors; all the work happens in the library.

mod inspect;
mod progress;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use merge_core::merge::{self, MergeOptions};
use merge_core::plan::{self, PlanOptions};
use merge_core::recipe::Recipe;

/// smelt: merge large language models from mergekit recipes, fast and lean.
#[derive(Parser, Debug)]
#[command(name = "smelt", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Merge the models of a mergekit recipe into a Hugging Face model folder.
    Run(RunArgs),
    /// Show what a recipe will compute: every output tensor, its inputs and parameters, and
    /// the bytes and memory the merge needs (opens the models' headers, reads no weights).
    Plan(PlanArgs),
    /// Lint a recipe without opening any model.
    Check(CheckArgs),
    /// List the tensors (dtype, shape, size) of a checkpoint folder or file.
    Inspect(InspectArgs),
}

#[derive(Args, Debug, Clone)]
struct PlanFlags {
    /// Allow merging models of different architectures (uses the first model's).
    #[arg(long)]
    allow_crimes: bool,
    /// Maximum size of an output shard: bytes, with mergekit's suffixes (5B = 5e9 bytes) or
    /// 500MB, 2GB.
    #[arg(long, default_value = "5B", value_parser = parse_size)]
    out_shard_size: i64,
    /// Seed of the random methods (DARE, DELLA, ...).
    #[arg(long, default_value_t = plan::DEFAULT_SEED)]
    random_seed: u64,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The recipe (mergekit YAML).
    recipe: PathBuf,
    /// The output folder (created; must not exist or be empty unless --force).
    out: PathBuf,
    #[command(flatten)]
    plan: PlanFlags,
    /// Worker threads (default: all cores).
    #[arg(long, short = 'j', env = "SMELT_THREADS", default_value_t = 0)]
    threads: usize,
    /// Working memory the merge may hold at once, e.g. 1GB (a single tensor larger than this
    /// still runs, alone).
    #[arg(long, default_value = "1GiB", value_parser = parse_budget)]
    memory_budget: u64,
    /// Copy the base (or first) model's tokenizer files (default).
    #[arg(long, overrides_with = "no_copy_tokenizer")]
    copy_tokenizer: bool,
    /// Do not copy tokenizer files.
    #[arg(long)]
    no_copy_tokenizer: bool,
    /// Do not write README.md and mergekit_config.yml.
    #[arg(long)]
    no_write_model_card: bool,
    /// Replace an existing non-empty output folder.
    #[arg(long)]
    force: bool,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
    /// Accepted for mergekit compatibility; smelt memory-maps its inputs and does not need it.
    #[arg(long, hide = true)]
    lazy_unpickle: bool,
    /// Accepted for mergekit compatibility; smelt runs on the CPU.
    #[arg(long, hide = true)]
    cuda: bool,
    /// Accepted for mergekit compatibility; smelt's memory is bounded by --memory-budget.
    #[arg(long, hide = true)]
    low_cpu_memory: bool,
}

#[derive(Args, Debug)]
struct PlanArgs {
    /// The recipe.
    recipe: PathBuf,
    #[command(flatten)]
    plan: PlanFlags,
    /// Print every tensor (default: a summary and the first tensors of each kind).
    #[arg(long)]
    all: bool,
}

#[derive(Args, Debug)]
struct CheckArgs {
    /// The recipe(s).
    #[arg(required = true)]
    recipes: Vec<PathBuf>,
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// A model folder, a .safetensors file or a hub id in the local cache.
    path: PathBuf,
}

fn parse_size(s: &str) -> Result<i64, String> {
    plan::parse_size(s)
}

fn parse_budget(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    for (suf, m) in [("gib", 1u64 << 30), ("mib", 1 << 20), ("kib", 1 << 10)] {
        if let Some(n) = lower.strip_suffix(suf) {
            let v: f64 = n
                .trim()
                .parse()
                .map_err(|_| format!("invalid size `{s}`"))?;
            return Ok((v * m as f64) as u64);
        }
    }
    plan::parse_size(t).map(|v| v as u64)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn warn(msgs: &[String]) {
    for m in msgs {
        eprintln!("warning: {m}");
    }
}

fn load(path: &Path) -> Result<Recipe> {
    let r = Recipe::load(path)?;
    Ok(r)
}

fn plan_options(f: &PlanFlags) -> PlanOptions {
    PlanOptions {
        allow_crimes: f.allow_crimes,
        shard_size: f.out_shard_size,
        seed: f.random_seed,
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(a) => {
            for (on, flag) in [
                (a.lazy_unpickle, "--lazy-unpickle"),
                (a.cuda, "--cuda"),
                (a.low_cpu_memory, "--low-cpu-memory"),
            ] {
                if on {
                    eprintln!(
                        "note: {flag} is accepted for mergekit compatibility; smelt does not need it"
                    );
                }
            }
            let recipe = load(&a.recipe)?;
            let opts = MergeOptions {
                plan: plan_options(&a.plan),
                threads: a.threads,
                memory_budget: a.memory_budget,
                copy_tokenizer: !a.no_copy_tokenizer,
                write_card: !a.no_write_model_card,
                force: a.force,
            };
            let bar = progress::Bar::new(a.quiet);
            let cb = |p: &merge_core::exec::Progress| bar.update(p);
            let report = merge::run(&recipe, &a.out, &opts, Some(&cb))
                .with_context(|| format!("merging {}", a.recipe.display()))?;
            bar.finish();
            if !a.quiet {
                warn(&report.warnings);
                let secs = report.elapsed.as_secs_f64();
                eprintln!(
                    "wrote {} tensors ({}) to {} in {:.1}s ({} read, {}/s)",
                    report.tensors,
                    progress::human(report.output_bytes),
                    report.out.display(),
                    secs,
                    progress::human(report.input_bytes),
                    progress::human((report.input_bytes as f64 / secs.max(1e-9)) as u64),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan(a) => {
            let recipe = load(&a.recipe)?;
            let p = merge::plan(&recipe, &plan_options(&a.plan))?;
            warn(&p.warnings);
            inspect::print_plan(&p, a.all);
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(a) => {
            let mut bad = 0;
            for path in &a.recipes {
                match load(path).and_then(|r| Ok((plan::check_recipe(&r)?, r))) {
                    Ok((warnings, r)) => {
                        warn(&warnings);
                        println!(
                            "{}: ok ({} merge of {} models{})",
                            path.display(),
                            r.merge_method,
                            r.referenced_models().len(),
                            if warnings.is_empty() {
                                String::new()
                            } else {
                                format!(", {} warnings", warnings.len())
                            }
                        );
                    }
                    Err(e) => {
                        bad += 1;
                        eprintln!("error: {e:#}");
                    }
                }
            }
            Ok(if bad == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Inspect(a) => {
            inspect::inspect(&a.path)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
