//! `smelt inspect` and the text form of `smelt plan`.

use std::path::Path;

use anyhow::Result;
use merge_core::checkpoint::Checkpoint;
use merge_core::exec;
use merge_core::plan::Plan;
use smelt_gguf::file::{GgufFile, GgufValue};

use crate::progress::human;

fn show_value(v: &GgufValue) -> String {
    match v {
        GgufValue::String(s) => {
            let s: String = s.chars().take(80).collect::<String>().replace('\n', "\\n");
            format!("{s:?}")
        }
        GgufValue::Array(t, items) => {
            let head: Vec<String> = items.iter().take(4).map(show_value).collect();
            let more = if items.len() > 4 { ", ..." } else { "" };
            format!(
                "{} x {}: [{}{more}]",
                items.len(),
                t.name(),
                head.join(", ")
            )
        }
        GgufValue::U8(x) => x.to_string(),
        GgufValue::I8(x) => x.to_string(),
        GgufValue::U16(x) => x.to_string(),
        GgufValue::I16(x) => x.to_string(),
        GgufValue::U32(x) => x.to_string(),
        GgufValue::I32(x) => x.to_string(),
        GgufValue::U64(x) => x.to_string(),
        GgufValue::I64(x) => x.to_string(),
        GgufValue::F32(x) => x.to_string(),
        GgufValue::F64(x) => x.to_string(),
        GgufValue::Bool(x) => x.to_string(),
    }
}

/// Prints a GGUF file's metadata (with value types) and tensors (type, ggml shape, size).
fn inspect_gguf(path: &Path) -> Result<()> {
    let f = GgufFile::open(path)?;
    println!(
        "{}: GGUF v{}, {} metadata keys, {} tensors, alignment {}",
        path.display(),
        f.version(),
        f.metadata().len(),
        f.tensors().len(),
        f.alignment()
    );
    println!("metadata:");
    for (k, v) in f.metadata() {
        println!("  {k} ({}) = {}", v.value_type().name(), show_value(v));
    }
    println!("tensors:");
    let w = f.tensors().iter().map(|t| t.name.len()).max().unwrap_or(0);
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut params = 0u64;
    for t in f.tensors() {
        *counts.entry(t.ty.name()).or_default() += 1;
        params += t.n_elements();
        println!(
            "  {:<w$}  {:<5} {:<18} {}",
            t.name,
            t.ty.name(),
            format!("{:?}", t.dims),
            human(t.n_bytes())
        );
    }
    let types: Vec<String> = counts.iter().map(|(k, v)| format!("{k} x{v}")).collect();
    println!(
        "total: {params} parameters, {} file, types: {}",
        human(f.file_len()),
        types.join(", ")
    );
    Ok(())
}

/// Prints every tensor of a checkpoint (or GGUF file) and totals.
pub fn inspect(path: &Path) -> Result<()> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return inspect_gguf(path);
    }
    // a local path, else `org/name[@revision]` in the local Hugging Face cache
    let reference = path.to_string_lossy().into_owned();
    let r = merge_core::recipe::ModelRef::parse(&reference).map_err(anyhow::Error::msg)?;
    let resolved = merge_core::plan::resolve_model(&r, Path::new("."))?;
    let ck = Checkpoint::open(&resolved, &reference)?;
    println!(
        "{}: {} tensors in {} file(s)",
        path.display(),
        ck.tensors.len(),
        ck.files.len()
    );
    if let Some(arch) = ck
        .config
        .as_ref()
        .and_then(|c| c.get("architectures"))
        .and_then(|a| a.get(0))
    {
        println!("architecture: {}", arch.as_str().unwrap_or("?"));
    }
    let w = ck.tensors.keys().map(|k| k.len()).max().unwrap_or(0);
    let mut params = 0usize;
    for (name, t) in &ck.tensors {
        params += t.numel();
        println!(
            "  {name:<w$}  {:<5} {:<18} {}",
            t.dtype.to_string(),
            format!("{:?}", t.shape),
            human(t.range.len() as u64)
        );
    }
    println!("total: {params} parameters, {}", human(ck.data_bytes()));
    Ok(())
}

/// Prints a plan.
pub fn print_plan(p: &Plan, all: bool) {
    let info = p.method.info();
    println!("method: {} ({})", info.name, info.pretty_name);
    println!(
        "architecture: {}, {} output layers",
        p.arch.name, p.num_layers
    );
    for (i, m) in p.models.iter().enumerate() {
        let role = if Some(i) == p.base { " [base]" } else { "" };
        let donor = if Some(i) == p.donor {
            " [config/tokenizer donor]"
        } else {
            ""
        };
        println!(
            "model {i}: {} -> {}{role}{donor}",
            m.reference,
            m.path.display()
        );
    }
    if let Some(t) = &p.tokenizer {
        println!(
            "tokenizer: built from the recipe's tokenizer options, vocab_size {} (embedding rows remapped)",
            t.vocab_size
        );
    }
    println!("tensors: {}", p.tensors.len());
    let shown = if all {
        p.tensors.len()
    } else {
        p.tensors.len().min(12)
    };
    for t in &p.tensors[..shown] {
        let srcs: Vec<String> = t
            .sources
            .iter()
            .map(|s| {
                let params: Vec<String> =
                    s.params.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let base = if s.is_base { "*" } else { "" };
                if params.is_empty() {
                    format!("{base}m{}:{}", s.model, s.tensor)
                } else {
                    format!("{base}m{}:{}({})", s.model, s.tensor, params.join(","))
                }
            })
            .collect();
        let global: Vec<String> = t.global.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "  {} {:?} {}->{} [{}] {}",
            t.name,
            t.shape,
            t.math,
            t.out_dtype,
            global.join(","),
            srcs.join(" ")
        );
    }
    if shown < p.tensors.len() {
        println!("  ... {} more (use --all)", p.tensors.len() - shown);
    }
    let peak = p
        .tensors
        .iter()
        .map(|t| exec::tensor_cost(p, t, 1))
        .max()
        .unwrap_or(0);
    println!(
        "shards: {}",
        p.shards
            .iter()
            .map(|s| format!("{} ({} tensors)", s.file, s.tensors.len()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "reads {} of input tensors, writes {}",
        human(p.input_bytes()),
        human(p.output_bytes())
    );
    println!(
        "largest single-tensor working set: {} (the run holds at most --memory-budget, default 1 GiB, plus one such tensor)",
        human(peak)
    );
    println!("seed: {}", p.seed);
}
