//! ISO 3166-1 countries: a static table of all 249 entries and a tolerant lookup.
//!
//! [`find`] accepts an alpha-2 or alpha-3 code (any case), a three-digit numeric
//! code written as text (`"840"`, `"004"`), the English short name used here
//! (CLDR / Salesforce picklist style: "United States", "South Korea", "Russia",
//! "Türkiye", …), the ISO short and official names ("Korea, Republic of",
//! "Russian Federation", "Viet Nam", "United States of America", …) and a
//! curated list of aliases.
//!
//! # Matching
//! Names are compared after normalization: case-insensitive; leading/trailing
//! whitespace trimmed and inner whitespace collapsed; `.` and apostrophes
//! (`'`, `’`, `‘`, `ʼ`, `` ` ``, `´`) removed; other punctuation (`,` `-` `(` `)`
//! `/` …) treated as a space; `&` read as "and"; a leading "the" ignored; Latin
//! diacritics folded (`é`→`e`, `ü`→`u`, `ç`→`c`, `ø`→`o`, `å`→`a`, `ß`→`ss`,
//! `æ`→`ae`, `ł`→`l`, Romanian `ș`/`ț`, and combining marks dropped); finally
//! the words are joined without spaces. So "Côte d'Ivoire", "cote divoire" and
//! "COTE D’IVOIRE" all match, as do "Korea, Republic of" and "korea republic
//! of", or "Hong Kong" and "Hongkong". Every "Saint …" name also matches as
//! "St …" / "St. …".
//!
//! # Alias policy
//! An alias is only listed when it names exactly one ISO 3166-1 entry:
//! * accepted: former and everyday names ("Czech Republic", "Turkey",
//!   "Swaziland", "Burma", "Macedonia", "Ivory Coast", "East Timor", "Cabo
//!   Verde"/"Cape Verde"), abbreviations ("USA", "U.S.A.", "U.S.", "UAE",
//!   "DRC", "DPRK"), `"UK"` and "Great Britain" for GB (UK is not an assigned
//!   ISO code, so [`is_alpha2_code`]`("UK")` is still false), and Dutch, German,
//!   French and Spanish names (plus a few endonyms such as "Sverige", "Polska")
//!   of about 50 large partner markets.
//! * rejected on purpose: "America", "Korea", "Virgin Islands" (ambiguous),
//!   "Holland", "England", "Scotland", "Wales", "Northern Ireland" (not ISO
//!   3166-1 entries), and Kosovo / "XK" (a user-assigned code, not part of ISO
//!   3166-1).
//! * codes match only as bare codes: "NA" is Namibia, but the placeholders
//!   "n/a" and "N.A." match nothing.
//! * ISO short names always match, even where everyday use is loose: bare
//!   "Congo" is CG (the Republic of the Congo), as in ISO and Salesforce's
//!   picklist; the DRC matches as "DRC", "DR Congo", "Congo-Kinshasa", etc.
//!
//! # Performance
//! Codes are resolved through compile-time index tables without allocating or
//! hashing; names go through a `HashMap` built once on first use, keyed by the
//! normalized form, and the input is normalized into a stack buffer, so no
//! lookup allocates.

use std::collections::HashMap;
use std::sync::OnceLock;

/// One ISO 3166-1 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Country {
    /// Alpha-2 code in upper case, e.g. `"US"`.
    pub alpha2: &'static str,
    /// Alpha-3 code in upper case, e.g. `"USA"`.
    pub alpha3: &'static str,
    /// Numeric code, e.g. `840` (written `"840"`, `"004"` with leading zeros).
    pub numeric: u16,
    /// Common English short name, e.g. `"United States"`.
    pub name: &'static str,
}

/// Finds a country by any supported form: alpha-2 or alpha-3 code in any case,
/// a three-digit numeric code as text (`"840"`), the English short name, the ISO
/// short or official name, or an alias (see the module docs). Surrounding
/// whitespace is ignored. Returns `None` for anything else.
///
/// Codes already in their canonical form take a fast path that neither hashes
/// nor allocates.
pub fn find(input: &str) -> Option<&'static Country> {
    let trimmed = input.trim();
    let bytes = trimmed.as_bytes();
    let by_code = match bytes.len() {
        2 => by_alpha2(trimmed),
        3 if bytes.iter().all(u8::is_ascii_alphabetic) => by_alpha3(trimmed),
        3 if bytes.iter().all(u8::is_ascii_digit) => {
            let n = bytes
                .iter()
                .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
            by_numeric(n)
        }
        _ => None,
    };
    if by_code.is_some() {
        return by_code;
    }
    let mut norm = Normalizer::new();
    norm.push_str(trimmed);
    let key = norm.finish()?;
    let index = *name_index().get(key)?;
    COUNTRIES.get(usize::from(index))
}

/// True when `input` is exactly an assigned ISO 3166-1 alpha-2 code in upper
/// case, which is what Partner Center accepts: `"US"` is, `"us"`, `" US"` and
/// `"UK"` (not assigned; GB is) are not.
pub fn is_alpha2_code(input: &str) -> bool {
    let b = input.as_bytes();
    b.len() == 2 && b.iter().all(u8::is_ascii_uppercase) && by_alpha2(input).is_some()
}

/// Finds a country by its alpha-2 code, case-insensitively (`"us"` → US). No
/// trimming and no aliases: `"UK"` is `None`.
pub fn by_alpha2(code: &str) -> Option<&'static Country> {
    let slot = letters_slot(code.as_bytes(), 2)?;
    lookup(ALPHA2_INDEX.get(slot)?)
}

/// Finds a country by its alpha-3 code, case-insensitively (`"usa"` → US).
pub fn by_alpha3(code: &str) -> Option<&'static Country> {
    let slot = letters_slot(code.as_bytes(), 3)?;
    lookup(ALPHA3_INDEX.get(slot)?)
}

/// Finds a country by its numeric code (`840` → US).
pub fn by_numeric(numeric: u16) -> Option<&'static Country> {
    lookup(NUMERIC_INDEX.get(usize::from(numeric))?)
}

/// All 249 ISO 3166-1 entries, sorted by alpha-2 code.
pub fn all() -> &'static [Country] {
    &COUNTRIES
}

static COUNTRIES: [Country; 249] = COUNTRY_TABLE;

/// Table row constructor (keeps the generated table one line per country).
const fn entry(
    alpha2: &'static str,
    alpha3: &'static str,
    numeric: u16,
    name: &'static str,
) -> Country {
    Country {
        alpha2,
        alpha3,
        numeric,
        name,
    }
}

/// Marks an empty slot in the index tables.
const NO_COUNTRY: u8 = u8::MAX;

/// Position of an ASCII-letter code in a base-26 index, or `None` when `code`
/// is not exactly `len` ASCII letters.
fn letters_slot(code: &[u8], len: usize) -> Option<usize> {
    if code.len() != len {
        return None;
    }
    code.iter().try_fold(0usize, |acc, b| {
        b.is_ascii_alphabetic()
            .then(|| acc * 26 + usize::from(b.to_ascii_uppercase() - b'A'))
    })
}

fn lookup(slot: &u8) -> Option<&'static Country> {
    if *slot == NO_COUNTRY {
        None
    } else {
        COUNTRIES.get(usize::from(*slot))
    }
}

/// Const-context version of [`letters_slot`] for the table's own (valid) codes.
const fn code_slot(code: &str) -> usize {
    let b = code.as_bytes();
    let mut slot = 0;
    let mut i = 0;
    while i < b.len() {
        slot = slot * 26 + (b[i] - b'A') as usize;
        i += 1;
    }
    slot
}

