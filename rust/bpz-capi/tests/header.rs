//! `include/bpz.h` is written by hand: these tests read it and fail when it
//! drifts from the Rust side — a constant's value, the fields of
//! `bpz_tensor_info` or `bpz_version_info`, the set of functions — or when the error kinds drift
//! from spec/FORMAT.md §10.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The text without `/* */` and `//` comments (the header has no string literals).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let block = rest.find("/*");
        let line = rest.find("//");
        match (block, line) {
            (Some(b), l) if l.map_or(true, |l| b < l) => {
                out.push_str(&rest[..b]);
                let end = rest[b + 2..].find("*/").expect("unterminated comment") + b + 4;
                out.push(' ');
                rest = &rest[end..];
            }
            (_, Some(l)) => {
                out.push_str(&rest[..l]);
                rest = rest[l..].find('\n').map_or("", |n| &rest[l + n..]);
            }
            _ => {
                out.push_str(rest);
                return out;
            }
        }
    }
}

fn header() -> String {
    strip_comments(&read("include/bpz.h"))
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// `NAME = value` entries of the header's enums.
fn header_constants(h: &str) -> BTreeMap<String, i32> {
    let mut found = BTreeMap::new();
    for item in h.split([',', '{', '}']) {
        let Some((name, value)) = item.split_once('=') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.starts_with("BPZ_") && name.chars().all(is_ident) {
            let value: i32 = value
                .parse()
                .unwrap_or_else(|_| panic!("{name} = {value:?}"));
            assert!(
                found.insert(name.to_owned(), value).is_none(),
                "{name} defined twice"
            );
        }
    }
    found
}

#[test]
fn header_constants_match_the_rust_constants() {
    let h = header_constants(&header());
    let rust: BTreeMap<String, i32> =
        [bpz::STATUS_CODES, bpz::BACKENDS, bpz::STORAGES, bpz::DTYPES]
            .concat()
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v))
            .collect();
    assert_eq!(h, rust);
}

/// Whitespace-normalised C type: `const char*` and `const char *` alike.
fn c_type(t: &str) -> String {
    t.replace('*', " * ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// `(C type, field name)` of the fields of `struct NAME { ... };` in the header.
fn header_struct(h: &str, name: &str) -> Vec<(String, String)> {
    let open = format!("struct {name} {{");
    let start = h.find(&open).unwrap_or_else(|| panic!("struct {name}")) + open.len();
    let end = start
        + h[start..]
            .find("};")
            .unwrap_or_else(|| panic!("end of struct {name}"));
    h[start..end]
        .split(';')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|decl| {
            let name_at = decl
                .rfind(|c: char| !is_ident(c))
                .expect("a type and a name")
                + 1;
            (c_type(&decl[..name_at]), decl[name_at..].to_owned())
        })
        .collect()
}

#[test]
fn header_structs_match_the_rust_structs() {
    let h = header();
    for (name, fields) in [
        ("bpz_tensor_info", bpz::bpz_tensor_info::C_FIELDS),
        ("bpz_version_info", bpz::bpz_version_info::C_FIELDS),
    ] {
        let rust: Vec<(String, String)> = fields
            .iter()
            .map(|(t, n)| (c_type(t), n.to_string()))
            .collect();
        assert_eq!(header_struct(&h, name), rust, "struct {name}");
    }
}

/// Names of the functions a text declares or defines with the C ABI.
fn header_functions(h: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (at, _) in h.match_indices('(') {
        let before = h[..at].trim_end();
        let start = before.rfind(|c: char| !is_ident(c)).map_or(0, |i| i + 1);
        let name = &before[start..];
        // A declaration starts with its return type, not inside an argument list.
        let prev = before[..start].trim_end();
        if name.starts_with("bpz_")
            && (prev.ends_with(|c: char| is_ident(c)) || prev.ends_with('*'))
        {
            names.insert(name.to_owned());
        }
    }
    names
}

#[test]
fn header_declares_exactly_the_exported_functions() {
    let h = header_functions(&header());
    let src = read("rust/bpz-capi/src/lib.rs");
    let rust: BTreeSet<String> = src
        .match_indices("extern \"C\" fn ")
        .map(|(at, m)| {
            let rest = &src[at + m.len()..];
            rest[..rest.find('(').unwrap()].to_owned()
        })
        .collect();
    assert!(rust.len() >= 15, "{rust:?}");
    assert_eq!(h, rust);
    // Every exported function is #[no_mangle].
    assert_eq!(src.matches("#[no_mangle]\npub ").count(), rust.len());
}

#[test]
fn status_codes_cover_exactly_the_error_kinds_of_the_spec() {
    let spec = read("spec/FORMAT.md");
    let start = spec.find("## 10. ").expect("section 10");
    let end = start + spec[start..].find("## 11. ").expect("section 11");
    let section = &spec[start..end];
    let mut kinds = BTreeSet::new();
    // "→ `kind`", "(`kind` otherwise)", and the list after "Other kinds:".
    let mut grab = |text: &str| {
        if let Some(name) = text.strip_prefix('`').and_then(|t| t.split('`').next()) {
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                kinds.insert(name.to_owned());
            }
        }
    };
    for (at, m) in section.match_indices("→ ") {
        grab(&section[at + m.len()..]);
    }
    for (at, _) in section.match_indices(" otherwise)") {
        let open = section[..at].rfind('(').unwrap();
        grab(&section[open + 1..at]);
    }
    let other = &section[section.find("Other kinds:").expect("Other kinds:")..];
    let other = &other[..other.find("\n\n").unwrap_or(other.len())];
    for (i, piece) in other.split('`').enumerate() {
        if i % 2 == 1 {
            grab(&format!("`{piece}`"));
        }
    }
    let ours: BTreeSet<String> = bpz::KIND_NAMES
        .iter()
        .filter(|(code, _)| {
            ![
                bpz::BPZ_OK,
                bpz::BPZ_ERR_NULL_ARGUMENT,
                bpz::BPZ_ERR_PANIC,
                bpz::BPZ_ERR_UNKNOWN,
            ]
            .contains(code)
        })
        .map(|(_, name)| name.trim_end_matches('\0').to_owned())
        .collect();
    assert_eq!(kinds, ours);
    for kind in &kinds {
        assert_ne!(bpz::code_of_kind(kind), bpz::BPZ_ERR_UNKNOWN, "{kind}");
    }
}

#[test]
fn the_comment_stripper_works() {
    assert_eq!(strip_comments("a /* b */ c // d\ne"), "a   c \ne");
    assert_eq!(
        header_functions(&strip_comments(
            "int bpz_f(int x);\n/* bpz_g() */ void *bpz_h(void (*cb)(void));"
        )),
        ["bpz_f", "bpz_h"].map(String::from).into()
    );
}
