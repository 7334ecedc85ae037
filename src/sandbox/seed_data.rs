//! Realistic fake companies and people for `POST /_sandbox/seed`, shared by every emulator
//! so that seeded referrals name customers that also exist as seeded CRM accounts (the
//! account-matching path gets exercised, not only the create path).

use super::Rng;

/// A customer company with its postal address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Company {
    /// Legal name, e.g. "Northwind Traders 17".
    pub name: String,
    /// Street line.
    pub street: String,
    /// City.
    pub city: String,
    /// State or region ("" where the country has none in our sample).
    pub state: String,
    /// Postal code.
    pub postal_code: String,
    /// ISO 3166-1 alpha-2 code.
    pub country_code: String,
    /// English country name, as CRMs often store it.
    pub country_name: String,
}

/// A contact person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// Given name.
    pub first_name: String,
    /// Family name.
    pub last_name: String,
    /// Work e-mail at the company's domain.
    pub email: String,
    /// Phone number.
    pub phone: String,
}

const STEMS: &[&str] = &[
    "Contoso",
    "Fabrikam",
    "Northwind",
    "Adventure Works",
    "Tailspin",
    "Wingtip",
    "Litware",
    "Proseware",
    "Woodgrove",
    "Alpine Ski House",
    "Coho Winery",
    "Fourth Coffee",
    "Humongous",
    "Lucerne",
    "Margie's Travel",
    "Trey Research",
    "Wide World Importers",
    "Blue Yonder",
    "Relecloud",
    "Graphic Design Institute",
];
const SUFFIXES: &[&str] = &[
    "Inc", "Ltd", "GmbH", "B.V.", "LLC", "SA", "Group", "Holdings",
];
const PLACES: &[(&str, &str, &str, &str, &str)] = &[
    // city, state, postal code prefix, ISO code, country name
    ("Redmond", "WA", "980", "US", "United States"),
    ("Seattle", "WA", "981", "US", "United States"),
    ("Austin", "TX", "787", "US", "United States"),
    ("Toronto", "ON", "M5V", "CA", "Canada"),
    ("London", "", "EC1", "GB", "United Kingdom"),
    ("Amsterdam", "", "101", "NL", "Netherlands"),
    ("Munich", "BY", "803", "DE", "Germany"),
    ("Paris", "", "750", "FR", "France"),
    ("Madrid", "", "280", "ES", "Spain"),
    ("Sydney", "NSW", "200", "AU", "Australia"),
    ("Bangalore", "KA", "560", "IN", "India"),
    ("Tokyo", "", "100", "JP", "Japan"),
];
const FIRST: &[&str] = &[
    "Sue", "Joe", "Ana", "Raj", "Mia", "Lars", "Ines", "Tom", "Yuki", "Omar", "Eva", "Noah",
];
const LAST: &[&str] = &[
    "Smith", "Hansen", "Garcia", "Patel", "Jansen", "Müller", "Dubois", "Sato", "Khan", "Rossi",
    "Novak", "Brown",
];
const STREETS: &[&str] = &[
    "Main Street",
    "Market Street",
    "Harbour Road",
    "Station Road",
    "Park Avenue",
];

/// The `index`-th company. Deterministic in `index` alone, so emulators seeded with the
/// same index produce the same customer.
pub fn company(index: usize) -> Company {
    let mut rng = Rng::new(0xC0FFEE ^ index as u64);
    let stem = STEMS[index % STEMS.len()];
    let suffix = rng.pick(SUFFIXES);
    let (city, state, postal, code, country) = *rng.pick(PLACES);
    Company {
        name: format!("{stem} {} {suffix}", index / STEMS.len() + 1),
        street: format!("{} {}", 1 + rng.below(400), rng.pick(STREETS)),
        city: city.to_owned(),
        state: state.to_owned(),
        postal_code: format!("{postal}{:02}", rng.below(100)),
        country_code: code.to_owned(),
        country_name: country.to_owned(),
    }
}

/// A random person working at `company`.
pub fn person(rng: &mut Rng, company: &Company) -> Person {
    let first = *rng.pick(FIRST);
    let last = *rng.pick(LAST);
    let domain: String = company
        .name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase();
    Person {
        first_name: first.to_owned(),
        last_name: last.to_owned(),
        email: format!(
            "{}.{}@{domain}.example",
            first.to_ascii_lowercase(),
            last.chars()
                .filter(char::is_ascii_alphabetic)
                .collect::<String>()
                .to_ascii_lowercase()
        ),
        phone: format!("+1 425 555 {:04}", rng.below(10_000)),
    }
}

/// A deal value between 5,000 and 500,000 in steps of 500.
pub fn deal_value(rng: &mut Rng) -> u64 {
    5_000 + rng.below(991) * 500
}
