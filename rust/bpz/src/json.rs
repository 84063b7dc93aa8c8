//! A strict JSON scanner for the index, in one pass over the bytes.
//!
//! Opening an archive must cost little more than reading its index, so the index is
//! not built as a generic value tree: the index parser (`index::parse_index`) pulls the
//! typed fields it needs straight out of the text, and everything else (the pytree
//! skeleton, user metadata, members a reader ignores) is checked and kept as text.
//! "Checked" means what the spec asks of the whole index: valid UTF-8 and escapes,
//! finite numbers, no object with two members of the same name, bounded nesting.

use std::borrow::Cow;

/// Why scanning stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JsonError {
    /// Not JSON, or not the JSON the caller asked for; `at` is a byte offset.
    Invalid { at: usize, detail: String },
    /// Arrays/objects nested deeper than the scanner's limit.
    TooDeep,
}

pub(crate) type JResult<T> = std::result::Result<T, JsonError>;

pub(crate) struct Scanner<'a> {
    text: &'a [u8],
    pos: usize,
    depth: usize,
    max_depth: usize,
}

impl<'a> Scanner<'a> {
    pub(crate) fn new(text: &'a [u8], max_depth: usize) -> Self {
        Scanner {
            text,
            pos: 0,
            depth: 0,
            max_depth,
        }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes not scanned yet.
    pub(crate) fn remaining(&self) -> usize {
        self.text.len() - self.pos
    }

    pub(crate) fn invalid<T>(&self, detail: impl Into<String>) -> JResult<T> {
        Err(JsonError::Invalid {
            at: self.pos,
            detail: detail.into(),
        })
    }

    fn ws(&mut self) {
        while let Some(&c) = self.text.get(self.pos) {
            if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                break;
            }
            self.pos += 1;
        }
    }

