# One service account per program, each with only what its code does:
# - subscriber (and viewer: pull mode reads the subscription's ack deadline) on the
#   subscriptions it consumes;
# - publisher on the topics it publishes to: the next stage's work topic, the event log,
#   and its own dead-letter topic (the stage dead-letters with the reason attached);
# - object access on the buckets it touches, nothing project-wide.
# The Cloud Run service agent pulls the images; logs go to Cloud Logging from stdout.

locals {
  programs = {
    validate = {
      title         = "reel-validate: checks requests and manifests, takes the project lock"
      subscriptions = ["validate", "validate-gcs"]
      publishes     = ["work-download", "events", "validate-dead-letter"]
      buckets       = { uploads = "read", work = "write" }
    }
    download = {
      title         = "reel-download: copies clips into the workspace and probes them"
      subscriptions = ["download"]
      publishes     = ["work-stitch", "events", "download-dead-letter"]
      # Clips may lie in any allowed root (REEL_ALLOWED_ROOTS): uploads and outputs.
      buckets = { uploads = "read", outputs = "read", work = "write" }
    }
    # Also the identity of the larger stitch tier (the stitch-large service), which reads
    # its own subscription; the standard tier sends work there. Stitch fans a re-encode
    # out to itself: one item per clip on "encode".
    stitch = {
      title         = "reel-stitch: joins the clips, re-encoding them one clip per delivery when needed"
      subscriptions = ["stitch", "stitch-large", "encode"]
      publishes     = ["work-upload", "events", "stitch-dead-letter", "work-stitch-large", "encode", "encode-dead-letter"]
      buckets       = { work = "write" }
    }
    upload = {
      title         = "reel-upload: writes the reel to its output path"
      subscriptions = ["upload"]
      publishes     = ["work-finalize", "events", "upload-dead-letter"]
      buckets       = { work = "write", outputs = "write" }
    }
    finalize = {
      title         = "reel-finalize: announces job.completed, cleans the workspace"
      subscriptions = ["finalize"]
      publishes     = ["events", "finalize-dead-letter"]
      buckets       = { work = "write" }
    }
    # The only program that may call Vertex AI (roles/aiplatform.user, below). Veo writes
    # the clips into the outputs bucket itself, as the Vertex AI service agent.
    generate = {
      title         = "reel-generate: clips from prompts with Veo, then the reel's stitch request"
      subscriptions = ["generate", "generate-clips"]
      publishes     = ["generate-clips", "events", "generate-dead-letter", "stitch-requests"]
      buckets       = { outputs = "read", work = "write" }
    }
    api = {
      title         = "reel-api: job status from the event log, submit and cancel"
      subscriptions = ["api"]
      publishes     = ["stitch-requests", "events"]
      # Cancel markers, project locks, and its state snapshots.
      buckets = { work = "write" }
    }
  }

  bucket_roles = {
    read  = "roles/storage.objectViewer"
    write = "roles/storage.objectUser"
  }

  program_subscriptions = {
    for pair in flatten([
      for program, spec in local.programs : [
        for sub in spec.subscriptions : { key = "${program}/${sub}", program = program, subscription = sub }
      ]
    ]) : pair.key => pair
  }

  program_publications = {
    for pair in flatten([
      for program, spec in local.programs : [
        for topic in spec.publishes : { key = "${program}/${topic}", program = program, topic = topic }
      ]
    ]) : pair.key => pair
  }

  program_buckets = {
    for pair in flatten([
      for program, spec in local.programs : [
        for bucket, access in spec.buckets : { key = "${program}/${bucket}", program = program, bucket = bucket, role = local.bucket_roles[access] }
      ]
    ]) : pair.key => pair
  }
}

resource "google_service_account" "program" {
  for_each = local.programs

  account_id   = "${local.prefix}${each.key}"
  display_name = each.value.title

  depends_on = [google_project_service.enabled]
}

