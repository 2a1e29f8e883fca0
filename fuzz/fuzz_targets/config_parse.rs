//! A config file's text through the binary's path (`config::load` minus the environment and the
//! flags): the profile's defaults, the TOML merged over them, `Config` extracted, then
//! `Config::validate`. Never panics. `load` only reads a file, so the TOML comes in through
//! figment's `Toml::string`, exactly as `load` layers `Toml::file_exact`.
#![no_main]

use std::sync::LazyLock;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use latchkey::config::{Config, Profile};
use libfuzzer_sys::fuzz_target;

/// The working directory `validate` resolves relative paths against (and where the development
/// profile would generate its key): one empty folder for the whole run.
static WORKING_DIR: LazyLock<tempfile::TempDir> = LazyLock::new(|| tempfile::tempdir().unwrap());

fuzz_target!(|text: &str| {
    let file = Figment::new().merge(Toml::string(text));
    let profile = match file.extract_inner::<Profile>("profile") {
        Ok(profile) => profile,
        // As in `load`: a config file without `profile` is production.
        Err(error) if error.missing() => Profile::Production,
        Err(_) => return,
    };
    let Ok(config) = Figment::from(Serialized::defaults(Config::defaults(profile)))
        .merge(file)
        .extract::<Config>()
    else {
        return;
    };
    if let Ok(validated) = config.validate(WORKING_DIR.path()) {
        // What start-up does next with a valid config must hold up too.
        let _ = format!("{:?}", validated.config);
        let _ = validated
            .redirects
            .check("redirect_url", "http://localhost:3000/auth/callback", "token");
    }
});
