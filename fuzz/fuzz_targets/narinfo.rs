//! Text into the narinfo and `nix-cache-info` parsers.
//!
//! Properties:
//! * an accepted narinfo prints (`to_text`) to text that parses back to the same value, and
//!   printing is then stable; a line-numbered error names a line of the input;
//! * signing the accepted narinfo with a fixed key gives a signature that survives the text
//!   and verifies, and no longer does once `NarSize` changes;
//! * an accepted `nix-cache-info` prints and parses back to the same value.
#![no_main]

use std::sync::OnceLock;

use ferrix_format::narinfo::{CacheInfo, NarInfo, NarInfoError};
use ferrix_format::signature::SecretKey;
use ferrix_format::StoreDir;
use libfuzzer_sys::fuzz_target;

fn key() -> &'static SecretKey {
    static K: OnceLock<SecretKey> = OnceLock::new();
    K.get_or_init(|| SecretKey::from_seed("fuzz-1", &[7u8; 32]))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let sd = StoreDir::default();
    match NarInfo::parse(&sd, text) {
        Ok(ni) => {
            let printed = ni.to_text(&sd);
            let back = NarInfo::parse(&sd, &printed)
                .unwrap_or_else(|e| panic!("printed narinfo does not parse: {e}\n{printed}"));
            assert_eq!(back, ni);
            assert_eq!(back.to_text(&sd), printed, "printing is not stable");

            let _ = ni.valid_signatures(&sd, &[key().to_public()]);
            let mut signed = ni.clone();
            signed.sigs.clear();
            signed.sign(&sd, key());
            let back = NarInfo::parse(&sd, &signed.to_text(&sd)).unwrap();
            assert_eq!(back.valid_signatures(&sd, &[key().to_public()]), 1);
            let mut changed = back;
            changed.nar_size ^= 1;
            assert_eq!(changed.valid_signatures(&sd, &[key().to_public()]), 0);
        }
        Err(
            NarInfoError::Syntax { line }
            | NarInfoError::Field { line, .. }
            | NarInfoError::Duplicate { line, .. },
        ) => {
            assert!(
                line >= 1 && line <= text.lines().count(),
                "line {line} of {}",
                text.lines().count()
            );
        }
        Err(_) => {}
    }
    if let Ok(ci) = CacheInfo::parse(text) {
        assert_eq!(CacheInfo::parse(&ci.to_text()), Ok(ci));
    }
});
