#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| anima_fuzz::lease_token::run(data));
