//! The YAML shapes of user-defined connectors (SPEC §4.2): `inject:` and
//! `sign:` as written. `connector::user` turns them into connectors.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserConnector {
    pub(crate) name: String,
    pub(crate) hosts: Vec<String>,
    #[serde(default)]
    pub(crate) port: Option<u16>,
    #[serde(default)]
    pub(crate) strip: Vec<String>,
    #[serde(default)]
    pub(crate) inject: Option<InjectSpec>,
    #[serde(default)]
    pub(crate) sign: Option<RecipeSpec>,
    #[serde(default)]
    pub(crate) fields: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InjectSpec {
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) query: BTreeMap<String, String>,
    /// `Authorization: Basic base64(username:password)`.
    #[serde(default)]
    pub(crate) basic: Option<BasicSpec>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BasicSpec {
    pub(crate) username: String,
    pub(crate) password: String,
}

/// The `sign:` section as written in YAML.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecipeSpec {
    /// `hmac-sha256`, `hmac-sha512` or `aws-sigv4`.
    pub(crate) algorithm: String,
    #[serde(default)]
    pub(crate) secret: Option<String>,
    #[serde(default)]
    pub(crate) message: Option<String>,
    /// `hex` (default) or `base64`.
    #[serde(default)]
    pub(crate) encoding: Option<String>,
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, String>,
    /// aws-sigv4 only.
    #[serde(default)]
    pub(crate) region: Option<String>,
    /// aws-sigv4 only.
    #[serde(default)]
    pub(crate) service: Option<String>,
}
