//! Relation-extraction text: entity markers, tokenization with the model's own
//! `tokenizer.json` (Hugging Face `tokenizers`), and the packed batch layout
//! text encoders read.
//!
//! A relation example is a sentence of words with a head and a tail entity
//! span. As in the continual relation-extraction code (RP-CRE, CRL, CPL, the
//! CFRL samplers) the words are wrapped in markers — `[E11] head [E12]`,
//! `[E21] tail [E22]` — and the relation representation is read at `[E11]`
//! and `[E21]`.

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};
use tokenizers::{AddedToken, EncodeInput, InputSequence, Tokenizer};

use crate::error::{Result, StreamError};

pub const MARKERS: [&str; 4] = ["[E11]", "[E12]", "[E21]", "[E22]"];

/// One sentence with its two entities, as word positions (inclusive spans).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelationExample {
    pub words: Vec<String>,
    pub head: (usize, usize),
    pub tail: (usize, usize),
}

impl RelationExample {
    /// The words with the four markers inserted around the entity spans.
    pub fn marked_words(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.words.len() + 4);
        for (i, w) in self.words.iter().enumerate() {
            if i == self.head.0 {
                out.push(MARKERS[0].to_string());
            }
            if i == self.tail.0 {
                out.push(MARKERS[2].to_string());
            }
            out.push(w.clone());
            if i == self.head.1 {
                out.push(MARKERS[1].to_string());
            }
            if i == self.tail.1 {
                out.push(MARKERS[3].to_string());
            }
        }
        out
    }

    /// Checks the spans against the sentence (`what` names the source in errors).
    pub fn validate(&self, what: &dyn Fn() -> String) -> std::result::Result<(), String> {
        let n = self.words.len();
        for (name, (a, b)) in [("head", self.head), ("tail", self.tail)] {
            if a > b || b >= n {
                return Err(format!("{}: {name} entity span {a}..={b} is outside the {n}-word sentence", what()));
            }
        }
        Ok(())
    }
}

/// A tokenized example: word-piece ids with `[CLS]`/`[SEP]`, and where the
/// `[E11]` and `[E21]` markers landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedText {
    pub ids: Vec<u32>,
    pub head: usize,
    pub tail: usize,
}

/// The model's tokenizer with the entity markers added as special tokens.
pub struct RelationTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    markers: [u32; 4],
    cls: u32,
    sep: u32,
    vocab_size: usize,
    /// Longest encoding kept, `[CLS]` and `[SEP]` included.
    pub max_length: usize,
}

impl std::fmt::Debug for RelationTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelationTokenizer").field("path", &self.path).field("vocab_size", &self.vocab_size).finish()
    }
}

impl RelationTokenizer {
    /// Reads a `tokenizer.json` (or the one inside a model folder).
    pub fn from_file(path: &Path, max_length: usize) -> Result<Self> {
        let path = if path.is_dir() { path.join("tokenizer.json") } else { path.to_path_buf() };
        if !path.is_file() {
            return Err(StreamError::format(&path, "tokenizer file not found (a Hugging Face tokenizer.json is expected)"));
        }
        if max_length < 8 {
            return Err(StreamError::Config(format!("max_length = {max_length}: need at least 8 tokens")));
        }
        let mut inner = Tokenizer::from_file(&path).map_err(|e| StreamError::format(&path, format!("not a tokenizer.json: {e}")))?;
        // Batches are padded by `pack` and cut by `encode` around the markers;
        // a padding or truncation rule saved in the file (MiniLM's pads to 128) must not apply.
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| StreamError::format(&path, e.to_string()))?;
        let added: Vec<AddedToken> = MARKERS.iter().map(|m| AddedToken::from(*m, true)).collect();
        inner.add_special_tokens(&added);
        let id = |t: &str| inner.token_to_id(t);
        let markers = [0, 1, 2, 3].map(|i| id(MARKERS[i]).expect("markers were just added"));
        let (cls, sep) = match (id("[CLS]").or_else(|| id("<s>")), id("[SEP]").or_else(|| id("</s>"))) {
            (Some(c), Some(s)) => (c, s),
            _ => return Err(StreamError::format(&path, "the vocabulary has neither [CLS]/[SEP] nor <s>/</s>")),
        };
        let vocab_size = inner.get_vocab(true).values().map(|&v| v as usize + 1).max().unwrap_or(0);
        Ok(Self { inner, path, markers, cls, sep, vocab_size, max_length })
    }

    /// Rows the model's word embedding needs (the markers included).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn marker_ids(&self) -> [u32; 4] {
        self.markers
    }

    /// Tokenizes one example. Too long a sentence is cut to a window that
    /// keeps both `[E11]` and `[E21]`; `None` when no window of `max_length`
    /// can hold both.
    pub fn encode(&self, ex: &RelationExample) -> Result<Option<EncodedText>> {
        let words = ex.marked_words();
        let enc = self
            .inner
            .encode(EncodeInput::Single(InputSequence::from(words)), false)
            .map_err(|e| StreamError::format(&self.path, format!("tokenizing {:?}: {e}", ex.words)))?;
        let body = enc.get_ids();
        let find = |m: u32| body.iter().position(|&t| t == m);
        let (Some(h), Some(t)) = (find(self.markers[0]), find(self.markers[2])) else {
            return Err(StreamError::format(&self.path, "the tokenizer split an entity marker; it must keep [E11]/[E21] whole"));
        };
        let budget = self.max_length - 2;
        let (lo, hi) = (h.min(t), h.max(t));
        if hi - lo + 1 > budget {
            return Ok(None);
        }
        // Start as early as possible while keeping both markers inside.
        let start = (hi + 1).saturating_sub(budget);
        let end = (start + budget).min(body.len());
        let mut ids = Vec::with_capacity(end - start + 2);
        ids.push(self.cls);
        ids.extend_from_slice(&body[start..end]);
        ids.push(self.sep);
        Ok(Some(EncodedText { ids, head: h - start + 1, tail: t - start + 1 }))
    }
}

