# What the original design alerted on: failure rate > 5 % in an hour, job duration
# > 10 minutes, memory > 90 %, queue depth > 10. docs/OPERATIONS.md says what each one
# means and what to do.
#
# Job outcomes come from log-based metrics over the programs' JSON logs (Cloud Logging
# structure, see services/runtime/src/telemetry.rs): the worker logs "job failed" when a
# job fails for good, and "stage done" (with elapsed_ms and the emitted event types) when
# a stage finished its work on a job.

locals {
  metric_prefix = replace(local.prefix, "-", "_")

  # Logs of reel's Cloud Run services (push mode, reel-api) and jobs (pull mode).
  log_source = "((resource.type=\"cloud_run_revision\" AND resource.labels.service_name=~\"^${local.prefix}\") OR (resource.type=\"cloud_run_job\" AND resource.labels.job_name=~\"^${local.prefix}\"))"

  stage_subscription_ids       = join("|", [for key, sub in local.subscriptions : "${local.prefix}${key}" if sub.consumer != "operators"])
  dead_letter_subscription_ids = join("|", [for key, sub in local.dead_letter_subscriptions : "${local.prefix}${key}"])

  # PromQL names of the log-based metrics: logging.googleapis.com/user/NAME.
  failed_series    = "logging_googleapis_com:user_${google_logging_metric.jobs_failed.name}"
  completed_series = "logging_googleapis_com:user_${google_logging_metric.jobs_completed.name}"
}

resource "google_logging_metric" "jobs_failed" {
  name        = "${local.metric_prefix}jobs_failed"
  description = "reel jobs that failed for good (job.failed), by stage and error type."
  filter      = "${local.log_source} AND jsonPayload.message=\"job failed\""

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"

    labels {
      key        = "stage"
      value_type = "STRING"
    }

    labels {
      key        = "error_type"
      value_type = "STRING"
    }
  }

  label_extractors = {
    stage      = "EXTRACT(jsonPayload.stage)"
    error_type = "EXTRACT(jsonPayload.error_type)"
  }
}

resource "google_logging_metric" "jobs_completed" {
  name        = "${local.metric_prefix}jobs_completed"
  description = "reel jobs that completed (finalize emitted job.completed)."
  filter      = "${local.log_source} AND jsonPayload.message=\"stage done\" AND jsonPayload.emitted:\"job.completed\""

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
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
        sum(increase(${local.failed_series}[1h]))
        /
        (sum(increase(${local.failed_series}[1h])) + (sum(increase(${local.completed_series}[1h])) or vector(0)))
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
    content   = "More than ${var.failure_rate_alert_percent} % of the jobs that ended in the last hour failed. Break the failures down by the `stage` and `error_type` labels of ${google_logging_metric.jobs_failed.name}, then follow docs/OPERATIONS.md (Alerts: failure rate)."
  }
}

resource "google_monitoring_alert_policy" "stage_duration" {
  display_name          = "reel: a stage worked on one job for more than ${var.duration_alert_minutes} minutes"
  combiner              = "OR"
  notification_channels = var.notification_channels

  conditions {
    display_name = "stage_elapsed p99 above ${var.duration_alert_minutes} min"

    condition_threshold {
      filter          = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.stage_elapsed.name}\" AND resource.type=\"${local.push ? "cloud_run_revision" : "cloud_run_job"}\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.duration_alert_minutes * 60 * 1000
      duration        = "0s"

      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_PERCENTILE_99"
        cross_series_reducer = "REDUCE_MAX"
        group_by_fields      = ["metric.label.stage"]
      }

      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "A job spent more than ${var.duration_alert_minutes} minutes in one stage; at JOB_TIMEOUT_MINUTES=${var.job_timeout_minutes} it fails with timeout. See docs/OPERATIONS.md (Alerts: job duration)."
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
