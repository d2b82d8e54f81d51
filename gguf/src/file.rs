//! The GGUF v3 container: metadata values, a streaming writer and a validating reader.
//!
//! Writing is planned up front: [`GgufLayout::new`] takes every metadata pair and every tensor's
//! name, ggml shape and type, checks them against the rules of ggml's C reader (spec §1.3–1.5),
//! and computes the header bytes and each tensor's offset. [`GgufWriter`] then writes the
//! header into a temporary file in the destination folder, accepts tensor data at known
//! offsets in any order and from several threads (positional writes), and on
//! [`GgufWriter::finish`] fsyncs and atomically renames the file into place.
//!
//! [`GgufFile`] parses a file's header and tensor infos with every check the C loader makes
//! (magic, version, duplicate keys and names, nested arrays, name length, dimensions, block
//! divisibility, alignment, contiguous offsets, file long enough), never panicking on malformed
//! input, and reads tensors back as bytes or `f32`.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::{GgufError, GgufResult};
use super::types::GgmlType;

/// The GGUF magic, `"GGUF"`.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The version smelt writes.
pub const GGUF_VERSION: u32 = 3;
/// The default (and smelt's) data alignment.
pub const DEFAULT_ALIGNMENT: u32 = 32;
/// Longest tensor name ggml accepts (`GGML_MAX_NAME` − 1).
pub const MAX_TENSOR_NAME: usize = 63;
/// Most dimensions a ggml tensor has.
pub const MAX_DIMS: usize = 4;
/// The C reader's cap on string lengths.
const MAX_STRING_LEN: u64 = 1 << 30;
/// The C reader's cap on array element counts.
const MAX_ARRAY_LEN: u64 = 1 << 30;

/// A metadata value type id (spec §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgufValueType {
    /// u8.
    U8,
    /// i8.
    I8,
    /// u16.
    U16,
    /// i16.
    I16,
    /// u32.
    U32,
    /// i32.
    I32,
    /// f32.
    F32,
    /// bool (one byte, 0 or 1).
    Bool,
    /// UTF-8 string.
    String,
    /// Array of one element type.
    Array,
    /// u64.
    U64,
    /// i64.
    I64,
    /// f64.
    F64,
}

impl GgufValueType {
    /// The id stored in the file.
    pub fn id(self) -> u32 {
        match self {
            GgufValueType::U8 => 0,
            GgufValueType::I8 => 1,
            GgufValueType::U16 => 2,
            GgufValueType::I16 => 3,
            GgufValueType::U32 => 4,
            GgufValueType::I32 => 5,
            GgufValueType::F32 => 6,
            GgufValueType::Bool => 7,
            GgufValueType::String => 8,
            GgufValueType::Array => 9,
            GgufValueType::U64 => 10,
            GgufValueType::I64 => 11,
            GgufValueType::F64 => 12,
        }
    }

    /// The type with file id `id`.
    pub fn from_id(id: u32) -> Option<GgufValueType> {
        Some(match id {
            0 => GgufValueType::U8,
            1 => GgufValueType::I8,
            2 => GgufValueType::U16,
            3 => GgufValueType::I16,
            4 => GgufValueType::U32,
            5 => GgufValueType::I32,
            6 => GgufValueType::F32,
            7 => GgufValueType::Bool,
            8 => GgufValueType::String,
            9 => GgufValueType::Array,
            10 => GgufValueType::U64,
            11 => GgufValueType::I64,
            12 => GgufValueType::F64,
            _ => return None,
        })
    }

    /// The upper-case name gguf-py uses (`"UINT32"`, `"FLOAT32"`, `"ARRAY"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            GgufValueType::U8 => "UINT8",
            GgufValueType::I8 => "INT8",
            GgufValueType::U16 => "UINT16",
            GgufValueType::I16 => "INT16",
            GgufValueType::U32 => "UINT32",
            GgufValueType::I32 => "INT32",
            GgufValueType::F32 => "FLOAT32",
            GgufValueType::Bool => "BOOL",
            GgufValueType::String => "STRING",
            GgufValueType::Array => "ARRAY",
            GgufValueType::U64 => "UINT64",
            GgufValueType::I64 => "INT64",
            GgufValueType::F64 => "FLOAT64",
        }
    }

    /// Encoded size of a fixed-size scalar (None for strings and arrays).
    fn fixed_size(self) -> Option<u64> {
        Some(match self {
            GgufValueType::U8 | GgufValueType::I8 | GgufValueType::Bool => 1,
            GgufValueType::U16 | GgufValueType::I16 => 2,
            GgufValueType::U32 | GgufValueType::I32 | GgufValueType::F32 => 4,
            GgufValueType::U64 | GgufValueType::I64 | GgufValueType::F64 => 8,
            GgufValueType::String | GgufValueType::Array => return None,
        })
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// u8.
    U8(u8),
    /// i8.
    I8(i8),
    /// u16.
    U16(u16),
    /// i16.
    I16(i16),
    /// u32.
    U32(u32),
    /// i32.
    I32(i32),
    /// f32.
    F32(f32),
    /// bool.
    Bool(bool),
    /// string.
    String(String),
    /// An array: element type and elements (all of that type, none an array).
    Array(GgufValueType, Vec<GgufValue>),
    /// u64.
    U64(u64),
    /// i64.
    I64(i64),
    /// f64.
    F64(f64),
}

impl GgufValue {
    /// The value's type.
    pub fn value_type(&self) -> GgufValueType {
        match self {
            GgufValue::U8(_) => GgufValueType::U8,
            GgufValue::I8(_) => GgufValueType::I8,
            GgufValue::U16(_) => GgufValueType::U16,
            GgufValue::I16(_) => GgufValueType::I16,
            GgufValue::U32(_) => GgufValueType::U32,
            GgufValue::I32(_) => GgufValueType::I32,
            GgufValue::F32(_) => GgufValueType::F32,
            GgufValue::Bool(_) => GgufValueType::Bool,
            GgufValue::String(_) => GgufValueType::String,
            GgufValue::Array(..) => GgufValueType::Array,
            GgufValue::U64(_) => GgufValueType::U64,
            GgufValue::I64(_) => GgufValueType::I64,
            GgufValue::F64(_) => GgufValueType::F64,
        }
    }

