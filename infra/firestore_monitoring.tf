# Composite indexes of the sweeper's monitoring queries (issue 15; MONITORING_INDEXES in
# shared/adapters/firestore_health.py, part of COMPOSITE_INDEXES: tests/unit/test_infra.py checks
# both ways). Firestore appends __name__ itself.

# FirestoreStore.stale_queued_jobs: held == false AND published == true AND state == QUEUED AND
# queued_at <= t ORDER BY queued_at (gateways silent while jobs wait for them).
resource "google_firestore_index" "jobs_held_published_state_queued_at" {
  project     = var.project_id
  database    = google_firestore_database.default.name
  collection  = "jobs"
  query_scope = "COLLECTION_GROUP"

  fields {
    field_path = "held"
    order      = "ASCENDING"
  }
  fields {
    field_path = "published"
    order      = "ASCENDING"
  }
  fields {
    field_path = "state"
    order      = "ASCENDING"
  }
  fields {
    field_path = "queued_at"
    order      = "ASCENDING"
  }
}

# FirestoreStore.overdue_locks: lock_held == true AND queued_at <= t ORDER BY queued_at.
resource "google_firestore_index" "jobs_lock_held_queued_at" {
  project     = var.project_id
  database    = google_firestore_database.default.name
  collection  = "jobs"
  query_scope = "COLLECTION_GROUP"

  fields {
    field_path = "lock_held"
    order      = "ASCENDING"
  }
  fields {
    field_path = "queued_at"
    order      = "ASCENDING"
  }
}
