//! The worker's envelope decoder against serde's, on arbitrary text.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    adtrack::fuzzing::envelope_holds(data);
});