    /// The next significant byte, without consuming it.
    pub(crate) fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.text.get(self.pos).copied()
    }

    fn eat(&mut self, c: u8) -> JResult<()> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            self.unexpected(&format!("'{}'", c as char))
        }
    }

    fn unexpected<T>(&mut self, wanted: &str) -> JResult<T> {
        match self.peek() {
            None => self.invalid(format!("the text ends where {wanted} was expected")),
            Some(c) if c.is_ascii_graphic() => {
                self.invalid(format!("found '{}' where {wanted} was expected", c as char))
            }
            Some(c) => self.invalid(format!("found byte {c:#04x} where {wanted} was expected")),
        }
    }

    /// Only whitespace may follow the top-level value.
    pub(crate) fn end(&mut self) -> JResult<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => self.invalid("trailing characters after the JSON value"),
        }
    }

    fn enter(&mut self) -> JResult<()> {
        self.depth += 1;
        if self.depth > self.max_depth {
            return Err(JsonError::TooDeep);
        }
        Ok(())
    }

    // ----------------------------------------------------------- containers

    /// Consumes `{`; then call [`next_key`](Self::next_key) until it returns `None`.
    pub(crate) fn begin_object(&mut self) -> JResult<()> {
        self.eat(b'{')?;
        self.enter()
    }

    /// The next member's key (its `:` consumed), or `None` after the closing `}`.
    /// `first` tracks whether a comma is due; `keys` rejects a repeated name.
    pub(crate) fn next_key(
        &mut self,
        first: &mut bool,
        keys: &mut Keys<'a>,
    ) -> JResult<Option<Cow<'a, str>>> {
        match self.peek() {
            Some(b'}') => {
                self.pos += 1;
                self.depth -= 1;
                return Ok(None);
            }
            Some(b',') if !*first => self.pos += 1,
            _ if *first => {}
            _ => return self.unexpected("',' or '}'"),
        }
        *first = false;
        if self.peek() != Some(b'"') {
            return self.unexpected("a member name");
        }
        let at = self.pos;
        let key = self.string()?;
        if !keys.insert(key.clone()) {
            return Err(JsonError::Invalid {
                at,
                detail: format!("an object has two members named {key:?}"),
            });
        }
        self.eat(b':')?;
        Ok(Some(key))
    }

    /// Consumes `[`; then call [`next_item`](Self::next_item) before every element.
    pub(crate) fn begin_array(&mut self) -> JResult<()> {
        self.eat(b'[')?;
        self.enter()
    }

    /// Whether another element follows (its comma consumed); `false` after the closing `]`.
    pub(crate) fn next_item(&mut self, first: &mut bool) -> JResult<bool> {
        match self.peek() {
            Some(b']') => {
                self.pos += 1;
                self.depth -= 1;
                Ok(false)
            }
            Some(b',') if !*first => {
                self.pos += 1;
                Ok(true)
            }
            _ if *first => {
                *first = false;
                Ok(true)
            }
            _ => self.unexpected("',' or ']'"),
        }
    }

    // --------------------------------------------------------------- scalars

    /// A string; borrowed from the text unless it has escapes.
    pub(crate) fn string(&mut self) -> JResult<Cow<'a, str>> {
        self.eat(b'"')?;
        let text = self.text;
        let mut start = self.pos;
        let mut owned: Option<String> = None;
        loop {
            let mut i = self.pos;
            while let Some(&c) = text.get(i) {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                i += 1;
            }
            let Some(&stop) = text.get(i) else {
                self.pos = i;
                return self.invalid("the text ends inside a string");
            };
            // Segments end at ASCII bytes, so each valid segment keeps the whole valid.
            let segment = match std::str::from_utf8(&text[start..i]) {
                Ok(s) => s,
                Err(e) => {
                    self.pos = start + e.valid_up_to();
                    return self.invalid("a string is not valid UTF-8");
                }
            };
            self.pos = i;
            match stop {
                b'"' => {
                    self.pos += 1;
                    return Ok(match owned {
                        None => Cow::Borrowed(segment),
                        Some(mut s) => {
                            s.push_str(segment);
                            Cow::Owned(s)
                        }
                    });
                }
                b'\\' => {
                    let s = owned.get_or_insert_with(String::new);
                    s.push_str(segment);
                    self.pos += 1;
                    let ch = self.escape()?;
                    owned.as_mut().expect("set above").push(ch);
                    start = self.pos;
                }
                _ => return self.invalid("a string holds an unescaped control character"),
            }
        }
    }

    /// The character of an escape whose backslash was consumed.
    fn escape(&mut self) -> JResult<char> {
        let Some(&c) = self.text.get(self.pos) else {
            return self.invalid("the text ends inside an escape");
        };
        self.pos += 1;
        Ok(match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = self.hex4()?;
                let code = match hi {
                    0xd800..=0xdbff => {
                        if self.text.get(self.pos..self.pos + 2) != Some(b"\\u") {
                            return self.invalid("a lone leading surrogate in a \\u escape");
                        }
                        self.pos += 2;
                        let lo = self.hex4()?;
                        if !(0xdc00..=0xdfff).contains(&lo) {
                            return self
                                .invalid("a leading surrogate not followed by a trailing one");
                        }
                        0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                    }
                    0xdc00..=0xdfff => {
                        return self.invalid("a lone trailing surrogate in a \\u escape")
                    }
                    v => v,
                };
                char::from_u32(code).expect("surrogates were excluded above")
            }
            _ => {
                self.pos -= 1;
                return self.invalid("an invalid escape in a string");
            }
        })
    }

    fn hex4(&mut self) -> JResult<u32> {
        let Some(digits) = self.text.get(self.pos..self.pos + 4) else {
            return self.invalid("the text ends inside a \\u escape");
        };
        let mut v = 0u32;
        for &d in digits {
            let x = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return self.invalid("a \\u escape with a non-hex digit"),
            };
            v = v * 16 + x as u32;
        }
        self.pos += 4;
        Ok(v)
    }

    /// Scans a number; returns whether it is an integer (no fraction, no exponent).
    fn number(&mut self) -> JResult<bool> {
        let text = self.text;
        let start = self.pos;
        let mut i = start;
        if text.get(i) == Some(&b'-') {
            i += 1;
        }
        let digits = |mut i: usize| {
            while text.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            i
        };
        match text.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => i = digits(i),
            _ => {
                self.pos = i;
                return self.invalid("a malformed number");
            }
        }
        let mut integer = true;
        if text.get(i) == Some(&b'.') {
            let j = digits(i + 1);
            if j == i + 1 {
                self.pos = j;
                return self.invalid("a number with no digits after its decimal point");
            }
            i = j;
            integer = false;
        }
        if matches!(text.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(text.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let j = digits(i);
            if j == i {
                self.pos = j;
                return self.invalid("a number with an empty exponent");
            }
            i = j;
            integer = false;
        }
        self.pos = i;
        // Like serde_json: a number too large even for a double is an error, not infinity.
        if !integer || i - start > 20 {
            let s = std::str::from_utf8(&text[start..i]).expect("ASCII");
            if !s.parse::<f64>().is_ok_and(f64::is_finite) {
                self.pos = start;
                return self.invalid("a number out of range");
            }
        }
        Ok(integer)
    }

    /// A non-negative integer; larger than `u64::MAX` saturates (the callers' limits
    /// then report it). `what` names the value in a type error.
    pub(crate) fn u64(&mut self, what: &dyn Fn() -> String) -> JResult<u64> {
        self.ws();
        // Fast path: plain digits, as every writer writes them.
        let text = self.text;
        let start = self.pos;
        let mut i = start;
        let mut v = 0u64;
        while let Some(d) = text
            .get(i)
            .map(|c| c.wrapping_sub(b'0'))
            .filter(|&d| d <= 9)
        {
            v = v.saturating_mul(10).saturating_add(d as u64);
            i += 1;
        }
        let leading_zero = text.get(start) == Some(&b'0') && i - start > 1;
        if i > start
            && i - start <= 20
            && !leading_zero
            && !matches!(text.get(i), Some(b'.' | b'e' | b'E'))
        {
            self.pos = i;
            return Ok(v);
        }
        if !matches!(self.peek(), Some(b'-' | b'0'..=b'9')) {
            return self.unexpected(&what());
        }
        if !self.number()? {
            self.pos = start;
            return self.invalid(format!("{} is not an integer", what()));
        }
        let mut digits = &self.text[start..self.pos];
        if let [b'-', rest @ ..] = digits {
            if rest != b"0" {
                self.pos = start;
                return self.invalid(format!("{} is negative", what()));
            }
            digits = rest;
        }
        Ok(digits.iter().fold(0u64, |v, &d| {
            v.saturating_mul(10).saturating_add((d - b'0') as u64)
        }))
    }

    /// An array of exactly `N` integers.
    pub(crate) fn u64_array<const N: usize>(
        &mut self,
        what: &dyn Fn() -> String,
    ) -> JResult<[u64; N]> {
        if self.peek() != Some(b'[') {
            return self.invalid(format!("{} is not an array", what()));
        }
        self.begin_array()?;
        let mut out = [0u64; N];
        let mut first = true;
        let mut n = 0;
        while self.next_item(&mut first)? {
            if n == N {
                return self.invalid(format!("{} has more than {N} numbers", what()));
            }
            out[n] = self.u64(what)?;
            n += 1;
        }
        if n != N {
            return self.invalid(format!("{} has {n} numbers, not {N}", what()));
        }
        Ok(out)
    }

    /// An array of arrays of `N` integers (a chunk table). Rows written the way
    /// writers write them (`[12,34,...]`, no spaces) take a fast path.
    pub(crate) fn u64_rows<const N: usize>(
        &mut self,
        capacity: usize,
        what: &dyn Fn() -> String,
        row: &dyn Fn() -> String,
    ) -> JResult<Vec<[u64; N]>> {
        if self.peek() != Some(b'[') {
            return self.invalid(format!("{} is not an array", what()));
        }
        self.begin_array()?;
        let mut rows = Vec::with_capacity(capacity);
        let mut first = true;
        let fast = self.depth < self.max_depth;
        while self.next_item(&mut first)? {
            match if fast { self.compact_row::<N>() } else { None } {
                Some(r) => rows.push(r),
                None => rows.push(self.u64_array::<N>(row)?),
            }
        }
        Ok(rows)
    }

    /// `[d,d,...]` with exactly `N` plain integers and no whitespace, or `None` (nothing consumed).
    fn compact_row<const N: usize>(&mut self) -> Option<[u64; N]> {
        let text = self.text;
        let mut i = self.pos;
        if text.get(i) != Some(&b'[') {
            return None;
        }
        let mut out = [0u64; N];
        for (k, slot) in out.iter_mut().enumerate() {
            i += 1;
            let start = i;
            let mut v = 0u64;
            while let Some(d) = text
                .get(i)
                .map(|c| c.wrapping_sub(b'0'))
                .filter(|&d| d <= 9)
            {
                v = v.wrapping_mul(10).wrapping_add(d as u64);
                i += 1;
            }
            let len = i - start;
            // At most 19 digits cannot overflow; a leading zero is only "0" itself.
            if len == 0 || len > 19 || (len > 1 && text[start] == b'0') {
                return None;
            }
            *slot = v;
            let want = if k + 1 == N { b']' } else { b',' };
            if text.get(i) != Some(&want) {
                return None;
            }
        }
        self.pos = i + 1;
        Some(out)
    }

    /// `null`, consumed, or `false` (nothing consumed) if the next value is something else.
    pub(crate) fn null(&mut self) -> JResult<bool> {
        if self.peek() == Some(b'n') {
            self.literal(b"null")?;
            return Ok(true);
        }
        Ok(false)
    }

    fn literal(&mut self, word: &[u8]) -> JResult<()> {
        if self.text.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Ok(())
        } else {
            self.invalid("an unknown literal (expected true, false or null)")
        }
    }

    /// Checks any value and skips it.
    pub(crate) fn skip_value(&mut self) -> JResult<()> {
        match self.peek() {
            Some(b'{') => {
                self.begin_object()?;
                let (mut first, mut keys) = (true, Keys::default());
                while self.next_key(&mut first, &mut keys)?.is_some() {
                    self.skip_value()?;
                }
                Ok(())
            }
            Some(b'[') => {
                self.begin_array()?;
                let mut first = true;
                while self.next_item(&mut first)? {
                    self.skip_value()?;
                }
                Ok(())
            }
            Some(b'"') => self.string().map(drop),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number().map(drop),
            _ => self.unexpected("a value"),
        }
    }
}

