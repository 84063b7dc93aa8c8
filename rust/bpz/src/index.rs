//! The index (spec, "Index"): its serialisation by the writer and its parsing and
//! validation by the reader, every rule of the spec's "Validation" section in one place.
use std::borrow::Cow;
use std::ops::Range;

#[cfg(test)]
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::format::*;
use crate::json::{JResult, JsonError, Keys, Scanner};

/// The index as serialised: a JSON object. Unknown fields are ignored. Kept as the
/// reference that [`IndexEmitter`] must match byte for byte.
#[cfg(test)]
#[derive(Serialize)]
pub(crate) struct RawIndex {
    pub tensors: Vec<RawTensor>,
    pub tree: Value,
    pub metadata: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writer: Option<WriterInfo>,
}

#[cfg(test)]
#[derive(Serialize)]
pub(crate) struct RawTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub storage: String,
    pub filter: String,
    pub chunk_elems: u64,
    /// `[offset, stored_len, crc32c, encoded]` per chunk.
    pub chunks: Vec<[u64; 4]>,
}

#[cfg(test)]
impl From<&TensorInfo> for RawTensor {
    fn from(t: &TensorInfo) -> Self {
        RawTensor {
            name: t.name.clone(),
            dtype: t.dtype.name().into(),
            shape: t.shape.clone(),
            storage: t.storage.name().into(),
            filter: t.filter.name().into(),
            chunk_elems: t.chunk_elems,
            chunks: t
                .chunks
                .iter()
                .map(|c| [c.offset, c.stored_len, c.crc32c as u64, c.encoded as u64])
                .collect(),
        }
    }
}

/// A JSON member of the index as the writer holds it: a value, or text already
/// checked to be JSON, stored as it is (so a large tree costs no parse and no copy).
#[derive(Debug, Clone)]
pub(crate) enum JsonPart {
    Value(Value),
    Text(String),
}

impl Default for JsonPart {
    fn default() -> Self {
        JsonPart::Value(Value::Null)
    }
}

/// Writes the index in pieces of about `SPILL_BYTES` to `spill`, straight from the
/// writer's tensor table: the compact JSON that serde_json makes of the index object
/// (members `tensors`, `tree`, `metadata`, `writer`, in that order), without copying
/// the table first. With a million tensors the index is ~100 MB, so it is streamed
/// rather than built whole.
pub(crate) struct IndexEmitter<F: FnMut(&[u8]) -> Result<()>> {
    buf: Vec<u8>,
    spill: F,
}

const SPILL_BYTES: usize = 1 << 20;

impl<F: FnMut(&[u8]) -> Result<()>> IndexEmitter<F> {
    pub(crate) fn new(spill: F) -> Self {
        IndexEmitter {
            buf: Vec::with_capacity(SPILL_BYTES + 64 * 1024),
            spill,
        }
    }

