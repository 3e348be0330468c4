//! The stitch handler on its own, with real clips and real ffmpeg: the plan (copy or
//! re-encode), the reel it leaves in the workspace, and a redelivery that reuses it.

use chrono::Utc;
use reel_events::payload::{ClipsDownloaded, JobRef, JobSpec, ReelStitched, WorkClip};
use reel_events::{envelope, types, AttributesReader, Compression, Event, Mode, Orientation, Stage};
use reel_media::SampleSpec;
use reel_runtime::embedded::DirStore;
use reel_runtime::local::LocalResolver;
use reel_runtime::stage::{Context, FromSettings, Handler, Outcome};
use reel_runtime::{Settings, Store};
use std::sync::Arc;

struct Rig {
    _dir: tempfile::TempDir,
    work: Arc<DirStore>,
    settings: Settings,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let work = Arc::new(DirStore::new(dir.path().join("work")).unwrap());
    let settings = Settings { temp_dir: dir.path().join("tmp"), ..Settings::default() };
    Rig { _dir: dir, work, settings }
}

fn spec(width: u32, height: u32, seconds: f64) -> SampleSpec {
    SampleSpec { width, height, seconds, fps: 10, audio: true, label: String::new() }
}

impl Rig {
    /// Clips as download leaves them: in the workspace, probed.
    async fn downloaded(&self, job_id: &str, clips: &[SampleSpec], compression: Compression) -> (JobSpec, Event) {
        let now = Utc::now();
        let job = JobSpec {
            job_id: job_id.into(),
            project_id: "proj_s".into(),
            user_id: "user_s".into(),
            clip_paths: (0..clips.len()).map(|i| format!("/clips/{i}.mp4")).collect(),
            output_path: "/reels/out.mp4".into(),
            orientation: Orientation::Landscape,
            compression,
            retry_attempt: 0,
            force_restart: false,
            accepted_at: now,
            deadline: now + chrono::Duration::minutes(15),
        };
        let mut work_clips = Vec::new();
        for (index, clip) in clips.iter().enumerate() {
            let work_key = format!("jobs/{job_id}/clips/{index:03}.mp4");
            let path = self.work.local_path(&work_key).unwrap();
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            reel_media::make_sample_clip(&self.settings.media, &path, clip).await.unwrap();
            let info = reel_media::probe(&self.settings.media, &path).await.unwrap();
            let size_bytes = std::fs::metadata(&path).unwrap().len();
            work_clips.push(WorkClip { index, source_path: job.clip_paths[index].clone(), work_key, size_bytes, info });
        }
        let data = ClipsDownloaded { job: job.clone(), clips: work_clips, skipped_clips: vec![], warnings: vec![] };
        let event =
            envelope::build(types::CLIPS_DOWNLOADED, "//reel/download", format!("d-{job_id}"), job_id, now, &data)
                .unwrap();
        (job, event)
    }

    async fn run(&self, job: &JobSpec, event: &Event) -> ReelStitched {
        let ctx = Context::standalone(
            Stage::Stitch,
            self.settings.boundary(),
            self.work.clone(),
            Arc::new(LocalResolver::new()),
            JobRef::from(job),
        );
        match reel_stitch::Stitch::from_settings(&self.settings).handle(&ctx, event).await {
            Outcome::Emit(events) => {
                assert_eq!(events.len(), 1);
                assert_eq!(events[0].ty(), types::REEL_STITCHED);
                envelope::decode(&events[0]).unwrap()
            }
            other => panic!("stitch did not emit: {other:?}"),
        }
    }
}

#[tokio::test]
async fn matching_clips_are_joined_by_stream_copy_and_a_redelivery_reuses_the_reel() {
    let rig = rig();
    let (job, event) =
        rig.downloaded("job_copy", &[spec(320, 180, 1.0), spec(320, 180, 1.5)], Compression::Original).await;
    let stitched = rig.run(&job, &event).await;
    assert_eq!(stitched.reel.mode, Mode::Copy);
    assert!((stitched.reel.duration_seconds - 2.5).abs() < 0.3, "{}", stitched.reel.duration_seconds);
    let reel = rig.work.local_path(&stitched.work_key).unwrap();
    let info = reel_media::probe(&rig.settings.media, &reel).await.unwrap();
    assert_eq!((info.video.width, info.video.height), (320, 180));
    assert_eq!(std::fs::metadata(&reel).unwrap().len(), stitched.reel.size_bytes);

    let written = std::fs::metadata(&reel).unwrap().modified().unwrap();
    let again = rig.run(&job, &event).await;
    assert_eq!(again.reel, stitched.reel, "the same facts");
    assert_eq!(std::fs::metadata(&reel).unwrap().modified().unwrap(), written, "ffmpeg did not run again");
}

#[tokio::test]
async fn clips_of_different_shapes_are_re_encoded_to_the_orientation() {
    let rig = rig();
    let (job, event) =
        rig.downloaded("job_mixed", &[spec(320, 180, 1.0), spec(240, 320, 1.0)], Compression::Small).await;
    let stitched = rig.run(&job, &event).await;
    assert_eq!(stitched.reel.mode, Mode::Reencode);
    let info = reel_media::probe(&rig.settings.media, &rig.work.local_path(&stitched.work_key).unwrap()).await.unwrap();
    assert!(info.video.width > info.video.height, "landscape: {}x{}", info.video.width, info.video.height);
    assert!(info.audio.is_some(), "the reel has sound");
}
