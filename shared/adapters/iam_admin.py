"""IAM Admin adapter (google-cloud-iam): gateway service accounts and their JSON keys."""
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

    def email(self, account_id: str) -> str:
        return f"{account_id}@{self._project}.iam.gserviceaccount.com"

    def create_service_account(self, account_id: str, display_name: str) -> str:
        self.calls += 1
        with translated(f"create service account {account_id}", exists_ok=True):
            self.client.create_service_account(request={
                "name": f"projects/{self._project}",
                "account_id": account_id,
                "service_account": {"display_name": display_name[:100],
                                    "description": "Archive Synchronization gateway: pulls its job subscription"},
            })
        return self.email(account_id)

    def delete_service_account(self, email: str) -> None:
        """Deleting the account also revokes all its keys."""
        self.calls += 1
        with translated("delete service account", missing_ok=True):
            self.client.delete_service_account(request={"name": f"projects/{self._project}/serviceAccounts/{email}"})

    def create_key(self, email: str) -> tuple[str, bytes]:
        """A new JSON key: (key resource name, credentials file bytes). The bytes are a secret."""
        self.calls += 1
        with translated("create service account key"):
            key = self.client.create_service_account_key(request={"name": f"projects/{self._project}/serviceAccounts/{email}"})
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
                "name": f"projects/{self._project}/serviceAccounts/{email}",
                "key_types": [types.ListServiceAccountKeysRequest.KeyType.USER_MANAGED]})
            keys = [k.name for k in response.keys]
        return keys
