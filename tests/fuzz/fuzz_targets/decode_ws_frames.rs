//! `transport::frames::decode` on arbitrary bytes fed in arbitrary pieces:
//! never panics, never consumes bytes without returning a frame, never hands
//! out more than the limit, and decodes the same frames however the input
//! is split.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice::transport::frames::{self, Decoded};

const MAX: usize = 4096;

/// Decode everything `pieces` of `data` allow; the frames' (fin, op, payload)
/// and the error, if any.
fn run(data: &[u8], step: usize) -> (Vec<(bool, frames::Op, Vec<u8>)>, Option<frames::FrameError>) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in data.chunks(step.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match frames::decode(&mut buf, MAX) {
                Ok(Decoded::Frame(f)) => {
                    assert!(f.payload.len() <= MAX);
                    assert!(buf.len() < before, "a frame consumed nothing");
                    out.push((f.fin, f.op, f.payload.to_vec()));
                }
                Ok(Decoded::Need(n)) => {
                    assert_eq!(buf.len(), before, "Need consumed bytes");
                    assert!(n > before, "Need asks for no more than is there");
                    break;
                }
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

fuzz_target!(|input: (u8, &[u8])| {
    let (step, data) = input;
    let whole = run(data, data.len());
    let pieces = run(data, usize::from(step % 17) + 1);
    assert_eq!(whole, pieces);
    let _ = frames::check_close(data);
});
