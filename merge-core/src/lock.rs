//! Lock files: what a merge read and wrote, by sha256, so a merge checked into git can be
//! rebuilt bit for bit and a model folder proven to be what its recipe made.
//!
//! `smelt.lock` is JSON with a format version, the smelt version, the recipe text and its
//! sha256, the seed, the options that shape the output, every input model (reference as
//! written, where it was found, every file read with size and sha256: the hub's LFS oid), and
//! every file written. It holds no timestamps or absolute machine state beyond the resolved
//! paths, so the same merge writes the same lock.
//!
//! Hashing 100 GB twice is wasteful: [`HashCache`] remembers digests by (path, size, mtime,
//! inode) in `$SMELT_CACHE_DIR` (default `$XDG_CACHE_HOME/smelt` or `~/.cache/smelt`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The lock format version this build writes and reads.
pub const LOCK_VERSION: u32 = 1;

/// The file name of the lock inside an output folder.
pub const LOCK_FILE: &str = "smelt.lock";

/// One file with its size and sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// File name relative to its folder.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex sha256 of the content.
    pub sha256: String,
}

/// One input model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRecord {
    /// The reference as written in the recipe.
    pub reference: String,
    /// Where it was found when locked.
    pub path: PathBuf,
    /// Every file read from `path`.
    pub files: Vec<FileRecord>,
    /// The LoRA adapter folder, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_path: Option<PathBuf>,
    /// Every file read from the adapter folder.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lora_files: Vec<FileRecord>,
    /// The hub commit the model was read at, when it came from the Hugging Face cache
    /// (`--locked` resolves the reference to this commit, downloading it if need be).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// The recipe section of a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipeRecord {
    /// sha256 of the recipe text.
    pub sha256: String,
    /// The recipe text, verbatim.
    pub text: String,
}

/// A lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    /// [`LOCK_VERSION`].
    pub lock_version: u32,
    /// The smelt version that wrote it.
    pub smelt_version: String,
    /// The recipe.
    pub recipe: RecipeRecord,
    /// The random seed.
    pub seed: u64,
    /// Options that shape the output (shard size, tokenizer copy, model card, ...).
    pub options: BTreeMap<String, String>,
    /// The inputs, in the plan's order.
    pub inputs: Vec<InputRecord>,
    /// Every file written into the output folder (the lock itself excluded).
    pub outputs: Vec<FileRecord>,
}

impl Lock {
    /// Reads a lock file.
    pub fn read(path: &Path) -> Result<Lock> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let lock: Lock = serde_json::from_str(&text).map_err(|e| Error::Output {
            path: path.to_path_buf(),
            reason: format!("not a valid smelt lock file: {e}"),
        })?;
        if lock.lock_version != LOCK_VERSION {
            return Err(Error::Output {
                path: path.to_path_buf(),
                reason: format!(
                    "lock format version {} is not supported by this smelt (which reads version {LOCK_VERSION})",
                    lock.lock_version
                ),
            });
        }
        Ok(lock)
    }

    /// The lock as pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("lock serializes") + "\n"
    }
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a byte slice, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// sha256 of a file's content, hex, read in 8 MiB blocks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
struct CacheKey {
    path: PathBuf,
    size: u64,
    mtime_ns: i128,
    inode: u64,
}

