//! Batches: many recipes, and multi-document YAML in `mergekit-multi`'s format, run as stages
//! of one build.
//!
//! A batch file is split into documents on `---` lines; every document is a recipe with an
//! optional `name`. Named stages write to `INTERMEDIATE_DIR/<name>`; a single-document file
//! without a name is named after its file stem; at most one unnamed document (in a
//! multi-document file) writes to the `--out-path`. A model reference (string or dict form)
//! whose path equals another stage's name is rewritten to that stage's output folder and makes
//! the stage depend on it. Stages run in dependency order (stable: file order, then document
//! order); duplicate names and cycles are errors naming the stages.
//!
//! A stage whose output holds a `smelt.lock` that still matches (the stage's recipe text, the
//! smelt version, the seed and output options, every input file's sha256, every output file
//! present with its locked size) is skipped as up to date. A failing stage loses nothing else:
//! independent stages still run, its dependants are skipped. With several jobs, independent
//! stages run side by side, each with an equal share of the threads and the memory budget.
//! Every stage is built by [`merge::run`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::exec::Progress;
use crate::lock::{self, HashCache, Lock};
use crate::merge::{self, MergeOptions};
use crate::recipe::{ModelRef, ParseOptions, Recipe};

/// Why a batch cannot be built (before any stage runs).
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// A batch file could not be read or one of its documents is not a valid recipe.
    #[error(transparent)]
    Recipe(#[from] Error),
    /// Two stages have the same name.
    #[error("stage name `{name}` is used twice: {first} and {second}")]
    DuplicateName {
        /// The name.
        name: String,
        /// Where it is first used.
        first: String,
        /// Where it is used again.
        second: String,
    },
    /// A stage would write over a model that a stage reads by path.
    #[error(
        "stage {stage} writes {}, which stage {reader} reads as a model path; inputs are never written (refer to a stage's output by its name, or choose another --intermediate-dir)",
        .out.display()
    )]
    OutputIsInput {
        /// The writing stage.
        stage: String,
        /// Its output folder.
        out: PathBuf,
        /// The stage reading that folder by path.
        reader: String,
    },
    /// Stages depend on each other in a circle.
    #[error("dependency cycle between stages: {}", .cycle.join(" -> "))]
    Cycle {
        /// The stage names around the cycle, the first repeated at the end.
        cycle: Vec<String>,
    },
    /// More than one document has no name.
    #[error(
        "{second}: a second unnamed stage (the first is {first}); only one stage may be unnamed (it writes to --out-path); give the others a `name:`"
    )]
    SecondUnnamed {
        /// Where the first unnamed document is.
        first: String,
        /// Where the second one is.
        second: String,
    },
    /// An unnamed stage exists but no `--out-path` was given.
    #[error("{stage}: an unnamed stage writes to --out-path, which is missing")]
    MissingOutPath {
        /// Where the unnamed document is.
        stage: String,
    },
    /// Named stages exist but no intermediate folder was given.
    #[error("stage `{stage}` writes to --intermediate-dir/{stage}; pass --intermediate-dir DIR")]
    MissingIntermediateDir {
        /// The first named stage.
        stage: String,
    },
    /// A stage name that cannot be a folder name.
    #[error(
        "{at}: stage name `{name}` must be a plain folder name (no `/`, not `.` or `..`, not empty)"
    )]
    BadName {
        /// The name.
        name: String,
        /// Where it is.
        at: String,
    },
    /// Two stages would write the same folder.
    #[error("{first} and {second} would both write to {}", .out.display())]
    SameOutput {
        /// The folder.
        out: PathBuf,
        /// The first stage.
        first: String,
        /// The second stage.
        second: String,
    },
    /// A file holds no document at all.
    #[error("{path}: no recipe in this file")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// Where batch outputs go and how stages run.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Folder of the named stages' outputs (`DIR/<name>`).
    pub intermediate_dir: Option<PathBuf>,
    /// Output of the unnamed stage.
    pub out_path: Option<PathBuf>,
    /// Rebuild stages that are up to date.
    pub force: bool,
    /// Stages run side by side at most (0 or 1: one after another).
    pub jobs: usize,
    /// Options of every stage's merge; `threads` and `memory_budget` are the totals split
    /// between jobs. `force`, `lock_path`, `locked` and `gguf` are ignored.
    pub merge: MergeOptions,
    /// How the recipes are read (strict or lenient).
    pub parse: ParseOptions,
}

