//! Partial outputs: the temporary folders and files this process is writing, so that an
//! interruption can remove them, and the sweep that removes those an earlier, killed process
//! left behind.
//!
//! Every output is built under a hidden name carrying the writer's process id
//! (`.NAME.smelt-partial-PID` folders, `.NAME.PID.partial` GGUF files) and renamed into place
//! when complete. A run registers its partial paths here ([`register`]); the command line's
//! SIGINT/SIGTERM handler calls [`remove_all`] before exiting. A `kill -9` cannot be caught:
//! the next run into the same place [`sweep`]s partial paths whose process is gone.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records `path` as a partial output of this process until [`unregister`].
pub fn register(path: &Path) {
    live().push(path.to_path_buf());
}

/// Forgets `path` (it was renamed into place or removed).
pub fn unregister(path: &Path) {
    live().retain(|p| p != path);
}

/// A registration that ends when dropped ([`registered`]).
#[derive(Debug)]
pub struct Registration(PathBuf);

/// Registers `path` until the returned value is dropped.
pub fn registered(path: &Path) -> Registration {
    register(path);
    Registration(path.to_path_buf())
}

impl Drop for Registration {
    fn drop(&mut self) {
        unregister(&self.0);
    }
}

/// Removes every registered partial output (folders and files); for a signal handler's
/// thread, before the process exits. Returns the paths removed.
pub fn remove_all() -> Vec<PathBuf> {
    let paths = std::mem::take(&mut *live());
    remove(paths)
}

fn remove(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    paths
        .into_iter()
        .filter(|p| {
            if p.is_dir() {
                std::fs::remove_dir_all(p).is_ok()
            } else {
                std::fs::remove_file(p).is_ok()
            }
        })
        .collect()
}

/// Whether process `pid` exists (a process we may not signal still exists).
fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// The process id in a partial output's name, if `name` is one for `base`:
/// `.BASE.smelt-partial-PID` or `.BASE.PID.partial`. (A `--force` run moves the folder it
/// replaces to `….smelt-partial-PID.old` for the instant between two renames; that one may
/// hold the only copy of a model, so it is never swept.)
fn partial_pid(name: &str, base: &str) -> Option<u32> {
    let rest = name
        .strip_prefix('.')?
        .strip_prefix(base)?
        .strip_prefix('.')?;
    if let Some(pid) = rest.strip_prefix("smelt-partial-") {
        return pid.parse().ok();
    }
    rest.strip_suffix(".partial")?.parse().ok()
}

/// Removes, in folder `dir`, the partial outputs for the output named `base` whose process is
/// gone. Returns what was removed with the process id that left it.
pub fn sweep(dir: &Path, base: &str) -> Vec<(PathBuf, u32)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = partial_pid(&name, base) else {
            continue;
        };
        if alive(pid) {
            continue;
        }
        let p = e.path();
        let gone = if p.is_dir() {
            std::fs::remove_dir_all(&p).is_ok()
        } else {
            std::fs::remove_file(&p).is_ok()
        };
        if gone {
            removed.push((p, pid));
        }
    }
    removed.sort();
    removed
}

/// The one-line notice for a swept partial output.
pub fn swept_notice(path: &Path, pid: u32) -> String {
    format!(
        "removed {}, left by an interrupted run (process {pid} is gone)",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_partial_outputs() {
        assert_eq!(partial_pid(".out.smelt-partial-42", "out"), Some(42));
        assert_eq!(partial_pid(".out.smelt-partial-42.old", "out"), None);
        assert_eq!(partial_pid(".m.gguf.7.partial", "m.gguf"), Some(7));
        assert_eq!(partial_pid(".other.smelt-partial-42", "out"), None);
        assert_eq!(partial_pid("out", "out"), None);
        assert_eq!(partial_pid(".out.smelt-partial-x", "out"), None);
    }

    #[test]
    fn sweep_removes_only_dead_processes_partials() {
        let dir = tempfile::tempdir().unwrap();
        // a pid far above any pid_max is never a live process
        let dead = dir.path().join(".out.smelt-partial-2000000000");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("model.safetensors"), b"x").unwrap();
        let mine = dir
            .path()
            .join(format!(".out.smelt-partial-{}", std::process::id()));
        std::fs::create_dir(&mine).unwrap();
        let file = dir.path().join(".m.gguf.2000000001.partial");
        std::fs::write(&file, b"x").unwrap();
        let removed = sweep(dir.path(), "out");
        assert_eq!(removed, vec![(dead.clone(), 2_000_000_000)]);
        assert!(!dead.exists() && mine.exists() && file.exists());
        assert_eq!(sweep(dir.path(), "m.gguf").len(), 1);
        assert!(!file.exists());
    }

    #[test]
    fn registered_folders_and_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::create_dir(&a).unwrap();
        std::fs::write(a.join("f"), b"x").unwrap();
        let b = dir.path().join("b");
        std::fs::write(&b, b"x").unwrap();
        register(&a);
        register(&b);
        unregister(&b);
        // (other tests may have partial outputs registered: take only ours)
        let ours: Vec<PathBuf> = live()
            .iter()
            .filter(|p| p.starts_with(dir.path()))
            .cloned()
            .collect();
        assert_eq!(ours, vec![a.clone()]);
        unregister(&a);
        assert_eq!(
            remove(vec![a.clone(), b.clone()]),
            vec![a.clone(), b.clone()]
        );
        assert!(!a.exists() && !b.exists());
    }
}
