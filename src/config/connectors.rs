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
    /// Where the access token comes from instead of the credentials
    /// (SPEC §13.1): the credentials fetch it, clavis injects it.
    #[serde(default)]
    pub(crate) auth: Option<AuthSpec>,
}

/// `auth:` of a user connector: one kind of token source.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthSpec {
    pub(crate) oauth2: OAuth2Spec,
}

/// `auth.oauth2:` — an OAuth 2.0 token endpoint and the grant that asks it.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OAuth2Spec {
    pub(crate) token_url: String,
    pub(crate) grant: Grant,
    #[serde(default)]
    pub(crate) scopes: Vec<String>,
    /// How the client authenticates to the token endpoint (RFC 6749
    /// §2.3.1): `basic` (the default every server must support) or `post`.
    #[serde(default)]
    pub(crate) client_auth: ClientAuth,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Grant {
    /// RFC 6749 §6: `client_id`, `client_secret`, `refresh_token`.
    #[default]
    RefreshToken,
    /// RFC 6749 §4.4: `client_id`, `client_secret`.
    ClientCredentials,
    /// RFC 7523: an assertion signed with a Google service-account key
    /// (`service_account_json`).
    JwtBearer,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ClientAuth {
    /// `Authorization: Basic` of the form-encoded id and secret.
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
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
