# The Result Endpoint's link probe names only the gateway (X-ArchSync-Gateway: -/<gateway_id>,
# docs/gateway-agent.md "Admin page"): FirestoreStore.gateway_group finds its facility group with
# a collection-group equality query on gateways.id, which needs a collection-group single-field
# index (Firestore keeps single-field indexes for collection scope only by default). A field
# override replaces the defaults of that field, so the collection-scope index is declared too.
resource "google_firestore_field" "gateways_id" {
  project    = var.project_id
  database   = google_firestore_database.default.name
  collection = "gateways"
  field      = "id"

  index_config {
    indexes {
      order       = "ASCENDING"
      query_scope = "COLLECTION"
    }
    indexes {
      order       = "ASCENDING"
      query_scope = "COLLECTION_GROUP"
    }
  }
}
