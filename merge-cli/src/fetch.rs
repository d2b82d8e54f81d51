//! Models from the Hugging Face Hub on the command line: `smelt fetch`, the download step
//! `run`, `plan` and `batch` take before they open any model, and `check`'s note about models
//! that are neither local nor cached. The Hub client itself is the `smelt-hub` crate (`hub/`).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use merge_core::recipe::Recipe;
use smelt_hub::client::Client;
use smelt_hub::{HubConfig, Progress};

use crate::progress::human;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  smelt fetch recipe.yml                 download every hub model the recipe names
  smelt fetch a.yml b.yml multi.yml      several recipes (and mergekit-multi files) at once
  HF_TOKEN=hf_... smelt fetch gated.yml  a gated or private model
  HF_ENDPOINT=https://mirror.example smelt fetch recipe.yml

Files go to the Hugging Face cache (HF_HUB_CACHE, else HF_HOME/hub, else
~/.cache/huggingface/hub), shared with transformers, huggingface-cli and mergekit. Only what a
merge needs is downloaded (safetensors weights, index, config, tokenizer files); an interrupted
download resumes; every LFS file's sha256 is checked against the Hub's ETag.")]
pub struct FetchArgs {
    /// Recipe files (a file may hold several recipes separated by `---` lines).
    #[arg(required = true)]
    recipes: Vec<PathBuf>,
    #[command(flatten)]
    recipe_flags: crate::RecipeFlags,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
}

/// `smelt fetch`: downloads what the recipes need, merges nothing.
pub fn run(a: &FetchArgs, offline: bool) -> Result<()> {
    let parse = a.recipe_flags.options();
    let mut recipes = Vec::new();
    for p in &a.recipes {
        for (_, r) in crate::batch::recipes_in(p, &parse)? {
            recipes.push(r);
        }
    }
    let refs: Vec<&Recipe> = recipes.iter().collect();
    let stages = stage_names(&a.recipes, &parse);
    let fetched = ensure(&refs, &stages, offline, a.quiet)?;
    if fetched == 0 {
        eprintln!("every hub model the recipes name is already in the Hugging Face cache");
    }
    Ok(())
}

/// Makes sure every hub model the recipes name is in the local cache: lists every missing one
/// at once (with its size), then downloads them; with the network off, that list is the
/// error. References equal to one of `stages` (stages of a multi-recipe file, read by name)
/// are not hub ids. Returns how many models were downloaded.
pub fn ensure(recipes: &[&Recipe], stages: &[String], offline: bool, quiet: bool) -> Result<usize> {
    ensure_at(recipes, stages, &BTreeMap::new(), offline, quiet)
}

/// [`ensure`], the references in `commits` (`--locked`) taken at those commits.
pub fn ensure_at(
    recipes: &[&Recipe],
    stages: &[String],
    commits: &BTreeMap<String, String>,
    offline: bool,
    quiet: bool,
) -> Result<usize> {
    let mut needs = Vec::new();
    for r in recipes {
        needs.extend(smelt_hub::needs_at(r, commits)?);
    }
    needs.retain(|n| !stages.contains(&n.id));
    let missing = smelt_hub::missing(&needs);
    if missing.is_empty() {
        return Ok(0);
    }
    let cfg = HubConfig::from_env(offline);
    if cfg.offline.is_some() {
        return Err(smelt_hub::fetch::offline_error(&missing, &cfg).into());
    }
    let client = Client::new(&cfg);
    let plans = smelt_hub::plan(&client, &cfg, &missing)?;
    let total: Option<u64> = plans.iter().map(|p| p.bytes()).sum();
    if !quiet {
        eprintln!(
            "{} not in the Hugging Face cache; downloading {} from {} into {}:",
            if plans.len() == 1 {
                "1 model is".to_string()
            } else {
                format!("{} models are", plans.len())
            },
            total.map_or("them".to_string(), human),
            cfg.endpoint,
            cfg.cache.display()
        );
        for p in &plans {
            eprintln!(
                "  {} (commit {}, {} files, {})",
                p.need.reference,
                &p.commit[..12],
                p.files.len(),
                p.bytes().map_or("size unknown".to_string(), human)
            );
        }
    }
    let t0 = Instant::now();
    let bar = Bar::new(quiet);
    smelt_hub::download(&client, &cfg, &plans, &|p| bar.update(&p))
        .context("downloading from the Hub")?;
    bar.finish();
    if !quiet {
        eprintln!(
            "downloaded {} in {:.1}s",
            total.map_or("the models".to_string(), human),
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(plans.len())
}

/// The names by which recipes read another stage's output (mergekit-multi): every document's
/// `name`, and the file stem of a single-recipe file (as `smelt batch` names its stages).
pub fn stage_names(files: &[PathBuf], parse: &merge_core::recipe::ParseOptions) -> Vec<String> {
    let mut out = Vec::new();
    for f in files {
        let Ok(recipes) = crate::batch::recipes_in(f, parse) else {
            continue;
        };
        if recipes.len() == 1
            && let Some(stem) = f.file_stem()
        {
            out.push(stem.to_string_lossy().into_owned());
        }
        out.extend(recipes.into_iter().filter_map(|(_, r)| r.name));
    }
    out
}

/// `smelt check`'s notes: models that are neither local nor in the cache (no network);
/// references to `stages` are not hub ids.
pub fn uncached_notes(recipe: &Recipe, stages: &[String]) -> Vec<String> {
    let Ok(mut needs) = smelt_hub::needs(recipe) else {
        return Vec::new();
    };
    needs.retain(|n| !stages.contains(&n.id));
    smelt_hub::missing(&needs)
        .iter()
        .map(|n| {
            format!(
                "model `{}` is neither a local path nor in the Hugging Face cache: `smelt run` will download it (or `smelt fetch` now)",
                n.reference
            )
        })
        .collect()
}

/// The download progress line: bytes, rate and ETA, redrawn on a terminal.
struct Bar {
    enabled: bool,
    state: Mutex<Option<(Instant, u64, f64)>>,
}

impl Bar {
    fn new(quiet: bool) -> Bar {
        Bar {
            enabled: !quiet && std::io::stderr().is_terminal(),
            state: Mutex::new(None),
        }
    }

    fn update(&self, p: &Progress) {
        if !self.enabled {
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let rate = match *st {
            None => 0.0,
            Some((t, _, _)) if now.duration_since(t).as_millis() < 200 => return,
            Some((t, b, r)) => {
                let inst = p.done.saturating_sub(b) as f64 / now.duration_since(t).as_secs_f64();
                if r == 0.0 { inst } else { 0.7 * r + 0.3 * inst }
            }
        };
        *st = Some((now, p.done, rate));
        let eta = if rate > 0.0 {
            format!("ETA {:.0}s", p.total.saturating_sub(p.done) as f64 / rate)
        } else {
            String::new()
        };
        let mut e = std::io::stderr().lock();
        let _ = write!(
            e,
            "\r\x1b[2K[{}/{} files] {} / {}  {}/s  {eta}",
            p.files_done,
            p.files_total,
            human(p.done),
            human(p.total),
            human(rate as u64),
        );
        let _ = e.flush();
    }

    fn finish(&self) {
        if self.enabled {
            eprintln!();
        }
    }
}
