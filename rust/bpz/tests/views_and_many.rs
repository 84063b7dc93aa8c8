//! The reader's one-lookup API: a `View` shares the archive's map (and outlives the
//! reader), positions replace second name lookups, and the many-tensor reads into the
//! core's buffers give what `read` gives.

use bpz::{Backend, Compression, DType, Reader, RowsRead, TensorOptions, Writer, WriterOptions};

fn archive(dir: &std::path::Path) -> (std::path::PathBuf, Vec<Vec<u8>>) {
    let path = dir.join("a.bpz");
    let opts = WriterOptions {
        sync: false,
        compression: Compression::None,
        ..WriterOptions::default()
    };
    let mut w = Writer::create(&path, opts).unwrap();
    let mut data = Vec::new();
    for i in 0..5u32 {
        let bytes: Vec<u8> = (0..1000 * i)
            .flat_map(|v| (v as f32).to_le_bytes())
            .collect();
        let zstd = TensorOptions {
            compression: Some(Compression::Zstd),
            ..Default::default()
        };
        let opts = if i % 2 == 1 {
            zstd
        } else {
            TensorOptions::default()
        };
        w.add_tensor_with(
            &format!("t{i}"),
            DType::F32,
            &[u64::from(1000 * i)],
            &bytes,
            &opts,
        )
        .unwrap();
        data.push(bytes);
    }
    // Larger than the huge-page threshold of `Zeroed`, so both kinds of buffer are read into.
    let big: Vec<u8> = (0..(5u32 << 20)).map(|v| (v % 251) as u8).collect();
    w.add_tensor("big", DType::U8, &[big.len() as u64], &big)
        .unwrap();
    data.push(big);
    w.finish().unwrap();
    (path, data)
}

#[test]
fn a_view_shares_the_map_and_outlives_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let (path, data) = archive(dir.path());
    let r = Reader::open(&path).unwrap();
    let i = r.position("t2").unwrap();
    assert_eq!(r.tensors().unwrap()[i].name, "t2");
    let view = r.view_at(i).unwrap();
    let map = view
        .map()
        .expect("a mapped archive's view is in its map")
        .clone();
    assert!(std::sync::Arc::ptr_eq(&map, r.mapping().unwrap()));
    assert_eq!(
        view.range().start as u64,
        r.tensors().unwrap()[i].raw_range().unwrap().start
    );
    assert_eq!(&map[view.range()], &data[2][..]);
    drop(r);
    assert_eq!(&view[..], &data[2][..], "the view keeps the map alive");

    // Compressed tensors, the pread backend and bad positions are refused, each by kind.
    let r = Reader::open(&path).unwrap();
    assert_eq!(r.view("t1").unwrap_err().kind(), "not_zero_copy");
    assert_eq!(r.position("nope").unwrap_err().kind(), "tensor_not_found");
    let e = r.view_at(99).unwrap_err();
    assert_eq!(e.kind(), "invalid_argument");
    assert!(e.to_string().contains("no tensor 99"), "{e}");
    let p = Reader::open_with(&path, Backend::Pread).unwrap();
    assert_eq!(p.view("t2").unwrap_err().kind(), "not_zero_copy");

    // An archive in memory: the view shares its bytes.
    let bytes = std::fs::read(&path).unwrap();
    let m = Reader::from_bytes(bytes).unwrap();
    let view = m.view("big").unwrap();
    assert!(view.map().is_none());
    drop(m);
    assert_eq!(&view[..], &data[5][..]);
}

