//! The Veo client against the local Veo server (`reel_testkit::veo`): every documented
//! answer — running, done with videos, filtered, failed, and the error envelope's
//! statuses — and the request the client sends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reel_gcp::veo::{AspectRatio, OperationState, VeoClient, VeoConfig, VeoError, VideoRequest};
use reel_testkit::veo::{VeoOptions, VeoServer};

const STORAGE: &str = "gs://reel-local/generated/job_1/";
const MODEL_PATH: &str =
    "/v1/projects/test-project/locations/us-central1/publishers/google/models/veo-3.0-generate-001";

fn client(server: &VeoServer) -> VeoClient {
    VeoClient::new(&VeoConfig::new("test-project").with_endpoint(server.url())).expect("client")
}

fn request(prompt: &str) -> VideoRequest {
    VideoRequest::new(prompt, 8, AspectRatio::for_orientation("portrait"), STORAGE)
}

/// Poll until the operation is no longer running (at most 20 polls); the final state and
/// how many polls answered running.
async fn wait(veo: &VeoClient, operation: &str) -> (OperationState, usize) {
    let mut running = 0;
    for _ in 0..20 {
        match veo.poll(operation).await.expect("poll") {
            OperationState::Running => running += 1,
            other => return (other, running),
        }
    }
    panic!("{operation} still running after 20 polls");
}

#[tokio::test]
async fn a_generation_is_started_and_polled_to_the_uri_of_its_video() {
    let server = VeoServer::start().await.unwrap();
    let veo = client(&server);
    let operation = veo.start(&request("a lighthouse at dawn")).await.unwrap();
    let model = MODEL_PATH.trim_start_matches("/v1/");
    assert!(operation.name.starts_with(&format!("{model}/operations/")), "{}", operation.name);

    assert_eq!(veo.poll(&operation.name).await.unwrap(), OperationState::Running);
    let OperationState::Done { videos } = veo.poll(&operation.name).await.unwrap() else {
        panic!("not done after the second poll");
    };
    assert_eq!(videos.len(), 1, "{videos:?}");
    assert!(videos[0].starts_with(STORAGE) && videos[0].ends_with("/sample_0.mp4"), "{videos:?}");
    // Veo writes into a subdirectory of its own under storageUri.
    assert_ne!(videos[0], format!("{STORAGE}sample_0.mp4"));
    // Done stays done.
    assert_eq!(veo.poll(&operation.name).await.unwrap(), OperationState::Done { videos });

    let polls = server.requests_to("fetchPredictOperation");
    assert_eq!(polls.len(), 3);
    assert_eq!(polls[0].path, format!("{MODEL_PATH}:fetchPredictOperation"));
    assert_eq!(polls[0].json().unwrap(), serde_json::json!({ "operationName": operation.name }));
}

#[tokio::test]
async fn the_request_carries_the_prompt_and_the_documented_parameters_without_credentials() {
    let server = VeoServer::start().await.unwrap();
    let veo = client(&server);
    let mut portrait = request("a fox in the snow");
    portrait.duration_seconds = 6;
    portrait.generate_audio = true;
    veo.start(&portrait).await.unwrap();
    veo.start(&VideoRequest::new("a square reel", 4, AspectRatio::for_orientation("square"), STORAGE)).await.unwrap();

    let starts = server.requests_to("predictLongRunning");
    assert_eq!(starts.len(), 2);
    let first = &starts[0];
    assert_eq!(
        (first.method.as_str(), first.path.as_str()),
        ("POST", format!("{MODEL_PATH}:predictLongRunning").as_str())
    );
    assert!(first.header("content-type").unwrap_or_default().starts_with("application/json"));
    let body = first.json().expect("a JSON body");
    assert_eq!(body["instances"], serde_json::json!([{ "prompt": "a fox in the snow" }]));
    let p = &body["parameters"];
    assert_eq!(p["durationSeconds"], 6);
    assert_eq!(p["aspectRatio"], "9:16");
    assert_eq!(p["storageUri"], STORAGE);
    assert_eq!(p["sampleCount"], 1);
    assert_eq!(p["generateAudio"], true);
    let square = starts[1].json().unwrap();
    assert_eq!(square["parameters"]["aspectRatio"], "16:9");
    assert_eq!(square["parameters"]["durationSeconds"], 4);
    // A local (http://) endpoint gets no credentials.
    assert!(server.requests().iter().all(|r| r.header("authorization").is_none()));
}

