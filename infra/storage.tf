# Cloud Storage: the private bucket of function deploy bundles (unless an existing one is given),
# the bucket of generated objects, the private key bucket, and who-accessed-what logging for them.
#
# Access logging: Cloud Audit Logs Data Access logs (google_project_iam_audit_config.storage
# below) record every object read and write in the project's buckets with the caller's identity,
# which the legacy usage logs (the `logging` block that checkov's CKV_GCP_62 looks for) do not; the
# buckets therefore have no usage-log bucket, and CKV_GCP_62 is suppressed on each of them.

# Data Access audit logs (DATA_READ, DATA_WRITE) for Cloud Storage in this project: who read,
# wrote or deleted which object, gateway service accounts included. Admin Activity logs (bucket
# and IAM changes) are always on. Authoritative for storage.googleapis.com's audit config of the
# project (one project per environment, main.tf); the logs go to the project's _Default log bucket.
resource "google_project_iam_audit_config" "storage" {
  project = var.project_id
  service = "storage.googleapis.com"

  audit_log_config {
    log_type = "DATA_READ"
  }
  audit_log_config {
    log_type = "DATA_WRITE"
  }
}

resource "google_storage_bucket" "functions_source" {
  count = var.functions_source_bucket == null ? 1 : 0

  name                        = "${var.project_id}-archsync-fn-source-${var.environment}"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = true
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }

  # Replaced bundles become noncurrent versions; keep them a month for rollbacks.
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 30
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.cmek]
}

locals {
  functions_source_bucket = coalesce(var.functions_source_bucket, one(google_storage_bucket.functions_source[*].name))
}

# Objects the service generates (DICOM notes, in later issues); ARCHSYNC_OBJECTS_BUCKET. Each
# gateway's service account may read its own prefix gateways/<id>/ only: admin_api adds those
# conditional bindings to the bucket's IAM policy at runtime. Grant on this bucket only with
# non-authoritative *_iam_member resources; an authoritative policy/binding would wipe them.
resource "google_storage_bucket" "generated" {
  # checkov:skip=CKV_GCP_62: Object access is recorded by Cloud Audit Logs Data Access logs with the caller's identity (google_project_iam_audit_config.storage), not by legacy usage logs.
  name                        = "${var.project_id}-archsync-generated-${var.environment}"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = true
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }

  lifecycle_rule {
    condition {
      age = var.generated_objects_retention_days
    }
    action {
      type = "Delete"
    }
  }

  # With versioning, the rule above (and any overwrite or delete) leaves a noncurrent version:
  # drop those after a grace period so the retention above really holds.
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 30
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.cmek]
}

# Secrets as objects (ARCHSYNC_KEY_BUCKET, shared/adapters/gcs.py KeyVault): gateway service
# account keys <fg>/<gateway>/service-account-key.json and Result Endpoint keys
# <fg>/<gateway>/result-endpoint-key. Only admin_api and sweep_jobs (objectAdmin) and
# on_job_result (Result Endpoint keys only) are granted access, in iam.tf.
resource "google_storage_bucket" "keys" {
  # checkov:skip=CKV_GCP_62: Key reads and writes are recorded by Cloud Audit Logs Data Access logs with the caller's identity (google_project_iam_audit_config.storage), not by legacy usage logs.
  name                        = "${var.project_id}-archsync-keys-${var.environment}"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false # never delete live keys with the bucket

  # Versioning guards against an accidental overwrite or delete for a day...
  versioning {
    enabled = true
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }

  # ...but a rotated or deleted key must not linger: noncurrent versions go after one day.
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 1
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  # No soft delete: it would keep deleted (rotated) keys restorable for another 7 days (the
  # default), beyond the one-day noncurrent window above.
  soft_delete_policy {
    retention_duration_seconds = 0
  }

  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.cmek]
}
