#!/usr/bin/env python3
"""Generate the data section of src/transforms/country.rs from Debian's iso-codes.

Not part of the deliverable: the generated Rust is checked in. Re-run with
`python3 tools/gen_country.py` after editing the curated tables below.
"""
import json
import unicodedata

SRC = "/usr/share/iso-codes/json/iso_3166-1.json"
TARGET = "src/transforms/country.rs"

# Display names: common English short names (CLDR / Salesforce picklist style).
NAMES = {
    "BN": "Brunei",
    "BO": "Bolivia",
    "CD": "Democratic Republic of the Congo",
    "CG": "Republic of the Congo",
    "CV": "Cape Verde",
    "FK": "Falkland Islands",
    "FM": "Micronesia",
    "IR": "Iran",
    "KP": "North Korea",
    "KR": "South Korea",
    "LA": "Laos",
    "MD": "Moldova",
    "MF": "Saint Martin",
    "MO": "Macao",
    "PN": "Pitcairn Islands",
    "PS": "Palestine",
    "RU": "Russia",
    "SH": "Saint Helena, Ascension and Tristan da Cunha",
    "ST": "São Tomé and Príncipe",
    "SX": "Sint Maarten",
    "SY": "Syria",
    "TW": "Taiwan",
    "TZ": "Tanzania",
    "VA": "Vatican City",
    "VE": "Venezuela",
    "VG": "British Virgin Islands",
    "VI": "U.S. Virgin Islands",
    "VN": "Vietnam",
}

# Extra English aliases (former names, everyday forms, CIA/UN styles).
# Policy: only forms that name exactly one ISO 3166-1 entry. Deliberately absent:
# "America", "Korea", "Virgin Islands" (ambiguous; bare "Congo" stays CG as the
# ISO short name), "Holland", "England"/"Scotland"/"Wales"/"Northern Ireland"
# (not ISO 3166-1 entries), "Kosovo"/"XK" (user-assigned code).
ALIASES_EN = {
    "AE": ["UAE", "U.A.E."],
    "AX": ["Aland"],
    "BA": ["Bosnia"],
    "BO": ["Bolivia, Plurinational State of"],
    "BQ": ["Caribbean Netherlands", "Bonaire"],
    "BS": ["The Bahamas", "Bahamas, The"],
    "CD": ["DR Congo", "DRC", "D.R. Congo", "Congo-Kinshasa", "Congo (Kinshasa)",
           "Congo, Democratic Republic of the", "Congo (DRC)", "Democratic Republic of Congo"],
    "CG": ["Congo-Brazzaville", "Congo (Brazzaville)", "Congo, Republic of the",
           "Congo (Republic)", "Republic of Congo"],
    "CI": ["Ivory Coast"],
    "CV": ["Cabo Verde"],
    "CZ": ["Czech Republic"],
    "FK": ["Falkland Islands (Malvinas)"],
    "FM": ["Micronesia, Federated States of"],
    "GB": ["UK", "U.K.", "Great Britain",
           "United Kingdom of Great Britain and Northern Ireland"],
    "GM": ["The Gambia", "Gambia, The"],
    "HK": ["Hong Kong SAR", "Hong Kong SAR China", "Hong Kong SAR, China"],
    "IR": ["Iran, Islamic Republic of"],
    "KP": ["Korea, North", "Korea (North)", "DPRK", "Korea, Democratic People's Republic of"],
    "KR": ["Korea, South", "Korea (South)", "Republic of Korea", "Korea, Republic of"],
    "LA": ["Lao PDR", "Lao People's Democratic Republic"],
    "MF": ["Saint Martin (French part)"],
    "MK": ["Macedonia", "The former Yugoslav Republic of Macedonia",
           "Macedonia, the former Yugoslav Republic of"],
    "MM": ["Burma", "Myanmar (Burma)"],
    "MO": ["Macau", "Macao SAR", "Macao SAR China", "Macau SAR"],
    "NL": ["The Netherlands"],
    "PN": ["Pitcairn"],
    "PS": ["Palestine, State of", "State of Palestine", "Palestinian Territories",
           "Palestinian Territory"],
    "RU": ["Russian Federation"],
    "SH": ["Saint Helena"],
    "ST": ["Sao Tome and Principe"],
    "SX": ["Sint Maarten (Dutch part)"],
    "SY": ["Syrian Arab Republic"],
    "SZ": ["Swaziland"],
    "TL": ["East Timor"],
    "TR": ["Turkey", "Turkiye", "Republic of Turkey"],
    "TW": ["Taiwan, Province of China"],
    "TZ": ["Tanzania, United Republic of"],
    "US": ["USA", "U.S.A.", "U.S.", "United States of America"],
    "UM": ["U.S. Minor Outlying Islands", "U.S. Outlying Islands"],
    "VA": ["Holy See", "Vatican", "Holy See (Vatican City State)", "Vatican City State"],
    "VE": ["Venezuela, Bolivarian Republic of"],
    "VG": ["Virgin Islands, British", "Virgin Islands (British)"],
    "VI": ["Virgin Islands, U.S.", "Virgin Islands (U.S.)", "US Virgin Islands",
           "United States Virgin Islands"],
    "VN": ["Viet Nam"],
    "WF": ["Wallis and Futuna Islands"],
}

