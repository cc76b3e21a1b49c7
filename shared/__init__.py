"""Archive Synchronization: the domain library every Cloud Function imports.

Layout: ``domain`` (models and rules, no cloud imports), ``ports`` (Protocols the services
depend on), ``services`` (one use case each), ``adapters`` (Firestore, Pub/Sub), ``contracts``
(versioned JSON Schemas and the OpenAPI document).
"""
