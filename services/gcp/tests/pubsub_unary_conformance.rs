//! The Bus conformance suite against the Pub/Sub emulator with unary pull
//! (`REEL_PUBSUB_PULL=unary`, what the chaos runs use): the same contract as the
//! streaming pull.

use std::sync::Arc;

use reel_gcp::PubSubBus;
use reel_testkit::Emulators;

reel_runtime::bus_conformance_tests!(async {
    let mut config = Emulators::shared().pubsub_config();
    config.unary_pull = true;
    Arc::new(PubSubBus::connect(config).await.expect("connect"))
});
