# What the original design alerted on: failure rate > 5 % in an hour, job duration
# > 10 minutes, memory > 90 %, queue depth > 10. docs/OPERATIONS.md says what each one
# means and what to do.
#
# Job outcomes come from log-based metrics over the programs' JSON logs (Cloud Logging
# structure, see services/runtime/src/telemetry.rs): the worker logs "job ended" once
# per job that ends, and "stage done" (with elapsed_ms) when a stage finished its work
# on a job.

locals {
  metric_prefix = replace(local.prefix, "-", "_")

  # Logs of reel's Cloud Run services (push mode, reel-api) and jobs (pull mode).
  log_source = "((resource.type=\"cloud_run_revision\" AND resource.labels.service_name=~\"^${local.prefix}\") OR (resource.type=\"cloud_run_job\" AND resource.labels.job_name=~\"^${local.prefix}\"))"

  stage_subscription_ids       = join("|", [for key, sub in local.subscriptions : "${local.prefix}${key}" if sub.consumer != "operators"])
  dead_letter_subscription_ids = join("|", [for key, sub in local.dead_letter_subscriptions : "${local.prefix}${key}"])

  # PromQL name of the job counter: logging.googleapis.com/user/NAME.
  ended_series = "logging_googleapis_com:user_${google_logging_metric.job_success_rate.name}"
}

# The original design's job metrics, per job (not per stage), from the one "job ended"
# line the worker logs when a job ends (reel_runtime::telemetry::JOB_ENDED, with
# JOB_ENDED_FIELDS; services/topology-check keeps these filters and extractors in step
# with the code). Rates are computed in queries from counters and distributions.
resource "google_logging_metric" "job_duration_seconds" {
  name            = "${local.metric_prefix}job_duration_seconds"
  description     = "How long a job took, from acceptance to its end, by job type, status and retry attempt."
  filter          = "${local.log_source} AND jsonPayload.message=\"job ended\""
  value_extractor = "EXTRACT(jsonPayload.duration_seconds)"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "DISTRIBUTION"
    unit        = "s"

    labels {
      key        = "job_type"
      value_type = "STRING"
    }

    labels {
      key        = "status"
      value_type = "STRING"
    }

    labels {
      key        = "retry_attempt"
      value_type = "STRING"
    }
  }

  label_extractors = {
    job_type      = "EXTRACT(jsonPayload.job_type)"
    status        = "EXTRACT(jsonPayload.status)"
    retry_attempt = "EXTRACT(jsonPayload.retry_attempt)"
  }

  bucket_options {
    exponential_buckets {
      num_finite_buckets = 20
      growth_factor      = 2
      scale              = 1
    }
  }
}

resource "google_logging_metric" "job_memory_usage_mb" {
  name            = "${local.metric_prefix}job_memory_usage_mb"
  description     = "The most memory one delivery of a job held: the stage program and the ffmpeg it ran, MB, by job type."
  filter          = "${local.log_source} AND jsonPayload.message=\"job ended\""
  value_extractor = "EXTRACT(jsonPayload.memory_usage_mb)"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "DISTRIBUTION"
    unit        = "MBy"

    labels {
      key        = "job_type"
      value_type = "STRING"
    }
  }

  label_extractors = {
    job_type = "EXTRACT(jsonPayload.job_type)"
  }

  bucket_options {
    exponential_buckets {
      num_finite_buckets = 16
      growth_factor      = 2
      scale              = 16
    }
  }
}

# A counter of ended jobs: the success rate is its rate with error_type="none" over all.
resource "google_logging_metric" "job_success_rate" {
  name        = "${local.metric_prefix}job_success_rate"
  description = "Jobs that ended, by job type and error type (none: completed; cancelled: cancelled); success rate = none / all, in queries."
  filter      = "${local.log_source} AND jsonPayload.message=\"job ended\""

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"

    labels {
      key        = "job_type"
      value_type = "STRING"
    }

    labels {
      key        = "error_type"
      value_type = "STRING"
    }
  }

  label_extractors = {
    job_type   = "EXTRACT(jsonPayload.job_type)"
    error_type = "EXTRACT(jsonPayload.error_type)"
  }
}

