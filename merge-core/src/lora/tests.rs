//! LoRA tests: config parsing, PEFT's pattern rule, the delta kernel on hand-computed cases,
//! thread-count independence, and the fixture adapter against mergekit's golden merge.

use std::path::{Path, PathBuf};

use super::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn load_f32(p: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    read_safetensors(p)
        .unwrap()
        .into_iter()
        .map(|(n, s, v)| (n, (s, v)))
        .collect()
}

#[test]
fn parses_fixture_config() {
    let p = fixtures().join("lora/tiny-llama-lora-r4/adapter_config.json");
    let c = LoraConfig::from_json(&std::fs::read_to_string(&p).unwrap(), &p).unwrap();
    assert_eq!((c.r, c.lora_alpha), (4, 8.0));
    assert_eq!(
        c.target_modules,
        TargetModules::List(vec!["q_proj".into(), "v_proj".into(), "down_proj".into()])
    );
    assert_eq!(c.rank_pattern, vec![("down_proj".to_string(), 2)]);
    assert_eq!(c.alpha_pattern, vec![("down_proj".to_string(), 6.0)]);
    assert!(!c.fan_in_fan_out && !c.use_rslora);
    assert_eq!(
        c.rank_and_alpha("model.layers.3.mlp.down_proj"),
        Ok((2, 6.0))
    );
    assert_eq!(
        c.rank_and_alpha("model.layers.3.self_attn.q_proj"),
        Ok((4, 8.0))
    );
    assert_eq!(c.scale(2, 6.0), 3.0);
    assert_eq!(c.scale(4, 8.0), 2.0);
}

