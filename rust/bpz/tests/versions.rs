//! Versions of a 1.1 archive (spec §16.4, §16.7), read from files made by a small writer
//! of this test (independent of the crate's: raw tensors, chunks equal to one of the
//! previous version referenced, not written), so the reader is checked against the spec
//! rather than against the writer it shares code with.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bpz::binindex::{
    content_hash, index_padding, ChunkRecord, IndexHead, SectionEntry, SectionKind, TensorRecord,
    VersionRecord, CHUNK_RECORD_LEN, REQUIRED_BINARY_INDEX,
};
use bpz::{DType, Reader, Superblock, Trailer, VersionSelector};
use proptest::prelude::*;

/// A tensor of a version: name, dtype, shape, bytes.
type Spec = (String, DType, Vec<u64>, Vec<u8>);

/// A file being built version by version.
struct Chain {
    file: Vec<u8>,
    records: Vec<VersionRecord>,
    /// The latest version's chunks by content: (hash, length) -> offset.
    chunks: HashMap<([u8; 16], u64), u64>,
    /// What each version holds, for the checks.
    versions: Vec<(u64, Vec<Spec>, String)>,
}

const ALIGN: u64 = 64;

impl Chain {
    fn new() -> Chain {
        let sb = Superblock {
            version: bpz::Version { major: 1, minor: 1 },
            required_features: REQUIRED_BINARY_INDEX,
            optional_features: 0,
            alignment: ALIGN as u32,
        };
        Chain {
            file: sb.encode().to_vec(),
            records: Vec::new(),
            chunks: HashMap::new(),
            versions: Vec::new(),
        }
    }

    fn end(&self) -> u64 {
        self.file.len() as u64
    }

    /// Appends version `number` holding `tensors` (in saving order), as §16.6 says.
    fn append(&mut self, number: u64, tensors: &[Spec], metadata: &str) {
        let data_start = self.end();
        let time_ns = 1_000 + number;
        let mut chunks_now = HashMap::new();
        // (record without crcs, name, shape, chunk record)
        let mut entries = Vec::new();
        for (position, (name, dtype, shape, data)) in tensors.iter().enumerate() {
            let n: u64 = shape.iter().product();
            let chunk = if data.is_empty() {
                None
            } else {
                let hash = content_hash(data);
                let key = (hash, data.len() as u64);
                let offset = match self.chunks.get(&key) {
                    Some(&at) => at,
                    None => {
                        let at = self.end().next_multiple_of(ALIGN);
                        self.file.resize(at as usize, 0);
                        self.file.extend_from_slice(data);
                        at
                    }
                };
                chunks_now.insert(key, offset);
                Some(ChunkRecord {
                    offset,
                    stored_len: data.len() as u64,
                    crc32c: crc32c::crc32c(data),
                    encoded: 0,
                    reserved: [0; 3],
                    hash,
                })
            };
            let record = TensorRecord {
                name_offset: 0,
                name_length: name.len() as u32,
                position: position as u32,
                shape_offset: 0,
                chunk_elems: n.max(1),
                first_chunk: 0,
                chunk_count: chunk.is_some() as u32,
                dtype: dtype.code(),
                storage: 0,
                filter: 0,
                rank: shape.len() as u8,
                chunks_crc: 0,
                reserved: [0; 8],
                record_crc: 0,
            };
            entries.push((record, name.clone(), shape.clone(), chunk));
        }
        entries.sort_by(|a, b| a.1.as_bytes().cmp(b.1.as_bytes()));
        let (mut tensors_s, mut names, mut shapes, mut chunks_s) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (mut r, name, shape, chunk) in entries {
            r.name_offset = names.len() as u64;
            names.extend_from_slice(name.as_bytes());
            r.shape_offset = (shapes.len() / 8) as u64;
            for d in &shape {
                shapes.extend_from_slice(&d.to_le_bytes());
            }
            r.first_chunk = (chunks_s.len() / CHUNK_RECORD_LEN) as u64;
            let table: Vec<u8> = chunk.iter().flat_map(|c| c.encode()).collect();
            r.chunks_crc = crc32c::crc32c(&table);
            chunks_s.extend_from_slice(&table);
            tensors_s.extend_from_slice(&r.seal(name.as_bytes(), &shape));
        }
        let versions_s: Vec<u8> = self.records.iter().flat_map(|r| r.encode()).collect();
        let parts: [(SectionKind, &[u8]); 7] = [
            (SectionKind::Versions, &versions_s),
            (SectionKind::Tensors, &tensors_s),
            (SectionKind::Names, &names),
            (SectionKind::Shapes, &shapes),
            (SectionKind::Chunks, &chunks_s),
            (SectionKind::Tree, b"null"),
            (SectionKind::Metadata, metadata.as_bytes()),
        ];
        let mut at = IndexHead::len_for(parts.len()) as u64;
        let sections = parts
            .iter()
            .map(|(kind, bytes)| {
                let s = SectionEntry {
                    kind: *kind,
                    offset: at,
                    length: bytes.len() as u64,
                    crc: crc32c::crc32c(bytes),
                };
                at += bytes.len() as u64;
                s
            })
            .collect();
        let head = IndexHead {
            version: number,
            time_ns,
            data_start,
            tensor_count: tensors.len() as u64,
            chunk_count: (chunks_s.len() / CHUNK_RECORD_LEN) as u64,
            superblock: self.file[..64].try_into().unwrap(),
            sections,
        }
        .encode();
        let index_offset = self.end();
        let index_len = at + index_padding(index_offset, at);
        let head_crc = crc32c::crc32c(&head);
        self.file.extend_from_slice(&head);
        for (_, bytes) in parts {
            self.file.extend_from_slice(bytes);
        }
        self.file.resize((index_offset + index_len) as usize, 0);
        let trailer = Trailer {
            index_offset,
            index_len,
            index_crc32c: head_crc,
        };
        self.file.extend_from_slice(&trailer.encode());
        assert_eq!(self.end() % 64, 0);
        self.records.push(VersionRecord {
            version: number,
            time_ns,
            data_start,
            index_offset,
            index_length: index_len,
            index_crc: head_crc,
            reserved: 0,
        });
        self.chunks = chunks_now;
        self.versions
            .push((number, tensors.to_vec(), metadata.to_owned()));
    }
}

