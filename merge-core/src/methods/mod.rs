//! Merge methods: one file per method, each behind the small [`MergeMethod`] trait.
//!
//! A kernel sees only `f32` slices and parameters already resolved to numbers for the tensor
//! at hand ([`MergeCtx`]); it never sees YAML, file names or threads. The planner decides which
//! inputs and parameters each output tensor gets, the executor decides when it runs and how
//! much memory it may hold, and the kernel computes.
//!
//! Numbers: the executor hands every input already rounded to the math dtype (`ctx.math`, the
//! recipe's `dtype`, else the stored dtype). A kernel that emulates half-precision math rounds
//! the result of every elementwise operation with `ctx.math.round(x)`, as a PyTorch operation
//! on tensors of that dtype would; reductions (sums over models, norms) accumulate in `f32` and
//! round once, as PyTorch's CPU reductions do. With `F32` math, rounding is the identity.
//!
//! Determinism: results must not depend on the thread count. Reductions over a tensor use a
//! fixed chunking ([`REDUCE_CHUNK`]) and combine the partial results in chunk order. Random
//! methods draw from [`rng`], keyed by the seed, the tensor name, the model index and the
//! element index, never from a stateful stream.

use crate::dtype::DType;

pub mod arcee_fusion;
pub mod breadcrumbs;
pub mod breadcrumbs_ties;
pub mod consensus;
pub mod dare_linear;
pub mod dare_ties;
pub mod della;
pub mod della_linear;
pub mod della_mask;
pub mod karcher;
pub mod linear;
pub mod model_stock;
pub mod multislerp;
pub mod nearswap;
pub mod nuslerp;
pub mod passthrough;
pub mod ram;
pub mod ramplus_tl;
pub mod rng;
pub mod round;
pub mod sce;
pub mod slerp;
pub mod sparsify;
pub mod task_arithmetic;
pub mod task_family;
pub mod ties;
pub mod torch_sort;
pub mod vecmath;

/// The per-model `weight` of the weighted methods (linear, the SLERPs, the task family).
pub const WEIGHT: ParamSpec = ParamSpec::model_required("weight");

/// Fixed chunk length (elements) for deterministic parallel reductions.
pub const REDUCE_CHUNK: usize = 1 << 16;

/// Where a parameter is looked up (mergekit's per-model "tensor parameters" or global ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Set per model (`models[i].parameters`, slice source parameters), with fallback to the
    /// slice, module and global levels.
    PerModel,
    /// Set for the whole merge (slice, module or global `parameters`).
    Global,
}

/// How a value of a parameter is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A number.
    Number,
    /// A boolean (YAML `true`/`false`, or a number: non-zero is true).
    Bool,
}

/// One parameter a method understands.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    /// The recipe key (`weight`, `density`, `t`, ...).
    pub name: &'static str,
    /// Per-model or global.
    pub scope: Scope,
    /// Number or boolean.
    pub kind: Kind,
    /// The default when no level sets it. `None` means absent (or an error if `required`).
    pub default: Option<f64>,
    /// Whether a value is mandatory (per-model parameters are never required of the base).
    pub required: bool,
    /// The values that make sense, if limited, and what a value outside them is.
    pub range: Option<ParamRange>,
}

/// The meaningful values of a parameter: `lo..=hi`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamRange {
    /// Smallest meaningful value.
    pub lo: f64,
    /// Largest meaningful value.
    pub hi: f64,
    /// Whether a value outside is an error (else a warning: some people extrapolate on purpose).
    pub strict: bool,
}

impl ParamRange {
    /// Whether `v` lies in the range.
    pub fn contains(&self, v: f64) -> bool {
        (self.lo..=self.hi).contains(&v)
    }
}

impl ParamSpec {
    /// This parameter's value for the tensor at hand: the one resolved from the recipe, else
    /// the declared default (`None` for an absent parameter that has no default).
    pub fn get(&self, values: &ParamValues) -> Option<f64> {
        values.get(self.name).or(self.default)
    }

