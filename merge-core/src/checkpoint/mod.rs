//! Checkpoints: model folders, bare `.safetensors` files and hub ids found offline in the local
//! Hugging Face cache, memory-mapped read-only with every header validated.
//!
//! A [`Checkpoint`] holds the mapped files, a name → [`TensorInfo`] index (absolute byte ranges
//! into the maps) and the model's `config.json`. Tensor data is read on demand with
//! [`Checkpoint::read_f32`], chunk by chunk, so memory is bounded by what the caller asks for.

pub mod hub;

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use smelt_formats::{safetensors, torch};

use crate::dtype::DType;
use crate::error::{Error, Result};

/// Where one tensor lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Element type.
    pub dtype: DType,
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// Index into [`Checkpoint::files`].
    pub file: usize,
    /// Absolute byte range inside that file.
    pub range: Range<usize>,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A memory-mapped, read-only input file.
#[derive(Debug)]
pub struct MappedFile {
    /// The file.
    pub path: PathBuf,
    /// The open file (read-only), for positional reads.
    pub file: File,
    /// Its read-only map.
    pub map: Mmap,
}

/// An opened model.
#[derive(Debug)]
pub struct Checkpoint {
    /// The reference as written (for messages).
    pub name: String,
    /// Folder holding config and tokenizer files (`None` for a bare weights file).
    pub dir: Option<PathBuf>,
    /// Weight files, mapped.
    pub files: Vec<MappedFile>,
    /// Every tensor by name.
    pub tensors: BTreeMap<String, TensorInfo>,
    /// Parsed `config.json`, if the folder has one.
    pub config: Option<serde_json::Value>,
    /// A LoRA adapter applied on the fly to the tensors it touches (`model+lora`).
    pub lora: Option<crate::lora::LoraAdapter>,
}

/// Maps `path` read-only.
pub fn map_file(path: &Path) -> Result<Mmap> {
    Ok(open_mapped(path)?.1)
}

/// Opens `path` read-only and maps it.
pub fn open_mapped(path: &Path) -> Result<(File, Mmap)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only; inputs are never written by smelt. Another process
    // truncating the file while we read it is outside what any mmap-based reader can guard
    // against (it would raise SIGBUS), as with every safetensors loader.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok((file, map))
}