resource "google_logging_metric" "video_processing_rate_mbps" {
  name            = "${local.metric_prefix}video_processing_rate_mbps"
  description     = "MB of reel per second of a completed job's duration, by job type and number of clips."
  filter          = "${local.log_source} AND jsonPayload.message=\"job ended\" AND jsonPayload.status=\"completed\""
  value_extractor = "EXTRACT(jsonPayload.processing_rate_mbps)"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "DISTRIBUTION"
    unit        = "MBy/s"

    labels {
      key        = "job_type"
      value_type = "STRING"
    }

    labels {
      key        = "video_count"
      value_type = "STRING"
    }
  }

  label_extractors = {
    job_type    = "EXTRACT(jsonPayload.job_type)"
    video_count = "EXTRACT(jsonPayload.video_count)"
  }

  bucket_options {
    exponential_buckets {
      num_finite_buckets = 16
      growth_factor      = 2
      scale              = 0.05
    }
  }
}

resource "google_logging_metric" "stage_elapsed" {
  name            = "${local.metric_prefix}stage_elapsed"
  description     = "How long a stage worked on one job, in milliseconds, by stage."
  filter          = "${local.log_source} AND jsonPayload.message=\"stage done\""
  value_extractor = "EXTRACT(jsonPayload.elapsed_ms)"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "DISTRIBUTION"
    unit        = "ms"

    labels {
      key        = "stage"
      value_type = "STRING"
    }
  }

  label_extractors = {
    stage = "EXTRACT(jsonPayload.stage)"
  }

  bucket_options {
    exponential_buckets {
      num_finite_buckets = 24
      growth_factor      = 2
      scale              = 10
    }
  }
}

resource "google_monitoring_alert_policy" "failure_rate" {
  display_name          = "reel: job failure rate above ${var.failure_rate_alert_percent} % over an hour"
  combiner              = "OR"
  notification_channels = var.notification_channels

  conditions {
    display_name = "failed / (failed + completed) over 1 h"

    condition_prometheus_query_language {
      query               = <<-EOT
        sum(increase(${local.ended_series}{error_type!~"none|cancelled"}[1h]))
        /
        sum(increase(${local.ended_series}{error_type!="cancelled"}[1h]))
        > ${var.failure_rate_alert_percent / 100}
      EOT
      duration            = "0s"
      evaluation_interval = "300s"
    }
  }

  alert_strategy {
    auto_close = "3600s"
  }

  documentation {
    mime_type = "text/markdown"
    content   = "More than ${var.failure_rate_alert_percent} % of the jobs that ended in the last hour failed. Break the failures down by the `error_type` label of ${google_logging_metric.job_success_rate.name} (and the stage in the `job ended` log lines), then follow docs/OPERATIONS.md (Alerts: failure rate)."
  }
}

resource "google_monitoring_alert_policy" "job_duration" {
  display_name          = "reel: a job took more than ${var.duration_alert_minutes} minutes"
  combiner              = "OR"
  notification_channels = var.notification_channels

  conditions {
    display_name = "job_duration_seconds p99 above ${var.duration_alert_minutes} min"

    condition_threshold {
      filter          = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.job_duration_seconds.name}\" AND resource.type=\"${local.push ? "cloud_run_revision" : "cloud_run_job"}\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.duration_alert_minutes * 60
      duration        = "0s"

      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_PERCENTILE_99"
        cross_series_reducer = "REDUCE_MAX"
        group_by_fields      = ["metric.label.job_type"]
      }

      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "A job took more than ${var.duration_alert_minutes} minutes from acceptance to its end (completed, failed or cancelled); at JOB_TIMEOUT_MINUTES=${var.job_timeout_minutes} a stage stops it and resumes or fails it with timeout. See docs/OPERATIONS.md (Alerts: job duration)."
  }
}