fn open(file: &[u8], which: VersionSelector) -> bpz::Result<Reader> {
    Reader::from_source_version(Arc::new(file.to_vec()), "chain".into(), which)
}

/// Every version of `chain` reads back exactly, by number and counted from the latest.
fn check_all(chain: &Chain, file: &[u8]) {
    let latest = open(file, VersionSelector::Latest).unwrap();
    let n = chain.versions.len();
    assert_eq!(latest.versions().len(), n);
    for (k, (number, tensors, metadata)) in chain.versions.iter().enumerate() {
        let back = k as i64 - n as i64;
        for which in [
            VersionSelector::Number(*number),
            VersionSelector::FromLatest(back),
        ] {
            let r = open(file, which).unwrap();
            assert_eq!(r.version_number(), *number);
            assert_eq!(r.metadata_json().unwrap(), metadata);
            let listed: Vec<&str> = r
                .tensors()
                .unwrap()
                .iter()
                .map(|t| t.name.as_str())
                .collect();
            let want: Vec<&str> = tensors.iter().map(|t| t.0.as_str()).collect();
            assert_eq!(listed, want, "version {number}");
            for (name, dtype, shape, data) in tensors {
                let t = r.tensor(name).unwrap();
                assert_eq!((t.dtype, &t.shape), (*dtype, shape));
                assert_eq!(&r.read(name).unwrap(), data, "version {number}: {name}");
            }
            assert_eq!(r.version_info(), &latest.versions()[k]);
        }
        let same = latest.at_version(VersionSelector::Number(*number)).unwrap();
        assert_eq!(same.tensor_count(), tensors.len());
    }
    let report = latest.verify().unwrap();
    assert_eq!(report.versions, n);
}

fn t(name: &str, data: &[u8]) -> Spec {
    (
        name.into(),
        DType::U8,
        vec![data.len() as u64],
        data.to_vec(),
    )
}

