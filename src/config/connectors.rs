//! The YAML shapes of user-defined connectors (SPEC §4.2): `inject:` and
//! `sign:` as written. `connector::user` turns them into connectors.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConnector {
    pub name: String,
    pub hosts: Vec<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub strip: Vec<String>,
    #[serde(default)]
    pub inject: Option<InjectSpec>,
    #[serde(default)]
    pub sign: Option<RecipeSpec>,
    #[serde(default)]
    pub fields: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InjectSpec {
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// `Authorization: Basic base64(username:password)`.
    #[serde(default)]
    pub basic: Option<BasicSpec>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BasicSpec {
    pub username: String,
    pub password: String,
}

/// The `sign:` section as written in YAML.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeSpec {
    /// `hmac-sha256`, `hmac-sha512` or `aws-sigv4`.
    pub algorithm: String,
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    /// `hex` (default) or `base64`.
    #[serde(default)]
    pub encoding: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// aws-sigv4 only.
    #[serde(default)]
    pub region: Option<String>,
    /// aws-sigv4 only.
    #[serde(default)]
    pub service: Option<String>,
}