# Dutch / German / French / Spanish (and a few endonyms) for the largest
# partner markets. Entries equal to an English name are harmless duplicates.
ALIASES_INTL = {
    "US": ["Verenigde Staten", "Verenigde Staten van Amerika", "Vereinigte Staaten",
           "Vereinigte Staaten von Amerika", "États-Unis", "États-Unis d'Amérique",
           "Estados Unidos", "Estados Unidos de América", "EE.UU."],
    "GB": ["Verenigd Koninkrijk", "Groot-Brittannië", "Vereinigtes Königreich",
           "Großbritannien", "Royaume-Uni", "Grande-Bretagne", "Reino Unido",
           "Gran Bretaña"],
    "DE": ["Duitsland", "Deutschland", "Allemagne", "Alemania", "Germania"],
    "FR": ["Frankrijk", "Frankreich", "Francia"],
    "NL": ["Nederland", "Niederlande", "Pays-Bas", "Países Bajos"],
    "BE": ["België", "Belgien", "Belgique", "Bélgica", "Belgio"],
    "LU": ["Luxemburg", "Luxemburgo", "Lëtzebuerg"],
    "CH": ["Zwitserland", "Schweiz", "Suisse", "Suiza", "Svizzera"],
    "AT": ["Oostenrijk", "Österreich", "Autriche"],
    "ES": ["Spanje", "Spanien", "Espagne", "España"],
    "PT": [],
    "IT": ["Italië", "Italien", "Italie", "Italia"],
    "IE": ["Ierland", "Irland", "Irlande", "Irlanda", "Éire"],
    "DK": ["Denemarken", "Dänemark", "Danemark", "Dinamarca", "Danmark"],
    "SE": ["Zweden", "Schweden", "Suède", "Suecia", "Sverige"],
    "NO": ["Noorwegen", "Norwegen", "Norvège", "Noruega", "Norge"],
    "FI": ["Finnland", "Finlande", "Finlandia", "Suomi"],
    "PL": ["Polen", "Pologne", "Polonia", "Polska"],
    "CZ": ["Tsjechië", "Tschechien", "Tschechische Republik", "Tchéquie",
           "République tchèque", "Chequia", "República Checa", "Česko"],
    "HU": ["Hongarije", "Ungarn", "Hongrie", "Hungría", "Magyarország"],
    "RO": ["Roemenië", "Rumänien", "Roumanie", "Rumanía"],
    "GR": ["Griekenland", "Griechenland", "Grèce", "Grecia"],
    "TR": ["Turkije", "Türkei", "Turquie", "Turquía"],
    "BR": ["Brazilië", "Brasilien", "Brésil", "Brasil"],
    "MX": ["Mexiko", "Mexique", "México"],
    "AR": ["Argentinië", "Argentinien", "Argentine"],
    "CL": ["Chili"],
    "CO": ["Kolumbien", "Colombie"],
    "CA": ["Kanada", "Canadá"],
    "AU": ["Australië", "Australien", "Australie"],
    "NZ": ["Nieuw-Zeeland", "Neuseeland", "Nouvelle-Zélande", "Nueva Zelanda"],
    "JP": ["Japon", "Japón"],
    "CN": ["Chine"],
    "IN": ["Indien", "Inde"],
    "SG": ["Singapur", "Singapour"],
    "HK": ["Hongkong"],
    "KR": ["Zuid-Korea", "Südkorea", "Corée du Sud", "Corea del Sur"],
    "ZA": ["Zuid-Afrika", "Südafrika", "Afrique du Sud", "Sudáfrica"],
    "AE": ["Verenigde Arabische Emiraten", "Vereinigte Arabische Emirate",
           "Émirats arabes unis", "Emiratos Árabes Unidos"],
    "SA": ["Saoedi-Arabië", "Saudi-Arabien", "Arabie saoudite", "Arabia Saudí",
           "Arabia Saudita"],
    "IL": ["Israël"],
    "RU": ["Rusland", "Russland", "Russie", "Rusia"],
    "UA": ["Oekraïne", "Ucrania"],
    "MY": ["Maleisië", "Malaisie", "Malasia"],
    "TH": ["Thaïlande", "Tailandia"],
    "ID": ["Indonesië", "Indonesien", "Indonésie"],
    "PH": ["Filipijnen", "Philippinen", "Filipinas"],
    "EG": ["Egypte", "Ägypten", "Égypte", "Egipto"],
}


