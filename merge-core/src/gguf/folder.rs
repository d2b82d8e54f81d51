//! `convert_folder`: a Hugging Face model folder to a GGUF file, like llama.cpp's
//! `convert_hf_to_gguf.py` followed by `llama-quantize`. The format side (the conversion plan,
//! encoding, quantizers, the writer) is [`smelt_gguf`]; this module opens the model as a
//! [`Checkpoint`] (safetensors or torch), converts its tensors in parallel chunks and registers
//! the partial file so an interrupted run leaves nothing behind ([`crate::partial`]).

use std::path::Path;

use rayon::prelude::*;
use smelt_gguf::arch::{self, Arch, Transform};
use smelt_gguf::convert::{HfTensor, PlanOptions, PlannedTensor, encode_tensor, plan, size_label};
use smelt_gguf::file::{GgufLayout, GgufValue, GgufWriter};
use smelt_gguf::{FileType, GgufError, quant};

use crate::checkpoint::Checkpoint;

/// What [`convert_folder`] did.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    /// The architecture written.
    pub arch: Arch,
    /// The file type written.
    pub ftype: FileType,
    /// Number of tensors written.
    pub tensors: usize,
    /// Size of the GGUF file in bytes.
    pub bytes: u64,
    /// `tokenizer.ggml.pre`.
    pub pre: String,
    /// Partial files of interrupted runs removed before writing.
    pub notices: Vec<String>,
}

/// Converts the HF model folder `hf_dir` (safetensors, config.json, tokenizer files) into the
/// GGUF file `out_path` with file type `ftype`, like llama.cpp's `convert_hf_to_gguf.py`
/// followed by `llama-quantize`, using `threads` worker threads (0 = all cores).
///
/// Tensors are converted in parallel, each written at its planned offset; the output is the
/// same at any thread count and appears atomically when complete.
pub fn convert_folder(
    hf_dir: &Path,
    out_path: &Path,
    ftype: FileType,
    pre_override: Option<&str>,
    threads: usize,
) -> crate::Result<ConvertReport> {
    convert_folder_in_chunks(hf_dir, out_path, ftype, pre_override, threads, CHUNK_VALUES)
}

/// [`convert_folder`] with tensors converted about `chunk_values` values at a time.
fn convert_folder_in_chunks(
    hf_dir: &Path,
    out_path: &Path,
    ftype: FileType,
    pre_override: Option<&str>,
    threads: usize,
    chunk_values: usize,
) -> crate::Result<ConvertReport> {
    refuse_input_as_output(hf_dir, out_path)?;
    let ck = Checkpoint::open(hf_dir, &hf_dir.display().to_string())?;
    let config = ck
        .config
        .clone()
        .ok_or_else(|| crate::Error::ModelNotFound {
            reference: hf_dir.display().to_string(),
            reason: "no config.json in the model folder".into(),
        })?;
    let list: Vec<HfTensor> = ck
        .tensors
        .iter()
        .map(|(name, t)| HfTensor {
            name: name.clone(),
            shape: t.shape.iter().map(|&d| d as u64).collect(),
        })
        .collect();
    let plan = plan(
        hf_dir,
        &config,
        &list,
        &PlanOptions {
            ftype,
            pre_override: pre_override.map(String::from),
            name: None,
            general: vec![(
                "general.size_label".into(),
                GgufValue::String(size_label(
                    list.iter().map(|t| t.shape.iter().product::<u64>()).sum(),
                )),
            )],
        },
    )?;
    for t in plan
        .tensors
        .iter()
        .filter(|t| t.transform != Transform::Generated)
    {
        let info = &ck.tensors[&t.source];
        if !info.dtype.is_math() {
            return Err(GgufError::tensor(
                &t.source,
                format!(
                    "dtype {} cannot be converted to GGUF",
                    info.dtype.safetensors_name()
                ),
            )
            .into());
        }
    }
    let layout = GgufLayout::new(&plan.metadata, &plan.specs())?;
    let bytes = layout.total_size();
    let notices = sweep_partials(out_path);
    let writer = GgufWriter::create(out_path, layout)?;
    let _interruptible = crate::partial::registered(writer.partial_path());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| crate::Error::ThreadStart {
            what: "worker threads".into(),
            reason: e.to_string(),
        })?;
    pool.install(|| {
        plan.tensors
            .par_iter()
            .enumerate()
            .try_for_each(|(i, t)| -> crate::Result<()> {
                if t.transform == Transform::Generated {
                    let vals = plan.generated_values(&t.name).unwrap_or(&[]);
                    writer.write_tensor(i, &encode_tensor(t, vals)?)?;
                    return Ok(());
                }
                convert_tensor(&ck, t, i, &writer, chunk_values)
            })
    })?;
    writer.finish()?;
    let pre = plan
        .get("tokenizer.ggml.pre")
        .and_then(GgufValue::as_str)
        .unwrap_or("")
        .to_string();
    Ok(ConvertReport {
        arch: plan.arch,
        ftype,
        tensors: plan.tensors.len(),
        bytes,
        pre,
        notices,
    })
}