    /// An array of strings.
    pub fn string_array<S: Into<String>>(items: impl IntoIterator<Item = S>) -> GgufValue {
        GgufValue::Array(
            GgufValueType::String,
            items
                .into_iter()
                .map(|s| GgufValue::String(s.into()))
                .collect(),
        )
    }

    /// An array of f32.
    pub fn f32_array(items: impl IntoIterator<Item = f32>) -> GgufValue {
        GgufValue::Array(
            GgufValueType::F32,
            items.into_iter().map(GgufValue::F32).collect(),
        )
    }

    /// An array of i32.
    pub fn i32_array(items: impl IntoIterator<Item = i32>) -> GgufValue {
        GgufValue::Array(
            GgufValueType::I32,
            items.into_iter().map(GgufValue::I32).collect(),
        )
    }

    /// The string, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as u64, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(_, v) => Some(v),
            _ => None,
        }
    }

    /// Appends the encoded value (without its type id) to `out`.
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            GgufValue::U8(v) => out.push(*v),
            GgufValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::Bool(v) => out.push(u8::from(*v)),
            GgufValue::String(s) => encode_string(s, out),
            GgufValue::Array(t, items) => {
                out.extend_from_slice(&t.id().to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for item in items {
                    item.encode(out);
                }
            }
            GgufValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        }
    }

    /// The encoded payload of an array (after the element count), as gguf-py's manifest
    /// hashes it; None for non-arrays.
    pub fn array_payload(&self) -> Option<Vec<u8>> {
        match self {
            GgufValue::Array(_, items) => {
                let mut out = Vec::new();
                for item in items {
                    item.encode(&mut out);
                }
                Some(out)
            }
            _ => None,
        }
    }
}

fn encode_string(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A tensor as described in the header: name, ggml shape (fastest dimension first), type and
/// data offset relative to the data section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// GGUF tensor name.
    pub name: String,
    /// Dimensions in ggml order (`ne[0]` = row length).
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Bytes of data (without padding).
    pub fn n_bytes(&self) -> u64 {
        tensor_bytes(&self.dims, self.ty)
    }

    /// Number of rows (`n_elements / ne[0]`).
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }
}

/// Bytes of a tensor's data, saturating at `u64::MAX` (a file's reader refuses such tensors
/// with [`checked_tensor_bytes`]).
fn tensor_bytes(dims: &[u64], ty: GgmlType) -> u64 {
    checked_tensor_bytes(dims, ty).unwrap_or(u64::MAX)
}

/// Bytes of a tensor's data, or `None` when the count overflows.
fn checked_tensor_bytes(dims: &[u64], ty: GgmlType) -> Option<u64> {
    let ne0 = dims.first().copied().unwrap_or(1);
    let rest = dims
        .iter()
        .skip(1)
        .try_fold(1u64, |a, &d| a.checked_mul(d))?;
    (ne0 / ty.block_size() as u64)
        .checked_mul(ty.type_size() as u64)?
        .checked_mul(rest)
}

fn pad_to(n: u64, align: u64) -> u64 {
    n.div_ceil(align) * align
}

/// A tensor to be written: name, ggml shape and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// GGUF tensor name (at most 63 bytes).
    pub name: String,
    /// Dimensions in ggml order (`ne[0]` = row length).
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
}

/// A fully planned GGUF file: the header bytes and every tensor's position.
#[derive(Debug, Clone)]
pub struct GgufLayout {
    header: Vec<u8>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_start: u64,
    total_size: u64,
}

impl GgufLayout {
    /// Plans a file holding `metadata` (in this order) and `tensors` (data in this order).
    ///
    /// Checks: keys non-empty, unique, at most 65535 bytes; no nested or mixed-type arrays;
    /// `general.alignment`, if given, a UINT32 power of two; tensor names non-empty, unique,
    /// at most 63 bytes; 1 to 4 dimensions; `ne[0]` a multiple of the type's block size.
    pub fn new(metadata: &[(String, GgufValue)], tensors: &[TensorSpec]) -> GgufResult<Self> {
        let mut alignment = u64::from(DEFAULT_ALIGNMENT);
        let mut keys = HashSet::new();
        let mut header = Vec::new();
        header.extend_from_slice(&GGUF_MAGIC);
        header.extend_from_slice(&GGUF_VERSION.to_le_bytes());
        header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            if key.is_empty() || key.len() > 65535 {
                return Err(GgufError::Invalid(format!(
                    "metadata key `{key}` must be 1 to 65535 bytes long"
                )));
            }
            if !keys.insert(key.as_str()) {
                return Err(GgufError::Invalid(format!(
                    "duplicate metadata key `{key}`"
                )));
            }
            check_value(key, value)?;
            if key == "general.alignment" {
                match value {
                    GgufValue::U32(a) if a.is_power_of_two() => alignment = u64::from(*a),
                    _ => {
                        return Err(GgufError::Invalid(format!(
                            "general.alignment must be a UINT32 power of two, got {value:?}"
                        )));
                    }
                }
            }
            encode_string(key, &mut header);
            header.extend_from_slice(&value.value_type().id().to_le_bytes());
            value.encode(&mut header);
        }
        let mut names = HashSet::new();
        let mut infos = Vec::with_capacity(tensors.len());
        let mut offset = 0u64;
        for t in tensors {
            check_tensor_spec(t)?;
            if !names.insert(t.name.as_str()) {
                return Err(GgufError::Invalid(format!(
                    "duplicate tensor name `{}`",
                    t.name
                )));
            }
            encode_string(&t.name, &mut header);
            header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.ty.id().to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            let info = TensorInfo {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ty: t.ty,
                offset,
            };
            offset += pad_to(info.n_bytes(), alignment);
            infos.push(info);
        }
        let data_start = pad_to(header.len() as u64, alignment);
        header.resize(data_start as usize, 0);
        Ok(GgufLayout {
            header,
            tensors: infos,
            alignment,
            data_start,
            total_size: data_start + offset,
        })
    }

    /// The header bytes (magic to the end of the padding before the data section).
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// Every tensor with its offset, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The data alignment.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset of the data section.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// The size of the finished file in bytes.
    pub fn total_size(&self) -> u64 {
        self.total_size
    }

    /// Absolute file offset of tensor `index`'s data.
    pub fn tensor_file_offset(&self, index: usize) -> Option<u64> {
        self.tensors.get(index).map(|t| self.data_start + t.offset)
    }

    /// The index of the tensor named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.tensors.iter().position(|t| t.name == name)
    }
}

