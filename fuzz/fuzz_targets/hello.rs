//! Fuzz target: every decoder of bytes from the peer. None may panic, and a hello that decodes
//! must encode back to exactly the bytes it came from.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = zcommon::read_hello(&mut &data[..]) {
        let again = h.encode_hello();
        assert_eq!(&data[..again.len()], &again[..]);
    }
    let _ = zcommon::Reply::read(&mut &data[..]);
    let _ = zcommon::Verdict::read(&mut &data[..]);
    let _ = zcommon::Trailer::read(&mut &data[..]);
    let _ = zcommon::Record::read(&mut &data[..]);
    if let Ok(m) = zcommon::Manifest::read(&mut &data[..]) {
        assert_eq!(zcommon::Manifest::read(&mut &m.encode()[..]).unwrap(), m);
    }
    let _ = zcommon::Answers::read(&mut &data[..], 3);
    let _ = zcommon::Frame::read(&mut &data[..]);
    let _ = zcommon::Report::read(&mut &data[..]);
    let _ = zcommon::read_hops(&mut &data[..]);
    let _ = zcommon::PrefixProof::read(&mut &data[..]);
    let _ = zcommon::AfterTrailer::read(&mut &data[..]);
    // The piece count comes from a header: take it from the first bytes, huge ones included.
    let pieces = data.iter().take(8).fold(0u64, |n, b| n << 8 | u64::from(*b));
    let _ = zcommon::Needed::read(&mut &data[..], pieces);
    let _ = zcommon::read_layer(&mut &data[..], pieces, &mut |_, _| {});
});