#[test]
fn config_rejections_and_rslora() {
    let p = Path::new("adapter_config.json");
    let e = LoraConfig::from_json(r#"{"r": 4, "use_dora": true}"#, p).unwrap_err();
    assert!(e.to_string().contains("DoRA"), "{e}");
    let e = LoraConfig::from_json(r#"{"r": 0}"#, p).unwrap_err();
    assert!(
        e.to_string().contains("`r`") || e.to_string().contains("r must"),
        "{e}"
    );
    let e = LoraConfig::from_json(r#"{"r": 4, "peft_type": "IA3"}"#, p).unwrap_err();
    assert!(e.to_string().contains("IA3"), "{e}");
    let c = LoraConfig::from_json(
        r#"{"r": 16, "lora_alpha": 8, "use_rslora": true, "target_modules": ".*proj"}"#,
        p,
    )
    .unwrap();
    assert_eq!(c.scale(16, 8.0), 2.0); // 8 / sqrt(16)
    assert_eq!(c.target_modules, TargetModules::Regex(".*proj".into()));
}

#[test]
fn pattern_rule_follows_peft() {
    // PEFT: re.match(rf"(.*\.)?({key})$", module)
    let m = |k: &str, n: &str| pattern_matches(k, n).unwrap();
    assert!(m("foo", "foo"));
    assert!(m("foo", "model.foo"));
    assert!(m("foo", "model.bar.foo"));
    assert!(!m("foo", "model.xfoo"));
    assert!(!m("foo", "model.foo.bar"));
    assert!(m("bar.foo", "model.bar.foo"));
    assert!(!m("bar.foo", "model.foo"));
    assert!(m("^foo", "foo"));
    assert!(!m("^foo", "model.foo"));
    assert!(m(
        "^model.layers.0.mlp.down_proj",
        "model.layers.0.mlp.down_proj"
    ));
    assert!(!m(
        "^model.layers.0.mlp.down_proj",
        "model.layers.10.mlp.down_proj"
    ));
    assert!(m("layers.1.mlp.down_proj", "model.layers.1.mlp.down_proj"));
    assert!(!m(
        "layers.1.mlp.down_proj",
        "model.layers.11.mlp.down_proj"
    ));
    // `.` is a regex wildcard, `\.` a literal dot.
    assert!(m("layers.1", "model.layersX1"));
    assert!(!m(r"layers\.1", "model.layersX1"));
    assert!(pattern_matches("layers.*.q_proj", "model.layers.0.q_proj").is_err());
    assert!(pattern_matches("(q|v)_proj", "q_proj").is_err());
    // First matching key wins, rank and alpha independently.
    let c = LoraConfig {
        r: 8,
        lora_alpha: 16.0,
        target_modules: TargetModules::None,
        rank_pattern: vec![
            ("layers.0.mlp.down_proj".into(), 2),
            ("down_proj".into(), 4),
        ],
        alpha_pattern: vec![("q_proj".into(), 1.0)],
        fan_in_fan_out: false,
        use_rslora: false,
    };
    assert_eq!(
        c.rank_and_alpha("model.layers.0.mlp.down_proj"),
        Ok((2, 16.0))
    );
    assert_eq!(
        c.rank_and_alpha("model.layers.1.mlp.down_proj"),
        Ok((4, 16.0))
    );
    assert_eq!(
        c.rank_and_alpha("model.layers.1.self_attn.q_proj"),
        Ok((8, 1.0))
    );
}

#[test]
fn apply_lora_hand_computed() {
    // W = [[1,2],[3,4]], A (1x2) = [1,2], B (2x1) = [3,4]: B@A = [[3,6],[4,8]].
    let mut w = vec![1.0, 2.0, 3.0, 4.0];
    apply_lora(&mut w, 2, 2, &[1.0, 2.0], &[3.0, 4.0], 1, 0.5, false).unwrap();
    assert_eq!(w, [2.5, 5.0, 5.0, 8.0]);
    // fan_in_fan_out: W stored in x out, delta transposed: [[3,4],[6,8]].
    let mut w = vec![1.0, 2.0, 3.0, 4.0];
    apply_lora(&mut w, 2, 2, &[1.0, 2.0], &[3.0, 4.0], 1, 0.5, true).unwrap();
    assert_eq!(w, [2.5, 4.0, 6.0, 8.0]);
    // Non-square, r = 2: W 3x2 (out 3, in 2), A 2x2 = [[1,0],[0,1]], B 3x2 = [[1,2],[3,4],[5,6]]
    // B@A = B.
    let mut w = vec![0.0; 6];
    apply_lora(
        &mut w,
        3,
        2,
        &[1.0, 0.0, 0.0, 1.0],
        &[1., 2., 3., 4., 5., 6.],
        2,
        1.0,
        false,
    )
    .unwrap();
    assert_eq!(w, [1., 2., 3., 4., 5., 6.]);
    // The same with fan_in_fan_out: W 2x3 (in 2, out 3) gets Bᵀ.
    let mut w = vec![0.0; 6];
    apply_lora(
        &mut w,
        2,
        3,
        &[1.0, 0.0, 0.0, 1.0],
        &[1., 2., 3., 4., 5., 6.],
        2,
        1.0,
        true,
    )
    .unwrap();
    assert_eq!(w, [1., 3., 5., 2., 4., 6.]);
    // Size mismatches are errors.
    let mut w = vec![0.0; 6];
    assert!(apply_lora(&mut w, 3, 2, &[1.0; 3], &[1.0; 6], 2, 1.0, false).is_err());
    assert!(apply_lora(&mut w, 2, 2, &[1.0; 4], &[1.0; 4], 2, 1.0, false).is_err());
}

#[test]
fn apply_lora_is_thread_count_independent() {
    let (rows, cols, r) = (97, 53, 7);
    let make = |n: usize, seed: u32| -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1664525).wrapping_add(1013904223);
                (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    };
    let base = make(rows * cols, 1);
    let a = make(r * cols, 2);
    let b = make(rows * r, 3);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut w = base.clone();
        pool.install(|| apply_lora(&mut w, rows, cols, &a, &b, r, 1.25, false).unwrap());
        w
    };
    let one = run(1);
    let four = run(4);
    assert!(
        one.iter()
            .zip(&four)
            .all(|(x, y)| x.to_bits() == y.to_bits())
    );
    assert!(one.iter().zip(&base).any(|(x, y)| x != y));
}

#[test]
fn fixture_adapter_touches_the_right_modules() {
    let ad = LoraAdapter::load(&fixtures().join("lora/tiny-llama-lora-r4")).unwrap();
    assert_eq!(ad.deltas.len(), 12);
    for layer in 0..4 {
        for (m, r, alpha, scale, shape) in [
            ("self_attn.q_proj", 4, 8.0, 2.0, [64, 64]),
            ("self_attn.v_proj", 4, 8.0, 2.0, [32, 64]),
            ("mlp.down_proj", 2, 6.0, 3.0, [64, 128]),
        ] {
            let name = format!("model.layers.{layer}.{m}.weight");
            let d = &ad.deltas[&name];
            assert_eq!((d.r, d.alpha, d.scale), (r, alpha, scale), "{name}");
            assert_eq!(d.base_shape(), shape, "{name}");
            assert!(!d.transposed && !d.embedding);
        }
    }
}

/// The fixture adapter applied to tiny-llama base, merged linearly with ft1 (0.6 / 0.4) in
/// f32, must give mergekit's golden output. The golden's unadapted tensors are reproduced bit
/// for bit by `fma(0.4, Y, round(0.6·X)) / (0.6 + 0.4)` (the f32 weight sum is exactly 1; a
/// plain `round(0.6·X) + round(0.4·Y)` matches only ~79 % of values, so torch fuses the last
/// multiply-add), which this test asserts, so the merge formula is pinned down. Adapted values
/// then depend on how `B @ A` is summed: with `apply_lora`'s rank-ordered FMA sum every value
/// is bit-exact, which is asserted (a tolerance of 2 ulp + 1e-7 would be the fallback if torch's
/// matmul order ever changed; plain mul-then-add misses ~4 % by 1 ulp). The inverse form `base+lora ≈ (golden − 0.4·ft1)/0.6` is
/// checked too (|error| < 1e-6; weights are O(0.5), so that is a few ulp).
#[test]
fn fixture_adapter_matches_mergekit_golden() {
    let f = fixtures();
    let ad = LoraAdapter::load(&f.join("lora/tiny-llama-lora-r4")).unwrap();
    let base = load_f32(&f.join("models/tiny-llama/base/model.safetensors"));
    let ft1 = load_f32(&f.join("models/tiny-llama/ft1/model.safetensors"));
    let golden = load_f32(&f.join("lora/golden/lora_linear/model.safetensors"));
    assert_eq!(golden.len(), base.len());
    let (w0, w1) = (0.6f32, 0.4f32);
    assert_eq!(w0 + w1, 1.0);
    let (mut exact, mut total, mut adapted_exact, mut adapted_total) = (0, 0, 0, 0);
    let mut worst_inverse = 0.0f32;
    for (name, (shape, g)) in &golden {
        let (bshape, b) = &base[name];
        assert_eq!(bshape, shape);
        let mut x = b.clone();
        let adapted = match ad.deltas.get(name) {
            Some(d) => {
                d.apply(name, &mut x, shape).unwrap();
                true
            }
            None => false,
        };
        let y = &ft1[name].1;
        for i in 0..g.len() {
            let merged = w1.mul_add(y[i], w0 * x[i]) / (w0 + w1);
            total += 1;
            if merged.to_bits() == g[i].to_bits() {
                exact += 1;
                adapted_exact += adapted as usize;
            } else {
                assert!(
                    adapted,
                    "{name}[{i}]: unadapted tensor differs: {merged} vs {}",
                    g[i]
                );
            }
            adapted_total += adapted as usize;
            if adapted {
                let inv = (g[i] - w1 * y[i]) / w0;
                worst_inverse = worst_inverse.max((inv - x[i]).abs());
            }
        }
    }
    eprintln!(
        "lora golden: {exact}/{total} values bit-exact; adapted tensors {adapted_exact}/\
         {adapted_total}; worst inverse-form error {worst_inverse:e}"
    );
    assert_eq!(adapted_total, 4 * (64 * 64 + 32 * 64 + 64 * 128));
    assert_eq!(adapted_exact, adapted_total, "adapted values not bit-exact");
    assert_eq!(exact, total);
    // The inverse form loses a few ulp to cancellation; weights here are O(0.1).
    assert!(worst_inverse < 1e-6, "{worst_inverse}");
}

/// A test tensor: name, shape, f32 values.
type Spec<'a> = (&'a str, Vec<usize>, Vec<f32>);