#[tokio::test]
async fn a_slow_operation_is_polled_until_done() {
    let server = VeoServer::start().await.unwrap();
    let veo = client(&server);
    let operation = veo.start(&request("a slow river [slow:4]")).await.unwrap();
    let (state, running) = wait(&veo, &operation.name).await;
    assert_eq!(running, 4);
    assert!(matches!(state, OperationState::Done { ref videos } if videos.len() == 1), "{state:?}");
}

#[tokio::test]
async fn several_samples_come_back_in_order() {
    let server = VeoServer::start_with(VeoOptions { running_polls: 0, ..Default::default() }).await.unwrap();
    let veo = client(&server);
    let mut three = request("three takes");
    three.sample_count = 3;
    let operation = veo.start(&three).await.unwrap();
    let OperationState::Done { videos } = veo.poll(&operation.name).await.unwrap() else { panic!("not done") };
    let names: Vec<&str> = videos.iter().filter_map(|v| v.rsplit('/').next()).collect();
    assert_eq!(names, ["sample_0.mp4", "sample_1.mp4", "sample_2.mp4"]);
}

#[tokio::test]
async fn quota_exhaustion_is_a_retryable_quota_error() {
    let server = VeoServer::start().await.unwrap();
    let veo = client(&server);
    let err = veo.start(&request("busy day [quota:2]")).await.unwrap_err();
    assert!(
        matches!(&err, VeoError::Quota { message, retry_after: None } if message.contains("Quota exceeded")),
        "{err:?}"
    );
    assert!(err.retryable());
    assert!(matches!(veo.start(&request("busy day [quota:2]")).await, Err(VeoError::Quota { .. })));
    // The third try gets through.
    veo.start(&request("busy day [quota:2]")).await.unwrap();
}

#[tokio::test]
async fn a_retry_delay_in_the_quota_error_is_kept() {
    let options = VeoOptions { quota_retry_delay: Some(Duration::from_secs(2)), ..Default::default() };
    let server = VeoServer::start_with(options).await.unwrap();
    let err = client(&server).start(&request("again [quota]")).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(2)), "{err:?}");
}

#[tokio::test]
async fn a_refused_prompt_is_filtered_with_its_reasons() {
    let server = VeoServer::start().await.unwrap();
    let veo = client(&server);
    let operation = veo.start(&request("something unsafe [refuse]")).await.unwrap();
    let (state, _) = wait(&veo, &operation.name).await;
    let OperationState::Filtered { reasons } = state else { panic!("not filtered: {state:?}") };
    assert_eq!(reasons.len(), 1);
    assert!(reasons[0].contains("Support codes"), "{reasons:?}");
}

#[tokio::test]
async fn a_failed_operation_is_failed_with_its_code_and_message() {
    let server = VeoServer::start().await.unwrap();
    let veo = client(&server);
    let operation = veo.start(&request("an unlucky one [fail]")).await.unwrap();
    let (state, _) = wait(&veo, &operation.name).await;
    let OperationState::Failed { code, message } = &state else { panic!("not failed: {state:?}") };
    assert_eq!(*code, 13);
    assert!(message.contains("internal error"), "{message}");
    assert!(state.failed_transiently());
}

#[tokio::test]
async fn a_request_veo_refuses_is_invalid_and_not_retryable() {
    let server = VeoServer::start().await.unwrap();
    let veo = client(&server);
    let mut five = request("five seconds");
    five.duration_seconds = 5;
    let err = veo.start(&five).await.unwrap_err();
    assert!(
        matches!(&err, VeoError::Invalid(m) if m.contains("INVALID_ARGUMENT") && m.contains("duration")),
        "{err:?}"
    );
    assert!(!err.retryable());
    let mut five_samples = request("five samples");
    five_samples.sample_count = 5;
    assert!(matches!(veo.start(&five_samples).await, Err(VeoError::Invalid(_))));
    assert!(matches!(veo.start(&request("")).await, Err(VeoError::Invalid(_))));
    let mut no_bucket = request("no bucket");
    no_bucket.storage_uri = "/tmp/out/".into();
    assert!(matches!(veo.start(&no_bucket).await, Err(VeoError::Invalid(_))));
}

