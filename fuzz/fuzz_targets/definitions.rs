//! Definitions import, as `load_definitions` reads a file at boot: whatever a file holds, the
//! import refuses it or takes it, and what it took exports to a file that imports to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use warren::Config;
use warren::management::definitions::{export, load};
use warren_fuzz::{scratch_file, with_broker};

fuzz_target!(|data: &[u8]| {
    // Text that is not JSON is refused before the broker sees it; that path is serde_json's.
    if serde_json::from_slice::<Value>(data).is_err() {
        return;
    }
    let file = scratch_file("definitions.json");
    std::fs::write(&file, data).expect("the scratch file is writable");
    let Some(exported) = with_broker(Config::default(), async |broker| {
        load(broker, &file).await.ok().map(|()| export(broker))
    }) else {
        return;
    };
    std::fs::write(&file, exported.to_string()).expect("the scratch file is writable");
    let again = with_broker(Config::default(), async |broker| {
        let loaded = load(broker, &file).await;
        (loaded, export(broker))
    });
    assert_eq!(again.0, Ok(()), "an export imports: {exported}");
    assert_eq!(
        again.1, exported,
        "an export imports to the same definitions"
    );
});
