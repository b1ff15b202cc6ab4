//! Fuzz target `config`: see `clavis::fuzzing::run` for the input layout.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(violation) = clavis::fuzzing::run(clavis::fuzzing::Target::Config, data) {
        panic!("config: {violation}");
    }
});
