#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| anima_fuzz::anima_toml::run(data));
