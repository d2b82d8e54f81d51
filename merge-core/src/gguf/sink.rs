//! The one-pass GGUF route (`smelt run --gguf TYPE`): merged tensors go straight from the
//! kernels into the quantizer and the GGUF file, row chunk by row chunk, with no f16 copy on
//! disk. Values are first rounded to the recipe's output dtype, so the file is byte-identical
//! to the two-step route (write the merged safetensors, then `smelt quantize` them).

use std::path::Path;

use crate::error::{Error, Result};
use crate::exec::TensorSink;
use crate::plan::Plan;
use smelt_gguf::arch::{Transform, permuted_row};
use smelt_gguf::convert::{self, GgufPlan, HfTensor, PlanOptions, encode_tensor};
use smelt_gguf::error::GgufError;
use smelt_gguf::file::{GgufLayout, GgufValue, GgufWriter};
use smelt_gguf::mixture::FileType;
use smelt_gguf::quant;

/// A [`TensorSink`] that quantizes merged tensors into a GGUF file.
pub struct GgufSink<'a> {
    plan: &'a Plan,
    gplan: GgufPlan,
    writer: GgufWriter,
    /// For each merge tensor: its GGUF tensor index, if it is written.
    route: Vec<Option<usize>>,
}

impl<'a> GgufSink<'a> {
    /// Plans the GGUF file for `plan`'s output (config and tokenizer files are read from
    /// `small_files_dir`, where the run has already written them) and creates it at `out`.
    pub fn create(
        plan: &'a Plan,
        small_files_dir: &Path,
        out: &Path,
        ftype: FileType,
        pre: Option<&str>,
        name: &str,
    ) -> Result<Self> {
        let config = plan.config.clone().ok_or(Error::GgufWithoutConfig)?;
        let list: Vec<HfTensor> = plan
            .tensors
            .iter()
            .map(|t| HfTensor {
                name: t.name.clone(),
                shape: t.shape.iter().map(|&d| d as u64).collect(),
            })
            .collect();
        let n_params: u64 = list.iter().map(|t| t.shape.iter().product::<u64>()).sum();
        let gplan = convert::plan(
            small_files_dir,
            &config,
            &list,
            &PlanOptions {
                ftype,
                pre_override: pre.map(String::from),
                name: Some(name.to_string()),
                general: vec![(
                    "general.size_label".into(),
                    GgufValue::String(convert::size_label(n_params)),
                )],
            },
        )?;
        let mut route = vec![None; plan.tensors.len()];
        for (gi, gt) in gplan.tensors.iter().enumerate() {
            if gt.transform == Transform::Generated {
                continue;
            }
            let ti = plan
                .tensors
                .iter()
                .position(|t| t.name == gt.source)
                .ok_or_else(|| Error::GgufSourceMissing {
                    gguf_tensor: gt.name.clone(),
                    source_tensor: gt.source.clone(),
                })?;
            if !plan.tensors[ti].out_dtype.is_math() {
                return Err(GgufError::tensor(
                    &gt.source,
                    "only float tensors can be written to GGUF",
                )
                .into());
            }
            route[ti] = Some(gi);
        }
        let layout = GgufLayout::new(&gplan.metadata, &gplan.specs())?;
        let writer = GgufWriter::create(out, layout)?;
        for (gi, gt) in gplan.tensors.iter().enumerate() {
            if gt.transform == Transform::Generated {
                let vals = gplan.generated_values(&gt.name).unwrap_or(&[]);
                writer.write_tensor(gi, &encode_tensor(gt, vals)?)?;
            }
        }
        Ok(GgufSink {
            plan,
            gplan,
            writer,
            route,
        })
    }

    /// Finishes the file (fsync, rename into place).
    pub fn finish(self) -> Result<()> {
        self.writer.finish()?;
        Ok(())
    }

    /// The GGUF plan (metadata and tensors).
    pub fn gguf_plan(&self) -> &GgufPlan {
        &self.gplan
    }
}

