//! Bytes into the `.drv` ATerm parser (and, as text, the JSON derivation reader).
//!
//! Properties:
//! * an error points inside the input;
//! * an accepted derivation prints (`to_aterm`) to text that parses back to the same
//!   derivation, and printing is then stable (the printed form may normalise escapes), unless
//!   it holds `"` or `\` in a field Nix prints raw (platform, output names, input outputs);
//! * an accepted derivation's JSON form reads back to the same derivation, unless a fixed
//!   output's path does not match its name and hash (which only the JSON reader checks);
//!   JSON input that reads prints and reads back the same.
#![no_main]

use ferrix_format::derivation::DrvJsonError;
use ferrix_format::{Derivation, DerivationOutput, StoreDir};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let sd = StoreDir::default();
    match Derivation::parse_aterm(&sd, data) {
        Ok(d) => {
            let raw_ok = |s: &str| !s.contains(['"', '\\']);
            let printable = raw_ok(&d.platform)
                && d.outputs.keys().all(|k| raw_ok(k))
                && d.input_drvs.values().flatten().all(|o| raw_ok(o));
            if printable {
                let text = d.to_aterm(&sd);
                let again = Derivation::parse_aterm(&sd, text.as_bytes())
                    .unwrap_or_else(|e| panic!("printed derivation does not parse: {e}\n{text}"));
                assert_eq!(again, d);
                assert_eq!(again.to_aterm(&sd), text, "printing is not stable");
            }
            // The JSON reader also checks fixed outputs against the derivation's name and
            // hash (the ATerm reader leaves that to whoever adds the derivation): refusing
            // such an output is its only way to fail.
            let json = d.to_json(&sd).compact();
            match Derivation::from_json(&sd, &json) {
                Ok(back) => assert_eq!(back.drv, d),
                Err(e @ DrvJsonError::Output { .. }) => {
                    assert!(
                        d.outputs
                            .values()
                            .any(|o| matches!(o, DerivationOutput::CaFixed { .. })),
                        "{e}\n{json}"
                    )
                }
                Err(e) => panic!("JSON of a parsed derivation does not read back: {e}\n{json}"),
            }
        }
        Err(e) => assert!(
            e.offset <= data.len(),
            "offset {} > {}: {e}",
            e.offset,
            data.len()
        ),
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(p) = Derivation::from_json(&sd, text) {
            let again = Derivation::from_json(&sd, &p.drv.to_json(&sd).compact()).map(|x| x.drv);
            assert_eq!(again.ok(), Some(p.drv));
        }
    }
});
