# Artifact Registry and Cloud Run: the five stages, as services fed by push subscriptions
# (delivery_mode = "push", the default) or as jobs that pull until idle (delivery_mode =
# "pull", started by Cloud Scheduler), and reel-api as a service.

locals {
  registry = var.image_registry != "" ? var.image_registry : "${var.region}-docker.pkg.dev/${var.project}/${var.artifact_repository}"

  # Image names are the program names (CONTRACT §1), whatever the topic prefix.
  images = {
    for program in concat(local.stages, ["api"]) :
    program => "${local.registry}/reel-${program}:${lookup(var.image_tags, program, var.image_tag)}"
  }

  # The original sizing: stitch 2 vCPU / 4 GiB / 15 minutes, the others smaller. Cloud Run
  # keeps /tmp in memory, so memory also holds the scratch files: download probes one
  # clip at a time, stitch holds the clips and the reel. stitch-large is the larger tier:
  # the same program on its own subscription, fed by the standard stitch with the work
  # that ran out of memory or disk there (REEL_LARGE_TIER), so that work is retried with
  # more memory instead of at the same size. Scaled to zero, it costs nothing until used.
  # A re-encode fans out one delivery per clip, so stitch scales out to as many
  # instances as a job has clips, up to var.stitch_max_instances (20).
  stage_sizing = {
    validate       = { program = "validate", cpu = "1", memory = "512Mi", timeout_seconds = 300, concurrency = 8, env = {}, max_instances = var.max_instances }
    download       = { program = "download", cpu = "1", memory = "2Gi", timeout_seconds = 600, concurrency = 1, env = {}, max_instances = var.max_instances }
    stitch         = { program = "stitch", cpu = var.stitch_cpu, memory = var.stitch_memory, timeout_seconds = 900, concurrency = 1, env = { REEL_LARGE_TIER = "true" }, max_instances = var.stitch_max_instances }
    "stitch-large" = { program = "stitch", cpu = var.stitch_large_cpu, memory = var.stitch_large_memory, timeout_seconds = 900, concurrency = 1, env = { REEL_TIER = "large" }, max_instances = var.max_instances }
    upload         = { program = "upload", cpu = "1", memory = "512Mi", timeout_seconds = 600, concurrency = 4, env = {}, max_instances = var.max_instances }
    finalize       = { program = "finalize", cpu = "1", memory = "512Mi", timeout_seconds = 300, concurrency = 8, env = {}, max_instances = var.max_instances }
    # The generation job waits on Veo (I/O bound): many prompts per instance, 2 GiB as the
    # original design sized it, a request timeout above the items' 600 s ack deadline.
    generate = { program = "generate", cpu = "1", memory = "2Gi", timeout_seconds = 660, concurrency = 10, env = { REEL_GENERATOR = "veo", REEL_GENERATE_TIMEOUT_MINUTES = tostring(var.generate_timeout_minutes) }, max_instances = var.max_instances }
  }

  # CONTRACT §7. PORT is set by Cloud Run itself.
  common_env = {
    GOOGLE_CLOUD_PROJECT = var.project
    VIDEO_STORAGE_BUCKET = local.buckets.uploads
    JOB_TIMEOUT_MINUTES  = tostring(var.job_timeout_minutes)
    MAX_RETRY_ATTEMPTS   = tostring(var.max_retry_attempts)
    LOG_LEVEL            = var.log_level
    METRICS_ENABLED      = "true"
    TEMP_DIR             = "/tmp/reel"
    REEL_TOPIC_PREFIX    = var.topic_prefix
    REEL_WORK_ROOT       = "gs://${local.buckets.work}/${local.work_prefix}"
    REEL_ALLOWED_ROOTS   = "gs://${local.buckets.uploads},gs://${local.buckets.outputs}"
  }

  # Callers' ID tokens name reel-api's URL as audience unless told otherwise. Who may call
  # (docs/API.md, Identity): the members' emails, without their IAM type.
  api_audience        = var.api_audience != "" ? var.api_audience : "https://${local.prefix}api-${data.google_project.this.number}.${var.region}.run.app"
  api_trusted_callers = [for member in var.api_trusted_callers : replace(replace(member, "serviceAccount:", ""), "user:", "")]
  api_users           = [for member in var.api_users : replace(replace(replace(member, "serviceAccount:", ""), "user:", ""), "domain:", "*@")]

  api_env = merge(local.common_env, {
    REEL_API_AUDIENCE        = local.api_audience
    REEL_API_TRUSTED_CALLERS = join(",", local.api_trusted_callers)
    REEL_API_USERS           = join(",", local.api_users)
  }, var.api_env)

  # Cloud Run gives a stopping instance 10 s after SIGTERM: in-flight work gets 8 to
  # finish, then is stopped and nacked for redelivery.
  grace_args = ["--grace", "8"]
}

resource "google_artifact_registry_repository" "images" {
  location      = var.region
  repository_id = var.artifact_repository
  format        = "DOCKER"
  description   = "reel program images"

  depends_on = [google_project_service.enabled]
}

# ---------------------------------------------------------------------------------------
# Push mode: a service per stage, invoked only by the push service account.

