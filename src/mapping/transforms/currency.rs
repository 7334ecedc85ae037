//! ISO 4217 currencies: the active codes of "list one" and a case-insensitive
//! lookup.
//!
//! The table holds every currency and fund code in use as of ISO 4217
//! amendment 177 and the 2025 switch from ANG to XCG: withdrawn codes (HRK,
//! SLL, ZWL, ANG, …) are absent, and so are the codes whose minor unit is
//! "N.A." (precious metals XAU/XAG/XPT/XPD, bond units XBA–XBD, XDR, XSU,
//! XUA, and the testing/no-currency codes XTS/XXX), because they never
//! denominate a deal value. Fund codes (BOV, CHE, CHW, CLF, COU, MXV, USN,
//! UYI, UYW) are included.
//!
//! Lookups go through a compile-time index: no hashing, no allocation.

/// One active ISO 4217 currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    /// Alphabetic code in upper case, e.g. `"EUR"`.
    pub code: &'static str,
    /// Numeric code, e.g. `978`.
    pub numeric: u16,
    /// Digits after the decimal separator: 0, 2, 3 or 4.
    pub minor_units: u8,
    /// English name as published by ISO, e.g. `"Euro"`.
    pub name: &'static str,
}

/// Finds an active currency by its alphabetic code, case-insensitively and
/// ignoring surrounding whitespace (`" eur "` → EUR). Names and symbols are not
/// recognised.
pub fn find(code: &str) -> Option<&'static Currency> {
    let slot = code_slot(code.trim().as_bytes())?;
    let index = *INDEX.get(slot)?;
    if index == NO_CURRENCY {
        None
    } else {
        CURRENCIES.get(usize::from(index))
    }
}

/// True when `s` is exactly an active code in upper case (`"EUR"`); `"eur"`,
/// `" EUR"`, `"XAU"` and `"HRK"` are not.
pub fn is_code(s: &str) -> bool {
    s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase()) && find(s).is_some()
}

/// All currencies in the table, sorted by code.
pub fn all() -> &'static [Currency] {
    &CURRENCIES
}

static CURRENCIES: [Currency; N] = TABLE;

/// Table row constructor (keeps the table one line per currency).
const fn entry(code: &'static str, numeric: u16, minor_units: u8, name: &'static str) -> Currency {
    Currency {
        code,
        numeric,
        minor_units,
        name,
    }
}

const NO_CURRENCY: u8 = u8::MAX;

/// Base-26 position of a three-letter code, or `None` when `code` is not three
/// ASCII letters.
fn code_slot(code: &[u8]) -> Option<usize> {
    if code.len() != 3 {
        return None;
    }
    code.iter().try_fold(0usize, |acc, b| {
        b.is_ascii_alphabetic()
            .then(|| acc * 26 + usize::from(b.to_ascii_uppercase() - b'A'))
    })
}

/// Code (base-26) → index into [`CURRENCIES`].
static INDEX: [u8; 26 * 26 * 26] = {
    let mut table = [NO_CURRENCY; 26 * 26 * 26];
    let mut i = 0;
    while i < TABLE.len() {
        let b = TABLE[i].code.as_bytes();
        let slot =
            ((b[0] - b'A') as usize * 26 + (b[1] - b'A') as usize) * 26 + (b[2] - b'A') as usize;
        table[slot] = i as u8;
        i += 1;
    }
    table
};

const N: usize = 166;

