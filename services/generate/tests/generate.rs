//! The generate stage on its own, one delivery at a time: a request fans out one item
//! per prompt, each item makes its clip (the real Veo client against the local Veo
//! server of `reel_testkit::veo`, or the ffmpeg test pattern), and exactly one item
//! completes the job and asks for its reel.

use reel_events::payload::{GenerateClip, GenerateRequested, GenerateStitch, JobCompleted, StitchRequested};
use reel_events::{envelope, types, AttributesReader, Compression, ErrorType, Event, Orientation};
use reel_generate::Generate;
use reel_runtime::config::GeneratorKind;
use reel_runtime::stage::{completed_marker_key, Outcome};
use reel_runtime::Store;
use reel_testkit::stage::{emitted, StageHarness};
use reel_testkit::veo::{VeoOptions, VeoServer};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

fn request(job_id: &str, prompts: &[&str], prefix: &str, reel: Option<&str>) -> Event {
    let data = GenerateRequested {
        job_id: Some(job_id.into()),
        project_id: "proj_g".into(),
        user_id: "user_g".into(),
        prompts: prompts.iter().map(|p| p.to_string()).collect(),
        clip_seconds: 4,
        orientation: Orientation::Portrait,
        output_prefix: prefix.into(),
        stitch: reel.map(|r| GenerateStitch { output_path: r.into(), compression: Compression::Optimized }),
        retry_attempt: None,
        force_restart: None,
    };
    StageHarness::event(types::GENERATE_REQUESTED, job_id, &data)
}

