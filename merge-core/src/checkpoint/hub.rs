//! Offline lookup of hub ids (`org/name`, `org/name@revision`) in the local Hugging Face cache
//! (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`). Nothing is downloaded.

use std::path::{Path, PathBuf};

/// The cache folders searched, in order.
pub fn cache_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("HF_HUB_CACHE") {
        dirs.push(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("HUGGINGFACE_HUB_CACHE") {
        dirs.push(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("HF_HOME") {
        dirs.push(PathBuf::from(d).join("hub"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".cache/huggingface/hub"));
    }
    dirs.dedup();
    dirs
}

/// Whether `s` looks like a hub id (`org/name`, one slash, no leading `.`/`/`/`~`).
pub fn looks_like_hub_id(s: &str) -> bool {
    !s.starts_with(['.', '/', '~']) && s.matches('/').count() <= 1 && !s.is_empty()
}

/// Finds the snapshot folder of `id` at `revision` (default `main`) in `cache`.
pub fn find_in(cache: &Path, id: &str, revision: Option<&str>) -> Option<PathBuf> {
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let rev = revision.unwrap_or("main");
    let commit = if rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit()) {
        rev.to_string()
    } else {
        std::fs::read_to_string(repo.join("refs").join(rev))
            .ok()?
            .trim()
            .to_string()
    };
    let snap = repo.join("snapshots").join(commit);
    snap.is_dir().then_some(snap)
}

/// The commit of a cache snapshot (`.../models--org--name/snapshots/<commit>`, or a file in
/// it); `None` for anything else.
pub fn snapshot_commit(path: &Path) -> Option<String> {
    let dir = if path.is_file() { path.parent()? } else { path };
    let commit = dir.file_name()?.to_str()?;
    let snaps = dir.parent()?;
    let in_repo = snaps.file_name()? == "snapshots"
        && snaps
            .parent()?
            .file_name()?
            .to_str()?
            .starts_with("models--");
    (in_repo && commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| commit.to_string())
}

/// Finds `id` in every cache folder; on failure, the list of places looked at.
pub fn find(id: &str, revision: Option<&str>) -> Result<PathBuf, Vec<PathBuf>> {
    let dirs = cache_dirs();
    for d in &dirs {
        if let Some(p) = find_in(d, id, revision) {
            return Ok(p);
        }
    }
    Err(dirs
        .iter()
        .map(|d| d.join(format!("models--{}", id.replace('/', "--"))))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_refs_and_commits() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("models--org--name");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), commit).unwrap();
        assert_eq!(
            find_in(tmp.path(), "org/name", None).unwrap(),
            repo.join("snapshots").join(commit)
        );
        assert!(find_in(tmp.path(), "org/name", Some(commit)).is_some());
        assert_eq!(
            snapshot_commit(&repo.join("snapshots").join(commit)).as_deref(),
            Some(commit)
        );
        assert_eq!(snapshot_commit(tmp.path()), None);
        assert!(find_in(tmp.path(), "org/name", Some("v2")).is_none());
        assert!(find_in(tmp.path(), "org/other", None).is_none());
        assert!(
            looks_like_hub_id("org/name")
                && !looks_like_hub_id("./a/b")
                && !looks_like_hub_id("a/b/c")
        );
    }
}
