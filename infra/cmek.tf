# Optional customer-managed encryption keys (CMEK): with var.kms_key_name set, the Pub/Sub topics,
# the Artifact Registry repository and the buckets declared here are encrypted with that Cloud KMS
# key, and the Google-managed service agents that do the encrypting may use it. null (the default)
# keeps Google-managed encryption at rest; the checkov CMEK findings (CKV_GCP_83, CKV_GCP_84) are
# suppressed with that reason beside each resource.
#
# Not covered: the gateway topics admin_api creates at runtime, the Firestore database (CMEK can
# only be chosen when a database is created), and the Cloud Functions source bucket that Google
# manages (gcf-v2-sources-*).

# The Cloud Storage service agent (looked up, which also creates it if the project has none yet).
data "google_storage_project_service_account" "this" {
  count = var.kms_key_name == null ? 0 : 1
}

locals {
  # Keys are known at plan time (for_each), whatever the values.
  cmek_service_agents = var.kms_key_name == null ? {} : merge(
    {
      pubsub           = local.pubsub_service_agent
      artifactregistry = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-artifactregistry.iam.gserviceaccount.com"
    },
    { for agent in data.google_storage_project_service_account.this : "storage" => "serviceAccount:${agent.email_address}" },
  )
}

resource "google_kms_crypto_key_iam_member" "cmek" {
  for_each = local.cmek_service_agents

  crypto_key_id = var.kms_key_name
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = each.value
}