fn check_value(key: &str, value: &GgufValue) -> GgufResult<()> {
    if let GgufValue::Array(ty, items) = value {
        if *ty == GgufValueType::Array {
            return Err(GgufError::Invalid(format!(
                "metadata key `{key}`: nested arrays are rejected by llama.cpp"
            )));
        }
        if let Some(bad) = items.iter().find(|v| v.value_type() != *ty) {
            return Err(GgufError::Invalid(format!(
                "metadata key `{key}`: array of {} holds a {}",
                ty.name(),
                bad.value_type().name()
            )));
        }
    }
    Ok(())
}

fn check_tensor_spec(t: &TensorSpec) -> GgufResult<()> {
    if t.name.is_empty() || t.name.len() > MAX_TENSOR_NAME {
        return Err(GgufError::Invalid(format!(
            "tensor name `{}` must be 1 to {MAX_TENSOR_NAME} bytes long",
            t.name
        )));
    }
    if t.dims.is_empty() || t.dims.len() > MAX_DIMS {
        return Err(GgufError::Invalid(format!(
            "tensor `{}` has {} dimensions (1 to {MAX_DIMS} allowed)",
            t.name,
            t.dims.len()
        )));
    }
    if !t.dims[0].is_multiple_of(t.ty.block_size() as u64) {
        return Err(GgufError::Invalid(format!(
            "tensor `{}`: row length {} is not a multiple of {}'s block size {}",
            t.name,
            t.dims[0],
            t.ty,
            t.ty.block_size()
        )));
    }
    if t.dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .is_none_or(|n| n > i64::MAX as u64)
    {
        return Err(GgufError::Invalid(format!(
            "tensor `{}`: element count overflows",
            t.name
        )));
    }
    Ok(())
}

/// Streams a planned GGUF file to disk: header first, tensor data at known offsets in any
/// order (callable from several threads), then fsync and atomic rename.
///
/// If the writer is dropped before [`GgufWriter::finish`], the temporary file is removed and
/// the destination is left untouched.
#[derive(Debug)]
pub struct GgufWriter {
    layout: GgufLayout,
    file: File,
    tmp_path: PathBuf,
    final_path: PathBuf,
    written: Vec<AtomicU64>,
    finished: bool,
}

impl GgufWriter {
    /// Creates a temporary file next to `path`, sizes it and writes the header.
    pub fn create(path: &Path, layout: GgufLayout) -> GgufResult<Self> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = path
            .file_name()
            .ok_or_else(|| GgufError::Invalid(format!("{}: not a file path", path.display())))?;
        let tmp_path = dir.join(format!(
            ".{}.{}.partial",
            file_name.to_string_lossy(),
            std::process::id()
        ));
        let mut file = File::create(&tmp_path).map_err(|e| GgufError::io(&tmp_path, e))?;
        let cleanup = |e: std::io::Error, tmp: &Path| {
            let _ = std::fs::remove_file(tmp);
            GgufError::io(tmp, e)
        };
        if let Err(e) = file.set_len(layout.total_size) {
            return Err(cleanup(e, &tmp_path));
        }
        if let Err(e) = file.write_all(&layout.header) {
            return Err(cleanup(e, &tmp_path));
        }
        let written = layout.tensors.iter().map(|_| AtomicU64::new(0)).collect();
        Ok(GgufWriter {
            layout,
            file,
            tmp_path,
            final_path: path.to_path_buf(),
            written,
            finished: false,
        })
    }

    /// The temporary file written until [`GgufWriter::finish`] renames it into place.
    pub fn partial_path(&self) -> &Path {
        &self.tmp_path
    }

    /// The layout being written.
    pub fn layout(&self) -> &GgufLayout {
        &self.layout
    }

    /// Writes tensor `index`'s data (exactly its byte size; the padding is already zero).
    pub fn write_tensor(&self, index: usize, data: &[u8]) -> GgufResult<()> {
        let info =
            self.layout.tensors.get(index).ok_or_else(|| {
                GgufError::Invalid(format!("tensor index {index} is out of range"))
            })?;
        if data.len() as u64 != info.n_bytes() {
            return Err(GgufError::tensor(
                &info.name,
                format!(
                    "{} bytes given, {} expected for {} {:?}",
                    data.len(),
                    info.n_bytes(),
                    info.ty,
                    info.dims
                ),
            ));
        }
        let offset = self.layout.data_start + info.offset;
        write_at(&self.file, data, offset).map_err(|e| GgufError::io(&self.tmp_path, e))?;
        self.written[index].store(info.n_bytes(), Ordering::Release);
        Ok(())
    }

    /// Writes part of tensor `index`'s data at `byte_offset` within it (for streaming rows in
    /// any order; the parts must not overlap, and together cover the tensor).
    pub fn write_part(&self, index: usize, byte_offset: u64, data: &[u8]) -> GgufResult<()> {
        let info =
            self.layout.tensors.get(index).ok_or_else(|| {
                GgufError::Invalid(format!("tensor index {index} is out of range"))
            })?;
        if byte_offset + data.len() as u64 > info.n_bytes() {
            return Err(GgufError::tensor(
                &info.name,
                format!(
                    "{} bytes at {byte_offset} overrun the tensor's {} bytes",
                    data.len(),
                    info.n_bytes()
                ),
            ));
        }
        let offset = self.layout.data_start + info.offset + byte_offset;
        write_at(&self.file, data, offset).map_err(|e| GgufError::io(&self.tmp_path, e))?;
        self.written[index].fetch_add(data.len() as u64, Ordering::AcqRel);
        Ok(())
    }

    /// Writes the tensor named `name`.
    pub fn write_tensor_named(&self, name: &str, data: &[u8]) -> GgufResult<()> {
        let index = self
            .layout
            .index_of(name)
            .ok_or_else(|| GgufError::tensor(name, "not in the GGUF layout"))?;
        self.write_tensor(index, data)
    }

    /// Checks every tensor was written, fsyncs, and renames the file into place.
    pub fn finish(mut self) -> GgufResult<()> {
        if let Some(i) = self
            .written
            .iter()
            .zip(&self.layout.tensors)
            .position(|(w, t)| w.load(Ordering::Acquire) != t.n_bytes())
        {
            return Err(GgufError::tensor(
                &self.layout.tensors[i].name,
                "no data was written for this tensor",
            ));
        }
        self.file
            .sync_all()
            .map_err(|e| GgufError::io(&self.tmp_path, e))?;
        std::fs::rename(&self.tmp_path, &self.final_path)
            .map_err(|e| GgufError::io(&self.final_path, e))?;
        self.finished = true;
        if let Some(dir) = self.final_path.parent()
            && let Ok(d) = File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            })
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for GgufWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

