#!/usr/bin/env python3
"""Drives the sandbox's Dataverse emulator with Microsoft's official Python SDK.

Requires ``powerplatform-dataverse-client==1.1.0`` (and its dependencies ``requests`` and
``azure-core``). The SDK refuses non-HTTPS URLs, so the sandbox must run with ``--tls``:

    cosell sandbox --tls --listen 127.0.0.1:8787 &
    curl -s http://127.0.0.1:8787/_sandbox/ca.pem > /tmp/sandbox-ca.pem   # or https + -k
    COSELL_SANDBOX_URL=https://127.0.0.1:8787 REQUESTS_CA_BUNDLE=/tmp/sandbox-ca.pem \
        python tests/clients/dataverse_client.py

The script gets its own token from the sandbox's Entra ID endpoint (client credentials,
scope ``{base}/.default``), then creates an account and an opportunity, reads them back,
updates the opportunity, and lists opportunities in pages small enough to need at least
three round trips, checking every row is seen exactly once. It prints each step and exits
non-zero on the first failure.
"""

import os
import sys
import time
import uuid

import requests
from azure.core.credentials import AccessToken
from PowerPlatform.Dataverse.client import DataverseClient

CLIENT_ID = "cosell-sandbox"
CLIENT_SECRET = "sandbox-secret"


class SandboxCredential:
    """A TokenCredential look-alike: the SDK only calls ``get_token(*scopes)``."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self._token = None

    def get_token(self, *scopes, **_kwargs) -> AccessToken:
        if self._token is None or self._token.expires_on - 60 < time.time():
            scope = scopes[0] if scopes else f"{self.base_url}/.default"
            response = requests.post(
                f"{self.base_url}/common/oauth2/v2.0/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "scope": scope,
                },
                timeout=30,
            )
            response.raise_for_status()
            body = response.json()
            self._token = AccessToken(
                body["access_token"], int(time.time()) + int(body["expires_in"])
            )
        return self._token


def step(message: str) -> None:
    print(f"- {message}", flush=True)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def main() -> int:
    base_url = os.environ.get("COSELL_SANDBOX_URL", "").rstrip("/")
    if not base_url:
        print("COSELL_SANDBOX_URL is not set (e.g. https://127.0.0.1:8787)", file=sys.stderr)
        return 2
    run = uuid.uuid4().hex[:8]
    client = DataverseClient(base_url, SandboxCredential(base_url))

    step(f"create account 'SDK Account {run}'")
    account_id = client.records.create(
        "account", {"name": f"SDK Account {run}", "address1_postalcode": "98052"}
    )
    check(len(account_id) == 36, f"account id {account_id!r} is not a GUID")

    step("create opportunity bound to the account (label 'Develop' for salesstage)")
    opportunity_id = client.records.create(
        "opportunity",
        {
            "name": f"SDK Deal {run}",
            "estimatedvalue": 12500.5,
            "estimatedclosedate": "2026-06-30",
            # A label: the SDK converts it to the option value through picklist metadata.
            "salesstage": "Develop",
            "customerid_account@odata.bind": f"/accounts({account_id})",
            "parentaccountid@odata.bind": f"/accounts({account_id})",
        },
    )
    check(len(opportunity_id) == 36, f"opportunity id {opportunity_id!r} is not a GUID")

    step("retrieve the opportunity")
    record = client.records.retrieve(
        "opportunity",
        opportunity_id,
        select=["name", "estimatedvalue", "salesstage", "_customerid_value", "statuscode"],
    )
    check(record is not None, "the new opportunity was not found")
    check(record["name"] == f"SDK Deal {run}", f"name read back as {record['name']!r}")
    check(record["estimatedvalue"] == 12500.5, f"estimatedvalue {record['estimatedvalue']!r}")
    check(record["salesstage"] == 1, f"salesstage {record['salesstage']!r}, expected 1 (Develop)")
    check(record["_customerid_value"] == account_id, "customer lookup does not point to the account")
    check(record["statuscode"] == 1, f"statuscode {record['statuscode']!r}, expected 1")

    step("retrieve the account")
    account = client.records.retrieve("account", account_id, select=["name", "address1_postalcode"])
    check(account["address1_postalcode"] == "98052", "account postal code not stored")

    step("retrieve a missing row: None, not an exception")
    check(
        client.records.retrieve("opportunity", str(uuid.UUID(int=0))) is None,
        "a missing opportunity was found",
    )

    step("update the opportunity (PATCH with If-Match: *)")
    client.records.update(
        "opportunity", opportunity_id, {"name": f"SDK Deal {run} v2", "closeprobability": 40}
    )
    record = client.records.retrieve("opportunity", opportunity_id, select=["name", "closeprobability"])
    check(record["name"] == f"SDK Deal {run} v2", f"update not applied: {record['name']!r}")
    check(record["closeprobability"] == 40, "closeprobability not updated")

    count = 12
    step(f"create {count} more opportunities for the paging check")
    created = {opportunity_id}
    for i in range(count):
        created.add(
            client.records.create(
                "opportunity",
                {
                    "name": f"SDK Page {run} {i:02}",
                    "customerid_account@odata.bind": f"/accounts({account_id})",
                },
            )
        )

    page_size = 4
    step(f"list this account's opportunities with page_size={page_size}")
    pages = list(
        client.records.list_pages(
            "opportunity",
            filter=f"_customerid_value eq {account_id}",
            select=["name"],
            orderby=["name asc"],
            page_size=page_size,
        )
    )
    seen = [row["opportunityid"] for page in pages for row in page]
    print(f"  {len(pages)} pages, sizes {[len(page) for page in pages]}")
    check(len(pages) >= 3, f"expected at least 3 pages, got {len(pages)}")
    check(all(len(page) <= page_size for page in pages), "a page is larger than page_size")
    check(len(seen) == len(set(seen)), "a row was returned twice")
    check(set(seen) == created, f"rows seen {len(set(seen))} != rows created {len(created)}")

    step("records.list collects the same rows")
    result = client.records.list(
        "opportunity", filter=f"_customerid_value eq {account_id}", page_size=page_size
    )
    check(len(list(result)) == len(created), "records.list returned a different number of rows")

    print(f"OK: {len(created)} opportunities, {len(pages)} pages")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as error:  # noqa: BLE001 — any failure must exit non-zero, visibly
        print(f"FAILED: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