/// Columns before the token ids in a packed batch: `[E11]` position,
/// `[E21]` position, number of real tokens.
pub const PACK_HEADER: i64 = 3;

/// Packs examples into one int64 tensor `[B, 3 + T]`: per row the `[E11]`
/// position, the `[E21]` position, the length, then the ids padded with 0 to
/// the longest row. One tensor lets text batches travel through the same
/// `ContinualMethod` interface as image batches.
pub fn pack(texts: &[&EncodedText], device: Device) -> Tensor {
    let t = texts.iter().map(|e| e.ids.len()).max().unwrap_or(1);
    let width = PACK_HEADER as usize + t;
    let mut data = vec![0i64; texts.len() * width];
    for (row, e) in data.chunks_exact_mut(width).zip(texts) {
        row[0] = e.head as i64;
        row[1] = e.tail as i64;
        row[2] = e.ids.len() as i64;
        for (dst, &id) in row[3..].iter_mut().zip(&e.ids) {
            *dst = id as i64;
        }
    }
    Tensor::from_slice(&data).view([texts.len() as i64, width as i64]).to_device(device)
}

/// A packed batch taken apart.
///
/// # Shapes
/// - `ids`: `[B, T]` int64; `mask`: `[B, T]` int64 (1 = token); `head`, `tail`: `[B]` int64
#[derive(Debug)]
pub struct TextBatch {
    pub ids: Tensor,
    pub mask: Tensor,
    pub head: Tensor,
    pub tail: Tensor,
}

/// The inverse of [`pack`], checking the layout.
pub fn unpack(x: &Tensor) -> Result<TextBatch> {
    let s = x.size();
    if s.len() != 2 || s[1] <= PACK_HEADER || x.kind() != Kind::Int64 {
        return Err(StreamError::Config(format!("a text batch is int64 [batch, 3 + tokens] (see stream::text::pack), got {:?} {s:?}", x.kind())));
    }
    let t = s[1] - PACK_HEADER;
    let (head, tail, len) = (x.select(1, 0), x.select(1, 1), x.select(1, 2));
    let ids = x.narrow(1, PACK_HEADER, t);
    let mask = Tensor::arange(t, (Kind::Int64, x.device())).unsqueeze(0).lt_tensor(&len.unsqueeze(1)).to_kind(Kind::Int64);
    let bad = head.ge(t).logical_or(&tail.ge(t)).logical_or(&head.lt(0)).logical_or(&tail.lt(0)).any();
    if bad.int64_value(&[]) != 0 {
        return Err(StreamError::Config("a text batch has a marker position beyond its tokens".into()));
    }
    Ok(TextBatch { ids, mask, head, tail })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_wrap_spans_in_either_order() {
        let ex = RelationExample { words: "a b c d e".split(' ').map(String::from).collect(), head: (3, 4), tail: (0, 0) };
        assert_eq!(ex.marked_words().join(" "), "[E21] a [E22] b c [E11] d e [E12]");
        let ex = RelationExample { head: (1, 1), tail: (2, 3), ..ex };
        assert_eq!(ex.marked_words().join(" "), "a [E11] b [E12] [E21] c d [E22] e");
        assert!(RelationExample { head: (2, 9), ..ex.clone() }.validate(&|| "x".into()).is_err());
    }

    #[test]
    fn pack_round_trips() {
        let a = EncodedText { ids: vec![101, 7, 8, 102], head: 1, tail: 2 };
        let b = EncodedText { ids: vec![101, 9, 102], head: 1, tail: 1 };
        let x = pack(&[&a, &b], Device::Cpu);
        assert_eq!(x.size(), [2, 7]);
        let u = unpack(&x).unwrap();
        assert_eq!(Vec::<i64>::try_from(u.mask.flatten(0, -1)).unwrap(), [1, 1, 1, 1, 1, 1, 1, 0]);
        assert_eq!(Vec::<i64>::try_from(u.ids.get(1)).unwrap(), [101, 9, 102, 0]);
        assert_eq!(Vec::<i64>::try_from(&u.tail).unwrap(), [2, 1]);
        assert!(unpack(&Tensor::zeros([2, 3], (Kind::Int64, Device::Cpu))).is_err());
    }
}
