//! Generates the client from the one OpenAPI document, so the client cannot drift from it.

use std::{env, fs, path::PathBuf};

fn main() {
    let spec_path =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("../openapi/policy-server.yaml");
    println!("cargo:rerun-if-changed={}", spec_path.display());

    let text = fs::read_to_string(&spec_path).unwrap_or_else(|e| panic!("cannot read {}: {e}", spec_path.display()));
    let mut document: serde_norway::Value =
        serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", spec_path.display()));
    drop_value_constraints(&mut document);
    inline_string_aliases(&mut document);
    let mut spec: openapiv3::OpenAPI = serde_norway::from_value(document)
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

/// Removes the limits on values (`pattern`, `minLength`, `maxLength`, `minimum`, `maximum`,
/// `minItems`)
/// from every schema. The client leaves them to the server, whose refusals carry upstream's
/// error strings; a client that refused first would hide those (callers and tests send bad
/// values on purpose), and progenitor would turn each limited field into a newtype. Only
/// scalar values are removed, so a property that happened to be named `pattern` stays.
fn drop_value_constraints(value: &mut serde_norway::Value) {
    const LIMITS: [&str; 6] = ["pattern", "minLength", "maxLength", "minimum", "maximum", "minItems"];
    match value {
        serde_norway::Value::Mapping(map) => {
            map.retain(|k, v| v.is_mapping() || !k.as_str().is_some_and(|k| LIMITS.contains(&k)));
            for (_, v) in map.iter_mut() {
                drop_value_constraints(v);
            }
        }
        serde_norway::Value::Sequence(items) => items.iter_mut().for_each(drop_value_constraints),
        _ => {}
    }
}

/// Replaces references to schemas that are just a string (such as `AppId`, once its limits
/// are gone) with `{type: string}`, so the client's fields stay plain `String`s.
fn inline_string_aliases(document: &mut serde_norway::Value) {
    let Some(schemas) =
        document.get_mut("components").and_then(|c| c.get_mut("schemas")).and_then(|s| s.as_mapping_mut())
    else {
        return;
    };
    let aliases: Vec<String> = schemas
        .iter()
        .filter(|(_, v)| {
            v.get("type").and_then(|t| t.as_str()) == Some("string")
                && v.get("enum").is_none()
                && v.get("format").is_none()
        })
        .filter_map(|(k, _)| k.as_str().map(|k| format!("#/components/schemas/{k}")))
        .collect();
    for alias in &aliases {
        schemas.remove(alias.trim_start_matches("#/components/schemas/"));
    }
    replace_refs(document, &aliases);
}

fn replace_refs(value: &mut serde_norway::Value, aliases: &[String]) {
    let is_alias = value.get("$ref").and_then(|r| r.as_str()).is_some_and(|r| aliases.iter().any(|a| a == r));
    if is_alias {
        *value = serde_norway::from_str("{type: string}").expect("a literal schema");
        return;
    }
    match value {
        serde_norway::Value::Mapping(map) => map.iter_mut().for_each(|(_, v)| replace_refs(v, aliases)),
        serde_norway::Value::Sequence(items) => items.iter_mut().for_each(|v| replace_refs(v, aliases)),
        _ => {}
    }
}
