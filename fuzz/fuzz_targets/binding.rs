//! The Pub/Sub binding decoder: `binding::decode`, `decode_storage_notification` and
//! `wrap_bare_request` on any message. The input is a message written like an HTTP
//! request (`name: value` attribute lines, a blank line, the body): see
//! `reel_fuzz::message_from_text` and the seeds in `fuzz/seeds/binding/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let (message, id) = reel_fuzz::message_from_text(input);
    reel_fuzz::check_binding(&message, &id);
});
