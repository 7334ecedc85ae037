#!/usr/bin/env python3
"""Drives the sandbox's Salesforce emulator with the real `simple-salesforce` client.

Proves that an unmodified, widely used client works against the emulator: token, create,
get, update, upsert by External ID, paging with query_all, queryAll after a delete,
error mapping and limits.

Environment:
  COSELL_SANDBOX_URL   base URL of a running sandbox, normally https://127.0.0.1:PORT
                       (`cosell sandbox --tls`); trust its CA with REQUESTS_CA_BUNDLE.
                       simple-salesforce always builds https:// URLs; for a plain-HTTP
                       sandbox (http://…) the script mounts an adapter that sends its
                       requests over http instead.

Exit status 0 when every check passed, 1 otherwise.
Requires: pip install simple-salesforce requests
"""

import os
import sys
import uuid

import requests
from requests.adapters import HTTPAdapter
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceMalformedRequest,
    SalesforceResourceNotFound,
)

PAGE = 200
BULK = 650  # more than three pages of PAGE


class Downgrade(HTTPAdapter):
    """Sends simple-salesforce's hard-coded https:// requests over plain http."""

    def send(self, request, **kwargs):
        request.url = request.url.replace("https://", "http://", 1)
        return super().send(request, **kwargs)


def step(message):
    print(f"- {message}", flush=True)


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def main():
    base = os.environ.get("COSELL_SANDBOX_URL", "").rstrip("/")
    if not base:
        print("COSELL_SANDBOX_URL is not set", file=sys.stderr)
        return 1
    session = requests.Session()
    if base.startswith("http://"):
        session.mount("https://" + base[len("http://"):], Downgrade())

    token_response = session.post(
        f"{base}/services/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "cosell-sandbox",
            "client_secret": "sandbox-secret",
        },
    )
    check(token_response.status_code == 200, f"token: {token_response.status_code} {token_response.text}")
    token = token_response.json()
    step(f"token issued, instance_url {token['instance_url']}")

    sf = Salesforce(instance_url=base, session_id=token["access_token"], session=session, version="59.0")
    run = uuid.uuid4().hex[:8]

    account = sf.Account.create({"Name": f"Py Contoso {run}", "BillingPostalCode": "98052", "BillingCountryCode": "US"})
    check(account["success"] and account["id"].startswith("001"), f"account create: {account}")
    step(f"created Account {account['id']}")

    opportunity = sf.Opportunity.create(
        {
            "Name": f"Py deal {run}",
            "StageName": "Prospecting",
            "CloseDate": "2025-06-30",
            "Amount": 12500,
            "AccountId": account["id"],
        }
    )
    opportunity_id = opportunity["id"]
    check(opportunity_id.startswith("006") and len(opportunity_id) == 18, f"opportunity create: {opportunity}")
    step(f"created Opportunity {opportunity_id}")

    record = sf.Opportunity.get(opportunity_id)
    check(record["Name"] == f"Py deal {run}", f"get: {record}")
    check(record["Amount"] == 12500 and record["IsClosed"] is False, f"get: {record}")
    check(record["attributes"]["type"] == "Opportunity", f"attributes: {record['attributes']}")
    step("read it back")

    status = sf.Opportunity.update(opportunity_id, {"StageName": "Closed Won"})
    check(status == 204, f"update returned {status}")
    record = sf.Opportunity.get(opportunity_id)
    check(record["IsWon"] is True and record["Probability"] == 100, f"after update: {record}")
    step("updated the stage; IsWon and Probability follow")

    referral = f"PY-{run}"
    status = sf.Opportunity.upsert(
        f"Referral_Id__c/{referral}",
        {"Name": f"Py referral {run}", "StageName": "On Hold", "CloseDate": "2025-09-30"},
    )
    check(status == 201, f"upsert (create) returned {status}")
    status = sf.Opportunity.upsert(f"Referral_Id__c/{referral}", {"Amount": 777})
    check(status == 200, f"upsert (update) returned {status}")
    by_key = sf.Opportunity.get_by_custom_id("Referral_Id__c", referral)
    check(by_key["Amount"] == 777 and by_key["StageName"] == "On Hold", f"get_by_custom_id: {by_key}")
    matches = sf.query(f"SELECT Id FROM Opportunity WHERE Referral_Id__c = '{referral}'")
    check(matches["totalSize"] == 1, f"upsert made duplicates: {matches}")
    step("upserted by Referral_Id__c: 201, then 200, one record")

    try:
        sf.Opportunity.create({"Name": "bad", "StageName": "Dreaming", "CloseDate": "2025-01-01"})
        check(False, "a bad stage was accepted")
    except SalesforceMalformedRequest as error:
        check(error.content[0]["errorCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", f"error: {error.content}")
    step("a bad stage is refused with INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST")

    for start in range(0, BULK, 200):
        records = [
            {"attributes": {"type": "Opportunity"}, "Name": f"Py bulk {run} {i:04}", "StageName": "Qualification", "CloseDate": "2025-12-31"}
            for i in range(start, min(start + 200, BULK))
        ]
        results = sf.restful("composite/sobjects", method="POST", json={"allOrNone": True, "records": records})
        check(all(r["success"] for r in results), f"composite create: {results[:2]}")
    step(f"created {BULK} opportunities through composite/sobjects")

    pages = []
    session.hooks["response"].append(lambda response, *args, **kwargs: pages.append(response.url) if "/query" in response.url else None)
    soql = f"SELECT Id, Name FROM Opportunity WHERE Name LIKE 'Py bulk {run} %' ORDER BY Name"
    first = sf.query(soql, headers={"Sforce-Query-Options": f"batchSize={PAGE}"})
    check(first["done"] is False and first["totalSize"] == BULK, f"first page: done={first['done']} total={first['totalSize']}")
    check(first["nextRecordsUrl"].startswith("/services/data/v59.0/query/"), f"nextRecordsUrl: {first['nextRecordsUrl']}")
    pages.clear()
    everything = sf.query_all(soql, headers={"Sforce-Query-Options": f"batchSize={PAGE}"})
    names = [r["Name"] for r in everything["records"]]
    check(len(names) == BULK and names == sorted(names), f"query_all returned {len(names)} records")
    check(len(set(names)) == BULK, "query_all returned duplicates")
    check(len(pages) == 4, f"expected 4 pages, fetched {len(pages)}: {pages}")
    step(f"query_all fetched {len(names)} records in {len(pages)} pages of {PAGE}")

    check(sf.Opportunity.delete(opportunity_id) == 204, "delete")
    try:
        sf.Opportunity.get(opportunity_id)
        check(False, "a deleted record was returned")
    except SalesforceResourceNotFound as error:
        check(error.content[0]["errorCode"] == "ENTITY_IS_DELETED", f"error: {error.content}")
    live = sf.query(f"SELECT Id FROM Opportunity WHERE Id = '{opportunity_id}'")
    archived = sf.query_all(f"SELECT Id, IsDeleted FROM Opportunity WHERE Id = '{opportunity_id}'", include_deleted=True)
    check(live["totalSize"] == 0, f"query saw a deleted row: {live}")
    check(archived["totalSize"] == 1 and archived["records"][0]["IsDeleted"] is True, f"queryAll: {archived}")
    step("deleted: ENTITY_IS_DELETED on get, gone from query, present in queryAll")

    limits = sf.limits()
    daily = limits["DailyApiRequests"]
    check(daily["Max"] > daily["Remaining"], f"limits: {daily}")
    check(sf.api_usage["api-usage"].used > 0, f"api_usage: {sf.api_usage}")
    step(f"limits: {daily['Remaining']} of {daily['Max']} daily requests left; header says {sf.api_usage['api-usage']}")

    print("OK: simple-salesforce works against the sandbox")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as error:  # any failure, including unexpected API errors
        print(f"FAILED: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
