# Everything a deployment may choose. Defaults give the standard topology (CONTRACT §3)
# with stages as Cloud Run services fed by push subscriptions.

variable "project" {
  description = "Google Cloud project id everything is created in."
  type        = string
}

variable "region" {
  description = "Region of Cloud Run, Artifact Registry and (unless bucket_location is set) the buckets."
  type        = string
  default     = "us-central1"
}

variable "topic_prefix" {
  description = "Prefix of every topic, subscription, Cloud Run service and service account (REEL_TOPIC_PREFIX of the programs)."
  type        = string
  default     = "reel-"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,14}$", var.topic_prefix))
    error_message = "topic_prefix must start with a letter, use a-z, 0-9 and '-', and be at most 15 characters (service account ids are at most 30)."
  }
}

# ---------------------------------------------------------------------------------------
# Buckets. Empty names are derived from the project: PROJECT-reel-uploads, and so on.

variable "uploads_bucket" {
  description = "Bucket clips and manifests are uploaded to; manifests/ objects start jobs. Empty: PROJECT-reel-uploads."
  type        = string
  default     = ""
}

variable "outputs_bucket" {
  description = "Bucket finished reels are written to. Empty: PROJECT-reel-outputs."
  type        = string
  default     = ""
}

variable "work_bucket" {
  description = "Bucket of the jobs' intermediate files (REEL_WORK_ROOT=gs://WORK/work). Empty: PROJECT-reel-work."
  type        = string
  default     = ""
}

variable "bucket_location" {
  description = "Location of the buckets. Empty: the region."
  type        = string
  default     = ""
}

variable "work_scratch_days" {
  description = "Jobs' workspaces (work/jobs/ in the work bucket) are deleted this many days after they were written. Finalize and a permanent failure remove them at once; a job whose message was dead-lettered keeps its workspace for `reel dlq replay`, so keep this at the dead letters' retention (7 days, services/runtime/src/topology.rs)."
  type        = number
  default     = 7
}

variable "work_control_days" {
  description = "Control objects (work/control/: completion and cancel markers, project locks, reel-api's snapshot and journal) are deleted this many days after they were last written. Completion markers let validate and `reel dlq replay` skip finished jobs, so keep this above the event log's 31 days."
  type        = number
  default     = 35
}
# ---------------------------------------------------------------------------------------
# Images.

variable "artifact_repository" {
  description = "Artifact Registry (Docker) repository id the images are pushed to."
  type        = string
  default     = "reel"
}

variable "image_registry" {
  description = "Registry path of the images. Empty: REGION-docker.pkg.dev/PROJECT/ARTIFACT_REPOSITORY."
  type        = string
  default     = ""
}

variable "image_tag" {
  description = "Tag of every program image (scripts/deploy.sh sets the git commit)."
  type        = string
  default     = "latest"
}

