//! Salesforce record ids: 15 case-sensitive characters (3-character key prefix, then the
//! record number in base 62) plus the 3-character suffix that makes the 18-character form
//! case-insensitive.

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const SUFFIX: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";

/// The 18-character id of the `number`-th record of the object with `prefix`.
///
/// Characters 4–5 are a fixed "pod" (`Dn`) and the rest a zero-padded base-62 counter,
/// which is what real ids look like (`006Dn00000AbCdEIAZ`) and keeps them unique and
/// reproducible.
pub fn generate(prefix: &str, number: u64) -> String {
    let mut digits = [b'0'; 10];
    let mut n = number;
    for slot in digits.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    let mut id15 = String::with_capacity(18);
    id15.push_str(prefix);
    id15.push_str("Dn");
    id15.extend(digits.iter().map(|&b| char::from(b)));
    with_suffix(&id15)
}

/// Appends the case-insensitivity suffix to a 15-character id.
fn with_suffix(id15: &str) -> String {
    let bytes = id15.as_bytes();
    let mut out = id15.to_owned();
    for chunk in bytes.chunks(5).take(3) {
        let bits = chunk
            .iter()
            .enumerate()
            .filter(|(_, b)| b.is_ascii_uppercase())
            .fold(0usize, |acc, (i, _)| acc | (1 << i));
        out.push(char::from(SUFFIX[bits]));
    }
    out
}

/// The canonical 18-character form of a 15- or 18-character id, or `None` when the text
/// cannot be an id. An 18-character id restores its case from the suffix, so
/// `006dn00000abcdeiaz` and `006Dn00000AbCdEIAZ` are the same record, as in Salesforce.
pub fn normalize(text: &str) -> Option<String> {
    if !text.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    match text.len() {
        15 => Some(with_suffix(text)),
        18 => {
            let (body, suffix) = text.split_at(15);
            let mut restored = String::with_capacity(15);
            for (chunk, flag) in body.as_bytes().chunks(5).zip(suffix.bytes()) {
                let bits = SUFFIX
                    .iter()
                    .position(|&c| c == flag.to_ascii_uppercase())?;
                for (i, &b) in chunk.iter().enumerate() {
                    let c = if bits & (1 << i) != 0 {
                        b.to_ascii_uppercase()
                    } else {
                        b.to_ascii_lowercase()
                    };
                    restored.push(char::from(c));
                }
            }
            Some(with_suffix(&restored))
        }
        _ => None,
    }
}

/// The record number encoded by [`generate`], for restoring counters; `None` for ids the
/// sandbox did not make.
pub fn number(id: &str) -> Option<u64> {
    let digits = id.get(5..15)?;
    digits.bytes().try_fold(0u64, |acc, b| {
        let digit = BASE62.iter().position(|&c| c == b)? as u64;
        acc.checked_mul(62)?.checked_add(digit)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_matches_salesforce_algorithm() {
        // A published example: 001A0000006Vm9r → 001A0000006Vm9rIAC.
        assert_eq!(with_suffix("001A0000006Vm9r"), "001A0000006Vm9rIAC");
    }

    #[test]
    fn eighteen_character_ids_are_case_insensitive() {
        let id = generate("006", 123_456_789);
        assert_eq!(id.len(), 18);
        assert_eq!(
            normalize(&id.to_ascii_lowercase()).as_deref(),
            Some(id.as_str())
        );
        assert_eq!(normalize(&id[..15]).as_deref(), Some(id.as_str()));
        assert_eq!(number(&id), Some(123_456_789));
        assert_eq!(normalize("006-bad"), None);
        assert_eq!(normalize("0060000000000000!!"), None);
    }
}