    /// This parameter's value, for a parameter declared with a default (the planner refuses
    /// a recipe that leaves a required one unset, so a required one always has a value too).
    ///
    /// # Panics
    /// If the value is absent and the declaration has no default: a kernel reading an
    /// optional parameter must use [`ParamSpec::get`].
    pub fn number(&self, values: &ParamValues) -> f64 {
        match self.get(values) {
            Some(v) => v,
            None => panic!("parameter `{}` has no value and no default", self.name),
        }
    }

    /// This boolean parameter's value (non-zero is true); see [`ParamSpec::number`].
    pub fn flag(&self, values: &ParamValues) -> bool {
        self.number(values) != 0.0
    }

    /// This parameter's value for model `input`, or the message the kernels give when a
    /// required per-model parameter is missing.
    pub fn of_model(&self, input: &Input<'_>) -> Result<f64, String> {
        self.get(input.params).ok_or_else(|| {
            format!(
                "missing required parameter `{}` for model {}",
                self.name, input.model
            )
        })
    }

    /// The same parameter, refused outside `lo..=hi`.
    pub const fn within(mut self, lo: f64, hi: f64) -> Self {
        self.range = Some(ParamRange {
            lo,
            hi,
            strict: true,
        });
        self
    }

    /// The same parameter, with a warning outside `lo..=hi`.
    pub const fn usually_within(mut self, lo: f64, hi: f64) -> Self {
        self.range = Some(ParamRange {
            lo,
            hi,
            strict: false,
        });
        self
    }

    /// A required per-model number.
    pub const fn model_required(name: &'static str) -> Self {
        ParamSpec {
            name,
            scope: Scope::PerModel,
            kind: Kind::Number,
            default: None,
            required: true,
            range: None,
        }
    }
    /// A per-model number with a default.
    pub const fn model(name: &'static str, default: f64) -> Self {
        ParamSpec {
            name,
            scope: Scope::PerModel,
            kind: Kind::Number,
            default: Some(default),
            required: false,
            range: None,
        }
    }
    /// An optional per-model number with no default.
    pub const fn model_optional(name: &'static str) -> Self {
        ParamSpec {
            name,
            scope: Scope::PerModel,
            kind: Kind::Number,
            default: None,
            required: false,
            range: None,
        }
    }
    /// A required global number.
    pub const fn global_required(name: &'static str) -> Self {
        ParamSpec {
            name,
            scope: Scope::Global,
            kind: Kind::Number,
            default: None,
            required: true,
            range: None,
        }
    }
    /// A global number with a default.
    pub const fn global(name: &'static str, default: f64) -> Self {
        ParamSpec {
            name,
            scope: Scope::Global,
            kind: Kind::Number,
            default: Some(default),
            required: false,
            range: None,
        }
    }
    /// A global boolean with a default.
    pub const fn global_bool(name: &'static str, default: bool) -> Self {
        ParamSpec {
            name,
            scope: Scope::Global,
            kind: Kind::Bool,
            default: Some(if default { 1.0 } else { 0.0 }),
            required: false,
            range: None,
        }
    }
}

/// What a method does with `base_model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseUse {
    /// The method has no notion of a base (a base, if given, is one more input).
    None,
    /// A base is used when given.
    Optional,
    /// The method cannot run without a base.
    Required,
}

/// Static description of a merge method.
#[derive(Debug)]
pub struct MethodInfo {
    /// The recipe name (`merge_method:`).
    pub name: &'static str,
    /// The name used in the model card.
    pub pretty_name: &'static str,
    /// Reference for the model card, if any.
    pub url: Option<&'static str>,
    /// Every parameter the method reads.
    pub params: &'static [ParamSpec],
    /// What the method does with a base model.
    pub base: BaseUse,
    /// Whether 2-D embedding inputs of different shapes are cropped to their common top-left
    /// block (mergekit's "embedding rectification") instead of being an error.
    pub rectify_embeddings: bool,
    /// The dtype the method's result has regardless of the math dtype, if any
    /// (arcee_fusion: always F32).
    pub result_dtype: Option<DType>,
    /// Each output element depends only on the same element of the inputs, so the executor
    /// may stream a tensor through the kernel in chunks (`MergeCtx::offset` says where).
    pub elementwise: bool,
}