fn failure(outcome: Outcome) -> (ErrorType, String) {
    match outcome {
        Outcome::Reject(f) => (f.error_type, f.message),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// A Veo server whose videos are real clips in the harness's `gs://gen` bucket.
struct VeoRig {
    server: VeoServer,
    rig: StageHarness,
}

/// `budget`: how long one delivery polls Veo, s.
async fn veo_rig(budget: u64) -> VeoRig {
    let bucket: Arc<Mutex<Option<PathBuf>>> = Arc::default();
    let sample = std::env::temp_dir().join(format!("reel-gen-sample-{}.mp4", std::process::id()));
    if !sample.exists() {
        let spec =
            reel_media::SampleSpec { width: 360, height: 640, seconds: 4.0, fps: 30, audio: true, label: "veo".into() };
        reel_media::make_sample_clip(&reel_media::MediaConfig::default(), &sample, &spec).await.unwrap();
    }
    let hook_bucket = bucket.clone();
    let options = VeoOptions::default().with_on_done(move |uri: &str, _prompt: &str| {
        let key = uri.strip_prefix("gs://gen/").expect("videos go to the job's bucket");
        let path = hook_bucket.lock().unwrap().clone().expect("the bucket is set").join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::copy(&sample, &path).unwrap();
    });
    let server = VeoServer::start_with(options).await.unwrap();
    let url = server.url();
    let rig = StageHarness::with_settings(|s| {
        s.allowed_roots.push("gs://gen".into());
        s.generate.generator = GeneratorKind::Veo;
        s.generate.veo_endpoint = Some(url);
        s.generate.veo_project = Some("proj-veo".into());
        s.generate.veo_poll_millis = 20;
        s.generate.delivery_budget_seconds = budget;
    });
    *bucket.lock().unwrap() = Some(rig.bucket_dir("gen"));
    VeoRig { server, rig }
}

/// Every item of a request, run one after another: the outcomes in order.
async fn run_items(rig: &StageHarness, items: &[Event]) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for item in items {
        outcomes.push(rig.run::<Generate>(item).await);
    }
    outcomes
}

#[tokio::test]
async fn prompts_become_clips_through_veo_and_the_last_item_completes_the_job_and_asks_for_the_reel() {
    let VeoRig { server, rig } = veo_rig(20).await;
    let event = request(
        "gen_ok",
        &["a lighthouse at dawn", "waves [slow:2]", "gulls"],
        "gs://gen/out/",
        Some("gs://gen/reels/r.mp4"),
    );
    let items = emitted(rig.run::<Generate>(&event).await);
    assert_eq!(items.len(), 3, "one item per prompt");
    assert!(items.iter().all(|i| i.ty() == types::GENERATE_CLIP && i.subject() == Some("gen_ok")));
    let indexes: Vec<usize> = items.iter().map(|i| envelope::decode::<GenerateClip>(i).unwrap().prompt_index).collect();
    assert_eq!(indexes, [0, 1, 2]);

    let mut outcomes = run_items(&rig, &items).await;
    let last = outcomes.pop().unwrap();
    assert!(outcomes.iter().all(|o| matches!(o, Outcome::Emit(e) if e.is_empty())), "{outcomes:?}");
    let events = emitted(last);
    assert_eq!(events.iter().map(|e| e.ty()).collect::<Vec<_>>(), [types::JOB_COMPLETED, types::STITCH_REQUESTED]);
    let completed: JobCompleted = envelope::decode(&events[0]).unwrap();
    assert_eq!(envelope::data_json(&events[0]).unwrap()["type"], "video_generation");
    let clips = completed.clip_paths.clone().expect("clipPaths");
    assert_eq!(clips.len(), 3);
    for (i, clip) in clips.iter().enumerate() {
        // Veo's own subfolder under the prompt's prefix, never a guessed name.
        assert!(clip.starts_with(&format!("gs://gen/out/{:03}/", i + 1)), "{clip}");
        let local = rig.bucket_dir("gen").join(clip.strip_prefix("gs://gen/").unwrap());
        assert!(local.metadata().unwrap().len() > 1000, "{clip} is a real clip");
    }
    assert!(completed.size_bytes > 3000);
    assert_eq!(completed.duration_seconds, 12.0);
    assert!(completed.mode.is_none());

    let reel: StitchRequested = envelope::decode(&events[1]).unwrap();
    assert_eq!(events[1].subject(), Some("gen_ok-reel"));
    assert_eq!((reel.job_id.as_deref(), reel.clip_paths.clone()), (Some("gen_ok-reel"), clips));
    assert_eq!((reel.project_id.as_str(), reel.user_id.as_str()), ("proj_g", "user_g"));
    assert_eq!(reel.output_path, "gs://gen/reels/r.mp4");

    // What the client sent is what the API documents.
    let starts = server.requests_to("predictLongRunning");
    assert_eq!(starts.len(), 3, "one generation per prompt");
    let body = starts[0].json().unwrap();
    assert_eq!(body["instances"][0]["prompt"], "a lighthouse at dawn");
    assert_eq!(body["parameters"]["durationSeconds"], 4);
    assert_eq!(body["parameters"]["aspectRatio"], "9:16");
    assert_eq!(body["parameters"]["storageUri"], "gs://gen/out/001/");
    assert!(starts[0].header("authorization").is_none(), "a local endpoint gets no credentials");

    // The job is done: its completion is recorded; a late duplicate of an item re-emits
    // the very same events (same ids, so the fold and validate see duplicates) and
    // generates nothing.
    assert!(rig.work.head(&completed_marker_key("gen_ok")).await.unwrap().is_some());
    let again = emitted(rig.run::<Generate>(&items[0]).await);
    let ids = |events: &[Event]| events.iter().map(|e| e.id().to_string()).collect::<Vec<_>>();
    assert_eq!(ids(&again), ids(&events));
    assert_eq!(server.requests_to("predictLongRunning").len(), 3, "nothing generated twice");
}

#[tokio::test]
async fn a_refused_prompt_is_skipped_with_the_reason_and_a_reel_needs_two_clips() {
    let VeoRig { rig, server: _server } = veo_rig(20).await;
    let event = request("gen_refuse", &["a cat", "something [refuse]", "a dog"], "gs://gen/r/", Some("gs://gen/r.mp4"));
    let items = emitted(rig.run::<Generate>(&event).await);
    let events = emitted(run_items(&rig, &items).await.pop().unwrap());
    let completed: JobCompleted = envelope::decode(&events[0]).unwrap();
    assert_eq!(completed.clip_paths.as_ref().map(Vec::len), Some(2));
    assert_eq!(completed.skipped_clips.len(), 1);
    assert!(completed.skipped_clips[0].path.starts_with("prompt 2: something"), "{:?}", completed.skipped_clips);
    assert!(completed.skipped_clips[0].reason.contains("safety"), "{:?}", completed.skipped_clips);
    assert_eq!(events.len(), 2, "two clips remain: the reel is asked for");

    let event = request("gen_two", &["a cat", "something [refuse]"], "gs://gen/t/", Some("gs://gen/t.mp4"));
    let items = emitted(rig.run::<Generate>(&event).await);
    let (error_type, message) = failure(run_items(&rig, &items).await.pop().unwrap());
    assert_eq!(error_type, ErrorType::InsufficientClips);
    assert!(message.contains("1 of 2 prompts gave a clip"), "{message}");
}

#[tokio::test]
async fn quota_is_waited_out_within_the_delivery_and_a_redelivery_polls_the_same_operation() {
    let VeoRig { server, rig } = veo_rig(1).await;
    let event = request("gen_quota", &["busy [quota]", "slow [slow:100000]"], "gs://gen/q/", None);
    let items = emitted(rig.run::<Generate>(&event).await);
    // The quota answer is retried after a pause; the prompt gets its clip.
    assert!(matches!(rig.run::<Generate>(&items[0]).await, Outcome::Emit(e) if e.is_empty()));
    assert_eq!(server.requests_to("predictLongRunning").len(), 2, "one 429, then the start");
    // A generation longer than the delivery's budget hands the item back ...
    let outcome = rig.run::<Generate>(&items[1]).await;
    assert!(matches!(&outcome, Outcome::Retry(f) if f.message.contains("still generating")), "{outcome:?}");
    let polls = server.requests_to("fetchPredictOperation").len();
    // ... and the next delivery polls the recorded operation instead of starting anew.
    let outcome = rig.run::<Generate>(&items[1]).await;
    assert!(matches!(outcome, Outcome::Retry(_)), "{outcome:?}");
    assert_eq!(server.requests_to("predictLongRunning").len(), 3, "no second generation of the slow prompt");
    assert!(server.requests_to("fetchPredictOperation").len() > polls, "the recorded operation was polled");
}

#[tokio::test]
async fn requests_outside_the_rules_fail_with_a_clear_error() {
    let rig = StageHarness::with_settings(|s| s.generate.generator = GeneratorKind::TestPattern);
    let files = rig.files().display().to_string();
    let prefix = format!("{files}/clips/");
    let cases: Vec<(Event, ErrorType, &str)> = vec![
        (request("gen_b1", &[], &prefix, None), ErrorType::InvalidRequest, "1 to 20 prompts"),
        (request("gen_b2", &["x"; 21], &prefix, None), ErrorType::InvalidRequest, "1 to 20 prompts"),
        (request("gen_b3", &["  "], &prefix, None), ErrorType::InvalidRequest, "not blank"),
        (request("gen_b4", &["x"], &format!("{files}/clips"), None), ErrorType::InvalidRequest, "must end in /"),
        (request("gen_b5", &["x"], "/etc/reel/", None), ErrorType::PermissionDenied, "outputPrefix"),
        (
            request("gen_b6", &["x", "y"], &prefix, Some(&format!("{files}/reel.txt"))),
            ErrorType::InvalidRequest,
            ".mp4",
        ),
    ];
    for (event, expected, words) in cases {
        let (error_type, message) = failure(rig.run::<Generate>(&event).await);
        assert_eq!(error_type, expected, "{message}");
        assert!(message.contains(words), "{message:?} should say {words:?}");
    }
    // Another user's project: refused before anything is generated.
    let first = request("gen_mine", &["x"], &prefix, None);
    emitted(rig.run::<Generate>(&first).await);
    let data = serde_json::json!({
        "jobId": "gen_theirs", "projectId": "proj_g", "userId": "someone_else", "prompts": ["x"],
        "clipSeconds": 4, "orientation": "portrait", "outputPrefix": prefix,
    });
    let theirs = StageHarness::event(types::GENERATE_REQUESTED, "gen_theirs", &data);
    let (error_type, message) = failure(rig.run::<Generate>(&theirs).await);
    assert_eq!(error_type, ErrorType::PermissionDenied, "{message}");
}

#[tokio::test]
async fn the_test_pattern_makes_a_playable_titled_clip_per_prompt_with_items_run_at_once() {
    let rig = StageHarness::with_settings(|s| s.generate.generator = GeneratorKind::TestPattern);
    let prefix = format!("{}/clips/", rig.files().display());
    let event = request("gen_local", &["sunrise over hills", "a red bicycle"], &prefix, None);
    let items = emitted(rig.run::<Generate>(&event).await);
    // Both items at once, and a duplicate of the first: exactly one completes the job.
    let (a, b, c) =
        tokio::join!(rig.run::<Generate>(&items[0]), rig.run::<Generate>(&items[1]), rig.run::<Generate>(&items[0]));
    let completions: Vec<Event> = [a, b, c]
        .into_iter()
        .filter_map(|o| match o {
            Outcome::Emit(events) => Some(events),
            _ => None,
        })
        .flatten()
        .collect();
    let ids: std::collections::BTreeSet<&str> = completions.iter().map(|e| e.id()).collect();
    assert_eq!(ids.len(), 1, "one job.completed (a duplicate of the winner re-emits the same event)");
    let completed: JobCompleted = envelope::decode(&completions[0]).unwrap();
    let clips = completed.clip_paths.unwrap();
    assert_eq!(clips, [format!("{prefix}clip-001.mp4"), format!("{prefix}clip-002.mp4")]);
    for clip in &clips {
        let out = std::process::Command::new("ffprobe")
            .args(["-v", "error", "-show_entries", "stream=codec_type,width,height", "-of", "csv=p=0", clip])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("video,540,960") && text.contains("audio"), "{text}");
    }
}