/// alpha-2 code (base-26) → index into [`COUNTRIES`].
const ALPHA2_INDEX: [u8; 26 * 26] = {
    let mut table = [NO_COUNTRY; 26 * 26];
    let mut i = 0;
    while i < COUNTRY_TABLE.len() {
        table[code_slot(COUNTRY_TABLE[i].alpha2)] = i as u8;
        i += 1;
    }
    table
};

/// alpha-3 code (base-26) → index into [`COUNTRIES`].
static ALPHA3_INDEX: [u8; 26 * 26 * 26] = {
    let mut table = [NO_COUNTRY; 26 * 26 * 26];
    let mut i = 0;
    while i < COUNTRY_TABLE.len() {
        table[code_slot(COUNTRY_TABLE[i].alpha3)] = i as u8;
        i += 1;
    }
    table
};

/// Numeric code → index into [`COUNTRIES`].
const NUMERIC_INDEX: [u8; 1000] = {
    let mut table = [NO_COUNTRY; 1000];
    let mut i = 0;
    while i < COUNTRY_TABLE.len() {
        table[COUNTRY_TABLE[i].numeric as usize] = i as u8;
        i += 1;
    }
    table
};

/// Normalized name/alias/code → index into [`COUNTRIES`], built on first use.
fn name_index() -> &'static HashMap<Box<str>, u8> {
    static INDEX: OnceLock<HashMap<Box<str>, u8>> = OnceLock::new();
    INDEX.get_or_init(|| build_name_index(|_, _, _| {}))
}

/// Builds the name index; `on_collision(key, kept, dropped)` is told about a
/// key claimed by two countries (the first one wins). Tests assert there are
/// none.
fn build_name_index(mut on_collision: impl FnMut(&str, u8, u8)) -> HashMap<Box<str>, u8> {
    let mut map: HashMap<Box<str>, u8> = HashMap::with_capacity(2048);
    let mut insert = |form: &str, index: u8| {
        let mut norm = Normalizer::new();
        norm.push_str(form);
        let Some(key) = norm.finish() else {
            return;
        };
        let mut keys = [Some(Box::<str>::from(key)), None];
        if let Some(rest) = key.strip_prefix("saint") {
            keys[1] = Some(format!("st{rest}").into_boxed_str());
        }
        for key in keys.into_iter().flatten() {
            match map.get(&key) {
                Some(&kept) if kept != index => on_collision(&key, kept, index),
                Some(_) => {}
                None => {
                    map.insert(key, index);
                }
            }
        }
    };
    for (i, c) in COUNTRIES.iter().enumerate() {
        let Ok(index) = u8::try_from(i) else { break };
        // Codes are deliberately not keys: "n/a" must not normalize to Namibia.
        insert(c.name, index);
    }
    for (alpha2, forms) in ALIASES {
        let slot = letters_slot(alpha2.as_bytes(), 2);
        let Some(&index) = slot.and_then(|s| ALPHA2_INDEX.get(s)) else {
            continue;
        };
        if index == NO_COUNTRY {
            continue;
        }
        for form in *forms {
            insert(form, index);
        }
    }
    map
}

/// Longest normalized key the index can hold; longer inputs cannot match.
const MAX_KEY_BYTES: usize = 96;

/// Writes the normalized form of a name into a fixed stack buffer.
struct Normalizer {
    buf: [u8; MAX_KEY_BYTES],
    len: usize,
    pending_space: bool,
    overflow: bool,
}

impl Normalizer {
    fn new() -> Self {
        Normalizer {
            buf: [0; MAX_KEY_BYTES],
            len: 0,
            pending_space: false,
            overflow: false,
        }
    }

    fn push_str(&mut self, s: &str) {
        for c in s.chars() {
            self.push_char(c);
        }
    }

    fn push_char(&mut self, c: char) {
        if c.is_ascii_alphanumeric() {
            self.word(&[c.to_ascii_lowercase() as u8]);
            return;
        }
        match c {
            '.' | '\'' | '`' | '\u{2019}' | '\u{2018}' | '\u{02BC}' | '\u{00B4}' => {}
            '&' => {
                self.separator();
                self.word(b"and");
                self.separator();
            }
            '\u{0300}'..='\u{036F}' => {} // combining diacritical marks
            _ if c.is_ascii() => self.separator(),
            _ => {
                if let Some(folded) = fold_latin(c) {
                    self.word(folded.as_bytes());
                } else if c.is_alphanumeric() {
                    for lower in c.to_lowercase() {
                        let mut utf8 = [0u8; 4];
                        self.word(lower.encode_utf8(&mut utf8).as_bytes());
                    }
                } else {
                    self.separator();
                }
            }
        }
    }

    fn separator(&mut self) {
        self.pending_space = true;
    }

    fn word(&mut self, bytes: &[u8]) {
        if self.pending_space && self.len > 0 {
            self.append(b" ");
        }
        self.pending_space = false;
        self.append(bytes);
    }

    fn append(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        match self.buf.get_mut(self.len..end) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.len = end;
            }
            None => self.overflow = true,
        }
    }

    /// The normalized key, or `None` when empty or too long to be a key.
    ///
    /// A leading "the" word is dropped and the remaining words are joined
    /// without spaces, so "Hong Kong"/"Hongkong" and "Cote d Ivoire"/"Cote
    /// d'Ivoire" meet.
    fn finish(&mut self) -> Option<&str> {
        if self.overflow {
            return None;
        }
        let words = self.buf.get(..self.len)?;
        let start = if words.starts_with(b"the ") { 4 } else { 0 };
        let mut len = 0;
        for i in start..self.len {
            let b = *self.buf.get(i)?;
            if b != b' ' {
                *self.buf.get_mut(len)? = b;
                len += 1;
            }
        }
        let key = std::str::from_utf8(self.buf.get(..len)?).ok()?;
        (!key.is_empty()).then_some(key)
    }
}

/// Lower-case ASCII spelling of Latin-1 Supplement and Latin Extended-A
/// letters (plus Romanian comma-below letters), e.g. `'Å'` → `"a"`, `'ß'` →
/// `"ss"`.
fn fold_latin(c: char) -> Option<&'static str> {
    Some(match c {
        'À'..='Å' | 'à'..='å' | '\u{0100}'..='\u{0105}' => "a",
        'Æ' | 'æ' => "ae",
        'Ç' | 'ç' | '\u{0106}'..='\u{010D}' => "c",
        'Ð' | 'ð' | '\u{010E}'..='\u{0111}' => "d",
        'È'..='Ë' | 'è'..='ë' | '\u{0112}'..='\u{011B}' => "e",
        '\u{011C}'..='\u{0123}' => "g",
        '\u{0124}'..='\u{0127}' => "h",
        'Ì'..='Ï' | 'ì'..='ï' | '\u{0128}'..='\u{0131}' => "i",
        '\u{0132}' | '\u{0133}' => "ij",
        '\u{0134}' | '\u{0135}' => "j",
        '\u{0136}'..='\u{0138}' => "k",
        '\u{0139}'..='\u{0142}' => "l",
        'Ñ' | 'ñ' | '\u{0143}'..='\u{014B}' => "n",
        'Ò'..='Ö' | 'Ø' | 'ò'..='ö' | 'ø' | '\u{014C}'..='\u{0151}' => "o",
        '\u{0152}' | '\u{0153}' => "oe",
        '\u{0154}'..='\u{0159}' => "r",
        '\u{015A}'..='\u{0161}' | '\u{017F}' | '\u{0218}' | '\u{0219}' => "s",
        'ß' => "ss",
        '\u{0162}'..='\u{0167}' | '\u{021A}' | '\u{021B}' => "t",
        'Þ' | 'þ' => "th",
        'Ù'..='Ü' | 'ù'..='ü' | '\u{0168}'..='\u{0173}' => "u",
        '\u{0174}' | '\u{0175}' => "w",
        'Ý' | 'ý' | 'ÿ' | '\u{0176}'..='\u{0178}' => "y",
        '\u{0179}'..='\u{017E}' => "z",
        _ => return None,
    })
}