/// Refuses an output path that is one of the model folder's own files (its weights, index,
/// config or tokenizer): inputs are never written, even with `--force`. A `.gguf` file inside
/// the folder is fine (llama.cpp's tools write there too).
fn refuse_input_as_output(hf_dir: &Path, out_path: &Path) -> crate::Result<()> {
    let (Ok(dir), Ok(out)) = (hf_dir.canonicalize(), out_path.canonicalize()) else {
        return Ok(()); // the output does not exist yet, or the folder is missing (reported later)
    };
    let is_gguf = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if out == dir || (out.starts_with(&dir) && !is_gguf) {
        return Err(crate::Error::Output {
            path: out_path.to_path_buf(),
            reason: format!(
                "it is a file of the input model {}; inputs are never written",
                hf_dir.display()
            ),
        });
    }
    Ok(())
}

/// Removes the partial files that killed runs left for `out_path`; returns notices.
fn sweep_partials(out_path: &Path) -> Vec<String> {
    let dir = match out_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = out_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    crate::partial::sweep(dir, &name)
        .iter()
        .map(|(p, pid)| crate::partial::swept_notice(p, *pid))
        .collect()
}

/// Values converted per task of [`convert_tensor`].
const CHUNK_VALUES: usize = 65_536;

/// Converts checkpoint tensor `t.source` into tensor `index` of `writer`, a chunk of rows at a
/// time (about `chunk_values` values, rounded up to whole rows, and to whole rotary heads for
/// a permuted matrix) and chunks in parallel: each chunk is read, transformed, checked and quantized in
/// buffers its task reuses, then written at its place. The bytes are those of
/// [`encode_tensor`] on the whole tensor, which still serves permuted tensors that are not
/// matrices.
fn convert_tensor(
    ck: &Checkpoint,
    t: &PlannedTensor,
    index: usize,
    writer: &GgufWriter,
    chunk_values: usize,
) -> crate::Result<()> {
    let info = &ck.tensors[&t.source];
    let numel = info.numel();
    let n_head = match t.transform {
        Transform::PermuteRows { n_head } if t.dims.len() == 2 => n_head as usize,
        Transform::PermuteRows { .. } => {
            let mut vals = vec![0f32; numel];
            ck.read_f32(info, 0..numel, &mut vals)?;
            writer.write_tensor(index, &encode_tensor(t, &vals)?)?;
            return Ok(());
        }
        _ => 0,
    };
    let ne0 = t.dims[0] as usize;
    if ne0 == 0 || !ne0.is_multiple_of(t.ty.block_size()) {
        return Err(GgufError::tensor(
            &t.name,
            format!(
                "row length {ne0} is not a multiple of {}'s block size",
                t.ty
            ),
        )
        .into());
    }
    let n_rows = numel / ne0;
    // A chunk of a permuted matrix holds whole heads, which the permutation keeps in place.
    let head_rows = n_rows.checked_div(n_head).unwrap_or(1);
    let chunk_rows = (chunk_values / ne0).max(1).next_multiple_of(head_rows);
    let row_bytes = t.ty.row_bytes(ne0);
    let buffers = || (Vec::<f32>::new(), Vec::<u8>::new());
    (0..n_rows.div_ceil(chunk_rows))
        .into_par_iter()
        .try_for_each_init(buffers, |(vals, out), c| -> crate::Result<()> {
            let rows = c * chunk_rows..((c + 1) * chunk_rows).min(n_rows);
            vals.resize(rows.len() * ne0, 0.0);
            ck.read_f32(info, rows.start * ne0..rows.end * ne0, vals)?;
            if t.transform == Transform::AddOne {
                // The converter adds 1 in the checkpoint's own dtype.
                for v in vals.iter_mut() {
                    *v = info.dtype.round(*v + 1.0);
                }
            }
            if vals.iter().any(|v| !v.is_finite()) {
                return Err(GgufError::tensor(
                    &t.source,
                    "holds NaN or infinite values, which llama.cpp cannot use",
                )
                .into());
            }
            out.resize(rows.len() * row_bytes, 0);
            for (k, x) in vals.chunks_exact(ne0).enumerate() {
                let dest = if n_head > 0 {
                    arch::permuted_row(rows.start + k, n_rows, n_head) - rows.start
                } else {
                    k
                };
                quant::quantize_row(t.ty, x, &mut out[dest * row_bytes..(dest + 1) * row_bytes]);
            }
            writer.write_part(index, (rows.start * row_bytes) as u64, out)?;
            Ok(())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks of one row (one head for the permuted Q/K matrices) give the same file as whole
    /// tensors in one chunk.
    #[test]
    fn chunk_size_does_not_change_the_file() {
        let src =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/tiny-llama/base");
        let dir = tempfile::tempdir().unwrap();
        for ty in ["Q4_K_M", "Q6_K", "F16"] {
            let ftype = FileType::parse(ty).unwrap();
            let files = [1, 1 << 30].map(|chunk| {
                let out = dir.path().join(format!("{ty}-{chunk}.gguf"));
                convert_folder_in_chunks(&src, &out, ftype, Some("gpt-2"), 2, chunk).unwrap();
                std::fs::read(out).unwrap()
            });
            assert!(files[0] == files[1], "{ty}");
        }
    }
}