fn three_versions() -> Chain {
    let mut c = Chain::new();
    let big: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    c.append(
        1,
        &[t("w", &big), t("b", &[1, 2, 3]), t("gone", &[9])],
        r#"{"step":1}"#,
    );
    c.append(
        2,
        &[t("w", &big), t("b", &[1, 2, 4]), t("new", &[5; 100])],
        r#"{"step":2}"#,
    );
    c.append(
        3,
        &[
            t("new", &[5; 100]),
            t("w", &big),
            t("b", &[1, 2, 4]),
            t("e", &[]),
        ],
        "null",
    );
    c
}

#[test]
fn every_version_reads_back_and_unchanged_chunks_are_stored_once() {
    let c = three_versions();
    check_all(&c, &c.file);
    let r = open(&c.file, VersionSelector::Latest).unwrap();
    let v: Vec<u64> = r.versions().iter().map(|v| v.number).collect();
    assert_eq!(v, [1, 2, 3]);
    assert_eq!(r.versions()[0].data_start, 64);
    assert_eq!(r.versions()[1].data_start, r.versions()[0].end());
    // "w" is the same stored chunk in every version.
    let w3 = r.tensor("w").unwrap().chunks[0];
    let r1 = r.at_version(VersionSelector::Number(1)).unwrap();
    assert_eq!(r1.tensor("w").unwrap().chunks[0], w3);
    assert!(w3.offset < r.versions()[1].data_start);
    // Version 3 added only its index (everything else is shared).
    let v3 = r.versions()[2];
    assert_eq!(v3.bytes_added, v3.end() - v3.data_start);
    assert_eq!(v3.data_start, v3.index_offset);
    assert_eq!(r.version_metadata_json(1).unwrap(), r#"{"step":1}"#);
    let d = bpz::diff(&r1, &r).unwrap();
    assert_eq!(d.added, ["e", "new"]);
    assert_eq!(d.removed, ["gone"]);
    assert_eq!(d.changed, ["b"]);
    assert_eq!(d.unchanged, ["w"]);
    assert_eq!(d.compared_by_reading, 0);
    let e = open(&c.file, VersionSelector::Number(4)).unwrap_err();
    assert_eq!(e.kind(), "invalid_argument");
    assert!(e.to_string().contains("versions 1, 2, 3"), "{e}");
}

/// §16.7: a file cut anywhere in its last append, or with any bytes after its end, opens
/// its last committed version and says it recovered.
#[test]
fn a_torn_append_of_any_length_reads_back_the_previous_version() {
    let c = three_versions();
    let previous_end = c.records[1].index_offset + c.records[1].index_length + 32;
    let full = c.file.len() as u64;
    let mut cuts: Vec<u64> = (previous_end..full).step_by(64).collect();
    cuts.extend((previous_end + 1..full).step_by(29));
    let two = Chain {
        versions: c.versions[..2].to_vec(),
        ..Chain::new()
    };
    for cut in cuts {
        let file = &c.file[..cut as usize];
        let r = open(file, VersionSelector::Latest).unwrap();
        assert_eq!(r.version_number(), 2, "cut at {cut}");
        match r.recovered() {
            None => assert_eq!(cut, previous_end),
            Some(rec) => {
                assert_eq!(rec.committed_end, previous_end, "cut at {cut}");
                assert_eq!(rec.ignored_bytes, cut - previous_end);
            }
        }
        check_all(&two, file);
        assert_eq!(
            open(file, VersionSelector::Number(3)).unwrap_err().kind(),
            "invalid_argument"
        );
    }
    // Garbage after a complete file: the latest version, recovered.
    let mut file = c.file.clone();
    file.extend(std::iter::repeat(0xA5).take(1000));
    let r = open(&file, VersionSelector::Latest).unwrap();
    assert_eq!(r.version_number(), 3);
    assert_eq!(r.recovered().unwrap().ignored_bytes, 1000);
    // A file of one version cut short has nothing to recover.
    let one_end = c.records[0].index_offset + c.records[0].index_length + 32;
    for cut in (64..one_end).step_by(64) {
        let e = open(&c.file[..cut as usize], VersionSelector::Latest).unwrap_err();
        assert_eq!(e.kind(), "truncated", "cut at {cut}: {e}");
    }
}

/// A version chain that breaks §16.4 is an invalid index, on open; an older version's
/// index that disagrees with the latest's record of it, when that version is opened or
/// verified.
#[test]
fn a_broken_chain_is_an_invalid_index() {
    let c = three_versions();
    // Re-seal version 3's versions section and head with a record changed.
    let rewrite = |change: &dyn Fn(&mut Vec<VersionRecord>)| -> Vec<u8> {
        let mut records = c.records[..2].to_vec();
        change(&mut records);
        let mut file = c.file.clone();
        let r3 = c.records[2];
        let at = r3.index_offset as usize;
        let mut head = IndexHead::decode(&file[at..at + r3.index_length as usize]).unwrap();
        let versions: Vec<u8> = records.iter().flat_map(|r| r.encode()).collect();
        let s = head
            .sections
            .iter_mut()
            .find(|s| s.kind == SectionKind::Versions)
            .unwrap();
        s.crc = crc32c::crc32c(&versions);
        let start = at + s.offset as usize;
        file[start..start + versions.len()].copy_from_slice(&versions);
        let bytes = head.encode();
        file[at..at + bytes.len()].copy_from_slice(&bytes);
        let trailer = Trailer {
            index_offset: r3.index_offset,
            index_len: r3.index_length,
            index_crc32c: crc32c::crc32c(&bytes),
        };
        let end = file.len();
        file[end - 32..].copy_from_slice(&trailer.encode());
        file
    };
    type Change<'a> = &'a dyn Fn(&mut Vec<VersionRecord>);
    let cases: [(&str, Change); 5] = [
        ("points forward", &|r| r[1].index_offset += 64),
        ("overlaps", &|r| r[1].data_start -= 64),
        ("numbers not increasing", &|r| r[1].version = 1),
        ("first not at 64", &|r| r[0].data_start = 128),
        ("loops back", &|r| {
            r[1] = r[0];
            r[1].version = 2;
        }),
    ];
    for (what, change) in cases {
        let file = rewrite(change);
        let e = open(&file, VersionSelector::Latest).unwrap_err();
        assert_eq!(e.kind(), "invalid_index", "{what}: {e}");
    }
    // Unchanged records re-sealed: still fine (the rewrite itself is sound).
    let file = rewrite(&|_| {});
    check_all(&c, &file);
    // An older version whose own record disagrees with its index.
    let file = rewrite(&|r| r[0].time_ns += 1);
    assert!(open(&file, VersionSelector::Latest).is_ok());
    let e = open(&file, VersionSelector::Number(1)).unwrap_err();
    assert_eq!(e.kind(), "invalid_index", "{e}");
    let e = open(&file, VersionSelector::Latest)
        .unwrap()
        .verify()
        .unwrap_err();
    assert_eq!(e.kind(), "invalid_index", "{e}");
}

/// Chains of random versions: tensors kept, changed, added and removed at each step.
fn chain_strategy() -> impl Strategy<Value = Vec<BTreeMap<String, Vec<u8>>>> {
    let step = proptest::collection::vec(
        (
            0usize..12,
            0u8..4,
            proptest::collection::vec(any::<u8>(), 0..300),
        ),
        0..12,
    );
    proptest::collection::vec(step, 1..6).prop_map(|steps| {
        let mut state: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut out = Vec::new();
        for edits in steps {
            for (k, op, data) in edits {
                let name = format!("t{k}");
                match op {
                    0 => {
                        state.remove(&name);
                    }
                    _ => {
                        state.insert(name, data);
                    }
                }
            }
            out.push(state.clone());
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn every_version_of_a_random_chain_reads_back(states in chain_strategy()) {
        let mut c = Chain::new();
        for (k, state) in states.iter().enumerate() {
            // Saving order: by length then name, so it differs from name order.
            let mut tensors: Vec<Spec> = state.iter().map(|(n, d)| t(n, d)).collect();
            tensors.sort_by_key(|t| (t.3.len(), t.0.clone()));
            c.append(k as u64 + 1, &tensors, &format!("{{\"step\":{k}}}"));
        }
        check_all(&c, &c.file);
        // Diff of consecutive versions, from the hashes alone, as the states say.
        let r = open(&c.file, VersionSelector::Latest).unwrap();
        for k in 1..states.len() {
            let a = r.at_version(VersionSelector::Number(k as u64)).unwrap();
            let b = r.at_version(VersionSelector::Number(k as u64 + 1)).unwrap();
            let d = bpz::diff(&a, &b).unwrap();
            let (old, new) = (&states[k - 1], &states[k]);
            let added: Vec<&String> = new.keys().filter(|n| !old.contains_key(*n)).collect();
            let removed: Vec<&String> = old.keys().filter(|n| !new.contains_key(*n)).collect();
            let changed: Vec<&String> = new
                .iter()
                .filter(|(n, v)| old.get(*n).is_some_and(|o| o != *v))
                .map(|(n, _)| n)
                .collect();
            prop_assert_eq!(d.added.iter().collect::<Vec<_>>(), added);
            prop_assert_eq!(d.removed.iter().collect::<Vec<_>>(), removed);
            prop_assert_eq!(d.changed.iter().collect::<Vec<_>>(), changed);
            prop_assert_eq!(d.compared_by_reading, 0);
        }
    }
}

/// §16.6: a reader that opened version k keeps reading it while versions are appended, and
/// an open made during an append sees the old latest or the new one, never a mix. The
/// appends here are written in three pieces (chunks, index, trailer), with readers opening
/// the file between them.
#[test]
fn readers_see_whole_versions_while_another_thread_appends() {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("growing.bpz");
    let data =
        |k: u64, n: usize| -> Vec<u8> { (0..n).map(|i| (i as u64 * 31 + k) as u8).collect() };
    let mut c = Chain::new();
    let versions = 12u64;
    let mut ends = Vec::new();
    for k in 1..=versions {
        // "fixed" never changes (shared), "state" changes every time, "k{k}" is new.
        let tensors = vec![
            t("fixed", &data(0, 5000)),
            t("state", &data(k, 3000 + k as usize)),
            t(&format!("k{k}"), &data(k * 7, 100)),
        ];
        c.append(k, &tensors, &format!("{{\"step\":{k}}}"));
        ends.push((c.records[k as usize - 1], c.end()));
    }
    let first_end = ends[0].1 as usize;
    std::fs::write(&path, &c.file[..first_end]).unwrap();
    let expected = |r: &Reader| {
        let (_, tensors, metadata) = &c.versions[r.version_number() as usize - 1];
        assert_eq!(r.metadata_json().unwrap(), metadata);
        for (name, _, _, bytes) in tensors {
            assert_eq!(&r.read(name).unwrap(), bytes);
            if let Ok(v) = r.view(name) {
                assert_eq!(&v[..], &bytes[..]);
            }
        }
        assert_eq!(r.tensors().unwrap().len(), tensors.len());
    };
    let done = AtomicBool::new(false);
    let first = Reader::open(&path).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            let mut at = first_end;
            for (record, end) in &ends[1..] {
                let end = *end as usize;
                for piece_end in [record.index_offset as usize, end - 32, end] {
                    f.write_all(&c.file[at..piece_end]).unwrap();
                    f.flush().unwrap();
                    at = piece_end;
                    // Between the pieces, deterministically: the previous version,
                    // recovered, until the trailer is written.
                    let r = Reader::open_with(&path, bpz::Backend::Pread).unwrap();
                    let committed = piece_end == end;
                    assert_eq!(r.version_number(), record.version - !committed as u64);
                    assert_eq!(r.recovered().is_some(), !committed);
                    expected(&r);
                    std::thread::sleep(std::time::Duration::from_millis(3));
                }
            }
            done.store(true, Ordering::Release);
        });
        for backend in [bpz::Backend::Mmap, bpz::Backend::Pread] {
            let (path, first, done, expected) = (&path, &first, &done, &expected);
            s.spawn(move || {
                let mut seen = Vec::new();
                while !done.load(Ordering::Acquire) {
                    let r = Reader::open_with(path, backend).unwrap();
                    expected(&r);
                    r.verify().unwrap();
                    seen.push(r.version_number());
                    // The reader opened before any append still reads version 1.
                    assert_eq!(first.version_number(), 1);
                    expected(first);
                }
                assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
            });
        }
    });
    let r = Reader::open(&path).unwrap();
    assert_eq!(r.version_number(), versions);
    assert!(r.recovered().is_none());
    check_all(&c, &std::fs::read(&path).unwrap());
    first.verify().unwrap();
}

