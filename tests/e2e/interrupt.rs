//! Interrupted runs leave nothing that looks like a model, and no debris a later run keeps:
//! SIGINT/SIGTERM remove the partial output; partial folders and GGUF files of killed runs
//! (kill -9) are removed by the next run into the same place, with a one-line notice.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::*;

/// Two f32 models big enough that a debug-build slerp takes seconds on one thread.
fn big_pair(dir: &Path) -> std::path::PathBuf {
    for (name, seed) in [("a", 0.1f32), ("b", 0.2)] {
        let m = dir.join(name);
        let ts = tiny_llama(&m, 6, 768, 4096, seed);
        save(&m, &ts);
    }
    recipe(
        dir,
        &format!(
            "models:\n  - model: {d}/a\n  - model: {d}/b\nmerge_method: slerp\nbase_model: {d}/a\nparameters: {{t: 0.3}}\n",
            d = dir.display()
        ),
    )
}

fn partials(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("smelt-partial") || n.ends_with(".partial"))
        .collect()
}

fn interrupted_run_leaves_nothing(signal: i32) {
    let tmp = tempfile::tempdir().unwrap();
    let r = big_pair(tmp.path());
    let out_parent = tmp.path().join("outs");
    std::fs::create_dir(&out_parent).unwrap();
    let out = out_parent.join("merged");
    let mut child = smelt()
        .args(["run", "-q", "--threads", "1"])
        .arg(&r)
        .arg(&out)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // wait until the partial folder holds a shard being written
    let t0 = Instant::now();
    loop {
        let writing = partials(&out_parent)
            .iter()
            .any(|p| out_parent.join(p).join("model.safetensors").exists());
        if writing {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "merge never started"
        );
        assert!(child.try_wait().unwrap().is_none(), "merge ended too soon");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    let o = child.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "stderr:\n{e}");
    assert!(e.contains("interrupted: removed the partial output"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    assert!(!out.exists(), "an output folder appeared");
    assert!(
        partials(&out_parent).is_empty(),
        "{:?}",
        partials(&out_parent)
    );
}

#[test]
fn ctrl_c_removes_the_partial_output() {
    interrupted_run_leaves_nothing(libc::SIGINT);
}

#[test]
fn sigterm_removes_the_partial_output() {
    interrupted_run_leaves_nothing(libc::SIGTERM);
}

#[test]
fn a_killed_runs_partial_folder_is_removed_by_the_next_run() {
    let tmp = tempfile::tempdir().unwrap();
    // a process id above any pid_max: that process is gone
    let stale = tmp.path().join(".merged.smelt-partial-2000000000");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("model.safetensors"), vec![0u8; 4096]).unwrap();
    let out = tmp.path().join("merged");
    let o = smelt()
        .arg("run")
        .arg(root().join("recipes/linear.yml"))
        .arg(&out)
        .current_dir(root())
        .output()
        .unwrap();
    let e = assert_ok(&o);
    assert!(!stale.exists(), "stale partial folder kept");
    assert!(
        e.contains("left by an interrupted run (process 2000000000 is gone)"),
        "{e}"
    );
    assert!(out.join("config.json").is_file());
}

#[test]
fn a_killed_quantize_runs_partial_file_is_removed_by_the_next_run() {
    let tmp = tempfile::tempdir().unwrap();
    let stale = tmp.path().join(".m.gguf.2000000000.partial");
    std::fs::write(&stale, vec![0u8; 4096]).unwrap();
    let o = smelt()
        .arg("quantize")
        .arg(fixtures().join("gguf/model/gguf-mistral-spm"))
        .arg(tmp.path().join("m.gguf"))
        .args(["-t", "Q8_0"])
        .output()
        .unwrap();
    let e = assert_ok(&o);
    assert!(!stale.exists(), "stale partial file kept");
    assert!(e.contains("left by an interrupted run"), "{e}");
}
