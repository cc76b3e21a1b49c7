# Production environment. Replace the placeholders with the real project and platform identity.
# terraform -chdir=infra plan -var-file=environments/prod.tfvars

project_id  = "archsync-prod"
region      = "europe-west1"
environment = "prod"

platform_invoker_members = [
  "serviceAccount:platform-api@platform-prod.iam.gserviceaccount.com",
]
platform_publisher_members = [
  "serviceAccount:platform-api@platform-prod.iam.gserviceaccount.com",
]

max_instance_count = 20

# The platform's study files bucket (gs://<bucket>/... in the exam events' study_storage_uri).
# Placeholder: set the real bucket.
study_bucket = "platform-prod-studies"

# Customer-managed encryption key (optional; null = Google-managed encryption):
# kms_key_name = "projects/<kms-project>/locations/europe-west1/keyRings/archsync/cryptoKeys/archsync-prod"

dispatch_grace_seconds     = 1800
attempt_allowance_seconds  = 900
max_result_window_seconds  = 43200
signature_max_skew_seconds = 300
publish_lease_seconds      = 60
sweep_schedule             = "*/5 * * * *"

generated_objects_retention_days = 365
provisioning_lease_seconds       = 300

# Admin API (admin_api). JWTs from the platform's identity provider, verified in the function.
# Placeholders: set the IdP's real public key(s), audience and issuer.
admin_jwt_public_keys_pem = <<-EOT
  -----BEGIN PUBLIC KEY-----
  REPLACE-WITH-THE-PLATFORM-IDP-PUBLIC-KEY
  -----END PUBLIC KEY-----
EOT
admin_jwt_audience        = "archsync-admin-api-prod"
admin_jwt_issuer          = "https://idp.platform-prod.example.com"
# Public by default (the function checks the JWT). Behind an API gateway, its service account:
# admin_invoker_members = ["serviceAccount:api-gateway@platform-prod.iam.gserviceaccount.com"]
