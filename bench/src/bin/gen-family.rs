//! Writes a synthetic model family shaped like TinyLlama-1.1B (hidden 2048, 22 layers,
//! FFN 5632, 32 heads / 4 KV heads, vocab 32000, untied head) in bf16, sharded like the hub
//! (2 GB shards + index): `base`, and fine-tunes `ft1`, `ft2` = base + small deltas.
//!
//!     gen-family OUT_DIR [--members base,ft1,ft2] [--shard-bytes N] [--tokenizer DIR]
//!
//! `--tokenizer DIR` copies DIR's tokenizer files into every member (a GGUF export needs one).
//!
//! Values are deterministic (a counter-based hash per tensor and element), so every run makes
//! the same bytes.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use half::bf16;
use rayon::prelude::*;

const HIDDEN: usize = 2048;
const LAYERS: usize = 22;
const FFN: usize = 5632;
const HEADS: usize = 32;
const KV: usize = 4;
const VOCAB: usize = 32000;

fn tensors() -> Vec<(String, Vec<usize>)> {
    let kv = HIDDEN / HEADS * KV;
    let mut t = vec![("model.embed_tokens.weight".to_string(), vec![VOCAB, HIDDEN])];
    for l in 0..LAYERS {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        t.push((p("input_layernorm.weight"), vec![HIDDEN]));
        t.push((p("self_attn.q_proj.weight"), vec![HIDDEN, HIDDEN]));
        t.push((p("self_attn.k_proj.weight"), vec![kv, HIDDEN]));
        t.push((p("self_attn.v_proj.weight"), vec![kv, HIDDEN]));
        t.push((p("self_attn.o_proj.weight"), vec![HIDDEN, HIDDEN]));
        t.push((p("post_attention_layernorm.weight"), vec![HIDDEN]));
        t.push((p("mlp.gate_proj.weight"), vec![FFN, HIDDEN]));
        t.push((p("mlp.up_proj.weight"), vec![FFN, HIDDEN]));
        t.push((p("mlp.down_proj.weight"), vec![HIDDEN, FFN]));
    }
    t.push(("model.norm.weight".to_string(), vec![HIDDEN]));
    t.push(("lm_head.weight".to_string(), vec![VOCAB, HIDDEN]));
    t
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Roughly normal (sum of 4 uniforms), mean 0, std ~1.
fn gauss(key: u64, i: u64) -> f32 {
    let h = mix(key ^ mix(i));
    let s: u32 = (0..4).map(|k| ((h >> (16 * k)) & 0xFFFF) as u32).sum();
    (s as f32 / 65535.0 - 2.0) * 1.732
}

fn values(name: &str, member: u64, n: usize, out: &mut [u16]) {
    let key = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let norm = name.contains("norm");
    out.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(c, chunk)| {
            for (j, o) in chunk.iter_mut().enumerate() {
                let i = (c << 16 | j) as u64;
                let base = if norm {
                    1.0 + 0.05 * gauss(key, i)
                } else {
                    0.02 * gauss(key, i)
                };
                let delta = if member == 0 {
                    0.0
                } else {
                    0.001 * gauss(key ^ member.wrapping_mul(0x9E37), i)
                };
                *o = bf16::from_f32(base + delta).to_bits();
            }
        });
    let _ = n;
}

fn write_member(dir: &Path, member: u64, shard_bytes: usize) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let ts = tensors();
    // group into shards
    let mut shards: Vec<Vec<usize>> = vec![vec![]];
    let mut cur = 0;
    for (i, (_, s)) in ts.iter().enumerate() {
        let b = s.iter().product::<usize>() * 2;
        if cur > 0 && cur + b > shard_bytes {
            shards.push(vec![]);
            cur = 0;
        }
        shards.last_mut().unwrap().push(i);
        cur += b;
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    let mut total = 0usize;
    for (k, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", k + 1, n);
        let mut header = String::from(r#"{"__metadata__":{"format":"pt"}"#);
        let mut off = 0usize;
        for &i in shard {
            let (name, shape) = &ts[i];
            let b = shape.iter().product::<usize>() * 2;
            header.push_str(&format!(
                r#","{name}":{{"dtype":"BF16","shape":{shape:?},"data_offsets":[{off},{}]}}"#,
                off + b
            ));
            off += b;
            weight_map.insert(name.clone(), file.clone().into());
        }
        header.push('}');
        while (8 + header.len()) % 8 != 0 {
            header.push(' ');
        }
        total += off;
        let mut w = BufWriter::with_capacity(1 << 22, File::create(dir.join(&file))?);
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(header.as_bytes())?;
        for &i in shard {
            let (name, shape) = &ts[i];
            let numel: usize = shape.iter().product();
            let mut buf = vec![0u16; numel];
            values(name, member, numel, &mut buf);
            let bytes: Vec<u8> = buf.iter().flat_map(|v| v.to_le_bytes()).collect();
            w.write_all(&bytes)?;
        }
        w.flush()?;
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index).unwrap(),
    )?;
    let cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": FFN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "num_key_value_heads": KV, "vocab_size": VOCAB, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false,
        "hidden_act": "silu", "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )?;
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first() else {
        eprintln!("usage: gen-family OUT_DIR [--members base,ft1,ft2] [--shard-bytes N]");
        std::process::exit(2);
    };
    let mut members = "base,ft1,ft2".to_string();
    let mut shard_bytes = 2_000_000_000usize;
    let mut tokenizer: Option<String> = None;
    let mut i = 1;
    while i + 1 < args.len() {
        match args[i].as_str() {
            "--members" => members = args[i + 1].clone(),
            "--shard-bytes" => shard_bytes = args[i + 1].parse().expect("--shard-bytes N"),
            "--tokenizer" => tokenizer = Some(args[i + 1].clone()),
            other => {
                eprintln!("unknown option {other}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    for (k, m) in members.split(',').enumerate() {
        let dir = Path::new(out).join(m);
        if let Some(t) = &tokenizer {
            std::fs::create_dir_all(&dir).expect("create member folder");
            for f in [
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
            ] {
                let src = Path::new(t).join(f);
                if src.is_file() && !dir.join(f).exists() {
                    std::fs::copy(&src, dir.join(f)).expect("copy tokenizer file");
                }
            }
        }
        if dir.join("config.json").exists() {
            eprintln!("{} exists, skipping", dir.display());
            continue;
        }
        eprintln!("writing {}", dir.display());
        if let Err(e) = write_member(&dir, k as u64, shard_bytes) {
            eprintln!("error: {}: {e}", dir.display());
            std::process::exit(1);
        }
    }
}
