//! The fold: any sequence of events (generated job histories, malformed payloads,
//! events that came through the decoder), with any repeats. No panic; and for well
//! typed events the `JobStatus` of every job is the same forwards, backwards, sorted
//! and with every event twice.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use reel_fuzz::EventSpec;

#[derive(Debug, Arbitrary)]
enum Entry {
    Spec { kind: u8, source: u8, time: u16, attempt: u8, number: u16, no_subject: bool, other_job: bool },
    Junk { kind: u8, time: u16, number: u16, pick: u16, junk: String },
    Decoded { data: Vec<u8>, attributes: Vec<(u8, String)> },
}

fn build(entries: Vec<Entry>) -> Vec<reel_events::Event> {
    let mut pool = Vec::new();
    for (n, entry) in entries.into_iter().enumerate() {
        match entry {
            Entry::Spec { kind, source, time, attempt, number, no_subject, other_job } => {
                let spec = EventSpec { kind, source, time, attempt, number, subject: !no_subject, job: other_job, junk: None };
                pool.push(reel_fuzz::build_event(&spec, n));
            }
            Entry::Junk { kind, time, number, pick, junk } => {
                let spec = EventSpec { kind, source: kind, time, number, subject: true, junk: Some((pick, junk)), ..Default::default() };
                pool.push(reel_fuzz::build_event(&spec, n));
            }
            Entry::Decoded { data, attributes } => {
                let message = reel_fuzz::message_from_parts(data, attributes, String::new());
                if let Ok(event) = reel_events::binding::decode(&message) {
                    pool.push(event);
                }
            }
        }
    }
    pool
}

fuzz_target!(|input: &[u8]| {
    let mut u = Unstructured::new(input);
    let Ok(entries) = Vec::<Entry>::arbitrary(&mut u) else { return };
    let Ok(order) = Vec::<u8>::arbitrary_take_rest(u) else { return };
    let order: Vec<usize> = order.into_iter().map(usize::from).collect();
    reel_fuzz::check_fold(build(entries), &order);
});
