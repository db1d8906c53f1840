#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| anima_fuzz::control_frame::run(data));