    pub(crate) fn emit(
        mut self,
        tensors: &[TensorInfo],
        tree: &JsonPart,
        metadata: &JsonPart,
        writer: Option<&WriterInfo>,
    ) -> Result<()> {
        self.buf.extend_from_slice(b"{\"tensors\":[");
        for (i, t) in tensors.iter().enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            self.tensor(t)?;
        }
        self.buf.extend_from_slice(b"],\"tree\":");
        self.part(tree)?;
        self.buf.extend_from_slice(b",\"metadata\":");
        self.part(metadata)?;
        if let Some(w) = writer {
            self.buf.extend_from_slice(b",\"writer\":{\"name\":");
            self.string(&w.name);
            self.buf.extend_from_slice(b",\"version\":");
            self.string(&w.version);
            self.buf.push(b'}');
        }
        self.buf.push(b'}');
        let rest = std::mem::take(&mut self.buf);
        (self.spill)(&rest)
    }

    fn tensor(&mut self, t: &TensorInfo) -> Result<()> {
        let b = &mut self.buf;
        b.extend_from_slice(b"{\"name\":");
        json_string(b, &t.name);
        b.extend_from_slice(b",\"dtype\":\"");
        b.extend_from_slice(t.dtype.name().as_bytes());
        b.extend_from_slice(b"\",\"shape\":[");
        for (i, &d) in t.shape.iter().enumerate() {
            if i > 0 {
                b.push(b',');
            }
            push_u64(b, d);
        }
        b.extend_from_slice(b"],\"storage\":\"");
        b.extend_from_slice(t.storage.name().as_bytes());
        b.extend_from_slice(b"\",\"filter\":\"");
        b.extend_from_slice(t.filter.name().as_bytes());
        b.extend_from_slice(b"\",\"chunk_elems\":");
        push_u64(b, t.chunk_elems);
        b.extend_from_slice(b",\"chunks\":[");
        for (i, c) in t.chunks.iter().enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            let b = &mut self.buf;
            b.push(b'[');
            push_u64(b, c.offset);
            b.push(b',');
            push_u64(b, c.stored_len);
            b.push(b',');
            push_u64(b, c.crc32c as u64);
            b.push(b',');
            b.push(if c.encoded { b'1' } else { b'0' });
            b.push(b']');
            // A tensor can have millions of chunks: spill inside the table too.
            if self.buf.len() >= SPILL_BYTES {
                self.spill()?;
            }
        }
        self.buf.extend_from_slice(b"]}");
        if self.buf.len() >= SPILL_BYTES {
            self.spill()?;
        }
        Ok(())
    }

    fn part(&mut self, part: &JsonPart) -> Result<()> {
        match part {
            JsonPart::Value(v) => serde_json::to_writer(&mut self.buf, v)
                .map_err(|e| Error::InvalidArgument(format!("index: {e}")))?,
            JsonPart::Text(text) => {
                self.spill()?;
                (self.spill)(text.as_bytes())?;
                return Ok(());
            }
        }
        self.spill()
    }

    fn string(&mut self, s: &str) {
        json_string(&mut self.buf, s);
    }

    fn spill(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            (self.spill)(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// A JSON string as serde_json writes it (the same escapes, so the same bytes).
fn json_string(out: &mut Vec<u8>, s: &str) {
    let plain = s.bytes().all(|c| c >= 0x20 && c != b'"' && c != b'\\');
    if plain {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
    }
}

/// Decimal digits of `v`, as serde_json (itoa) writes an integer.
fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// A validated index.
pub(crate) struct Index {
    pub tensors: Vec<TensorInfo>,
    pub by_name: foldhash::HashMap<String, usize>,
    /// The tree and metadata exactly as stored (checked, not built): `null` if absent.
    pub tree_json: String,
    pub metadata_json: String,
    pub writer: Option<WriterInfo>,
}

/// One tensor's members as they appear in the index, before validation.
#[derive(Default)]
struct TensorFields<'a> {
    name: Option<Cow<'a, str>>,
    dtype: Option<Cow<'a, str>>,
    shape: Option<Vec<u64>>,
    storage: Option<Cow<'a, str>>,
    filter: Option<Cow<'a, str>>,
    chunk_elems: Option<u64>,
    chunks: Option<Vec<[u64; 4]>>,
}

/// Parses and validates the index of a file whose data region is
/// `SUPERBLOCK_LEN..data_end`. Every rule of the spec's "Validation" section is
/// checked here, so later reads can index without further checks. One pass over
/// the text: typed fields are read as they are met, the rest is checked and skipped.
pub(crate) fn parse_index(
    path: &str,
    bytes: &[u8],
    alignment: u32,
    data_end: u64,
) -> Result<Index> {
    let mut s = Scanner::new(bytes, MAX_JSON_DEPTH);
    let fail = |e: JsonError| match e {
        JsonError::TooDeep => Error::limit(
            path,
            "the index nesting depth",
            json_depth(bytes) as u64,
            MAX_JSON_DEPTH as u64,
        ),
        JsonError::Invalid { at, detail } => Error::invalid_index(
            path,
            format!("not a valid index JSON object: {detail} (at byte {at})"),
        ),
    };
    let mut tensors: Option<Vec<TensorInfo>> = None;
    let mut by_name = foldhash::HashMap::default();
    let mut tree: Option<(Range<usize>, Vec<TreeRef>)> = None;
    let mut metadata: Option<Range<usize>> = None;
    let mut writer: Option<Option<WriterInfo>> = None;
    if s.peek() != Some(b'{') {
        return Err(fail(JsonError::Invalid {
            at: s.pos(),
            detail: "the index is not a JSON object".into(),
        }));
    }
    s.begin_object().map_err(fail)?;
    let (mut first, mut keys) = (true, Keys::default());
    while let Some(key) = s.next_key(&mut first, &mut keys).map_err(fail)? {
        match &*key {
            "tensors" => {
                tensors = Some(parse_tensors(
                    &mut s,
                    path,
                    alignment,
                    data_end,
                    &mut by_name,
                    &fail,
                )?);
            }
            "tree" => {
                let mut refs = Vec::new();
                let start = position_of_value(&mut s);
                if !matches!(s.peek(), Some(b'{' | b'n')) {
                    s.skip_value().map_err(fail)?;
                    return Err(Error::invalid_index(
                        path,
                        "the tree is neither an object nor null",
                    ));
                }
                tree_value(&mut s, &mut refs).map_err(fail)?;
                tree = Some((start..s.pos(), refs));
            }
            "metadata" => {
                let start = position_of_value(&mut s);
                s.skip_value().map_err(fail)?;
                metadata = Some(start..s.pos());
            }
            "writer" => writer = Some(parse_writer(&mut s).map_err(fail)?),
            _ => s.skip_value().map_err(fail)?,
        }
    }
    s.end().map_err(fail)?;
    let Some(tensors) = tensors else {
        return Err(Error::invalid_index(
            path,
            "not a valid index JSON object: missing member \"tensors\"",
        ));
    };
    check_overlaps(path, &tensors)?;
    let text = |r: Range<usize>| {
        std::str::from_utf8(&bytes[r])
            .expect("checked by the scanner")
            .to_owned()
    };
    let tree_json = match tree {
        Some((range, refs)) => {
            if let Some((_, missing)) = refs.iter().find(|(_, n)| !by_name.contains_key(&**n)) {
                return Err(Error::invalid_index(
                    path,
                    format!("the tree refers to a missing tensor {missing:?}"),
                ));
            }
            text(range)
        }
        None => "null".into(),
    };
    Ok(Index {
        tensors,
        by_name,
        tree_json,
        metadata_json: metadata.map_or_else(|| "null".into(), text),
        writer: writer.flatten(),
    })
}

/// Runs `scan` over a JSON section of a 1.1 index (`what` names it in errors) and checks
/// that nothing follows the value: the JSON rules of the spec's section 7 for one value.
fn scan_section<'a, T>(
    path: &str,
    bytes: &'a [u8],
    what: &str,
    scan: impl FnOnce(&mut Scanner<'a>) -> JResult<T>,
) -> Result<T> {
    let mut s = Scanner::new(bytes, MAX_JSON_DEPTH);
    let result = scan(&mut s).and_then(|v| s.end().map(|()| v));
    result.map_err(|e| match e {
        JsonError::TooDeep => Error::limit(
            path,
            format!("the nesting depth of the {what}"),
            json_depth(bytes) as u64,
            MAX_JSON_DEPTH as u64,
        ),
        JsonError::Invalid { at, detail } => Error::invalid_index(
            path,
            format!("the {what} is not valid JSON: {detail} (at byte {at} of its section)"),
        ),
    })
}

fn section_text(bytes: &[u8]) -> String {
    std::str::from_utf8(bytes)
        .expect("checked by the scanner")
        .to_owned()
}

/// A JSON section (metadata) checked and returned as text.
pub(crate) fn check_json_section(path: &str, bytes: &[u8], what: &str) -> Result<String> {
    scan_section(path, bytes, what, |s| s.skip_value())?;
    Ok(section_text(bytes))
}

/// The tree section checked as the spec's section 8 asks on open (an object or `null`,
/// every `tensor` member a string): its text and the tensor names it refers to.
pub(crate) fn check_tree_section(path: &str, bytes: &[u8]) -> Result<(String, Vec<String>)> {
    let refs = tree_refs(path, bytes)?
        .into_iter()
        .map(Cow::into_owned)
        .collect();
    Ok((section_text(bytes), refs))
}

/// The names a tree's `tensor` nodes refer to, after the checks of the spec's section 8
/// (an object or `null`, every `tensor` member a string): the one rule, applied by the
/// reader to a stored tree and by the writer to the tree it is given.
pub(crate) fn tree_refs<'a>(path: &str, bytes: &'a [u8]) -> Result<Vec<Cow<'a, str>>> {
    let mut shape_ok = true;
    let refs = scan_section(path, bytes, "tree", |s| {
        let mut refs = Vec::new();
        if !matches!(s.peek(), Some(b'{' | b'n')) {
            shape_ok = false;
            s.skip_value()?;
            return Ok(refs);
        }
        tree_value(s, &mut refs)?;
        Ok(refs)
    })?;
    if !shape_ok {
        return Err(Error::invalid_index(
            path,
            "the tree is neither an object nor null",
        ));
    }
    Ok(refs.into_iter().map(|(_, n)| n).collect())
}

