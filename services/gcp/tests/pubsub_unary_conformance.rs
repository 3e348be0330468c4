//! The Bus conformance suite against the Pub/Sub emulator with unary pull
//! (`REEL_PUBSUB_PULL=unary`, what the chaos runs use): the same contract as the
//! streaming pull.

use std::sync::Arc;

use reel_gcp::{PubSubBus, PullMode};
use reel_testkit::Emulators;

reel_runtime::bus_conformance_tests!(async {
    let config = Emulators::shared().pubsub_config().set_pull_mode(PullMode::Unary);
    Arc::new(PubSubBus::connect(config).await.expect("connect"))
});