/// Writes an adapter folder with the given config and f32 tensors.
fn write_adapter(dir: &Path, config: &str, tensors: &[Spec]) {
    std::fs::write(dir.join("adapter_config.json"), config).unwrap();
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .unwrap();
            (n.to_string(), view)
        })
        .collect();
    let st = safetensors::tensor::serialize(views, None).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), st).unwrap();
}

#[test]
fn embedding_adapter_adds_the_transposed_product() {
    let dir = tempfile::tempdir().unwrap();
    // vocab 3, dim 2, r 1: A (1x3) = [1,2,3], B (2x1) = [10,20]; (B@A)ᵀ is 3x2:
    // [[10,20],[20,40],[30,60]], scale alpha/r = 0.5.
    write_adapter(
        dir.path(),
        r#"{"peft_type": "LORA", "r": 1, "lora_alpha": 0.5, "target_modules": ["embed_tokens"]}"#,
        &[
            (
                "base_model.model.model.embed_tokens.lora_embedding_A",
                vec![1, 3],
                vec![1., 2., 3.],
            ),
            (
                "base_model.model.model.embed_tokens.lora_embedding_B",
                vec![2, 1],
                vec![10., 20.],
            ),
        ],
    );
    let ad = LoraAdapter::load(dir.path()).unwrap();
    let d = &ad.deltas["model.embed_tokens.weight"];
    assert!(d.embedding && d.transposed);
    assert_eq!(d.base_shape(), [3, 2]);
    let mut w = vec![0.0; 6];
    d.apply("model.embed_tokens.weight", &mut w, &[3, 2])
        .unwrap();
    assert_eq!(w, [5., 10., 10., 20., 15., 30.]);
    let e = d
        .apply("model.embed_tokens.weight", &mut w, &[2, 3])
        .unwrap_err();
    assert!(e.to_string().contains("model.embed_tokens.weight"), "{e}");
}

