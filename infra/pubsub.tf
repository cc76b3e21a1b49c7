# Pub/Sub: the inbound platform topics (local.inbound) with their push subscriptions to the
# functions that handle them, the dead-letter topic with a pull subscription for operators, and
# the dead-letter topic of the gateway job subscriptions with its own pull subscription.
#
# Gateway job topics and subscriptions are not declared here: admin_api creates them per gateway
# at runtime (gateway-pubsub-<id>, gateway-pubsub-<id>-sub; shared/domain/provisioning.py).

locals {
  # Inbound platform topics, each pushed to one function (a key of local.functions) through its
  # own subscription with OIDC, retry and dead-letter policies. Adding a topic/function pair is one
  # entry here plus the function's entry in local.functions; everything per pair (topic, push
  # subscription, Pub/Sub agent and platform publisher grants in iam.tf, push-invoker run.invoker
  # grant, outputs) follows from it. Keys are part of resource addresses: never rename one.
  inbound = {
    exam_status = {
      topic    = "archsync-exam-status"
      function = "on_exam_status_changed"
    }
    study_changed = {
      topic    = "archsync-study-changed"
      function = "on_study_changed"
    }
    patient_updated = {
      topic    = "archsync-patient-updated"
      function = "on_patient_updated"
    }
  }

  # Must equal Settings.dead_letter_topic in shared/settings.py (also passed explicitly to the
  # functions as ARCHSYNC_DEAD_LETTER_TOPIC).
  dead_letter_topic = "archsync-dead-letter"
  # Must equal Settings.gateway_dead_letter_topic (also passed as ARCHSYNC_GATEWAY_DEAD_LETTER_TOPIC).
  gateway_dead_letter_topic = "archsync-gateway-dead-letter"
  seven_days                = "604800s"
}

# The platform publishes its events here (exam status, study changes, patient updates).
resource "google_pubsub_topic" "inbound" {
  for_each = local.inbound

  name                       = each.value.topic
  message_retention_duration = local.seven_days # lets operators seek a subscription back to replay

  depends_on = [google_project_service.enabled]
}

moved {
  from = google_pubsub_topic.exam_status
  to   = google_pubsub_topic.inbound["exam_status"]
}

# Parked messages: those the inbound functions (on_exam_status_changed, on_study_changed, ...)
# reject as malformed (they publish them themselves, with a `reason` attribute) and those Pub/Sub
# gives up on after max_delivery_attempts on an inbound push subscription.
resource "google_pubsub_topic" "dead_letter" {
  name = local.dead_letter_topic

  depends_on = [google_project_service.enabled]
}

# Operators pull (and ack) parked messages from here.
resource "google_pubsub_subscription" "dead_letter_audit" {
  name                       = "archsync-dead-letter-audit"
  topic                      = google_pubsub_topic.dead_letter.id
  ack_deadline_seconds       = 60
  message_retention_duration = local.seven_days

  # An unused subscription expires after 31 days by default; this one is read only when
  # something goes wrong, so it must never expire.
  expiration_policy {
    ttl = ""
  }
}

# Job messages no gateway acked within max_delivery_attempts: the dead-letter policy of every
# gateway subscription the provisioning code creates points here.
resource "google_pubsub_topic" "gateway_dead_letter" {
  name = local.gateway_dead_letter_topic

  depends_on = [google_project_service.enabled]
}

# Operators pull (and ack) dead-lettered gateway jobs from here; the sweep times the jobs out
# either way. Without a subscription the dead-lettered messages would be dropped unseen.
resource "google_pubsub_subscription" "gateway_dead_letter_audit" {
  name                       = "archsync-gateway-dead-letter-audit"
  topic                      = google_pubsub_topic.gateway_dead_letter.id
  ack_deadline_seconds       = 60
  message_retention_duration = local.seven_days

  # Never expires (see dead_letter_audit).
  expiration_policy {
    ttl = ""
  }
}

# One push subscription per inbound topic. Explicit subscriptions rather than an event_trigger
# (Eventarc) on the function, so that they can carry the retry and dead-letter policies.
#
# The resource keeps the name it had when exam status was the only inbound topic:
# tests/unit/test_infra.py looks it up by that name.
resource "google_pubsub_subscription" "exam_status_to_function" {
  for_each = local.inbound

  name  = "${each.value.topic}-to-function" # archsync-exam-status-to-function, ...
  topic = google_pubsub_topic.inbound[each.key].id
  # The function's timeout_seconds (Pub/Sub allows at most 600).
  ack_deadline_seconds = min(local.functions[each.value.function].timeout_seconds, 600)

  push_config {
    # functions-framework turns a raw Pub/Sub push into the CloudEvent the function expects and
    # takes the event source from a projects/<project>/topics/<topic> path in the URL.
    push_endpoint = "${google_cloudfunctions2_function.function[each.value.function].service_config[0].uri}/projects/${var.project_id}/topics/${google_pubsub_topic.inbound[each.key].name}"

    oidc_token {
      service_account_email = google_service_account.push_invoker.email
      # The service URL, not the push endpoint (the default): Cloud Run checks the audience.
      audience = google_cloudfunctions2_function.function[each.value.function].service_config[0].uri
    }
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = 10
  }

  expiration_policy {
    ttl = ""
  }

  # Deliveries start at once: the push identity may invoke the function and the Pub/Sub service
  # agent holds what it needs for OIDC push and dead-lettering.
  depends_on = [
    google_cloud_run_v2_service_iam_member.invoker,
    google_pubsub_topic_iam_member.dead_letter_pubsub_agent,
    google_service_account_iam_member.push_invoker_token_creator,
  ]
}

moved {
  from = google_pubsub_subscription.exam_status_to_function
  to   = google_pubsub_subscription.exam_status_to_function["exam_status"]
}
