//! A restricted unpickler for the `data.pkl` that `torch.save` writes (pickle protocol 2, with
//! the few protocol-3/4 opcodes newer Pythons may emit).
//!
//! It builds a [`Value`] tree and never executes anything: globals are resolved against a fixed
//! whitelist ([`Global`]) the moment the `GLOBAL` / `STACK_GLOBAL` opcode is read, and any other
//! global (`posix.system`, `builtins.eval`, `torch.storage._load_from_bytes`, ...) stops the
//! read with [`PickleError::ForbiddenGlobal`]. `REDUCE` is only interpreted for the whitelisted
//! callables `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` and
//! `torch._utils._rebuild_parameter`; reducing anything else (for example a storage class) is an
//! error. Persistent ids must be torch's `('storage', <storage class>, key, location, numel)`.
//!
//! Opcodes outside the set torch uses for state dicts (`INST`, `OBJ`, `NEWOBJ`, `EXT*`, text
//! protocol-0 values, ...) are rejected. Memory use is bounded by the input size: containers are
//! shared (`Rc`), and a work budget proportional to the input length stops pickles crafted to
//! copy containers over and over.

use std::rc::Rc;

use crate::dtype::DType;

/// Why a pickle could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PickleError {
    /// The pickle refers to a global that is not on the whitelist.
    #[error(
        "refers to global `{0}`, which smelt does not allow (only torch tensor and storage \
         rebuilders and collections.OrderedDict are); refusing to load it — nothing was executed"
    )]
    ForbiddenGlobal(String),
    /// The pickle is malformed or uses something this reader does not support.
    #[error("byte {offset}: {reason}")]
    Malformed {
        /// Byte offset of the opcode in the pickle stream.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
}

/// A whitelisted global.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    /// `collections.OrderedDict`.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_parameter`.
    RebuildParameter,
    /// A typed storage class such as `torch.FloatStorage`, with its element type.
    Storage(DType),
}

impl Global {
    /// Resolves `module.name` against the whitelist.
    pub fn resolve(module: &str, name: &str) -> Option<Global> {
        Some(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch", storage) => Global::Storage(match storage {
                "FloatStorage" => DType::F32,
                "HalfStorage" => DType::F16,
                "BFloat16Storage" => DType::BF16,
                "DoubleStorage" => DType::F64,
                "LongStorage" => DType::I64,
                "IntStorage" => DType::I32,
                "ShortStorage" => DType::I16,
                "CharStorage" => DType::I8,
                "ByteStorage" => DType::U8,
                "BoolStorage" => DType::Bool,
                "Float8_e4m3fnStorage" => DType::F8E4M3,
                "Float8_e5m2Storage" => DType::F8E5M2,
                _ => return None,
            }),
            _ => return None,
        })
    }
}

/// A reference to one storage record of the archive (`<archive>/data/<key>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRef {
    /// Element type of the storage.
    pub dtype: DType,
    /// Record key (the file name under `data/`).
    pub key: String,
    /// Device location string (`"cpu"`, `"cuda:0"`, ...), informational.
    pub location: String,
    /// Number of elements in the storage.
    pub numel: usize,
}

/// A tensor rebuilt by `_rebuild_tensor_v2`: a strided view of a storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    /// The storage it views.
    pub storage: StorageRef,
    /// Offset into the storage, in elements.
    pub offset: usize,
    /// Shape.
    pub shape: Vec<usize>,
    /// Strides, in elements.
    pub stride: Vec<usize>,
}

/// An unpickled value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// A boolean.
    Bool(bool),
    /// An integer that fits in `i64`.
    Int(i64),
    /// A float.
    Float(f64),
    /// A text string.
    Str(Rc<str>),
    /// A byte string.
    Bytes(Rc<[u8]>),
    /// A tuple.
    Tuple(Rc<Vec<Value>>),
    /// A list.
    List(Rc<Vec<Value>>),
    /// A dict or `OrderedDict`, in insertion order (a repeated key replaces the earlier value).
    Dict(Rc<Vec<(Value, Value)>>),
    /// A whitelisted global.
    Global(Global),
    /// A storage from a persistent id.
    Storage(Rc<StorageRef>),
    /// A tensor.
    Tensor(Rc<TensorRef>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

/// Stack slot: a value or a MARK.
enum Slot {
    Mark,
    /// A value and its nesting depth (containers count one more than their deepest item).
    V(Value, u32),
}

/// Deepest container nesting accepted; torch state dicts need about five levels. Bounding it
/// keeps recursive drops and traversals shallow.
const MAX_DEPTH: u32 = 64;

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    op_at: usize,
    stack: Vec<Slot>,
    memo: std::collections::HashMap<u64, (Value, u32)>,
    budget: usize,
}

