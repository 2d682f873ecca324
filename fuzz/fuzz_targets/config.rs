//! The config file: text is refused with a reason or read into settings that validate, read the
//! same each time, and start a broker.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren::Config;
use warren::management::definitions::export;
use warren_fuzz::with_broker;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match Config::parse(text) {
        Ok(config) => config,
        Err(reason) => {
            assert!(!reason.is_empty(), "a refusal says why");
            return;
        }
    };
    assert_eq!(config.validate(), Ok(()));
    assert_eq!(
        Config::parse(text).as_ref(),
        Ok(&config),
        "parsing is deterministic"
    );
    let _ = (config.handshake_timeout(), config.close_timeout());
    with_broker(config, async |broker| {
        let _ = export(broker);
    });
});