#[tokio::test]
async fn veo_2_durations_are_accepted_on_a_veo_2_model_without_generate_audio() {
    let server = VeoServer::start().await.unwrap();
    let config = VeoConfig::new("test-project").with_endpoint(server.url()).with_model("veo-2.0-generate-001");
    let veo = VeoClient::new(&config).unwrap();
    let mut five = request("five seconds");
    five.duration_seconds = 5;
    let operation = veo.start(&five).await.unwrap();
    assert!(operation.name.contains("/models/veo-2.0-generate-001/operations/"), "{}", operation.name);
    let body = server.requests_to("predictLongRunning")[0].json().unwrap();
    assert!(body["parameters"].get("generateAudio").is_none(), "{body}");
    // Polled on the operation's own model, whatever the client's.
    let (state, _) = wait(&client(&server), &operation.name).await;
    assert!(matches!(state, OperationState::Done { .. }), "{state:?}");
    assert!(server.requests_to("fetchPredictOperation")[0].path.contains("/models/veo-2.0-generate-001:"));
}

#[tokio::test]
async fn an_unknown_operation_or_model_is_not_found() {
    let server = VeoServer::start().await.unwrap();
    let veo = client(&server);
    let missing = format!("{}/operations/3f1c2d8e-0000-4000-8000-000000000000", MODEL_PATH.trim_start_matches("/v1/"));
    let err = veo.poll(&missing).await.unwrap_err();
    assert!(matches!(&err, VeoError::NotFound(m) if m.contains("NOT_FOUND")), "{err:?}");
    assert!(!err.retryable());
    let other =
        VeoClient::new(&VeoConfig::new("test-project").with_endpoint(server.url()).with_model("imagen-4")).unwrap();
    assert!(matches!(other.start(&request("x")).await, Err(VeoError::NotFound(_))));
}

#[tokio::test]
async fn a_server_error_is_transient_and_the_next_try_succeeds() {
    let server = VeoServer::start().await.unwrap();
    let veo = client(&server);
    let err = veo.start(&request("flaky [unavailable]")).await.unwrap_err();
    assert!(matches!(&err, VeoError::Transient(m) if m.contains("503") && m.contains("UNAVAILABLE")), "{err:?}");
    assert!(err.retryable());
    veo.start(&request("flaky [unavailable]")).await.unwrap();
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    let port = reel_testkit::ports::free_port().unwrap();
    let veo = VeoClient::new(&VeoConfig::new("p").with_endpoint(format!("http://127.0.0.1:{port}"))).unwrap();
    let err = veo.start(&request("nobody home")).await.unwrap_err();
    assert!(matches!(err, VeoError::Transient(_)), "{err:?}");
}

#[tokio::test]
async fn a_missing_permission_is_permission_denied() {
    let server = VeoServer::start().await.unwrap();
    let err = client(&server).start(&request("not mine [forbidden]")).await.unwrap_err();
    assert!(matches!(&err, VeoError::PermissionDenied(m) if m.contains("aiplatform.endpoints.predict")), "{err:?}");
    assert!(!err.retryable());
}

#[tokio::test]
async fn the_server_answers_a_malformed_body_with_invalid_argument() {
    let server = VeoServer::start().await.unwrap();
    let port = server.port();
    let path = format!("{MODEL_PATH}:predictLongRunning");
    let (status, body) =
        tokio::task::spawn_blocking(move || reel_testkit::http::request(port, "POST", &path, &[], "{not json"))
            .await
            .unwrap();
    assert_eq!(status, 400);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (body["error"]["code"].as_u64(), body["error"]["status"].as_str()),
        (Some(400), Some("INVALID_ARGUMENT"))
    );
}

#[tokio::test]
async fn the_done_hook_sees_each_video_once_before_the_client_does() {
    let seen = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let s = seen.clone();
    let options = VeoOptions::default().with_on_done(move |uri, prompt| {
        s.lock().unwrap().push((uri.to_string(), prompt.to_string()));
    });
    let server = VeoServer::start_with(options).await.unwrap();
    let veo = client(&server);
    let operation = veo.start(&request("a hooked clip")).await.unwrap();
    let (state, _) = wait(&veo, &operation.name).await;
    let OperationState::Done { videos } = state else { panic!("not done: {state:?}") };
    assert_eq!(*seen.lock().unwrap(), vec![(videos[0].clone(), "a hooked clip".to_string())]);
    veo.poll(&operation.name).await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 1);
}