#[cfg(unix)]
fn write_at(file: &File, data: &[u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(data, offset)
}

#[cfg(windows)]
fn write_at(file: &File, mut data: &[u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !data.is_empty() {
        let n = file.seek_write(data, offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
        offset += n as u64;
    }
    Ok(())
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = file.seek_read(buf, offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf = &mut buf[n..];
        offset += n as u64;
    }
    Ok(())
}

/// Writes a whole GGUF file from in-memory tensor data (a convenience over [`GgufWriter`]).
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, GgufValue)],
    tensors: &[(TensorSpec, Vec<u8>)],
) -> GgufResult<()> {
    let specs: Vec<TensorSpec> = tensors.iter().map(|(s, _)| s.clone()).collect();
    let layout = GgufLayout::new(metadata, &specs)?;
    let writer = GgufWriter::create(path, layout)?;
    for (i, (_, data)) in tensors.iter().enumerate() {
        writer.write_tensor(i, data)?;
    }
    writer.finish()
}

/// A parsed GGUF file: metadata and tensor infos; tensor data is read on demand.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_start: u64,
    file_len: u64,
}

/// A bounds-checked little-endian reader over a file's header.
struct HeaderReader<'a, R: Read> {
    inner: R,
    pos: u64,
    len: u64,
    path: &'a Path,
}

impl<R: Read> HeaderReader<'_, R> {
    fn err(&self, reason: impl Into<String>) -> GgufError {
        GgufError::Malformed {
            path: self.path.to_path_buf(),
            offset: self.pos,
            reason: reason.into(),
        }
    }

    fn bytes(&mut self, n: u64, what: &str) -> GgufResult<Vec<u8>> {
        if n > self.len.saturating_sub(self.pos) {
            return Err(self.err(format!(
                "file ends inside {what} ({n} bytes needed, {} left)",
                self.len.saturating_sub(self.pos)
            )));
        }
        let mut buf = vec![0u8; n as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| self.err(format!("reading {what}: {e}")))?;
        self.pos += n;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self, what: &str) -> GgufResult<[u8; N]> {
        let v = self.bytes(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&v);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> GgufResult<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> GgufResult<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> GgufResult<String> {
        let n = self.u64(what)?;
        if n > MAX_STRING_LEN {
            return Err(self.err(format!("{what}: string length {n} exceeds 1 GiB")));
        }
        let start = self.pos;
        let b = self.bytes(n, what)?;
        String::from_utf8(b).map_err(|_| GgufError::Malformed {
            path: self.path.to_path_buf(),
            offset: start,
            reason: format!("{what} is not valid UTF-8"),
        })
    }

    fn value(&mut self, ty: GgufValueType, key: &str, in_array: bool) -> GgufResult<GgufValue> {
        Ok(match ty {
            GgufValueType::U8 => GgufValue::U8(self.array::<1>(key)?[0]),
            GgufValueType::I8 => GgufValue::I8(i8::from_le_bytes(self.array(key)?)),
            GgufValueType::U16 => GgufValue::U16(u16::from_le_bytes(self.array(key)?)),
            GgufValueType::I16 => GgufValue::I16(i16::from_le_bytes(self.array(key)?)),
            GgufValueType::U32 => GgufValue::U32(u32::from_le_bytes(self.array(key)?)),
            GgufValueType::I32 => GgufValue::I32(i32::from_le_bytes(self.array(key)?)),
            GgufValueType::F32 => GgufValue::F32(f32::from_le_bytes(self.array(key)?)),
            GgufValueType::U64 => GgufValue::U64(u64::from_le_bytes(self.array(key)?)),
            GgufValueType::I64 => GgufValue::I64(i64::from_le_bytes(self.array(key)?)),
            GgufValueType::F64 => GgufValue::F64(f64::from_le_bytes(self.array(key)?)),
            GgufValueType::Bool => match self.array::<1>(key)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(self.err(format!("key `{key}`: bool byte {b} is not 0 or 1"))),
            },
            GgufValueType::String => GgufValue::String(self.string(key)?),
            GgufValueType::Array => {
                if in_array {
                    return Err(self.err(format!("key `{key}`: nested arrays are not allowed")));
                }
                let et_id = self.u32(key)?;
                let et = GgufValueType::from_id(et_id).ok_or_else(|| {
                    self.err(format!("key `{key}`: unknown array element type {et_id}"))
                })?;
                if et == GgufValueType::Array {
                    return Err(self.err(format!("key `{key}`: nested arrays are not allowed")));
                }
                let n = self.u64(key)?;
                if n > MAX_ARRAY_LEN {
                    return Err(self.err(format!("key `{key}`: array length {n} exceeds 2^30")));
                }
                let min = et.fixed_size().unwrap_or(8);
                if n.saturating_mul(min) > self.len.saturating_sub(self.pos) {
                    return Err(self.err(format!(
                        "key `{key}`: array of {n} {} does not fit in the file",
                        et.name()
                    )));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(et, key, true)?);
                }
                GgufValue::Array(et, items)
            }
        })
    }
}

