//! `token::etf::decode` on arbitrary bytes: never panics; whatever decodes
//! survives an encode/decode round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::token::etf;

fuzz_target!(|data: &[u8]| {
    let Ok(term) = etf::decode(data) else { return };
    let again = etf::decode(&etf::encode(&term)).expect("encoded term decodes");
    assert_eq!(again, term);
});
