//! Safe reading of PyTorch checkpoints (`pytorch_model.bin`, the zip format `torch.save` has
//! written since torch 1.6), without Python and without executing pickled code.
//!
//! A torch checkpoint is a ZIP archive (read by [`zip`]) holding `<archive>/data.pkl`, a pickle of
//! the state dict (read by the restricted unpickler in [`pickle`]), and one uncompressed record
//! `<archive>/data/<key>` per storage. [`read_torch_tensors`] returns, for each tensor, its name,
//! dtype, shape and the absolute byte range of its data inside the checkpoint bytes, so the caller
//! can memory-map the file and read tensors in place, exactly as it does for safetensors (the data
//! is little-endian, row-major). [`read_bin_index`] reads the `weight_map` of a sharded
//! checkpoint's `pytorch_model.bin.index.json`.
//!
//! Refused with a clear error: the legacy (pre-1.6, non-zip) format, compressed records,
//! big-endian archives, any pickle global outside the whitelist (see [`pickle`]), and tensors
//! that are not contiguous views of their storage. Entries of the state dict that are not
//! tensors (numbers, strings, `None`) are skipped.

pub mod pickle;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod zip;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use crate::dtype::DType;
use crate::error::{FormatError, FormatResult};

/// One tensor of a torch checkpoint, located inside the checkpoint's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchTensor {
    /// The state-dict key (for example `model.layers.0.mlp.up_proj.weight`).
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape, row-major.
    pub shape: Vec<usize>,
    /// Absolute byte range of the tensor's data inside the checkpoint bytes
    /// (`shape.iter().product() * dtype.size()` bytes, little-endian, row-major).
    pub data: Range<usize>,
}

/// Lists the tensors of the torch checkpoint held in `bytes` (the whole file, typically a
/// read-only memory map). `path` is only used in error messages.
///
/// Tensors come in the order of the pickled state dict. Several tensors may share bytes (tied
/// weights saved as views of one storage).
pub fn read_torch_tensors(bytes: &[u8], path: &Path) -> FormatResult<Vec<TorchTensor>> {
    let fail = |reason: String| FormatError::malformed(path, reason);
    if bytes.starts_with(&[0x80]) {
        return Err(fail(
            "this is a legacy (pre torch 1.6) pickle checkpoint, which smelt cannot read; \
             re-save it with a recent torch or convert it to safetensors"
                .into(),
        ));
    }
    let entries = zip::read_entries(bytes).map_err(|e| fail(e.to_string()))?;

    let roots: Vec<&str> = entries
        .iter()
        .filter_map(|e| e.name.strip_suffix("/data.pkl"))
        .filter(|root| !root.is_empty() && !root.contains('/'))
        .collect();
    let root = match roots.as_slice() {
        [root] => *root,
        [] => {
            return Err(fail(
                "zip archive has no `<archive>/data.pkl`; not a torch checkpoint".into(),
            ));
        }
        many => {
            return Err(fail(format!(
                "zip archive holds {} pickles ({}); expected one torch checkpoint",
                many.len(),
                many.join(", ")
            )));
        }
    };
    let entry = |name: &str| entries.iter().find(|e| e.name == name);
    let stored = |e: &zip::ZipEntry| e.stored_data().map_err(|err| fail(err.to_string()));

    if let Some(bo) = entry(&format!("{root}/byteorder")) {
        let order = &bytes[stored(bo)?];
        if order != b"little" {
            return Err(fail(format!(
                "archive byte order is `{}`; only little-endian checkpoints are supported",
                String::from_utf8_lossy(order)
            )));
        }
    }

    let pkl_name = format!("{root}/data.pkl");
    let pkl = entry(&pkl_name).expect("found above");
    let value =
        pickle::unpickle(&bytes[stored(pkl)?]).map_err(|e| fail(format!("{pkl_name}: {e}")))?;
    let pickle::Value::Dict(items) = value else {
        return Err(fail(format!(
            "{pkl_name} holds a {}, not a state dict",
            match value {
                pickle::Value::Tensor(_) => "single tensor",
                pickle::Value::List(_) => "list",
                pickle::Value::Tuple(_) => "tuple",
                _ => "non-dict value",
            }
        )));
    };

    let mut out = Vec::with_capacity(items.len());
    for (key, value) in items.iter() {
        let pickle::Value::Tensor(t) = value else {
            continue;
        };
        let pickle::Value::Str(name) = key else {
            return Err(fail(format!("{pkl_name}: a tensor has a non-string key")));
        };
        let tfail = |reason: String| fail(format!("tensor `{name}`: {reason}"));
        let dtype = t.storage.dtype;
        let es = dtype.size();

        // Contiguous row-major: stride[i] == product(shape[i+1..]) for every dim of size > 1.
        let mut numel: usize = 1;
        for i in (0..t.shape.len()).rev() {
            if t.shape[i] > 1 && t.stride[i] != numel {
                return Err(tfail(format!(
                    "is not contiguous (shape {:?}, strides {:?}); only row-major contiguous \
                     tensors can be read in place",
                    t.shape, t.stride
                )));
            }
            numel = numel
                .checked_mul(t.shape[i])
                .ok_or_else(|| tfail(format!("shape {:?} overflows", t.shape)))?;
        }

        let record = format!("{root}/data/{}", t.storage.key);
        let range = stored(
            entry(&record).ok_or_else(|| tfail(format!("storage record `{record}` is missing")))?,
        )?;
        let storage_bytes = t
            .storage
            .numel
            .checked_mul(es)
            .filter(|&n| n <= range.len())
            .ok_or_else(|| {
                tfail(format!(
                    "storage `{record}` declares {} elements of {dtype} but holds {} bytes",
                    t.storage.numel,
                    range.len()
                ))
            })?;
        let start = t.offset.checked_mul(es);
        let len = numel.checked_mul(es);
        let (start, len) = match (start, len) {
            (Some(s), Some(l)) if s.checked_add(l).is_some_and(|end| end <= storage_bytes) => {
                (s, l)
            }
            _ if numel == 0 => (0, 0),
            _ => {
                return Err(tfail(format!(
                    "offset {} + {} elements runs past its storage `{record}` ({} elements)",
                    t.offset, numel, t.storage.numel
                )));
            }
        };
        out.push(TorchTensor {
            name: name.to_string(),
            dtype,
            shape: t.shape.clone(),
            data: range.start + start..range.start + start + len,
        });
    }
    Ok(out)
}

/// Reads the `weight_map` (tensor name → shard file name) of a sharded torch checkpoint's
/// `pytorch_model.bin.index.json`.
pub fn read_bin_index(path: &Path) -> FormatResult<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).map_err(|e| FormatError::io(path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| FormatError::malformed(path, format!("index is not valid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| FormatError::malformed(path, "index has no `weight_map` object"))?;
    map.iter()
        .map(|(k, v)| match v.as_str() {
            Some(file) => Ok((k.clone(), file.to_string())),
            None => Err(FormatError::malformed(
                path,
                format!("weight_map entry `{k}` is not a file name"),
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests;