// BEGIN GENERATED by tools/gen_country.py from Debian iso-codes; curated names/aliases live there.

/// Every ISO 3166-1 entry (249), sorted by alpha-2 code.
#[rustfmt::skip]
const COUNTRY_TABLE: [Country; 249] = [
    entry("AD", "AND", 20, "Andorra"),
    entry("AE", "ARE", 784, "United Arab Emirates"),
    entry("AF", "AFG", 4, "Afghanistan"),
    entry("AG", "ATG", 28, "Antigua and Barbuda"),
    entry("AI", "AIA", 660, "Anguilla"),
    entry("AL", "ALB", 8, "Albania"),
    entry("AM", "ARM", 51, "Armenia"),
    entry("AO", "AGO", 24, "Angola"),
    entry("AQ", "ATA", 10, "Antarctica"),
    entry("AR", "ARG", 32, "Argentina"),
    entry("AS", "ASM", 16, "American Samoa"),
    entry("AT", "AUT", 40, "Austria"),
    entry("AU", "AUS", 36, "Australia"),
    entry("AW", "ABW", 533, "Aruba"),
    entry("AX", "ALA", 248, "Åland Islands"),
    entry("AZ", "AZE", 31, "Azerbaijan"),
    entry("BA", "BIH", 70, "Bosnia and Herzegovina"),
    entry("BB", "BRB", 52, "Barbados"),
    entry("BD", "BGD", 50, "Bangladesh"),
    entry("BE", "BEL", 56, "Belgium"),
    entry("BF", "BFA", 854, "Burkina Faso"),
    entry("BG", "BGR", 100, "Bulgaria"),
    entry("BH", "BHR", 48, "Bahrain"),
    entry("BI", "BDI", 108, "Burundi"),
    entry("BJ", "BEN", 204, "Benin"),
    entry("BL", "BLM", 652, "Saint Barthélemy"),
    entry("BM", "BMU", 60, "Bermuda"),
    entry("BN", "BRN", 96, "Brunei"),
    entry("BO", "BOL", 68, "Bolivia"),
    entry("BQ", "BES", 535, "Bonaire, Sint Eustatius and Saba"),
    entry("BR", "BRA", 76, "Brazil"),
    entry("BS", "BHS", 44, "Bahamas"),
    entry("BT", "BTN", 64, "Bhutan"),
    entry("BV", "BVT", 74, "Bouvet Island"),
    entry("BW", "BWA", 72, "Botswana"),
    entry("BY", "BLR", 112, "Belarus"),
    entry("BZ", "BLZ", 84, "Belize"),
    entry("CA", "CAN", 124, "Canada"),
    entry("CC", "CCK", 166, "Cocos (Keeling) Islands"),
    entry("CD", "COD", 180, "Democratic Republic of the Congo"),
    entry("CF", "CAF", 140, "Central African Republic"),
    entry("CG", "COG", 178, "Republic of the Congo"),
    entry("CH", "CHE", 756, "Switzerland"),
    entry("CI", "CIV", 384, "Côte d'Ivoire"),
    entry("CK", "COK", 184, "Cook Islands"),
    entry("CL", "CHL", 152, "Chile"),
    entry("CM", "CMR", 120, "Cameroon"),
    entry("CN", "CHN", 156, "China"),
    entry("CO", "COL", 170, "Colombia"),
    entry("CR", "CRI", 188, "Costa Rica"),
    entry("CU", "CUB", 192, "Cuba"),
    entry("CV", "CPV", 132, "Cape Verde"),
    entry("CW", "CUW", 531, "Curaçao"),
    entry("CX", "CXR", 162, "Christmas Island"),
    entry("CY", "CYP", 196, "Cyprus"),
    entry("CZ", "CZE", 203, "Czechia"),
    entry("DE", "DEU", 276, "Germany"),
    entry("DJ", "DJI", 262, "Djibouti"),
    entry("DK", "DNK", 208, "Denmark"),
    entry("DM", "DMA", 212, "Dominica"),
    entry("DO", "DOM", 214, "Dominican Republic"),
    entry("DZ", "DZA", 12, "Algeria"),
    entry("EC", "ECU", 218, "Ecuador"),
    entry("EE", "EST", 233, "Estonia"),
    entry("EG", "EGY", 818, "Egypt"),
    entry("EH", "ESH", 732, "Western Sahara"),
    entry("ER", "ERI", 232, "Eritrea"),
    entry("ES", "ESP", 724, "Spain"),
    entry("ET", "ETH", 231, "Ethiopia"),
    entry("FI", "FIN", 246, "Finland"),
    entry("FJ", "FJI", 242, "Fiji"),
    entry("FK", "FLK", 238, "Falkland Islands"),
    entry("FM", "FSM", 583, "Micronesia"),
    entry("FO", "FRO", 234, "Faroe Islands"),
    entry("FR", "FRA", 250, "France"),
    entry("GA", "GAB", 266, "Gabon"),
    entry("GB", "GBR", 826, "United Kingdom"),
    entry("GD", "GRD", 308, "Grenada"),
    entry("GE", "GEO", 268, "Georgia"),
    entry("GF", "GUF", 254, "French Guiana"),
    entry("GG", "GGY", 831, "Guernsey"),
    entry("GH", "GHA", 288, "Ghana"),
    entry("GI", "GIB", 292, "Gibraltar"),
    entry("GL", "GRL", 304, "Greenland"),
    entry("GM", "GMB", 270, "Gambia"),
    entry("GN", "GIN", 324, "Guinea"),
    entry("GP", "GLP", 312, "Guadeloupe"),
    entry("GQ", "GNQ", 226, "Equatorial Guinea"),
    entry("GR", "GRC", 300, "Greece"),
    entry("GS", "SGS", 239, "South Georgia and the South Sandwich Islands"),
    entry("GT", "GTM", 320, "Guatemala"),
    entry("GU", "GUM", 316, "Guam"),
    entry("GW", "GNB", 624, "Guinea-Bissau"),
    entry("GY", "GUY", 328, "Guyana"),
    entry("HK", "HKG", 344, "Hong Kong"),
    entry("HM", "HMD", 334, "Heard Island and McDonald Islands"),
    entry("HN", "HND", 340, "Honduras"),
    entry("HR", "HRV", 191, "Croatia"),
    entry("HT", "HTI", 332, "Haiti"),
    entry("HU", "HUN", 348, "Hungary"),
    entry("ID", "IDN", 360, "Indonesia"),
    entry("IE", "IRL", 372, "Ireland"),
    entry("IL", "ISR", 376, "Israel"),
    entry("IM", "IMN", 833, "Isle of Man"),
    entry("IN", "IND", 356, "India"),
    entry("IO", "IOT", 86, "British Indian Ocean Territory"),
    entry("IQ", "IRQ", 368, "Iraq"),
    entry("IR", "IRN", 364, "Iran"),
    entry("IS", "ISL", 352, "Iceland"),
    entry("IT", "ITA", 380, "Italy"),
    entry("JE", "JEY", 832, "Jersey"),
    entry("JM", "JAM", 388, "Jamaica"),
    entry("JO", "JOR", 400, "Jordan"),
    entry("JP", "JPN", 392, "Japan"),
    entry("KE", "KEN", 404, "Kenya"),
    entry("KG", "KGZ", 417, "Kyrgyzstan"),
    entry("KH", "KHM", 116, "Cambodia"),
    entry("KI", "KIR", 296, "Kiribati"),
    entry("KM", "COM", 174, "Comoros"),
    entry("KN", "KNA", 659, "Saint Kitts and Nevis"),
    entry("KP", "PRK", 408, "North Korea"),
    entry("KR", "KOR", 410, "South Korea"),
    entry("KW", "KWT", 414, "Kuwait"),
    entry("KY", "CYM", 136, "Cayman Islands"),
    entry("KZ", "KAZ", 398, "Kazakhstan"),
    entry("LA", "LAO", 418, "Laos"),
    entry("LB", "LBN", 422, "Lebanon"),
    entry("LC", "LCA", 662, "Saint Lucia"),
    entry("LI", "LIE", 438, "Liechtenstein"),
    entry("LK", "LKA", 144, "Sri Lanka"),
    entry("LR", "LBR", 430, "Liberia"),
    entry("LS", "LSO", 426, "Lesotho"),
    entry("LT", "LTU", 440, "Lithuania"),
    entry("LU", "LUX", 442, "Luxembourg"),
    entry("LV", "LVA", 428, "Latvia"),
    entry("LY", "LBY", 434, "Libya"),
    entry("MA", "MAR", 504, "Morocco"),
    entry("MC", "MCO", 492, "Monaco"),
    entry("MD", "MDA", 498, "Moldova"),
    entry("ME", "MNE", 499, "Montenegro"),
    entry("MF", "MAF", 663, "Saint Martin"),
    entry("MG", "MDG", 450, "Madagascar"),
    entry("MH", "MHL", 584, "Marshall Islands"),
    entry("MK", "MKD", 807, "North Macedonia"),
    entry("ML", "MLI", 466, "Mali"),
    entry("MM", "MMR", 104, "Myanmar"),
    entry("MN", "MNG", 496, "Mongolia"),
    entry("MO", "MAC", 446, "Macao"),
    entry("MP", "MNP", 580, "Northern Mariana Islands"),
    entry("MQ", "MTQ", 474, "Martinique"),
    entry("MR", "MRT", 478, "Mauritania"),
    entry("MS", "MSR", 500, "Montserrat"),
    entry("MT", "MLT", 470, "Malta"),
    entry("MU", "MUS", 480, "Mauritius"),
    entry("MV", "MDV", 462, "Maldives"),
    entry("MW", "MWI", 454, "Malawi"),
    entry("MX", "MEX", 484, "Mexico"),
    entry("MY", "MYS", 458, "Malaysia"),
    entry("MZ", "MOZ", 508, "Mozambique"),
    entry("NA", "NAM", 516, "Namibia"),
    entry("NC", "NCL", 540, "New Caledonia"),
    entry("NE", "NER", 562, "Niger"),
    entry("NF", "NFK", 574, "Norfolk Island"),
    entry("NG", "NGA", 566, "Nigeria"),
    entry("NI", "NIC", 558, "Nicaragua"),
    entry("NL", "NLD", 528, "Netherlands"),
    entry("NO", "NOR", 578, "Norway"),
    entry("NP", "NPL", 524, "Nepal"),
    entry("NR", "NRU", 520, "Nauru"),
    entry("NU", "NIU", 570, "Niue"),
    entry("NZ", "NZL", 554, "New Zealand"),
    entry("OM", "OMN", 512, "Oman"),
    entry("PA", "PAN", 591, "Panama"),
    entry("PE", "PER", 604, "Peru"),
    entry("PF", "PYF", 258, "French Polynesia"),
    entry("PG", "PNG", 598, "Papua New Guinea"),
    entry("PH", "PHL", 608, "Philippines"),
    entry("PK", "PAK", 586, "Pakistan"),
    entry("PL", "POL", 616, "Poland"),
    entry("PM", "SPM", 666, "Saint Pierre and Miquelon"),
    entry("PN", "PCN", 612, "Pitcairn Islands"),
    entry("PR", "PRI", 630, "Puerto Rico"),
    entry("PS", "PSE", 275, "Palestine"),
    entry("PT", "PRT", 620, "Portugal"),
    entry("PW", "PLW", 585, "Palau"),
    entry("PY", "PRY", 600, "Paraguay"),
    entry("QA", "QAT", 634, "Qatar"),
    entry("RE", "REU", 638, "Réunion"),
    entry("RO", "ROU", 642, "Romania"),
    entry("RS", "SRB", 688, "Serbia"),
    entry("RU", "RUS", 643, "Russia"),
    entry("RW", "RWA", 646, "Rwanda"),
    entry("SA", "SAU", 682, "Saudi Arabia"),
    entry("SB", "SLB", 90, "Solomon Islands"),
    entry("SC", "SYC", 690, "Seychelles"),
    entry("SD", "SDN", 729, "Sudan"),
    entry("SE", "SWE", 752, "Sweden"),
    entry("SG", "SGP", 702, "Singapore"),
    entry("SH", "SHN", 654, "Saint Helena, Ascension and Tristan da Cunha"),
    entry("SI", "SVN", 705, "Slovenia"),
    entry("SJ", "SJM", 744, "Svalbard and Jan Mayen"),
    entry("SK", "SVK", 703, "Slovakia"),
    entry("SL", "SLE", 694, "Sierra Leone"),
    entry("SM", "SMR", 674, "San Marino"),
    entry("SN", "SEN", 686, "Senegal"),
    entry("SO", "SOM", 706, "Somalia"),
    entry("SR", "SUR", 740, "Suriname"),
    entry("SS", "SSD", 728, "South Sudan"),
    entry("ST", "STP", 678, "São Tomé and Príncipe"),
    entry("SV", "SLV", 222, "El Salvador"),
    entry("SX", "SXM", 534, "Sint Maarten"),
    entry("SY", "SYR", 760, "Syria"),
    entry("SZ", "SWZ", 748, "Eswatini"),
    entry("TC", "TCA", 796, "Turks and Caicos Islands"),
    entry("TD", "TCD", 148, "Chad"),
    entry("TF", "ATF", 260, "French Southern Territories"),
    entry("TG", "TGO", 768, "Togo"),
    entry("TH", "THA", 764, "Thailand"),
    entry("TJ", "TJK", 762, "Tajikistan"),
    entry("TK", "TKL", 772, "Tokelau"),
    entry("TL", "TLS", 626, "Timor-Leste"),
    entry("TM", "TKM", 795, "Turkmenistan"),
    entry("TN", "TUN", 788, "Tunisia"),
    entry("TO", "TON", 776, "Tonga"),
    entry("TR", "TUR", 792, "Türkiye"),
    entry("TT", "TTO", 780, "Trinidad and Tobago"),
    entry("TV", "TUV", 798, "Tuvalu"),
    entry("TW", "TWN", 158, "Taiwan"),
    entry("TZ", "TZA", 834, "Tanzania"),
    entry("UA", "UKR", 804, "Ukraine"),
    entry("UG", "UGA", 800, "Uganda"),
    entry("UM", "UMI", 581, "United States Minor Outlying Islands"),
    entry("US", "USA", 840, "United States"),
    entry("UY", "URY", 858, "Uruguay"),
    entry("UZ", "UZB", 860, "Uzbekistan"),
    entry("VA", "VAT", 336, "Vatican City"),
    entry("VC", "VCT", 670, "Saint Vincent and the Grenadines"),
    entry("VE", "VEN", 862, "Venezuela"),
    entry("VG", "VGB", 92, "British Virgin Islands"),
    entry("VI", "VIR", 850, "U.S. Virgin Islands"),
    entry("VN", "VNM", 704, "Vietnam"),
    entry("VU", "VUT", 548, "Vanuatu"),
    entry("WF", "WLF", 876, "Wallis and Futuna"),
    entry("WS", "WSM", 882, "Samoa"),
    entry("YE", "YEM", 887, "Yemen"),
    entry("YT", "MYT", 175, "Mayotte"),
    entry("ZA", "ZAF", 710, "South Africa"),
    entry("ZM", "ZMB", 894, "Zambia"),
    entry("ZW", "ZWE", 716, "Zimbabwe"),
];

