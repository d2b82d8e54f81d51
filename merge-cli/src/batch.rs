//! `smelt batch`: the command's arguments, its progress lines and the summary table. The
//! stages, their order, the up-to-date check and the scheduling live in
//! `merge_core::batch`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use merge_core::batch::{self, Batch, BatchOptions, Event, Stage, StageResult, Status};
use merge_core::merge::MergeOptions;
use merge_core::recipe::{ParseOptions, Recipe};

use crate::progress::human;

#[derive(Args, Debug)]
pub struct BatchArgs {
    /// Recipe files; a file may hold several recipes separated by `---` lines
    /// (mergekit-multi's format).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Folder of the named stages' outputs (DIR/<name>); a single-recipe file without a
    /// `name` is named after its file stem.
    #[arg(long, value_name = "DIR")]
    intermediate_dir: Option<PathBuf>,
    /// Output folder of the one unnamed stage.
    #[arg(long, value_name = "PATH")]
    out_path: Option<PathBuf>,
    /// Rebuild every stage, even those whose output still matches its lock.
    #[arg(long, alias = "no-lazy")]
    force: bool,
    /// Run up to N independent stages side by side (the threads and the memory budget are
    /// split between them).
    #[arg(long, default_value_t = 1, value_name = "N")]
    jobs: usize,
    #[command(flatten)]
    recipe_flags: crate::RecipeFlags,
    #[command(flatten)]
    plan: crate::PlanFlags,
    /// Worker threads in total (default: SMELT_THREADS, else all cores).
    #[arg(long, short = 'j')]
    threads: Option<usize>,
    /// Working memory in total, e.g. 1GB.
    #[arg(long, default_value = "1GiB", value_parser = crate::parse_budget)]
    memory_budget: u64,
    /// Do not copy tokenizer files.
    #[arg(long)]
    no_copy_tokenizer: bool,
    /// Do not write README.md and mergekit_config.yml.
    #[arg(long)]
    no_write_model_card: bool,
    /// No progress output (the summary is still printed).
    #[arg(long, short)]
    quiet: bool,
    /// Accepted for mergekit-multi compatibility (skipping finished stages is the default).
    #[arg(long, hide = true)]
    lazy: bool,
}

/// Reads the one recipe of `path` (`smelt run`, `smelt plan`); a file of several documents
/// is an error pointing at `smelt batch`.
pub fn load_single(path: &Path, opts: &ParseOptions) -> Result<Recipe> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let n = batch::split_documents(&text).len();
    if n > 1 {
        anyhow::bail!(
            "{}: holds {n} recipes separated by `---` lines; run it with `smelt batch {}`",
            path.display(),
            path.display()
        );
    }
    Ok(Recipe::load_with(path, opts)?)
}

/// The recipes of a file for `smelt check`, each with a label: the file, or for a file of
/// several documents every document with its stage name.
pub fn recipes_in(path: &Path, opts: &ParseOptions) -> Result<Vec<(String, Recipe)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let docs = batch::parse_documents(path, &text, opts)?;
    if docs.len() <= 1 {
        return Ok(vec![(
            path.display().to_string(),
            Recipe::load_with(path, opts)?,
        )]);
    }
    Ok(docs
        .into_iter()
        .enumerate()
        .map(|(k, (d, r))| {
            let stage = r
                .name
                .as_deref()
                .map_or("unnamed stage".to_string(), |n| format!("stage {n}"));
            (
                format!(
                    "{} document {} (line {}, {stage})",
                    path.display(),
                    k + 1,
                    d.line
                ),
                r,
            )
        })
        .collect())
}

/// Progress on stderr: a line per stage started and ended, and on a terminal one line redrawn
/// in place with the tensors of every stage running.
struct Reporter {
    quiet: bool,
    live: bool,
    state: Mutex<LiveState>,
}

/// Tensors done and total of every stage running, and when the line was last drawn.
type LiveState = (BTreeMap<String, (usize, usize)>, Option<Instant>);

impl Reporter {
    fn clear(&self, e: &mut impl Write) {
        if self.live {
            let _ = write!(e, "\r\x1b[2K");
        }
    }

