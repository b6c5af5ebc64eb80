//! The control channel's frame decoder, as either peer runs it on what the other side
//! wrote into a shared ring: a stream of frames decoded one after another until an
//! error or a partial frame, each decoded frame encoded again and decoded to itself.
#![no_main]

use hyperxl_contract::control::{decode, HEADER_LEN, MAX_PAYLOAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while let Ok(Some((frame, used))) = decode(&data[at..]) {
        assert!(used >= HEADER_LEN && used <= HEADER_LEN + MAX_PAYLOAD);
        assert!(at + used <= data.len());
        let mut again = Vec::new();
        frame.encode(&mut again).expect("a decoded frame encodes");
        assert_eq!(decode(&again), Ok(Some((frame, again.len()))));
        at += used;
    }
});