/// The writer section: `{"name": …, "version": …}` (or `null`).
pub(crate) fn check_writer_section(path: &str, bytes: &[u8]) -> Result<Option<WriterInfo>> {
    scan_section(path, bytes, "writer", parse_writer)
}

/// Where a tree `"tensor"` node's name starts, and the name.
type TreeRef<'a> = (usize, Cow<'a, str>);

fn position_of_value(s: &mut Scanner) -> usize {
    s.peek();
    s.pos()
}

fn parse_tensors(
    s: &mut Scanner<'_>,
    path: &str,
    alignment: u32,
    data_end: u64,
    by_name: &mut foldhash::HashMap<String, usize>,
    fail: &impl Fn(JsonError) -> Error,
) -> Result<Vec<TensorInfo>> {
    if s.peek() != Some(b'[') {
        return Err(fail(JsonError::Invalid {
            at: s.pos(),
            detail: "\"tensors\" is not an array".into(),
        }));
    }
    s.begin_array().map_err(fail)?;
    let mut tensors = Vec::new();
    let mut first = true;
    while s.next_item(&mut first).map_err(fail)? {
        if tensors.len() == MAX_TENSORS {
            return Err(Error::limit(
                path,
                "the tensor count",
                MAX_TENSORS as u64 + 1,
                MAX_TENSORS as u64,
            ));
        }
        let ti = tensors.len();
        let fields = parse_tensor_fields(s, ti)
            .map_err(fail)?
            .complete(path, ti)?;
        let t = validate_tensor(path, fields, alignment, data_end)?;
        if by_name.insert(t.name.clone(), ti).is_some() {
            return Err(Error::invalid_index(
                path,
                format!("tensor name {:?} appears twice", t.name),
            ));
        }
        tensors.push(t);
    }
    Ok(tensors)
}