/// Resolved parameter values for one tensor (and one model, for per-model parameters).
/// Kernels read them through their declarations ([`ParamSpec::get`], [`ParamSpec::number`],
/// [`ParamSpec::flag`]), so a parameter's name and default are written once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParamValues(pub Vec<(&'static str, f64)>);

impl ParamValues {
    /// The value of `name`, if set or defaulted.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

/// One input tensor of a merge, in source order.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The values (already rounded to the math dtype), same length as the output.
    pub data: &'a [f32],
    /// Whether this input is the base model's tensor.
    pub is_base: bool,
    /// This model's resolved per-model parameters.
    pub params: &'a ParamValues,
    /// The model's reference, for messages.
    pub model: &'a str,
}

/// Everything a kernel knows about the tensor it merges.
#[derive(Debug, Clone, Copy)]
pub struct MergeCtx<'a> {
    /// Output tensor name.
    pub tensor: &'a str,
    /// Full shape of the output tensor.
    pub shape: &'a [usize],
    /// For elementwise methods streamed in chunks: index of the first element of this chunk in
    /// the whole tensor. 0 for whole-tensor calls.
    pub offset: usize,
    /// The inputs, in source order (the base among them, flagged).
    pub inputs: &'a [Input<'a>],
    /// Resolved global parameters.
    pub global: &'a ParamValues,
    /// The math dtype (see the module docs on rounding).
    pub math: DType,
    /// The merge's random seed.
    pub seed: u64,
    /// Whether the tensor is an embedding or output head (vocabulary-sized rows).
    pub is_embed: bool,
}

impl<'a> MergeCtx<'a> {
    /// The base input, if any.
    pub fn base(&self) -> Option<&Input<'a>> {
        self.inputs.iter().find(|i| i.is_base)
    }
    /// The non-base inputs, in source order.
    pub fn others(&self) -> impl Iterator<Item = &Input<'a>> {
        self.inputs.iter().filter(|i| !i.is_base)
    }
    /// Number of elements in the whole tensor.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Chunked access to the inputs of one tensor, for kernels that stream a tensor too large to
/// hold whole within the memory budget ([`MergeMethod::merge_streaming`]).
pub trait ChunkSource: Sync {
    /// Number of inputs (as `ctx.inputs`).
    fn inputs(&self) -> usize;
    /// The chunk length output must be written in: every [`ChunkSink::write`] covers
    /// `[k·chunk, min((k+1)·chunk, numel))` for some `k` (rows of a GGUF tensor stay whole).
    fn chunk(&self) -> usize;
    /// Reads elements `range` of input `input`, rounded to the math dtype, into `out`.
    /// May be called from several threads and any number of times.
    fn read(
        &self,
        input: usize,
        range: std::ops::Range<usize>,
        out: &mut [f32],
    ) -> crate::Result<()>;
}

/// Where a streaming kernel writes the merged tensor, chunk by chunk, each element once.
pub trait ChunkSink: Sync {
    /// Writes `values` at element `offset` of the output tensor.
    fn write(&self, offset: usize, values: &[f32]) -> crate::Result<()>;
}

/// A merge method.
pub trait MergeMethod: Send + Sync {
    /// The method's static description.
    fn info(&self) -> &'static MethodInfo;

