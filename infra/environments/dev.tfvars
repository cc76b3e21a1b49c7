# Development environment. Replace the placeholders with the real project and platform identity.
# terraform -chdir=infra plan -var-file=environments/dev.tfvars

project_id  = "archsync-dev"
region      = "europe-west1"
environment = "dev"

platform_invoker_members = [
  "serviceAccount:platform-api@platform-dev.iam.gserviceaccount.com",
]
platform_publisher_members = [
  "serviceAccount:platform-api@platform-dev.iam.gserviceaccount.com",
]

max_instance_count = 3

# The platform's study files bucket (gs://<bucket>/... in the exam events' study_storage_uri).
# Placeholder: set the real bucket.
study_bucket = "platform-dev-studies"

# Customer-managed encryption key (optional; null = Google-managed encryption):
# kms_key_name = "projects/<kms-project>/locations/europe-west1/keyRings/archsync/cryptoKeys/archsync-dev"

# Admin API (admin_api). JWTs from the platform's identity provider, verified in the function.
# Placeholders: set the IdP's real public key(s), audience and issuer.
admin_jwt_public_keys_pem = <<-EOT
  -----BEGIN PUBLIC KEY-----
  REPLACE-WITH-THE-PLATFORM-IDP-PUBLIC-KEY
  -----END PUBLIC KEY-----
EOT
admin_jwt_audience        = "archsync-admin-api-dev"
admin_jwt_issuer          = "https://idp.platform-dev.example.com"
# Public by default (the function checks the JWT). Behind an API gateway, its service account:
# admin_invoker_members = ["serviceAccount:api-gateway@platform-dev.iam.gserviceaccount.com"]

# The remaining tunables keep their defaults (same as shared/settings.py).
