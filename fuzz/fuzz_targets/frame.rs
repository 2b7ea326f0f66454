#![no_main]
//! Fuzz target `frame`: see `fuzz/entry.rs`.

#[path = "../entry.rs"]
mod entry;

libfuzzer_sys::fuzz_target!(|data: &[u8]| entry::frame(data));