impl GgufFile {
    /// Opens and validates `path` (header, metadata and tensor infos; data is not read).
    pub fn open(path: impl AsRef<Path>) -> GgufResult<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| GgufError::io(path, e))?;
        let len = file.metadata().map_err(|e| GgufError::io(path, e))?.len();
        Self::parse(BufReader::new(file), len, path)
    }

    /// Parses a GGUF file held in memory (`path` is used in error messages).
    pub fn from_bytes(bytes: &[u8], path: impl AsRef<Path>) -> GgufResult<Self> {
        Self::parse(bytes, bytes.len() as u64, path.as_ref())
    }

    fn parse<R: Read>(inner: R, len: u64, path: &Path) -> GgufResult<Self> {
        let mut r = HeaderReader {
            inner,
            pos: 0,
            len,
            path,
        };
        let magic = r.array::<4>("magic")?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::Malformed {
                path: path.to_path_buf(),
                offset: 0,
                reason: format!("bad magic {magic:02x?}, expected \"GGUF\""),
            });
        }
        let version = r.u32("version")?;
        if version & 0xFFFF == 0 && version != 0 {
            return Err(r.err(format!(
                "version {version:#x} looks byte-swapped: big-endian GGUF is not supported"
            )));
        }
        if version == 1 {
            return Err(r.err("GGUF version 1 is no longer supported"));
        }
        if !(2..=3).contains(&version) {
            return Err(r.err(format!("unsupported GGUF version {version}")));
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        // Every KV takes at least 8 (key length) + 4 (type) + 1 bytes; every tensor info at
        // least 8 + 4 + 8 + 4 + 8.
        if n_kv.saturating_mul(13) > len || n_tensors.saturating_mul(32) > len {
            return Err(r.err(format!(
                "{n_tensors} tensors / {n_kv} metadata pairs cannot fit in a {len}-byte file"
            )));
        }
        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut keys = HashSet::new();
        let mut alignment = u64::from(DEFAULT_ALIGNMENT);
        for _ in 0..n_kv {
            let key_pos = r.pos;
            let key = r.string("metadata key")?;
            if key.is_empty() {
                return Err(r.err("empty metadata key"));
            }
            if !keys.insert(key.clone()) {
                return Err(GgufError::Malformed {
                    path: path.to_path_buf(),
                    offset: key_pos,
                    reason: format!("duplicate metadata key `{key}`"),
                });
            }
            let ty_id = r.u32(&key)?;
            let ty = GgufValueType::from_id(ty_id)
                .ok_or_else(|| r.err(format!("key `{key}`: unknown value type {ty_id}")))?;
            let value = r.value(ty, &key, false)?;
            if key == "general.alignment" {
                match value {
                    GgufValue::U32(a) if a.is_power_of_two() => alignment = u64::from(a),
                    _ => {
                        return Err(GgufError::Malformed {
                            path: path.to_path_buf(),
                            offset: key_pos,
                            reason: format!(
                                "general.alignment must be a UINT32 power of two, got {value:?}"
                            ),
                        });
                    }
                }
            }
            metadata.push((key, value));
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut names = HashSet::new();
        let mut expected_offset = 0u64;
        for _ in 0..n_tensors {
            let info_pos = r.pos;
            let name = r.string("tensor name")?;
            let err_at = |reason: String| GgufError::Malformed {
                path: path.to_path_buf(),
                offset: info_pos,
                reason,
            };
            if name.len() > MAX_TENSOR_NAME {
                return Err(err_at(format!(
                    "tensor name `{name}` is {} bytes (at most {MAX_TENSOR_NAME})",
                    name.len()
                )));
            }
            if !names.insert(name.clone()) {
                return Err(err_at(format!("duplicate tensor name `{name}`")));
            }
            let n_dims = r.u32(&name)?;
            if n_dims as usize > MAX_DIMS {
                return Err(err_at(format!(
                    "tensor `{name}` has {n_dims} dimensions (at most {MAX_DIMS})"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let d = r.u64(&name)?;
                if d > i64::MAX as u64 {
                    return Err(err_at(format!("tensor `{name}`: negative dimension")));
                }
                dims.push(d);
            }
            if dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .is_none_or(|n| n > i64::MAX as u64)
            {
                return Err(err_at(format!("tensor `{name}`: element count overflows")));
            }
            let ty_id = r.u32(&name)?;
            let ty = GgmlType::from_id(ty_id).ok_or_else(|| {
                err_at(format!(
                    "tensor `{name}`: ggml type id {ty_id} is unknown or not supported by smelt"
                ))
            })?;
            let ne0 = dims.first().copied().unwrap_or(1);
            if !ne0.is_multiple_of(ty.block_size() as u64) {
                return Err(err_at(format!(
                    "tensor `{name}`: row length {ne0} is not a multiple of {ty}'s block size {}",
                    ty.block_size()
                )));
            }
            let offset = r.u64(&name)?;
            if offset != expected_offset {
                return Err(err_at(format!(
                    "tensor `{name}`: data offset {offset}, expected {expected_offset} \
                     (tensor data must be contiguous in tensor-info order, each padded to \
                     {alignment} bytes)"
                )));
            }
            let info = TensorInfo {
                name,
                dims,
                ty,
                offset,
            };
            expected_offset = checked_tensor_bytes(&info.dims, info.ty)
                .and_then(|b| b.checked_next_multiple_of(alignment))
                .and_then(|b| expected_offset.checked_add(b))
                .ok_or_else(|| err_at(format!("tensor `{}`: data size overflows", info.name)))?;
            tensors.push(info);
        }
        let data_start = pad_to(r.pos, alignment);
        let needed = data_start.saturating_add(expected_offset);
        if needed > len {
            return Err(GgufError::Malformed {
                path: path.to_path_buf(),
                offset: len,
                reason: format!(
                    "file is {len} bytes but its tensor data needs {needed} (truncated?)"
                ),
            });
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            alignment,
            data_start,
            file_len: len,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Metadata pairs in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The data alignment.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the data section.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// The file's length in bytes.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The raw bytes of tensor `name` (read from the file on disk).
    pub fn read_tensor_bytes(&self, name: &str) -> GgufResult<Vec<u8>> {
        let info = self
            .tensor(name)
            .ok_or_else(|| GgufError::tensor(name, format!("not in {}", self.path.display())))?;
        let file = File::open(&self.path).map_err(|e| GgufError::io(&self.path, e))?;
        let mut buf = vec![0u8; info.n_bytes() as usize];
        read_at(&file, &mut buf, self.data_start + info.offset)
            .map_err(|e| GgufError::io(&self.path, e))?;
        Ok(buf)
    }

    /// Tensor `name` as `f32` values (F32/F16/BF16 converted, quantized types dequantized).
    pub fn read_tensor_f32(&self, name: &str) -> GgufResult<Vec<f32>> {
        let info = self
            .tensor(name)
            .ok_or_else(|| GgufError::tensor(name, format!("not in {}", self.path.display())))?;
        let bytes = self.read_tensor_bytes(name)?;
        dequantize(info.ty, &bytes, info.n_elements() as usize)
            .map_err(|reason| GgufError::tensor(name, reason))
    }
}

/// Converts `n` elements of type `ty` to f32.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>, String> {
    let expected = ty.row_bytes(n);
    if bytes.len() != expected || !n.is_multiple_of(ty.block_size()) {
        return Err(format!(
            "{} bytes do not hold {n} {ty} elements",
            bytes.len()
        ));
    }
    let mut out = vec![0f32; n];
    super::quant::dequantize_row(ty, bytes, &mut out);
    Ok(out)
}

/// Converts f32 values to ggml F16 bytes the way ggml does (round to nearest even, NaN →
/// `sign | 0x7E00`).
pub fn f32_to_f16_bytes(src: &[f32], dst: &mut Vec<u8>) {
    for &x in src {
        let bits = if x.is_nan() {
            ((x.to_bits() >> 16) & 0x8000) as u16 | 0x7E00
        } else {
            half::f16::from_f32(x).to_bits()
        };
        dst.extend_from_slice(&bits.to_le_bytes());
    }
}

/// Converts f32 values to ggml BF16 bytes (round to nearest even, NaN made quiet).
pub fn f32_to_bf16_bytes(src: &[f32], dst: &mut Vec<u8>) {
    for &x in src {
        let u = x.to_bits();
        let bits = if (u & 0x7FFF_FFFF) > 0x7F80_0000 {
            ((u >> 16) | 0x40) as u16
        } else {
            ((u + (0x7FFF + ((u >> 16) & 1))) >> 16) as u16
        };
        dst.extend_from_slice(&bits.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_metadata() -> Vec<(String, GgufValue)> {
        vec![
            (
                "general.architecture".into(),
                GgufValue::String("llama".into()),
            ),
            ("a.u8".into(), GgufValue::U8(200)),
            ("a.i8".into(), GgufValue::I8(-5)),
            ("a.u16".into(), GgufValue::U16(65000)),
            ("a.i16".into(), GgufValue::I16(-30000)),
            ("a.u32".into(), GgufValue::U32(4_000_000_000)),
            ("a.i32".into(), GgufValue::I32(-2_000_000_000)),
            ("a.f32".into(), GgufValue::F32(-0.0)),
            ("a.bool".into(), GgufValue::Bool(true)),
            ("a.u64".into(), GgufValue::U64(u64::MAX)),
            ("a.i64".into(), GgufValue::I64(i64::MIN)),
            ("a.f64".into(), GgufValue::F64(1e-300)),
            (
                "a.strings".into(),
                GgufValue::string_array(["▁x", "", "Ġy"]),
            ),
            ("a.floats".into(), GgufValue::f32_array([1.5, -0.0])),
            ("a.ints".into(), GgufValue::i32_array([1, -2, 3])),
            (
                "a.bools".into(),
                GgufValue::Array(
                    GgufValueType::Bool,
                    vec![GgufValue::Bool(false), GgufValue::Bool(true)],
                ),
            ),
        ]
    }

    fn sample_tensors() -> Vec<(TensorSpec, Vec<u8>)> {
        let a: Vec<u8> = (0..3 * 5 * 4).map(|i| i as u8).collect();
        let mut b = Vec::new();
        f32_to_f16_bytes(&[1.0, -2.0, 0.5, 65504.0, 1e-7, 3.0, 0.0, -0.0], &mut b);
        let c = vec![7u8; 34 * 2];
        vec![
            (
                TensorSpec {
                    name: "blk.0.x.weight".into(),
                    dims: vec![5, 3],
                    ty: GgmlType::F32,
                },
                a,
            ),
            (
                TensorSpec {
                    name: "h".into(),
                    dims: vec![8],
                    ty: GgmlType::F16,
                },
                b,
            ),
            (
                TensorSpec {
                    name: "q".into(),
                    dims: vec![32, 2, 1, 1],
                    ty: GgmlType::Q8_0,
                },
                c,
            ),
        ]
    }

    #[test]
    fn round_trip_every_value_type() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let md = sample_metadata();
        let ts = sample_tensors();
        write_gguf(&path, &md, &ts).unwrap();
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), 32);
        assert_eq!(f.metadata().len(), md.len());
        for ((k1, v1), (k2, v2)) in f.metadata().iter().zip(&md) {
            assert_eq!(k1, k2);
            match (v1, v2) {
                (GgufValue::F32(a), GgufValue::F32(b)) => assert_eq!(a.to_bits(), b.to_bits()),
                _ => assert_eq!(v1, v2),
            }
        }
        assert_eq!(f.tensors().len(), 3);
        for (info, (spec, data)) in f.tensors().iter().zip(&ts) {
            assert_eq!(info.name, spec.name);
            assert_eq!(info.dims, spec.dims);
            assert_eq!(info.ty, spec.ty);
            assert_eq!(info.offset % 32, 0);
            assert_eq!(&f.read_tensor_bytes(&info.name).unwrap(), data);
        }
        // contiguous, padded, last tensor padded too
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(len, f.data_start() + 64 + 32 + 96);
        assert_eq!(len % 32, 0);
        let h = f.read_tensor_f32("h").unwrap();
        assert_eq!(
            h,
            vec![1.0, -2.0, 0.5, 65504.0, 1.1920929e-7, 3.0, 0.0, -0.0]
        );
    }

    #[test]
    fn hand_built_header_bytes() {
        // One u32 KV and one 1-D F32 tensor of 2 elements, built byte by byte from spec §1.1.
        let md = vec![("k".to_string(), GgufValue::U32(7))];
        let ts = vec![TensorSpec {
            name: "t".into(),
            dims: vec![2],
            ty: GgmlType::F32,
        }];
        let layout = GgufLayout::new(&md, &ts).unwrap();
        let mut want = Vec::new();
        want.extend_from_slice(b"GGUF");
        want.extend_from_slice(&3u32.to_le_bytes());
        want.extend_from_slice(&1u64.to_le_bytes());
        want.extend_from_slice(&1u64.to_le_bytes());
        want.extend_from_slice(&1u64.to_le_bytes());
        want.push(b'k');
        want.extend_from_slice(&4u32.to_le_bytes());
        want.extend_from_slice(&7u32.to_le_bytes());
        want.extend_from_slice(&1u64.to_le_bytes());
        want.push(b't');
        want.extend_from_slice(&1u32.to_le_bytes());
        want.extend_from_slice(&2u64.to_le_bytes());
        want.extend_from_slice(&0u32.to_le_bytes());
        want.extend_from_slice(&0u64.to_le_bytes());
        assert_eq!(&layout.header()[..want.len()], &want[..]);
        assert_eq!(layout.data_start(), 96);
        assert!(layout.header()[want.len()..].iter().all(|&b| b == 0));
        assert_eq!(layout.total_size(), 96 + 32);
    }

    #[test]
    fn parallel_out_of_order_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.gguf");
        let specs: Vec<TensorSpec> = (0..16)
            .map(|i| TensorSpec {
                name: format!("t{i}"),
                dims: vec![3 + i as u64],
                ty: GgmlType::F32,
            })
            .collect();
        let layout = GgufLayout::new(&[], &specs).unwrap();
        let w = GgufWriter::create(&path, layout).unwrap();
        std::thread::scope(|s| {
            for part in 0..2 {
                let w = &w;
                s.spawn(move || {
                    for i in (0..16).rev().filter(|i| i % 2 == part) {
                        let data: Vec<u8> = (0..(3 + i) * 4).map(|b| (b + i) as u8).collect();
                        w.write_tensor(i, &data).unwrap();
                    }
                });
            }
        });
        assert!(!path.exists(), "destination must appear only on finish");
        w.finish().unwrap();
        let f = GgufFile::open(&path).unwrap();
        for i in 0..16usize {
            let want: Vec<u8> = (0..(3 + i) * 4).map(|b| (b + i) as u8).collect();
            assert_eq!(f.read_tensor_bytes(&format!("t{i}")).unwrap(), want);
        }
    }

    #[test]
    fn unfinished_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.gguf");
        let specs = vec![TensorSpec {
            name: "a".into(),
            dims: vec![4],
            ty: GgmlType::F32,
        }];
        let w = GgufWriter::create(&path, GgufLayout::new(&[], &specs).unwrap()).unwrap();
        assert!(w.write_tensor(0, &[0u8; 15]).is_err());
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let w = GgufWriter::create(&path, GgufLayout::new(&[], &specs).unwrap()).unwrap();
        let e = w.finish().unwrap_err().to_string();
        assert!(e.contains("no data was written"), "{e}");
        assert!(!path.exists());
    }

    #[test]
    fn writer_rejects_what_llama_cpp_rejects() {
        let t = |name: &str, dims: Vec<u64>, ty| TensorSpec {
            name: name.into(),
            dims,
            ty,
        };
        let long = "x".repeat(64);
        assert!(GgufLayout::new(&[], &[t(&long, vec![1], GgmlType::F32)]).is_err());
        assert!(GgufLayout::new(&[], &[t(&long[..63], vec![1], GgmlType::F32)]).is_ok());
        assert!(GgufLayout::new(&[], &[t("a", vec![100, 2], GgmlType::Q4_K)]).is_err());
        assert!(GgufLayout::new(&[], &[t("a", vec![1, 1, 1, 1, 1], GgmlType::F32)]).is_err());
        let dup = [
            t("a", vec![1], GgmlType::F32),
            t("a", vec![1], GgmlType::F32),
        ];
        assert!(GgufLayout::new(&[], &dup).is_err());
        let dupk = [
            ("k".to_string(), GgufValue::U8(1)),
            ("k".to_string(), GgufValue::U8(2)),
        ];
        assert!(GgufLayout::new(&dupk, &[]).is_err());
        let nested = [(
            "k".to_string(),
            GgufValue::Array(GgufValueType::Array, vec![]),
        )];
        assert!(GgufLayout::new(&nested, &[]).is_err());
        let mixed = [(
            "k".to_string(),
            GgufValue::Array(GgufValueType::U8, vec![GgufValue::U16(1)]),
        )];
        assert!(GgufLayout::new(&mixed, &[]).is_err());
        let align = [("general.alignment".to_string(), GgufValue::U32(24))];
        assert!(GgufLayout::new(&align, &[]).is_err());
        let align64 = [("general.alignment".to_string(), GgufValue::U32(64))];
        let l = GgufLayout::new(&align64, &[t("a", vec![3], GgmlType::F32)]).unwrap();
        assert_eq!(l.data_start() % 64, 0);
        assert_eq!(l.total_size() - l.data_start(), 64);
    }

    fn sample_bytes() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.gguf");
        write_gguf(&path, &sample_metadata(), &sample_tensors()).unwrap();
        std::fs::read(path).unwrap()
    }

    #[test]
    fn truncated_files_are_errors_not_panics() {
        let bytes = sample_bytes();
        assert!(GgufFile::from_bytes(&bytes, "ok.gguf").is_ok());
        for cut in 0..bytes.len() {
            let e = GgufFile::from_bytes(&bytes[..cut], "cut.gguf").unwrap_err();
            let msg = e.to_string();
            assert!(msg.starts_with("cut.gguf: invalid GGUF file"), "{msg}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let bytes = sample_bytes();
        // flip every byte of the header, one at a time, in a few ways; must never panic
        let header_len = 400.min(bytes.len());
        for i in 0..header_len {
            for x in [0xFFu8, 0x80, 0x01] {
                let mut b = bytes.clone();
                b[i] ^= x;
                let _ = GgufFile::from_bytes(&b, "g.gguf");
            }
        }
        // deterministic pseudo-random garbage after a valid magic and version
        let mut state = 0x1234_5678_u64;
        for _ in 0..200 {
            let mut b = b"GGUF\x03\0\0\0".to_vec();
            for _ in 0..200 {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                b.push((state >> 56) as u8);
            }
            assert!(GgufFile::from_bytes(&b, "r.gguf").is_err());
        }
    }

    #[test]
    fn reader_checks() {
        let bytes = sample_bytes();
        let e = |b: &[u8]| GgufFile::from_bytes(b, "x.gguf").unwrap_err().to_string();
        let mut b = bytes.clone();
        b[0] = b'X';
        assert!(e(&b).contains("bad magic"));
        let mut b = bytes.clone();
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert!(e(&b).contains("version 1"));
        let mut b = bytes.clone();
        b[4..8].copy_from_slice(&0x0300_0000u32.to_le_bytes());
        assert!(e(&b).contains("big-endian"));
        let mut b = bytes.clone();
        b[4..8].copy_from_slice(&4u32.to_le_bytes());
        assert!(e(&b).contains("unsupported GGUF version 4"));
        // version 2 is accepted
        let mut b = bytes.clone();
        b[4..8].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(GgufFile::from_bytes(&b, "v2").unwrap().version(), 2);
        // bool byte 2
        let pos = find(&bytes, b"a.bool") + 6 + 4;
        let mut b = bytes.clone();
        b[pos] = 2;
        assert!(e(&b).contains("bool byte 2"));
        // duplicate key: rename a.i8 to a.u8
        let pos = find(&bytes, b"a.i8");
        let mut b = bytes.clone();
        b[pos..pos + 4].copy_from_slice(b"a.u8");
        assert!(e(&b).contains("duplicate metadata key `a.u8`"));
        // duplicate tensor name: rename "h" to "q"
        let pos = find(&bytes, b"\x01\0\0\0\0\0\0\0h\x01\0\0\0") + 8;
        let mut b = bytes.clone();
        b[pos] = b'q';
        assert!(e(&b).contains("duplicate tensor name `q`"));
        // nested array: element type 9
        let pos = find(&bytes, b"a.floats") + 8 + 4;
        let mut b = bytes.clone();
        b[pos..pos + 4].copy_from_slice(&9u32.to_le_bytes());
        assert!(e(&b).contains("nested arrays"));
        // bad ggml type for tensor "h": type id follows name, n_dims, 1 dim
        let pos = find(&bytes, b"\x01\0\0\0\0\0\0\0h\x01\0\0\0") + 9 + 4 + 8;
        let mut b = bytes.clone();
        b[pos..pos + 4].copy_from_slice(&99u32.to_le_bytes());
        assert!(e(&b).contains("ggml type id 99"));
        // block divisibility: make h Q8_0 (8 elements is not a multiple of 32)
        let mut b = bytes.clone();
        b[pos..pos + 4].copy_from_slice(&8u32.to_le_bytes());
        assert!(e(&b).contains("not a multiple"));
        // non-contiguous offset for h
        let mut b = bytes.clone();
        b[pos + 4..pos + 12].copy_from_slice(&96u64.to_le_bytes());
        assert!(e(&b).contains("contiguous"));
        // too many dims
        let mut b = bytes.clone();
        b[pos - 12..pos - 8].copy_from_slice(&5u32.to_le_bytes());
        assert!(e(&b).contains("dimensions"));
        // element count fits in i64 but the byte count overflows: 2^62 f32 elements
        let mut b = bytes.clone();
        b[pos - 8..pos].copy_from_slice(&(1u64 << 62).to_le_bytes());
        b[pos..pos + 4].copy_from_slice(&0u32.to_le_bytes());
        assert!(
            e(&b).contains("tensor `h`: data size overflows"),
            "{}",
            e(&b)
        );
        // missing final padding
        assert!(e(&bytes[..bytes.len() - 1]).contains("truncated"));
    }

    fn find(hay: &[u8], needle: &[u8]) -> usize {
        hay.windows(needle.len())
            .position(|w| w == needle)
            .expect("needle present")
    }

    #[test]
    fn bf16_and_f16_conversions_follow_ggml() {
        let mut out = Vec::new();
        f32_to_bf16_bytes(
            &[
                1.0,
                f32::from_bits(0x3F80_8000),
                f32::from_bits(0x3F81_8000),
                f32::NAN,
            ],
            &mut out,
        );
        let got: Vec<u16> = out
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        // ties to even: 0x3F808000 -> 0x3F80, 0x3F818000 -> 0x3F82; NaN quiet
        assert_eq!(got[..3], [0x3F80, 0x3F80, 0x3F82]);
        assert_eq!(got[3] & 0x7FC0, 0x7FC0);
        let mut out = Vec::new();
        f32_to_f16_bytes(&[65520.0, 65519.0, -f32::NAN], &mut out);
        let got: Vec<u16> = out
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(got, vec![0x7C00, 0x7BFF, 0xFE00]);
    }
}
