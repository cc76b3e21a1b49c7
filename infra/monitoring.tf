# Monitoring (issue 15 items 1-2; docs/operations.md): log-based metrics over the structured logs
# the functions write (shared/metrics.py names each record with jsonPayload.event), the alert
# policies and the dashboard (dashboards/archsync.json).
#
# Every filter below is checked against the log records the real code paths write
# (tests/integration/test_metric_logs.py), and every metric an alert or the dashboard uses must be
# declared here or be a Google built-in one (tests/unit/test_monitoring.py).

locals {
  # Cloud Functions (2nd gen) run as Cloud Run services: their log entries, and so the time series
  # of metrics extracted from them, have this monitored resource type.
  log_metric_resource_type = "cloud_run_revision"

  # name => what it counts. labels: label key => description; each label is extracted from the
  # log record's field of the same name (jsonPayload.<key>). value: the field a distribution is
  # made of (seconds), or null for a counter. Labels carry configuration ids, job types, outcomes
  # and reason codes only: never patient data.
  log_metrics = {
    "archsync/jobs_created" = {
      description = "Jobs created (archive, DICOM, IOCM, KOS, ADT), by type and destination."
      filter      = "jsonPayload.event=\"archsync.job_created\""
      labels = {
        job_type          = "ARCHIVE, DICOM, IOCM, KOS or ADT"
        destination_id    = "Destination the job sends to"
        facility_group_id = "Facility group of the destination"
      }
      value = null
    }
    "archsync/jobs_completed" = {
      description = "Jobs that ended COMPLETED (a late result after a timeout included), by type and destination."
      filter      = "jsonPayload.event=\"archsync.job_finished\" AND jsonPayload.outcome=\"COMPLETED\""
      labels = {
        job_type          = "ARCHIVE, DICOM, IOCM, KOS or ADT"
        destination_id    = "Destination the job sends to"
        facility_group_id = "Facility group of the destination"
      }
      value = null
    }
    "archsync/jobs_failed" = {
      description = "Jobs that ended FAILED: reported by the gateway, undeliverable, or held and failed (not timed out), by type and destination."
      filter      = "jsonPayload.event=\"archsync.job_finished\" AND jsonPayload.outcome=\"FAILED\""
      labels = {
        job_type          = "ARCHIVE, DICOM, IOCM, KOS or ADT"
        destination_id    = "Destination the job sends to"
        facility_group_id = "Facility group of the destination"
      }
      value = null
    }
    "archsync/jobs_timed_out" = {
      description = "Jobs the sweeper timed out without a result (archive state UNKNOWN), by type and destination."
      filter      = "jsonPayload.event=\"archsync.job_finished\" AND jsonPayload.outcome=\"TIMED_OUT\""
      labels = {
        job_type          = "ARCHIVE, DICOM, IOCM, KOS or ADT"
        destination_id    = "Destination the job sends to"
        facility_group_id = "Facility group of the destination"
      }
      value = null
    }
    "archsync/job_latency" = {
      description = "Seconds from a job's (last) queueing to its COMPLETED result, by type and destination."
      filter      = "jsonPayload.event=\"archsync.job_finished\" AND jsonPayload.outcome=\"COMPLETED\""
      labels = {
        job_type       = "ARCHIVE, DICOM, IOCM, KOS or ADT"
        destination_id = "Destination the job sends to"
      }
      value = "queued_to_completed_seconds"
    }
    "archsync/lock_hold_time" = {
      description = "Seconds an exam's order lock was held, recorded when it is released (final result or timeout)."
      filter      = "jsonPayload.event=\"archsync.lock_released\""
      labels = {
        destination_id    = "Destination of the archive job that held the lock"
        facility_group_id = "Facility group"
      }
      value = "held_seconds"
    }
    "archsync/locks_overdue" = {
      description = "Order locks held longer than lock_overdue_seconds, one count per lock per sweep."
      filter      = "jsonPayload.event=\"archsync.lock_overdue\""
      labels = {
        destination_id    = "Destination of the archive job that holds the lock"
        facility_group_id = "Facility group"
      }
      value = null
    }
    "archsync/gateways_silent" = {
      description = "Gateways with no contact for gateway_silent_seconds while published jobs waited as long for them, one count per gateway per sweep."
      filter      = "jsonPayload.event=\"archsync.gateway_silent\""
      labels = {
        gateway_id        = "The silent gateway"
        facility_group_id = "Its facility group"
      }
      value = null
    }
    "archsync/dead_lettered" = {
      description = "Platform events a handler dead-lettered, by function and reason code."
      filter      = "jsonPayload.event=\"archsync.dead_lettered\""
      labels = {
        function    = "The function that dead-lettered the event"
        reason_code = "MALFORMED_INPUT, PERMANENT_ERROR, BAD_ENVELOPE, ..."
      }
      value = null
    }
    "archsync/provisioning_failures" = {
      description = "Gateway provisioning operations that failed (creation rolled back, key rotation settled), by operation and step."
      filter      = "jsonPayload.event=\"archsync.provisioning_failed\""
      labels = {
        operation = "CREATE or ROTATE_KEY"
        step      = "The step that failed"
      }
      value = null
    }
    "archsync/provisioning_rollbacks" = {
      description = "Rollbacks of gateway creations, by who rolled back (request, sweeper) and result (complete, incomplete)."
      filter      = "jsonPayload.event=\"archsync.provisioning_rolled_back\""
      labels = {
        by     = "request (the failing call) or sweeper (a dead call's work)"
        result = "complete, or incomplete (the sweeper finishes it)"
      }
      value = null
    }
    "archsync/result_signature_failures" = {
      description = "Result Endpoint requests (results, heartbeats) refused by authentication, by reason code. The claimed gateway is in the log record only (unauthenticated: never a label)."
      filter      = "jsonPayload.event=\"archsync.result_signature_failed\""
      labels = {
        reason_code = "MALFORMED_HEADERS, STALE_TIMESTAMP or BAD_SIGNATURE"
      }
      value = null
    }
  }

  # Metric types for alert filters (Cloud Monitoring names log-based metrics user/<name>).
  log_metric_type = { for name, _ in local.log_metrics : name => "logging.googleapis.com/user/${google_logging_metric.archsync[name].name}" }
}