/// Active ISO 4217 codes, sorted by code.
#[rustfmt::skip]
const TABLE: [Currency; N] = [
    entry("AED", 784, 2, "UAE Dirham"),
    entry("AFN", 971, 2, "Afghani"),
    entry("ALL", 8, 2, "Lek"),
    entry("AMD", 51, 2, "Armenian Dram"),
    entry("AOA", 973, 2, "Kwanza"),
    entry("ARS", 32, 2, "Argentine Peso"),
    entry("AUD", 36, 2, "Australian Dollar"),
    entry("AWG", 533, 2, "Aruban Florin"),
    entry("AZN", 944, 2, "Azerbaijan Manat"),
    entry("BAM", 977, 2, "Convertible Mark"),
    entry("BBD", 52, 2, "Barbados Dollar"),
    entry("BDT", 50, 2, "Taka"),
    entry("BGN", 975, 2, "Bulgarian Lev"),
    entry("BHD", 48, 3, "Bahraini Dinar"),
    entry("BIF", 108, 0, "Burundi Franc"),
    entry("BMD", 60, 2, "Bermudian Dollar"),
    entry("BND", 96, 2, "Brunei Dollar"),
    entry("BOB", 68, 2, "Boliviano"),
    entry("BOV", 984, 2, "Mvdol"),
    entry("BRL", 986, 2, "Brazilian Real"),
    entry("BSD", 44, 2, "Bahamian Dollar"),
    entry("BTN", 64, 2, "Ngultrum"),
    entry("BWP", 72, 2, "Pula"),
    entry("BYN", 933, 2, "Belarusian Ruble"),
    entry("BZD", 84, 2, "Belize Dollar"),
    entry("CAD", 124, 2, "Canadian Dollar"),
    entry("CDF", 976, 2, "Congolese Franc"),
    entry("CHE", 947, 2, "WIR Euro"),
    entry("CHF", 756, 2, "Swiss Franc"),
    entry("CHW", 948, 2, "WIR Franc"),
    entry("CLF", 990, 4, "Unidad de Fomento"),
    entry("CLP", 152, 0, "Chilean Peso"),
    entry("CNY", 156, 2, "Yuan Renminbi"),
    entry("COP", 170, 2, "Colombian Peso"),
    entry("COU", 970, 2, "Unidad de Valor Real"),
    entry("CRC", 188, 2, "Costa Rican Colon"),
    entry("CUC", 931, 2, "Peso Convertible"),
    entry("CUP", 192, 2, "Cuban Peso"),
    entry("CVE", 132, 2, "Cabo Verde Escudo"),
    entry("CZK", 203, 2, "Czech Koruna"),
    entry("DJF", 262, 0, "Djibouti Franc"),
    entry("DKK", 208, 2, "Danish Krone"),
    entry("DOP", 214, 2, "Dominican Peso"),
    entry("DZD", 12, 2, "Algerian Dinar"),
    entry("EGP", 818, 2, "Egyptian Pound"),
    entry("ERN", 232, 2, "Nakfa"),
    entry("ETB", 230, 2, "Ethiopian Birr"),
    entry("EUR", 978, 2, "Euro"),
    entry("FJD", 242, 2, "Fiji Dollar"),
    entry("FKP", 238, 2, "Falkland Islands Pound"),
    entry("GBP", 826, 2, "Pound Sterling"),
    entry("GEL", 981, 2, "Lari"),
    entry("GHS", 936, 2, "Ghana Cedi"),
    entry("GIP", 292, 2, "Gibraltar Pound"),
    entry("GMD", 270, 2, "Dalasi"),
    entry("GNF", 324, 0, "Guinean Franc"),
    entry("GTQ", 320, 2, "Quetzal"),
    entry("GYD", 328, 2, "Guyana Dollar"),
    entry("HKD", 344, 2, "Hong Kong Dollar"),
    entry("HNL", 340, 2, "Lempira"),
    entry("HTG", 332, 2, "Gourde"),
    entry("HUF", 348, 2, "Forint"),
    entry("IDR", 360, 2, "Rupiah"),
    entry("ILS", 376, 2, "New Israeli Sheqel"),
    entry("INR", 356, 2, "Indian Rupee"),
    entry("IQD", 368, 3, "Iraqi Dinar"),
    entry("IRR", 364, 2, "Iranian Rial"),
    entry("ISK", 352, 0, "Iceland Krona"),
    entry("JMD", 388, 2, "Jamaican Dollar"),
    entry("JOD", 400, 3, "Jordanian Dinar"),
    entry("JPY", 392, 0, "Yen"),
    entry("KES", 404, 2, "Kenyan Shilling"),
    entry("KGS", 417, 2, "Som"),
    entry("KHR", 116, 2, "Riel"),
    entry("KMF", 174, 0, "Comorian Franc"),
    entry("KPW", 408, 2, "North Korean Won"),
    entry("KRW", 410, 0, "Won"),
    entry("KWD", 414, 3, "Kuwaiti Dinar"),
    entry("KYD", 136, 2, "Cayman Islands Dollar"),
    entry("KZT", 398, 2, "Tenge"),
    entry("LAK", 418, 2, "Lao Kip"),
    entry("LBP", 422, 2, "Lebanese Pound"),
    entry("LKR", 144, 2, "Sri Lanka Rupee"),
    entry("LRD", 430, 2, "Liberian Dollar"),
    entry("LSL", 426, 2, "Loti"),
    entry("LYD", 434, 3, "Libyan Dinar"),
    entry("MAD", 504, 2, "Moroccan Dirham"),
    entry("MDL", 498, 2, "Moldovan Leu"),
    entry("MGA", 969, 2, "Malagasy Ariary"),
    entry("MKD", 807, 2, "Denar"),
    entry("MMK", 104, 2, "Kyat"),
    entry("MNT", 496, 2, "Tugrik"),
    entry("MOP", 446, 2, "Pataca"),
    entry("MRU", 929, 2, "Ouguiya"),
    entry("MUR", 480, 2, "Mauritius Rupee"),
    entry("MVR", 462, 2, "Rufiyaa"),
    entry("MWK", 454, 2, "Malawi Kwacha"),
    entry("MXN", 484, 2, "Mexican Peso"),
    entry("MXV", 979, 2, "Mexican Unidad de Inversion (UDI)"),
    entry("MYR", 458, 2, "Malaysian Ringgit"),
    entry("MZN", 943, 2, "Mozambique Metical"),
    entry("NAD", 516, 2, "Namibia Dollar"),
    entry("NGN", 566, 2, "Naira"),
    entry("NIO", 558, 2, "Cordoba Oro"),
    entry("NOK", 578, 2, "Norwegian Krone"),
    entry("NPR", 524, 2, "Nepalese Rupee"),
    entry("NZD", 554, 2, "New Zealand Dollar"),
    entry("OMR", 512, 3, "Rial Omani"),
    entry("PAB", 590, 2, "Balboa"),
    entry("PEN", 604, 2, "Sol"),
    entry("PGK", 598, 2, "Kina"),
    entry("PHP", 608, 2, "Philippine Peso"),
    entry("PKR", 586, 2, "Pakistan Rupee"),
    entry("PLN", 985, 2, "Zloty"),
    entry("PYG", 600, 0, "Guarani"),
    entry("QAR", 634, 2, "Qatari Rial"),
    entry("RON", 946, 2, "Romanian Leu"),
    entry("RSD", 941, 2, "Serbian Dinar"),
    entry("RUB", 643, 2, "Russian Ruble"),
    entry("RWF", 646, 0, "Rwanda Franc"),
    entry("SAR", 682, 2, "Saudi Riyal"),
    entry("SBD", 90, 2, "Solomon Islands Dollar"),
    entry("SCR", 690, 2, "Seychelles Rupee"),
    entry("SDG", 938, 2, "Sudanese Pound"),
    entry("SEK", 752, 2, "Swedish Krona"),
    entry("SGD", 702, 2, "Singapore Dollar"),
    entry("SHP", 654, 2, "Saint Helena Pound"),
    entry("SLE", 925, 2, "Leone"),
    entry("SOS", 706, 2, "Somali Shilling"),
    entry("SRD", 968, 2, "Surinam Dollar"),
    entry("SSP", 728, 2, "South Sudanese Pound"),
    entry("STN", 930, 2, "Dobra"),
    entry("SVC", 222, 2, "El Salvador Colon"),
    entry("SYP", 760, 2, "Syrian Pound"),
    entry("SZL", 748, 2, "Lilangeni"),
    entry("THB", 764, 2, "Baht"),
    entry("TJS", 972, 2, "Somoni"),
    entry("TMT", 934, 2, "Turkmenistan New Manat"),
    entry("TND", 788, 3, "Tunisian Dinar"),
    entry("TOP", 776, 2, "Pa'anga"),
    entry("TRY", 949, 2, "Turkish Lira"),
    entry("TTD", 780, 2, "Trinidad and Tobago Dollar"),
    entry("TWD", 901, 2, "New Taiwan Dollar"),
    entry("TZS", 834, 2, "Tanzanian Shilling"),
    entry("UAH", 980, 2, "Hryvnia"),
    entry("UGX", 800, 0, "Uganda Shilling"),
    entry("USD", 840, 2, "US Dollar"),
    entry("USN", 997, 2, "US Dollar (Next day)"),
    entry("UYI", 940, 0, "Uruguay Peso en Unidades Indexadas (UI)"),
    entry("UYU", 858, 2, "Peso Uruguayo"),
    entry("UYW", 927, 4, "Unidad Previsional"),
    entry("UZS", 860, 2, "Uzbekistan Sum"),
    entry("VED", 926, 2, "Bolívar Soberano"),
    entry("VES", 928, 2, "Bolívar Soberano"),
    entry("VND", 704, 0, "Dong"),
    entry("VUV", 548, 0, "Vatu"),
    entry("WST", 882, 2, "Tala"),
    entry("XAF", 950, 0, "CFA Franc BEAC"),
    entry("XCD", 951, 2, "East Caribbean Dollar"),
    entry("XCG", 532, 2, "Caribbean Guilder"),
    entry("XOF", 952, 0, "CFA Franc BCEAO"),
    entry("XPF", 953, 0, "CFP Franc"),
    entry("YER", 886, 2, "Yemeni Rial"),
    entry("ZAR", 710, 2, "Rand"),
    entry("ZMW", 967, 2, "Zambian Kwacha"),
    entry("ZWG", 924, 2, "Zimbabwe Gold"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn table_is_sorted_unique_and_well_formed() {
        let all = all();
        assert!(all.len() > 160, "{}", all.len());
        let mut codes = HashSet::new();
        let mut numerics = HashSet::new();
        for c in all {
            assert!(c.code.len() == 3 && c.code.bytes().all(|b| b.is_ascii_uppercase()));
            assert!(matches!(c.minor_units, 0 | 2 | 3 | 4), "{c:?}");
            assert!((1..1000).contains(&c.numeric), "{c:?}");
            assert!(!c.name.is_empty());
            assert!(codes.insert(c.code), "duplicate code {}", c.code);
            assert!(
                numerics.insert(c.numeric),
                "duplicate numeric {}",
                c.numeric
            );
        }
        assert!(all.windows(2).all(|w| w[0].code < w[1].code));
    }

    #[test]
    fn includes_the_major_currencies() {
        for code in [
            "USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "NZD", "INR", "CNY", "BRL", "MXN",
            "ZAR", "SEK", "NOK", "DKK", "PLN", "CZK", "HUF", "TRY", "AED", "SAR", "SGD", "HKD",
            "KRW", "TWD", "THB", "IDR", "MYR", "PHP", "ILS", "RUB", "RON", "BGN", "ISK", "CLP",
            "COP", "PEN", "ARS", "UAH", "EGP", "NGN", "KES", "QAR", "KWD", "BHD", "OMR", "VND",
            "XCG", "ZWG", "SLE", "VES", "VED", "STN", "MRU", "XOF", "XAF", "XPF", "XCD", "CLF",
        ] {
            assert!(is_code(code), "{code}");
            assert_eq!(find(code).map(|c| c.code), Some(code));
        }
    }

    #[test]
    fn minor_units_and_numerics() {
        let get = |code| find(code).map(|c| (c.numeric, c.minor_units));
        assert_eq!(get("USD"), Some((840, 2)));
        assert_eq!(get("EUR"), Some((978, 2)));
        assert_eq!(get("GBP"), Some((826, 2)));
        assert_eq!(get("JPY"), Some((392, 0)));
        assert_eq!(get("KRW"), Some((410, 0)));
        assert_eq!(get("ISK"), Some((352, 0)));
        assert_eq!(get("KWD"), Some((414, 3)));
        assert_eq!(get("TND"), Some((788, 3)));
        assert_eq!(get("CLF"), Some((990, 4)));
        assert_eq!(get("UYW"), Some((927, 4)));
        assert_eq!(get("XCG"), Some((532, 2)));
        assert_eq!(get("ZWG"), Some((924, 2)));
        assert_eq!(find("CHF").map(|c| c.name), Some("Swiss Franc"));
    }

    #[test]
    fn find_is_case_insensitive_and_trims() {
        assert_eq!(find("eur").map(|c| c.code), Some("EUR"));
        assert_eq!(find(" Usd\t").map(|c| c.code), Some("USD"));
        assert!(!is_code("eur"));
        assert!(!is_code(" EUR"));
        assert!(!is_code("EUR "));
    }

    #[test]
    fn rejects_unknown_withdrawn_and_non_currency_codes() {
        for input in [
            "", "   ", "EU", "EURO", "ABC", "XXX", "XTS", "XAU", "XDR", "HRK", "SLL", "ZWL", "ANG",
            "DEM", "NLG", "€", "$", "US$", "ÉUR", "E U", "12", "840", "\u{0}",
        ] {
            assert_eq!(find(input), None, "{input:?}");
            assert!(!is_code(input), "{input:?}");
        }
    }
}
