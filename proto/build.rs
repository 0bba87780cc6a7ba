//! Generates the croupier.v1 types and services. protoc comes from `protoc-bin-vendored`, so a fresh
//! machine needs nothing installed by hand.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; the variable is read by tonic-prost-build below.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .bytes(".")
        .compile_protos(&["croupier/v1/shuffle.proto"], &["."])?;
    println!("cargo:rerun-if-changed=croupier/v1/shuffle.proto");
    Ok(())
}
