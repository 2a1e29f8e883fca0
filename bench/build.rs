//! Generates client stubs for latchkey.v1 from the repository's own protos (../proto) with a
//! vendored protoc, as the server's build.rs does. No server code and no descriptor set.
use std::path::PathBuf;

const PROTOS: [&str; 4] = [
    "../proto/latchkey/v1/users.proto",
    "../proto/latchkey/v1/sessions.proto",
    "../proto/latchkey/v1/emails.proto",
    "../proto/latchkey/v1/passwordless.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let include = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure().build_server(false).compile_with_config(
        config,
        &PROTOS.map(PathBuf::from),
        &[PathBuf::from("../proto"), include],
    )?;
    println!("cargo:rerun-if-changed=../proto");
    Ok(())
}
