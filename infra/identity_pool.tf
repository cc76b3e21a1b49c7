# The gateway identity pool (docs/scale.md, "Service accounts"). A project holds at most 100
# service accounts by default (IAM quotas), and every gateway has its own, so at 5,000 gateways
# the accounts live in a pool of projects (var.gateway_identity_projects), created beforehand
# with billing (docs/deployment.md, bootstrap). admin_api and sweep_jobs create, key and delete
# the gateways' accounts there, exactly as in this project (iam.tf explains the two roles). The
# gateways' topics, subscriptions and bucket grants stay in this project: only the identities move.

locals {
  gateway_identity_pool_roles = [
    "roles/iam.serviceAccountAdmin",    # create/delete the gateway service accounts
    "roles/iam.serviceAccountKeyAdmin", # create/delete their JSON keys
  ]

  # "<project> <function> <role>" => grant; keys are known at plan time (no emails in them).
  gateway_identity_pool_grants = {
    for t in setproduct(var.gateway_identity_projects, sort(tolist(local.gateway_provisioners)), local.gateway_identity_pool_roles) :
    "${t[0]} ${t[1]} ${t[2]}" => { project = t[0], name = t[1], role = t[2] }
  }

  # IAM: the accounts and keys. Pub/Sub: a gateway's pull is charged to the project of its
  # credentials (Pub/Sub "Quotas and limits", quota usage attribution), which must have the API on.
  gateway_identity_pool_services = {
    for t in setproduct(var.gateway_identity_projects, ["iam.googleapis.com", "pubsub.googleapis.com"]) :
    "${t[0]} ${t[1]}" => { project = t[0], service = t[1] }
  }
}

resource "google_project_service" "identity_pool" {
  for_each = local.gateway_identity_pool_services

  project = each.value.project
  service = each.value.service

  # The pool projects exist for this deployment, but never switch an API off under live gateways.
  disable_on_destroy = false
}

resource "google_project_iam_member" "identity_pool" {
  for_each = local.gateway_identity_pool_grants

  project = each.value.project
  role    = each.value.role
  member  = google_service_account.function[each.value.name].member

  depends_on = [google_project_service.identity_pool]
}
