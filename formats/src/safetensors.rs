//! safetensors files: the header, parsed and fully validated by the `safetensors` crate
//! (bounds, contiguous offsets, sizes, header length) and wrapped with the file's path, and
//! the `weight_map` of a sharded model's `model.safetensors.index.json`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use ::safetensors::SafeTensors;

use crate::dtype::DType;
use crate::error::{FormatError, FormatResult};

/// One tensor of a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderEntry {
    /// Element type.
    pub dtype: DType,
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// Absolute byte range of the tensor's data inside the file.
    pub range: Range<usize>,
}

/// The tensors of a safetensors file's header (`bytes` holds the whole file; `path` is for
/// messages): names with dtypes, shapes and absolute byte ranges, all bounds-checked.
pub fn parse_header(bytes: &[u8], path: &Path) -> FormatResult<Vec<(String, HeaderEntry)>> {
    if bytes.len() < 8 {
        return Err(FormatError::malformed(
            path,
            format!(
                "file is {} bytes, too short for a safetensors header",
                bytes.len()
            ),
        ));
    }
    let (header_len, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| FormatError::malformed(path, format!("bad safetensors header: {e}")))?;
    let base = 8 + header_len;
    let mut out = Vec::new();
    for (name, info) in meta.tensors() {
        let dt_name = format!("{:?}", info.dtype);
        let dtype = DType::from_safetensors(&dt_name).ok_or_else(|| {
            FormatError::malformed(
                path,
                format!("tensor `{name}` has unsupported dtype {dt_name}"),
            )
        })?;
        let (s, e) = info.data_offsets;
        out.push((
            name,
            HeaderEntry {
                dtype,
                shape: info.shape.clone(),
                range: base + s..base + e,
            },
        ));
    }
    Ok(out)
}

/// Parses the text of a `model.safetensors.index.json` (`index` is for messages) into its
/// `weight_map`: tensor name → shard file name (plain file names only).
pub fn parse_index(text: &str, index: &Path) -> FormatResult<BTreeMap<String, String>> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| FormatError::malformed(index, e.to_string()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| FormatError::malformed(index, "no `weight_map` object"))?;
    let mut out = BTreeMap::new();
    for (k, f) in map {
        let f = f.as_str().ok_or_else(|| {
            FormatError::malformed(index, format!("weight_map entry `{k}` is not a string"))
        })?;
        if f.is_empty() || f.contains('/') || f.contains('\\') || f == "." || f == ".." {
            return Err(FormatError::malformed(
                index,
                format!("shard name `{f}` (of tensor `{k}`) is not a plain file name"),
            ));
        }
        out.insert(k.clone(), f.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend(std::iter::repeat_n(0u8, data));
        v
    }

    #[test]
    fn valid_header() {
        let b = file(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            8,
        );
        let t = parse_header(&b, Path::new("x.safetensors")).unwrap();
        assert_eq!(t[0].0, "a");
        assert_eq!(t[0].1.shape, vec![2]);
        assert_eq!(t[0].1.range.len(), 8);
    }

    #[test]
    fn truncated_and_corrupt_files_are_errors_naming_the_file() {
        let b = file(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            4,
        );
        let e = parse_header(&b, Path::new("x.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.safetensors"), "{e}");
        for bad in [
            &b"\x01\x02"[..],
            &b"\xff\xff\xff\xff\xff\xff\xff\x7f{}"[..],
            &file("{not json", 0)[..],
        ] {
            assert!(parse_header(bad, Path::new("x.safetensors")).is_err());
        }
        let overlap = file(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            12,
        );
        assert!(parse_header(&overlap, Path::new("x")).is_err());
    }
}
