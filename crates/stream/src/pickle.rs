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
        let shape = shape
            .as_seq()?
            .iter()
            .map(|d| d.as_int().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<_>>>()?;
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

enum Item {
    Mark,
    V(Value),
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

/// Decodes one pickle. Errors name the byte offset and what was wrong.
pub fn parse(buf: &[u8]) -> Result<Value, PickleError> {
    let mut r = Reader { buf, pos: 0 };
    let mut stack: Vec<Item> = Vec::new();
    let mut memo: HashMap<u64, Value> = HashMap::new();

    fn pop(r: &Reader, stack: &mut Vec<Item>) -> Result<Value, PickleError> {
        match stack.pop() {
            Some(Item::V(v)) => Ok(v),
            Some(Item::Mark) => r.err("unexpected mark"),
            None => r.err("stack underflow"),
        }
    }
    fn pop_mark(r: &Reader, stack: &mut Vec<Item>) -> Result<Vec<Value>, PickleError> {
        let Some(m) = stack.iter().rposition(|i| matches!(i, Item::Mark)) else { return r.err("no mark on the stack") };
        let items = stack.split_off(m + 1);
        stack.pop();
        Ok(items.into_iter().map(|i| match i { Item::V(v) => v, Item::Mark => unreachable!() }).collect())
    }
    fn top<'s>(r: &Reader, stack: &'s mut [Item]) -> Result<&'s mut Value, PickleError> {
        match stack.last_mut() {
            Some(Item::V(v)) => Ok(v),
            _ => r.err("expected a value on the stack"),
        }
    }
    fn set_items(r: &Reader, target: &mut Value, kv: Vec<Value>) -> Result<(), PickleError> {
        let Value::Dict(d) = target else { return r.err("SETITEM on a non-dict") };
        if kv.len() % 2 != 0 {
            return r.err("odd number of dict items");
        }
        let mut it = kv.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.push((k, v));
        }
        Ok(())
    }
    fn append(r: &Reader, target: &mut Value, items: Vec<Value>) -> Result<(), PickleError> {
        match target {
            Value::List(l) => {
                l.extend(items);
                Ok(())
            }
            _ => r.err("APPEND on a non-list"),
        }
    }

    loop {
        let op = r.u8()?;
        match op {
            0x80 => {
                let proto = r.u8()?;
                if proto > 5 {
                    return r.err(format!("unsupported pickle protocol {proto}"));
                }
            }
            0x95 => {
                r.take(8)?;
            }
            b'.' => {
                let v = pop(&r, &mut stack)?;
                return Ok(v);
            }
            b'(' => stack.push(Item::Mark),
            b'0' => {
                stack.pop();
            }
            b'1' => {
                pop_mark(&r, &mut stack)?;
            }
            b'2' => {
                let v = top(&r, &mut stack)?.clone();
                stack.push(Item::V(v));
            }
            b'N' => stack.push(Item::V(Value::None)),
            0x88 => stack.push(Item::V(Value::Bool(true))),
            0x89 => stack.push(Item::V(Value::Bool(false))),
            b'J' => stack.push(Item::V(Value::Int(i32::from_le_bytes(r.le()?) as i64))),
            b'K' => stack.push(Item::V(Value::Int(r.u8()? as i64))),
            b'M' => stack.push(Item::V(Value::Int(u16::from_le_bytes(r.le()?) as i64))),
            0x8a => {
                let n = r.u8()? as usize;
                if n > 8 {
                    return r.err(format!("LONG1 of {n} bytes does not fit 64 bits"));
                }
                let b = r.take(n)?;
                let mut v: i64 = 0;
                for (i, &byte) in b.iter().enumerate() {
                    v |= (byte as i64) << (8 * i);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(Item::V(Value::Int(v)));
            }
            b'I' => {
                let line = r.line()?;
                let v = match line {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    s => match s.parse() {
                        Ok(i) => Value::Int(i),
                        Err(_) => return r.err(format!("bad INT `{s}`")),
                    },
                };
                stack.push(Item::V(v));
            }
            b'G' => stack.push(Item::V(Value::Float(f64::from_be_bytes(r.le()?)))),
            b'U' | b'C' => {
                let n = r.u8()? as usize;
                stack.push(Item::V(Value::Bytes(r.take(n)?.into())));
            }
            b'T' | b'B' => {
                let n = r.len_u32()?;
                stack.push(Item::V(Value::Bytes(r.take(n)?.into())));
            }
            0x8e | 0x96 => {
                let n = r.len_u64()?;
                stack.push(Item::V(Value::Bytes(r.take(n)?.into())));
            }
            b'X' | 0x8c | 0x8d => {
                let n = match op {
                    b'X' => r.len_u32()?,
                    0x8c => r.u8()? as usize,
                    _ => r.len_u64()?,
                };
                let s = std::str::from_utf8(r.take(n)?).or_else(|_| r.err("unicode string is not UTF-8"))?;
                stack.push(Item::V(Value::Str(s.to_owned())));
            }
            b']' => stack.push(Item::V(Value::List(Vec::new()))),
            b')' => stack.push(Item::V(Value::Tuple(Vec::new()))),
            b'}' => stack.push(Item::V(Value::Dict(Vec::new()))),
            b'l' => {
                let items = pop_mark(&r, &mut stack)?;
                stack.push(Item::V(Value::List(items)));
            }
            b't' => {
                let items = pop_mark(&r, &mut stack)?;
                stack.push(Item::V(Value::Tuple(items)));
            }
            b'd' => {
                let items = pop_mark(&r, &mut stack)?;
                let mut d = Value::Dict(Vec::new());
                set_items(&r, &mut d, items)?;
                stack.push(Item::V(d));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(pop(&r, &mut stack)?);
                }
                items.reverse();
                stack.push(Item::V(Value::Tuple(items)));
            }
            b'a' => {
                let v = pop(&r, &mut stack)?;
                append(&r, top(&r, &mut stack)?, vec![v])?;
            }
            b'e' => {
                let items = pop_mark(&r, &mut stack)?;
                append(&r, top(&r, &mut stack)?, items)?;
            }
            b's' => {
                let v = pop(&r, &mut stack)?;
                let k = pop(&r, &mut stack)?;
                set_items(&r, top(&r, &mut stack)?, vec![k, v])?;
            }
            b'u' => {
                let items = pop_mark(&r, &mut stack)?;
                set_items(&r, top(&r, &mut stack)?, items)?;
            }
            b'c' => {
                let module = r.line()?.to_owned();
                let name = r.line()?.to_owned();
                stack.push(Item::V(Value::Global { module, name }));
            }
            0x93 => {
                let name = pop(&r, &mut stack)?.as_str();
                let module = pop(&r, &mut stack)?.as_str();
                let (Some(module), Some(name)) = (module, name) else { return r.err("STACK_GLOBAL needs two strings") };
                stack.push(Item::V(Value::Global { module, name }));
            }
            b'R' | 0x81 => {
                let args = pop(&r, &mut stack)?;
                let callable = pop(&r, &mut stack)?;
                stack.push(Item::V(reduce(callable, args)));
            }
            b'b' => {
                let state = pop(&r, &mut stack)?;
                match top(&r, &mut stack)? {
                    Value::Object { state: s, .. } => *s = Some(Box::new(state)),
                    _ => return r.err("BUILD on a value that is not an object"),
                }
            }
            b'q' | b'r' | 0x94 | b'p' => {
                let idx = match op {
                    b'q' => r.u8()? as u64,
                    b'r' => r.len_u32()? as u64,
                    0x94 => memo.len() as u64,
                    _ => match r.line()?.parse() {
                        Ok(i) => i,
                        Err(_) => return r.err("bad PUT index"),
                    },
                };
                let v = top(&r, &mut stack)?.clone();
                memo.insert(idx, v);
            }
            b'h' | b'j' | b'g' => {
                let idx = match op {
                    b'h' => r.u8()? as u64,
                    b'j' => r.len_u32()? as u64,
                    _ => match r.line()?.parse() {
                        Ok(i) => i,
                        Err(_) => return r.err("bad GET index"),
                    },
                };
                let Some(v) = memo.get(&idx) else { return r.err(format!("memo key {idx} not found")) };
                stack.push(Item::V(v.clone()));
            }
            other => return r.err(format!("unsupported pickle opcode 0x{other:02x}")),
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
    fn garbage_is_an_error_not_a_panic() {
        for bad in [&b""[..], b"\x80\x02", b"\x80\x02T\xff\xff\xff\x7f", b"e.", b"\x80\x02}q\x05h\x09.", b"\xff"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