resource "google_cloud_run_v2_service" "stage" {
  for_each = { for stage, size in local.stage_sizing : stage => size if local.push }

  name                = "${local.prefix}${each.key}"
  location            = var.region
  ingress             = var.stage_ingress
  deletion_protection = false

  template {
    service_account                  = google_service_account.program[each.value.program].email
    timeout                          = "${each.value.timeout_seconds}s"
    max_instance_request_concurrency = each.value.concurrency
    execution_environment            = "EXECUTION_ENVIRONMENT_GEN2"

    scaling {
      min_instance_count = 0
      max_instance_count = each.value.max_instances
    }

    containers {
      image = local.images[each.value.program]
      args  = concat(["--push"], local.grace_args)

      resources {
        limits = {
          cpu    = each.value.cpu
          memory = each.value.memory
        }
        cpu_idle          = true
        startup_cpu_boost = true
      }

      dynamic "env" {
        for_each = merge(local.common_env, each.value.env, { REEL_INSTANCE_VCPUS = each.value.cpu, REEL_INSTANCE_MEMORY = each.value.memory })
        content {
          name  = env.key
          value = env.value
        }
      }

      startup_probe {
        http_get {
          path = "/healthz"
        }
      }
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_service_account" "push" {
  count = local.push ? 1 : 0

  account_id   = "${local.prefix}pubsub-push"
  display_name = "reel: identity of Pub/Sub push requests to the stages"
}

# Pub/Sub mints the push requests' OIDC tokens as the push account.
resource "google_service_account_iam_member" "push_token_creator" {
  count = local.push ? 1 : 0

  service_account_id = google_service_account.push[0].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
}

resource "google_cloud_run_v2_service_iam_member" "push_invoker" {
  for_each = google_cloud_run_v2_service.stage

  project  = var.project
  location = each.value.location
  name     = each.value.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.push[0].email}"
}

# ---------------------------------------------------------------------------------------
# Pull mode: a job per stage, started every minute by Cloud Scheduler; each execution
# pulls until its subscriptions stayed empty for exit_when_idle_seconds. While a backlog
# lasts, every tick adds one more worker.

resource "google_cloud_run_v2_job" "stage" {
  for_each = { for stage, size in local.stage_sizing : stage => size if !local.push }

  name                = "${local.prefix}${each.key}"
  location            = var.region
  deletion_protection = false

  template {
    task_count  = 1
    parallelism = 1

    template {
      service_account       = google_service_account.program[each.value.program].email
      timeout               = "${var.pull_task_timeout_seconds}s"
      max_retries           = 0
      execution_environment = "EXECUTION_ENVIRONMENT_GEN2"

      containers {
        image = local.images[each.value.program]
        args  = concat(["--exit-when-idle", tostring(var.exit_when_idle_seconds)], local.grace_args)

        resources {
          limits = {
            cpu    = each.value.cpu
            memory = each.value.memory
          }
        }

        dynamic "env" {
          for_each = merge(local.common_env, each.value.env, { REEL_INSTANCE_VCPUS = each.value.cpu, REEL_INSTANCE_MEMORY = each.value.memory })
          content {
            name  = env.key
            value = env.value
          }
        }
      }
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_service_account" "scheduler" {
  count = local.push ? 0 : 1

  account_id   = "${local.prefix}scheduler"
  display_name = "reel: starts the stage jobs in pull mode"
}

resource "google_cloud_run_v2_job_iam_member" "scheduler_runs" {
  for_each = google_cloud_run_v2_job.stage

  project  = var.project
  location = each.value.location
  name     = each.value.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.scheduler[0].email}"
}

resource "google_cloud_scheduler_job" "stage" {
  for_each = google_cloud_run_v2_job.stage

  name             = "${each.value.name}-pull"
  region           = var.region
  schedule         = var.pull_schedule
  attempt_deadline = "30s"

  http_target {
    http_method = "POST"
    uri         = "https://run.googleapis.com/v2/projects/${var.project}/locations/${var.region}/jobs/${each.value.name}:run"

    oauth_token {
      service_account_email = google_service_account.scheduler[0].email
      scope                 = "https://www.googleapis.com/auth/cloud-platform"
    }
  }

  depends_on = [google_cloud_run_v2_job_iam_member.scheduler_runs]
}

# ---------------------------------------------------------------------------------------
# reel-api. At most one instance: it folds the whole event log from one subscription, and
# a second instance would see only part of it. None while nobody calls it (scale to zero,
# CPU only while serving: idle costs nothing): each request first folds what waited on the
# subscription (Follower::catch_up), so answers are current after a cold start too.

resource "google_cloud_run_v2_service" "api" {
  name                = "${local.prefix}api"
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_ALL"
  deletion_protection = false

  template {
    service_account                  = google_service_account.program["api"].email
    timeout                          = "60s"
    max_instance_request_concurrency = 80
    execution_environment            = "EXECUTION_ENVIRONMENT_GEN2"

    scaling {
      min_instance_count = 0
      max_instance_count = 1
    }

    containers {
      image = local.images["api"]

      resources {
        limits = {
          cpu    = "1"
          memory = "1Gi"
        }
        cpu_idle = true
      }

      dynamic "env" {
        for_each = local.api_env
        content {
          name  = env.key
          value = env.value
        }
      }

      startup_probe {
        http_get {
          path = "/healthz"
        }
      }

      liveness_probe {
        http_get {
          path = "/healthz"
        }
      }
    }
  }

  depends_on = [google_project_service.enabled]
}

# Only the configured callers pass Cloud Run's IAM check; reel-api checks their tokens
# again and decides whom each request acts for.
resource "google_cloud_run_v2_service_iam_member" "api_invokers" {
  for_each = toset(concat(var.api_trusted_callers, var.api_users))

  project  = var.project
  location = google_cloud_run_v2_service.api.location
  name     = google_cloud_run_v2_service.api.name
  role     = "roles/run.invoker"
  member   = each.value
}

# Opt-in only (api_allow_unauthenticated): anyone may reach reel-api, which still refuses
# every caller that is neither trusted nor a known user.
resource "google_cloud_run_v2_service_iam_member" "api_public" {
  count = var.api_allow_unauthenticated ? 1 : 0

  project  = var.project
  location = google_cloud_run_v2_service.api.location
  name     = google_cloud_run_v2_service.api.name
  role     = "roles/run.invoker"
  member   = "allUsers"
}