fn parse_tensor_fields<'a>(s: &mut Scanner<'a>, ti: usize) -> JResult<TensorFields<'a>> {
    let mut f = TensorFields::default();
    if s.peek() != Some(b'{') {
        return s.invalid(format!("tensor {ti} is not an object"));
    }
    s.begin_object()?;
    let (mut first, mut keys) = (true, Keys::default());
    while let Some(key) = s.next_key(&mut first, &mut keys)? {
        let string = |s: &mut Scanner<'a>, member: &str| match s.peek() {
            Some(b'"') => s.string(),
            _ => s.invalid(format!("member {member:?} of tensor {ti} is not a string")),
        };
        match &*key {
            "name" => f.name = Some(string(s, "name")?),
            "dtype" => f.dtype = Some(string(s, "dtype")?),
            "storage" => f.storage = Some(string(s, "storage")?),
            "filter" => f.filter = Some(string(s, "filter")?),
            "chunk_elems" => {
                f.chunk_elems = Some(s.u64(&|| format!("member \"chunk_elems\" of tensor {ti}"))?)
            }
            "shape" => {
                let what = || format!("the shape of tensor {ti}");
                let mut shape = Vec::new();
                array(s, &what, |s| {
                    shape.push(s.u64(&|| format!("an element of the shape of tensor {ti}"))?);
                    Ok(())
                })?;
                f.shape = Some(shape);
            }
            "chunks" => {
                // Writers put shape, dtype and chunk_elems first: size the table once.
                let expected = match (&f.shape, f.chunk_elems) {
                    (Some(shape), Some(ce)) if ce > 0 => shape
                        .iter()
                        .try_fold(1u64, |a, &d| a.checked_mul(d))
                        .map_or(0, |n| n.div_ceil(ce)),
                    _ => 0,
                };
                // Each row takes at least 10 bytes of text, which bounds what a hostile file can make us reserve.
                let capacity = expected.min(((s.remaining() / 10) as u64).min(1 << 20)) as usize;
                f.chunks = Some(s.u64_rows::<4>(
                    capacity,
                    &|| format!("the chunk table of tensor {ti}"),
                    &|| format!("an entry of the chunk table of tensor {ti}"),
                )?);
            }
            _ => s.skip_value()?,
        }
    }
    Ok(f)
}

/// Calls `item` for every element of an array.
fn array<'a>(
    s: &mut Scanner<'a>,
    what: &dyn Fn() -> String,
    mut item: impl FnMut(&mut Scanner<'a>) -> JResult<()>,
) -> JResult<()> {
    if s.peek() != Some(b'[') {
        return s.invalid(format!("{} is not an array", what()));
    }
    s.begin_array()?;
    let mut first = true;
    while s.next_item(&mut first)? {
        item(s)?;
    }
    Ok(())
}