fn cache_key(path: &Path) -> Result<CacheKey> {
    use std::os::unix::fs::MetadataExt;
    let abs = path.canonicalize().map_err(|e| Error::io(path, e))?;
    let m = std::fs::metadata(&abs).map_err(|e| Error::io(path, e))?;
    Ok(CacheKey {
        path: abs,
        size: m.len(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        inode: m.ino(),
    })
}

/// Digests of files already hashed, keyed by (path, size, mtime, inode).
#[derive(Debug, Default)]
pub struct HashCache {
    file: Option<PathBuf>,
    entries: Mutex<BTreeMap<String, String>>,
    dirty: Mutex<bool>,
}

impl HashCache {
    /// The default cache file: `$SMELT_CACHE_DIR/hashes.json`, else `$XDG_CACHE_HOME/smelt/…`,
    /// else `~/.cache/smelt/…`; `None` when no location is known.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os("SMELT_CACHE_DIR") {
            return Some(PathBuf::from(d).join("hashes.json"));
        }
        if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
            return Some(PathBuf::from(d).join("smelt/hashes.json"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/smelt/hashes.json"))
    }

    /// Loads the cache at `file` (missing or unreadable: empty).
    pub fn load(file: Option<PathBuf>) -> HashCache {
        let entries = file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        HashCache {
            file,
            entries: Mutex::new(entries),
            dirty: Mutex::new(false),
        }
    }

    /// A cache that remembers nothing between runs.
    pub fn in_memory() -> HashCache {
        HashCache::default()
    }

    /// The file's record, hashing it unless the cache knows it.
    pub fn record(&self, path: &Path, name: &str) -> Result<FileRecord> {
        let key = cache_key(path)?;
        let k = serde_json::to_string(&key).expect("key");
        if let Some(h) = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&k)
        {
            return Ok(FileRecord {
                name: name.into(),
                size: key.size,
                sha256: h.clone(),
            });
        }
        let h = sha256_file(path)?;
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(k, h.clone());
        *self.dirty.lock().unwrap_or_else(|e| e.into_inner()) = true;
        Ok(FileRecord {
            name: name.into(),
            size: key.size,
            sha256: h,
        })
    }

    /// Writes the cache back (atomically, merged with entries other runs added meanwhile).
    /// Failures are ignored: the cache is an optimisation.
    pub fn save(&self) {
        let Some(file) = &self.file else { return };
        if !*self.dirty.lock().unwrap_or_else(|e| e.into_inner()) {
            return;
        }
        let mut all: BTreeMap<String, String> = std::fs::read_to_string(file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        all.extend(
            self.entries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        );
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, serde_json::to_string(&all).unwrap_or_default()).is_ok() {
            let _ = std::fs::rename(&tmp, file);
        }
    }
}

/// A difference found by a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The file (or input) concerned.
    pub path: PathBuf,
    /// What differs.
    pub what: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.what)
    }
}

/// Compares the files of `dir` with the records: changed, missing and unexpected files.
pub fn verify_files(
    dir: &Path,
    expected: &[FileRecord],
    cache: &HashCache,
    extra_ok: &[&str],
) -> Vec<Mismatch> {
    let mut out = Vec::new();
    for r in expected {
        let p = dir.join(&r.name);
        if !p.is_file() {
            out.push(Mismatch {
                path: p,
                what: "missing".into(),
            });
            continue;
        }
        match cache.record(&p, &r.name) {
            Ok(got) if got.size != r.size => out.push(Mismatch {
                path: p,
                what: format!("size {} differs from the locked {}", got.size, r.size),
            }),
            Ok(got) if got.sha256 != r.sha256 => out.push(Mismatch {
                path: p,
                what: format!("sha256 {} differs from the locked {}", got.sha256, r.sha256),
            }),
            Ok(_) => {}
            Err(e) => out.push(Mismatch {
                path: p,
                what: e.to_string(),
            }),
        }
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut names: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for n in names {
            if !expected.iter().any(|r| r.name == n) && !extra_ok.contains(&n.as_str()) {
                out.push(Mismatch {
                    path: dir.join(&n),
                    what: "not in the lock".into(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn cache_reuses_and_invalidates() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("w.bin");
        std::fs::write(&f, b"abc").unwrap();
        let cache = HashCache::load(Some(tmp.path().join("cache/hashes.json")));
        let r = cache.record(&f, "w.bin").unwrap();
        assert_eq!(r.sha256, sha256_hex(b"abc"));
        cache.save();
        let again = HashCache::load(Some(tmp.path().join("cache/hashes.json")));
        assert_eq!(again.entries.lock().unwrap().len(), 1);
        // a changed file (size differs) is hashed again
        std::fs::write(&f, b"abcd").unwrap();
        assert_eq!(
            again.record(&f, "w.bin").unwrap().sha256,
            sha256_hex(b"abcd")
        );
    }

    #[test]
    fn verify_reports_changed_missing_and_extra() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("a"), b"1").unwrap();
        std::fs::write(tmp.path().join("b"), b"2").unwrap();
        std::fs::write(tmp.path().join("extra"), b"3").unwrap();
        let rec = |n: &str, c: &[u8]| FileRecord {
            name: n.into(),
            size: c.len() as u64,
            sha256: sha256_hex(c),
        };
        let exp = vec![rec("a", b"1"), rec("b", b"x"), rec("c", b"3")];
        let m = verify_files(tmp.path(), &exp, &HashCache::in_memory(), &[]);
        let text: Vec<String> = m.iter().map(|m| m.to_string()).collect();
        assert_eq!(m.len(), 3, "{text:?}");
        assert!(text[0].ends_with("b: sha256 ") || text[0].contains("/b: sha256"));
        assert!(text[1].contains("/c: missing"));
        assert!(text[2].contains("/extra: not in the lock"));
    }
}