    /// Merges `ctx.inputs` into `out` (`out.len()` equals every input's length).
    /// Errors are plain messages; the executor adds the method and tensor names.
    fn merge(&self, ctx: &MergeCtx<'_>, out: &mut [f32]) -> Result<(), String>;

    /// Whether [`MergeMethod::merge_streaming`] is implemented.
    fn can_stream(&self) -> bool {
        false
    }

    /// Whether the executor should stream every tensor it can stream, even one that fits the
    /// memory budget whole: for methods whose streaming passes cost less than holding every
    /// input whole (re-reading chunks from the page cache costs less than faulting in and
    /// zeroing tensor-sized buffers). The bits are the same either way.
    fn prefers_streaming(&self) -> bool {
        false
    }

    /// Bytes the streaming kernel holds for a whole tensor of `numel` elements merged from
    /// `inputs` inputs, beyond its chunks in flight (masks, selection buffers): the executor
    /// counts them against the memory budget.
    fn streaming_state_bytes(&self, numel: usize, inputs: usize) -> u64 {
        let _ = (numel, inputs);
        0
    }

    /// Merges a tensor too large for the memory budget without holding any input whole:
    /// reads chunks from `src` as often as needed (whole-tensor statistics first, in fixed
    /// chunks combined in a fixed order) and writes every output chunk to `out`. `ctx.inputs`
    /// carry the per-model parameters, but their `data` is empty. The result must be
    /// bit-identical to [`MergeMethod::merge`] on the same tensor, so the output never depends
    /// on the budget. Returns an error message as `merge` does.
    fn merge_streaming(
        &self,
        _ctx: &MergeCtx<'_>,
        _src: &dyn ChunkSource,
        _out: &dyn ChunkSink,
    ) -> Result<(), String> {
        Err(format!(
            "merge method `{}` cannot stream a tensor",
            self.info().name
        ))
    }
}

impl std::fmt::Debug for dyn MergeMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.info().name)
    }
}

/// Every method smelt implements, in the order `smelt --help` lists them.
pub fn all() -> &'static [&'static dyn MergeMethod] {
    &[
        &linear::Linear,
        &slerp::Slerp,
        &nuslerp::NuSlerp,
        &multislerp::MultiSlerp,
        &karcher::Karcher,
        &task_arithmetic::TaskArithmetic,
        &ties::Ties,
        &dare_ties::DareTies,
        &dare_linear::DareLinear,
        &breadcrumbs::Breadcrumbs,
        &breadcrumbs_ties::BreadcrumbsTies,
        &della::Della,
        &della_linear::DellaLinear,
        &sce::Sce,
        &model_stock::ModelStock,
        &nearswap::NearSwap,
        &arcee_fusion::ArceeFusion,
        &passthrough::Passthrough,
        &ram::Ram,
        &ramplus_tl::RamPlusTl,
    ]
}

/// The README's table of methods: parameters (with defaults) and base use, generated from the
/// methods' own descriptions (a test keeps README.md in sync with it).
pub fn markdown_table() -> String {
    let fmt = |p: &ParamSpec| -> String {
        let d = match (p.required, p.default, p.kind) {
            (true, _, _) => "required".to_string(),
            (false, Some(v), Kind::Bool) => (v != 0.0).to_string(),
            (false, Some(v), Kind::Number) if v != 0.0 && v.abs() < 1e-3 => format!("{v:e}"),
            (false, Some(v), Kind::Number) => format!("{v}"),
            (false, None, _) => "optional".to_string(),
        };
        format!("`{}` ({d})", p.name)
    };
    let mut s = String::from(
        "| method | per-model parameters | global parameters | base model |\n| --- | --- | --- | --- |\n",
    );
    for m in all() {
        let i = m.info();
        let list = |scope| {
            let v: Vec<String> = i
                .params
                .iter()
                .filter(|p| p.scope == scope)
                .map(fmt)
                .collect();
            if v.is_empty() {
                "–".to_string()
            } else {
                v.join(", ")
            }
        };
        let base = match i.base {
            BaseUse::None => "not used",
            BaseUse::Optional => "optional",
            BaseUse::Required => "required",
        };
        s.push_str(&format!(
            "| `{}` | {} | {} | {base} |\n",
            i.name,
            list(Scope::PerModel),
            list(Scope::Global)
        ));
    }
    s
}

