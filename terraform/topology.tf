# The Pub/Sub topology: the same set `reel setup` creates, from Topology::standard in
# services/runtime/src/topology.rs. services/topology-check parses this directory and
# fails when the two differ (names, topics, dead-letter links, retry, ack deadlines,
# retention), so change both together.
#
# Keys are name suffixes; a full name is "${local.prefix}${key}" (reel-events, ...).

locals {
  prefix = var.topic_prefix
  push   = var.delivery_mode == "push"

  # The programs of the stages: the stitching pipeline's five, and the generation job's.
  stages = ["validate", "download", "stitch", "upload", "finalize", "generate"]

  # PUBSUB_MAX_DELIVERY_ATTEMPTS: Pub/Sub's own dead-lettering, the net for crashes and
  # poison messages. A stage gives up earlier, after MAX_RETRY_ATTEMPTS.
  max_delivery_attempts = 10
  min_backoff           = "1s"
  max_backoff           = "60s"
  # Operators peek at dead letters (pull, then release) again and again: a flat 1 s
  # redelivery delay brings a peeked dead letter back at once.
  dead_letter_queue_max_backoff = "1s"
  subscription_retention        = "604800s"  # 7 days
  event_log_retention           = "2678400s" # 31 days: the event log is the job state

  # kind: input (published by clients), log (the event log), work (stage to stage),
  # dead-letter (a stage's dead letters).
  topics = {
    "stitch-requests"      = { kind = "input", retention = null }
    "gcs-notifications"    = { kind = "input", retention = null }
    "events"               = { kind = "log", retention = local.event_log_retention }
    "validate-dead-letter" = { kind = "dead-letter", retention = null }
    "work-download"        = { kind = "work", retention = null }
    "download-dead-letter" = { kind = "dead-letter", retention = null }
    "work-stitch"          = { kind = "work", retention = null }
    "stitch-dead-letter"   = { kind = "dead-letter", retention = null }
    "work-stitch-large"    = { kind = "work", retention = null }
    "encode"               = { kind = "work", retention = null }
    "encode-dead-letter"   = { kind = "dead-letter", retention = null }
    "work-upload"          = { kind = "work", retention = null }
    "upload-dead-letter"   = { kind = "dead-letter", retention = null }
    "work-finalize"        = { kind = "work", retention = null }
    "finalize-dead-letter" = { kind = "dead-letter", retention = null }
    "generate-requests"    = { kind = "input", retention = null }
    "generate-clips"       = { kind = "work", retention = null }
    "generate-dead-letter" = { kind = "dead-letter", retention = null }
  }

  # consumer: the program that reads the subscription (operators read dead letters with
  # `reel dlq`). push: pushed to the consumer's Cloud Run service when delivery_mode is
  # push. exactly_once: what the code asks for; Pub/Sub offers it on pull only, so push
  # subscriptions go without.
  subscriptions = {
    "validate" = {
      topic                = "stitch-requests"
      consumer             = "validate"
      dead_letter          = "validate-dead-letter"
      ack_deadline_seconds = 60
      exactly_once         = true
      push                 = true
    }
    "validate-gcs" = {
      topic                = "gcs-notifications"
      consumer             = "validate"
      dead_letter          = "validate-dead-letter"
      ack_deadline_seconds = 60
      exactly_once         = true
      push                 = true
    }
    "download" = {
      topic                = "work-download"
      consumer             = "download"
      dead_letter          = "download-dead-letter"
      ack_deadline_seconds = 60
      exactly_once         = true
      push                 = true
    }
    "stitch" = {
      topic                = "work-stitch"
      consumer             = "stitch"
      dead_letter          = "stitch-dead-letter"
      ack_deadline_seconds = 120
      exactly_once         = true
      push                 = true
    }
    # The larger stitch tier: stitch work that ran out of memory or disk on the standard
    # service (docs/OPERATIONS.md, "resource_exhausted: the larger-memory tier").
    "stitch-large" = {
      topic                = "work-stitch-large"
      consumer             = "stitch-large"
      dead_letter          = "stitch-dead-letter"
      ack_deadline_seconds = 120
      exactly_once         = true
      push                 = true
    }
    # Stitch's fan-out: one item per clip to re-encode, consumed by the stitch service
    # itself, with dead letters of its own (`reel dlq list encode`). One item is one
    # clip's encode, the longest delivery there is (up to REEL_MAX_CLIP_SECONDS = 600 s
    # of video, about 300 s on 2 vCPU): Pub/Sub's longest ack deadline, as push mode
    # cannot extend it (docs/OPERATIONS.md, "Every delivery is bounded").
    "encode" = {
      topic                = "encode"
      consumer             = "stitch"
      dead_letter          = "encode-dead-letter"
      ack_deadline_seconds = 600
      exactly_once         = true
      push                 = true
    }
    "upload" = {
      topic                = "work-upload"
      consumer             = "upload"
      dead_letter          = "upload-dead-letter"
      ack_deadline_seconds = 60
      exactly_once         = true
      push                 = true
    }
    "finalize" = {
      topic                = "work-finalize"
      consumer             = "finalize"
      dead_letter          = "finalize-dead-letter"
      ack_deadline_seconds = 60
      exactly_once         = true
      push                 = true
    }
    # The generation job: requests, then one item per prompt, consumed by the generate
    # service itself. An item polls Veo for up to REEL_DELIVERY_BUDGET_SECONDS (480)
    # before handing itself back: Pub/Sub's longest ack deadline, as push mode cannot
    # extend it. Requests and items share one dead-letter topic (`reel dlq list generate`).
    "generate" = {
      topic                = "generate-requests"
      consumer             = "generate"
      dead_letter          = "generate-dead-letter"
      ack_deadline_seconds = 60
      exactly_once         = true
      push                 = true
    }
    "generate-clips" = {
      topic                = "generate-clips"
      consumer             = "generate"
      dead_letter          = "generate-dead-letter"
      ack_deadline_seconds = 600
      exactly_once         = true
      push                 = true
    }
    "generate-dead-letter" = {
      topic                = "generate-dead-letter"
      consumer             = "operators"
      dead_letter          = null
      ack_deadline_seconds = 60
      exactly_once         = false
      push                 = false
    }
    # The state service folds the log; a poison event there is skipped, not dead-lettered.
    "api" = {
      topic                = "events"
      consumer             = "api"
      dead_letter          = null
      ack_deadline_seconds = 60
      exactly_once         = false
      push                 = false
    }
    "validate-dead-letter" = {
      topic                = "validate-dead-letter"
      consumer             = "operators"
      dead_letter          = null
      ack_deadline_seconds = 60
      exactly_once         = false
      push                 = false
    }
    "download-dead-letter" = {
      topic                = "download-dead-letter"
      consumer             = "operators"
      dead_letter          = null
      ack_deadline_seconds = 60
      exactly_once         = false
      push                 = false
    }
    "stitch-dead-letter" = {
      topic                = "stitch-dead-letter"
      consumer             = "operators"
      dead_letter          = null
      ack_deadline_seconds = 60
      exactly_once         = false
      push                 = false
    }
    "encode-dead-letter" = {
      topic                = "encode-dead-letter"
      consumer             = "operators"
      dead_letter          = null
      ack_deadline_seconds = 60
      exactly_once         = false
      push                 = false
    }
    "upload-dead-letter" = {
      topic                = "upload-dead-letter"
      consumer             = "operators"
      dead_letter          = null
      ack_deadline_seconds = 60
      exactly_once         = false
      push                 = false
    }
    "finalize-dead-letter" = {
      topic                = "finalize-dead-letter"
      consumer             = "operators"
      dead_letter          = null
      ack_deadline_seconds = 60
      exactly_once         = false
      push                 = false
    }
  }

  dead_letter_topics        = { for key, topic in local.topics : key => topic if topic.kind == "dead-letter" }
  dead_lettering_subs       = { for key, sub in local.subscriptions : key => sub if sub.dead_letter != null }
  dead_letter_subscriptions = { for key, sub in local.subscriptions : key => sub if sub.consumer == "operators" }

  # The Pub/Sub service agent: it forwards dead letters and signs push requests.
  pubsub_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}
