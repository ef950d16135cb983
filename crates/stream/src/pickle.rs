//! A small, bounds-checked reader for the subset of Python pickles that
//! dataset files use: containers, numbers, strings/bytes, and numpy arrays
//! (`numpy.core.multiarray._reconstruct` + `BUILD`).
//!
//! It never executes anything: a `GLOBAL` becomes a name, a `REDUCE` a
//! record of (callable, args), later interpreted only for the shapes we know.
//! CIFAR-100's files were written by Python 2's cPickle (protocol 2, `str`
//! as `BINSTRING`); files re-saved by Python 3 (protocols 2–5) work too.

use std::collections::HashMap;
use std::rc::Rc;

/// A decoded pickle value. `Bytes` is reference-counted so that memo entries
/// of a 150 MB array cost nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Bytes(Rc<[u8]>),
    Str(String),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global { module: String, name: String },
    Object { callable: Box<Value>, args: Box<Value>, state: Option<Box<Value>> },
}

impl Value {
    /// Looks up a dict entry by a key stored as `str` or `bytes`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let Value::Dict(items) = self else { return None };
        items.iter().find_map(|(k, v)| match k {
            Value::Str(s) if s == key => Some(v),
            Value::Bytes(b) if &**b == key.as_bytes() => Some(v),
            _ => None,
        })
    }

    pub fn as_str(&self) -> Option<String> {
        match self {
            Value::Str(s) => Some(s.clone()),
            Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::List(v) | Value::Tuple(v) => Some(v),
            _ => None,
        }
    }

    /// A numpy array as pickled by `ndarray.__reduce__` (protocols ≤ 4:
    /// `_reconstruct` + `BUILD` state) or `__reduce_ex__(5)`
    /// (`_frombuffer(buffer, dtype, shape, order)`): returns (dtype string,
    /// shape, raw C-order bytes).
    pub fn as_ndarray(&self) -> Option<(String, Vec<usize>, Rc<[u8]>)> {
        let Value::Object { callable, args, state } = self else { return None };
        let Value::Global { name, .. } = &**callable else { return None };
        let (shape, dtype, fortran, data) = match (name.as_str(), state) {
            ("_reconstruct", Some(state)) => {
                let st = state.as_seq()?;
                // (version, shape, dtype, is_fortran, data)
                match st.len() {
                    5 => (&st[1], &st[2], st[3].as_int()? != 0, &st[4]),
                    4 => (&st[0], &st[1], st[2].as_int()? != 0, &st[3]),
                    _ => return None,
                }
            }
            ("_frombuffer", _) => {
                let [data, dtype, shape, order] = args.as_seq()? else { return None };
                (shape, dtype, order.as_str()? == "F", data)
            }
            _ => return None,
        };
        if fortran {
            return None;
        }
        let shape = shape.as_seq()?.iter().map(|d| d.as_int().and_then(|d| usize::try_from(d).ok())).collect::<Option<Vec<_>>>()?;
        let Value::Object { args, .. } = dtype else { return None };
        let descr = args.as_seq()?.first()?.as_str()?;
        let Value::Bytes(data) = data else { return None };
        Some((descr, shape, data.clone()))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("byte {offset}: {reason}")]
pub struct PickleError {
    pub offset: usize,
    pub reason: String,
}

/// Deepest container nesting accepted; dataset pickles use a handful of levels.
pub const MAX_DEPTH: u32 = 1000;
/// Values copied by `DUP` / `GET` in one file, counted in nodes.
pub const MAX_COPIED_NODES: usize = 2_000_000;

enum Item {
    Mark,
    /// A value and its container nesting depth (0 for scalars).
    V(Value, u32),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn err<T>(&self, reason: impl Into<String>) -> Result<T, PickleError> {
        Err(PickleError { offset: self.pos, reason: reason.into() })
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        if n > self.buf.len() - self.pos {
            return self.err(format!("truncated: needs {n} more bytes, {} left", self.buf.len() - self.pos));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn le<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        Ok(self.take(N)?.try_into().expect("length checked"))
    }
    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.buf[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else { return self.err("unterminated text line") };
        self.pos += end + 1;
        std::str::from_utf8(&rest[..end]).or_else(|_| self.err("text line is not UTF-8"))
    }
    fn len_u32(&mut self) -> Result<usize, PickleError> {
        Ok(u32::from_le_bytes(self.le()?) as usize)
    }
    fn len_u64(&mut self) -> Result<usize, PickleError> {
        let n = u64::from_le_bytes(self.le()?);
        usize::try_from(n).or_else(|_| self.err("length overflows"))
    }
}

/// Nodes in `v`, stopping early once past `limit`.
fn nodes(v: &Value, limit: usize) -> usize {
    let mut count = 1;
    let mut stack = vec![v];
    while let Some(x) = stack.pop() {
        if count > limit {
            break;
        }
        match x {
            Value::List(items) | Value::Tuple(items) => {
                count += items.len();
                stack.extend(items.iter());
            }
            Value::Dict(items) => {
                count += 2 * items.len();
                stack.extend(items.iter().flat_map(|(k, v)| [k, v]));
            }
            Value::Object { callable, args, state } => {
                count += 3;
                stack.push(callable);
                stack.push(args);
                if let Some(s) = state {
                    stack.push(s);
                }
            }
            _ => {}
        }
    }
    count
}

struct Vm<'a> {
    r: Reader<'a>,
    stack: Vec<Item>,
    memo: HashMap<u64, (Value, u32)>,
    copied: usize,
}

