"""The agent's local admin page (issue 14 item 2; seed 000 Step 3 "Configure Job Delivery on the
Gateway"): a Platform tab listing the job deliveries, "Add Job Delivery" with exactly the seed's
fields, edit, activate and deactivate, the link test with the seed's troubleshooting hints, and the
agent's recent jobs. Standard library only (http.server, hashlib, secrets, html)."""
