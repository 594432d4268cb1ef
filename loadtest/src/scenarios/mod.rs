//! One module per scenario. Each has its `clap` arguments and a
//! `run(common, args) -> Summary` built on [`crate::harness`].

pub mod broadcast;
pub mod connect;
pub mod download;
pub mod echo;
pub mod prices;
pub mod upload;

/// Format `n` in decimal into `buf` without allocating; returns the digits.
pub(crate) fn decimal(n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        // `n % 10` is a digit.
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

#[cfg(test)]
mod tests {
    #[test]
    fn decimal_formats() {
        let mut buf = [0u8; 20];
        for n in [0, 7, 10, 12345, u64::MAX] {
            assert_eq!(super::decimal(n, &mut buf), n.to_string());
        }
    }
}
