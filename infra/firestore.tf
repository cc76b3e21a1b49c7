# Firestore: the (default) database in Native mode and the composite indexes the queries need.

resource "google_firestore_database" "default" {
  project     = var.project_id
  name        = "(default)" # what ARCHSYNC_FIRESTORE_DATABASE / Settings.firestore_database name
  location_id = coalesce(var.firestore_location_id, var.region)
  type        = "FIRESTORE_NATIVE"

  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = "DELETE_PROTECTION_ENABLED"
  # `terraform destroy` only forgets the database; deleting it is a deliberate manual act.
  deletion_policy = "ABANDON"

  depends_on = [google_project_service.enabled]
}

# One index per entry of COMPOSITE_INDEXES in shared/adapters/firestore_store.py, fields in the
# same order. Keep the two in sync (the emulator never asks for an index, so tests cannot catch a
# missing one). Firestore appends __name__ itself.

# FirestoreStore.expired_jobs: state IN (open states) AND deadline <= now ORDER BY deadline.
resource "google_firestore_index" "jobs_state_deadline" {
  project     = var.project_id
  database    = google_firestore_database.default.name
  collection  = "jobs"
  query_scope = "COLLECTION_GROUP"

  fields {
    field_path = "state"
    order      = "ASCENDING"
  }
  fields {
    field_path = "deadline"
    order      = "ASCENDING"
  }
}

# FirestoreStore.unpublished_jobs: published == false AND state == QUEUED AND
# publish_lease_until <= now ORDER BY publish_lease_until.
resource "google_firestore_index" "jobs_published_state_publish_lease_until" {
  project     = var.project_id
  database    = google_firestore_database.default.name
  collection  = "jobs"
  query_scope = "COLLECTION_GROUP"

  fields {
    field_path = "published"
    order      = "ASCENDING"
  }
  fields {
    field_path = "state"
    order      = "ASCENDING"
  }
  fields {
    field_path = "publish_lease_until"
    order      = "ASCENDING"
  }
}

# FirestoreAdminStore.stale_logs (shared/adapters/firestore_admin.py): gateway provisioning logs
# with state IN (unfinished states) AND lease_until <= now ORDER BY lease_until, which sweep_jobs
# finishes (Provisioner.finish_stale).
resource "google_firestore_index" "provisioning_state_lease_until" {
  project     = var.project_id
  database    = google_firestore_database.default.name
  collection  = "provisioning"
  query_scope = "COLLECTION_GROUP"

  fields {
    field_path = "state"
    order      = "ASCENDING"
  }
  fields {
    field_path = "lease_until"
    order      = "ASCENDING"
  }
}
