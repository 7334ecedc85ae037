#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cosell_fuzz::config_loader::run(data));