resource "google_logging_metric" "archsync" {
  for_each = local.log_metrics

  project          = var.project_id
  name             = each.key
  description      = each.value.description
  filter           = each.value.filter
  value_extractor  = each.value.value == null ? null : "EXTRACT(jsonPayload.${each.value.value})"
  label_extractors = { for key, _ in each.value.labels : key => "EXTRACT(jsonPayload.${key})" }

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = each.value.value == null ? "INT64" : "DISTRIBUTION"
    unit         = each.value.value == null ? "1" : "s"
    display_name = each.key

    dynamic "labels" {
      for_each = each.value.labels
      content {
        key         = labels.key
        value_type  = "STRING"
        description = labels.value
      }
    }
  }

  # Distributions in seconds: 1 s, 1.5 s, ... up to ~53 h in 30 buckets.
  dynamic "bucket_options" {
    for_each = each.value.value == null ? [] : [each.value.value]
    content {
      exponential_buckets {
        num_finite_buckets = 30
        growth_factor      = 1.5
        scale              = 1
      }
    }
  }

  depends_on = [google_project_service.enabled]
}

# --- Alert policies --------------------------------------------------------------------------------
# Counters are summed per 10 minutes (sweep_jobs runs every 5 minutes by default: each sweep-made
# record is seen in every window). Each policy notifies var.alert_notification_channels.

resource "google_monitoring_alert_policy" "dead_letters" {
  project               = var.project_id
  display_name          = "ArchSync: events dead-lettered"
  combiner              = "OR"
  notification_channels = var.alert_notification_channels

  conditions {
    display_name = "A handler dead-lettered a platform event"
    condition_threshold {
      filter          = "metric.type=\"${local.log_metric_type["archsync/dead_lettered"]}\" AND resource.type=\"${local.log_metric_resource_type}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["metric.label.function", "metric.label.reason_code"]
      }
      trigger {
        count = 1
      }
    }
  }

  # Messages a subscription forwarded to a dead-letter topic after its maximum deliveries: inbound
  # push subscriptions (a function kept failing) and gateway subscriptions (jobs an agent could not
  # process). Pub/Sub's own metric: these never pass through the handlers' dead-lettering.
  conditions {
    display_name = "A subscription forwarded messages to a dead-letter topic"
    condition_threshold {
      filter          = "metric.type=\"pubsub.googleapis.com/subscription/dead_letter_message_count\" AND resource.type=\"pubsub_subscription\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["resource.label.subscription_id"]
      }
      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Events or gateway jobs were dead-lettered. List them with their reasons and replay them after the fix: docs/operations-redrive.md (GET /v1/operations/dead-letters, scripts/redrive.py)."
  }

  alert_strategy {
    auto_close = "86400s"
  }
}