/// One stage of a batch.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Its name (the document's `name`, the file stem, or `None` for the unnamed stage).
    pub name: Option<String>,
    /// The batch file it comes from.
    pub file: PathBuf,
    /// Document number in the file (1-based).
    pub document: usize,
    /// First line of the document in the file (1-based).
    pub line: usize,
    /// The recipe, its text the stage's own document, its references to other stages
    /// rewritten to their output folders.
    pub recipe: Recipe,
    /// The output folder.
    pub out: PathBuf,
    /// Indexes (into [`Batch::stages`]) of the stages it reads.
    pub deps: Vec<usize>,
}

impl Stage {
    /// The name shown in messages and summaries (`(out-path)` for the unnamed stage).
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| "(out-path)".into())
    }

    /// `file, document N (line L)`.
    pub fn location(&self) -> String {
        format!(
            "{} document {} (line {})",
            self.file.display(),
            self.document,
            self.line
        )
    }
}

/// Stages in the order they run.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Dependencies first; otherwise file order, then document order.
    pub stages: Vec<Stage>,
}

/// How a stage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Merged in this run.
    Built,
    /// Its output still matches its lock; not touched.
    UpToDate,
    /// The merge failed.
    Failed,
    /// Not run because a stage it reads failed or was skipped.
    Skipped,
}

impl Status {
    /// Lowercase words for tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Built => "built",
            Status::UpToDate => "up to date",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }
}

/// The result of one stage.
#[derive(Debug, Clone)]
pub struct StageResult {
    /// How it ended.
    pub status: Status,
    /// Time spent on it (checking and merging).
    pub elapsed: Duration,
    /// Bytes of its output files (0 when failed or skipped).
    pub size: u64,
    /// Why it was rebuilt or skipped, or the error that failed it.
    pub message: Option<String>,
    /// Non-fatal findings of its merge.
    pub warnings: Vec<String>,
}

/// What a batch run reports while it works (from worker threads).
#[derive(Debug)]
pub enum Event<'a> {
    /// A stage's merge starts (`reason`: why it is not up to date).
    Started {
        /// The stage.
        stage: &'a Stage,
        /// Why it is built.
        reason: &'a str,
    },
    /// A stage's merge advanced.
    Progress {
        /// The stage.
        stage: &'a Stage,
        /// Its tensors and bytes.
        progress: &'a Progress,
    },
    /// A stage ended.
    Finished {
        /// The stage.
        stage: &'a Stage,
        /// How.
        result: &'a StageResult,
    },
}

/// A document of a batch file: its first line (1-based) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// First line of the text in the file (1-based).
    pub line: usize,
    /// The text (the whole file for a single-document file).
    pub text: String,
}

fn is_separator(line: &str) -> bool {
    let l = line.trim_end();
    l == "---" || l.starts_with("--- #") || l.starts_with("---\t#")
}

fn is_blank_document(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t == "..."
    })
}

/// Splits YAML text into its documents on `---` lines, dropping documents that hold only
/// comments. A file with one document keeps its whole text (so its lock matches `smelt run`'s).
pub fn split_documents(text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    let mut start = 1;
    let mut cur = String::new();
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if is_separator(line) {
            docs.push(Document {
                line: start,
                text: std::mem::take(&mut cur),
            });
            start = i + 2;
        } else {
            cur.push_str(line);
        }
    }
    docs.push(Document {
        line: start,
        text: cur,
    });
    docs.retain(|d| !is_blank_document(&d.text));
    if docs.len() == 1 {
        return vec![Document {
            line: 1,
            text: text.to_string(),
        }];
    }
    docs
}

/// Parses every document of a batch file into a recipe as `opts` say (the text each recipe
/// keeps is its own document; line numbers in errors count from the top of the file). Stage
/// names are not resolved here.
pub fn parse_documents(
    path: &Path,
    text: &str,
    opts: &ParseOptions,
) -> Result<Vec<(Document, Recipe)>, Error> {
    split_documents(text)
        .into_iter()
        .map(|doc| {
            // blank lines before the document keep the parser's line numbers absolute
            let padded = "\n".repeat(doc.line - 1) + &doc.text;
            let mut recipe = Recipe::parse_with(&padded, path, &file_dir(path), opts)?;
            recipe.text = doc.text.clone();
            Ok((doc, recipe))
        })
        .collect()
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

fn file_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n != "." && n != ".." && !n.contains('/') && !n.contains('\\')
}

/// Every model reference of a recipe, mutable.
fn refs_mut(r: &mut Recipe) -> Vec<&mut ModelRef> {
    let mut out: Vec<&mut ModelRef> = Vec::new();
    out.extend(r.models.iter_mut().map(|m| &mut m.model));
    for s in &mut r.slices {
        out.extend(s.sources.iter_mut().map(|x| &mut x.model));
        out.extend(s.base_model.as_mut());
    }
    out.extend(r.base_model.as_mut());
    out
}