/// Reads one pickle from `data` and returns the value it produces.
pub fn unpickle(data: &[u8]) -> Result<Value, PickleError> {
    let mut m = Machine {
        data,
        pos: 0,
        op_at: 0,
        stack: Vec::new(),
        memo: Default::default(),
        budget: 64 * data.len() + (1 << 16),
    };
    m.run()
}

fn as_usize(v: &Value, what: &str) -> Result<usize, String> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as usize),
        Value::Bool(b) => Ok(*b as usize),
        other => Err(format!(
            "{what} must be a non-negative int, found {}",
            other.kind()
        )),
    }
}

fn as_usize_seq(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(xs) | Value::List(xs) => xs.iter().map(|x| as_usize(x, what)).collect(),
        other => Err(format!("{what} must be a tuple, found {}", other.kind())),
    }
}

impl Machine<'_> {
    fn err<T>(&self, reason: impl Into<String>) -> Result<T, PickleError> {
        Err(PickleError::Malformed {
            offset: self.op_at,
            reason: reason.into(),
        })
    }

    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        match self
            .pos
            .checked_add(n)
            .and_then(|e| self.data.get(self.pos..e))
        {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => self.err("pickle ends in the middle of an opcode (truncated)"),
        }
    }
    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PickleError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, PickleError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&c| c == b'\n') else {
            return self.err("unterminated text line");
        };
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| PickleError::Malformed {
            offset: self.op_at,
            reason: "non-UTF-8 text line".into(),
        })?;
        let s = s.to_string();
        self.pos += n + 1;
        Ok(s)
    }
    fn utf8(&mut self, n: usize) -> Result<Value, PickleError> {
        let op_at = self.op_at;
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| PickleError::Malformed {
            offset: op_at,
            reason: "string is not valid UTF-8".into(),
        })?;
        Ok(Value::Str(s.into()))
    }
    fn len_of(&self, n: u64) -> Result<usize, PickleError> {
        match usize::try_from(n) {
            Ok(n) if n <= self.data.len() => Ok(n),
            _ => self.err(format!("length {n} exceeds the pickle size")),
        }
    }

    fn charge(&mut self, n: usize) -> Result<(), PickleError> {
        if n > self.budget {
            return self.err("pickle does too much copying work (malicious or corrupt)");
        }
        self.budget -= n;
        Ok(())
    }

    fn push(&mut self, v: Value) {
        self.stack.push(Slot::V(v, 0));
    }
    fn push_d(&mut self, v: Value, depth: u32) -> Result<(), PickleError> {
        if depth > MAX_DEPTH {
            return self.err(format!("values nested more than {MAX_DEPTH} levels deep"));
        }
        self.stack.push(Slot::V(v, depth));
        Ok(())
    }
    fn pop_d(&mut self) -> Result<(Value, u32), PickleError> {
        match self.stack.pop() {
            Some(Slot::V(v, d)) => Ok((v, d)),
            Some(Slot::Mark) => self.err("unexpected MARK on the stack"),
            None => self.err("stack underflow"),
        }
    }
    fn pop(&mut self) -> Result<Value, PickleError> {
        Ok(self.pop_d()?.0)
    }
    fn top_d(&mut self) -> Result<(&mut Value, &mut u32), PickleError> {
        match self.stack.last_mut() {
            Some(Slot::V(v, d)) => Ok((v, d)),
            _ => Err(PickleError::Malformed {
                offset: self.op_at,
                reason: "stack is empty or has a MARK on top".into(),
            }),
        }
    }
    fn top(&mut self) -> Result<&mut Value, PickleError> {
        Ok(self.top_d()?.0)
    }
    /// Pops everything above the topmost MARK (and the MARK); returns the values and the
    /// depth a container holding them would have.
    fn pop_mark(&mut self) -> Result<(Vec<Value>, u32), PickleError> {
        let Some(m) = self.stack.iter().rposition(|s| matches!(s, Slot::Mark)) else {
            return self.err("no MARK on the stack");
        };
        let items = self.stack.split_off(m + 1);
        self.stack.pop();
        Ok(unslot(items))
    }

    fn global(&mut self, module: &str, name: &str) -> Result<(), PickleError> {
        match Global::resolve(module, name) {
            Some(g) => {
                self.push(Value::Global(g));
                Ok(())
            }
            None => Err(PickleError::ForbiddenGlobal(format!("{module}.{name}"))),
        }
    }

    /// Appends to the list or dict on top of the stack; `depth` is 1 + the items' depth.
    fn extend_top(&mut self, items: Vec<Value>, depth: u32, dict: bool) -> Result<(), PickleError> {
        if depth > MAX_DEPTH {
            return self.err(format!("values nested more than {MAX_DEPTH} levels deep"));
        }
        let op_at = self.op_at;
        let merr = |reason: String| PickleError::Malformed {
            offset: op_at,
            reason,
        };
        let n = items.len();
        let copy_cost = match self.top()? {
            Value::List(l) if Rc::strong_count(l) > 1 => l.len(),
            Value::Dict(d) if Rc::strong_count(d) > 1 => d.len(),
            _ => 0,
        };
        // Key lookups in a dict cost its length per item.
        let lookup_cost = match self.top()? {
            Value::Dict(d) if dict => d.len().saturating_mul(n / 2),
            _ => 0,
        };
        self.charge(copy_cost.saturating_add(lookup_cost).saturating_add(n))?;
        let (target, target_depth) = self.top_d()?;
        *target_depth = (*target_depth).max(depth);
        match target {
            Value::List(l) if !dict => Rc::make_mut(l).extend(items),
            Value::Dict(d) if dict => {
                if !n.is_multiple_of(2) {
                    return Err(merr("SETITEMS with an odd number of items".into()));
                }
                let d = Rc::make_mut(d);
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    // Only string and int keys are compared (a later equal key replaces the
                    // value, as in Python); other keys are kept as they come.
                    let same = |ek: &Value| match (ek, &k) {
                        (Value::Str(a), Value::Str(b)) => a == b,
                        (Value::Int(a), Value::Int(b)) => a == b,
                        _ => false,
                    };
                    match d.iter_mut().find(|(ek, _)| same(ek)) {
                        Some(slot) => slot.1 = v,
                        None => d.push((k, v)),
                    }
                }
            }
            other => {
                return Err(merr(format!(
                    "cannot {} a {}",
                    if dict { "set items on" } else { "append to" },
                    other.kind()
                )));
            }
        }
        Ok(())
    }

    fn reduce(&mut self, func: Value, args: Value) -> Result<Value, PickleError> {
        let Value::Tuple(args) = args else {
            return self.err(format!(
                "REDUCE arguments must be a tuple, not {}",
                args.kind()
            ));
        };
        let g = match func {
            Value::Global(g) => g,
            other => return self.err(format!("REDUCE on a {}, not a callable", other.kind())),
        };
        let res = match g {
            Global::OrderedDict => {
                if !args.is_empty() {
                    return self.err("collections.OrderedDict called with arguments");
                }
                Ok(Value::Dict(Rc::new(Vec::new())))
            }
            Global::RebuildTensorV2 => rebuild_tensor(&args),
            Global::RebuildParameter => match args.first() {
                Some(Value::Tensor(t)) if args.len() >= 2 => Ok(Value::Tensor(t.clone())),
                _ => Err(
                    "torch._utils._rebuild_parameter expects (tensor, requires_grad, \
                          hooks)"
                        .to_string(),
                ),
            },
            Global::Storage(dt) => Err(format!(
                "storage class torch.{} may not be called",
                storage_class_name(dt)
            )),
        };
        res.or_else(|e| self.err(e))
    }

    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            self.op_at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    // PROTO
                    let p = self.u8()?;
                    if p > 5 {
                        return self.err(format!("unsupported pickle protocol {p}"));
                    }
                }
                0x95 => {
                    // FRAME (protocol 4): only a length hint.
                    self.u64()?;
                }
                b'.' => {
                    // STOP
                    let v = self.pop()?;
                    return Ok(v);
                }
                b'N' | 0x88 | 0x89 | b'J' | b'K' | b'M' | 0x8a | b'G' => self.literal(op)?,
                b'X' | 0x8c | 0x8d | b'T' | b'U' | b'B' | b'C' | 0x8e => self.text_or_bytes(op)?,
                b'('
                | b')'
                | b']'
                | b'}'
                | b't'
                | b'l'
                | b'd'
                | 0x85..=0x87
                | b'a'
                | b'e'
                | b's'
                | b'u' => self.container(op)?,
                b'q' | b'r' | 0x94 | b'h' | b'j' | b'0' | b'2' => self.memo_or_stack(op)?,
                b'c' | 0x93 | b'R' | b'Q' | b'b' => self.object(op)?,
                other => {
                    return self.err(format!(
                        "opcode 0x{other:02x} is not supported by smelt's restricted unpickler"
                    ));
                }
            }
        }
    }

    /// None, booleans, integers and floats.
    fn literal(&mut self, op: u8) -> Result<(), PickleError> {
        match op {
            b'N' => self.push(Value::None),
            0x88 => self.push(Value::Bool(true)),
            0x89 => self.push(Value::Bool(false)),
            b'J' => {
                let v = self.u32()? as i32;
                self.push(Value::Int(v as i64))
            }
            b'K' => {
                let v = self.u8()?;
                self.push(Value::Int(v as i64))
            }
            b'M' => {
                let v = self.u16()?;
                self.push(Value::Int(v as i64))
            }
            0x8a => {
                // LONG1: little-endian two's complement of n bytes.
                let n = self.u8()? as usize;
                let b = self.take(n)?.to_vec();
                if n > 8 {
                    return self.err("integer wider than 64 bits");
                }
                let mut buf = if b.last().is_some_and(|x| x & 0x80 != 0) {
                    [0xFFu8; 8]
                } else {
                    [0u8; 8]
                };
                buf[..n].copy_from_slice(&b);
                self.push(Value::Int(i64::from_le_bytes(buf)))
            }
            b'G' => {
                let b = self.take(8)?;
                let v = f64::from_be_bytes(b.try_into().expect("8 bytes"));
                self.push(Value::Float(v))
            }
            _ => unreachable!("opcode 0x{op:02x} is dispatched elsewhere"),
        }
        Ok(())
    }

    /// Strings (read as text, Python 2 ones too) and bytes.
    fn text_or_bytes(&mut self, op: u8) -> Result<(), PickleError> {
        match op {
            b'X' => {
                let n = self.u32()? as u64;
                let n = self.len_of(n)?;
                let v = self.utf8(n)?;
                self.push(v)
            }
            0x8c => {
                // SHORT_BINUNICODE
                let n = self.u8()? as usize;
                let v = self.utf8(n)?;
                self.push(v)
            }
            0x8d => {
                // BINUNICODE8
                let n = self.u64()?;
                let n = self.len_of(n)?;
                let v = self.utf8(n)?;
                self.push(v)
            }
            b'T' | b'U' => {
                // BINSTRING / SHORT_BINSTRING (protocol 2 str from Python 2): read as text.
                let n = if op == b'T' {
                    self.u32()? as u64
                } else {
                    self.u8()? as u64
                };
                let n = self.len_of(n)?;
                let v = self.utf8(n)?;
                self.push(v)
            }
            b'B' | b'C' | 0x8e => {
                // BINBYTES / SHORT_BINBYTES / BINBYTES8
                let n = match op {
                    b'B' => self.u32()? as u64,
                    b'C' => self.u8()? as u64,
                    _ => self.u64()?,
                };
                let n = self.len_of(n)?;
                let b: Rc<[u8]> = self.take(n)?.into();
                self.push(Value::Bytes(b))
            }
            _ => unreachable!("opcode 0x{op:02x} is dispatched elsewhere"),
        }
        Ok(())
    }

    /// MARK, empty and built tuples, lists and dicts, and appends to them.
    fn container(&mut self, op: u8) -> Result<(), PickleError> {
        match op {
            b'(' => self.stack.push(Slot::Mark),
            b')' => self.push(Value::Tuple(Rc::new(Vec::new()))),
            b']' => self.push(Value::List(Rc::new(Vec::new()))),
            b'}' => self.push(Value::Dict(Rc::new(Vec::new()))),
            b't' => {
                let (items, d) = self.pop_mark()?;
                self.push_d(Value::Tuple(Rc::new(items)), d)?
            }
            b'l' => {
                let (items, d) = self.pop_mark()?;
                self.push_d(Value::List(Rc::new(items)), d)?
            }
            b'd' => {
                let (items, d) = self.pop_mark()?;
                self.push(Value::Dict(Rc::new(Vec::new())));
                self.extend_top(items, d, true)?;
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if self.stack.len() < n
                    || self.stack[self.stack.len() - n..]
                        .iter()
                        .any(|s| matches!(s, Slot::Mark))
                {
                    return self.err("TUPLE opcode with too few values on the stack");
                }
                let (items, d) = unslot(self.stack.split_off(self.stack.len() - n));
                self.push_d(Value::Tuple(Rc::new(items)), d)?
            }
            b'a' => {
                let (v, d) = self.pop_d()?;
                self.extend_top(vec![v], d + 1, false)?;
            }
            b'e' => {
                let (items, d) = self.pop_mark()?;
                self.extend_top(items, d, false)?;
            }
            b's' => {
                let (v, dv) = self.pop_d()?;
                let (k, dk) = self.pop_d()?;
                self.extend_top(vec![k, v], dv.max(dk) + 1, true)?;
            }
            b'u' => {
                let (items, d) = self.pop_mark()?;
                self.extend_top(items, d, true)?;
            }
            _ => unreachable!("opcode 0x{op:02x} is dispatched elsewhere"),
        }
        Ok(())
    }

    /// The memo (put, get) and the stack (pop, dup).
    fn memo_or_stack(&mut self, op: u8) -> Result<(), PickleError> {
        match op {
            b'q' | b'r' | 0x94 => {
                // BINPUT / LONG_BINPUT / MEMOIZE
                let idx = match op {
                    b'q' => self.u8()? as u64,
                    b'r' => self.u32()? as u64,
                    _ => self.memo.len() as u64,
                };
                let (v, d) = self.top_d()?;
                let entry = (v.clone(), *d);
                self.charge(1)?;
                self.memo.insert(idx, entry);
            }
            b'h' | b'j' => {
                let idx = if op == b'h' {
                    self.u8()? as u64
                } else {
                    self.u32()? as u64
                };
                match self.memo.get(&idx) {
                    Some((v, d)) => {
                        let (v, d) = (v.clone(), *d);
                        self.charge(1)?;
                        self.push_d(v, d)?
                    }
                    None => return self.err(format!("memo entry {idx} is not defined")),
                }
            }
            b'0' => {
                self.pop()?;
            }
            b'2' => {
                let (v, d) = self.top_d()?;
                let (v, d) = (v.clone(), *d);
                self.push_d(v, d)?
            }
            _ => unreachable!("opcode 0x{op:02x} is dispatched elsewhere"),
        }
        Ok(())
    }

    /// Globals (from the allow-list only), calls, persistent ids (storages) and BUILD.
    fn object(&mut self, op: u8) -> Result<(), PickleError> {
        match op {
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.global(&module, &name)?;
            }
            0x93 => {
                // STACK_GLOBAL
                let name = self.pop()?;
                let module = self.pop()?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => self.global(&m, &n)?,
                    _ => return self.err("STACK_GLOBAL needs two strings"),
                }
            }
            b'R' => {
                let (args, d) = self.pop_d()?;
                let func = self.pop()?;
                let v = self.reduce(func, args)?;
                self.push_d(v, d)?
            }
            b'Q' => {
                // BINPERSID
                let (pid, d) = self.pop_d()?;
                let s = persistent_storage(&pid).or_else(|e| self.err(e))?;
                self.push_d(Value::Storage(Rc::new(s)), d)?
            }
            b'b' => {
                // BUILD: torch state dicts only use it to attach `_metadata` to an
                // OrderedDict (or state to a tensor); the state is dropped.
                let _state = self.pop()?;
                match self.top()? {
                    Value::Dict(_) | Value::Tensor(_) => {}
                    other => {
                        let k = other.kind();
                        return self.err(format!("BUILD on a {k} is not supported"));
                    }
                }
            }
            _ => unreachable!("opcode 0x{op:02x} is dispatched elsewhere"),
        }
        Ok(())
    }
}

