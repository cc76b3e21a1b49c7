"""The local stack's strict Cloud Storage (issue 12): the authorising front over fake-gcs-server,
the set-up identity (an owner, like a project owner) and each function's runtime identity.
Used by the tests (tests/conftest.py) and the demo (devstack/demo.py) alike."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from devstack.gcs import BucketIamStandIn
from devstack.iam_standin import HARNESS_PROJECT, IamStandIn
from devstack.infra_grants import write_function_keys

if TYPE_CHECKING:
    from google.oauth2 import service_account

__all__ = ["start_strict_storage"]


def start_strict_storage(iam: IamStandIn, upstream: str,
                         function_keys: Path) -> tuple[BucketIamStandIn, "service_account.Credentials"]:
    """Start the authorising front in front of ``upstream`` (fake-gcs-server's URL) and return it
    with the owner's credentials. Every request needs a bearer token the IAM stand-in issued;
    the owner may do anything; each function's key is written to ``function_keys`` (what
    ARCHSYNC_LOCAL_CREDENTIALS_DIR names) and gets only the bucket grants infra/ makes
    (:func:`devstack.infra_grants.seed_bucket_grants`, per bucket set)."""
    owner = iam.credentials(HARNESS_PROJECT, "stack-owner")
    front = BucketIamStandIn(upstream=upstream, member_check=iam.unusable_member, principal_of=iam.principal_for_token,
                             owners=[f"serviceAccount:{owner.service_account_email}"]).start()
    write_function_keys(iam, function_keys)
    return front, owner
