//! Server → client WebSocket frame headers (RFC 6455 §5.2), pure.
//!
//! Server frames are never masked, so a header is 2, 4 or 10 bytes and the
//! payload goes out untouched: that is what lets the writer send Phoenix
//! payloads (and later mmap'd file chunks) with `writev` and no copy.

/// WebSocket opcodes the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsOpcode {
    /// 0x1
    Text = 0x1,
    /// 0x2
    Binary = 0x2,
    /// 0x8
    Close = 0x8,
    /// 0xA
    Pong = 0xA,
}

/// Largest header: 1 byte flags/opcode + 1 byte length code + 8 bytes length.
pub const MAX_HEADER: usize = 10;

/// Append the header of a final, unmasked frame of `len` payload bytes.
pub fn put_header(out: &mut Vec<u8>, opcode: WsOpcode, len: usize) {
    let start = out.len();
    out.push(0x80 | opcode as u8);
    if len < 126 {
        out.push(len as u8);
    } else if len <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    debug_assert_eq!(out.len() - start, header_len(len));
}

/// Bytes [`put_header`] writes for a payload of `len` bytes.
pub fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= u16::MAX as usize {
        4
    } else {
        10
    }
}

/// The payload of a close frame: code, then at most 123 bytes of UTF-8 reason
/// (cut on a character boundary).
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut v = Vec::with_capacity(2 + end);
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(&reason.as_bytes()[..end]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: usize) -> Vec<u8> {
        let mut v = Vec::new();
        put_header(&mut v, WsOpcode::Binary, len);
        v
    }

    #[test]
    fn lengths() {
        assert_eq!(header(0), vec![0x82, 0]);
        assert_eq!(header(125), vec![0x82, 125]);
        assert_eq!(header(126), vec![0x82, 126, 0, 126]);
        assert_eq!(header(65535), vec![0x82, 126, 0xff, 0xff]);
        assert_eq!(header(65536), vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn close_reason_is_cut_on_char_boundary() {
        let long = "é".repeat(100);
        let p = close_payload(1012, &long);
        assert!(p.len() <= 125);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
        assert_eq!(&p[..2], &[0x03, 0xf4]);
    }
}