/// Values of stack slots (which hold no MARK) and 1 + their greatest depth.
fn unslot(items: Vec<Slot>) -> (Vec<Value>, u32) {
    let mut depth = 1;
    let values = items
        .into_iter()
        .filter_map(|s| match s {
            Slot::V(v, d) => {
                depth = depth.max(d + 1);
                Some(v)
            }
            Slot::Mark => None,
        })
        .collect();
    (values, depth)
}

fn storage_class_name(dt: DType) -> &'static str {
    match dt {
        DType::F32 => "FloatStorage",
        DType::F16 => "HalfStorage",
        DType::BF16 => "BFloat16Storage",
        DType::F64 => "DoubleStorage",
        DType::I64 => "LongStorage",
        DType::I32 => "IntStorage",
        DType::I16 => "ShortStorage",
        DType::I8 => "CharStorage",
        DType::U8 => "ByteStorage",
        DType::Bool => "BoolStorage",
        DType::F8E4M3 => "Float8_e4m3fnStorage",
        DType::F8E5M2 => "Float8_e5m2Storage",
        _ => "?Storage",
    }
}

fn persistent_storage(pid: &Value) -> Result<StorageRef, String> {
    let Value::Tuple(t) = pid else {
        return Err(format!(
            "persistent id must be a tuple, found {}",
            pid.kind()
        ));
    };
    match t.as_slice() {
        [
            Value::Str(tag),
            cls,
            Value::Str(key),
            Value::Str(loc),
            numel,
        ] if &**tag == "storage" => {
            let Value::Global(Global::Storage(dtype)) = cls else {
                return Err(format!(
                    "persistent id storage type must be a torch storage class, found {}",
                    cls.kind()
                ));
            };
            Ok(StorageRef {
                dtype: *dtype,
                key: key.to_string(),
                location: loc.to_string(),
                numel: as_usize(numel, "storage size")?,
            })
        }
        _ => Err("persistent id is not ('storage', class, key, location, numel)".into()),
    }
}

