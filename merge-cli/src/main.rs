//! `smelt`: a thin command-line layer over merge-core. Parses arguments, draws progress,
//! prints warnings and errors; all the work happens in the library.

mod batch;
mod fetch;
mod inspect;
mod progress;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use merge_core::merge::{self, MergeOptions};
use merge_core::plan::{self, PlanOptions};
use merge_core::recipe::{ParseOptions, Recipe};

/// smelt: merge large language models from mergekit recipes, fast and lean.
#[derive(Parser, Debug)]
#[command(name = "smelt", version, about, long_about = None, propagate_version = true)]
#[command(
    after_help = "Models from the Hub: a recipe's `org/name` (or `org/name@revision`) that is \
neither a local path nor in the Hugging Face cache (HF_HUB_CACHE, HF_HOME/hub, \
~/.cache/huggingface/hub) is downloaded there before the merge, from HF_ENDPOINT (default \
https://huggingface.co) with HF_TOKEN or the token of `huggingface-cli login`; --offline or \
HF_HUB_OFFLINE=1 forbids the network.

Examples:
  smelt run recipe.yml out/            merge (downloading missing hub models first)
  smelt fetch recipe.yml               only download
  smelt run --offline recipe.yml out/  local and cached models only"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Never use the network: hub models must be local or in the Hugging Face cache (also
    /// HF_HUB_OFFLINE=1). Without it, missing hub models are downloaded (HF_ENDPOINT, HF_TOKEN).
    #[arg(long, global = true)]
    offline: bool,
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
    /// List the tensors (dtype, shape, size) of a checkpoint folder or file, or the metadata and
    /// tensors of a GGUF file.
    Inspect(InspectArgs),
    /// Rewrite a checkpoint (PyTorch .bin, sharded or not, or `model+lora`) as safetensors with
    /// the same tensor names, with its config and tokenizer files.
    Convert(ConvertArgs),
    /// Check that a merged folder still matches its smelt.lock (and, with --inputs, that the
    /// input models are the ones that were locked). Names every file that differs.
    Verify(VerifyArgs),
    /// Convert a Hugging Face model folder to a GGUF file for llama.cpp, ollama and LM Studio
    /// (F32/F16/BF16 or a llama.cpp quantization such as Q4_K_M).
    Quantize(QuantizeArgs),
    /// Run many recipes, and multi-document YAML (mergekit-multi): named stages, later ones
    /// reading earlier ones by name, in dependency order; stages whose output still matches
    /// its lock are skipped; prints a summary table.
    Batch(batch::BatchArgs),
    /// Download every hub model the recipes name into the Hugging Face cache, and merge
    /// nothing (`run`, `plan` and `batch` download what is missing by themselves).
    Fetch(fetch::FetchArgs),
}

#[derive(Args, Debug)]
struct ConvertArgs {
    /// The model: a folder, a weights file, or `MODEL+LORA_ADAPTER`.
    model: String,
    /// The output folder.
    out: PathBuf,
    /// Maximum size of an output shard (as for `run`).
    #[arg(long, default_value = "5B", value_parser = parse_size)]
    out_shard_size: i64,
    /// Worker threads (default: SMELT_THREADS, else all cores).
    #[arg(long, short = 'j')]
    threads: Option<usize>,
    /// Replace a non-empty output folder.
    #[arg(long)]
    force: bool,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// The merged model folder (holding smelt.lock).
    out: PathBuf,
    /// Also hash the input models recorded in the lock.
    #[arg(long)]
    inputs: bool,
    /// Hash inputs again even where the digest cache knows them.
    #[arg(long)]
    rehash: bool,
}

