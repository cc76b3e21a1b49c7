"""IAM Admin adapter (google-cloud-iam): gateway service accounts and their JSON keys.

A gateway's account may live in another project than the deployment's own: the identity pool
(docs/scale.md, "Service accounts"), because a project holds at most 100 service accounts by
default. ``project`` arguments name it; the default is the deployment's project. Every other call
names the account by its email (``projects/-/serviceAccounts/EMAIL``: IAM finds the project)."""
from __future__ import annotations

from typing import Any, Optional

from .errors import translated


class IamAdmin:
    def __init__(self, project_id: str, client: Optional[Any] = None):
        self._project = project_id
        self._client = client
        self.calls = 0

    @property
    def client(self) -> Any:
        if self._client is None:
            from google.cloud import iam_admin_v1

            self._client = iam_admin_v1.IAMClient()
        return self._client

    @property
    def project(self) -> str:
        """The deployment's own project (the default home of a gateway's account)."""
        return self._project

    def email(self, account_id: str, project: Optional[str] = None) -> str:
        return f"{account_id}@{project or self._project}.iam.gserviceaccount.com"

    def create_service_account(self, account_id: str, display_name: str, project: Optional[str] = None) -> str:
        """Create (idempotently) the account in ``project``. A project at its service-account
        quota answers 429 "Maximum number of service accounts on project reached.": that raises
        QuotaExceeded (the caller may try another project of the pool)."""
        self.calls += 1
        with translated(f"create service account {account_id}", exists_ok=True):
            self.client.create_service_account(request={
                "name": f"projects/{project or self._project}",
                "account_id": account_id,
                "service_account": {"display_name": display_name[:100],
                                    "description": "Archive Synchronization gateway: pulls its job subscription"},
            })
        return self.email(account_id, project)

    def delete_service_account(self, email: str) -> None:
        """Deleting the account also revokes all its keys."""
        self.calls += 1
        with translated("delete service account", missing_ok=True):
            self.client.delete_service_account(request={"name": f"projects/-/serviceAccounts/{email}"})

    def create_key(self, email: str) -> tuple[str, bytes]:
        """A new JSON key: (key resource name, credentials file bytes). The bytes are a secret."""
        self.calls += 1
        with translated("create service account key"):
            key = self.client.create_service_account_key(request={"name": f"projects/-/serviceAccounts/{email}"})
        return key.name, bytes(key.private_key_data)

    def delete_key(self, key_name: str) -> None:
        self.calls += 1
        with translated("delete service account key", missing_ok=True):
            self.client.delete_service_account_key(request={"name": key_name})

    def list_keys(self, email: str) -> list[str]:
        """Resource names of the account's user-managed keys (the ones that can be downloaded and
        must be tracked; Google-managed keys never leave Google). None if the account is gone."""
        from google.cloud.iam_admin_v1 import types

        self.calls += 1
        keys: list[str] = []
        with translated("list service account keys", missing_ok=True):
            response = self.client.list_service_account_keys(request={
                "name": f"projects/-/serviceAccounts/{email}",
                "key_types": [types.ListServiceAccountKeysRequest.KeyType.USER_MANAGED]})
            keys = [k.name for k in response.keys]
        return keys
