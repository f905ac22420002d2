//! Fuzz target: every decoder of bytes from the peer (`zcommon::decode_everything`, which the
//! property tests run too). None may panic, and a hello or a manifest that decodes must encode
//! back to exactly the bytes it came from.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| zcommon::decode_everything(data));
