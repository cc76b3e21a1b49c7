# Pub/Sub: the inbound platform topics (local.inbound) with their push subscriptions to the
# functions that handle them, and the two dead-letter topics (local.dead_letter), each with a pull
# subscription for operators.
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
    # The platform's facility groups and facilities (id, name, Send ADT): contract
    # facility-changed.v1, docs/facilities.md.
    facility_changed = {
      topic    = "archsync-facility-changed"
      function = "on_facility_changed"
    }
  }

  # Dead-letter topics, each with a pull subscription "<topic>-audit" the redrive collects parked
  # messages from (shared/wiring.py AUDIT_SUFFIX; docs/operations-redrive.md), and a publisher
  # grant for Pub/Sub's service agent (iam.tf). Keys are part of resource addresses: never rename one.
  # - inbound: messages the inbound functions reject as malformed (they publish them themselves,
  #   with a `reason` attribute) and those Pub/Sub gives up on after max_delivery_attempts on an
  #   inbound push subscription. Must equal Settings.dead_letter_topic in shared/settings.py (also
  #   passed explicitly as ARCHSYNC_DEAD_LETTER_TOPIC).
  # - gateway: job messages no gateway acked within max_delivery_attempts; the dead-letter policy
  #   of every gateway subscription the provisioning code creates points here. The sweep times the
  #   jobs out either way. Must equal Settings.gateway_dead_letter_topic (also passed as
  #   ARCHSYNC_GATEWAY_DEAD_LETTER_TOPIC).
  dead_letter = {
    inbound = "archsync-dead-letter"
    gateway = "archsync-gateway-dead-letter"
  }
  seven_days      = "604800s"
  thirty_one_days = "2678400s"
}

# The platform publishes its events here (exam status, study changes, patient updates, facilities).
resource "google_pubsub_topic" "inbound" {
  # checkov:skip=CKV_GCP_83: CMEK is opt-in through var.kms_key_name; null keeps Google-managed encryption at rest, enough unless a key-custody policy requires customer-managed keys.
  for_each = local.inbound

  name                       = each.value.topic
  message_retention_duration = local.seven_days # lets operators seek a subscription back to replay
  kms_key_name               = var.kms_key_name

  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.cmek]
}

moved {
  from = google_pubsub_topic.exam_status
  to   = google_pubsub_topic.inbound["exam_status"]
}

# The dead-letter topics of local.dead_letter and their operators' pull subscriptions.
resource "google_pubsub_topic" "dead_letter" {
  # checkov:skip=CKV_GCP_83: CMEK is opt-in through var.kms_key_name; null keeps Google-managed encryption at rest (as for the inbound topics).
  for_each = local.dead_letter

  name         = each.value
  kms_key_name = var.kms_key_name

  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.cmek]
}

resource "google_pubsub_subscription" "dead_letter_audit" {
  for_each = local.dead_letter

  name                 = "${each.value}-audit" # archsync-dead-letter-audit, archsync-gateway-dead-letter-audit
  topic                = google_pubsub_topic.dead_letter[each.key].id
  ack_deadline_seconds = 60
  # Pub/Sub's maximum. The redrive (docs/operations-redrive.md) moves each message into a durable
  # index the first time anyone lists them; until then they wait here, up to a month.
  message_retention_duration = local.thirty_one_days

  # An unused subscription expires after 31 days by default; these are read only when something
  # goes wrong, so they must never expire (without a subscription, parked messages are dropped).
  expiration_policy {
    ttl = ""
  }
}

moved {
  from = google_pubsub_topic.dead_letter
  to   = google_pubsub_topic.dead_letter["inbound"]
}

moved {
  from = google_pubsub_topic.gateway_dead_letter
  to   = google_pubsub_topic.dead_letter["gateway"]
}

moved {
  from = google_pubsub_subscription.dead_letter_audit
  to   = google_pubsub_subscription.dead_letter_audit["inbound"]
}

moved {
  from = google_pubsub_subscription.gateway_dead_letter_audit
  to   = google_pubsub_subscription.dead_letter_audit["gateway"]
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
    dead_letter_topic     = google_pubsub_topic.dead_letter["inbound"].id
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
