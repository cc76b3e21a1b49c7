# Cloud Storage: the private bucket of function deploy bundles (unless an existing one is given)
# and the bucket of generated objects.

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

# Objects the service generates (DICOM notes, in later issues).
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