/// Appends a version of `tensors` with the crate's writer (§16.6).
fn append_with_writer(path: &std::path::Path, step: u64, tensors: &[Spec]) -> bpz::Summary {
    let opts = bpz::WriterOptions {
        sync: false,
        time_ns: Some(step),
        compression: bpz::Compression::Zstd,
        chunk_bytes: 4096,
        ..Default::default()
    };
    let mut w = bpz::Writer::append(path, opts).unwrap();
    for (name, dtype, shape, data) in tensors {
        w.add_tensor(name, *dtype, shape, data).unwrap();
    }
    w.set_metadata(serde_json::json!({ "step": step }));
    w.finish().unwrap().0
}

/// The versions of the state of a run: "fixed" never changes, "state" every time.
fn run_state(step: u64) -> Vec<Spec> {
    let data =
        |k: u64, n: usize| -> Vec<u8> { (0..n).map(|i| ((i as u64 / 3) * 31 + k) as u8).collect() };
    vec![
        t("fixed", &data(0, 20_000)),
        t("state", &data(step, 9000)),
        t(&format!("only{}", step % 3), &data(step * 7, 500)),
    ]
}

/// Appends made by the crate's writer, cut at every 64-byte boundary of the last one:
/// the previous version opens, recovered, and reads back exactly.
#[test]
fn a_torn_append_of_the_crate_writer_reads_back_the_previous_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.bpz");
    for step in 1..=3 {
        append_with_writer(&path, step, &run_state(step));
    }
    let file = std::fs::read(&path).unwrap();
    let r = Reader::from_bytes(file.clone()).unwrap();
    assert_eq!(r.version_number(), 3);
    let previous_end = r.versions()[1].end() as usize;
    let check = |bytes: &[u8], want_recovered: bool| {
        let r = Reader::from_bytes(bytes.to_vec()).unwrap();
        assert_eq!(r.version_number(), 2);
        assert_eq!(r.recovered().is_some(), want_recovered);
        for (name, _, _, data) in run_state(2) {
            assert_eq!(r.read(&name).unwrap(), data);
        }
        assert_eq!(r.metadata().unwrap()["step"], 2);
        r.verify().unwrap();
    };
    check(&file[..previous_end], false);
    let mut cuts: Vec<usize> = (previous_end + 64..file.len()).step_by(64).collect();
    cuts.extend((previous_end + 1..file.len()).step_by(101));
    for cut in cuts {
        check(&file[..cut], true);
    }
}