fn parse_writer(s: &mut Scanner<'_>) -> JResult<Option<WriterInfo>> {
    if s.null()? {
        return Ok(None);
    }
    if s.peek() != Some(b'{') {
        return s.invalid("\"writer\" is neither an object nor null");
    }
    s.begin_object()?;
    let (mut first, mut keys) = (true, Keys::default());
    let (mut name, mut version) = (None, None);
    while let Some(key) = s.next_key(&mut first, &mut keys)? {
        let slot = match &*key {
            "name" => &mut name,
            "version" => &mut version,
            _ => {
                s.skip_value()?;
                continue;
            }
        };
        if s.peek() != Some(b'"') {
            return s.invalid(format!("member {key:?} of \"writer\" is not a string"));
        }
        *slot = Some(s.string()?.into_owned());
    }
    match (name, version) {
        (Some(name), Some(version)) => Ok(Some(WriterInfo { name, version })),
        _ => s.invalid("\"writer\" lacks its \"name\" or \"version\""),
    }
}

/// Checks a tree value, collecting the names its `"tensor"` nodes refer to. A node is
/// an object with a `"tensor"` member; its other members are not searched for nodes.
fn tree_value<'a>(s: &mut Scanner<'a>, refs: &mut Vec<TreeRef<'a>>) -> JResult<()> {
    match s.peek() {
        Some(b'{') => {
            let mark = refs.len();
            let mut own: Option<(usize, Option<Cow<'a, str>>)> = None;
            s.begin_object()?;
            let (mut first, mut keys) = (true, Keys::default());
            while let Some(key) = s.next_key(&mut first, &mut keys)? {
                if key == "tensor" {
                    let at = position_of_value(s);
                    own = Some(if s.peek() == Some(b'"') {
                        (at, Some(s.string()?))
                    } else {
                        (at, None)
                    });
                    if own.as_ref().is_some_and(|o| o.1.is_none()) {
                        s.skip_value()?;
                    }
                } else {
                    tree_value(s, refs)?;
                }
            }
            if let Some((at, target)) = own {
                refs.truncate(mark);
                match target {
                    Some(name) => refs.push((at, name)),
                    None => {
                        return Err(JsonError::Invalid {
                            at,
                            detail: "a tree \"tensor\" node does not hold a string".into(),
                        })
                    }
                }
            }
            Ok(())
        }
        Some(b'[') => {
            s.begin_array()?;
            let mut first = true;
            while s.next_item(&mut first)? {
                tree_value(s, refs)?;
            }
            Ok(())
        }
        _ => s.skip_value(),
    }
}

/// No two stored extents may share a byte.
fn check_overlaps(path: &str, tensors: &[TensorInfo]) -> Result<()> {
    let mut extents: Vec<(u64, u64, usize)> = Vec::new();
    for (ti, t) in tensors.iter().enumerate() {
        if let (Some(range), Some(last)) = (t.raw_range(), t.chunks.last()) {
            // Raw chunks were checked to be contiguous: one extent covers them all.
            extents.push((range.start, last.offset + last.stored_len, ti));
        } else {
            extents.extend(
                t.chunks
                    .iter()
                    .map(|c| (c.offset, c.offset + c.stored_len, ti)),
            );
        }
    }
    extents.sort_unstable();
    for w in extents.windows(2) {
        if w[1].0 < w[0].1 {
            let (a, b) = (&tensors[w[0].2].name, &tensors[w[1].2].name);
            return Err(Error::invalid_index(
                path,
                format!(
                    "stored bytes of tensors {a:?} and {b:?} overlap at offset {}",
                    w[1].0
                ),
            ));
        }
    }
    Ok(())
}

/// A tensor's members, all present, as read from the index.
struct RawTensorRef<'a> {
    name: String,
    dtype: Cow<'a, str>,
    shape: Vec<u64>,
    storage: Cow<'a, str>,
    filter: Cow<'a, str>,
    chunk_elems: u64,
    chunks: Vec<[u64; 4]>,
}

impl<'a> TensorFields<'a> {
    fn complete(self, path: &str, ti: usize) -> Result<RawTensorRef<'a>> {
        let name = self.name.as_deref();
        let missing = |member: &str| {
            let which = name.map_or_else(|| format!("tensor {ti}"), |n| format!("tensor {n:?}"));
            Error::invalid_index(path, format!("{which} lacks the member {member:?}"))
        };
        Ok(RawTensorRef {
            name: self
                .name
                .clone()
                .ok_or_else(|| missing("name"))?
                .into_owned(),
            dtype: self.dtype.ok_or_else(|| missing("dtype"))?,
            shape: self.shape.ok_or_else(|| missing("shape"))?,
            storage: self.storage.ok_or_else(|| missing("storage"))?,
            filter: self.filter.ok_or_else(|| missing("filter"))?,
            chunk_elems: self.chunk_elems.ok_or_else(|| missing("chunk_elems"))?,
            chunks: self.chunks.ok_or_else(|| missing("chunks"))?,
        })
    }
}

