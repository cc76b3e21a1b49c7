# The four Cloud Functions (2nd gen), their deploy bundles and the Artifact Registry repository
# their images are built into. Who may invoke each function is declared in iam.tf.

locals {
  # One entry per directory functions/<name>/; <name> is also the entry point.
  functions = {
    on_exam_status_changed = {
      description     = "Exam status events from the platform (Pub/Sub push) -> archive jobs."
      account_id      = "archsync-exam-status"
      timeout_seconds = 60
      max_instances   = var.max_instance_count
      # pubsub.publisher: job messages to gateway topics and malformed events to the dead-letter
      # topic (see iam.tf for why this is project-wide).
      project_roles = ["roles/datastore.user", "roles/pubsub.publisher"]
    }
    on_job_result = {
      description     = "Result Endpoint: gateways POST HMAC-signed job results."
      account_id      = "archsync-job-result"
      timeout_seconds = 60
      max_instances   = var.max_instance_count
      project_roles   = ["roles/datastore.user"]
    }
    sweep_jobs = {
      description     = "Times out overdue jobs and republishes unpublished ones (Cloud Scheduler)."
      account_id      = "archsync-sweep-jobs"
      timeout_seconds = 300
      # One sweep at a time is enough; concurrent sweeps would be safe (conditional writes) but
      # only duplicate the work.
      max_instances = 1
      project_roles = ["roles/datastore.user", "roles/pubsub.publisher"]
    }
    lock_status = {
      description     = "Exam lock status for the platform (IAM-authenticated)."
      account_id      = "archsync-lock-status"
      timeout_seconds = 60
      max_instances   = var.max_instance_count
      project_roles   = ["roles/datastore.user"]
    }
  }

  # Every name here is in ENV_VARS of shared/settings.py. Settings.from_env reads all of them in
  # every function, so all functions get the same set.
  function_env = {
    ARCHSYNC_PROJECT_ID                 = var.project_id
    ARCHSYNC_FIRESTORE_DATABASE         = google_firestore_database.default.name
    ARCHSYNC_DEAD_LETTER_TOPIC          = google_pubsub_topic.dead_letter.name
    ARCHSYNC_DISPATCH_GRACE_SECONDS     = tostring(var.dispatch_grace_seconds)
    ARCHSYNC_ATTEMPT_ALLOWANCE_SECONDS  = tostring(var.attempt_allowance_seconds)
    ARCHSYNC_SIGNATURE_MAX_SKEW_SECONDS = tostring(var.signature_max_skew_seconds)
    ARCHSYNC_PUBLISH_LEASE_SECONDS      = tostring(var.publish_lease_seconds)
    ARCHSYNC_SWEEP_BATCH_SIZE           = tostring(var.sweep_batch_size)
  }

  bundles_dir = coalesce(var.bundles_dir, "${path.module}/../build/bundles")
}

# Each bundle is the zip scripts/build_bundles.py writes to build/bundles/<function>.zip (it must
# exist at plan time). The object name carries the zip's MD5, so a changed bundle is a new object
# and the function is rebuilt and redeployed; an unchanged one leaves the function alone.
resource "google_storage_bucket_object" "bundle" {
  for_each = local.functions

  bucket       = local.functions_source_bucket
  name         = "${each.key}/${filemd5("${local.bundles_dir}/${each.key}.zip")}.zip"
  source       = "${local.bundles_dir}/${each.key}.zip"
  content_type = "application/zip"

  # Upload the new bundle before the old object goes (the source bucket keeps it as a
  # noncurrent version for a while).
  lifecycle {
    create_before_destroy = true
  }
}

resource "google_cloudfunctions2_function" "function" {
  for_each = local.functions

  name        = "archsync-${replace(each.key, "_", "-")}"
  location    = var.region
  description = each.value.description

  build_config {
    runtime           = "python311"
    entry_point       = each.key
    service_account   = google_service_account.build.id
    docker_repository = google_artifact_registry_repository.functions.id

    source {
      storage_source {
        bucket = local.functions_source_bucket
        object = google_storage_bucket_object.bundle[each.key].name
      }
    }
  }

  service_config {
    service_account_email          = google_service_account.function[each.key].email
    available_memory               = "256Mi"
    timeout_seconds                = each.value.timeout_seconds
    min_instance_count             = 0
    max_instance_count             = each.value.max_instances
    all_traffic_on_latest_revision = true
    environment_variables          = local.function_env

    # ALLOW_ALL: gateways and the platform call from outside the project, and Pub/Sub push and
    # Cloud Scheduler are not guaranteed to count as internal traffic (that depends on the
    # project and VPC Service Controls setup). Who may call is controlled by the run.invoker
    # grants in iam.tf.
    ingress_settings = "ALLOW_ALL"
  }

  depends_on = [
    google_project_service.enabled,
    google_project_iam_member.function,
    google_project_iam_member.build_logs,
    google_project_iam_member.build_sources,
    google_artifact_registry_repository_iam_member.build_writer,
    google_storage_bucket_iam_member.build_source_reader,
  ]
}

# Images built from the bundles. Managed here (instead of the implicit gcf-artifacts repository)
# so the build service account can be granted write access to this repository only and old
# images get cleaned up.
resource "google_artifact_registry_repository" "functions" {
  location      = var.region
  repository_id = "archsync-functions"
  description   = "Container images of the Archive Synchronization Cloud Functions."
  format        = "DOCKER"

  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = 5
    }
  }
  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      older_than = "2592000s" # 30 days; KEEP above wins for the 5 most recent images
    }
  }

  depends_on = [google_project_service.enabled]
}