impl Batch {
    /// Reads the batch files into stages in run order.
    pub fn load(files: &[PathBuf], opts: &BatchOptions) -> Result<Batch, BatchError> {
        let mut texts = Vec::new();
        for f in files {
            let t = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
            texts.push((f.clone(), t));
        }
        Batch::from_texts(&texts, opts)
    }

    /// Builds the stages from `(file, text)` pairs (the files are used for messages, stems
    /// and resolving relative model paths).
    pub fn from_texts(
        files: &[(PathBuf, String)],
        opts: &BatchOptions,
    ) -> Result<Batch, BatchError> {
        let mut stages: Vec<Stage> = Vec::new();
        let mut unnamed: Option<String> = None;
        for (path, text) in files {
            let docs = split_documents(text);
            if docs.is_empty() {
                return Err(BatchError::Empty { path: path.clone() });
            }
            let single = docs.len() == 1;
            for (k, (doc, recipe)) in parse_documents(path, text, &opts.parse)?
                .into_iter()
                .enumerate()
            {
                let at = format!("{} document {} (line {})", path.display(), k + 1, doc.line);
                let name = match recipe.name.clone() {
                    Some(n) => Some(n),
                    None if single => Some(
                        path.file_stem()
                            .map(|s| s.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                    ),
                    None => {
                        if let Some(first) = &unnamed {
                            return Err(BatchError::SecondUnnamed {
                                first: first.clone(),
                                second: at,
                            });
                        }
                        unnamed = Some(at.clone());
                        None
                    }
                };
                if let Some(n) = &name {
                    if !valid_name(n) {
                        return Err(BatchError::BadName {
                            name: n.clone(),
                            at,
                        });
                    }
                    if let Some(other) = stages.iter().find(|s| s.name.as_deref() == Some(n)) {
                        return Err(BatchError::DuplicateName {
                            name: n.clone(),
                            first: other.location(),
                            second: at,
                        });
                    }
                }
                let out = match &name {
                    Some(n) => match &opts.intermediate_dir {
                        Some(d) => absolute(d).join(n),
                        None => {
                            return Err(BatchError::MissingIntermediateDir { stage: n.clone() });
                        }
                    },
                    None => match &opts.out_path {
                        Some(p) => absolute(p),
                        None => return Err(BatchError::MissingOutPath { stage: at }),
                    },
                };
                if let Some(other) = stages.iter().find(|s| s.out == out) {
                    return Err(BatchError::SameOutput {
                        out,
                        first: other.location(),
                        second: at,
                    });
                }
                stages.push(Stage {
                    name,
                    file: path.clone(),
                    document: k + 1,
                    line: doc.line,
                    recipe,
                    out,
                    deps: Vec::new(),
                });
            }
        }
        // references to other stages become their output folders
        let outs: BTreeMap<String, (usize, PathBuf)> = stages
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.name.clone().map(|n| (n, (i, s.out.clone()))))
            .collect();
        let mut raw_inputs: Vec<(usize, PathBuf)> = Vec::new();
        for (si, s) in stages.iter_mut().enumerate() {
            let mut deps = Vec::new();
            let dir = s.recipe.dir.clone();
            for r in refs_mut(&mut s.recipe) {
                if let Some((i, out)) = outs.get(&r.path) {
                    r.path = out.to_string_lossy().into_owned();
                    if !deps.contains(i) {
                        deps.push(*i);
                    }
                } else {
                    // models on disk only (a hub id names no local path)
                    let p = r.path.split('+').next().unwrap_or(&r.path);
                    for c in [absolute(&dir.join(p)), absolute(Path::new(p))] {
                        if c.exists() {
                            raw_inputs.push((si, c));
                        }
                    }
                }
            }
            deps.sort_unstable();
            s.deps = deps;
        }
        check_outputs_against_inputs(&stages, &raw_inputs)?;
        let order = topo_order(&stages)?;
        let mut new_index = vec![0; stages.len()];
        for (new, &old) in order.iter().enumerate() {
            new_index[old] = new;
        }
        let mut slots: Vec<Option<Stage>> = stages.into_iter().map(Some).collect();
        let mut ordered = Vec::new();
        for &old in &order {
            let mut s = slots[old].take().expect("each stage once");
            s.deps = s.deps.iter().map(|&d| new_index[d]).collect();
            s.deps.sort_unstable();
            ordered.push(s);
        }
        Ok(Batch { stages: ordered })
    }

