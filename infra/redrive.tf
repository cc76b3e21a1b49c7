# Dead-letter redrive for the platform team (issue 15 item 4; docs/operations-redrive.md).
#
# The admin_api function serves /v1/operations/dead-letters (operator JWTs only) as its own runtime
# identity, which already holds what redrive needs (roles/pubsub.admin as a gateway provisioner,
# roles/datastore.user). The dead-letter topics' audit subscriptions are in pubsub.tf. This file
# holds the index's field settings and what the command (python -m scripts.redrive) needs when
# someone of the platform team runs it with their own credentials.

# The index (shared/adapters/firestore_dead_letters.py) stores each parked message's data and
# attributes for its replay; nothing ever queries them, and indexing up to 900 KiB of bytes per
# document would only cost writes and storage. Single-field index exemptions.
resource "google_firestore_field" "dead_letter_unindexed" {
  for_each = toset(["data", "replay_attributes"])

  project    = var.project_id
  database   = google_firestore_database.default.name
  collection = "dead_letters"
  field      = each.value

  index_config {}
}

variable "redrive_operator_members" {
  description = "IAM members of the platform team who run the redrive command (python -m scripts.redrive) with their own credentials, e.g. [\"group:platform-oncall@example.com\"]. Empty by default: the operations endpoint of admin_api needs no grant. Members get pull/ack on the two audit subscriptions and, project-wide, Firestore access (the index), subscription reads (a dead letter's source subscription) and publishing (gateway topics are created at runtime)."
  type        = list(string)
  default     = []
}

resource "google_pubsub_subscription_iam_member" "redrive_operator_audit" {
  for_each = { for pair in setproduct(keys(local.dead_letter), var.redrive_operator_members) : "${pair[0]} ${pair[1]}" => { kind = pair[0], member = pair[1] } }

  subscription = google_pubsub_subscription.dead_letter_audit[each.value.kind].name
  role         = "roles/pubsub.subscriber"
  member       = each.value.member
}

resource "google_project_iam_member" "redrive_operator" {
  for_each = { for pair in setproduct(["roles/datastore.user", "roles/pubsub.viewer", "roles/pubsub.publisher"], var.redrive_operator_members) : "${pair[0]} ${pair[1]}" => { role = pair[0], member = pair[1] } }

  project = var.project_id
  role    = each.value.role
  member  = each.value.member
}