impl TensorSink for GgufSink<'_> {
    fn chunk_multiple(&self, tensor: usize) -> usize {
        self.plan.tensors[tensor]
            .shape
            .last()
            .copied()
            .unwrap_or(1)
            .max(1)
    }

    fn write_f32(&self, tensor: usize, offset: usize, values: &[f32]) -> Result<()> {
        let Some(gi) = self.route[tensor] else {
            return Ok(());
        };
        let t = &self.plan.tensors[tensor];
        let gt = &self.gplan.tensors[gi];
        let dt = t.out_dtype;
        let mut vals: Vec<f32> = values.iter().map(|v| dt.round(*v)).collect();
        if gt.transform == Transform::AddOne {
            for v in &mut vals {
                *v = dt.round(*v + 1.0);
            }
        }
        if let Some(bad) = vals.iter().position(|v| !v.is_finite()) {
            return Err(GgufError::tensor(
                &t.name,
                format!(
                    "element {} is {}, which llama.cpp cannot use",
                    offset + bad,
                    vals[bad]
                ),
            )
            .into());
        }
        let ne0 = gt.dims[0] as usize;
        if ne0 == 0
            || !ne0.is_multiple_of(gt.ty.block_size())
            || !offset.is_multiple_of(ne0)
            || !vals.len().is_multiple_of(ne0)
        {
            return Err(GgufError::tensor(
                &gt.name,
                format!("rows of {ne0} cannot be written as {}", gt.ty),
            )
            .into());
        }
        let row_bytes = gt.ty.row_bytes(ne0);
        let first_row = offset / ne0;
        match gt.transform {
            Transform::PermuteRows { n_head } => {
                let rows = t.numel() / ne0;
                let mut buf = vec![0u8; row_bytes];
                for (k, row) in vals.chunks_exact(ne0).enumerate() {
                    let dest = permuted_row(first_row + k, rows, n_head as usize);
                    quant::quantize_row(gt.ty, row, &mut buf);
                    self.writer
                        .write_part(gi, (dest * row_bytes) as u64, &buf)?;
                }
            }
            _ => {
                let mut buf = vec![0u8; vals.len() / ne0 * row_bytes];
                quant::quantize_rows(gt.ty, &vals, ne0, &mut buf);
                self.writer
                    .write_part(gi, (first_row * row_bytes) as u64, &buf)?;
            }
        }
        Ok(())
    }

    fn write_raw(&self, tensor: usize, _bytes: &[u8]) -> Result<()> {
        match self.route[tensor] {
            None => Ok(()),
            Some(_) => Err(GgufError::tensor(
                &self.plan.tensors[tensor].name,
                "only float tensors can be written to GGUF",
            )
            .into()),
        }
    }
}

/// Sends every tensor to two sinks (the GGUF file and, with `--keep-safetensors`, the shards).
pub struct Tee<'a>(pub &'a dyn TensorSink, pub &'a dyn TensorSink);

impl TensorSink for Tee<'_> {
    fn write_f32(&self, tensor: usize, offset: usize, values: &[f32]) -> Result<()> {
        self.0.write_f32(tensor, offset, values)?;
        self.1.write_f32(tensor, offset, values)
    }
    fn write_raw(&self, tensor: usize, bytes: &[u8]) -> Result<()> {
        self.0.write_raw(tensor, bytes)?;
        self.1.write_raw(tensor, bytes)
    }
    fn chunk_multiple(&self, tensor: usize) -> usize {
        let (a, b) = (self.0.chunk_multiple(tensor), self.1.chunk_multiple(tensor));
        a / gcd(a, b) * b
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a.max(1) } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permuted_rows_match_the_permutation() {
        let (rows, cols, nh) = (16usize, 1usize, 2usize);
        let data: Vec<usize> = (0..rows).collect();
        let p = smelt_gguf::arch::permute_rows(&data, rows, cols, nh).unwrap();
        for r in 0..rows {
            assert_eq!(p[permuted_row(r, rows, nh)], r);
        }
    }
}
