"""Pub/Sub subscription permissions, checked where the local stack can check them (issue 12 item 5).

The Pub/Sub emulator has no IAM: it serves any pull on any subscription, and google-cloud-pubsub
itself drops the caller's credentials when ``PUBSUB_EMULATOR_HOST`` is set, so no front in the
request path could tell one gateway's pull from another's. What *is* held locally is each
subscription's IAM policy (provisioning sets it through the IAM stand-in, as it sets it in
production). :func:`require_consume` evaluates that policy for a gateway's key before the local
stack lets an agent pull: a gateway's service account may consume its own subscription only,
because provisioning grants ``roles/pubsub.subscriber`` there and nowhere else.

What stays unenforced: a pull the stack did not route through this check (anything talking to
the emulator directly), publishing (the functions publish to any topic), and subscription
management. docs/deployment.md lists these.
"""
from __future__ import annotations

from typing import Iterable, Mapping

from google.iam.v1 import policy_pb2

__all__ = ["CONSUME", "ROLE_PERMISSIONS", "PullDenied", "permitted", "require_consume"]

CONSUME = "pubsub.subscriptions.consume"
"""The permission Pull, StreamingPull, Acknowledge and ModifyAckDeadline need."""

# Predefined roles that carry subscription permissions
# (https://cloud.google.com/pubsub/docs/access-control#roles). Unknown roles grant nothing.
_SUBSCRIBER = {CONSUME, "pubsub.topics.attachSubscription", "pubsub.snapshots.seek"}
_VIEWER = {"pubsub.subscriptions.get", "pubsub.subscriptions.list"}
_EDITOR = _SUBSCRIBER | _VIEWER | {"pubsub.subscriptions.create", "pubsub.subscriptions.delete",
                                   "pubsub.subscriptions.update"}
ROLE_PERMISSIONS: Mapping[str, frozenset[str]] = {
    "roles/pubsub.subscriber": frozenset(_SUBSCRIBER),
    "roles/pubsub.viewer": frozenset(_VIEWER),
    "roles/pubsub.editor": frozenset(_EDITOR),
    "roles/pubsub.admin": frozenset(_EDITOR | {"pubsub.subscriptions.getIamPolicy",
                                               "pubsub.subscriptions.setIamPolicy"}),
}


class PullDenied(PermissionError):
    """What Pub/Sub answers as PERMISSION_DENIED (gRPC 7) for a pull without the permission."""


def permitted(policies: Mapping[str, policy_pb2.Policy], member: str, resource: str,
              permissions: Iterable[str]) -> set[str]:
    """Which of ``permissions`` ``member`` holds on ``resource`` through the resource's own policy.
    Conditional bindings grant nothing here: nothing in this project conditions a Pub/Sub grant,
    and an unevaluated condition must not widen access."""
    wanted = set(permissions)
    policy = policies.get(resource)
    held: set[str] = set()
    for binding in policy.bindings if policy is not None else ():
        if member in binding.members and not binding.HasField("condition"):
            held |= ROLE_PERMISSIONS.get(binding.role, frozenset())
    return wanted & held


def require_consume(policies: Mapping[str, policy_pb2.Policy], service_account_key: Mapping[str, str],
                    subscription_path: str) -> None:
    """Raise :class:`PullDenied` unless the key's service account may pull ``subscription_path``
    (``projects/P/subscriptions/S``), with the wording Pub/Sub uses."""
    member = f"serviceAccount:{service_account_key['client_email']}"
    if CONSUME not in permitted(policies, member, subscription_path, [CONSUME]):
        raise PullDenied(f"User not authorized to perform this action. ({member} lacks {CONSUME} on "
                         f"{subscription_path})")