    /// The most stages of one dependency level (stages at the same distance from the stages
    /// that read nothing else can always run side by side): more jobs than this would only
    /// shrink every job's share of threads and memory.
    pub fn width(&self) -> usize {
        let mut level = vec![0usize; self.stages.len()];
        let mut count: BTreeMap<usize, usize> = BTreeMap::new();
        for (i, s) in self.stages.iter().enumerate() {
            level[i] = s.deps.iter().map(|&d| level[d] + 1).max().unwrap_or(0);
            *count.entry(level[i]).or_default() += 1;
        }
        count.values().copied().max().unwrap_or(1)
    }

    /// Indexes of the stages that read stage `i`, directly or not.
    pub fn dependants(&self, i: usize) -> Vec<usize> {
        let mut hit = vec![false; self.stages.len()];
        hit[i] = true;
        for (k, s) in self.stages.iter().enumerate() {
            if s.deps.iter().any(|&d| hit[d]) {
                hit[k] = true;
            }
        }
        (0..self.stages.len())
            .filter(|&k| k != i && hit[k])
            .collect()
    }
}

/// Dependencies first; among stages that are ready, the earliest in file/document order.
/// Refuses a stage whose output folder is, contains or lies inside a model another stage reads
/// by path (not by stage name): the stage would replace that model, and nothing orders the two.
fn check_outputs_against_inputs(
    stages: &[Stage],
    raw_inputs: &[(usize, PathBuf)],
) -> Result<(), BatchError> {
    let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    for s in stages {
        let out = canon(&s.out);
        for (reader, input) in raw_inputs {
            let input = canon(input);
            if input == out || input.starts_with(&out) || out.starts_with(&input) {
                return Err(BatchError::OutputIsInput {
                    stage: s.label(),
                    out: s.out.clone(),
                    reader: stages[*reader].label(),
                });
            }
        }
    }
    Ok(())
}

fn topo_order(stages: &[Stage]) -> Result<Vec<usize>, BatchError> {
    let n = stages.len();
    let mut placed = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        let next = (0..n).find(|&i| !placed[i] && stages[i].deps.iter().all(|&d| placed[d]));
        match next {
            Some(i) => {
                placed[i] = true;
                order.push(i);
            }
            None => {
                return Err(BatchError::Cycle {
                    cycle: find_cycle(stages, &placed),
                });
            }
        }
    }
    Ok(order)
}

/// A cycle among the stages not yet placed (each of them has an unplaced dependency).
fn find_cycle(stages: &[Stage], placed: &[bool]) -> Vec<String> {
    let start = (0..stages.len())
        .find(|&i| !placed[i])
        .expect("an unplaced stage");
    let mut path = vec![start];
    loop {
        let cur = *path.last().expect("non-empty");
        let next = stages[cur]
            .deps
            .iter()
            .copied()
            .find(|&d| !placed[d])
            .expect("an unplaced stage has an unplaced dependency");
        if let Some(pos) = path.iter().position(|&p| p == next) {
            // path[pos..] follows "depends on" edges; print it in build order (a -> b: b reads a)
            let mut cyc: Vec<usize> = path[pos..].iter().rev().copied().collect();
            // start at the stage that comes first in the files
            let first = (0..cyc.len()).min_by_key(|&k| cyc[k]).expect("non-empty");
            cyc.rotate_left(first);
            cyc.push(cyc[0]);
            return cyc.iter().map(|&i| stages[i].label()).collect();
        }
        path.push(next);
    }
}

/// Whether a stage's output is still what its lock says, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// The output matches; its files hold this many bytes.
    UpToDate {
        /// Bytes of the output files.
        size: u64,
    },
    /// It must be built, for this reason.
    Stale(String),
}

/// Checks a stage's output against its `smelt.lock`: recipe text, smelt version, seed and
/// options, every input file's digest (through `cache`), every output file present with its
/// locked size.
pub fn freshness(stage: &Stage, opts: &MergeOptions, cache: &HashCache) -> Freshness {
    let lock_path = stage.out.join(lock::LOCK_FILE);
    if !lock_path.is_file() {
        return Freshness::Stale("not built yet".into());
    }
    let lock = match Lock::read(&lock_path) {
        Ok(l) => l,
        Err(e) => return Freshness::Stale(format!("its lock is unreadable: {e}")),
    };
    if lock.smelt_version != env!("CARGO_PKG_VERSION") {
        return Freshness::Stale(format!(
            "built by smelt {}, this is {}",
            lock.smelt_version,
            env!("CARGO_PKG_VERSION")
        ));
    }
    if lock.options != merge::lock_options(opts) {
        return Freshness::Stale("the output options changed".into());
    }
    let plan = match merge::plan(&stage.recipe, &opts.plan) {
        Ok(p) => p,
        Err(e) => return Freshness::Stale(format!("cannot plan it: {e}")),
    };
    let inputs = match merge::hash_inputs(&plan, cache) {
        Ok(i) => i,
        Err(e) => return Freshness::Stale(format!("cannot hash its inputs: {e}")),
    };
    cache.save();
    let diffs = merge::lock_differences(&lock, &stage.recipe, plan.seed, &inputs);
    if let Some(d) = diffs.first() {
        return Freshness::Stale(d.clone());
    }
    let mut size = 0;
    for f in &lock.outputs {
        let p = stage.out.join(&f.name);
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() && m.len() == f.size => size += f.size,
            Ok(_) => return Freshness::Stale(format!("output {} changed size", f.name)),
            Err(_) => return Freshness::Stale(format!("output {} is missing", f.name)),
        }
    }
    Freshness::UpToDate { size }
}