#[test]
fn many_reads_into_the_cores_buffers_match_read() {
    let dir = tempfile::tempdir().unwrap();
    let (path, data) = archive(dir.path());
    for backend in [Backend::Mmap, Backend::Pread] {
        for parallel in [true, false] {
            let mut r = Reader::open_with(&path, backend).unwrap();
            r.set_parallel(parallel);
            let all = r.read_all_zeroed().unwrap();
            assert_eq!(all.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), data);
            assert_eq!(r.read_all().unwrap(), data);
            let some = r.read_many_zeroed_at(&[5, 0, 3, 3]).unwrap();
            assert_eq!(
                some.iter().map(|b| b.to_vec()).collect::<Vec<_>>(),
                [
                    data[5].clone(),
                    data[0].clone(),
                    data[3].clone(),
                    data[3].clone()
                ]
            );
            assert!(r.read_many_zeroed_at(&[]).unwrap().is_empty());
            assert_eq!(
                r.read_many_zeroed_at(&[0, 6]).unwrap_err().kind(),
                "invalid_argument"
            );

            let mut a = vec![0u8; data[3].len()];
            let mut b = vec![0u8; data[4].len()];
            r.read_many_into_at(vec![(3, &mut a[..]), (4, &mut b[..])])
                .unwrap();
            assert_eq!((&a, &b), (&data[3], &data[4]));
            let mut short = vec![0u8; data[3].len() - 1];
            assert_eq!(
                r.read_many_into_at(vec![(3, &mut short[..])])
                    .unwrap_err()
                    .kind(),
                "invalid_argument"
            );
        }
    }
}

/// Many row reads in one call (raw and compressed tensors, several reads of one tensor,
/// reads that cut chunks, empty ones), from the map and from a file source, serial and
/// parallel, give the bytes `read_rows` gives; a bad read fails the call before any byte
/// is read and names what is wrong.
#[test]
fn many_row_reads_give_what_read_rows_gives() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.bpz");
    let opts = WriterOptions {
        sync: false,
        chunk_bytes: 4096,
        ..WriterOptions::default()
    };
    let mut w = Writer::create(&path, opts).unwrap();
    let raw: Vec<u8> = (0..64 * 100).map(|v| (v % 253) as u8).collect();
    let packed: Vec<u8> = (0..(64 * 300u32))
        .flat_map(|v| (v / 7).to_le_bytes())
        .collect();
    w.add_tensor_with(
        "raw",
        DType::U8,
        &[100, 64],
        &raw,
        &TensorOptions {
            compression: Some(Compression::None),
            ..Default::default()
        },
    )
    .unwrap();
    w.add_tensor_with(
        "packed",
        DType::U32,
        &[300, 64],
        &packed,
        &TensorOptions {
            compression: Some(Compression::Zstd),
            ..Default::default()
        },
    )
    .unwrap();
    w.finish().unwrap();
    let wanted = [
        ("raw", 0..100),
        ("raw", 3..17),
        ("packed", 0..300),
        ("packed", 15..16),
        ("packed", 250..300),
        ("packed", 7..7),
    ];
    for backend in [Backend::Mmap, Backend::Pread] {
        for parallel in [false, true] {
            let mut r = Reader::open_with(&path, backend).unwrap();
            r.set_parallel(parallel);
            let mut outs: Vec<Vec<u8>> = wanted
                .iter()
                .map(|(n, rows)| vec![0xAA; r.read_rows(n, rows.clone()).unwrap().len()])
                .collect();
            let reads = wanted
                .iter()
                .zip(outs.iter_mut())
                .map(|((name, rows), out)| RowsRead {
                    name,
                    rows: rows.clone(),
                    out,
                })
                .collect();
            r.read_rows_many_into(reads).unwrap();
            for ((name, rows), out) in wanted.iter().zip(&outs) {
                assert_eq!(
                    *out,
                    r.read_rows(name, rows.clone()).unwrap(),
                    "{name} {rows:?}"
                );
            }

            let mut good = vec![0u8; 64];
            let mut short = vec![0u8; 10];
            let reads = vec![
                RowsRead {
                    name: "raw",
                    rows: 0..1,
                    out: &mut good,
                },
                RowsRead {
                    name: "raw",
                    rows: 0..1,
                    out: &mut short,
                },
            ];
            let e = r.read_rows_many_into(reads).unwrap_err();
            assert_eq!(e.kind(), "invalid_argument", "{e}");
            assert!(
                good.iter().all(|&b| b == 0),
                "nothing read before every read is checked"
            );
            for (name, rows, kind) in [
                ("nope", 0..1, "tensor_not_found"),
                ("raw", 99..101, "invalid_argument"),
            ] {
                let mut out = vec![0u8; 128];
                let reads = vec![RowsRead {
                    name,
                    rows,
                    out: &mut out,
                }];
                assert_eq!(r.read_rows_many_into(reads).unwrap_err().kind(), kind);
            }
        }
    }
}
