//! The stitch handler on its own, with real clips and real ffmpeg: the plan (copy or
//! re-encode), the reel it leaves in the workspace, and a redelivery that reuses it.

use reel_events::payload::{ClipsDownloaded, JobSpec, ReelStitched, WorkClip};
use reel_events::{envelope, types, AttributesReader, Compression, Event, Mode, Orientation};
use reel_media::SampleSpec;
use reel_runtime::Store;
use reel_stitch::Stitch;
use reel_testkit::fixtures;
use reel_testkit::stage::{emitted, StageHarness};

fn spec(width: u32, height: u32, seconds: f64) -> SampleSpec {
    SampleSpec { width, height, seconds, fps: 10, audio: true, label: String::new() }
}

/// Clips as download leaves them: in the workspace, probed.
async fn downloaded(rig: &StageHarness, job_id: &str, clips: &[SampleSpec], compression: Compression) -> Event {
    downloaded_with(rig, job_id, clips, compression, |_, _| {}).await
}

/// [`downloaded`], with `damage` done to each clip file before it is probed.
async fn downloaded_with(
    rig: &StageHarness,
    job_id: &str,
    clips: &[SampleSpec],
    compression: Compression,
    damage: impl Fn(usize, &std::path::Path),
) -> Event {
    let job = JobSpec {
        clip_paths: (0..clips.len()).map(|i| format!("/clips/{i}.mp4")).collect(),
        orientation: Orientation::Landscape,
        compression,
        ..fixtures::job_spec(job_id)
    };
    let mut work_clips = Vec::new();
    for (index, clip) in clips.iter().enumerate() {
        let work_key = format!("jobs/{job_id}/clips/{index:03}.mp4");
        let path = rig.work.local_path(&work_key).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        reel_media::make_sample_clip(&rig.settings.media, &path, clip).await.unwrap();
        damage(index, &path);
        let info = reel_media::probe(&rig.settings.media, &path).await.unwrap();
        let size_bytes = std::fs::metadata(&path).unwrap().len();
        work_clips.push(WorkClip { index, source_path: job.clip_paths[index].clone(), work_key, size_bytes, info });
    }
    let data = ClipsDownloaded { job, clips: work_clips, skipped_clips: vec![], warnings: vec![] };
    StageHarness::event(types::CLIPS_DOWNLOADED, job_id, &data)
}

/// What stitch does with `event`, through its fan-out: a delivery that re-encodes
/// emits one encode item per clip, which are handled one after another here (in
/// reverse, to show the order does not matter); exactly one of them joins.
async fn stitch_outcome(rig: &StageHarness, event: &Event) -> reel_runtime::Outcome {
    let outcome = rig.run::<Stitch>(event).await;
    let reel_runtime::Outcome::Emit(items) = &outcome else { return outcome };
    if items.iter().any(|e| e.ty() != types::CLIP_ENCODE) {
        return outcome;
    }
    let mut joined = None;
    for item in items.iter().rev() {
        match rig.run::<Stitch>(item).await {
            reel_runtime::Outcome::Emit(next) if next.is_empty() => {}
            other => {
                assert!(joined.is_none(), "a second item joined: {other:?}");
                joined = Some(other);
            }
        }
    }
    joined.expect("one encode item joins the segments")
}

async fn stitch(rig: &StageHarness, event: &Event) -> ReelStitched {
    let events = emitted(stitch_outcome(rig, event).await);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].ty(), types::REEL_STITCHED);
    envelope::decode(&events[0]).unwrap()
}

#[tokio::test]
async fn matching_clips_are_joined_by_stream_copy_and_a_redelivery_reuses_the_reel() {
    let rig = StageHarness::new();
    let event = downloaded(&rig, "job_copy", &[spec(320, 180, 1.0), spec(320, 180, 1.5)], Compression::Original).await;
    let stitched = stitch(&rig, &event).await;
    assert_eq!(stitched.reel.mode, Mode::Copy);
    assert!((stitched.reel.duration_seconds - 2.5).abs() < 0.3, "{}", stitched.reel.duration_seconds);
    let reel = rig.work.local_path(&stitched.work_key).unwrap();
    let info = reel_media::probe(&rig.settings.media, &reel).await.unwrap();
    assert_eq!((info.video.width, info.video.height), (320, 180));
    assert_eq!(std::fs::metadata(&reel).unwrap().len(), stitched.reel.size_bytes);

    let written = std::fs::metadata(&reel).unwrap().modified().unwrap();
    let again = stitch(&rig, &event).await;
    assert_eq!(again.reel, stitched.reel, "the same facts");
    assert_eq!(std::fs::metadata(&reel).unwrap().modified().unwrap(), written, "ffmpeg did not run again");
}

#[tokio::test]
async fn clips_of_different_shapes_are_re_encoded_to_the_orientation() {
    let rig = StageHarness::new();
    let event = downloaded(&rig, "job_mixed", &[spec(320, 180, 1.0), spec(240, 320, 1.0)], Compression::Small).await;
    let stitched = stitch(&rig, &event).await;
    assert_eq!(stitched.reel.mode, Mode::Reencode);
    let info = reel_media::probe(&rig.settings.media, &rig.work.local_path(&stitched.work_key).unwrap()).await.unwrap();
    assert!(info.video.width > info.video.height, "landscape: {}x{}", info.video.width, info.video.height);
    assert!(info.audio.is_some(), "the reel has sound");
}