def fold(s):
    """Mirror of the Rust normalizer (for collision checks only)."""
    s = s.replace("ß", "ss").replace("Æ", "AE").replace("æ", "ae").replace("Œ", "OE").replace("œ", "oe")
    s = s.replace("Ø", "O").replace("ø", "o").replace("Ł", "L").replace("ł", "l").replace("Đ", "D").replace("đ", "d")
    s = s.replace("ı", "i").replace("Þ", "Th").replace("þ", "th").replace("Ð", "D").replace("ð", "d")
    s = "".join(c for c in unicodedata.normalize("NFD", s) if not unicodedata.combining(c))
    out, pend = [], False
    for c in s.lower():
        if c.isalnum():
            if pend and out:
                out.append(" ")
            pend = False
            out.append(c)
        elif c in ".'’‘`´ʼ":
            continue
        elif c == "&":
            if out:
                out.append(" ")
            out.append("and")
            pend = True
        else:
            pend = True
    r = "".join(out)
    if r.startswith("the "):
        r = r[4:]
    return r.replace(" ", "")


def rust_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def main():
    data = json.load(open(SRC))["3166-1"]
    data.sort(key=lambda x: x["alpha_2"])
    assert len(data) == 249
    rows, aliases = [], []
    keys = {}

    def add_key(form, a2):
        k = fold(form)
        assert k, form
        if k in keys and keys[k] != a2:
            raise SystemExit(f"collision: {form!r} -> {k!r} for {a2} and {keys[k]}")
        keys[k] = a2
        if k.startswith("saint"):
            add_key("st" + k[5:], a2)

    for x in data:
        a2 = x["alpha_2"]
        name = NAMES.get(a2, x.get("common_name", x["name"]))
        rows.append((a2, x["alpha_3"], int(x["numeric"]), name))
        forms = []
        for f in [name, x["name"], x.get("common_name"), x.get("official_name")]:
            if f and f not in forms:
                forms.append(f)
        for f in ALIASES_EN.get(a2, []) + ALIASES_INTL.get(a2, []):
            if f not in forms:
                forms.append(f)
        for f in forms:
            add_key(f, a2)
        extra = [f for f in forms if f != name]
        if extra:
            aliases.append((a2, extra))
    for a2 in list(ALIASES_EN) + list(ALIASES_INTL):
        assert any(r[0] == a2 for r in rows), a2

    out = ["// BEGIN GENERATED by tools/gen_country.py from Debian iso-codes; curated names/aliases live there.",
           "",
           "/// Every ISO 3166-1 entry (249), sorted by alpha-2 code.",
           "#[rustfmt::skip]",
           "const COUNTRY_TABLE: [Country; 249] = ["]
    for a2, a3, num, name in rows:
        out.append(f"    entry({rust_str(a2)}, {rust_str(a3)}, {num}, {rust_str(name)}),")
    out.append("];")
    out.append("")
    out.append("/// Other spellings accepted by [`find`]: ISO short and official names, former")
    out.append("/// names, everyday forms and Dutch/German/French/Spanish names of large markets.")
    out.append("#[rustfmt::skip]")
    out.append("static ALIASES: &[(&str, &[&str])] = &[")
    for a2, forms in aliases:
        line = f"    ({rust_str(a2)}, &["
        parts = [rust_str(f) for f in forms]
        cur = line
        for i, part in enumerate(parts):
            piece = part + (", " if i < len(parts) - 1 else "")
            if len(cur) + len(piece) > 98 and cur.strip() != line.strip():
                out.append(cur.rstrip())
                cur = "        "
            cur += piece
        out.append(cur + "]),")
    out.append("];")
    out.append("")
    out.append("// END GENERATED")
    gen = "\n".join(out) + "\n"
    src = open(TARGET).read()
    start = src.index("// BEGIN GENERATED")
    end = src.index("// END GENERATED") + len("// END GENERATED\n")
    open(TARGET, "w").write(src[:start] + gen + src[end:])
    print(f"{len(rows)} countries, {len(keys)} lookup keys")


if __name__ == "__main__":
    main()
