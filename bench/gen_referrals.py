#!/usr/bin/env python3
"""Writes N realistic Partner Center referrals as JSON Lines (deterministic, seeded).

    python3 bench/gen_referrals.py OUT.jsonl [--count 100000] [--seed 20261121]

Every record is based on mappings/examples/referral-doc-create-request.json (the documented
"create referral" request) with the fields that a real referral feed varies changed per record.
Every record is valid for mappings/dynamics365.yaml's `referral_to_opportunity` flow: a name, a
customer name, a two-letter country code and a closing date are always present.

What the jq program (bench/opportunity.jq) relies on, by construction of this data:
  * `details.closingDateTime` is always RFC 3339 with a `Z` offset, so its UTC date is its
    first 10 characters (cosell's `date` transform also converts other offsets);
  * `customerProfile.address.country` is always an ISO 3166-1 alpha-2 code, sometimes in lower
    case, so cosell's `country_code` transform is "upper-case it" here (cosell also accepts
    names and alpha-3 codes);
  * `details.currency` is an ISO 4217 code, sometimes in lower case, so `currency_code` is
    "upper-case it" here;
  * leading/trailing whitespace only ever is ASCII spaces.
"""

import argparse
import copy
import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATE = os.path.join(HERE, "..", "mappings", "examples", "referral-doc-create-request.json")

COMPANIES = [
    "Contoso", "Fabrikam", "Northwind Traders", "Tailspin Toys", "Wide World Importers",
    "Adventure Works", "Woodgrove Bank", "Litware", "Proseware", "Alpine Ski House",
    "Coho Winery", "Lamna Healthcare", "Trey Research", "Wingtip Toys", "Relecloud",
    "Müller & Söhne", "Société Générale d'Études", "Łódź Logistics", "Ørsted Byg",
    "Café São Paulo", "株式会社テスト", "北京数据科技", "Ελληνική Ναυτιλία", "Завод Прогресс",
    "Zürich Rück", "Crème Brûlée Ltd", "Straße & Co",
]
SUFFIXES = ["Inc", "Ltd", "GmbH", "SA", "BV", "KK", "AG", "LLC", "plc", "Oy", ""]
DEAL_WORDS = [
    "deal", "Azure migration", "Dynamics 365 rollout", "Copilot pilot", "data platform",
    "SAP on Azure", "modern workplace", "déploiement", "Migración", "移行プロジェクト", "升级",
    "security uplift 🔒", "AI assistant 🤖",
]
FIRST = ["Sue", "Joe", "Anna", "Lars", "Aiko", "José", "Zoë", "Ming", "Olga", "Sven", "Priya", "Noah"]
LAST = ["Smith", "Hansen", "de Vries", "Nakamura", "García", "Müller", "Chen", "Ivanova", "O'Brien"]
# (country, postal-code maker, city, state)
PLACES = [
    ("US", lambda r: "%05d" % r.randint(1000, 99999), "Redmond", "WA"),
    ("US", lambda r: "%05d" % r.randint(1000, 99999), "New York", "NY"),
    ("CA", lambda r: "M5V %d%s%d" % (r.randint(0, 9), r.choice("ABCEGH"), r.randint(0, 9)), "Toronto", "ON"),
    ("GB", lambda r: "SW1A %d%s%s" % (r.randint(0, 9), r.choice("ABD"), r.choice("ABD")), "London", None),
    ("DE", lambda r: "%05d" % r.randint(10000, 99999), "München", "BY"),
    ("FR", lambda r: "750%02d" % r.randint(1, 20), "Paris", None),
    ("NL", lambda r: "%04d %s%s" % (r.randint(1000, 9999), r.choice("ABCD"), r.choice("KLMN")), "Amsterdam", "NH"),
    ("JP", lambda r: "%03d-%04d" % (r.randint(100, 999), r.randint(0, 9999)), "東京", None),
    ("CH", lambda r: "%04d" % r.randint(1000, 9999), "Zürich", "ZH"),
    ("ES", lambda r: "%05d" % r.randint(1000, 52999), "Madrid", None),
    ("BR", lambda r: "%05d-%03d" % (r.randint(1000, 99999), r.randint(0, 999)), "São Paulo", "SP"),
    ("IN", lambda r: "%06d" % r.randint(110000, 855999), "Bengaluru", "KA"),
    ("AU", lambda r: "%04d" % r.randint(2000, 7999), "Sydney", "NSW"),
    ("SE", lambda r: "%03d %02d" % (r.randint(100, 999), r.randint(0, 99)), "Göteborg", None),
    ("PL", lambda r: "%02d-%03d" % (r.randint(0, 99), r.randint(0, 999)), "Łódź", None),
]
CURRENCIES = ["USD"] * 10 + ["EUR"] * 5 + ["GBP"] * 3 + ["JPY"] * 2
STATUSES = [("New", "Pending")] * 14 + [("New", "Received")] * 3 + [("Active", "Accepted")] * 3
HELP_CODES = ["GeneralOrOther", "CustomerTechnicalArchitecture", "ProofOfConceptOrDemo"]
SALES_STAGES = ["Qualify", "Develop", "Propose", "Close"]
NOTE_SENTENCES = [
    "Customer is looking to leverage Dynamics 365 to manage their supply chain.",
    "Needs a landing zone before Q3; security review pending.",
    "Le client souhaite migrer 300 VM vers Azure.",
    "顧客はデータ基盤の刷新を検討中。",
    "Budget approved — waiting for the PO ✅.",
    "Contact prefers e-mail; \"urgent\" per the account manager.",
]