impl Checkpoint {
    /// Opens a model folder (single `model.safetensors` or sharded with
    /// `model.safetensors.index.json`) or a bare `.safetensors` file.
    pub fn open(path: &Path, name: &str) -> Result<Checkpoint> {
        if path.is_file() {
            let mut ck = Checkpoint {
                name: name.to_string(),
                dir: None,
                files: Vec::new(),
                tensors: BTreeMap::new(),
                config: None,
                lora: None,
            };
            if path
                .extension()
                .is_some_and(|e| e == "bin" || e == "pt" || e == "pth")
            {
                ck.add_torch(path)?;
            } else {
                ck.add_safetensors(path)?;
            }
            return Ok(ck);
        }
        if !path.is_dir() {
            return Err(Error::ModelNotFound {
                reference: name.to_string(),
                reason: format!("{} does not exist", path.display()),
            });
        }
        let config_path = path.join("config.json");
        let config = if config_path.is_file() {
            let text =
                std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
            let cfg: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::bad_checkpoint(&config_path, e.to_string()))?;
            check_layer_counts(&cfg, &config_path)?;
            Some(cfg)
        } else {
            None
        };
        let mut ck = Checkpoint {
            name: name.to_string(),
            dir: Some(path.to_path_buf()),
            files: Vec::new(),
            tensors: BTreeMap::new(),
            config,
            lora: None,
        };
        let single = path.join("model.safetensors");
        let index = path.join("model.safetensors.index.json");
        if index.is_file() {
            let weight_map = read_index(&index)?;
            let mut shards: Vec<&String> = weight_map.values().collect();
            shards.sort();
            shards.dedup();
            for shard in shards {
                ck.add_safetensors(&path.join(shard))?;
            }
            if let Some((tensor, shard)) = weight_map
                .iter()
                .find(|(tensor, _)| !ck.tensors.contains_key(*tensor))
            {
                return Err(Error::bad_checkpoint(
                    &index,
                    format!(
                        "tensor `{tensor}` is listed in shard `{shard}`, but no shard holds it"
                    ),
                ));
            }
        } else if single.is_file() {
            ck.add_safetensors(&single)?;
        } else if path.join("pytorch_model.bin.index.json").is_file() {
            let index = path.join("pytorch_model.bin.index.json");
            let mut shards: Vec<String> = torch::read_bin_index(&index)?.into_values().collect();
            shards.sort();
            shards.dedup();
            for shard in shards {
                if shard.contains('/') || shard.contains('\\') {
                    return Err(Error::bad_checkpoint(
                        &index,
                        format!("shard name `{shard}` is not a plain file name"),
                    ));
                }
                ck.add_torch(&path.join(shard))?;
            }
        } else if path.join("pytorch_model.bin").is_file() {
            ck.add_torch(&path.join("pytorch_model.bin"))?;
        } else {
            return Err(Error::ModelNotFound {
                reference: name.to_string(),
                reason: format!(
                    "{} has no model.safetensors(.index.json) or pytorch_model.bin(.index.json)",
                    path.display()
                ),
            });
        }
        Ok(ck)
    }

    fn add_safetensors(&mut self, path: &Path) -> Result<()> {
        let (file_handle, map) = open_mapped(path)?;
        let file = self.files.len();
        for (tname, info) in safetensors::parse_header(&map, path)? {
            if self.tensors.contains_key(&tname) {
                return Err(Error::bad_checkpoint(
                    path,
                    format!("tensor `{tname}` appears in more than one shard"),
                ));
            }
            self.tensors.insert(
                tname,
                TensorInfo {
                    dtype: info.dtype,
                    shape: info.shape,
                    file,
                    range: info.range,
                },
            );
        }
        self.files.push(MappedFile {
            path: path.to_path_buf(),
            file: file_handle,
            map,
        });
        Ok(())
    }

    /// Adds a PyTorch checkpoint file (read with the restricted unpickler: no code runs).
    fn add_torch(&mut self, path: &Path) -> Result<()> {
        let (file_handle, map) = open_mapped(path)?;
        let file = self.files.len();
        for t in torch::read_torch_tensors(&map, path)? {
            if self.tensors.contains_key(&t.name) {
                return Err(Error::bad_checkpoint(
                    path,
                    format!("tensor `{}` appears in more than one shard", t.name),
                ));
            }
            self.tensors.insert(
                t.name,
                TensorInfo {
                    dtype: t.dtype,
                    shape: t.shape,
                    file,
                    range: t.data,
                },
            );
        }
        self.files.push(MappedFile {
            path: path.to_path_buf(),
            file: file_handle,
            map,
        });
        Ok(())
    }

    /// Attaches a LoRA adapter (its deltas are added when tensors are read), checking that every
    /// tensor it adapts exists with the right shape.
    pub fn attach_lora(&mut self, adapter: crate::lora::LoraAdapter) -> Result<()> {
        for (name, d) in &adapter.deltas {
            let Some(t) = self.tensors.get(name) else {
                return Err(Error::MissingTensor {
                    tensor: name.clone(),
                    model: self.name.clone(),
                    hint: format!(" (the LoRA adapter {} adapts it)", adapter.dir.display()),
                });
            };
            if t.shape != d.base_shape() {
                return Err(Error::ShapeMismatch {
                    tensor: name.clone(),
                    detail: format!(
                        "{:?} in `{}` vs {:?} for the LoRA adapter {}",
                        t.shape,
                        self.name,
                        d.base_shape(),
                        adapter.dir.display()
                    ),
                });
            }
            if !t.dtype.is_math() {
                return Err(Error::Dtype {
                    tensor: name.clone(),
                    model: self.name.clone(),
                    reason: "a LoRA adapter can only adapt F32, F16 or BF16 weights".into(),
                });
            }
        }
        self.lora = Some(adapter);
        Ok(())
    }

    /// Whether reading tensor `name` adds a LoRA delta (then it must be read whole).
    pub fn has_delta(&self, name: &str) -> bool {
        self.lora
            .as_ref()
            .is_some_and(|l| l.deltas.contains_key(name))
    }

    /// Reads the whole tensor `name` as `f32`, with the LoRA delta added if it has one.
    pub fn read_tensor_f32(&self, name: &str, t: &TensorInfo, out: &mut [f32]) -> Result<()> {
        self.read_f32(t, 0..t.numel(), out)?;
        if let Some(d) = self.lora.as_ref().and_then(|l| l.deltas.get(name)) {
            d.apply(name, out, &t.shape)?;
        }
        Ok(())
    }

    /// The raw bytes of a tensor, through the memory map. A file truncated by someone else
    /// while it is mapped makes such an access fault (SIGBUS): the merge path reads with
    /// [`Checkpoint::read_bytes`] instead.
    pub fn bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.files[t.file].map[t.range.clone()]
    }

    /// Reads the raw bytes `range` (relative to the tensor's data) of `t` into `out` with a
    /// positional read: a file that shrank since it was opened is an error naming it, never a
    /// signal.
    pub fn read_bytes(&self, t: &TensorInfo, range: Range<usize>, out: &mut [u8]) -> Result<()> {
        let f = &self.files[t.file];
        let off = (t.range.start + range.start) as u64;
        std::os::unix::fs::FileExt::read_exact_at(&f.file, out, off).map_err(|e| {
            let reason = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                format!(
                    "the file ended before the data of a tensor (bytes {}..{}): it was truncated or replaced after it was opened",
                    off,
                    off + out.len() as u64
                )
            } else {
                e.to_string()
            };
            Error::bad_checkpoint(&f.path, reason)
        })
    }

    /// The raw bytes of a whole tensor, read with [`Checkpoint::read_bytes`].
    pub fn read_all_bytes(&self, t: &TensorInfo) -> Result<Vec<u8>> {
        let mut v = vec![0u8; t.range.len()];
        self.read_bytes(t, 0..t.range.len(), &mut v)?;
        Ok(v)
    }

    /// Tells the kernel that the pages of `t` will be read soon.
    pub fn prefetch(&self, t: &TensorInfo) {
        let _ = self.files[t.file].map.advise_range(
            memmap2::Advice::WillNeed,
            t.range.start,
            t.range.len(),
        );
    }

    /// Drops this process's mapping of the pages of `t` once it has been read, so resident
    /// memory stays bounded by the tensors in flight, not by the size of the inputs (the data
    /// stays in the page cache; a later read faults it back in).
    pub fn release(&self, t: &TensorInfo) {
        self.release_elems(t, 0..t.numel());
    }

    /// Like [`Checkpoint::release`] for elements `elems` of `t` only (pages at the edges that
    /// neighbouring data shares are dropped too; a later read simply faults them back in).
    pub fn release_elems(&self, t: &TensorInfo, elems: Range<usize>) {
        let sz = t.dtype.size();
        let start = t.range.start + elems.start * sz;
        let len = elems.len() * sz;
        if len == 0 {
            return;
        }
        // SAFETY: the map is read-only and never written, so dropping its pages cannot lose
        // data: any later access re-reads the unchanged file contents. No slice into the range
        // is used after this call by the executor, and even if one were, it would read the same
        // bytes again.
        let _ = unsafe {
            self.files[t.file].map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                start,
                len,
            )
        };
    }

    /// The path of the file a tensor lives in.
    pub fn file_of(&self, t: &TensorInfo) -> &Path {
        &self.files[t.file].path
    }

    /// Decodes elements `elems` of a float tensor into `out` as `f32`, with positional reads
    /// (a positional read copies the range from the page cache in one syscall, far cheaper
    /// than faulting the map in page by page, and a truncated file is an error, not a signal).
    pub fn read_f32(&self, t: &TensorInfo, elems: Range<usize>, out: &mut [f32]) -> Result<()> {
        let sz = t.dtype.size();
        let n = elems.len();
        let bytes = elems.start * sz..elems.end * sz;
        if sz == 4 {
            // read into `out`'s own memory, then fix the byte order in place (no copy)
            // SAFETY: every bit pattern is a valid f32, and the byte view covers exactly the
            // memory of `out`, which we hold mutably.
            let raw = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, n * 4) };
            self.read_bytes(t, bytes, raw)?;
            t.dtype.widen_in_place(out);
            return Ok(());
        }
        // into this thread's byte buffer, then one decoding pass into `out`
        thread_local! {
            static RAW: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        RAW.with(|r| {
            let mut raw = r.borrow_mut();
            raw.resize(n * sz, 0);
            let read = self.read_bytes(t, bytes, &mut raw);
            if read.is_ok() {
                t.dtype.decode_f32(&raw, out);
            }
            if raw.capacity() > 1 << 20 {
                *raw = Vec::new();
            }
            read
        })
    }

    /// The number of layers: `num_hidden_layers` (or `n_layer`, `num_layers`) from config.json,
    /// else one more than the largest `.N.` index in the tensor names.
    pub fn num_layers(&self, key: Option<&str>) -> Option<usize> {
        if let (Some(cfg), Some(k)) = (&self.config, key)
            && let Some(n) = json_path(cfg, k).and_then(|v| v.as_u64())
        {
            return Some(n as usize);
        }
        crate::arch::max_layer_index(self.tensors.keys().map(|s| s.as_str())).map(|m| m + 1)
    }

    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> u64 {
        self.tensors.values().map(|t| t.range.len() as u64).sum()
    }
}

/// Refuses a config whose layer count is present but not a non-negative integer.
fn check_layer_counts(cfg: &serde_json::Value, path: &Path) -> Result<()> {
    for key in [
        "num_hidden_layers",
        "n_layer",
        "num_layers",
        "text_config.num_hidden_layers",
    ] {
        if let Some(v) = json_path(cfg, key)
            && !v.is_null()
            && v.as_u64().is_none()
        {
            return Err(Error::bad_checkpoint(
                path,
                format!("`{key}` is {v}, not a non-negative whole number of layers"),
            ));
        }
    }
    Ok(())
}

/// Looks up a dotted path (`text_config.num_hidden_layers`) in a JSON object.
pub fn json_path<'a>(v: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.').try_fold(v, |cur, k| cur.get(k))
}

/// The `weight_map` of a safetensors index: tensor name → shard file name.
fn read_index(index: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    Ok(safetensors::parse_index(&text, index)?)
}
