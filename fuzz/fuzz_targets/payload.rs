//! Payload parsing: every payload type of `reel_events::payload` (and `JobStatus`,
//! `ClipInfo`, `PubsubMessage`) from any bytes: no panic, and what parses round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    reel_fuzz::check_payloads(input);
});
