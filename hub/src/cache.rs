//! The Hugging Face cache layout, as huggingface_hub writes it, so that transformers,
//! huggingface-cli and mergekit reuse what smelt downloads and smelt reuses theirs:
//!
//! ```text
//! models--org--name/
//!   blobs/<etag>                  file contents, named by ETag (sha256 for LFS files)
//!   blobs/<etag>.incomplete       a download in progress (resumed with a Range request)
//!   snapshots/<commit>/<file>     symlink to ../../blobs/<etag>
//!   refs/<revision>               the commit a branch or tag pointed to
//! .locks/models--org--name/<etag>.lock   held while the blob is written
//! ```

use std::path::{Path, PathBuf};

use crate::error::HubError;

/// `models--org--name` inside `cache`.
pub fn repo_dir(cache: &Path, id: &str) -> PathBuf {
    cache.join(format!("models--{}", id.replace('/', "--")))
}

/// The blob holding the file whose ETag is `etag`.
pub fn blob(cache: &Path, id: &str, etag: &str) -> PathBuf {
    repo_dir(cache, id).join("blobs").join(etag)
}

/// The partial download of a blob.
pub fn incomplete(cache: &Path, id: &str, etag: &str) -> PathBuf {
    repo_dir(cache, id)
        .join("blobs")
        .join(format!("{etag}.incomplete"))
}

/// The lock file taken while a blob is written:
/// `.locks/models--org--name/<etag>.lock`, where huggingface_hub takes it.
pub fn lock_file(cache: &Path, id: &str, etag: &str) -> PathBuf {
    cache
        .join(".locks")
        .join(format!("models--{}", id.replace('/', "--")))
        .join(format!("{etag}.lock"))
}

/// The snapshot folder of a commit.
pub fn snapshot(cache: &Path, id: &str, commit: &str) -> PathBuf {
    repo_dir(cache, id).join("snapshots").join(commit)
}

/// Whether `s` is a full commit sha.
pub fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// Links `snapshots/<commit>/<file>` to its blob (relative, as huggingface_hub does),
/// replacing a link that is already there.
pub fn link(cache: &Path, id: &str, commit: &str, file: &str, etag: &str) -> Result<(), HubError> {
    let dst = snapshot(cache, id, commit).join(file);
    let parent = dst.parent().expect("a snapshot file has a folder");
    std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
    let depth = file.matches('/').count() + 2;
    let target = PathBuf::from("../".repeat(depth)).join("blobs").join(etag);
    if dst.symlink_metadata().is_ok() {
        std::fs::remove_file(&dst).map_err(|e| HubError::io(&dst, e))?;
    }
    std::os::unix::fs::symlink(&target, &dst).map_err(|e| HubError::io(&dst, e))
}

/// Records that `revision` points at `commit` (`refs/<revision>`); a commit needs no ref.
pub fn write_ref(cache: &Path, id: &str, revision: &str, commit: &str) -> Result<(), HubError> {
    if revision == commit {
        return Ok(());
    }
    let p = repo_dir(cache, id).join("refs").join(revision);
    let parent = p.parent().expect("a ref has a folder");
    std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
    let tmp = p.with_extension("smelt-tmp");
    std::fs::write(&tmp, commit).map_err(|e| HubError::io(&tmp, e))?;
    std::fs::rename(&tmp, &p).map_err(|e| HubError::io(&p, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_huggingface_hubs() {
        let tmp = tempfile::tempdir().unwrap();
        let c = tmp.path();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let b = blob(c, "org/name", "abc");
        std::fs::create_dir_all(b.parent().unwrap()).unwrap();
        std::fs::write(&b, b"hello").unwrap();
        link(c, "org/name", commit, "config.json", "abc").unwrap();
        link(c, "org/name", commit, "sub/dir/x.json", "abc").unwrap();
        link(c, "org/name", commit, "config.json", "abc").unwrap();
        write_ref(c, "org/name", "main", commit).unwrap();
        let snap = c.join("models--org--name/snapshots").join(commit);
        assert_eq!(std::fs::read(snap.join("config.json")).unwrap(), b"hello");
        assert_eq!(
            std::fs::read(snap.join("sub/dir/x.json")).unwrap(),
            b"hello"
        );
        assert_eq!(
            std::fs::read_link(snap.join("config.json")).unwrap(),
            PathBuf::from("../../blobs/abc")
        );
        // the offline lookup finds what was written
        assert_eq!(
            merge_core::checkpoint::hub::find_in(c, "org/name", None).unwrap(),
            snap
        );
        assert!(is_commit(commit) && !is_commit("main"));
    }
}