/// The merge options of one job: an equal share of the threads and the memory budget.
fn job_options(opts: &BatchOptions, jobs: usize, out: &Path) -> MergeOptions {
    let mut m = opts.merge.clone();
    let total = if m.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        m.threads
    };
    if jobs > 1 {
        m.threads = (total / jobs).max(1);
        m.memory_budget = (m.memory_budget / jobs as u64).max(1);
    }
    // a stale output of an earlier smelt run is replaced; any other folder needs --force
    m.force = opts.force || out.join(lock::LOCK_FILE).is_file();
    m.lock_path = None;
    m.locked = None;
    m.gguf = None;
    m
}

fn run_stage(
    stage: &Stage,
    opts: &BatchOptions,
    jobs: usize,
    cache: &HashCache,
    events: &(dyn Fn(Event<'_>) + Sync),
) -> StageResult {
    let start = Instant::now();
    let mopts = job_options(opts, jobs, &stage.out);
    let reason = if opts.force {
        "--force".to_string()
    } else {
        match freshness(stage, &mopts, cache) {
            Freshness::UpToDate { size } => {
                return StageResult {
                    status: Status::UpToDate,
                    elapsed: start.elapsed(),
                    size,
                    message: None,
                    warnings: Vec::new(),
                };
            }
            Freshness::Stale(r) => r,
        }
    };
    events(Event::Started {
        stage,
        reason: &reason,
    });
    let cb = |p: &Progress| events(Event::Progress { stage, progress: p });
    match merge::run(&stage.recipe, &stage.out, &mopts, Some(&cb)) {
        Ok(report) => StageResult {
            status: Status::Built,
            elapsed: start.elapsed(),
            // the output files as the lock records them (the lock itself excluded)
            size: report.lock.outputs.iter().map(|f| f.size).sum(),
            message: Some(reason),
            warnings: report.warnings,
        },
        Err(e) => StageResult {
            status: Status::Failed,
            elapsed: start.elapsed(),
            size: 0,
            message: Some(e.to_string()),
            warnings: Vec::new(),
        },
    }
}

struct Sched {
    results: Vec<Option<StageResult>>,
    running: Vec<bool>,
}

impl Sched {
    /// Marks stages whose dependency failed or was skipped; returns the first stage ready to
    /// run (all dependencies built or up to date), if any.
    fn next(&mut self, batch: &Batch) -> (Vec<usize>, Option<usize>) {
        let mut skipped = Vec::new();
        for (i, s) in batch.stages.iter().enumerate() {
            if self.results[i].is_some() || self.running[i] {
                continue;
            }
            let bad = s.deps.iter().find(|&&d| {
                matches!(
                    self.results[d].as_ref().map(|r| r.status),
                    Some(Status::Failed | Status::Skipped)
                )
            });
            if let Some(&d) = bad {
                let dep = &batch.stages[d];
                self.results[i] = Some(StageResult {
                    status: Status::Skipped,
                    elapsed: Duration::ZERO,
                    size: 0,
                    message: Some(format!(
                        "it reads stage `{}`, which {}",
                        dep.label(),
                        if self.results[d].as_ref().map(|r| r.status) == Some(Status::Failed) {
                            "failed"
                        } else {
                            "was skipped"
                        }
                    )),
                    warnings: Vec::new(),
                });
                skipped.push(i);
            }
        }
        let ready = (0..batch.stages.len()).find(|&i| {
            self.results[i].is_none()
                && !self.running[i]
                && batch.stages[i].deps.iter().all(|&d| {
                    matches!(
                        self.results[d].as_ref().map(|r| r.status),
                        Some(Status::Built | Status::UpToDate)
                    )
                })
        });
        if let Some(i) = ready {
            self.running[i] = true;
        }
        (skipped, ready)
    }

    fn done(&self) -> bool {
        self.results.iter().all(Option::is_some)
    }
}

/// Runs every stage (dependencies first; with `jobs > 1` independent stages side by side)
/// and returns one result per stage, in [`Batch::stages`] order. Never stops early: a failed
/// stage's dependants are skipped, everything else runs.
pub fn run(
    batch: &Batch,
    opts: &BatchOptions,
    events: &(dyn Fn(Event<'_>) + Sync),
) -> Vec<StageResult> {
    let n = batch.stages.len();
    let jobs = opts.jobs.max(1).min(batch.width());
    let cache = HashCache::load(opts.merge.hash_cache.clone());
    let state = Mutex::new(Sched {
        results: vec![None; n],
        running: vec![false; n],
    });
    let wake = Condvar::new();
    let worker = || {
        loop {
            let (skipped, next) = {
                let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    let (skipped, next) = st.next(batch);
                    if next.is_some() || !skipped.is_empty() || st.done() {
                        break (
                            skipped
                                .into_iter()
                                .map(|i| (i, st.results[i].clone().expect("set")))
                                .collect::<Vec<_>>(),
                            next,
                        );
                    }
                    st = wake.wait(st).unwrap_or_else(|e| e.into_inner());
                }
            };
            for (i, r) in &skipped {
                events(Event::Finished {
                    stage: &batch.stages[*i],
                    result: r,
                });
            }
            if !skipped.is_empty() {
                wake.notify_all();
            }
            let Some(i) = next else {
                if state.lock().unwrap_or_else(|e| e.into_inner()).done() {
                    wake.notify_all();
                    return;
                }
                continue;
            };
            let stage = &batch.stages[i];
            let result = run_stage(stage, opts, jobs, &cache, events);
            events(Event::Finished {
                stage,
                result: &result,
            });
            {
                let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                st.running[i] = false;
                st.results[i] = Some(result);
            }
            wake.notify_all();
        }
    };
    std::thread::scope(|s| {
        for _ in 1..jobs {
            s.spawn(worker);
        }
        worker();
    });
    cache.save();
    state
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .results
        .into_iter()
        .map(|r| r.expect("every stage ends"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> BatchOptions {
        BatchOptions {
            intermediate_dir: Some(PathBuf::from("/tmp/int")),
            out_path: Some(PathBuf::from("/tmp/final")),
            force: false,
            jobs: 1,
            merge: MergeOptions::default(),
            parse: ParseOptions::default(),
        }
    }

    fn load(files: &[(&str, &str)]) -> Result<Batch, BatchError> {
        let f: Vec<(PathBuf, String)> = files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.to_string()))
            .collect();
        Batch::from_texts(&f, &opts())
    }

    fn doc(name: Option<&str>, models: &[&str]) -> String {
        let mut s = String::new();
        if let Some(n) = name {
            s += &format!("name: {n}\n");
        }
        s += "merge_method: linear\nmodels:\n";
        for m in models {
            s += &format!("  - model: {m}\n    parameters:\n      weight: 1\n");
        }
        s
    }

    fn names(b: &Batch) -> Vec<String> {
        b.stages.iter().map(Stage::label).collect()
    }

    #[test]
    fn split_keeps_lines_and_drops_comment_documents() {
        let t = "# header\n---\na: 1\n--- # two\nb: 2\n\n---\n";
        let d = split_documents(t);
        assert_eq!(
            d,
            vec![
                Document {
                    line: 3,
                    text: "a: 1\n".into()
                },
                Document {
                    line: 5,
                    text: "b: 2\n\n".into()
                }
            ]
        );
        // a single document keeps the whole file
        let one = "# c\n---\na: 1\n";
        assert_eq!(split_documents(one)[0].text, one);
        assert_eq!(split_documents(one)[0].line, 1);
        // `---` inside a line is not a separator
        assert_eq!(split_documents("a: '---'\nb: x---\n").len(), 1);
    }

    #[test]
    fn stages_named_ordered_and_rewritten() {
        let text = format!(
            "{}---\n{}---\n{}",
            doc(None, &["a", "b"]),
            doc(Some("b"), &["m1", "a"]),
            doc(Some("a"), &["m1", "m2"]),
        );
        let b = load(&[("x/multi.yml", &text)]).unwrap();
        assert_eq!(names(&b), ["a", "b", "(out-path)"]);
        assert_eq!(b.stages[0].deps, Vec::<usize>::new());
        assert_eq!(b.stages[1].deps, [0]);
        assert_eq!(b.stages[2].deps, [0, 1]);
        assert_eq!(b.stages[2].out, PathBuf::from("/tmp/final"));
        assert_eq!(b.stages[0].out, PathBuf::from("/tmp/int/a"));
        let refs = b.stages[2].recipe.referenced_models();
        assert_eq!(refs[0].path, "/tmp/int/a");
        assert_eq!(refs[1].path, "/tmp/int/b");
        assert_eq!(b.stages[1].recipe.referenced_models()[0].path, "m1");
        // each stage keeps its own text, and knows where it is
        assert_eq!(b.stages[0].recipe.text, doc(Some("a"), &["m1", "m2"]));
        assert_eq!((b.stages[0].document, b.stages[0].line), (3, 20));
        assert_eq!(b.dependants(0), [1, 2]);
        assert_eq!(b.dependants(1), [2]);
        assert_eq!(b.width(), 1);
    }

    #[test]
    fn dict_references_and_base_models_are_rewritten() {
        let text = "name: s1\nmerge_method: linear\nmodels:\n  - model: m1\n    parameters: {weight: 1}\n---\n\
                    name: s2\nmerge_method: slerp\nbase_model: {model: {path: s1}}\nmodels:\n  - model: {model: s1}\n  - model: m2\nparameters: {t: 0.5}\n";
        let b = load(&[("m.yml", text)]).unwrap();
        let s2 = &b.stages[1];
        assert_eq!(s2.deps, [0]);
        assert_eq!(s2.recipe.base_model.as_ref().unwrap().path, "/tmp/int/s1");
        assert_eq!(s2.recipe.models[0].model.path, "/tmp/int/s1");
    }

    #[test]
    fn single_document_files_take_their_stem_and_link_across_files() {
        let b = load(&[
            ("dir/second.yml", &doc(None, &["first", "m"])),
            ("dir/first.yml", &doc(None, &["m1", "m2"])),
        ])
        .unwrap();
        assert_eq!(names(&b), ["first", "second"]);
        assert_eq!(b.stages[1].deps, [0]);
        assert_eq!(b.stages[1].recipe.dir, PathBuf::from("dir"));
    }

    #[test]
    fn order_is_stable_for_independent_stages() {
        let text = format!(
            "{}---\n{}---\n{}",
            doc(Some("z"), &["m"]),
            doc(Some("y"), &["m"]),
            doc(Some("x"), &["m"]),
        );
        let b = load(&[("f.yml", &text)]).unwrap();
        assert_eq!(names(&b), ["z", "y", "x"]);
        assert_eq!(b.width(), 3);
    }

    #[test]
    fn cycles_are_named() {
        let text = format!(
            "{}---\n{}---\n{}",
            doc(Some("a"), &["c"]),
            doc(Some("b"), &["a"]),
            doc(Some("c"), &["b"]),
        );
        let e = load(&[("f.yml", &text)]).unwrap_err().to_string();
        assert!(e.contains("cycle") && e.contains("a -> b -> c -> a"), "{e}");
        let selfref = doc(Some("s"), &["s", "m"]);
        let e = load(&[(
            "g.yml",
            &format!("{selfref}---\n{}", doc(Some("t"), &["m"])),
        )])
        .unwrap_err()
        .to_string();
        assert!(e.contains("s -> s"), "{e}");
    }

    #[test]
    fn duplicates_and_unnamed_stages_are_errors() {
        let text = format!(
            "{}---\n{}",
            doc(Some("a"), &["m"]),
            doc(Some("a"), &["other"])
        );
        let e = load(&[("f.yml", &text)]).unwrap_err().to_string();
        assert!(
            e.contains("`a` is used twice")
                && e.contains("f.yml document 1 (line 1)")
                && e.contains("f.yml document 2 (line 8)"),
            "{e}"
        );
        // a file stem clashing with a name in another file
        let e = load(&[("a.yml", &doc(None, &["m"])), ("f.yml", &text)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`a` is used twice"), "{e}");
        let text = format!("{}---\n{}", doc(None, &["m"]), doc(None, &["other"]));
        let e = load(&[("f.yml", &text)]).unwrap_err().to_string();
        assert!(e.contains("second unnamed stage"), "{e}");
        let no_out = BatchOptions {
            out_path: None,
            ..opts()
        };
        let text = format!("{}---\n{}", doc(None, &["m"]), doc(Some("a"), &["other"]));
        let e = Batch::from_texts(&[("f.yml".into(), text)], &no_out)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--out-path"), "{e}");
        let clash = BatchOptions {
            out_path: Some(PathBuf::from("/tmp/int/a")),
            ..opts()
        };
        let text = format!("{}---\n{}", doc(Some("a"), &["m"]), doc(None, &["other"]));
        let e = Batch::from_texts(&[("f.yml".into(), text)], &clash)
            .unwrap_err()
            .to_string();
        assert!(e.contains("would both write to /tmp/int/a"), "{e}");
        let e = load(&[("f.yml", &doc(Some("../x"), &["m"]))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("plain folder name"), "{e}");
    }

    #[test]
    fn recipe_errors_keep_absolute_line_numbers() {
        let text = format!(
            "{}---\nname: b\nmerge_method: linear\nmodels:\n  - model: m\n    paramters: {{weight: 1}}\n",
            doc(Some("a"), &["m"])
        );
        let e = load(&[("f.yml", &text)]).unwrap_err().to_string();
        assert!(
            e.contains("f.yml") && e.contains("line 12") && e.contains("paramters"),
            "{e}"
        );
    }

    #[test]
    fn a_failed_stage_skips_its_dependants_only() {
        // models that do not exist: every stage without dependencies fails when planned
        let tmp = tempfile::tempdir().unwrap();
        let text = format!(
            "{}---\n{}---\n{}",
            doc(Some("a"), &["/nonexistent/m1"]),
            doc(Some("b"), &["a"]),
            doc(Some("c"), &["b"]),
        );
        let o = BatchOptions {
            intermediate_dir: Some(tmp.path().to_path_buf()),
            merge: MergeOptions {
                hash_cache: None,
                ..MergeOptions::default()
            },
            ..opts()
        };
        let b = Batch::from_texts(&[("f.yml".into(), text)], &o).unwrap();
        let seen = Mutex::new(Vec::new());
        let r = run(&b, &o, &|e| {
            if let Event::Finished { stage, result } = e {
                seen.lock().unwrap().push((stage.label(), result.status));
            }
        });
        let st: Vec<Status> = r.iter().map(|r| r.status).collect();
        assert_eq!(st, [Status::Failed, Status::Skipped, Status::Skipped]);
        assert!(r[0].message.as_ref().unwrap().contains("/nonexistent/m1"));
        assert!(r[1].message.as_ref().unwrap().contains("`a`, which failed"));
        assert!(
            r[2].message
                .as_ref()
                .unwrap()
                .contains("`b`, which was skipped")
        );
        assert_eq!(seen.into_inner().unwrap().len(), 3);
    }

    #[test]
    fn jobs_run_independent_stages_side_by_side() {
        let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/tiny-llama");
        let m = |n: &str| fx.join(n).display().to_string();
        let slerp = |name: &str, a: &str, b: &str| {
            format!(
                "name: {name}\nmodels:\n  - model: {a}\n  - model: {b}\nmerge_method: slerp\n\
                 base_model: {a}\nparameters:\n  t: 0.5\ndtype: float32\n"
            )
        };
        let text = format!(
            "{}---\n{}---\n{}",
            slerp("p", &m("ft1"), &m("ft2")),
            slerp("q", &m("ft2"), &m("ft3")),
            doc(Some("r"), &["p", "q"]),
        );
        let tmp = tempfile::tempdir().unwrap();
        let o = BatchOptions {
            intermediate_dir: Some(tmp.path().to_path_buf()),
            jobs: 2,
            merge: MergeOptions {
                hash_cache: None,
                threads: 2,
                ..MergeOptions::default()
            },
            ..opts()
        };
        let b = Batch::from_texts(&[("f.yml".into(), text)], &o).unwrap();
        // (running now, most at once, the order of starts and ends)
        let log = Mutex::new((0usize, 0usize, Vec::new()));
        let r = run(&b, &o, &|e| {
            let mut l = log.lock().unwrap();
            match e {
                Event::Started { stage, .. } => {
                    l.0 += 1;
                    l.1 = l.1.max(l.0);
                    l.2.push(format!("start {}", stage.label()));
                }
                Event::Finished { stage, .. } => {
                    l.0 -= 1;
                    l.2.push(format!("end {}", stage.label()));
                }
                Event::Progress { .. } => {}
            }
        });
        assert!(r.iter().all(|r| r.status == Status::Built), "{r:?}");
        let (_, most, order) = log.into_inner().unwrap();
        assert_eq!(most, 2, "{order:?}");
        let at = |x: &str| order.iter().position(|o| o == x).unwrap();
        assert!(
            at("start r") > at("end p") && at("start r") > at("end q"),
            "{order:?}"
        );
        // each job got half of the threads and of the budget
        let j = job_options(&o, 2, tmp.path());
        assert_eq!(j.threads, 1);
        assert_eq!(j.memory_budget, o.merge.memory_budget / 2);
    }
}