fn rebuild_tensor(args: &[Value]) -> Result<Value, String> {
    if !(6..=7).contains(&args.len()) {
        return Err(format!(
            "torch._utils._rebuild_tensor_v2 expects 6 or 7 arguments, got {}",
            args.len()
        ));
    }
    let Value::Storage(s) = &args[0] else {
        return Err(format!(
            "_rebuild_tensor_v2 first argument must be a storage, found {}",
            args[0].kind()
        ));
    };
    let offset = as_usize(&args[1], "storage offset")?;
    let shape = as_usize_seq(&args[2], "tensor size")?;
    let stride = as_usize_seq(&args[3], "tensor stride")?;
    if shape.len() != stride.len() {
        return Err(format!(
            "tensor has {} dims but {} strides",
            shape.len(),
            stride.len()
        ));
    }
    Ok(Value::Tensor(Rc::new(TensorRef {
        storage: (**s).clone(),
        offset,
        shape,
        stride,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torch::testing::state_dict_pickle;

    #[test]
    fn reads_dict_and_ordered_dict_state_dicts() {
        for ordered in [false, true] {
            let p = state_dict_pickle(
                &[
                    ("w", "HalfStorage", "0", 12, 2, &[2, 5], &[5, 1]),
                    ("b", "LongStorage", "1", 3, 0, &[3], &[1]),
                ],
                ordered,
            );
            let v = unpickle(&p).unwrap();
            let Value::Dict(d) = v else {
                panic!("not a dict")
            };
            assert_eq!(d.len(), 2);
            assert_eq!(d[0].0, Value::Str("w".into()));
            let Value::Tensor(t) = &d[0].1 else {
                panic!("not a tensor")
            };
            assert_eq!(t.storage.dtype, DType::F16);
            assert_eq!(t.storage.key, "0");
            assert_eq!(t.storage.numel, 12);
            assert_eq!(
                (t.offset, &t.shape[..], &t.stride[..]),
                (2, &[2, 5][..], &[5, 1][..])
            );
            let Value::Tensor(t) = &d[1].1 else {
                panic!("not a tensor")
            };
            assert_eq!(t.storage.dtype, DType::I64);
        }
    }

    #[test]
    fn forbidden_globals_are_named() {
        for (module, name) in [
            ("posix", "system"),
            ("os", "system"),
            ("builtins", "eval"),
            ("__builtin__", "exec"),
            ("torch.storage", "_load_from_bytes"),
            ("torch", "UntypedStorage"),
            ("subprocess", "Popen"),
        ] {
            let mut p = vec![0x80, 2];
            p.extend_from_slice(format!("c{module}\n{name}\nX\x02\x00\x00\x00lsR.").as_bytes());
            let e = unpickle(&p).unwrap_err();
            assert_eq!(e, PickleError::ForbiddenGlobal(format!("{module}.{name}")));
            assert!(e.to_string().contains(&format!("{module}.{name}")));
            // Same through STACK_GLOBAL (protocol 4).
            let mut p = vec![0x80, 4];
            for s in [module, name] {
                p.push(0x8c);
                p.push(s.len() as u8);
                p.extend_from_slice(s.as_bytes());
            }
            p.extend_from_slice(b"\x93)R.");
            assert_eq!(
                unpickle(&p).unwrap_err(),
                PickleError::ForbiddenGlobal(format!("{module}.{name}"))
            );
        }
    }

    #[test]
    fn reducing_a_storage_class_is_refused() {
        let p = b"\x80\x02ctorch\nFloatStorage\n)R.";
        let e = unpickle(p).unwrap_err().to_string();
        assert!(e.contains("torch.FloatStorage"), "{e}");
    }

    #[test]
    fn garbage_and_truncations_are_errors() {
        let p = state_dict_pickle(&[("w", "FloatStorage", "0", 4, 0, &[2, 2], &[2, 1])], true);
        for cut in 0..p.len() {
            assert!(unpickle(&p[..cut]).is_err(), "cut {cut}");
        }
        let mut x: u32 = 12345;
        for _ in 0..2000 {
            let junk: Vec<u8> = (0..64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    (x >> 3) as u8
                })
                .collect();
            let _ = unpickle(&junk); // must not panic
        }
        // Mutations of a valid pickle must not panic either.
        for i in 0..p.len() {
            let mut c = p.clone();
            c[i] ^= 0x5A;
            let _ = unpickle(&c);
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        // 10 000 nested 1-tuples: `)` then TUPLE1 repeated.
        let mut p = vec![0x80, 2, b')'];
        p.extend(std::iter::repeat_n(0x85u8, 10_000));
        p.push(b'.');
        let e = unpickle(&p).unwrap_err().to_string();
        assert!(e.contains("nested"), "{e}");
        // Same with lists built by APPEND: 10 001 empty lists, each appended to the one below.
        let mut p = vec![0x80, 2];
        p.extend(std::iter::repeat_n(b']', 10_001));
        p.extend(std::iter::repeat_n(b'a', 10_000));
        p.push(b'.');
        let e = unpickle(&p).unwrap_err().to_string();
        assert!(e.contains("nested"), "{e}");
    }

    #[test]
    fn doubling_shared_lists_stays_cheap() {
        // L0 = []; L(k+1) = [Lk, Lk] via the memo: 2^60 leaves if copied, 60 nodes when shared.
        let mut p = vec![0x80, 2, b']'];
        for _ in 0..60 {
            p.extend_from_slice(b"q\x000(h\x00h\x00l");
        }
        p.push(b'.');
        let Value::List(l) = unpickle(&p).unwrap() else {
            panic!("not a list")
        };
        assert_eq!(l.len(), 2);
        assert!(Rc::ptr_eq(
            match &l[0] {
                Value::List(x) => x,
                _ => panic!(),
            },
            match &l[1] {
                Value::List(x) => x,
                _ => panic!(),
            }
        ));
    }
}