    fn event(&self, ev: Event<'_>) {
        if self.quiet {
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut e = std::io::stderr().lock();
        match ev {
            Event::Started { stage, reason } => {
                self.clear(&mut e);
                let _ = writeln!(e, "building {} ({reason})", stage.label());
                st.0.insert(stage.label(), (0, 0));
            }
            Event::Progress { stage, progress } => {
                st.0.insert(
                    stage.label(),
                    (progress.tensors_done, progress.tensors_total),
                );
                let done = progress.tensors_done == progress.tensors_total;
                if !self.live || (!done && st.1.is_some_and(|t| t.elapsed().as_millis() < 100)) {
                    return;
                }
                st.1 = Some(Instant::now());
            }
            Event::Finished { stage, result } => {
                st.0.remove(&stage.label());
                self.clear(&mut e);
                let mut line = format!(
                    "{}: {} ({:.1}s)",
                    stage.label(),
                    result.status.as_str(),
                    result.elapsed.as_secs_f64()
                );
                if matches!(result.status, Status::Failed | Status::Skipped)
                    && let Some(m) = &result.message
                {
                    line += &format!(": {m}");
                }
                let _ = writeln!(e, "{line}");
                for w in &result.warnings {
                    let _ = writeln!(e, "warning: {}: {w}", stage.label());
                }
            }
        }
        if self.live && !st.0.is_empty() {
            let parts: Vec<String> =
                st.0.iter()
                    .map(|(n, (d, t))| format!("[{n} {d}/{t} tensors]"))
                    .collect();
            self.clear(&mut e);
            let _ = write!(e, "{}", parts.join(" "));
        }
        let _ = e.flush();
    }
}

/// The summary table: every stage with its status, time, output size and folder.
pub fn summary(stages: &[Stage], results: &[StageResult]) -> String {
    let rows: Vec<[String; 5]> = stages
        .iter()
        .zip(results)
        .map(|(s, r)| {
            [
                s.label(),
                r.status.as_str().to_string(),
                format!("{:.1}s", r.elapsed.as_secs_f64()),
                if r.size > 0 {
                    human(r.size)
                } else {
                    "-".into()
                },
                s.out.display().to_string(),
            ]
        })
        .collect();
    let head = ["stage", "status", "time", "size", "output"];
    let mut w = head.map(str::len);
    for r in &rows {
        for (k, c) in r.iter().enumerate() {
            w[k] = w[k].max(c.chars().count());
        }
    }
    let line = |c: &[String; 5]| {
        format!(
            "{:<w0$}  {:<w1$}  {:>w2$}  {:>w3$}  {}",
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        )
        .trim_end()
        .to_string()
    };
    let mut out = line(&head.map(String::from)) + "\n";
    for r in &rows {
        out += &line(r);
        out.push('\n');
    }
    let count = |st: Status| results.iter().filter(|r| r.status == st).count();
    out += &format!(
        "{} stages: {} built, {} up to date, {} failed, {} skipped\n",
        results.len(),
        count(Status::Built),
        count(Status::UpToDate),
        count(Status::Failed),
        count(Status::Skipped)
    );
    out
}

/// Runs `smelt batch`.
pub fn run(a: &BatchArgs, offline: bool) -> Result<ExitCode> {
    let opts = BatchOptions {
        intermediate_dir: a.intermediate_dir.clone(),
        out_path: a.out_path.clone(),
        force: a.force,
        jobs: a.jobs,
        merge: MergeOptions {
            plan: crate::plan_options(&a.plan),
            threads: crate::threads(a.threads)?,
            memory_budget: a.memory_budget,
            copy_tokenizer: !a.no_copy_tokenizer,
            write_card: !a.no_write_model_card,
            ..MergeOptions::default()
        },
        parse: a.recipe_flags.options(),
    };
    let b = Batch::load(&a.files, &opts)?;
    let recipes: Vec<&Recipe> = b.stages.iter().map(|s| &s.recipe).collect();
    crate::fetch::ensure(&recipes, &[], offline, a.quiet)?;
    for s in &b.stages {
        for w in &s.recipe.warnings {
            eprintln!("warning: {}: {w}", s.location());
        }
    }
    let reporter = Reporter {
        quiet: a.quiet,
        live: !a.quiet && std::io::stderr().is_terminal(),
        state: Mutex::new((BTreeMap::new(), None)),
    };
    let results = batch::run(&b, &opts, &|e| reporter.event(e));
    print!("{}", summary(&b.stages, &results));
    let mut failed = false;
    for (s, r) in b.stages.iter().zip(&results) {
        if r.status == Status::Failed {
            failed = true;
            eprintln!(
                "error: stage {} ({}): {}",
                s.label(),
                s.location(),
                r.message.as_deref().unwrap_or("failed")
            );
        }
        if r.status == Status::Skipped {
            eprintln!(
                "note: stage {} skipped: {}",
                s.label(),
                r.message.as_deref().unwrap_or("")
            );
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
