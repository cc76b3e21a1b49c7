# Remote state in Cloud Storage.
#
# The state bucket has to exist before the first `terraform init`, so it is created out of band
# (not managed here) and passed in at init time, with one prefix per environment:
#
#   terraform -chdir=infra init \
#     -backend-config="bucket=<state-bucket>" \
#     -backend-config="prefix=archsync/<environment>"
#   terraform -chdir=infra plan -var-file=environments/<environment>.tfvars
#
# Give the state bucket versioning and uniform bucket-level access: the state holds resource
# attributes of the whole deployment.
terraform {
  backend "gcs" {}
}