resource "google_monitoring_alert_policy" "failed_jobs" {
  project               = var.project_id
  display_name          = "ArchSync: failed jobs"
  combiner              = "OR"
  notification_channels = var.alert_notification_channels

  conditions {
    display_name = "Jobs of one destination failed"
    condition_threshold {
      filter          = "metric.type=\"${local.log_metric_type["archsync/jobs_failed"]}\" AND resource.type=\"${local.log_metric_resource_type}\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_failed_jobs_threshold
      duration        = "0s"
      aggregations {
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["metric.label.facility_group_id", "metric.label.destination_id"]
      }
      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Jobs of one destination keep failing: read their reasons in the Jobs tab (seed 000 Troubleshooting), fix the destination or archive, then retry them. docs/operations.md \"Alerts\"."
  }

  alert_strategy {
    auto_close = "86400s"
  }
}

resource "google_monitoring_alert_policy" "timed_out_jobs" {
  project               = var.project_id
  display_name          = "ArchSync: jobs timed out (archive state UNKNOWN)"
  combiner              = "OR"
  notification_channels = var.alert_notification_channels

  conditions {
    display_name = "Jobs of one destination timed out without a result"
    condition_threshold {
      filter          = "metric.type=\"${local.log_metric_type["archsync/jobs_timed_out"]}\" AND resource.type=\"${local.log_metric_resource_type}\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_timed_out_jobs_threshold
      duration        = "0s"
      aggregations {
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["metric.label.facility_group_id", "metric.label.destination_id"]
      }
      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "No result came from the gateway within the result window: is the gateway running and connected (Gateways table, health)? docs/operations.md \"Alerts\"."
  }

  alert_strategy {
    auto_close = "86400s"
  }
}

resource "google_monitoring_alert_policy" "lock_held_too_long" {
  project               = var.project_id
  display_name          = "ArchSync: order lock held too long"
  combiner              = "OR"
  notification_channels = var.alert_notification_channels

  conditions {
    display_name = "An exam's order lock is held longer than lock_overdue_seconds"
    condition_threshold {
      filter          = "metric.type=\"${local.log_metric_type["archsync/locks_overdue"]}\" AND resource.type=\"${local.log_metric_resource_type}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["metric.label.facility_group_id", "metric.label.destination_id"]
      }
      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "An archive job triggered at Pending or Inflight still locks its exam (no edits, sharing or reporting: seed 000). The log record names the job: look at it in the Jobs tab. docs/operations.md \"Alerts\"."
  }

  alert_strategy {
    auto_close = "86400s"
  }
}

resource "google_monitoring_alert_policy" "gateway_silent" {
  project               = var.project_id
  display_name          = "ArchSync: gateway silent with queued jobs"
  combiner              = "OR"
  notification_channels = var.alert_notification_channels

  conditions {
    display_name = "A gateway with waiting jobs has been silent longer than gateway_silent_seconds"
    condition_threshold {
      filter          = "metric.type=\"${local.log_metric_type["archsync/gateways_silent"]}\" AND resource.type=\"${local.log_metric_resource_type}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["metric.label.facility_group_id", "metric.label.gateway_id"]
      }
      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Seed 000 Troubleshooting, \"Gateway is not running or not connected\": check the gateway service on site, its Result Endpoint URL and key, and its service account key. docs/operations.md \"Gateway health\"."
  }

  alert_strategy {
    auto_close = "86400s"
  }
}

# --- Dashboard -------------------------------------------------------------------------------------

resource "google_monitoring_dashboard" "archsync" {
  project        = var.project_id
  dashboard_json = file("${path.module}/dashboards/archsync.json")

  # Its charts name the log-based metrics: created after them.
  depends_on = [google_logging_metric.archsync, google_project_service.enabled]
}
