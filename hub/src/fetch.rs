//! From recipes to files in the cache: which hub models the recipes need ([`needs`]), which
//! of them are not cached yet ([`missing`]), what downloading them means — commit, files,
//! sizes — asked of the Hub before anything is downloaded ([`plan`]), and the downloads,
//! a few files at a time, each checked before it enters the cache ([`download`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use merge_core::checkpoint::hub;
use merge_core::recipe::{ModelRef, Recipe};

use crate::cache;
use crate::client::{Client, FileMeta};
use crate::config::HubConfig;
use crate::error::HubError;
use crate::select;

/// A hub model a recipe names that is not a local path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// The reference as written (`org/name@rev`).
    pub reference: String,
    /// The repository id.
    pub id: String,
    /// The revision asked for (`None`: `main`).
    pub revision: Option<String>,
    /// The local paths tried before it was taken for a hub id.
    pub looked: Vec<PathBuf>,
}

impl Need {
    /// The revision, `main` by default.
    pub fn rev(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    /// Whether the local cache has it, weights included (a snapshot holding only
    /// `config.json`, as `AutoConfig` leaves it, is not enough).
    pub fn cached(&self) -> bool {
        hub::find(&self.id, self.revision.as_deref()).is_ok_and(|dir| has_weights(&dir))
    }

    /// `model `x` not found: looked in ...`, with the cache folders.
    pub fn not_found(&self) -> String {
        let mut looked: Vec<String> = self
            .looked
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        if let Err(dirs) = hub::find(&self.id, self.revision.as_deref()) {
            looked.extend(dirs.iter().map(|d| d.display().to_string()));
        }
        format!(
            "model `{}` not found: looked in {}",
            self.reference,
            looked.join(", ")
        )
    }
}

/// Whether a snapshot folder holds weights smelt can open: a single file, or an index with
/// every shard it lists, or a LoRA adapter.
pub fn has_weights(dir: &Path) -> bool {
    for (index, single) in [
        (select::ST_INDEX, "model.safetensors"),
        (select::BIN_INDEX, "pytorch_model.bin"),
    ] {
        if dir.join(single).is_file() {
            return true;
        }
        if let Some(v) = std::fs::read_to_string(dir.join(index))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        {
            let shards = select::index_shards(&v);
            return !shards.is_empty() && shards.iter().all(|s| dir.join(s).is_file());
        }
    }
    ["adapter_model.safetensors", "adapter_model.bin"]
        .iter()
        .any(|f| dir.join(f).is_file())
}

fn push_need(out: &mut Vec<Need>, path: &str, revision: Option<&str>, dir: &Path) {
    let p = Path::new(path);
    let looked: Vec<PathBuf> = if p.is_absolute() {
        vec![p.to_path_buf()]
    } else {
        vec![dir.join(p), p.to_path_buf()]
    };
    if looked.iter().any(|c| c.exists()) || !hub::looks_like_hub_id(path) {
        return;
    }
    let need = Need {
        reference: match revision {
            Some(r) => format!("{path}@{r}"),
            None => path.to_string(),
        },
        id: path.to_string(),
        revision: revision.map(String::from),
        looked,
    };
    if !out
        .iter()
        .any(|n| n.id == need.id && n.revision == need.revision)
    {
        out.push(need);
    }
}

/// Every hub model `recipe` names that is not a local path: inputs, LoRA adapters and the
/// `tokenizer_source` model, each once, in recipe order.
pub fn needs(recipe: &Recipe) -> Result<Vec<Need>, HubError> {
    needs_at(recipe, &BTreeMap::new())
}

/// [`needs`], an input whose reference (as written) is in `commits` taken at that commit
/// (`--locked`).
pub fn needs_at(
    recipe: &Recipe,
    commits: &BTreeMap<String, String>,
) -> Result<Vec<Need>, HubError> {
    let mut refs: Vec<ModelRef> = recipe.referenced_models();
    if let Some(t) = merge_core::vocab::VocabOptions::from_recipe(recipe)?.tokenizer
        && let merge_core::vocab::config::SourceKind::Model(r) = t.source
    {
        refs.push(r);
    }
    let mut out = Vec::new();
    for r in &refs {
        let rev = commits.get(&r.to_string()).or(r.revision.as_ref());
        push_need(&mut out, &r.path, rev.map(String::as_str), &recipe.dir);
        if let Some((l, rev)) = &r.lora {
            push_need(&mut out, l, rev.as_deref(), &recipe.dir);
        }
    }
    Ok(out)
}

/// The needs that the local cache does not have, each once.
pub fn missing(needs: &[Need]) -> Vec<Need> {
    let mut out: Vec<Need> = Vec::new();
    for n in needs {
        if !n.cached() && !out.iter().any(|o| o.id == n.id && o.revision == n.revision) {
            out.push(n.clone());
        }
    }
    out
}

/// The error for models missing while the network is off: every one of them.
pub fn offline_error(missing: &[Need], cfg: &HubConfig) -> HubError {
    HubError::Offline {
        missing: missing.iter().map(Need::not_found).collect(),
        cache: cfg.cache.clone(),
        why: cfg.offline.clone().unwrap_or_default(),
    }
}

/// One file to have in the snapshot.
#[derive(Debug, Clone)]
pub struct PlannedFile {
    /// Its path in the repository.
    pub name: String,
    /// What the Hub says about it.
    pub meta: FileMeta,
    /// Whether its blob is already in the cache (nothing to download).
    pub cached: bool,
}

/// A model to download: the commit its revision resolves to and the files a merge needs.
#[derive(Debug, Clone)]
pub struct RepoPlan {
    /// The model.
    pub need: Need,
    /// The commit.
    pub commit: String,
    /// The files.
    pub files: Vec<PlannedFile>,
}

impl RepoPlan {
    /// Bytes to download (`None` when a size is unknown).
    pub fn bytes(&self) -> Option<u64> {
        self.files
            .iter()
            .filter(|f| !f.cached)
            .map(|f| f.meta.size)
            .sum()
    }
}

/// Asks the Hub what each missing model means (commit, files, sizes), reading the weights
/// index (downloaded into the cache) to pick the shards; downloads no weights. Every model's
/// failure is reported, not only the first.
pub fn plan(client: &Client, cfg: &HubConfig, missing: &[Need]) -> Result<Vec<RepoPlan>, HubError> {
    let mut plans = Vec::new();
    let mut errors = Vec::new();
    for n in missing {
        match plan_one(client, cfg, n) {
            Ok(p) => plans.push(p),
            Err(e) => errors.push(e),
        }
    }
    match errors.len() {
        0 => Ok(plans),
        1 => Err(errors.pop().expect("one error")),
        _ => Err(HubError::Several(errors)),
    }
}

fn plan_one(client: &Client, cfg: &HubConfig, n: &Need) -> Result<RepoPlan, HubError> {
    let info = client.repo_info(&n.id, n.rev())?;
    let commit = info.sha.clone();
    let planned = |name: &str| -> Result<PlannedFile, HubError> {
        let meta = client.file_meta(&n.id, &commit, name)?;
        let cached = cache::blob(&cfg.cache, &n.id, &meta.etag).is_file();
        Ok(PlannedFile {
            name: name.to_string(),
            meta,
            cached,
        })
    };
    let mut files = Vec::new();
    let shards = match select::index_file(&info.files) {
        Some(index) => {
            let f = planned(index)?;
            fetch_file(client, cfg, &n.id, &commit, &f, &|_| {})?;
            let path = cache::blob(&cfg.cache, &n.id, &f.meta.etag);
            let text = std::fs::read_to_string(&path).map_err(|e| HubError::io(&path, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| HubError::BadResponse {
                    repo: n.id.clone(),
                    url: client.resolve_url(&n.id, &commit, index),
                    reason: format!("`{index}` is not JSON: {e}"),
                })?;
            files.push(PlannedFile { cached: true, ..f });
            select::index_shards(&v)
        }
        None => Vec::new(),
    };
    for name in select::needed_files(&info.files, &shards) {
        if !files.iter().any(|f| f.name == name) {
            files.push(planned(&name)?);
        }
    }
    Ok(RepoPlan {
        need: n.clone(),
        commit,
        files,
    })
}

/// Downloads one file into its blob (resuming a partial one), checking its size and, for LFS
/// files, its sha256 before the rename that puts it in the cache.
fn fetch_file(
    client: &Client,
    cfg: &HubConfig,
    id: &str,
    commit: &str,
    f: &PlannedFile,
    progress: &dyn Fn(u64),
) -> Result<(), HubError> {
    let blob = cache::blob(&cfg.cache, id, &f.meta.etag);
    if blob.is_file() {
        return Ok(());
    }
    // one writer per blob, across processes (huggingface_hub takes the same lock file)
    let lock_path = cache::lock_file(&cfg.cache, id, &f.meta.etag);
    let lock_dir = lock_path.parent().expect("locks folder");
    std::fs::create_dir_all(lock_dir).map_err(|e| HubError::io(lock_dir, e))?;
    let lock = std::fs::File::create(&lock_path).map_err(|e| HubError::io(&lock_path, e))?;
    lock.lock().map_err(|e| HubError::io(&lock_path, e))?;
    if blob.is_file() {
        // another process finished it while we waited
        return Ok(());
    }
    let part = cache::incomplete(&cfg.cache, id, &f.meta.etag);
    let dir = part.parent().expect("blobs folder");
    std::fs::create_dir_all(dir).map_err(|e| HubError::io(dir, e))?;
    let sha = client.download(id, commit, &f.name, &part, progress)?;
    let got = std::fs::metadata(&part)
        .map_err(|e| HubError::io(&part, e))?
        .len();
    let mut wrong = None;
    if let Some(want) = &f.meta.sha256
        && !want.eq_ignore_ascii_case(&sha)
    {
        wrong = Some(format!("sha256 {sha}, but its ETag says {want}"));
    } else if let Some(size) = f.meta.size
        && size != got
    {
        wrong = Some(format!("{got} bytes, but the Hub announced {size}"));
    }
    if let Some(what) = wrong {
        let _ = std::fs::remove_file(&part);
        return Err(HubError::Corrupt {
            repo: id.to_string(),
            file: f.name.clone(),
            what,
        });
    }
    std::fs::rename(&part, &blob).map_err(|e| HubError::io(&blob, e))
}

/// Where a download stands.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Bytes received (resumed bytes included).
    pub done: u64,
    /// Bytes to receive (sizes the Hub announced).
    pub total: u64,
    /// Files finished.
    pub files_done: usize,
    /// Files to download.
    pub files_total: usize,
}

/// Downloads every file of `plans` not yet in the cache, `cfg.parallel` at a time, then links
/// each complete model's snapshot and records its revision. Files that finished stay in the
/// cache when another fails; a partial file is resumed next time.
pub fn download(
    client: &Client,
    cfg: &HubConfig,
    plans: &[RepoPlan],
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(), HubError> {
    let mut jobs: Vec<(&RepoPlan, &PlannedFile)> = plans
        .iter()
        .flat_map(|p| p.files.iter().filter(|f| !f.cached).map(move |f| (p, f)))
        .collect();
    jobs.sort_by_key(|(_, f)| std::cmp::Reverse(f.meta.size.unwrap_or(0)));
    let total = jobs.iter().map(|(_, f)| f.meta.size.unwrap_or(0)).sum();
    let done = AtomicU64::new(0);
    let files_done = AtomicUsize::new(0);
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let errors = Mutex::new(Vec::new());
    let report = || {
        progress(Progress {
            done: done.load(Ordering::Relaxed),
            total,
            files_done: files_done.load(Ordering::Relaxed),
            files_total: jobs.len(),
        })
    };
    report();
    std::thread::scope(|s| {
        for _ in 0..cfg.parallel.clamp(1, jobs.len().max(1)) {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((p, f)) = jobs.get(i) else { break };
                    let r = fetch_file(client, cfg, &p.need.id, &p.commit, f, &|n| {
                        done.fetch_add(n, Ordering::Relaxed);
                        report();
                    });
                    match r {
                        Ok(()) => {
                            files_done.fetch_add(1, Ordering::Relaxed);
                            report();
                        }
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            errors.lock().expect("errors lock").push(e);
                        }
                    }
                }
            });
        }
    });
    for p in plans {
        let complete = p
            .files
            .iter()
            .all(|f| cache::blob(&cfg.cache, &p.need.id, &f.meta.etag).is_file());
        if complete {
            for f in &p.files {
                cache::link(&cfg.cache, &p.need.id, &p.commit, &f.name, &f.meta.etag)?;
            }
            cache::write_ref(&cfg.cache, &p.need.id, p.need.rev(), &p.commit)?;
        }
    }
    let mut errors = errors.into_inner().expect("errors lock");
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.pop().expect("one error")),
        _ => Err(HubError::Several(errors)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_make_a_snapshot_complete() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::write(d.join("config.json"), "{}").unwrap();
        assert!(!has_weights(d));
        std::fs::write(
            d.join(select::ST_INDEX),
            r#"{"weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors"}}"#,
        )
        .unwrap();
        std::fs::write(d.join("m-1.safetensors"), "").unwrap();
        assert!(!has_weights(d));
        std::fs::write(d.join("m-2.safetensors"), "").unwrap();
        assert!(has_weights(d));
    }
}