/// §16.6 with the crate's writer: readers opening, reading and verifying while another
/// thread appends always get a whole version, and a reader opened at version 1 keeps
/// reading it.
#[test]
fn readers_see_whole_versions_while_the_writer_appends() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.bpz");
    append_with_writer(&path, 1, &run_state(1));
    let first = Reader::open(&path).unwrap();
    let steps = 15;
    let done = AtomicBool::new(false);
    let check = |r: &Reader| {
        let step = r.version_number();
        assert_eq!(r.metadata().unwrap()["step"], step);
        for (name, _, _, data) in run_state(step) {
            assert_eq!(r.read(&name).unwrap(), data, "version {step}: {name}");
        }
        assert_eq!(r.tensors().unwrap().len(), 3);
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            for step in 2..=steps {
                let summary = append_with_writer(&path, step, &run_state(step));
                assert_eq!(summary.version, step);
            }
            done.store(true, Ordering::Release);
        });
        for backend in [bpz::Backend::Mmap, bpz::Backend::Pread] {
            let (path, first, done, check) = (&path, &first, &done, &check);
            s.spawn(move || {
                let mut last = 0;
                while !done.load(Ordering::Acquire) {
                    let r = Reader::open_with(path, backend).unwrap();
                    assert!(r.version_number() >= last);
                    last = r.version_number();
                    check(&r);
                    r.verify().unwrap();
                    if let Ok(v) = first.view("fixed") {
                        assert_eq!(&v[..], &run_state(1)[0].3[..]);
                    }
                    check(first);
                }
            });
        }
    });
    let r = Reader::open(&path).unwrap();
    assert_eq!(r.versions().len(), steps as usize);
    for step in 1..=steps {
        check(&r.at_version(VersionSelector::Number(step)).unwrap());
    }
    r.verify().unwrap();
    first.verify().unwrap();
}
