# Provider configuration, project lookup, shared locals and the Google APIs the deployment uses.
#
# One Google Cloud project per environment is assumed: resource names (topics, service accounts,
# functions) are not suffixed with the environment.

provider "google" {
  project = var.project_id
  region  = var.region

  # Applied to every resource that supports labels (buckets, topics, functions, ...).
  default_labels = {
    app         = "archsync"
    environment = var.environment
    managed-by  = "terraform"
  }
}

# The project number names Google-managed service agents (see local.pubsub_service_agent).
data "google_project" "this" {
  project_id = var.project_id
}

locals {
  # Pub/Sub's service agent: forwards undeliverable messages to the dead-letter topics and mints
  # the OIDC tokens of push subscriptions. The bare email is ARCHSYNC_PUBSUB_SERVICE_AGENT: the
  # provisioning code makes it a subscriber of each gateway subscription it creates.
  pubsub_service_agent_email = "service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  pubsub_service_agent       = "serviceAccount:${local.pubsub_service_agent_email}"
}

resource "google_project_service" "enabled" {
  for_each = toset([
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com", # builds the function containers
    "cloudfunctions.googleapis.com",
    "cloudresourcemanager.googleapis.com", # project IAM and the google_project lookup
    "cloudscheduler.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",    # log-based metrics (monitoring.tf)
    "monitoring.googleapis.com", # alert policies and the dashboard (monitoring.tf)
    "pubsub.googleapis.com",
    "run.googleapis.com", # 2nd gen functions run as Cloud Run services
    "storage.googleapis.com",
  ])

  project = var.project_id
  service = each.value

  # Other workloads in the project may depend on these APIs: never switch them off on destroy.
  disable_on_destroy = false
}
