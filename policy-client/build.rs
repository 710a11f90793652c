//! Generates the client from the one OpenAPI document, so the client cannot drift from it.

use std::{env, fs, path::PathBuf};

fn main() {
    let spec_path =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("../openapi/policy-server.yaml");
    println!("cargo:rerun-if-changed={}", spec_path.display());

    let text = fs::read_to_string(&spec_path).unwrap_or_else(|e| panic!("cannot read {}: {e}", spec_path.display()));
    let mut spec: openapiv3::OpenAPI = serde_norway::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not a valid OpenAPI 3.0 document: {e}", spec_path.display()));

    // CORS pre-flights are for browsers; reqwest has no OPTIONS helper and a typed client has
    // no use for them, so they stay in the document but not in the client.
    for (_, item) in spec.paths.paths.iter_mut() {
        if let openapiv3::ReferenceOr::Item(item) = item {
            item.options = None;
        }
    }

    let mut settings = progenitor_impl::GenerationSettings::default();
    settings.with_interface(progenitor_impl::InterfaceStyle::Positional).with_derive("PartialEq");
    let mut generator = progenitor_impl::Generator::new(&settings);
    let tokens =
        generator.generate_tokens(&spec).unwrap_or_else(|e| panic!("progenitor rejected {}: {e}", spec_path.display()));

    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets it")).join("codegen.rs");
    fs::write(&out, tokens.to_string()).expect("write generated client");
}