/// Other spellings accepted by [`find`]: ISO short and official names, former
/// names, everyday forms and Dutch/German/French/Spanish names of large markets.
#[rustfmt::skip]
static ALIASES: &[(&str, &[&str])] = &[
    ("AD", &["Principality of Andorra"]),
    ("AE", &["UAE", "U.A.E.", "Verenigde Arabische Emiraten", "Vereinigte Arabische Emirate",
        "Émirats arabes unis", "Emiratos Árabes Unidos"]),
    ("AF", &["Islamic Republic of Afghanistan"]),
    ("AL", &["Republic of Albania"]),
    ("AM", &["Republic of Armenia"]),
    ("AO", &["Republic of Angola"]),
    ("AR", &["Argentine Republic", "Argentinië", "Argentinien", "Argentine"]),
    ("AT", &["Republic of Austria", "Oostenrijk", "Österreich", "Autriche"]),
    ("AU", &["Australië", "Australien", "Australie"]),
    ("AX", &["Aland"]),
    ("AZ", &["Republic of Azerbaijan"]),
    ("BA", &["Republic of Bosnia and Herzegovina", "Bosnia"]),
    ("BD", &["People's Republic of Bangladesh"]),
    ("BE", &["Kingdom of Belgium", "België", "Belgien", "Belgique", "Bélgica", "Belgio"]),
    ("BG", &["Republic of Bulgaria"]),
    ("BH", &["Kingdom of Bahrain"]),
    ("BI", &["Republic of Burundi"]),
    ("BJ", &["Republic of Benin"]),
    ("BN", &["Brunei Darussalam"]),
    ("BO", &["Bolivia, Plurinational State of", "Plurinational State of Bolivia"]),
    ("BQ", &["Caribbean Netherlands", "Bonaire"]),
    ("BR", &["Federative Republic of Brazil", "Brazilië", "Brasilien", "Brésil", "Brasil"]),
    ("BS", &["Commonwealth of the Bahamas", "The Bahamas", "Bahamas, The"]),
    ("BT", &["Kingdom of Bhutan"]),
    ("BW", &["Republic of Botswana"]),
    ("BY", &["Republic of Belarus"]),
    ("CA", &["Kanada", "Canadá"]),
    ("CD", &["Congo, The Democratic Republic of the", "DR Congo", "DRC", "D.R. Congo",
        "Congo-Kinshasa", "Congo (Kinshasa)", "Congo, Democratic Republic of the", "Congo (DRC)",
        "Democratic Republic of Congo"]),
    ("CG", &["Congo", "Congo-Brazzaville", "Congo (Brazzaville)", "Congo, Republic of the",
        "Congo (Republic)", "Republic of Congo"]),
    ("CH", &["Swiss Confederation", "Zwitserland", "Schweiz", "Suisse", "Suiza", "Svizzera"]),
    ("CI", &["Republic of Côte d'Ivoire", "Ivory Coast"]),
    ("CL", &["Republic of Chile", "Chili"]),
    ("CM", &["Republic of Cameroon"]),
    ("CN", &["People's Republic of China", "Chine"]),
    ("CO", &["Republic of Colombia", "Kolumbien", "Colombie"]),
    ("CR", &["Republic of Costa Rica"]),
    ("CU", &["Republic of Cuba"]),
    ("CV", &["Cabo Verde", "Republic of Cabo Verde"]),
    ("CY", &["Republic of Cyprus"]),
    ("CZ", &["Czech Republic", "Tsjechië", "Tschechien", "Tschechische Republik", "Tchéquie",
        "République tchèque", "Chequia", "República Checa", "Česko"]),
    ("DE", &["Federal Republic of Germany", "Duitsland", "Deutschland", "Allemagne", "Alemania",
        "Germania"]),
    ("DJ", &["Republic of Djibouti"]),
    ("DK", &["Kingdom of Denmark", "Denemarken", "Dänemark", "Danemark", "Dinamarca", "Danmark"]),
    ("DM", &["Commonwealth of Dominica"]),
    ("DZ", &["People's Democratic Republic of Algeria"]),
    ("EC", &["Republic of Ecuador"]),
    ("EE", &["Republic of Estonia"]),
    ("EG", &["Arab Republic of Egypt", "Egypte", "Ägypten", "Égypte", "Egipto"]),
    ("ER", &["the State of Eritrea"]),
    ("ES", &["Kingdom of Spain", "Spanje", "Spanien", "Espagne", "España"]),
    ("ET", &["Federal Democratic Republic of Ethiopia"]),
    ("FI", &["Republic of Finland", "Finnland", "Finlande", "Finlandia", "Suomi"]),
    ("FJ", &["Republic of Fiji"]),
    ("FK", &["Falkland Islands (Malvinas)"]),
    ("FM", &["Micronesia, Federated States of", "Federated States of Micronesia"]),
    ("FR", &["French Republic", "Frankrijk", "Frankreich", "Francia"]),
    ("GA", &["Gabonese Republic"]),
    ("GB", &["United Kingdom of Great Britain and Northern Ireland", "UK", "U.K.",
        "Great Britain", "Verenigd Koninkrijk", "Groot-Brittannië", "Vereinigtes Königreich",
        "Großbritannien", "Royaume-Uni", "Grande-Bretagne", "Reino Unido", "Gran Bretaña"]),
    ("GH", &["Republic of Ghana"]),
    ("GM", &["Republic of the Gambia", "The Gambia", "Gambia, The"]),
    ("GN", &["Republic of Guinea"]),
    ("GQ", &["Republic of Equatorial Guinea"]),
    ("GR", &["Hellenic Republic", "Griekenland", "Griechenland", "Grèce", "Grecia"]),
    ("GT", &["Republic of Guatemala"]),
    ("GW", &["Republic of Guinea-Bissau"]),
    ("GY", &["Republic of Guyana"]),
    ("HK", &["Hong Kong Special Administrative Region of China", "Hong Kong SAR",
        "Hong Kong SAR China", "Hong Kong SAR, China", "Hongkong"]),
    ("HN", &["Republic of Honduras"]),
    ("HR", &["Republic of Croatia"]),
    ("HT", &["Republic of Haiti"]),
    ("HU", &["Hongarije", "Ungarn", "Hongrie", "Hungría", "Magyarország"]),
    ("ID", &["Republic of Indonesia", "Indonesië", "Indonesien", "Indonésie"]),
    ("IE", &["Ierland", "Irland", "Irlande", "Irlanda", "Éire"]),
    ("IL", &["State of Israel", "Israël"]),
    ("IN", &["Republic of India", "Indien", "Inde"]),
    ("IQ", &["Republic of Iraq"]),
    ("IR", &["Iran, Islamic Republic of", "Islamic Republic of Iran"]),
    ("IS", &["Republic of Iceland"]),
    ("IT", &["Italian Republic", "Italië", "Italien", "Italie", "Italia"]),
    ("JO", &["Hashemite Kingdom of Jordan"]),
    ("JP", &["Japon", "Japón"]),
    ("KE", &["Republic of Kenya"]),
    ("KG", &["Kyrgyz Republic"]),
    ("KH", &["Kingdom of Cambodia"]),
    ("KI", &["Republic of Kiribati"]),
    ("KM", &["Union of the Comoros"]),
    ("KP", &["Korea, Democratic People's Republic of", "Democratic People's Republic of Korea",
        "Korea, North", "Korea (North)", "DPRK"]),
    ("KR", &["Korea, Republic of", "Korea, South", "Korea (South)", "Republic of Korea",
        "Zuid-Korea", "Südkorea", "Corée du Sud", "Corea del Sur"]),
    ("KW", &["State of Kuwait"]),
    ("KZ", &["Republic of Kazakhstan"]),
    ("LA", &["Lao People's Democratic Republic", "Lao PDR"]),
    ("LB", &["Lebanese Republic"]),
    ("LI", &["Principality of Liechtenstein"]),
    ("LK", &["Democratic Socialist Republic of Sri Lanka"]),
    ("LR", &["Republic of Liberia"]),
    ("LS", &["Kingdom of Lesotho"]),
    ("LT", &["Republic of Lithuania"]),
    ("LU", &["Grand Duchy of Luxembourg", "Luxemburg", "Luxemburgo", "Lëtzebuerg"]),
    ("LV", &["Republic of Latvia"]),
    ("MA", &["Kingdom of Morocco"]),
    ("MC", &["Principality of Monaco"]),
    ("MD", &["Moldova, Republic of", "Republic of Moldova"]),
    ("MF", &["Saint Martin (French part)"]),
    ("MG", &["Republic of Madagascar"]),
    ("MH", &["Republic of the Marshall Islands"]),
    ("MK", &["Republic of North Macedonia", "Macedonia",
        "The former Yugoslav Republic of Macedonia", "Macedonia, the former Yugoslav Republic of"]),
    ("ML", &["Republic of Mali"]),
    ("MM", &["Republic of Myanmar", "Burma", "Myanmar (Burma)"]),
    ("MO", &["Macao Special Administrative Region of China", "Macau", "Macao SAR",
        "Macao SAR China", "Macau SAR"]),
    ("MP", &["Commonwealth of the Northern Mariana Islands"]),
    ("MR", &["Islamic Republic of Mauritania"]),
    ("MT", &["Republic of Malta"]),
    ("MU", &["Republic of Mauritius"]),
    ("MV", &["Republic of Maldives"]),
    ("MW", &["Republic of Malawi"]),
    ("MX", &["United Mexican States", "Mexiko", "Mexique", "México"]),
    ("MY", &["Maleisië", "Malaisie", "Malasia"]),
    ("MZ", &["Republic of Mozambique"]),
    ("NA", &["Republic of Namibia"]),
    ("NE", &["Republic of the Niger"]),
    ("NG", &["Federal Republic of Nigeria"]),
    ("NI", &["Republic of Nicaragua"]),
    ("NL", &["Kingdom of the Netherlands", "The Netherlands", "Nederland", "Niederlande",
        "Pays-Bas", "Países Bajos"]),
    ("NO", &["Kingdom of Norway", "Noorwegen", "Norwegen", "Norvège", "Noruega", "Norge"]),
    ("NP", &["Federal Democratic Republic of Nepal"]),
    ("NR", &["Republic of Nauru"]),
    ("NZ", &["Nieuw-Zeeland", "Neuseeland", "Nouvelle-Zélande", "Nueva Zelanda"]),
    ("OM", &["Sultanate of Oman"]),
    ("PA", &["Republic of Panama"]),
    ("PE", &["Republic of Peru"]),
    ("PG", &["Independent State of Papua New Guinea"]),
    ("PH", &["Republic of the Philippines", "Filipijnen", "Philippinen", "Filipinas"]),
    ("PK", &["Islamic Republic of Pakistan"]),
    ("PL", &["Republic of Poland", "Polen", "Pologne", "Polonia", "Polska"]),
    ("PN", &["Pitcairn"]),
    ("PS", &["Palestine, State of", "the State of Palestine", "State of Palestine",
        "Palestinian Territories", "Palestinian Territory"]),
    ("PT", &["Portuguese Republic"]),
    ("PW", &["Republic of Palau"]),
    ("PY", &["Republic of Paraguay"]),
    ("QA", &["State of Qatar"]),
    ("RO", &["Roemenië", "Rumänien", "Roumanie", "Rumanía"]),
    ("RS", &["Republic of Serbia"]),
    ("RU", &["Russian Federation", "Rusland", "Russland", "Russie", "Rusia"]),
    ("RW", &["Rwandese Republic"]),
    ("SA", &["Kingdom of Saudi Arabia", "Saoedi-Arabië", "Saudi-Arabien", "Arabie saoudite",
        "Arabia Saudí", "Arabia Saudita"]),
    ("SC", &["Republic of Seychelles"]),
    ("SD", &["Republic of the Sudan"]),
    ("SE", &["Kingdom of Sweden", "Zweden", "Schweden", "Suède", "Suecia", "Sverige"]),
    ("SG", &["Republic of Singapore", "Singapur", "Singapour"]),
    ("SH", &["Saint Helena"]),
    ("SI", &["Republic of Slovenia"]),
    ("SK", &["Slovak Republic"]),
    ("SL", &["Republic of Sierra Leone"]),
    ("SM", &["Republic of San Marino"]),
    ("SN", &["Republic of Senegal"]),
    ("SO", &["Federal Republic of Somalia"]),
    ("SR", &["Republic of Suriname"]),
    ("SS", &["Republic of South Sudan"]),
    ("ST", &["Sao Tome and Principe", "Democratic Republic of Sao Tome and Principe"]),
    ("SV", &["Republic of El Salvador"]),
    ("SX", &["Sint Maarten (Dutch part)"]),
    ("SY", &["Syrian Arab Republic"]),
    ("SZ", &["Kingdom of Eswatini", "Swaziland"]),
    ("TD", &["Republic of Chad"]),
    ("TG", &["Togolese Republic"]),
    ("TH", &["Kingdom of Thailand", "Thaïlande", "Tailandia"]),
    ("TJ", &["Republic of Tajikistan"]),
    ("TL", &["Democratic Republic of Timor-Leste", "East Timor"]),
    ("TN", &["Republic of Tunisia"]),
    ("TO", &["Kingdom of Tonga"]),
    ("TR", &["Republic of Türkiye", "Turkey", "Turkiye", "Republic of Turkey", "Turkije",
        "Türkei", "Turquie", "Turquía"]),
    ("TT", &["Republic of Trinidad and Tobago"]),
    ("TW", &["Taiwan, Province of China"]),
    ("TZ", &["Tanzania, United Republic of", "United Republic of Tanzania"]),
    ("UA", &["Oekraïne", "Ucrania"]),
    ("UG", &["Republic of Uganda"]),
    ("UM", &["U.S. Minor Outlying Islands", "U.S. Outlying Islands"]),
    ("US", &["United States of America", "USA", "U.S.A.", "U.S.", "Verenigde Staten",
        "Verenigde Staten van Amerika", "Vereinigte Staaten", "Vereinigte Staaten von Amerika",
        "États-Unis", "États-Unis d'Amérique", "Estados Unidos", "Estados Unidos de América",
        "EE.UU."]),
    ("UY", &["Eastern Republic of Uruguay"]),
    ("UZ", &["Republic of Uzbekistan"]),
    ("VA", &["Holy See (Vatican City State)", "Holy See", "Vatican", "Vatican City State"]),
    ("VE", &["Venezuela, Bolivarian Republic of", "Bolivarian Republic of Venezuela"]),
    ("VG", &["Virgin Islands, British", "Virgin Islands (British)"]),
    ("VI", &["Virgin Islands, U.S.", "Virgin Islands of the United States",
        "Virgin Islands (U.S.)", "US Virgin Islands", "United States Virgin Islands"]),
    ("VN", &["Viet Nam", "Socialist Republic of Viet Nam"]),
    ("VU", &["Republic of Vanuatu"]),
    ("WF", &["Wallis and Futuna Islands"]),
    ("WS", &["Independent State of Samoa"]),
    ("YE", &["Republic of Yemen"]),
    ("ZA", &["Republic of South Africa", "Zuid-Afrika", "Südafrika", "Afrique du Sud", "Sudáfrica"]),
    ("ZM", &["Republic of Zambia"]),
    ("ZW", &["Republic of Zimbabwe"]),
];

