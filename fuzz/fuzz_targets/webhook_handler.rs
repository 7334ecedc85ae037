#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cosell_fuzz::webhook_handler::run(data));