/// The member names of one object, to refuse a repeated one. The first few live on
/// the stack: index objects have a handful of members, and there can be millions.
#[derive(Default)]
pub(crate) struct Keys<'a> {
    few: [Option<Cow<'a, str>>; 8],
    n: usize,
    many: Option<foldhash::HashSet<Cow<'a, str>>>,
}

impl<'a> Keys<'a> {
    /// `false` if `key` was already there.
    pub(crate) fn insert(&mut self, key: Cow<'a, str>) -> bool {
        if let Some(set) = &mut self.many {
            return set.insert(key);
        }
        if self.few[..self.n]
            .iter()
            .any(|k| k.as_deref() == Some(&*key))
        {
            return false;
        }
        if self.n == self.few.len() {
            let mut set: foldhash::HashSet<_> =
                self.few.iter_mut().filter_map(Option::take).collect();
            set.insert(key);
            self.many = Some(set);
        } else {
            self.few[self.n] = Some(key);
            self.n += 1;
        }
        true
    }
}

/// Deepest nesting of arrays/objects in a built value (a scalar is 0), without recursion:
/// a value built through the API may be nested deeper than the stack allows.
pub(crate) fn value_depth(value: &serde_json::Value) -> usize {
    use serde_json::Value;
    let mut stack = vec![(value, 0usize)];
    let mut max = 0;
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(members) => Box::new(members.values()),
            _ => continue,
        };
        max = max.max(depth + 1);
        stack.extend(
            children
                .filter(|c| c.is_array() || c.is_object())
                .map(|c| (c, depth + 1)),
        );
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> JResult<()> {
        let mut s = Scanner::new(text.as_bytes(), 128);
        s.skip_value()?;
        s.end()
    }

    #[test]
    fn accepts_json() {
        for ok in [
            "{}",
            "[]",
            " {\"a\": [1, -2, 3.5e-3, true, false, null, \"x\\u00e9\\ud83d\\ude00\\n\"]} ",
            "-0",
            "0.0",
            "1E+2",
            "\"\\/\\b\\f\\r\\t\\\"\\\\\"",
            "12345678901234567890123",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_what_is_not_strict_json() {
        for bad in [
            "",
            "{",
            "[1,]",
            "[,1]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{a:1}",
            "01",
            "1.",
            ".5",
            "1e",
            "-",
            "+1",
            "NaN",
            "Infinity",
            "1e400",
            "nul",
            "\"abc",
            "\"\\x\"",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\\ud800\\u0041\"",
            "\"a\u{1}\"",
            "[1] 2",
            "{\"a\":1,\"a\":2}",
            "{\"a\":1,\"\\u0061\":2}",
        ] {
            assert!(
                matches!(check(bad), Err(JsonError::Invalid { .. })),
                "{bad:?} was accepted"
            );
        }
        let mut s = Scanner::new(b"\"\xff\"", 128);
        assert!(s.string().is_err());
    }

    #[test]
    fn depth_is_bounded() {
        let nest = |n: usize| "[".repeat(n) + &"]".repeat(n);
        assert_eq!(check(&nest(128)), Ok(()));
        assert_eq!(check(&nest(129)), Err(JsonError::TooDeep));
    }

    #[test]
    fn value_depth_counts_containers() {
        let v: serde_json::Value =
            serde_json::from_str(r#"[1, {"a": [[]], "b": {}}, "[[[["]"#).unwrap();
        assert_eq!(value_depth(&v), 4);
        assert_eq!(value_depth(&serde_json::json!(3)), 0);
        let mut deep = serde_json::Value::Null;
        for _ in 0..100_000 {
            deep = serde_json::Value::Array(vec![deep]);
        }
        assert_eq!(value_depth(&deep), 100_000);
        std::mem::forget(deep); // serde_json's drop recurses
    }

    #[test]
    fn duplicate_members_in_large_objects() {
        let members: Vec<String> = (0..40).map(|i| format!("\"k{i}\": {i}")).collect();
        let text = format!("{{{}}}", members.join(","));
        assert_eq!(check(&text), Ok(()));
        let text = format!("{{{}, \"k3\": 0}}", members.join(","));
        assert!(check(&text).is_err());
    }

    #[test]
    fn integers() {
        let mut s = Scanner::new(
            b"[0, -0, 18446744073709551615, 18446744073709551616, 1.0, -1]",
            128,
        );
        s.begin_array().unwrap();
        let mut first = true;
        let mut got = Vec::new();
        while s.next_item(&mut first).unwrap() {
            match s.u64(&|| "x".into()) {
                Ok(v) => got.push(Ok(v)),
                Err(_) => {
                    s.skip_value().unwrap();
                    got.push(Err(()));
                }
            }
        }
        assert_eq!(
            got,
            vec![Ok(0), Ok(0), Ok(u64::MAX), Ok(u64::MAX), Err(()), Err(())]
        );
    }

    /// The scanner agrees with serde_json on damaged JSON (serde_json lets a repeated
    /// member name pass — "last one wins" — which the scanner refuses on purpose).
    #[test]
    fn agrees_with_serde_json_on_damaged_text() {
        use proptest::prelude::*;
        let samples = [
            r#"{"tensors":[{"name":"a\u00e9/b","dtype":"F32","shape":[2,3],"chunks":[[64,24,123,0]]}],"tree":{"dict":[["a",{"tensor":"a/b"}]]},"metadata":{"lr":1.5e-3,"ok":true,"n":null,"s":"x\ny"}}"#,
            r#"[1, -0.5, 2E10, "\ud83d\ude00", {"k": [[], {}]}, false]"#,
        ];
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(4000));
        let edit = (
            0usize..2,
            proptest::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<u8>()), 1..4),
        );
        runner
            .run(&edit, |(which, edits)| {
                let mut text = samples[which].as_bytes().to_vec();
                for (at, op, byte) in edits {
                    let i = at.index(text.len().max(1)).min(text.len());
                    let byte = b"{}[]\",:\\-.0123456789eEtfnu \xff\x01"[byte as usize % 24];
                    match op {
                        0 if i < text.len() => text[i] = byte,
                        1 => text.insert(i, byte),
                        2 if i < text.len() => drop(text.remove(i)),
                        _ => text.truncate(i),
                    }
                }
                let ours = {
                    let mut s = Scanner::new(&text, 128);
                    s.skip_value().and_then(|()| s.end())
                };
                let theirs = serde_json::from_slice::<serde_json::Value>(&text);
                match (&ours, &theirs) {
                    (Err(JsonError::Invalid { detail, .. }), Ok(_))
                        if detail.contains("two members") => {}
                    _ => prop_assert_eq!(
                        ours.is_ok(),
                        theirs.is_ok(),
                        "{:?}: ours {:?}, serde_json {:?}",
                        String::from_utf8_lossy(&text),
                        ours,
                        theirs.as_ref().err()
                    ),
                }
                Ok(())
            })
            .unwrap();
    }
}
