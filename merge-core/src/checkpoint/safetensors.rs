//! safetensors headers: parsed and fully validated by the `safetensors` crate (bounds,
//! contiguous offsets, sizes, header length), wrapped with the file's path.

use std::path::Path;

use ::safetensors::SafeTensors;

use super::TensorInfo;
use crate::dtype::DType;
use crate::error::{Error, Result};

/// Reads the header of the safetensors file `bytes` (the whole file), returning every tensor
/// with absolute byte ranges (the `file` field is left 0 for the caller to set).
pub(super) fn read_header(bytes: &[u8], path: &Path) -> Result<Vec<(String, TensorInfo)>> {
    if bytes.len() < 8 {
        return Err(Error::bad_checkpoint(
            path,
            format!(
                "file is {} bytes, too short for a safetensors header",
                bytes.len()
            ),
        ));
    }
    let (header_len, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::bad_checkpoint(path, format!("bad safetensors header: {e}")))?;
    let base = 8 + header_len;
    let mut out = Vec::new();
    for (name, info) in meta.tensors() {
        let dt_name = format!("{:?}", info.dtype);
        let dtype = DType::from_safetensors(&dt_name).ok_or_else(|| {
            Error::bad_checkpoint(
                path,
                format!("tensor `{name}` has unsupported dtype {dt_name}"),
            )
        })?;
        let (s, e) = info.data_offsets;
        out.push((
            name,
            TensorInfo {
                dtype,
                shape: info.shape.clone(),
                file: 0,
                range: base + s..base + e,
            },
        ));
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
        let t = read_header(&b, Path::new("x.safetensors")).unwrap();
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
        let e = read_header(&b, Path::new("x.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.safetensors"), "{e}");
        for bad in [
            &b"\x01\x02"[..],
            &b"\xff\xff\xff\xff\xff\xff\xff\x7f{}"[..],
            &file("{not json", 0)[..],
        ] {
            assert!(read_header(bad, Path::new("x.safetensors")).is_err());
        }
        let overlap = file(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            12,
        );
        assert!(read_header(&overlap, Path::new("x")).is_err());
    }
}
