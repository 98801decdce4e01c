//! Event parsing and validation at the HTTP edge, on arbitrary bodies.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    adtrack::fuzzing::parse_event_holds(data);
});
