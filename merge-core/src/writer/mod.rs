//! The safetensors sink: every shard's header is written first (all shapes and offsets are
//! known from the plan), then workers write each tensor's bytes at its offset with positional
//! writes, in any order. Headers carry `{"format":"pt"}` metadata and are space-padded so the
//! data section starts on an 8-byte boundary, like the official writer.
//!
//! Each shard is hashed while it is written ([`hasher`]), so the lock file's digests cost no
//! read-back at the end.

pub mod hasher;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::exec::TensorSink;
use crate::plan::{Plan, PlannedTensor};
use hasher::OrderedHasher;

/// A written output file: name and size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    /// File name inside the output folder.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256 (hex), when it was computed while writing.
    pub sha256: Option<String>,
}

/// Builds the header (length prefix included) of a shard holding `tensors` in that order;
/// returns it with each tensor's data offset relative to the data section.
pub fn shard_header(tensors: &[&PlannedTensor]) -> (Vec<u8>, Vec<u64>) {
    let mut json = String::from(r#"{"__metadata__":{"format":"pt"}"#);
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut pos = 0u64;
    for t in tensors {
        let n = t.nbytes() as u64;
        offsets.push(pos);
        let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        json.push_str(&format!(
            r#",{}:{{"dtype":"{}","shape":[{}],"data_offsets":[{},{}]}}"#,
            serde_json::to_string(&t.name).expect("string"),
            t.out_dtype.safetensors_name(),
            shape.join(","),
            pos,
            pos + n
        ));
        pos += n;
    }
    json.push('}');
    while (8 + json.len()) % 8 != 0 {
        json.push(' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    (out, offsets)
}

/// Writes a plan's shards into a folder.
pub struct SafetensorsWriter<'a> {
    plan: &'a Plan,
    files: Vec<(PathBuf, File, u64, OrderedHasher)>,
    /// Per tensor: (shard index, absolute byte offset of its data).
    loc: Vec<(usize, u64)>,
}

impl<'a> SafetensorsWriter<'a> {
    /// Creates every shard file in `dir` with its header, sized to its final length.
    pub fn create(plan: &'a Plan, dir: &Path) -> Result<Self> {
        let mut loc = vec![(0usize, 0u64); plan.tensors.len()];
        let mut files = Vec::new();
        for (si, shard) in plan.shards.iter().enumerate() {
            let ts: Vec<&PlannedTensor> = shard.tensors.iter().map(|&i| &plan.tensors[i]).collect();
            let (header, offsets) = shard_header(&ts);
            let data: u64 = ts.iter().map(|t| t.nbytes() as u64).sum();
            for (&i, off) in shard.tensors.iter().zip(offsets) {
                loc[i] = (si, header.len() as u64 + off);
            }
            let path = dir.join(&shard.file);
            let f = File::create(&path).map_err(|e| Error::io(&path, e))?;
            f.write_all_at(&header, 0)
                .map_err(|e| Error::io(&path, e))?;
            let total = header.len() as u64 + data;
            f.set_len(total).map_err(|e| Error::io(&path, e))?;
            let hasher = OrderedHasher::start(&path, total)?;
            hasher.written(0, header.len() as u64);
            files.push((path, f, total, hasher));
        }
        Ok(SafetensorsWriter { plan, files, loc })
    }

    /// Flushes every shard to disk and returns the files written, with their digests.
    pub fn finish(self) -> Result<Vec<WrittenFile>> {
        let mut out = Vec::new();
        for ((path, f, size, hasher), shard) in self.files.into_iter().zip(&self.plan.shards) {
            f.sync_all().map_err(|e| Error::io(&path, e))?;
            out.push(WrittenFile {
                name: shard.file.clone(),
                size,
                sha256: Some(hasher.finish()?),
            });
        }
        Ok(out)
    }

    fn write_at(&self, tensor: usize, byte_offset: u64, bytes: &[u8]) -> Result<()> {
        let (si, base) = self.loc[tensor];
        let (path, f, _, hasher) = &self.files[si];
        let at = base + byte_offset;
        f.write_all_at(bytes, at).map_err(|e| Error::io(path, e))?;
        hasher.written(at, at + bytes.len() as u64);
        Ok(())
    }
}

impl TensorSink for SafetensorsWriter<'_> {
    fn write_f32(&self, tensor: usize, offset: usize, values: &[f32]) -> Result<()> {
        thread_local! {
            static BYTES: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let dt = self.plan.tensors[tensor].out_dtype;
        BYTES.with(|b| {
            let mut bytes = b.borrow_mut();
            bytes.clear();
            dt.encode_f32(values, &mut bytes);
            let r = self.write_at(tensor, (offset * dt.size()) as u64, &bytes);
            if bytes.capacity() > 1 << 20 {
                *bytes = Vec::new();
            }
            r
        })
    }

    fn write_raw(&self, tensor: usize, bytes: &[u8]) -> Result<()> {
        self.write_at(tensor, 0, bytes)
    }
}