#[derive(Args, Debug)]
struct QuantizeArgs {
    /// The Hugging Face model folder (config.json, safetensors, tokenizer files).
    model: PathBuf,
    /// The GGUF file to write (or give it with -o; default: NAME-TYPE.gguf in the current
    /// folder, NAME being the model folder's name).
    out: Option<PathBuf>,
    /// The GGUF file to write.
    #[arg(long = "output", short = 'o', conflicts_with = "out")]
    output: Option<PathBuf>,
    /// llama.cpp file type: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K_S,
    /// Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K (case-insensitive).
    #[arg(long = "type", short = 't', default_value = "Q4_K_M")]
    ftype: String,
    /// llama.cpp pre-tokenizer name for a byte-level BPE tokenizer smelt does not recognise
    /// (tokenizer.ggml.pre, e.g. llama-bpe, qwen2, gpt-2).
    #[arg(long)]
    pre: Option<String>,
    /// Worker threads (default: SMELT_THREADS, else all cores).
    #[arg(long, short = 'j')]
    threads: Option<usize>,
    /// Replace an existing output file.
    #[arg(long)]
    force: bool,
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

/// How recipes are read (`run`, `plan`, `check`, `batch`).
#[derive(Args, Debug, Clone)]
pub(crate) struct RecipeFlags {
    /// Read the recipe as mergekit does: unknown keys and parameters are ignored with a
    /// warning (e.g. `tokenzer_source: union`, `nomalize: true`), a key given twice keeps its
    /// last value, and `tokenizer_source: model:PATH` means PATH. Without it each is an error.
    ///
    /// Example: `smelt run --lenient old-recipe.yml out/` runs a recipe that ran under
    /// mergekit unchanged and gives mergekit's result.
    #[arg(long)]
    lenient: bool,
}

impl RecipeFlags {
    pub(crate) fn options(&self) -> ParseOptions {
        ParseOptions {
            lenient: self.lenient,
        }
    }
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The recipe (mergekit YAML).
    recipe: PathBuf,
    /// The output folder (created; must not exist or be empty unless --force).
    out: PathBuf,
    #[command(flatten)]
    recipe_flags: RecipeFlags,
    #[command(flatten)]
    plan: PlanFlags,
    /// Worker threads (default: SMELT_THREADS, else all cores).
    #[arg(long, short = 'j')]
    threads: Option<usize>,
    /// Working memory the merge may hold at once, e.g. 1GiB, 512MB. Tensors larger than this are
    /// streamed in chunks by the methods that can; otherwise such a tensor runs alone.
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
    /// Also write the lock file to PATH (e.g. beside the recipe, to commit it).
    #[arg(long, value_name = "PATH")]
    lock: Option<PathBuf>,
    /// Refuse to merge unless the recipe, seed and every input file equal this lock's.
    #[arg(long, value_name = "LOCK")]
    locked: Option<PathBuf>,
    /// Quantize to GGUF in the same pass: OUT gets NAME-TYPE.gguf (NAME: OUT's folder name; TYPE
    /// e.g. Q4_K_M, Q8_0, F16) with the config, tokenizer and model card, and no safetensors
    /// unless --keep-safetensors.
    #[arg(long, value_name = "TYPE")]
    gguf: Option<String>,
    /// With --gguf: also write the safetensors shards.
    #[arg(long, requires = "gguf")]
    keep_safetensors: bool,
    /// With --gguf: llama.cpp pre-tokenizer name for a BPE tokenizer smelt does not recognise.
    #[arg(long, requires = "gguf")]
    pre: Option<String>,
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
    recipe_flags: RecipeFlags,
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
    #[command(flatten)]
    recipe_flags: RecipeFlags,
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// A model folder, a .safetensors file or a hub id in the local cache.
    path: PathBuf,
}

fn verify(a: &VerifyArgs) -> Result<ExitCode> {
    use merge_core::lock::{self, HashCache, Lock};
    let lock = Lock::read(&a.out.join(lock::LOCK_FILE))?;
    let fresh = HashCache::in_memory();
    let mut diffs = lock::verify_files(&a.out, &lock.outputs, &fresh, &[lock::LOCK_FILE]);
    let mut checked = lock.outputs.len();
    // the recipe recorded in the lock must be the one its digest names
    let recipe_digest = lock::sha256_hex(lock.recipe.text.as_bytes());
    if recipe_digest != lock.recipe.sha256 {
        diffs.push(lock::Mismatch {
            path: a.out.join(lock::LOCK_FILE),
            what: format!(
                "the recipe's sha256 {recipe_digest} differs from the locked {}",
                lock.recipe.sha256
            ),
        });
    }
    if a.inputs {
        let cached;
        let cache = if a.rehash {
            &fresh
        } else {
            cached = HashCache::load(HashCache::default_path());
            &cached
        };
        for inp in &lock.inputs {
            let dir = if inp.path.is_file() {
                inp.path.parent().map(Path::to_path_buf).unwrap_or_default()
            } else {
                inp.path.clone()
            };
            let mut all = lock::verify_files(&dir, &inp.files, cache, &[]);
            if let Some(l) = &inp.lora_path {
                all.extend(lock::verify_files(l, &inp.lora_files, cache, &[]));
            }
            // other files in an input folder are not the lock's business
            all.retain(|m| m.what != "not in the lock");
            diffs.extend(all);
            checked += inp.files.len() + inp.lora_files.len();
        }
        cache.save();
    }
    for d in &diffs {
        println!("DIFFERS {d}");
    }
    if diffs.is_empty() {
        println!(
            "ok: {checked} files match {}",
            a.out.join(lock::LOCK_FILE).display()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: {} of {checked} locked files differ", diffs.len());
        Ok(ExitCode::FAILURE)
    }
}

/// The worker thread count: `--threads`, else `SMELT_THREADS`, else 0 (all cores); capped at
/// eight per core with a warning (starting tens of thousands of threads would take minutes).
fn threads(flag: Option<usize>) -> Result<usize> {
    let n = match flag {
        Some(n) => n,
        None => match std::env::var("SMELT_THREADS") {
            Ok(v) if !v.trim().is_empty() => v.trim().parse().map_err(|_| {
                anyhow::anyhow!(
                    "SMELT_THREADS={v}: not a number of threads (unset it, or give a count such as 4; 0 means all cores)"
                )
            })?,
            _ => 0,
        },
    };
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let cap = 8 * cores;
    if n > cap {
        eprintln!(
            "warning: {n} threads requested; using {cap} (eight per core of this machine's {cores})"
        );
        return Ok(cap);
    }
    Ok(n)
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
    // Behave like other Unix tools when the reader of our output goes away (`smelt inspect
    // ... | head`): end quietly on SIGPIPE instead of panicking on a failed print.
    // SAFETY: called first thing, before any other thread exists; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Ctrl-C, SIGTERM or SIGHUP: remove the partial output of the run in progress (nothing
    // that looks like a finished model stays behind), then exit as interrupted
    let _ = ctrlc::set_handler(|| {
        for p in merge_core::partial::remove_all() {
            eprintln!("interrupted: removed the partial output {}", p.display());
        }
        std::process::exit(130);
    });
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

fn load(path: &Path, flags: &RecipeFlags) -> Result<Recipe> {
    batch::load_single(path, &flags.options())
}

fn plan_options(f: &PlanFlags) -> PlanOptions {
    PlanOptions {
        allow_crimes: f.allow_crimes,
        shard_size: f.out_shard_size,
        seed: f.random_seed,
        ..PlanOptions::default()
    }
}

/// Runs the subcommand: one function per subcommand.
fn run(cli: Cli) -> Result<ExitCode> {
    let offline = cli.offline;
    match cli.command {
        Command::Run(a) => run_merge(&a, offline),
        Command::Plan(a) => run_plan(&a, offline),
        Command::Check(a) => run_check(&a),
        Command::Inspect(a) => run_inspect(&a),
        Command::Convert(a) => run_convert(&a),
        Command::Verify(a) => verify(&a),
        Command::Quantize(a) => run_quantize(&a),
        Command::Batch(a) => batch::run(&a, offline),
        Command::Fetch(a) => {
            fetch::run(&a, offline)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Merges one recipe into a folder (`smelt run`), downloading missing hub models first.
fn run_merge(a: &RunArgs, offline: bool) -> Result<ExitCode> {
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
    let recipe = load(&a.recipe, &a.recipe_flags)?;
    let opts = MergeOptions {
        plan: plan_options(&a.plan),
        threads: crate::threads(a.threads)?,
        memory_budget: a.memory_budget,
        copy_tokenizer: !a.no_copy_tokenizer,
        write_card: !a.no_write_model_card,
        force: a.force,
        lock_path: a.lock.clone(),
        locked: a
            .locked
            .as_deref()
            .map(merge_core::lock::Lock::read)
            .transpose()?,
        hash_cache: merge_core::lock::HashCache::default_path(),
        gguf: a
            .gguf
            .as_deref()
            .map(|t| -> Result<merge::GgufOptions> {
                Ok(merge::GgufOptions {
                    ftype: smelt_gguf::FileType::parse(t)?,
                    pre: a.pre.clone(),
                    keep_safetensors: a.keep_safetensors,
                })
            })
            .transpose()?,
    };
    // hub models first (with --locked, at the locked commits)
    let commits = merge::locked_plan_options(&opts).hub_commits;
    fetch::ensure_at(&[&recipe], &[], &commits, offline, a.quiet)?;
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

/// Prints what a recipe will compute (`smelt plan`).
fn run_plan(a: &PlanArgs, offline: bool) -> Result<ExitCode> {
    let recipe = load(&a.recipe, &a.recipe_flags)?;
    fetch::ensure(&[&recipe], &[], offline, false)?;
    let p = merge::plan(&recipe, &plan_options(&a.plan))?;
    warn(&p.warnings);
    inspect::print_plan(&p, a.all);
    Ok(ExitCode::SUCCESS)
}

/// Lints recipes without opening models (`smelt check`).
fn run_check(a: &CheckArgs) -> Result<ExitCode> {
    let mut bad = 0;
    let parse = a.recipe_flags.options();
    let stages = fetch::stage_names(&a.recipes, &parse);
    let each = a
        .recipes
        .iter()
        .flat_map(|p| match batch::recipes_in(p, &parse) {
            Ok(v) => v.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        });
    for item in each {
        match item.and_then(|(label, r)| Ok((plan::check_recipe(&r)?, r, label))) {
            Ok((warnings, r, label)) => {
                warn(&warnings);
                // models to download: warned about, not counted as the recipe's
                warn(&fetch::uncached_notes(&r, &stages));
                println!(
                    "{label}: ok ({} merge of {} models{})",
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

/// Lists a checkpoint's or GGUF file's tensors (`smelt inspect`).
fn run_inspect(a: &InspectArgs) -> Result<ExitCode> {
    inspect::inspect(&a.path)?;
    Ok(ExitCode::SUCCESS)
}

/// Rewrites a checkpoint as safetensors (`smelt convert`).
fn run_convert(a: &ConvertArgs) -> Result<ExitCode> {
    let files = merge_core::convert::convert(
        &a.model,
        Path::new("."),
        &a.out,
        a.out_shard_size,
        crate::threads(a.threads)?,
        a.force,
    )
    .with_context(|| format!("converting {}", a.model))?;
    let total: u64 = files.iter().map(|f| f.size).sum();
    eprintln!(
        "wrote {} files ({}) to {}",
        files.len(),
        progress::human(total),
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Converts a model folder to GGUF (`smelt quantize`).
fn run_quantize(a: &QuantizeArgs) -> Result<ExitCode> {
    let ftype = smelt_gguf::FileType::parse(&a.ftype)?;
    let out = match a.out.clone().or(a.output.clone()) {
        Some(p) => p,
        None => {
            let name = std::path::absolute(&a.model)?
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into());
            PathBuf::from(format!("{name}-{}.gguf", ftype.name()))
        }
    };
    if out.exists() && !a.force {
        anyhow::bail!(
            "{} already exists (pass --force to replace it)",
            out.display()
        );
    }
    let t0 = std::time::Instant::now();
    let r = merge_core::gguf::convert_folder(
        &a.model,
        &out,
        ftype,
        a.pre.as_deref(),
        crate::threads(a.threads)?,
    )
    .with_context(|| format!("converting {} to GGUF", a.model.display()))?;
    warn(&r.notices);
    eprintln!(
        "wrote {} ({} {}, {} tensors, {}, pre-tokenizer {}) in {:.1}s",
        out.display(),
        r.arch.name(),
        r.ftype,
        r.tensors,
        progress::human(r.bytes),
        if r.pre.is_empty() { "-" } else { &r.pre },
        t0.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
