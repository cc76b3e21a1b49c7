# Composite indexes of the Jobs tab (shared/domain/job_query.py; issue 5). One index per
# filterable field and ordering: Firestore merges them for any combination of equality filters,
# so this list grows with the fields, not with their combinations. It must equal the
# ("jobs", "COLLECTION", ...) entries of COMPOSITE_INDEXES in shared/adapters/firestore_store.py:
# tests/unit/test_infra.py checks both ways. Firestore appends __name__ itself.

locals {
  job_query_indexes = [
    [["accession_number", "ASCENDING"], ["completed_at", "DESCENDING"]],
    [["accession_number", "ASCENDING"], ["patient_name_lower", "ASCENDING"], ["queued_at", "DESCENDING"]],
    [["accession_number", "ASCENDING"], ["queued_at", "DESCENDING"]],
    [["accession_number", "ASCENDING"], ["started_at", "DESCENDING"]],
    [["destination_id", "ASCENDING"], ["completed_at", "DESCENDING"]],
    [["destination_id", "ASCENDING"], ["patient_name_lower", "ASCENDING"], ["queued_at", "DESCENDING"]],
    [["destination_id", "ASCENDING"], ["queued_at", "DESCENDING"]],
    [["destination_id", "ASCENDING"], ["started_at", "DESCENDING"]],
    [["facility_id", "ASCENDING"], ["completed_at", "DESCENDING"]],
    [["facility_id", "ASCENDING"], ["patient_name_lower", "ASCENDING"], ["queued_at", "DESCENDING"]],
    [["facility_id", "ASCENDING"], ["queued_at", "DESCENDING"]],
    [["facility_id", "ASCENDING"], ["started_at", "DESCENDING"]],
    [["mrn", "ASCENDING"], ["completed_at", "DESCENDING"]],
    [["mrn", "ASCENDING"], ["patient_name_lower", "ASCENDING"], ["queued_at", "DESCENDING"]],
    [["mrn", "ASCENDING"], ["queued_at", "DESCENDING"]],
    [["mrn", "ASCENDING"], ["started_at", "DESCENDING"]],
    [["patient_name_lower", "ASCENDING"], ["queued_at", "DESCENDING"]],
    [["state", "ASCENDING"], ["completed_at", "DESCENDING"]],
    [["state", "ASCENDING"], ["patient_name_lower", "ASCENDING"], ["queued_at", "DESCENDING"]],
    [["state", "ASCENDING"], ["queued_at", "DESCENDING"]],
    [["state", "ASCENDING"], ["started_at", "DESCENDING"]],
    [["study_instance_uid", "ASCENDING"], ["completed_at", "DESCENDING"]],
    [["study_instance_uid", "ASCENDING"], ["patient_name_lower", "ASCENDING"], ["queued_at", "DESCENDING"]],
    [["study_instance_uid", "ASCENDING"], ["queued_at", "DESCENDING"]],
    [["study_instance_uid", "ASCENDING"], ["started_at", "DESCENDING"]],
    [["type", "ASCENDING"], ["completed_at", "DESCENDING"]],
    [["type", "ASCENDING"], ["patient_name_lower", "ASCENDING"], ["queued_at", "DESCENDING"]],
    [["type", "ASCENDING"], ["queued_at", "DESCENDING"]],
    [["type", "ASCENDING"], ["started_at", "DESCENDING"]],
  ]
}

resource "google_firestore_index" "job_query" {
  for_each = { for fields in local.job_query_indexes : join("-", [for f in fields : "${f[0]}.${f[1]}"]) => fields }

  project     = var.project_id
  database    = google_firestore_database.default.name
  collection  = "jobs"
  query_scope = "COLLECTION"

  dynamic "fields" {
    for_each = each.value
    content {
      field_path = fields.value[0]
      order      = fields.value[1]
    }
  }
}
