//! The deployment file as written: serde shapes that keep where each value was, so the
//! checks in [`super::file`] can name the line. Nothing here is validated yet.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a deployment")]
pub(super) struct RawDeployment {
    /// The deployment's name; the file stem when absent.
    pub name: Option<Spanned<String>>,
    /// `[vm.NAME]` tables; the key spans give file order.
    #[serde(default)]
    pub vm: BTreeMap<Spanned<String>, RawVm>,
}

/// One `[vm.NAME]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [vm.NAME] table")]
pub(super) struct RawVm {
    pub image: Option<Spanned<String>>,
    pub command: Option<Spanned<Vec<String>>>,
    pub entrypoint: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<Spanned<String>, String>,
    #[serde(default)]
    pub env_file: Vec<Spanned<String>>,
    pub workdir: Option<Spanned<String>>,
    pub user: Option<String>,
    /// Any TOML value, so that `memory = 64` gets a message of our own.
    pub memory: Option<Spanned<toml::Value>>,
    pub vcpus: Option<Spanned<i64>>,
    #[serde(rename = "type")]
    pub kind: Option<Spanned<String>>,
    pub restart: Option<Spanned<String>>,
    #[serde(default)]
    pub log_opt: Vec<Spanned<String>>,
    #[serde(default)]
    pub depends_on: Vec<Spanned<String>>,
    #[serde(default)]
    pub ports: Vec<Spanned<String>>,
    pub network: Option<Spanned<String>>,
    #[serde(default)]
    pub volumes: Vec<Spanned<String>>,
    #[serde(default)]
    pub tmpfs: Vec<Spanned<String>>,
    #[serde(default)]
    pub read_only: bool,
    pub storage_size: Option<Spanned<String>>,
    #[serde(default)]
    pub labels: BTreeMap<Spanned<String>, String>,
}
