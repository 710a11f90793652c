//! The plugin's metadata (name, version, commands with help) and its gob form.

use std::collections::BTreeMap;

use crate::gob::{Type, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandMetadata {
    pub name: &'static str,
    pub help_text: &'static str,
    pub usage: &'static str,
    /// Option name (without dashes; one letter prints as `-x`, longer as `--name`) → text.
    pub options: BTreeMap<&'static str, &'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub name: &'static str,
    pub version: (i64, i64, i64),
    pub min_cli_version: (i64, i64, i64),
    pub commands: Vec<CommandMetadata>,
}

fn version_type() -> Type {
    Type::strukt("VersionType", &[("Major", Type::Int), ("Minor", Type::Int), ("Build", Type::Int)])
}

fn version(v: (i64, i64, i64)) -> Value {
    Value::Struct(vec![
        ("Major".into(), Value::Int(v.0)),
        ("Minor".into(), Value::Int(v.1)),
        ("Build".into(), Value::Int(v.2)),
    ])
}

impl Metadata {
    pub fn gob_type() -> Type {
        let usage = Type::strukt(
            "Usage",
            &[("Usage", Type::String), ("Options", Type::map("map[string]string", Type::String, Type::String))],
        );
        let command = Type::strukt(
            "Command",
            &[("Name", Type::String), ("Alias", Type::String), ("HelpText", Type::String), ("UsageDetails", usage)],
        );
        Type::strukt(
            "PluginMetadata",
            &[
                ("Name", Type::String),
                ("Version", version_type()),
                ("LibraryVersion", version_type()),
                ("MinCliVersion", version_type()),
                ("Commands", Type::slice("[]plugin.Command", command)),
            ],
        )
    }

    pub fn to_gob(&self) -> Value {
        let commands = self
            .commands
            .iter()
            .map(|c| {
                let options = c.options.iter().map(|(k, v)| (Value::string(k), Value::string(v))).collect::<Vec<_>>();
                Value::Struct(vec![
                    ("Name".into(), Value::string(c.name)),
                    ("HelpText".into(), Value::string(c.help_text)),
                    (
                        "UsageDetails".into(),
                        Value::Struct(vec![
                            ("Usage".into(), Value::string(c.usage)),
                            ("Options".into(), Value::Map(options)),
                        ]),
                    ),
                ])
            })
            .collect();
        Value::Struct(vec![
            ("Name".into(), Value::string(self.name)),
            ("Version".into(), version(self.version)),
            ("LibraryVersion".into(), version((1, 0, 0))),
            ("MinCliVersion".into(), version(self.min_cli_version)),
            ("Commands".into(), Value::Slice(commands)),
        ])
    }
}
