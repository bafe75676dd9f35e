//! Arbitrary text through the Dagu YAML path of the loader, then params resolution.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(loaded) = trellis_spec::load_str("fuzz.yaml", text) {
        let _ = trellis_spec::resolve_params(&loaded.dag, None, &[]);
        // The first line doubles as `--params` text, to reach the token parser and the
        // checks of given values against the declarations.
        let params = text.lines().next().unwrap_or_default();
        let _ = trellis_spec::resolve_params(&loaded.dag, Some(params), &["x".to_string()]);
    }
});
