//! Compiles the latchkey.v1 protos with a vendored protoc (no system protoc is assumed) and writes
//! the file descriptor set that server reflection serves.
use std::{env, path::PathBuf};

const PROTOS: [&str; 4] = [
    "proto/latchkey/v1/users.proto",
    "proto/latchkey/v1/sessions.proto",
    "proto/latchkey/v1/emails.proto",
    "proto/latchkey/v1/passwordless.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let include = protoc_bin_vendored::include_path()?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("latchkey_descriptor.bin"))
        .compile_with_config(config, &PROTOS.map(PathBuf::from), &[PathBuf::from("proto"), include])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
