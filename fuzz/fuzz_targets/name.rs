//! User names: `UserName::parse` (what users type), `parse_canonical` (names inside signed
//! encodings), `FromStr`, and the JSON form (`Deserialize`, canonical only), with the rules
//! between them: a parsed name is the input folded to lower case and is canonical, and a
//! canonical name parses to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_proto::limits::{MAX_NAME_LEN, MIN_NAME_LEN};
use natter_proto::{NameError, UserName};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
    if let Ok(name) = serde_json::from_slice::<UserName>(data) {
        assert_eq!(UserName::parse_canonical(name.as_str()).as_ref(), Ok(&name));
        let json = serde_json::to_vec(&name).expect("names encode");
        assert_eq!(serde_json::from_slice::<UserName>(&json).ok(), Some(name));
    }
});

fn check(text: &str) {
    let parsed = UserName::parse(text);
    assert_eq!(text.parse::<UserName>(), parsed);
    let canonical = UserName::parse_canonical(text);
    match &parsed {
        Ok(name) => {
            assert_eq!(name.as_str(), text.to_ascii_lowercase());
            assert!((MIN_NAME_LEN..=MAX_NAME_LEN).contains(&name.as_str().len()));
            assert_eq!(UserName::parse_canonical(name.as_str()).as_ref(), Ok(name));
            if name.as_str() == text {
                assert_eq!(canonical.as_ref(), Ok(name));
            } else {
                assert_eq!(canonical, Err(NameError::NotCanonical));
            }
            let _ = format!("{name} {name:?}");
        }
        Err(e) => {
            assert_eq!(canonical.as_ref(), Err(e));
            let _ = e.to_string();
        }
    }
}