resource "google_pubsub_subscription_iam_member" "program_subscriber" {
  for_each = local.program_subscriptions

  subscription = google_pubsub_subscription.sub[each.value.subscription].name
  role         = "roles/pubsub.subscriber"
  member       = "serviceAccount:${google_service_account.program[each.value.program].email}"
}

resource "google_pubsub_subscription_iam_member" "program_viewer" {
  for_each = local.program_subscriptions

  subscription = google_pubsub_subscription.sub[each.value.subscription].name
  role         = "roles/pubsub.viewer"
  member       = "serviceAccount:${google_service_account.program[each.value.program].email}"
}

resource "google_pubsub_topic_iam_member" "program_publisher" {
  for_each = local.program_publications

  topic  = google_pubsub_topic.topic[each.value.topic].name
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.program[each.value.program].email}"
}

resource "google_storage_bucket_iam_member" "program_objects" {
  for_each = local.program_buckets

  bucket = google_storage_bucket.bucket[each.value.bucket].name
  role   = each.value.role
  member = "serviceAccount:${google_service_account.program[each.value.program].email}"
}

# ---------------------------------------------------------------------------------------
# Operators: `reel dlq list|replay STAGE` peeks and drains a dead-letter subscription,
# republishes to the stage's input topic, and skips jobs whose completion marker is in
# the work bucket.

locals {
  operator_subscriptions = {
    for pair in flatten([
      for member in var.operators : [
        for sub in keys(local.dead_letter_subscriptions) : [
          for role in ["roles/pubsub.subscriber", "roles/pubsub.viewer"] : { key = "${member}/${sub}/${role}", member = member, subscription = sub, role = role }
        ]
      ]
    ]) : pair.key => pair
  }

  operator_topics = {
    for pair in flatten([
      for member in var.operators : [
        for topic, spec in local.topics : { key = "${member}/${topic}", member = member, topic = topic } if contains(["input", "work"], spec.kind)
      ]
    ]) : pair.key => pair
  }
}

resource "google_pubsub_subscription_iam_member" "operator_dead_letters" {
  for_each = local.operator_subscriptions

  subscription = google_pubsub_subscription.sub[each.value.subscription].name
  role         = each.value.role
  member       = each.value.member
}

resource "google_pubsub_topic_iam_member" "operator_replay" {
  for_each = local.operator_topics

  topic  = google_pubsub_topic.topic[each.value.topic].name
  role   = "roles/pubsub.publisher"
  member = each.value.member
}

resource "google_storage_bucket_iam_member" "operator_work_reader" {
  for_each = toset(var.operators)

  bucket = google_storage_bucket.bucket["work"].name
  role   = "roles/storage.objectViewer"
  member = each.value
}

# ---------------------------------------------------------------------------------------
# Callers: Phoenix publishes requests and follows the event log with a subscription of
# its own (CONTRACT §3).

resource "google_pubsub_topic_iam_member" "requesters" {
  for_each = toset(var.requesters)

  topic  = google_pubsub_topic.topic["stitch-requests"].name
  role   = "roles/pubsub.publisher"
  member = each.value
}

resource "google_pubsub_topic_iam_member" "event_subscribers" {
  for_each = toset(var.event_subscribers)

  topic  = google_pubsub_topic.topic["events"].name
  role   = "roles/pubsub.subscriber"
  member = each.value
}

# Veo on Vertex AI: the generate program alone may call it, and Vertex AI's service agent
# writes the generated clips into the outputs bucket (the request's storageUri).
resource "google_project_iam_member" "generate_vertex_ai" {
  project = var.project
  role    = "roles/aiplatform.user"
  member  = "serviceAccount:${google_service_account.program["generate"].email}"
}

resource "google_storage_bucket_iam_member" "vertex_ai_writes_clips" {
  bucket = google_storage_bucket.bucket["outputs"].name
  role   = "roles/storage.objectCreator"
  member = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-aiplatform.iam.gserviceaccount.com"

  depends_on = [google_project_service.enabled]
}