/// The method registered under `name`.
pub fn lookup(name: &str) -> Option<&'static dyn MergeMethod> {
    all().iter().copied().find(|m| m.info().name == name)
}

/// Sums `f(chunk)` over fixed chunks of `0..n` in chunk order: a deterministic parallel
/// reduction in `f64` whatever the thread count.
pub fn det_sum(n: usize, f: impl Fn(std::ops::Range<usize>) -> f64 + Sync) -> f64 {
    use rayon::prelude::*;
    let chunks = n.div_ceil(REDUCE_CHUNK);
    let parts: Vec<f64> = (0..chunks)
        .into_par_iter()
        .map(|c| f(c * REDUCE_CHUNK..((c + 1) * REDUCE_CHUNK).min(n)))
        .collect();
    parts.into_iter().sum()
}

#[cfg(test)]
mod param_tests {
    use super::*;

    #[test]
    fn a_declaration_reads_the_resolved_value_else_its_default() {
        const D: ParamSpec = ParamSpec::model("density", 1.0);
        const N: ParamSpec = ParamSpec::global_bool("normalize", true);
        const S: ParamSpec = ParamSpec::model_optional("scale");
        let set = ParamValues(vec![("density", 0.25), ("normalize", 0.0), ("scale", 2.0)]);
        let empty = ParamValues::default();
        assert_eq!(D.number(&set), 0.25);
        assert_eq!(D.number(&empty), 1.0);
        assert!(!N.flag(&set));
        assert!(N.flag(&empty));
        assert_eq!(S.get(&set), Some(2.0));
        assert_eq!(S.get(&empty), None);
    }

    #[test]
    fn a_missing_required_model_parameter_names_the_model() {
        let empty = ParamValues::default();
        let input = Input {
            data: &[],
            is_base: false,
            params: &empty,
            model: "m1",
        };
        assert_eq!(
            WEIGHT.of_model(&input).unwrap_err(),
            "missing required parameter `weight` for model m1"
        );
    }

    #[test]
    #[should_panic(expected = "no value and no default")]
    fn number_of_an_absent_parameter_without_default_panics() {
        ParamSpec::model_optional("scale").number(&ParamValues::default());
    }
}

#[cfg(test)]
mod readme_tests {
    #[test]
    fn readme_lists_every_method_with_its_parameters() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let table = super::markdown_table();
        assert!(
            readme.contains(&table),
            "README.md's method table is out of date; it should read:\n{table}"
        );
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Helpers for kernel unit tests.
    use super::*;

    /// Calls `f` with the context of a tensor of `shape` over `inputs` given as
    /// `(values, is_base, per-model params)` (an embedding when `is_embed`).
    pub fn with_ctx<R>(
        inputs: &[(&[f32], bool, ParamValues)],
        shape: &[usize],
        global: &ParamValues,
        math: DType,
        is_embed: bool,
        f: impl FnOnce(&MergeCtx<'_>) -> R,
    ) -> R {
        let ins: Vec<Input> = inputs
            .iter()
            .enumerate()
            .map(|(k, (d, b, p))| Input {
                data: d,
                is_base: *b,
                params: p,
                model: ["m0", "m1", "m2", "m3", "m4"][k.min(4)],
            })
            .collect();
        f(&MergeCtx {
            tensor: if is_embed {
                "model.embed_tokens.weight"
            } else {
                "model.layers.0.mlp.up_proj.weight"
            },
            shape,
            offset: 0,
            inputs: &ins,
            global,
            math,
            seed: 42,
            is_embed,
        })
    }

    /// Runs `method` on whole tensors of `shape` given as `(values, is_base, params)`.
    pub fn run_shaped(
        method: &dyn MergeMethod,
        inputs: &[(&[f32], bool, ParamValues)],
        shape: &[usize],
        global: ParamValues,
        math: DType,
    ) -> Result<Vec<f32>, String> {
        let n: usize = shape.iter().product();
        let mut out = vec![0.0; n];
        with_ctx(inputs, shape, &global, math, false, |ctx| {
            method.merge(ctx, &mut out)
        })?;
        Ok(out)
    }

    /// Runs `method` on whole 1-D tensors given as `(values, is_base, per-model params)`.
    pub fn run(
        method: &dyn MergeMethod,
        inputs: &[(&[f32], bool, ParamValues)],
        global: ParamValues,
        math: DType,
    ) -> Result<Vec<f32>, String> {
        let n = inputs.first().map(|i| i.0.len()).unwrap_or(0);
        run_shaped(method, inputs, &[n], global, math)
    }

    /// A [`ChunkSource`] over whole in-memory inputs.
    pub struct VecSource<'a> {
        /// The inputs' values.
        pub data: Vec<&'a [f32]>,
        /// The output chunk length.
        pub chunk: usize,
    }