fn validate_tensor(
    path: &str,
    rt: RawTensorRef<'_>,
    alignment: u32,
    data_end: u64,
) -> Result<TensorInfo> {
    let name = rt.name;
    let unsupported = |what: &str, value: &str| Error::UnsupportedFeature {
        path: path.into(),
        detail: format!("tensor {name:?} has {what} {value:?}"),
    };
    let dtype = DType::from_name(&rt.dtype).ok_or_else(|| unsupported("dtype", &rt.dtype))?;
    let storage = match &*rt.storage {
        "raw" => Storage::Raw,
        "chunked" => Storage::Chunked,
        other => return Err(unsupported("storage", other)),
    };
    let filter = Filter::from_name(&rt.filter).ok_or_else(|| unsupported("filter", &rt.filter))?;
    let parts = TensorParts {
        name,
        dtype,
        shape: rt.shape,
        storage,
        filter,
        chunk_elems: rt.chunk_elems,
    };
    check_tensor(path, parts, &rt.chunks, None, alignment, data_end)
}

/// A tensor's description with its dtype, storage and filter known, before the rules
/// of the spec's validation step 9 (shared by the 1.0 JSON index and the 1.1 binary one).
pub(crate) struct TensorParts {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub storage: Storage,
    pub filter: Filter,
    pub chunk_elems: u64,
}