/// "Corrupt file → skip, continue", for a clip that passes the probe and breaks off
/// mid-stream: it is left out with a warning while two usable clips remain, and the job
/// fails with `insufficient_clips` when they do not.
#[tokio::test]
async fn a_clip_broken_mid_stream_is_skipped_while_two_remain() {
    let rig = StageHarness::new();
    let clips = [spec(320, 180, 1.0), spec(240, 320, 2.0), spec(320, 180, 1.0)];
    let event = downloaded_with(&rig, "job_broken", &clips, Compression::Small, |i, path| {
        if i == 1 {
            fixtures::damage_media(path)
        }
    })
    .await;
    let stitched = stitch(&rig, &event).await;
    assert_eq!(stitched.reel.mode, Mode::Reencode);
    assert_eq!(stitched.skipped_clips.len(), 1, "{:?}", stitched.skipped_clips);
    assert_eq!(stitched.skipped_clips[0].path, "/clips/1.mp4");
    assert!(stitched.skipped_clips[0].reason.contains("mid-stream"), "{}", stitched.skipped_clips[0].reason);
    assert!(stitched.warnings.iter().any(|w| w.contains("/clips/1.mp4")), "{:?}", stitched.warnings);
    assert!((stitched.reel.duration_seconds - 2.0).abs() < 0.2, "{}", stitched.reel.duration_seconds);
    // A redelivery says the same.
    let again = stitch(&rig, &event).await;
    assert_eq!(again.skipped_clips, stitched.skipped_clips);

    let rig = StageHarness::new();
    let event = downloaded_with(&rig, "job_too_few", &clips[..2], Compression::Small, |i, path| {
        if i == 1 {
            fixtures::damage_media(path)
        }
    })
    .await;
    match stitch_outcome(&rig, &event).await {
        reel_runtime::Outcome::Reject(f) => {
            assert_eq!(f.error_type, reel_events::ErrorType::InsufficientClips, "{}", f.message);
            assert!(f.message.contains("/clips/1.mp4"), "{}", f.message);
        }
        other => panic!("expected insufficient_clips, got {other:?}"),
    }
}

/// The fan-out's join without an orchestrator: encode items of one job run at once (as
/// on several instances), a duplicate of one among them; exactly one item joins (with
/// its own duplicate, if that one raced it, saying the same), and a redelivery of that
/// item says the same again while the others stay silent.
#[tokio::test]
async fn encode_items_run_at_once_and_exactly_one_of_them_joins() {
    let rig = StageHarness::new();
    let clips = [spec(320, 180, 1.0), spec(240, 320, 1.0), spec(320, 240, 1.0), spec(180, 320, 1.0)];
    let event = downloaded(&rig, "job_fan_out", &clips, Compression::Small).await;
    let items = emitted(rig.run::<Stitch>(&event).await);
    assert_eq!(items.len(), clips.len(), "one encode item per clip");
    assert!(items.iter().all(|e| e.ty() == types::CLIP_ENCODE));
    let ids: std::collections::BTreeSet<_> = items.iter().map(|e| e.id().to_string()).collect();
    assert_eq!(ids.len(), items.len(), "each item has its own id");

    let mut deliveries: Vec<&Event> = items.iter().collect();
    deliveries.push(&items[1]);
    let outcomes = futures::future::join_all(deliveries.iter().map(|item| rig.run::<Stitch>(item))).await;
    let mut joined = Vec::new();
    for (item, outcome) in deliveries.iter().zip(outcomes) {
        let events = emitted(outcome);
        if !events.is_empty() {
            joined.push((*item, events));
        }
    }
    // One item wins the join; a duplicate delivery of that same item running at once
    // finds its own claim and joins too, with the very same event (same id).
    assert!(!joined.is_empty(), "no item joined");
    let (joiner, events) = &joined[0];
    for (item, again) in &joined[1..] {
        assert_eq!(item.id(), joiner.id(), "two different items joined: {joined:?}");
        assert_eq!(again[0].id(), events[0].id(), "a duplicate join said something else");
    }
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].ty(), types::REEL_STITCHED);
    let stitched: ReelStitched = envelope::decode(&events[0]).unwrap();
    assert_eq!(stitched.reel.mode, Mode::Reencode);
    assert!((stitched.reel.duration_seconds - 4.0).abs() < 0.3, "{}", stitched.reel.duration_seconds);

    let again = emitted(rig.run::<Stitch>(joiner).await);
    assert_eq!(again.len(), 1, "the joiner's redelivery re-emits");
    assert_eq!(envelope::decode::<ReelStitched>(&again[0]).unwrap().reel, stitched.reel);
    for other in items.iter().filter(|e| e.id() != joiner.id()) {
        assert!(emitted(rig.run::<Stitch>(other).await).is_empty(), "only the joiner speaks");
    }
}

/// An encode item of a job that ended meanwhile (cancelled, or failed by another item:
/// the worker cleaned its workspace) does nothing and writes nothing.
#[tokio::test]
async fn an_encode_item_of_a_job_whose_workspace_was_cleaned_writes_nothing() {
    let rig = StageHarness::new();
    let event = downloaded(&rig, "job_gone", &[spec(320, 180, 1.0), spec(240, 320, 1.0)], Compression::Small).await;
    let items = emitted(rig.run::<Stitch>(&event).await);
    assert_eq!(items.len(), 2);
    reel_runtime::store::delete_prefix(rig.work.as_ref(), "jobs/job_gone/").await.unwrap();
    for item in &items {
        match rig.run::<Stitch>(item).await {
            reel_runtime::Outcome::Skip(why) => assert!(why.contains("job ended"), "{why}"),
            other => panic!("expected a skip, got {other:?}"),
        }
    }
    assert!(rig.work.list("jobs/job_gone/").await.unwrap().is_empty(), "an item wrote into the cleaned workspace");
}
