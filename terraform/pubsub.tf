# Topics and subscriptions of topology.tf, and what the Pub/Sub service agent needs to
# dead-letter: without publisher on the dead-letter topic and subscriber on the source
# subscription, Pub/Sub silently keeps redelivering instead of dead-lettering.

resource "google_pubsub_topic" "topic" {
  for_each = local.topics

  name                       = "${local.prefix}${each.key}"
  message_retention_duration = each.value.retention

  depends_on = [google_project_service.enabled]
}

resource "google_pubsub_subscription" "sub" {
  for_each = local.subscriptions

  name                         = "${local.prefix}${each.key}"
  topic                        = google_pubsub_topic.topic[each.value.topic].id
  ack_deadline_seconds         = each.value.ack_deadline_seconds
  message_retention_duration   = local.subscription_retention
  enable_exactly_once_delivery = each.value.exactly_once && !(local.push && each.value.push)

  retry_policy {
    minimum_backoff = local.min_backoff
    maximum_backoff = each.value.consumer == "operators" ? local.dead_letter_queue_max_backoff : local.max_backoff
  }

  # Never delete a subscription for inactivity (the default is 31 days): a quiet
  # dead-letter queue must still be there when something dies.
  expiration_policy {
    ttl = ""
  }

  dynamic "dead_letter_policy" {
    for_each = each.value.dead_letter == null ? [] : [each.value.dead_letter]
    content {
      dead_letter_topic     = google_pubsub_topic.topic[dead_letter_policy.value].id
      max_delivery_attempts = local.max_delivery_attempts
    }
  }

  # Push mode: Pub/Sub POSTs the push envelope (with deliveryAttempt) to the stage's
  # service, signed with an OIDC token of the push service account.
  dynamic "push_config" {
    for_each = local.push && each.value.push ? [each.value.consumer] : []
    content {
      push_endpoint = google_cloud_run_v2_service.stage[push_config.value].uri

      oidc_token {
        service_account_email = google_service_account.push[0].email
        audience              = google_cloud_run_v2_service.stage[push_config.value].uri
      }
    }
  }
}

resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  for_each = local.dead_letter_topics

  topic  = google_pubsub_topic.topic[each.key].name
  role   = "roles/pubsub.publisher"
  member = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  for_each = local.dead_lettering_subs

  subscription = google_pubsub_subscription.sub[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}