    impl ChunkSource for VecSource<'_> {
        fn inputs(&self) -> usize {
            self.data.len()
        }
        fn chunk(&self) -> usize {
            self.chunk
        }
        fn read(
            &self,
            input: usize,
            range: std::ops::Range<usize>,
            out: &mut [f32],
        ) -> crate::Result<()> {
            out.copy_from_slice(&self.data[input][range]);
            Ok(())
        }
    }

    /// A [`ChunkSink`] collecting the output, checking that every write is one whole chunk
    /// and that no element is written twice.
    pub struct VecSink {
        /// The output values and which elements were written.
        pub out: std::sync::Mutex<(Vec<f32>, Vec<bool>)>,
        /// The chunk length writes must follow.
        pub chunk: usize,
    }

    impl ChunkSink for VecSink {
        fn write(&self, offset: usize, values: &[f32]) -> crate::Result<()> {
            let mut g = self.out.lock().unwrap();
            let n = g.0.len();
            assert_eq!(offset % self.chunk, 0, "write at {offset}");
            assert_eq!(
                values.len(),
                self.chunk.min(n - offset),
                "write at {offset}"
            );
            for (i, v) in values.iter().enumerate() {
                assert!(!g.1[offset + i], "element {} written twice", offset + i);
                g.1[offset + i] = true;
                g.0[offset + i] = *v;
            }
            Ok(())
        }
    }

    /// Runs `method` whole and streamed (chunk `chunk`, at 1 and 4 threads) on a tensor of
    /// `shape` and asserts bit-identical outputs; returns the whole-tensor output.
    pub fn assert_streams_like_merge(
        method: &dyn MergeMethod,
        inputs: &[(&[f32], bool, ParamValues)],
        global: ParamValues,
        math: DType,
        shape: &[usize],
        chunk: usize,
    ) -> Vec<f32> {
        assert!(method.can_stream(), "{}", method.info().name);
        let n: usize = shape.iter().product();
        let mut want = vec![0.0; n];
        with_ctx(inputs, shape, &global, math, true, |ctx| {
            method.merge(ctx, &mut want).unwrap();
        });
        let empty: Vec<(&[f32], bool, ParamValues)> = inputs
            .iter()
            .map(|(_, b, p)| (&[][..], *b, p.clone()))
            .collect();
        for threads in [1, 4] {
            let src = VecSource {
                data: inputs.iter().map(|i| i.0).collect(),
                chunk,
            };
            let sink = VecSink {
                out: std::sync::Mutex::new((vec![f32::NAN; n], vec![false; n])),
                chunk,
            };
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| {
                    with_ctx(&empty, shape, &global, math, true, |ctx| {
                        method.merge_streaming(ctx, &src, &sink)
                    })
                })
                .unwrap();
            let (got, written) = sink.out.into_inner().unwrap();
            assert!(written.iter().all(|w| *w), "not every element written");
            for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "{} element {i} at {threads} threads: {a} vs {b}",
                    method.info().name
                );
            }
        }
        want
    }

    /// Per-model parameters from pairs.
    pub fn p(pairs: &[(&'static str, f64)]) -> ParamValues {
        ParamValues(pairs.to_vec())
    }
}