def uuid_like(r):
    return "%08x-%04x-4%03x-%04x-%012x" % (
        r.getrandbits(32), r.getrandbits(16), r.getrandbits(12),
        0x8000 | r.getrandbits(14), r.getrandbits(48))


def referral(base, i, r):
    ref = copy.deepcopy(base)
    ref["id"] = uuid_like(r)
    company = r.choice(COMPANIES)
    suffix = r.choice(SUFFIXES)
    customer = (company + " " + suffix).strip() + (" %d" % r.randint(1, 999) if r.random() < 0.5 else "")
    name = "%s %s #%d" % (company, r.choice(DEAL_WORDS), i)
    if r.random() < 0.01:  # over the 296-character limit of the opportunity name
        name = (name + " – ") * 30
    ref["name"] = name
    ref["type"] = "Independent" if r.random() < 0.10 else "Shared"
    ref["status"], ref["substatus"] = r.choice(STATUSES)

    d = ref["details"]
    if r.random() < 0.8:
        d["dealValue"] = r.randint(1, 5000) * 100
    else:
        d["dealValue"] = r.randint(100, 2_000_000) + r.randint(1, 99) / 100
    cur = r.choice(CURRENCIES)
    roll = r.random()
    if roll < 0.03:
        d.pop("currency", None)  # no currency: the currency lookup is left out
    else:
        d["currency"] = cur.lower() if roll > 0.97 else cur
    y, m, day = r.randint(2025, 2028), r.randint(1, 12), r.randint(1, 28)
    hh, mm = (0, 0) if r.random() < 0.7 else (r.randint(0, 23), r.choice([0, 15, 30, 45]))
    d["closingDateTime"] = "%04d-%02d-%02dT%02d:%02d:00Z" % (y, m, day, hh, mm)
    roll = r.random()
    if roll < 0.15:
        d.pop("notes", None)
    elif roll < 0.16:  # over the 2000-character limit of the description
        d["notes"] = " ".join(NOTE_SENTENCES * 10)
    else:
        d["notes"] = " ".join(r.sample(NOTE_SENTENCES, r.randint(1, 3)))

    cp = ref["customerProfile"]
    if r.random() < 0.02:  # surrounding spaces: `trim` in the account's create fields
        customer = "  " + customer + " "
    if r.random() < 0.005:  # over the 160-character account name limit
        customer = (customer.strip() + " Holding ") * 12
    cp["name"] = customer
    country, postal, city, state = r.choice(PLACES)
    a = cp["address"]
    a["postalCode"] = postal(r)
    a["country"] = country.lower() if r.random() < 0.05 else country
    a["city"] = city
    if state is None:
        a.pop("state", None)
    else:
        a["state"] = state
    a["addressLine1"] = "%d %s" % (r.randint(1, 999), r.choice(["Main St", "Hauptstraße", "Rue de la Paix", "Kerkstraat"]))
    if r.random() < 0.5:
        a.pop("addressLine2", None)

    t0 = cp["team"][0]
    first, last = r.choice(FIRST), r.choice(LAST)
    t0["firstName"] = first
    roll = r.random()
    if roll < 0.03:
        t0.pop("lastName", None)  # `default: (unknown)`
    elif roll < 0.05:
        t0["lastName"] = ""
    else:
        t0["lastName"] = last
    t0["phoneNumber"] = "+%d %d" % (r.randint(1, 99), r.randint(10**8, 10**10))
    roll = r.random()
    slug = "".join(ch for ch in (company.split()[0]).lower() if ch.isascii() and ch.isalnum()) or "example"
    if roll < 0.02:
        t0["email"] = "n/a"  # not an e-mail: no contact lookup
    elif roll < 0.03:
        t0["email"] = ""
    else:
        t0["email"] = "%s.%s%d@%s.example" % (first.lower(), "x" if not last.isascii() else last.lower().replace(" ", "").replace("'", ""), i, slug)

    ic = ref["inviteContext"]
    if r.random() < 0.5:
        ic["assistanceRequestCode"] = r.choice(HELP_CODES)
    if r.random() < 0.3:
        ref["salesStage"] = r.choice(SALES_STAGES)
    return ref


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="output path (JSON Lines)")
    ap.add_argument("--count", "-n", type=int, default=100000)
    ap.add_argument("--seed", type=int, default=20261121)
    args = ap.parse_args()
    with open(TEMPLATE, encoding="utf-8") as f:
        base = json.load(f)
    r = random.Random(args.seed)
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        for i in range(1, args.count + 1):
            out.write(json.dumps(referral(base, i, r), ensure_ascii=False, separators=(",", ":")))
            out.write("\n")
    os.replace(tmp, args.out)
    print("wrote %d referrals to %s" % (args.count, args.out), file=sys.stderr)


if __name__ == "__main__":
    main()