#[test]
fn bad_adapters_are_refused_with_the_key() {
    let cfg = r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4}"#;
    let a = (
        "base_model.model.m.q.lora_A.weight",
        vec![2, 3],
        vec![0.0; 6],
    );
    let b = (
        "base_model.model.m.q.lora_B.weight",
        vec![4, 2],
        vec![0.0; 8],
    );
    let cases: Vec<(Vec<Spec>, &str)> = vec![
        (vec![a.clone()], "lacks lora_A or lora_B"),
        (
            vec![
                a.clone(),
                b.clone(),
                (
                    "base_model.model.m.q.lora_magnitude_vector",
                    vec![4],
                    vec![1.0; 4],
                ),
            ],
            "lora_magnitude_vector",
        ),
        (
            vec![
                (
                    "base_model.model.m.q.lora_A.weight",
                    vec![3, 3],
                    vec![0.0; 9],
                ),
                b.clone(),
            ],
            "rank 2",
        ),
    ];
    for (tensors, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        write_adapter(dir.path(), cfg, &tensors);
        let e = LoraAdapter::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains(want) && e.contains("adapter_model.safetensors"),
            "{e}"
        );
    }
    // A good one loads, and a missing weights file is reported.
    let dir = tempfile::tempdir().unwrap();
    write_adapter(dir.path(), cfg, &[a, b]);
    let ad = LoraAdapter::load(dir.path()).unwrap();
    assert_eq!(ad.deltas["m.q.weight"].base_shape(), [4, 3]);
    assert_eq!(ad.deltas["m.q.weight"].scale, 2.0);
    std::fs::remove_file(dir.path().join("adapter_model.safetensors")).unwrap();
    let e = LoraAdapter::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("adapter_model"), "{e}");
}

#[test]
fn torch_bin_adapter_is_read_too() {
    use smelt_formats::torch::testing::{build_zip, state_dict_pickle};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("adapter_config.json"),
        r#"{"r": 1, "lora_alpha": 2, "fan_in_fan_out": true}"#,
    )
    .unwrap();
    let pkl = state_dict_pickle(
        &[
            (
                "base_model.model.h.c_attn.lora_A.weight",
                "FloatStorage",
                "0",
                2,
                0,
                &[1, 2],
                &[2, 1],
            ),
            (
                "base_model.model.h.c_attn.lora_B.weight",
                "FloatStorage",
                "1",
                3,
                0,
                &[3, 1],
                &[1, 1],
            ),
        ],
        false,
    );
    let a: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    let b: Vec<u8> = [1.0f32, 0.0, -1.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let z = build_zip(
        &[
            ("adapter_model/data.pkl", &pkl),
            ("adapter_model/data/0", &a),
            ("adapter_model/data/1", &b),
        ],
        false,
        0,
    );
    std::fs::write(dir.path().join("adapter_model.bin"), z).unwrap();
    let ad = LoraAdapter::load(dir.path()).unwrap();
    let d = &ad.deltas["h.c_attn.weight"];
    // Conv1D weight is in x out = 2x3; delta = 2 * (B@A)ᵀ = 2 * [[1,0,-1],[2,0,-2]].
    assert_eq!(d.base_shape(), [2, 3]);
    let mut w = vec![0.0; 6];
    d.apply("h.c_attn.weight", &mut w, &[2, 3]).unwrap();
    assert_eq!(w, [2., 0., -2., 4., 0., -4.]);
}