variable "image_tags" {
  description = "Per-program tag overrides, keyed validate, download, stitch, upload, finalize, api."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------------------------------
# How the stages run.

variable "delivery_mode" {
  description = "push: each stage is a Cloud Run service fed by push subscriptions (OIDC). pull: each stage is a Cloud Run job that pulls until idle, started by Cloud Scheduler; subscriptions get exactly-once delivery."
  type        = string
  default     = "push"

  validation {
    condition     = contains(["push", "pull"], var.delivery_mode)
    error_message = "delivery_mode must be push or pull."
  }
}

variable "stage_ingress" {
  description = "Ingress of the stage services. Pub/Sub push from the same project counts as internal traffic."
  type        = string
  default     = "INGRESS_TRAFFIC_INTERNAL_ONLY"
}

variable "stitch_cpu" {
  description = "vCPUs of a stitch instance."
  type        = string
  default     = "2"
}

variable "stitch_memory" {
  description = "Memory of a stitch instance (its scratch files live in memory too). Raise to 8Gi for jobs that die with resource_exhausted; see docs/OPERATIONS.md."
  type        = string
  default     = "4Gi"
}

variable "stitch_large_cpu" {
  description = "vCPUs of an instance of the larger stitch tier (Cloud Run needs 4 for more than 8Gi)."
  type        = string
  default     = "2"
}

variable "stitch_large_memory" {
  description = "Memory of an instance of the larger stitch tier, which retries stitch work that ran out of memory or disk on the standard one."
  type        = string
  default     = "8Gi"
}

variable "max_instances" {
  description = "Upper bound of instances per stage service."
  type        = number
  default     = 10
}

variable "stitch_max_instances" {
  description = "Upper bound of instances of the stitch service: a re-encode fans out one delivery per clip, so up to this many of a job's clips encode at once."
  type        = number
  default     = 20
}

variable "exit_when_idle_seconds" {
  description = "Pull mode: a stage job exits after its subscriptions stayed empty this long (--exit-when-idle)."
  type        = number
  default     = 60
}

variable "pull_schedule" {
  description = "Pull mode: cron schedule on which Cloud Scheduler starts each stage job."
  type        = string
  default     = "* * * * *"
}

variable "pull_task_timeout_seconds" {
  description = "Pull mode: longest run of one stage job execution."
  type        = number
  default     = 3600
}

# ---------------------------------------------------------------------------------------
# Program settings (CONTRACT §7).

variable "job_timeout_minutes" {
  description = "JOB_TIMEOUT_MINUTES: a job not finished this long after it was accepted fails with timeout."
  type        = number
  default     = 15
}

variable "generate_timeout_minutes" {
  description = "REEL_GENERATE_TIMEOUT_MINUTES: a generation job (clips from prompts) not finished this long after it was accepted fails with timeout (the original design: 30)."
  type        = number
  default     = 30
}

variable "max_retry_attempts" {
  description = "MAX_RETRY_ATTEMPTS: retries of a transient failure before a stage gives up."
  type        = number
  default     = 3
}

variable "log_level" {
  description = "LOG_LEVEL of every program."
  type        = string
  default     = "info"
}

variable "api_allow_unauthenticated" {
  description = "Let anyone on the internet reach reel-api (roles/run.invoker for allUsers). reel-api still checks every token and refuses unknown callers (docs/API.md, Identity); false (the default): only api_trusted_callers and api_users get through Cloud Run."
  type        = bool
  default     = false
}

variable "api_trusted_callers" {
  description = "IAM members (serviceAccount:... or user:...) that call reel-api for end users, naming the user in X-Reel-User (Phoenix's service account). Granted roles/run.invoker on reel-api; their emails are its REEL_API_TRUSTED_CALLERS."
  type        = list(string)
  default     = []

  validation {
    condition     = length([for member in var.api_trusted_callers : member if !(startswith(member, "serviceAccount:") || startswith(member, "user:"))]) == 0
    error_message = "api_trusted_callers: each member is serviceAccount:EMAIL or user:EMAIL (a token proves one account, not a group)."
  }
}

variable "api_users" {
  description = "IAM members (user:..., serviceAccount:..., domain:...) who call reel-api as themselves. Granted roles/run.invoker on reel-api; their emails (domain:D as *@D) are its REEL_API_USERS."
  type        = list(string)
  default     = []

  validation {
    condition     = length([for member in var.api_users : member if !(startswith(member, "serviceAccount:") || startswith(member, "user:") || startswith(member, "domain:"))]) == 0
    error_message = "api_users: each member is user:EMAIL, serviceAccount:EMAIL or domain:DOMAIN (group membership is not in a token)."
  }
}

variable "api_audience" {
  description = "REEL_API_AUDIENCE: the audience reel-api accepts in callers' Google ID tokens. Empty: its deterministic URL, https://PREFIXapi-PROJECT_NUMBER.REGION.run.app."
  type        = string
  default     = ""
}

variable "api_env" {
  description = "Extra environment of reel-api (for example its token audience), merged over the common settings."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------------------------------
# Operations.

variable "operators" {
  description = "IAM members (user:..., group:...) who list and replay dead letters: subscriber on the dead-letter subscriptions, publisher on the stages' input topics, reader of the work bucket."
  type        = list(string)
  default     = []
}

variable "requesters" {
  description = "IAM members (for example Phoenix's service account) allowed to publish stitch.requested to the requests topic."
  type        = list(string)
  default     = []
}

variable "event_subscribers" {
  description = "IAM members (for example Phoenix's service account) allowed to attach their own subscriptions to the event log (reel-events), to follow jobs by ce-type."
  type        = list(string)
  default     = []
}

variable "notification_channels" {
  description = "Cloud Monitoring notification channel ids (projects/P/notificationChannels/N) the alerts go to."
  type        = list(string)
  default     = []
}

variable "failure_rate_alert_percent" {
  description = "Alert when more than this percentage of the jobs that ended in an hour failed."
  type        = number
  default     = 5
}

variable "duration_alert_minutes" {
  description = "Alert when one stage works on one job longer than this."
  type        = number
  default     = 10
}

variable "memory_alert_percent" {
  description = "Alert when an instance uses more than this percentage of its memory."
  type        = number
  default     = 90
}

variable "backlog_alert_messages" {
  description = "Alert when a dead-letter queue, or (for 10 minutes) a stage's subscription, holds more than this many messages."
  type        = number
  default     = 10
}

variable "enable_apis" {
  description = "Enable the Google APIs reel needs."
  type        = bool
  default     = true
}