// END GENERATED

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::tests::alloc_counter;

    fn code(input: &str) -> Option<&'static str> {
        find(input).map(|c| c.alpha2)
    }

    #[test]
    fn table_has_249_unique_well_formed_entries() {
        let all = all();
        assert_eq!(all.len(), 249);
        let mut a2 = std::collections::HashSet::new();
        let mut a3 = std::collections::HashSet::new();
        let mut num = std::collections::HashSet::new();
        let mut names = std::collections::HashSet::new();
        for c in all {
            assert!(c.alpha2.len() == 2 && c.alpha2.bytes().all(|b| b.is_ascii_uppercase()));
            assert!(c.alpha3.len() == 3 && c.alpha3.bytes().all(|b| b.is_ascii_uppercase()));
            assert!((1..1000).contains(&c.numeric), "{c:?}");
            assert!(!c.name.is_empty() && c.name.trim() == c.name);
            assert!(a2.insert(c.alpha2), "duplicate {}", c.alpha2);
            assert!(a3.insert(c.alpha3), "duplicate {}", c.alpha3);
            assert!(num.insert(c.numeric), "duplicate {}", c.numeric);
            assert!(names.insert(c.name), "duplicate {}", c.name);
        }
        assert!(all.windows(2).all(|w| w[0].alpha2 < w[1].alpha2));
    }

    #[test]
    fn every_code_and_name_round_trips() {
        for c in all() {
            assert_eq!(find(c.alpha2), Some(c));
            assert_eq!(find(&c.alpha2.to_lowercase()), Some(c));
            assert_eq!(find(c.alpha3), Some(c));
            assert_eq!(find(&c.alpha3.to_lowercase()), Some(c));
            assert_eq!(find(&format!("{:03}", c.numeric)), Some(c));
            assert_eq!(find(c.name), Some(c), "{}", c.name);
            assert_eq!(find(&c.name.to_uppercase()), Some(c), "{}", c.name);
            assert_eq!(find(&format!("  {}\t", c.name.to_lowercase())), Some(c));
            assert_eq!(by_alpha2(c.alpha2), Some(c));
            assert_eq!(by_alpha3(c.alpha3), Some(c));
            assert_eq!(by_numeric(c.numeric), Some(c));
            assert!(is_alpha2_code(c.alpha2));
        }
    }

    #[test]
    fn every_alias_resolves_to_its_country() {
        for (alpha2, forms) in ALIASES {
            for form in *forms {
                assert_eq!(code(form), Some(*alpha2), "alias {form:?}");
            }
        }
    }

    #[test]
    fn no_normalized_key_names_two_countries() {
        let mut collisions = Vec::new();
        let map = build_name_index(|key, kept, dropped| {
            collisions.push((key.to_owned(), kept, dropped));
        });
        assert!(collisions.is_empty(), "{collisions:?}");
        assert!(map.len() > 600);
        // A key that looks like a code must not be shadowed by another
        // country's code on the fast path.
        for (key, &index) in &map {
            let shadow = match key.len() {
                2 => by_alpha2(key),
                3 => by_alpha3(key),
                _ => None,
            };
            if let Some(c) = shadow {
                assert_eq!(Some(c), COUNTRIES.get(usize::from(index)), "{key}");
            }
        }
        assert!(map.keys().all(|k| k.len() <= MAX_KEY_BYTES));
    }

    #[test]
    fn official_and_iso_names() {
        for (input, expected) in [
            ("United States of America", "US"),
            ("Korea, Republic of", "KR"),
            ("korea republic of", "KR"),
            ("Republic of Korea", "KR"),
            ("Korea, Democratic People's Republic of", "KP"),
            ("Russian Federation", "RU"),
            ("Viet Nam", "VN"),
            ("Iran, Islamic Republic of", "IR"),
            ("Czech Republic", "CZ"),
            ("Turkey", "TR"),
            ("Türkiye", "TR"),
            ("Turkiye", "TR"),
            ("TÜRKIYE", "TR"),
            ("Taiwan, Province of China", "TW"),
            ("Tanzania, United Republic of", "TZ"),
            ("Bolivia, Plurinational State of", "BO"),
            ("Venezuela, Bolivarian Republic of", "VE"),
            ("Moldova, Republic of", "MD"),
            ("Lao People's Democratic Republic", "LA"),
            ("Syrian Arab Republic", "SY"),
            ("Brunei Darussalam", "BN"),
            ("Congo, The Democratic Republic of the", "CD"),
            ("Congo", "CG"),
            ("Micronesia, Federated States of", "FM"),
            ("Holy See (Vatican City State)", "VA"),
            ("Virgin Islands, British", "VG"),
            ("Virgin Islands, U.S.", "VI"),
            ("Saint Martin (French part)", "MF"),
            ("Sint Maarten (Dutch part)", "SX"),
            ("United Kingdom of Great Britain and Northern Ireland", "GB"),
            ("Palestine, State of", "PS"),
            ("Falkland Islands (Malvinas)", "FK"),
            ("Cabo Verde", "CV"),
            ("Cape Verde", "CV"),
            ("Kingdom of the Netherlands", "NL"),
        ] {
            assert_eq!(code(input), Some(expected), "{input:?}");
        }
    }

    #[test]
    fn diacritics_punctuation_and_spacing() {
        for (input, expected) in [
            ("Côte d'Ivoire", "CI"),
            ("Cote d'Ivoire", "CI"),
            ("cote divoire", "CI"),
            ("Côte d’Ivoire", "CI"),
            ("COTE D IVOIRE", "CI"),
            ("Ivory Coast", "CI"),
            ("Curaçao", "CW"),
            ("Curacao", "CW"),
            ("Åland Islands", "AX"),
            ("Aland Islands", "AX"),
            ("Réunion", "RE"),
            ("Reunion", "RE"),
            ("São Tomé and Príncipe", "ST"),
            ("Sao Tome and Principe", "ST"),
            ("Sao Tome & Principe", "ST"),
            ("Saint Barthélemy", "BL"),
            ("St. Barthelemy", "BL"),
            ("St Kitts and Nevis", "KN"),
            ("St. Lucia", "LC"),
            ("St Vincent & the Grenadines", "VC"),
            ("Antigua & Barbuda", "AG"),
            ("Bosnia & Herzegovina", "BA"),
            ("Trinidad and Tobago", "TT"),
            ("Guinea-Bissau", "GW"),
            ("Guinea Bissau", "GW"),
            ("Timor-Leste", "TL"),
            ("  united    states  ", "US"),
            ("The Netherlands", "NL"),
            ("the gambia", "GM"),
            ("Gambia, The", "GM"),
            ("Bahamas", "BS"),
            ("Österreich", "AT"),
            ("Osterreich", "AT"),
            // Decomposed form (e + combining acute).
            ("Re\u{301}union", "RE"),
            ("Groß\u{AD}britannien", "GB"),
            ("Großbritannien", "GB"),
            ("Grossbritannien", "GB"),
            ("Česko", "CZ"),
            ("Magyarország", "HU"),
            ("Éire", "IE"),
        ] {
            assert_eq!(code(input), Some(expected), "{input:?}");
        }
    }

    #[test]
    fn everyday_aliases() {
        for (input, expected) in [
            ("USA", "US"),
            ("U.S.A.", "US"),
            ("U.S.", "US"),
            ("u.s.a", "US"),
            ("UK", "GB"),
            ("U.K.", "GB"),
            ("uk", "GB"),
            ("Great Britain", "GB"),
            ("UAE", "AE"),
            ("DRC", "CD"),
            ("DR Congo", "CD"),
            ("Congo-Brazzaville", "CG"),
            ("South Korea", "KR"),
            ("Korea, South", "KR"),
            ("North Korea", "KP"),
            ("Russia", "RU"),
            ("Vietnam", "VN"),
            ("Iran", "IR"),
            ("Czechia", "CZ"),
            ("Burma", "MM"),
            ("Swaziland", "SZ"),
            ("Macedonia", "MK"),
            ("East Timor", "TL"),
            ("Macau", "MO"),
            ("Hong Kong SAR", "HK"),
            ("Vatican", "VA"),
        ] {
            assert_eq!(code(input), Some(expected), "{input:?}");
        }
    }

    #[test]
    fn translated_names_of_large_markets() {
        for (input, expected) in [
            ("Nederland", "NL"),
            ("Niederlande", "NL"),
            ("Pays-Bas", "NL"),
            ("Países Bajos", "NL"),
            ("Deutschland", "DE"),
            ("Duitsland", "DE"),
            ("Allemagne", "DE"),
            ("Alemania", "DE"),
            ("Verenigde Staten", "US"),
            ("Vereinigte Staaten", "US"),
            ("États-Unis", "US"),
            ("Etats Unis", "US"),
            ("Estados Unidos", "US"),
            ("Frankrijk", "FR"),
            ("Frankreich", "FR"),
            ("España", "ES"),
            ("Espana", "ES"),
            ("Spanje", "ES"),
            ("Italië", "IT"),
            ("Italien", "IT"),
            ("België", "BE"),
            ("Belgien", "BE"),
            ("Belgique", "BE"),
            ("Brasil", "BR"),
            ("Brasilien", "BR"),
            ("Japan", "JP"),
            ("Japon", "JP"),
            ("Zwitserland", "CH"),
            ("Schweiz", "CH"),
            ("Suisse", "CH"),
            ("Österreich", "AT"),
            ("Oostenrijk", "AT"),
            ("Polen", "PL"),
            ("Pologne", "PL"),
            ("Zweden", "SE"),
            ("Schweden", "SE"),
            ("Suède", "SE"),
            ("Noorwegen", "NO"),
            ("Norwegen", "NO"),
            ("Denemarken", "DK"),
            ("Dänemark", "DK"),
            ("Verenigd Koninkrijk", "GB"),
            ("Vereinigtes Königreich", "GB"),
            ("Royaume-Uni", "GB"),
            ("Reino Unido", "GB"),
            ("Ierland", "IE"),
            ("Irland", "IE"),
            ("Irlande", "IE"),
            ("Indien", "IN"),
            ("Inde", "IN"),
            ("China", "CN"),
            ("Chine", "CN"),
            ("Canada", "CA"),
            ("Kanada", "CA"),
            ("Mexico", "MX"),
            ("México", "MX"),
            ("Mexiko", "MX"),
            ("Australië", "AU"),
            ("Australien", "AU"),
            ("Australie", "AU"),
        ] {
            assert_eq!(code(input), Some(expected), "{input:?}");
        }
    }

    #[test]
    fn unknown_and_deliberately_excluded_inputs() {
        for input in [
            "Narnia",
            "",
            "   ",
            "XK",
            "Kosovo",
            "America",
            "Korea",
            "England",
            "Scotland",
            "Holland",
            "Virgin Islands",
            "ZZ",
            "ZZZ",
            "000",
            "999",
            "84",
            "0840",
            "8 40",
            "U",
            "the",
            "&",
            ".",
            "🇺🇸",
            "\u{0}",
            "United States of Narnia",
            "n/a",
            "N/A",
            "N.A.",
            "none",
            "unknown",
            "other",
            "-",
            "tbd",
            "n.v.t.",
        ] {
            assert_eq!(find(input), None, "{input:?}");
        }
        let long = "a".repeat(10_000);
        assert_eq!(find(&long), None);
        let long_accents = "é".repeat(5_000);
        assert_eq!(find(&long_accents), None);
        assert_eq!(by_alpha2("UK"), None);
        assert_eq!(by_alpha2("U"), None);
        assert_eq!(by_alpha2("USA"), None);
        assert_eq!(by_alpha2("é1"), None);
        assert_eq!(by_alpha3("US"), None);
        assert_eq!(by_numeric(0), None);
        assert_eq!(by_numeric(u16::MAX), None);
    }

    #[test]
    fn codes_with_surrounding_whitespace_and_numeric_text() {
        assert_eq!(code(" us "), Some("US"));
        assert_eq!(code("840"), Some("US"));
        assert_eq!(code(" 840\n"), Some("US"));
        assert_eq!(code("004"), Some("AF"));
        assert_eq!(code("528"), Some("NL"));
        assert_eq!(code("nld"), Some("NL"));
    }

    #[test]
    fn is_alpha2_code_is_strict() {
        assert!(is_alpha2_code("US"));
        assert!(is_alpha2_code("GB"));
        assert!(is_alpha2_code("NL"));
        assert!(!is_alpha2_code("us"));
        assert!(!is_alpha2_code("Us"));
        assert!(!is_alpha2_code("UK"));
        assert!(!is_alpha2_code("XK"));
        assert!(!is_alpha2_code(" US"));
        assert!(!is_alpha2_code("USA"));
        assert!(!is_alpha2_code(""));
        assert!(!is_alpha2_code("ÜS"));
    }

    #[test]
    fn codes_and_names_resolve_without_allocating() {
        // Build the name index first so only the lookups themselves are counted.
        assert_eq!(code("Côte d'Ivoire"), Some("CI"));
        let before = alloc_counter::count();
        let mut hits = 0;
        for _ in 0..100 {
            hits += usize::from(find("US").is_some());
            hits += usize::from(find("nl").is_some());
            hits += usize::from(find("DEU").is_some());
            hits += usize::from(find("840").is_some());
            hits += usize::from(is_alpha2_code("GB"));
            hits += usize::from(find("Côte d'Ivoire").is_some());
            hits += usize::from(find("United States of America").is_some());
            hits += usize::from(find("Narnia").is_none());
        }
        assert_eq!(alloc_counter::count(), before, "a lookup allocated");
        assert_eq!(hits, 800);
        // Sanity check that the counter works at all.
        let v = std::hint::black_box(vec![1u8; 16]);
        assert!(alloc_counter::count() > before);
        drop(v);
    }
}
