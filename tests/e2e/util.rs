//! Test helpers: running the binary, temporary folders, tiny synthetic checkpoints, hashes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

/// The repo root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}

/// A command running the smelt binary.
pub fn smelt() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_smelt"));
    c.env_remove("SMELT_THREADS");
    // never reach the real Hub: a test that downloads points HF_ENDPOINT at its own stand-in
    c.env("HF_HUB_OFFLINE", "1");
    // keep the tests' digest cache out of the user's cache folder
    c.env(
        "SMELT_CACHE_DIR",
        std::env::temp_dir().join(format!("smelt-test-cache-{}", std::process::id())),
    );
    c
}

/// Runs smelt with `args`, returning the output.
pub fn run(args: &[&str]) -> Output {
    smelt().args(args).output().expect("spawn smelt")
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts a failed run: non-zero exit, no panic, every `needles` in stderr.
pub fn assert_fails(o: &Output, needles: &[&str]) {
    let e = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr:\n{e}"
    );
    assert_eq!(o.status.code(), Some(1), "exit code; stderr:\n{e}");
    assert!(!e.contains("panicked"), "panic:\n{e}");
    for n in needles {
        assert!(e.contains(n), "stderr lacks {n:?}:\n{e}");
    }
}

/// Asserts success and returns stderr.
pub fn assert_ok(o: &Output) -> String {
    let e = stderr(o);
    assert!(o.status.success(), "smelt failed:\n{e}\n{}", stdout(o));
    e
}

/// Asserts that nothing was left behind in `parent` for output `name`: no folder of that name
/// and no partial folder.
pub fn assert_no_output(parent: &Path, name: &str) {
    assert!(!parent.join(name).exists(), "output folder {name} exists");
    for e in std::fs::read_dir(parent).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !n.contains("smelt-partial"),
            "partial output left behind: {n}"
        );
    }
}

/// sha256 (hex) of every file in a folder, by name.
pub fn dir_hashes(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let h = Sha256::digest(std::fs::read(&p).unwrap());
            let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
            (p.file_name().unwrap().to_string_lossy().into_owned(), hex)
        })
        .collect();
    v.sort();
    v
}

/// sha256 (hex) of one file.
pub fn sha256_file(path: &Path) -> String {
    let h = Sha256::digest(std::fs::read(path).unwrap());
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// One tensor of a synthetic checkpoint.
pub struct T {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl T {
    /// An F32 tensor filled with `f(i)`.
    pub fn f32(name: &str, shape: &[usize], f: impl Fn(usize) -> f32) -> T {
        let n: usize = shape.iter().product();
        T {
            name: name.into(),
            dtype: "F32",
            shape: shape.to_vec(),
            data: (0..n).flat_map(|i| f(i).to_le_bytes()).collect(),
        }
    }
}

/// Writes a safetensors file.
pub fn write_safetensors(path: &Path, tensors: &[T]) {
    let mut header = String::from("{");
    let mut off = 0;
    for (i, t) in tensors.iter().enumerate() {
        if i > 0 {
            header.push(',');
        }
        header.push_str(&format!(
            "\"{}\":{{\"dtype\":\"{}\",\"shape\":{:?},\"data_offsets\":[{},{}]}}",
            t.name,
            t.dtype,
            t.shape,
            off,
            off + t.data.len()
        ));
        off += t.data.len();
    }
    header.push('}');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    for t in tensors {
        bytes.extend_from_slice(&t.data);
    }
    std::fs::write(path, bytes).unwrap();
}

/// A tiny llama-layout model: `layers` layers, hidden `h`, vocab `v`; values from `seed`.
pub fn tiny_llama(dir: &Path, layers: usize, h: usize, v: usize, seed: f32) -> Vec<T> {
    std::fs::create_dir_all(dir).unwrap();
    let mut ts = vec![T::f32("model.embed_tokens.weight", &[v, h], |i| {
        seed + i as f32 * 1e-3
    })];
    for l in 0..layers {
        for n in [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
        ] {
            ts.push(T::f32(
                &format!("model.layers.{l}.{n}.weight"),
                &[h, h],
                |i| seed * (l + 1) as f32 + i as f32 * 1e-2,
            ));
        }
        ts.push(T::f32(
            &format!("model.layers.{l}.mlp.down_proj.weight"),
            &[h, h],
            |i| seed - i as f32 * 1e-2,
        ));
        ts.push(T::f32(
            &format!("model.layers.{l}.input_layernorm.weight"),
            &[h],
            |_| 1.0 + seed,
        ));
        ts.push(T::f32(
            &format!("model.layers.{l}.post_attention_layernorm.weight"),
            &[h],
            |_| 1.0 - seed,
        ));
    }
    ts.push(T::f32("model.norm.weight", &[h], |_| 1.0));
    ts.push(T::f32("lm_head.weight", &[v, h], |i| {
        seed - i as f32 * 1e-3
    }));
    let cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
        "num_hidden_layers": layers, "vocab_size": v, "torch_dtype": "float32"
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
    ts
}

/// Writes `tensors` as `dir/model.safetensors`.
pub fn save(dir: &Path, tensors: &[T]) {
    write_safetensors(&dir.join("model.safetensors"), tensors);
}

/// Writes a recipe file.
pub fn recipe(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("recipe.yml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Reads every tensor of a safetensors file as (name → (dtype, shape, bytes)).
pub fn read_safetensors(
    path: &Path,
) -> std::collections::BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in h.as_object().unwrap() {
        if k == "__metadata__" {
            continue;
        }
        let o = v["data_offsets"].as_array().unwrap();
        let (s, e) = (
            o[0].as_u64().unwrap() as usize,
            o[1].as_u64().unwrap() as usize,
        );
        let shape = v["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        out.insert(
            k.clone(),
            (
                v["dtype"].as_str().unwrap().to_string(),
                shape,
                b[8 + n + s..8 + n + e].to_vec(),
            ),
        );
    }
    out
}
