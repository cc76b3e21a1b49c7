#!/usr/bin/env bash
# Post-deploy smoke test (cloudbuild.yaml step "smoke"): the deployed functions answer, and answer
# bad input the documented way. Reads `terraform output -json`. Writes nothing anywhere.
set -euo pipefail
outputs="$1"
url() { python3 -c "import json,sys; print(json.load(open('$outputs'))['$1']['value'])"; }

result_url=$(url result_endpoint_url)
lock_url=$(url lock_status_url)
admin_url=$(url admin_api_url)

expect() {  # expect <status> <curl args...>
  local want="$1"; shift
  local got
  got=$(curl -s -o /tmp/smoke.body -w '%{http_code}' "$@")
  if [ "$got" != "$want" ]; then echo "FAIL: $* -> $got (wanted $want): $(cat /tmp/smoke.body)"; exit 1; fi
  python3 -c "import json; json.load(open('/tmp/smoke.body'))" || { echo "FAIL: $* answered non-JSON"; exit 1; }
  echo "ok: $want $*"
}

# The Result Endpoint refuses an unsigned result with a JSON 401.
expect 401 -X POST -H 'Content-Type: application/json' -d '{}' "$result_url"
# The admin API refuses a request without a token with a JSON 401.
expect 401 "$admin_url/v1/facility-groups/smoke/gateways"
# The lock status is not public: Cloud Run refuses an unauthenticated caller before the function runs.
got=$(curl -s -o /dev/null -w '%{http_code}' "$lock_url/v1/facility-groups/smoke-test/exams/smoke-test/lock")
[ "$got" = "403" ] || [ "$got" = "401" ] || { echo "FAIL: lock status answered $got to an anonymous caller"; exit 1; }
echo "ok: $got anonymous lock status"
# The functions fed by Pub/Sub push or Cloud Scheduler have internal-only ingress: a caller outside
# the project (this build) is refused by the ingress setting (404) or IAM (401/403), never served.
for fn in on_exam_status_changed on_study_changed on_patient_updated on_facility_changed sweep_jobs; do
  fn_url=$(python3 -c "import json; print(json.load(open('$outputs'))['function_urls']['value']['$fn'])")
  got=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' -d '{}' "$fn_url")
  case "$got" in
    401|403|404) echo "ok: $got outside call to $fn" ;;
    *) echo "FAIL: $fn answered $got to a caller outside the project"; exit 1 ;;
  esac
done
echo "smoke test passed"