impl<'a> Vm<'a> {
    fn err<T>(&self, reason: impl Into<String>) -> Result<T, PickleError> {
        self.r.err(reason)
    }
    fn push(&mut self, v: Value) {
        self.stack.push(Item::V(v, 0));
    }
    fn push_depth(&mut self, v: Value, depth: u32) -> Result<(), PickleError> {
        if depth > MAX_DEPTH {
            return self.err(format!("containers nested deeper than {MAX_DEPTH}"));
        }
        self.stack.push(Item::V(v, depth));
        Ok(())
    }
    fn pop(&mut self) -> Result<(Value, u32), PickleError> {
        match self.stack.pop() {
            Some(Item::V(v, d)) => Ok((v, d)),
            Some(Item::Mark) => self.err("unexpected mark"),
            None => self.err("stack underflow"),
        }
    }
    fn pop_mark(&mut self) -> Result<(Vec<Value>, u32), PickleError> {
        let Some(m) = self.stack.iter().rposition(|i| matches!(i, Item::Mark)) else { return self.err("no mark on the stack") };
        let items = self.stack.split_off(m + 1);
        self.stack.pop();
        let mut depth = 0;
        let values = items
            .into_iter()
            .map(|i| match i {
                Item::V(v, d) => {
                    depth = depth.max(d);
                    v
                }
                Item::Mark => unreachable!("marks above the last one were split off"),
            })
            .collect();
        Ok((values, depth))
    }
    /// The top value and its depth, for in-place updates.
    fn top(&mut self) -> Result<(&mut Value, &mut u32), PickleError> {
        match self.stack.last_mut() {
            Some(Item::V(v, d)) => Ok((v, d)),
            _ => Err(PickleError { offset: self.r.pos, reason: "expected a value on the stack".into() }),
        }
    }
    /// A copy for DUP / GET, within the file's copy budget.
    fn copy_of(&mut self, v: &Value) -> Result<Value, PickleError> {
        self.copied += nodes(v, MAX_COPIED_NODES);
        if self.copied > MAX_COPIED_NODES {
            return self.err(format!("more than {MAX_COPIED_NODES} values copied by DUP/GET"));
        }
        Ok(v.clone())
    }
    /// Adds `children` (with the deepest child's depth) to the top container.
    fn extend_top(&mut self, children: Vec<Value>, child_depth: u32, dict: bool) -> Result<(), PickleError> {
        let pos = self.r.pos;
        let fail = |reason: &str| Err(PickleError { offset: pos, reason: reason.into() });
        let (target, depth) = self.top()?;
        match (target, dict) {
            (Value::List(l), false) => l.extend(children),
            (Value::Dict(d), true) => {
                if !children.len().is_multiple_of(2) {
                    return fail("odd number of dict items");
                }
                let mut it = children.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
            }
            (_, false) => return fail("APPEND on a non-list"),
            (_, true) => return fail("SETITEM on a non-dict"),
        }
        *depth = (*depth).max(child_depth + 1).max(1);
        if *depth > MAX_DEPTH {
            return fail("containers nested too deeply");
        }
        Ok(())
    }
}

