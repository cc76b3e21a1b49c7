"""Reference on-prem gateway agent for Archive Synchronization (issue 6).

It does the gateway's side of the contracts in ``shared/contracts``: pulls job messages from the
gateway's Pub/Sub subscription, does the DICOM / HL7 work against the archive, and posts signed
results to the Result Endpoint. It is deployed on-prem, apart from the cloud functions, so it
imports nothing from the project's ``shared`` package. Run it with ``python -m gateway_agent``.
"""
