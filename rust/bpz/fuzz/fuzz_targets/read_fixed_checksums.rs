//! Structure-aware: before opening, the input's magic, end marker and every checksum
//! (superblock, trailer, index, and each chunk the index lists) are set right, so
//! mutations reach index validation, chunk decoding and the filters instead of stopping
//! at the first crc32c.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

mod common;

const MAGIC: &[u8; 8] = b"\x89BPZ\r\n\x1a\n";
const END: &[u8; 8] = b"BPZ_END\n";

fn fix(data: &[u8]) -> Vec<u8> {
    let mut b = data.to_vec();
    if b.len() < 96 {
        return b;
    }
    b[..8].copy_from_slice(MAGIC);
    let crc = crc32c::crc32c(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    let n = b.len();
    let t = n - 32;
    b[t + 24..].copy_from_slice(END);
    let off = u64::from_le_bytes(b[t..t + 8].try_into().unwrap());
    let len = u64::from_le_bytes(b[t + 8..t + 16].try_into().unwrap());
    if off >= 64 && off.checked_add(len) == Some(t as u64) {
        let (off, len) = (off as usize, len as usize);
        let mut index = b[off..off + len].to_vec();
        // Point every chunk's crc at its bytes, when the index parses and they exist.
        if let Ok(mut v) = serde_json::from_slice::<Value>(&index) {
            let mut changed = false;
            if let Some(tensors) = v.get_mut("tensors").and_then(Value::as_array_mut) {
                for tensor in tensors {
                    if let Some(chunks) = tensor.get_mut("chunks").and_then(Value::as_array_mut) {
                        for c in chunks {
                            let (Some(o), Some(l)) = (c.get(0).and_then(Value::as_u64), c.get(1).and_then(Value::as_u64))
                            else {
                                continue;
                            };
                            if let Some(bytes) = (o as usize).checked_add(l as usize).and_then(|e| b.get(o as usize..e)) {
                                if let Some(slot) = c.get_mut(2) {
                                    *slot = Value::from(crc32c::crc32c(bytes));
                                    changed = true;
                                }
                            }
                        }
                    }
                }
            }
            if changed {
                index = serde_json::to_vec(&v).unwrap();
            }
        }
        let mut out = b[..off].to_vec();
        out.extend_from_slice(&index);
        let mut trailer = [0u8; 32];
        trailer[..8].copy_from_slice(&(off as u64).to_le_bytes());
        trailer[8..16].copy_from_slice(&(index.len() as u64).to_le_bytes());
        trailer[16..20].copy_from_slice(&crc32c::crc32c(&index).to_le_bytes());
        let tcrc = crc32c::crc32c(&trailer[..20]);
        trailer[20..24].copy_from_slice(&tcrc.to_le_bytes());
        trailer[24..].copy_from_slice(END);
        out.extend_from_slice(&trailer);
        return out;
    }
    let tcrc = crc32c::crc32c(&b[t..t + 20]);
    b[t + 20..t + 24].copy_from_slice(&tcrc.to_le_bytes());
    b
}

fuzz_target!(|data: &[u8]| {
    let fixed = fix(data);
    if let Ok(r) = bpz::Reader::from_bytes(fixed) {
        common::exercise(&r);
    }
});
