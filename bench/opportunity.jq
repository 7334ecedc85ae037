# The `referral_to_opportunity` flow of mappings/dynamics365.yaml, hand-written in jq, for the
# benchmark in bench/map-vs-jq. Input: one Partner Center referral per line (JSON Lines).
# Output: per referral, the same JSON object as
#   cosell map --config mappings/dynamics365.yaml --flow referral_to_opportunity
# (create operation, no --records, so lookups are printed as {"$lookup": {...}} descriptions).
# Runs unchanged under jq 1.6+ and jaq 3; bench/check_equivalence.py checks it against cosell.
#
# Simplifications that are exact for the data bench/gen_referrals.py writes (and only there):
#   * `date`: closingDateTime always has a `Z` offset, so the UTC date is its first 10 chars;
#   * `country_code`: the country is always an alpha-2 code, so it is just upper-cased;
#   * `currency_code`: the currency is always an ISO 4217 code, so it is just upper-cased;
#   * `number`: dealValue is always a JSON number, which `number` leaves as it is.
#   * `trim`: surrounding whitespace is only ever ASCII (cosell trims any Unicode whitespace).
# cosell's general versions also parse other offsets, country names, alpha-3 codes, number text.

# settings:
def checkmark_in_name: true;
def referral_link_base: "https://partner.microsoft.com/dashboard/referrals/v2/opportunities";

# Transforms. Text transforms leave non-strings alone.
def truncate_chars($n): if type == "string" then .[:$n] else . end;
# `trim`; the regexes only run when an end is (ASCII) whitespace, which is rare.
def trim_ws:
  if type == "string"
     and (startswith(" ") or endswith(" ") or startswith("\t") or endswith("\t")
          or startswith("\n") or endswith("\n") or startswith("\r") or endswith("\r"))
  then sub("^\\s+"; "") | sub("\\s+$"; "")
  else . end;
def upcase: if type == "string" then ascii_upcase else . end;
def date_utc: if type == "string" then .[:10] else . end;
def country_code: upcase;
def currency_code: upcase;
# `default:` replaces null and "".
def default($d): if . == null or . == "" then $d else . end;
# minijinja truthiness (for `when:`): none, false, 0, "" and empty collections are false.
def truthy: . != null and . != false and . != 0 and . != "" and . != [] and . != {};
# template test `is email`: one `@`, text on both sides, a dot inside the domain, no spaces.
def is_email:
  type == "string"
  and (trim_ws as $s
       | ($s | split("@")) as $p
       | ($p | length) == 2 and $p[0] != ""
         and ($p[1] | contains(".") and (startswith(".") | not) and (endswith(".") | not))
         and ($s | contains(" ") or contains("\t") or contains("\n") or contains("\r") | not));

# value_maps:
def referral_stage:
  if . == "New/Pending" or . == "New/Received" then 2
  elif . == "Active/Accepted" then 1
  elif . == "Closed/Won" then 3
  elif . == "Closed/Lost" then 5
  elif . == "Closed/Declined" or . == "Closed/Expired" then 4
  else error("no entry for \(tojson) in value map `referral_stage`") end;
def sales_stage:
  if . == null then null
  else {"Qualify": 0, "Develop": 1, "Propose": 2, "Close": 3}[tostring] end;  # fallback: null
def help_code:
  if . == null then null
  else {"Unknown": 100000000, "GeneralOrOther": 100000000,
        "WorkloadSpecificValueProposition": 100000001, "CustomerTechnicalArchitecture": 100000002,
        "ProofOfConceptOrDemo": 100000003, "QuotesOrLicensing": 100000004,
        "PostSalesCustomerSuccess": 100000005}[tostring] end;       # fallback: null

# lookups: (the shape `cosell map` prints without --records)
def customer_account:
  .customerProfile as $c
  | {"$lookup": {
      name: "customer_account", entity: "accounts", id_field: "accountid",
      match: {name: $c.name, address1_postalcode: $c.address.postalCode},
      on_missing: "create",
      create: {
        name: ($c.name | trim_ws | truncate_chars(160)),
        address1_line1: $c.address.addressLine1,
        address1_line2: $c.address.addressLine2,
        address1_city: $c.address.city,
        address1_stateorprovince: $c.address.state,
        address1_postalcode: $c.address.postalCode,
        address1_country: ($c.address.country | country_code)
      },
      cache: false}};
def customer_contact:
  .customerProfile.team[0] as $t
  | {"$lookup": {
      name: "customer_contact", entity: "contacts", id_field: "contactid",
      match: {emailaddress1: $t.email},
      on_missing: "create",
      create: {
        firstname: $t.firstName,
        lastname: ($t.lastName | default("(unknown)")),
        emailaddress1: $t.email,
        telephone1: $t.phoneNumber,
        "parentcustomerid_account@odata.bind": {"$lookup": "customer_account"}
      },
      cache: false}};
def currency:
  {"$lookup": {
    name: "currency", entity: "transactioncurrencies", id_field: "transactioncurrencyid",
    match: {isocurrencycode: (.details.currency | currency_code)},
    on_missing: "fail",
    message: "Currency \(.details.currency) is not enabled in Dynamics 365",
    cache: true}};

# flow referral_to_opportunity, operation create:
select(.type == "Shared" and .status != "Closed")
| customer_account as $account
| {
    name: ((.name | truncate_chars(296)) + (if checkmark_in_name then " ✔" else "" end)),
    estimatedvalue: .details.dealValue,
    estimatedclosedate: (.details.closingDateTime | date_utc),
    description: (.details.notes | truncate_chars(2000)),
    "customerid_account@odata.bind": $account,
    "parentaccountid@odata.bind": $account,
    statuscode: ("\(.status)/\(.substatus)" | referral_stage),
    salesstage: (.salesStage | sales_stage),
    cosell_referralid: .id,
    cosell_referrallink: "\(referral_link_base)/\(.id)",
    cosell_synctopartnercenter: true,
    cosell_microsofthelp: (.inviteContext.assistanceRequestCode | help_code),
    cosell_microsoftvisibility: true,
    cosell_audit: ""
  }
  + (if .details.currency | truthy then {"transactioncurrencyid@odata.bind": currency} else {} end)
  + (if .customerProfile.team[0].email | is_email then {"parentcontactid@odata.bind": customer_contact} else {} end)