/// Decodes one pickle. Errors name the byte offset and what was wrong.
pub fn parse(buf: &[u8]) -> Result<Value, PickleError> {
    let mut vm = Vm { r: Reader { buf, pos: 0 }, stack: Vec::new(), memo: HashMap::new(), copied: 0 };
    loop {
        let op = vm.r.u8()?;
        match op {
            0x80 => {
                let proto = vm.r.u8()?;
                if proto > 5 {
                    return vm.err(format!("unsupported pickle protocol {proto}"));
                }
            }
            0x95 => {
                vm.r.take(8)?;
            }
            b'.' => return Ok(vm.pop()?.0),
            b'(' => vm.stack.push(Item::Mark),
            b'0' => {
                vm.stack.pop();
            }
            b'1' => {
                vm.pop_mark()?;
            }
            b'2' => {
                let (v, d) = vm.pop()?;
                let copy = vm.copy_of(&v)?;
                vm.push_depth(v, d)?;
                vm.push_depth(copy, d)?;
            }
            b'N' => vm.push(Value::None),
            0x88 => vm.push(Value::Bool(true)),
            0x89 => vm.push(Value::Bool(false)),
            b'J' => {
                let v = i32::from_le_bytes(vm.r.le()?) as i64;
                vm.push(Value::Int(v));
            }
            b'K' => {
                let v = vm.r.u8()? as i64;
                vm.push(Value::Int(v));
            }
            b'M' => {
                let v = u16::from_le_bytes(vm.r.le()?) as i64;
                vm.push(Value::Int(v));
            }
            0x8a => {
                let n = vm.r.u8()? as usize;
                if n > 8 {
                    return vm.err(format!("LONG1 of {n} bytes does not fit 64 bits"));
                }
                let b = vm.r.take(n)?;
                let mut v: i64 = 0;
                for (i, &byte) in b.iter().enumerate() {
                    v |= (byte as i64) << (8 * i);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                vm.push(Value::Int(v));
            }
            b'I' => {
                let line = vm.r.line()?;
                let v = match line {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    s => match s.parse() {
                        Ok(i) => Value::Int(i),
                        Err(_) => return vm.err(format!("bad INT `{s}`")),
                    },
                };
                vm.push(v);
            }
            b'G' => {
                let v = f64::from_be_bytes(vm.r.le()?);
                vm.push(Value::Float(v));
            }
            b'U' | b'C' => {
                let n = vm.r.u8()? as usize;
                let b = vm.r.take(n)?;
                vm.push(Value::Bytes(b.into()));
            }
            b'T' | b'B' => {
                let n = vm.r.len_u32()?;
                let b = vm.r.take(n)?;
                vm.push(Value::Bytes(b.into()));
            }
            0x8e | 0x96 => {
                let n = vm.r.len_u64()?;
                let b = vm.r.take(n)?;
                vm.push(Value::Bytes(b.into()));
            }
            b'X' | 0x8c | 0x8d => {
                let n = match op {
                    b'X' => vm.r.len_u32()?,
                    0x8c => vm.r.u8()? as usize,
                    _ => vm.r.len_u64()?,
                };
                let raw = vm.r.take(n)?;
                let s = std::str::from_utf8(raw).or_else(|_| vm.err("unicode string is not UTF-8"))?;
                vm.push(Value::Str(s.to_owned()));
            }
            b']' => vm.push_depth(Value::List(Vec::new()), 1)?,
            b')' => vm.push_depth(Value::Tuple(Vec::new()), 1)?,
            b'}' => vm.push_depth(Value::Dict(Vec::new()), 1)?,
            b'l' | b't' | b'd' => {
                let (items, d) = vm.pop_mark()?;
                match op {
                    b'l' => vm.push_depth(Value::List(items), d + 1)?,
                    b't' => vm.push_depth(Value::Tuple(items), d + 1)?,
                    _ => {
                        vm.push_depth(Value::Dict(Vec::new()), 1)?;
                        vm.extend_top(items, d, true)?;
                    }
                }
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let mut items = Vec::with_capacity(n);
                let mut depth = 0;
                for _ in 0..n {
                    let (v, d) = vm.pop()?;
                    depth = depth.max(d);
                    items.push(v);
                }
                items.reverse();
                vm.push_depth(Value::Tuple(items), depth + 1)?;
            }
            b'a' => {
                let (v, d) = vm.pop()?;
                vm.extend_top(vec![v], d, false)?;
            }
            b'e' => {
                let (items, d) = vm.pop_mark()?;
                vm.extend_top(items, d, false)?;
            }
            b's' => {
                let (v, dv) = vm.pop()?;
                let (k, dk) = vm.pop()?;
                vm.extend_top(vec![k, v], dv.max(dk), true)?;
            }
            b'u' => {
                let (items, d) = vm.pop_mark()?;
                vm.extend_top(items, d, true)?;
            }
            b'c' => {
                let module = vm.r.line()?.to_owned();
                let name = vm.r.line()?.to_owned();
                vm.push(Value::Global { module, name });
            }
            0x93 => {
                let name = vm.pop()?.0.as_str();
                let module = vm.pop()?.0.as_str();
                let (Some(module), Some(name)) = (module, name) else { return vm.err("STACK_GLOBAL needs two strings") };
                vm.push(Value::Global { module, name });
            }
            b'R' | 0x81 => {
                let (args, da) = vm.pop()?;
                let (callable, dc) = vm.pop()?;
                vm.push_depth(reduce(callable, args), da.max(dc) + 1)?;
            }
            b'b' => {
                let (state, ds) = vm.pop()?;
                let pos = vm.r.pos;
                let (target, depth) = vm.top()?;
                match target {
                    Value::Object { state: s, .. } => *s = Some(Box::new(state)),
                    _ => return Err(PickleError { offset: pos, reason: "BUILD on a value that is not an object".into() }),
                }
                *depth = (*depth).max(ds + 1);
                if *depth > MAX_DEPTH {
                    return vm.err("containers nested too deeply");
                }
            }
            b'q' | b'r' | 0x94 | b'p' => {
                let idx = match op {
                    b'q' => vm.r.u8()? as u64,
                    b'r' => vm.r.len_u32()? as u64,
                    0x94 => vm.memo.len() as u64,
                    _ => match vm.r.line()?.parse() {
                        Ok(i) => i,
                        Err(_) => return vm.err("bad PUT index"),
                    },
                };
                let (v, d) = vm.pop()?;
                let copy = vm.copy_of(&v)?;
                vm.push_depth(v, d)?;
                vm.memo.insert(idx, (copy, d));
            }
            b'h' | b'j' | b'g' => {
                let idx = match op {
                    b'h' => vm.r.u8()? as u64,
                    b'j' => vm.r.len_u32()? as u64,
                    _ => match vm.r.line()?.parse() {
                        Ok(i) => i,
                        Err(_) => return vm.err("bad GET index"),
                    },
                };
                let Some((v, d)) = vm.memo.get(&idx).map(|(v, d)| (v.clone(), *d)) else {
                    return vm.err(format!("memo key {idx} not found"));
                };
                // Counted like DUP: a GET-heavy file cannot blow memory up either.
                vm.copied += nodes(&v, MAX_COPIED_NODES);
                if vm.copied > MAX_COPIED_NODES {
                    return vm.err(format!("more than {MAX_COPIED_NODES} values copied by DUP/GET"));
                }
                vm.push_depth(v, d)?;
            }
            other => return vm.err(format!("unsupported pickle opcode 0x{other:02x}")),
        }
    }
}

/// Python 3 pickles `bytes` under protocol 2 as `_codecs.encode(text, "latin1")`.
fn reduce(callable: Value, args: Value) -> Value {
    if let Value::Global { module, name } = &callable {
        if module == "_codecs" && name == "encode" {
            if let Some([Value::Str(s), enc]) = args.as_seq() {
                if enc.as_str().as_deref() == Some("latin1") {
                    let bytes: Option<Vec<u8>> = s.chars().map(|c| u8::try_from(c as u32).ok()).collect();
                    if let Some(b) = bytes {
                        return Value::Bytes(b.into());
                    }
                }
            }
        }
    }
    Value::Object { callable: Box::new(callable), args: Box::new(args), state: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_protocol2_dict_with_py2_strings() {
        // pickle.dumps({b'a': [1, 300, -2], b'b': (1.5, None, True)}, protocol=2) with a py2-style str key.
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'(', b'U', 1, b'a', b']', b'q', 1, b'(', b'K', 1, b'M'];
        p.extend(300u16.to_le_bytes());
        p.push(b'J');
        p.extend((-2i32).to_le_bytes());
        p.extend([b'e', b'U', 1, b'b', b'G']);
        p.extend(1.5f64.to_be_bytes());
        p.extend([b'N', 0x88, 0x87, b'u', b'.']);
        let v = parse(&p).unwrap();
        let a: Vec<i64> = v.get("a").unwrap().as_seq().unwrap().iter().map(|x| x.as_int().unwrap()).collect();
        assert_eq!(a, [1, 300, -2]);
        assert_eq!(v.get("b").unwrap(), &Value::Tuple(vec![Value::Float(1.5), Value::None, Value::Bool(true)]));
    }

    #[test]
    fn deep_nesting_and_copy_bombs_are_refused() {
        // 5000 nested lists (MARK … LIST): dropping them recursively would overflow the stack.
        let mut chain = vec![0x80, 2];
        chain.extend(std::iter::repeat_n(b'(', 5000));
        chain.extend(std::iter::repeat_n(b'l', 5000));
        chain.push(b'.');
        let e = parse(&chain).unwrap_err();
        assert!(e.reason.contains("nested"), "{e}");
        // DUP + APPEND doubles a list each time: 2^60 elements without a budget.
        let mut bomb = vec![0x80, 2, b']', b'K', 1, b'a'];
        for _ in 0..60 {
            bomb.extend([b'2', b'a']);
        }
        bomb.push(b'.');
        let e = parse(&bomb).unwrap_err();
        assert!(e.reason.contains("copied"), "{e}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [&b""[..], b"\x80\x02", b"\x80\x02T\xff\xff\xff\x7f", b"e.", b"\x80\x02}q\x05h\x09.", b"\xff"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
