//! Compiles the latchkey.v1 protos with a vendored protoc (no system protoc is assumed) and writes
//! the file descriptor sets that server reflection serves: latchkey's, and google.rpc's error
//! details (so grpcurl can print an ErrorInfo's reason; their Rust types come from tonic-types).
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
        // Malformed requests answer INVALID_ARGUMENT, not INTERNAL (see src/api/codec.rs).
        .codec_path("crate::api::codec::StrictCodec")
        .file_descriptor_set_path(out.join("latchkey_descriptor.bin"))
        .compile_with_config(config, &PROTOS.map(PathBuf::from), &[PathBuf::from("proto"), include])?;
    let mut google = prost_build::Config::new();
    google.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let unused = out.join("google_rpc_unused");
    std::fs::create_dir_all(&unused)?;
    google
        .file_descriptor_set_path(out.join("google_rpc_descriptor.bin"))
        .out_dir(unused)
        .compile_protos(
            &[
                "third_party/google/rpc/status.proto",
                "third_party/google/rpc/error_details.proto",
            ],
            &[PathBuf::from("third_party"), protoc_bin_vendored::include_path()?],
        )?;
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=third_party");
    Ok(())
}
