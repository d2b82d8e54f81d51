//! `smelt convert`: rewrites a checkpoint (PyTorch `.bin`, sharded or not, optionally with a
//! LoRA adapter applied: `model+lora`) as safetensors with the same tensor names, plus its
//! config and tokenizer files. Tensors without a LoRA delta are copied byte for byte; adapted
//! ones are computed in f32 and stored in the base weight's dtype (as PEFT's
//! `merge_and_unload` does).

use std::path::{Path, PathBuf};

use crate::arch;
use crate::error::{Error, Result};
use crate::exec::{self, ExecOptions};
use crate::methods::{self, ParamValues};
use crate::output::{self, OutputDir};
use crate::plan::{self, Plan, PlanModel, PlannedSource, PlannedTensor};
use crate::recipe::ModelRef;
use crate::writer::{SafetensorsWriter, WrittenFile};

/// Converts the model `reference` (a folder, file or `model+lora`, relative paths resolved
/// against `base_dir`) into the folder `out`.
pub fn convert(
    reference: &str,
    base_dir: &Path,
    out: &Path,
    shard_size: i64,
    threads: usize,
    force: bool,
) -> Result<Vec<WrittenFile>> {
    let r = ModelRef::parse(reference).map_err(|m| Error::ModelNotFound {
        reference: reference.into(),
        reason: m,
    })?;
    let recipe_like = crate::recipe::Recipe::parse(
        &format!(
            "merge_method: passthrough\nmodels:\n  - model: {}\n",
            serde_json::to_string(reference).expect("str")
        ),
        Path::new("<convert>"),
        base_dir,
    )?;
    let mut models = plan::open_models(&recipe_like)?;
    let m: PlanModel = models.remove(0);
    debug_assert_eq!(m.reference, r);
    let inputs: Vec<PathBuf> = std::iter::once(m.path.clone())
        .chain(m.lora_path.clone())
        .collect();
    let ck = &m.checkpoint;
    let mut tensors = Vec::new();
    for (name, info) in &ck.tensors {
        let delta = ck.has_delta(name);
        tensors.push(PlannedTensor {
            name: name.clone(),
            shape: info.shape.clone(),
            math: info.dtype,
            out_dtype: info.dtype,
            is_embed: false,
            sources: vec![PlannedSource {
                model: 0,
                tensor: name.clone(),
                is_base: false,
                params: ParamValues::default(),
                rows: None,
            }],
            global: ParamValues::default(),
            raw_copy: !delta,
        });
    }
    let shards = plan::layout_shards(&tensors, shard_size);
    let config = ck.config.clone();
    let names: Vec<&str> = ck.tensors.keys().map(|s| s.as_str()).collect();
    let layers = arch::max_layer_index(names.iter().copied())
        .map(|x| x + 1)
        .unwrap_or(0);
    let arch = arch::infer(&[(names, layers)], None);
    let plan = Plan {
        method: methods::lookup("passthrough").expect("passthrough is built in"),
        models: vec![m],
        tensors,
        shards,
        arch,
        donor: Some(0),
        base: None,
        config,
        num_layers: layers,
        seed: 0,
        warnings: Vec::new(),
        tokenizer: None,
        chat_template: None,
    };
    let dir = OutputDir::prepare(out, force, &inputs)?;
    let writer = SafetensorsWriter::create(&plan, dir.path())?;
    exec::execute(
        &plan,
        &writer,
        &ExecOptions {
            threads,
            ..ExecOptions::default()
        },
    )?;
    let mut files = writer.finish()?;
    if let Some(idx) = output::index_json(&plan) {
        files.push(output::write_file(
            dir.path(),
            "model.safetensors.index.json",
            idx.as_bytes(),
        )?);
    }
    if let Some(cfg) = &plan.config {
        let text = serde_json::to_string_pretty(cfg).expect("json") + "\n";
        files.push(output::write_file(
            dir.path(),
            "config.json",
            text.as_bytes(),
        )?);
    }
    let (tok, _) = output::copy_tokenizer(&plan, dir.path())?;
    files.extend(tok);
    dir.commit()?;
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}
