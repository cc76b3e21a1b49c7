# The Cloud Functions (2nd gen), their deploy bundles and the Artifact Registry repository
# their images are built into. Who may invoke each function is declared in iam.tf.

locals {
  # Project-wide roles of the functions that provision gateways (provisions_gateways = true; see
  # iam.tf for why these are granted on the project and what else they get).
  gateway_provisioning_project_roles = [
    "roles/iam.serviceAccountAdmin",    # create/delete the gateway service accounts
    "roles/iam.serviceAccountKeyAdmin", # create/delete their JSON keys
    "roles/pubsub.admin",               # gateway topics, subscriptions and subscription IAM policies
  ]

  # Network ingress of each function (see ingress_settings in the function resource below):
  # - internal: invoked only by Pub/Sub push subscriptions or Cloud Scheduler of this project.
  #   Cloud Run counts requests from Pub/Sub and Cloud Scheduler in the same project (or VPC
  #   Service Controls perimeter) as internal, on the run.app URL that the push subscriptions and
  #   the scheduler job use, so nothing else can reach these functions at the network level.
  # - public: called from outside Google Cloud or from another project (gateways, the platform's
  #   UI and API); each is still authenticated: see the CKV_GCP_124 suppression below.
  ingress_internal = "ALLOW_INTERNAL_ONLY"
  ingress_public   = "ALLOW_ALL"

  # One entry per directory functions/<name>/; <name> is also the entry point.
  # provisions_gateways: creates or removes gateway resources (Pub/Sub, service accounts, keys,
  # bucket IAM): gets local.gateway_provisioning_project_roles and the bucket grants in iam.tf.
  functions = {
    on_exam_status_changed = {
      ingress_settings = local.ingress_internal
      description      = "Exam status events from the platform (Pub/Sub push) -> archive jobs."
      account_id       = "archsync-exam-status"
      timeout_seconds  = 60
      max_instances    = var.max_instance_count
      # pubsub.publisher: job messages to gateway topics and malformed events to the dead-letter
      # topic (see iam.tf for why this is project-wide).
      project_roles       = ["roles/datastore.user", "roles/pubsub.publisher"]
      provisions_gateways = false
    }
    on_study_changed = {
      ingress_settings = local.ingress_internal
      description      = "Study change events from the platform (Pub/Sub push) -> follow-up and IOCM jobs."
      account_id       = "archsync-study-changed"
      timeout_seconds  = 60
      max_instances    = var.max_instance_count
      # pubsub.publisher: as on_exam_status_changed (job messages to gateway topics, malformed
      # events to the dead-letter topic; project-wide, see iam.tf). Also writes IOCM rejection
      # notes to the generated-objects bucket (bucket grant in iam.tf).
      project_roles       = ["roles/datastore.user", "roles/pubsub.publisher"]
      provisions_gateways = false
    }
    on_patient_updated = {
      ingress_settings = local.ingress_internal
      description      = "Patient update events from the platform (Pub/Sub push) -> HL7 ADT jobs."
      account_id       = "archsync-patient-updated"
      timeout_seconds  = 60
      max_instances    = var.max_instance_count
      # pubsub.publisher: as on_exam_status_changed (ADT job messages to gateway topics, malformed
      # events to the dead-letter topic; project-wide, see iam.tf).
      project_roles       = ["roles/datastore.user", "roles/pubsub.publisher"]
      provisions_gateways = false
    }
    on_facility_changed = {
      ingress_settings = local.ingress_internal
      description      = "Facility group and facility changes from the platform (Pub/Sub push) -> this product's copy (facility-changed.v1)."
      account_id       = "archsync-facility-changed"
      timeout_seconds  = 60
      max_instances    = var.max_instance_count
      # pubsub.publisher: malformed events go to the dead-letter topic (project-wide, see iam.tf).
      project_roles       = ["roles/datastore.user", "roles/pubsub.publisher"]
      provisions_gateways = false
    }
    on_job_result = {
      ingress_settings = local.ingress_public
      description      = "Result Endpoint: gateways POST HMAC-signed job results."
      account_id       = "archsync-job-result"
      timeout_seconds  = 60
      max_instances    = var.max_instance_count
      # pubsub.publisher: a final result releases the job's follow-ups (deferred instances,
      # dependent jobs: shared/services/followups.py), published to gateway topics (project-wide,
      # see iam.tf). Also reads Result Endpoint keys from the key bucket (conditional grant in iam.tf).
      project_roles       = ["roles/datastore.user", "roles/pubsub.publisher"]
      provisions_gateways = false
    }
    sweep_jobs = {
      ingress_settings = local.ingress_internal
      description      = "Times out overdue jobs, republishes unpublished ones and finishes abandoned gateway provisioning (Cloud Scheduler)."
      account_id       = "archsync-sweep-jobs"
      timeout_seconds  = 300
      # One sweep at a time is enough; concurrent sweeps would be safe (conditional writes) but
      # only duplicate the work.
      max_instances = 1
      # Publishing (retries, follow-ups, republished jobs) is covered by roles/pubsub.admin, which
      # it holds as a provisioner (iam.tf), as admin_api does: no separate pubsub.publisher.
      project_roles = ["roles/datastore.user"]
      # Rolls back gateway creations and completes deletions whose admin_api call died half-way
      # (Provisioner.finish_stale), so it needs the same rights as admin_api.
      provisions_gateways = true
    }
    lock_status = {
      ingress_settings    = local.ingress_public
      description         = "Exam lock status for the platform (IAM-authenticated)."
      account_id          = "archsync-lock-status"
      timeout_seconds     = 60
      max_instances       = var.max_instance_count
      project_roles       = ["roles/datastore.user"]
      provisions_gateways = false
    }
    admin_api = {
      ingress_settings = local.ingress_public
      description      = "Admin API of the platform's UI (gateways, destinations, keys); end-user JWT auth."
      account_id       = "archsync-admin-api"
      # Provisioning a gateway is ~10 sequential IAM/Pub/Sub/Storage calls; must stay below
      # var.provisioning_lease_seconds (checked by the precondition below).
      timeout_seconds = 120
      max_instances   = var.max_instance_count
      # Retrying a failed job publishes its message to the gateway topic: covered by the
      # roles/pubsub.admin it holds as a provisioner.
      project_roles       = ["roles/datastore.user"]
      provisions_gateways = true
    }
  }

  # Every name here is in ENV_VARS of shared/settings.py. Settings.from_env reads all of them in
  # every function, so all functions get the same set.
  function_env = {
    ARCHSYNC_PROJECT_ID                 = var.project_id
    ARCHSYNC_FIRESTORE_DATABASE         = google_firestore_database.default.name
    ARCHSYNC_DEAD_LETTER_TOPIC          = google_pubsub_topic.dead_letter["inbound"].name
    ARCHSYNC_DISPATCH_GRACE_SECONDS     = tostring(var.dispatch_grace_seconds)
    ARCHSYNC_ATTEMPT_ALLOWANCE_SECONDS  = tostring(var.attempt_allowance_seconds)
    ARCHSYNC_MAX_RESULT_WINDOW_SECONDS  = tostring(var.max_result_window_seconds)
    ARCHSYNC_SIGNATURE_MAX_SKEW_SECONDS = tostring(var.signature_max_skew_seconds)
    ARCHSYNC_PUBLISH_LEASE_SECONDS      = tostring(var.publish_lease_seconds)
    ARCHSYNC_SWEEP_BATCH_SIZE           = tostring(var.sweep_batch_size)
    ARCHSYNC_KEY_BUCKET                 = google_storage_bucket.keys.name
    ARCHSYNC_OBJECTS_BUCKET             = google_storage_bucket.generated.name
    ARCHSYNC_STUDY_BUCKET               = var.study_bucket
    ARCHSYNC_GATEWAY_DEAD_LETTER_TOPIC  = google_pubsub_topic.dead_letter["gateway"].name
    ARCHSYNC_PUBSUB_SERVICE_AGENT       = local.pubsub_service_agent_email
    ARCHSYNC_PROVISIONING_LEASE_SECONDS = tostring(var.provisioning_lease_seconds)
    ARCHSYNC_GATEWAY_IDENTITY_PROJECTS  = join(",", var.gateway_identity_projects)
    ARCHSYNC_RESULT_KEY_GRACE_SECONDS   = tostring(var.result_key_grace_seconds)
    ARCHSYNC_GATEWAY_SILENT_SECONDS     = tostring(var.gateway_silent_seconds)
    ARCHSYNC_LOCK_OVERDUE_SECONDS       = tostring(var.lock_overdue_seconds)
    ARCHSYNC_ADMIN_JWT_PUBLIC_KEYS      = var.admin_jwt_public_keys_pem
    ARCHSYNC_ADMIN_JWT_AUDIENCE         = var.admin_jwt_audience
    ARCHSYNC_ADMIN_JWT_ISSUER           = var.admin_jwt_issuer
    ARCHSYNC_CONSOLE_AUTHORIZE_URL      = var.console_authorize_url
    ARCHSYNC_CONSOLE_TOKEN_URL          = var.console_token_url
    ARCHSYNC_CONSOLE_CLIENT_ID          = var.console_client_id
    ARCHSYNC_CONSOLE_SCOPE              = var.console_scope
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

  # Public by design for on_job_result, admin_api and lock_status only (local.ingress_public):
  #   on_job_result: gateways on hospital networks POST results; each request is authenticated by
  #     the gateway's HMAC signature (shared/signing.py) before anything else is read.
  #   admin_api: the platform's UI calls on behalf of end users; every request carries the user's
  #     JWT, verified in the function (shared/auth.py) before routing.
  #   lock_status: the platform calls from its own project; Cloud Run admits only the IAM members
  #     of var.platform_invoker_members (run.invoker in iam.tf), no anonymous caller.
  # The four functions fed by Pub/Sub push or Cloud Scheduler are ALLOW_INTERNAL_ONLY, which
  # checkov passes: the skip below covers every instance of this for_each resource, so
  # tests/unit/test_infra.py asserts each function's ingress instead.
  # checkov:skip=CKV_GCP_124: Only on_job_result (HMAC-signed gateway callbacks), admin_api (end-user JWT) and lock_status (IAM invoker) allow all ingress, each authenticated; the others are internal-only (asserted by tests/unit/test_infra.py).
  service_config {
    service_account_email          = google_service_account.function[each.key].email
    available_memory               = "256Mi"
    timeout_seconds                = each.value.timeout_seconds
    min_instance_count             = 0
    max_instance_count             = each.value.max_instances
    all_traffic_on_latest_revision = true
    environment_variables          = local.function_env

    # Network-level restriction (local.functions[*].ingress_settings); who may call is controlled
    # by the run.invoker grants in iam.tf in every case.
    ingress_settings = each.value.ingress_settings
  }

  lifecycle {
    # A live admin_api call must never be overtaken by the sweeper taking over its provisioning
    # log (shared/services/provisioning.py, ProvisioningSettings.lease_seconds).
    precondition {
      condition     = var.provisioning_lease_seconds > local.functions.admin_api.timeout_seconds
      error_message = "provisioning_lease_seconds must exceed the admin_api function's timeout_seconds."
    }
  }

  depends_on = [
    google_project_service.enabled,
    google_project_iam_member.function,
    google_project_iam_member.build_logs,
    google_project_iam_member.build_sources,
    google_artifact_registry_repository_iam_member.build_writer,
    google_storage_bucket_iam_member.build_source_reader,
    google_storage_bucket_iam_member.key_bucket_provisioner,
    google_storage_bucket_iam_member.key_bucket_result_key_reader,
    google_storage_bucket_iam_member.objects_bucket_iam_admin,
    google_storage_bucket_iam_member.objects_bucket_iocm_writer,
    google_storage_bucket_iam_member.objects_bucket_followup_writer,
    google_storage_bucket_iam_member.study_bucket_iam_admin,
  ]
}

# Images built from the bundles. Managed here (instead of the implicit gcf-artifacts repository)
# so the build service account can be granted write access to this repository only and old
# images get cleaned up.
resource "google_artifact_registry_repository" "functions" {
  # checkov:skip=CKV_GCP_84: CMEK is opt-in through var.kms_key_name (null keeps Google-managed encryption at rest); the images hold only application code and its dependencies, no patient or key data.
  location      = var.region
  repository_id = "archsync-functions"
  description   = "Container images of the Archive Synchronization Cloud Functions."
  format        = "DOCKER"
  kms_key_name  = var.kms_key_name

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

  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.cmek]
}
