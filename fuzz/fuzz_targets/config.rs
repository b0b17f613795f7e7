//! The config loader on any text: errors, never a panic, and every error has a message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(errors) = switchyard::config::parse(text) {
        assert!(!errors.is_empty());
        assert!(errors.iter().all(|e| !e.message.is_empty()));
    }
});