resource "google_monitoring_alert_policy" "memory" {
  display_name          = "reel: memory above ${var.memory_alert_percent} %"
  combiner              = "OR"
  notification_channels = var.notification_channels

  conditions {
    display_name = "Cloud Run services: memory utilization"

    condition_threshold {
      filter          = "metric.type=\"run.googleapis.com/container/memory/utilizations\" AND resource.type=\"cloud_run_revision\" AND resource.labels.service_name=starts_with(\"${local.prefix}\")"
      comparison      = "COMPARISON_GT"
      threshold_value = var.memory_alert_percent / 100
      duration        = "0s"

      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_PERCENTILE_99"
        cross_series_reducer = "REDUCE_MAX"
        group_by_fields      = ["resource.label.service_name"]
      }

      trigger {
        count = 1
      }
    }
  }

  conditions {
    display_name = "Cloud Run jobs: memory utilization"

    condition_threshold {
      filter          = "metric.type=\"run.googleapis.com/container/memory/utilizations\" AND resource.type=\"cloud_run_job\" AND resource.labels.job_name=starts_with(\"${local.prefix}\")"
      comparison      = "COMPARISON_GT"
      threshold_value = var.memory_alert_percent / 100
      duration        = "0s"

      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_PERCENTILE_99"
        cross_series_reducer = "REDUCE_MAX"
        group_by_fields      = ["resource.label.job_name"]
      }

      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "An instance used more than ${var.memory_alert_percent} % of its memory (scratch files count: /tmp is in memory). Next comes resource_exhausted. See docs/OPERATIONS.md (Alerts: memory)."
  }
}

resource "google_monitoring_alert_policy" "dead_letters" {
  display_name          = "reel: more than ${var.backlog_alert_messages} dead letters"
  combiner              = "OR"
  notification_channels = var.notification_channels

  conditions {
    display_name = "dead-letter subscription depth"

    condition_threshold {
      filter          = "metric.type=\"pubsub.googleapis.com/subscription/num_undelivered_messages\" AND resource.type=\"pubsub_subscription\" AND resource.labels.subscription_id=monitoring.regex.full_match(\"${local.dead_letter_subscription_ids}\")"
      comparison      = "COMPARISON_GT"
      threshold_value = var.backlog_alert_messages
      duration        = "0s"

      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_MAX"
        cross_series_reducer = "REDUCE_MAX"
        group_by_fields      = ["resource.label.subscription_id"]
      }

      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Messages are piling up in a stage's dead-letter queue. Inspect with `reel dlq list STAGE`, fix the cause, then `reel dlq replay STAGE`. See docs/OPERATIONS.md (Dead letters)."
  }
}

resource "google_monitoring_alert_policy" "backlog" {
  display_name          = "reel: stage backlog above ${var.backlog_alert_messages} for 10 minutes"
  combiner              = "OR"
  notification_channels = var.notification_channels

  conditions {
    display_name = "stage subscription depth"

    condition_threshold {
      filter          = "metric.type=\"pubsub.googleapis.com/subscription/num_undelivered_messages\" AND resource.type=\"pubsub_subscription\" AND resource.labels.subscription_id=monitoring.regex.full_match(\"${local.stage_subscription_ids}\")"
      comparison      = "COMPARISON_GT"
      threshold_value = var.backlog_alert_messages
      duration        = "600s"

      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_MAX"
        cross_series_reducer = "REDUCE_MAX"
        group_by_fields      = ["resource.label.subscription_id"]
      }

      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "A stage (or reel-api) is not keeping up: its subscription held more than ${var.backlog_alert_messages} messages for 10 minutes. See docs/OPERATIONS.md (Alerts: backlog)."
  }
}
