# Buckets: uploads (clips and manifests), outputs (finished reels), work (the jobs'
# intermediate files, deleted after a week: as long as a dead-lettered job may be
# replayed from them), and the notification that turns a manifest
# upload into a job (CONTRACT §4).

locals {
  buckets = {
    uploads = var.uploads_bucket != "" ? var.uploads_bucket : "${var.project}-reel-uploads"
    outputs = var.outputs_bucket != "" ? var.outputs_bucket : "${var.project}-reel-outputs"
    work    = var.work_bucket != "" ? var.work_bucket : "${var.project}-reel-work"
  }
  bucket_location = var.bucket_location != "" ? var.bucket_location : var.region

  # REEL_WORK_ROOT is gs://WORK_BUCKET/work: jobs' workspaces are work/jobs/JOB/, control
  # objects work/control/ (services/runtime/src/stage.rs, lock.rs).
  work_prefix = "work"
  work_lifecycle = {
    "jobs/"    = var.work_scratch_days
    "control/" = var.work_control_days
  }
}

resource "google_storage_bucket" "bucket" {
  for_each = local.buckets

  name                        = each.value
  location                    = local.bucket_location
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  # Work files are scratch: no soft-delete copies; workspaces gone a week after they were
  # written (finalize removes a job's files at once; a dead-lettered job keeps them for a
  # replay as long as its dead letter is kept; this also catches what a crash left).
  dynamic "soft_delete_policy" {
    for_each = each.key == "work" ? [1] : []
    content {
      retention_duration_seconds = 0
    }
  }

  dynamic "lifecycle_rule" {
    for_each = { for prefix, days in local.work_lifecycle : prefix => days if each.key == "work" }
    content {
      condition {
        age            = lifecycle_rule.value
        matches_prefix = ["${local.work_prefix}/${lifecycle_rule.key}"]
      }
      action {
        type = "Delete"
      }
    }
  }

  depends_on = [google_project_service.enabled]
}

# The Cloud Storage service agent publishes the notifications.
resource "google_pubsub_topic_iam_member" "gcs_notifications_publisher" {
  topic  = google_pubsub_topic.topic["gcs-notifications"].name
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

resource "google_storage_notification" "manifests" {
  bucket             = google_storage_bucket.bucket["uploads"].name
  topic              = google_pubsub_topic.topic["gcs-notifications"].id
  payload_format     = "JSON_API_V1"
  event_types        = ["OBJECT_FINALIZE"]
  object_name_prefix = "manifests/"

  depends_on = [google_pubsub_topic_iam_member.gcs_notifications_publisher]
}