/// Checks one tensor against the spec's validation step 9 with `SUPERBLOCK_LEN..data_end`
/// as the data region. `chunks` are `[offset, stored_length, crc32c, encoded]` as stored;
/// `hashes`, if given, are their content hashes (format 1.1), one per chunk.
pub(crate) fn check_tensor(
    path: &str,
    parts: TensorParts,
    chunks: &[[u64; 4]],
    hashes: Option<&[[u8; 16]]>,
    alignment: u32,
    data_end: u64,
) -> Result<TensorInfo> {
    let TensorParts {
        name,
        dtype,
        shape,
        storage,
        filter,
        chunk_elems,
    } = parts;
    debug_assert!(hashes.map_or(true, |h| h.len() == chunks.len()));
    let bad = |detail: String| Error::invalid_index(path, format!("tensor {name:?}: {detail}"));
    if name.len() > MAX_NAME_BYTES {
        return Err(Error::limit(
            path,
            format!(
                "the length of tensor name {:?}…",
                &name[..name.floor_char_boundary_compat(40)]
            ),
            name.len() as u64,
            MAX_NAME_BYTES as u64,
        ));
    }
    if name.contains('\0') {
        return Err(bad("the name contains a NUL character".into()));
    }
    if shape.len() > MAX_RANK {
        return Err(Error::limit(
            path,
            format!("the rank of tensor {name:?}"),
            shape.len() as u64,
            MAX_RANK as u64,
        ));
    }
    let nelems = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_SAFE_INTEGER);
    let nbytes = nelems
        .and_then(|n| n.checked_mul(dtype.size() as u64))
        .filter(|&n| n <= MAX_SAFE_INTEGER);
    let (Some(nelems), Some(nbytes)) = (nelems, nbytes) else {
        // The scanner saturates numbers too large for 64 bits: say so rather than print u64::MAX.
        let dims: Vec<String> = shape
            .iter()
            .map(|&d| {
                if d == u64::MAX {
                    "2^64 or more".into()
                } else {
                    d.to_string()
                }
            })
            .collect();
        let what = format!(
            "the byte size of tensor {name:?} (shape [{}])",
            dims.join(", ")
        );
        return Err(Error::limit(path, what, u64::MAX, MAX_SAFE_INTEGER));
    };
    if !filter.applies_to(dtype) {
        return Err(bad(format!(
            "filter {} is not defined for dtype {dtype}",
            filter.name()
        )));
    }
    if storage == Storage::Raw && filter != Filter::None {
        return Err(bad("a raw tensor must have filter \"none\"".into()));
    }
    if chunk_elems > MAX_SAFE_INTEGER {
        return Err(Error::limit(
            path,
            format!("chunk_elems of tensor {name:?}"),
            chunk_elems,
            MAX_SAFE_INTEGER,
        ));
    }
    if chunk_elems == 0 {
        return Err(bad("chunk_elems is 0".into()));
    }
    let chunk_bytes = chunk_elems.saturating_mul(dtype.size() as u64);
    let largest_chunk = chunk_elems.min(nelems) * dtype.size() as u64;
    if largest_chunk > MAX_CHUNK_BYTES {
        return Err(Error::limit(
            path,
            format!("the chunk size of tensor {name:?} in bytes"),
            largest_chunk,
            MAX_CHUNK_BYTES,
        ));
    }
    let expected_chunks = if nbytes == 0 {
        0
    } else {
        nelems.div_ceil(chunk_elems)
    };
    if expected_chunks > MAX_CHUNKS_PER_TENSOR as u64 {
        return Err(Error::limit(
            path,
            format!("the chunk count of tensor {name:?}"),
            expected_chunks,
            MAX_CHUNKS_PER_TENSOR as u64,
        ));
    }
    if chunks.len() as u64 != expected_chunks {
        return Err(bad(format!(
            "{} chunks listed, but {nelems} elements in chunks of {chunk_elems} need {expected_chunks}",
            chunks.len()
        )));
    }
    let mut info = TensorInfo {
        name: String::new(),
        dtype,
        shape,
        storage,
        filter,
        chunk_elems,
        chunks: Vec::with_capacity(chunks.len()),
    };
    for (i, c) in chunks.iter().enumerate() {
        let [offset, stored_len, crc, encoded] = *c;
        let decoded = info.chunk_decoded_len(i);
        let end = offset.checked_add(stored_len);
        if offset < SUPERBLOCK_LEN as u64 || end.map_or(true, |e| e > data_end) {
            return Err(bad(format!(
                "chunk {i} at {offset}..+{stored_len} lies outside the data region {SUPERBLOCK_LEN}..{data_end}"
            )));
        }
        if crc > u32::MAX as u64 {
            return Err(bad(format!(
                "chunk {i} has checksum {crc}, wider than 32 bits"
            )));
        }
        let encoded = match encoded {
            0 => false,
            1 => true,
            v => return Err(bad(format!("chunk {i} has encoding {v}, expected 0 or 1"))),
        };
        if stored_len == 0 {
            return Err(bad(format!("chunk {i} has stored length 0")));
        }
        if !encoded && stored_len != decoded {
            return Err(bad(format!(
                "plain chunk {i} stores {stored_len} bytes, but holds {decoded}"
            )));
        }
        if storage == Storage::Raw {
            if encoded {
                return Err(bad(format!("chunk {i} of a raw tensor is encoded")));
            }
            let expected_offset = info
                .chunks
                .first()
                .map_or(offset, |c0: &ChunkInfo| c0.offset + i as u64 * chunk_bytes);
            if offset != expected_offset {
                return Err(bad(format!(
                    "chunk {i} of a raw tensor is not contiguous with chunk 0"
                )));
            }
            if i == 0 && offset % alignment as u64 != 0 {
                return Err(bad(format!(
                    "raw data at offset {offset} is not aligned to {alignment} bytes"
                )));
            }
        }
        info.chunks.push(ChunkInfo {
            offset,
            stored_len,
            crc32c: crc as u32,
            encoded,
            hash: hashes.map(|h| h[i]),
        });
    }
    info.name = name;
    Ok(info)
}

trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorCharBoundary for String {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        i = i.min(self.len());
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

#[cfg(test)]
mod emitter_tests {
    use super::*;
    use proptest::prelude::*;

    fn emitted(
        tensors: &[TensorInfo],
        tree: &JsonPart,
        metadata: &JsonPart,
        writer: Option<&WriterInfo>,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        IndexEmitter::new(|piece: &[u8]| {
            out.extend_from_slice(piece);
            Ok(())
        })
        .emit(tensors, tree, metadata, writer)
        .unwrap();
        out
    }

    fn reference(
        tensors: &[TensorInfo],
        tree: &Value,
        metadata: &Value,
        writer: Option<&WriterInfo>,
    ) -> Vec<u8> {
        let index = RawIndex {
            tensors: tensors.iter().map(RawTensor::from).collect(),
            tree: tree.clone(),
            metadata: metadata.clone(),
            writer: writer.cloned(),
        };
        serde_json::to_vec(&index).unwrap()
    }

    fn tensor() -> impl Strategy<Value = TensorInfo> {
        let name = prop_oneof![
            "[a-z0-9_/.~]{0,12}",
            any::<String>(),
            proptest::collection::vec(
                prop_oneof![
                    Just('"'),
                    Just('\\'),
                    Just('\u{0}'),
                    Just('\u{1f}'),
                    Just('\u{7f}'),
                    Just('é'),
                    Just('\n'),
                    any::<char>()
                ],
                0..8
            )
            .prop_map(|cs| cs.into_iter().collect::<String>()),
        ];
        let number = prop_oneof![
            Just(0u64),
            Just(9),
            Just(10),
            Just(MAX_SAFE_INTEGER),
            Just(u64::MAX),
            any::<u64>(),
            0u64..1000
        ];
        let chunk = (number.clone(), number.clone(), any::<u32>(), any::<bool>()).prop_map(
            |(offset, stored_len, crc32c, encoded)| ChunkInfo {
                offset,
                stored_len,
                crc32c,
                encoded,
                hash: None,
            },
        );
        (
            name,
            proptest::sample::select(DType::ALL.to_vec()),
            proptest::collection::vec(number.clone(), 0..4),
            any::<bool>(),
            proptest::sample::select(vec![
                Filter::None,
                Filter::Shuffle,
                Filter::DeltaShuffle,
                Filter::BitPack,
            ]),
            number,
            proptest::collection::vec(chunk, 0..4),
        )
            .prop_map(|(name, dtype, shape, raw, filter, chunk_elems, chunks)| {
                TensorInfo {
                    name,
                    dtype,
                    shape,
                    storage: if raw { Storage::Raw } else { Storage::Chunked },
                    filter,
                    chunk_elems,
                    chunks,
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        /// The streamed index is byte for byte what serde_json makes of the index struct.
        #[test]
        fn emitter_matches_serde_json(tensors in proptest::collection::vec(tensor(), 0..6), with_writer in any::<bool>(), label in any::<String>()) {
            let tree = serde_json::json!({"dict": [["a\"\\\u{1}", {"tensor": label.clone()}]], "f": [1.5, -0.0, 1e300, 5e-324], "n": null});
            let metadata = serde_json::json!([label.clone(), 18446744073709551615u64, -3, true]);
            let writer = WriterInfo { name: label, version: "1.2.3\t".into() };
            let writer = with_writer.then_some(&writer);
            let expected = reference(&tensors, &tree, &metadata, writer);
            prop_assert_eq!(&emitted(&tensors, &JsonPart::Value(tree.clone()), &JsonPart::Value(metadata.clone()), writer), &expected);
            // Text given verbatim lands verbatim.
            let text = JsonPart::Text(serde_json::to_string(&tree).unwrap());
            prop_assert_eq!(&emitted(&tensors, &text, &JsonPart::Value(metadata), writer), &expected);
        }
    }

    /// Tables larger than a spill piece (one tensor with many chunks, many tensors) come
    /// out whole and in order.
    #[test]
    fn large_tables_are_spilled_in_pieces_and_match() {
        let chunks: Vec<ChunkInfo> = (0..200_000u64)
            .map(|i| ChunkInfo {
                offset: 64 + i * 4096,
                stored_len: 4096,
                crc32c: i as u32 * 7919,
                encoded: i % 3 == 0,
                hash: None,
            })
            .collect();
        let mut tensors = vec![TensorInfo {
            name: "big".into(),
            dtype: DType::U8,
            shape: vec![200_000 * 4096],
            storage: Storage::Chunked,
            filter: Filter::None,
            chunk_elems: 4096,
            chunks,
        }];
        tensors.extend((0..50_000u64).map(|i| TensorInfo {
            name: format!("k{i}"),
            dtype: DType::F32,
            shape: vec![],
            storage: Storage::Raw,
            filter: Filter::None,
            chunk_elems: 1,
            chunks: vec![ChunkInfo {
                offset: i * 64,
                stored_len: 4,
                crc32c: i as u32,
                encoded: false,
                hash: None,
            }],
        }));
        let mut pieces = Vec::new();
        IndexEmitter::new(|piece: &[u8]| {
            pieces.push(piece.len());
            Ok(())
        })
        .emit(&tensors, &JsonPart::default(), &JsonPart::default(), None)
        .unwrap();
        assert!(
            pieces.len() > 4 && pieces.iter().all(|&n| n <= SPILL_BYTES + 4096),
            "{pieces:?}"
        );
        let expected = reference(&tensors, &Value::Null, &Value::Null, None);
        assert_eq!(pieces.iter().sum::<usize>(), expected.len());
        assert_eq!(
            emitted(&tensors, &JsonPart::default(), &JsonPart::default(), None),
            expected
        );
    }
}
