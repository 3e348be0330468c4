//! End-to-end tests (in `tests/`): the stage programs and the reel CLI on the Pub/Sub
//! emulator and fake-gcs-server. The harness is `reel-testkit` (`Cluster`, fixtures).
