# Cloud Storage: the private bucket of function deploy bundles (unless an existing one is given),
# the bucket of generated objects and the private key bucket.

resource "google_storage_bucket" "functions_source" {
  count = var.functions_source_bucket == null ? 1 : 0

  name                        = "${var.project_id}-archsync-fn-source-${var.environment}"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = true
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

  depends_on = [google_project_service.enabled]
}

locals {
  functions_source_bucket = coalesce(var.functions_source_bucket, one(google_storage_bucket.functions_source[*].name))
}

# Objects the service generates (DICOM notes, in later issues); ARCHSYNC_OBJECTS_BUCKET. Each
# gateway's service account may read its own prefix gateways/<id>/ only: admin_api adds those
# conditional bindings to the bucket's IAM policy at runtime. Grant on this bucket only with
# non-authoritative *_iam_member resources; an authoritative policy/binding would wipe them.
resource "google_storage_bucket" "generated" {
  name                        = "${var.project_id}-archsync-generated-${var.environment}"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = true
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

  depends_on = [google_project_service.enabled]
}

# Secrets as objects (ARCHSYNC_KEY_BUCKET, shared/adapters/gcs.py KeyVault): gateway service
# account keys <fg>/<gateway>/service-account-key.json and Result Endpoint keys
# <fg>/<gateway>/result-endpoint-key. Only admin_api and sweep_jobs (objectAdmin) and
# on_job_result (Result Endpoint keys only) are granted access, in iam.tf.
resource "google_storage_bucket" "keys" {
  name                        = "${var.project_id}-archsync-keys-${var.environment}"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false # never delete live keys with the bucket

  # Versioning guards against an accidental overwrite or delete for a day...
  versioning {
    enabled = true
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

  depends_on = [google_project_service.enabled]
}
