//! bpz_open_url against a small HTTP server on 127.0.0.1 that answers range requests
//! (`bytes=a-b` and suffix `bytes=-n`) from an archive in memory, as nginx does; the
//! Python suite runs the same paths against real nginx and an S3 server.

use std::ffi::{c_char, c_void, CStr, CString};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::ptr::null;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bpz::*;
use bpz_core::{DType, Writer, WriterOptions};

fn message() -> String {
    unsafe { CStr::from_ptr(bpz_last_error_message()) }
        .to_str()
        .unwrap()
        .to_owned()
}

/// Serves `body` at `/a.bpz` (404 elsewhere); counts requests.
fn serve(body: Vec<u8>) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let (body, counted) = (Arc::new(body), count.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let (body, counted) = (body.clone(), counted.clone());
            std::thread::spawn(move || {
                let _ = answer(conn, &body, &counted);
            });
        }
    });
    (port, count)
}

fn answer(conn: TcpStream, body: &[u8], count: &AtomicUsize) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        count.fetch_add(1, Ordering::SeqCst);
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let mut range = None;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("range") {
                    range = v.trim().strip_prefix("bytes=").map(str::to_owned);
                }
            }
        }
        if target != "/a.bpz" {
            out.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")?;
            continue;
        }
        let len = body.len() as u64;
        let (start, end) = match range.as_deref().and_then(|r| r.split_once('-')) {
            Some(("", n)) => (len.saturating_sub(n.parse().unwrap()), len),
            Some((a, "")) => (a.parse().unwrap(), len),
            Some((a, b)) => (a.parse().unwrap(), (b.parse::<u64>().unwrap() + 1).min(len)),
            None => (0, len),
        };
        let status = if range.is_some() {
            format!(
                "206 Partial Content\r\ncontent-range: bytes {start}-{}/{len}",
                end - 1
            )
        } else {
            "200 OK".to_owned()
        };
        write!(
            out,
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\netag: \"v1\"\r\naccept-ranges: bytes\r\n\r\n",
            end - start
        )?;
        if method != "HEAD" {
            out.write_all(&body[start as usize..end as usize])?;
        }
    }
}

fn archive_bytes() -> (Vec<u8>, Vec<f32>) {
    // Noise in [1, 2): incompressible, so the archive is larger than the open's tail.
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let values: Vec<f32> = (0..400_000)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            f32::from_bits(((x >> 41) as u32) | 0x3f80_0000)
        })
        .collect();
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut w = Writer::new(Vec::new(), WriterOptions::default()).unwrap();
    w.add_tensor(
        "small",
        DType::I32,
        &[3],
        &[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0],
    )
    .unwrap();
    w.add_tensor("big", DType::F32, &[values.len() as u64], &data)
        .unwrap();
    let (_, out) = w.finish().unwrap();
    (out.unwrap(), values)
}

fn open_url(url: &str, options: Option<&str>) -> Result<*mut Archive, i32> {
    let url = CString::new(url).unwrap();
    let options = options.map(|o| CString::new(o).unwrap());
    let mut out = 0x1 as *mut Archive;
    let code = unsafe {
        bpz_open_url(
            url.as_ptr(),
            options.as_ref().map_or(null(), |o| o.as_ptr()),
            &mut out,
        )
    };
    if code == BPZ_OK {
        assert!(!out.is_null());
        Ok(out)
    } else {
        assert!(out.is_null(), "*out is NULL on failure");
        Err(code)
    }
}

fn find(a: *const Archive, name: &str) -> usize {
    let name = CString::new(name).unwrap();
    let mut index = usize::MAX;
    assert_eq!(
        unsafe { bpz_tensor_find(a, name.as_ptr(), &mut index) },
        BPZ_OK
    );
    index
}

#[test]
fn open_url_reads_tensors_with_ranged_requests() {
    let (bytes, values) = archive_bytes();
    assert!(bytes.len() > 1 << 20, "larger than the open's tail");
    let (port, count) = serve(bytes);
    let a = open_url(&format!("http://127.0.0.1:{port}/a.bpz"), None).unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 1, "open is one request");
    assert_eq!(unsafe { bpz_tensor_count(a) }, 2);
    let mut small = [0u8; 12];
    let i = find(a, "small");
    assert_eq!(
        unsafe { bpz_read(a, i, small.as_mut_ptr().cast::<c_void>(), 12) },
        BPZ_OK
    );
    assert_eq!(small, [1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0]);
    let mut big = vec![0f32; values.len()];
    let i = find(a, "big");
    assert_eq!(
        unsafe { bpz_read(a, i, big.as_mut_ptr().cast::<c_void>(), big.len() * 4) },
        BPZ_OK
    );
    assert_eq!(big, values);
    assert_eq!(unsafe { bpz_verify(a) }, BPZ_OK);
    // No zero-copy views of a remote archive: a clear code, not a crash.
    let (mut data, mut len) = (0x1 as *const c_void, 7usize);
    assert_eq!(
        unsafe { bpz_tensor_data(a, i, &mut data, &mut len) },
        BPZ_ERR_NOT_ZERO_COPY
    );
    unsafe { bpz_close(a) };
}

#[test]
fn open_url_errors_name_the_url_and_hide_secrets() {
    let (bytes, _) = archive_bytes();
    let (port, _) = serve(bytes);
    let missing = format!("http://127.0.0.1:{port}/nope.bpz");
    assert_eq!(open_url(&missing, None), Err(BPZ_ERR_IO));
    let m = message();
    assert!(m.contains(&missing) && m.contains("404"), "{m}");

    let url = format!("http://127.0.0.1:{port}/a.bpz");
    for (options, expect) in [
        ("[1, 2]", "must be a JSON object"),
        ("{\"timeout\": ", "is not JSON"),
        (
            "{\"timeout\": [\"s3cr3t\"]}",
            "\"timeout\" must be a string",
        ),
        ("{\"no_such_option\": \"s3cr3t\"}", "no_such_option"),
    ] {
        assert_eq!(
            open_url(&url, Some(options)),
            Err(BPZ_ERR_INVALID_ARGUMENT),
            "{options}"
        );
        let m = message();
        assert!(m.contains(expect), "{options}: {m}");
        assert!(!m.contains("s3cr3t"), "{options}: {m}");
    }
    // Options that are fine: numbers, booleans and strings.
    let a = open_url(&url, Some("{\"max_retries\": 1, \"timeout\": \"5s\"}")).unwrap();
    unsafe { bpz_close(a) };

    let mut out = std::ptr::null_mut();
    assert_eq!(
        unsafe { bpz_open_url(null::<c_char>(), null(), &mut out) },
        BPZ_ERR_NULL_ARGUMENT
    );
    assert!(message().contains("url"), "{}", message());
    assert_eq!(
        open_url("ftp://example.invalid/a.bpz", None),
        Err(BPZ_ERR_INVALID_ARGUMENT)
    );
}
