//! Spool segment and line decoding (what replay reads back after a crash),
//! on arbitrary file contents.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    adtrack::fuzzing::spool_segment_holds(data);
});
