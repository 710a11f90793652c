//! What the commands need to know about the user's cf target: API endpoint, token, org,
//! space, user. Under cf it comes from the plugin RPC.

use crate::cli_rpc::CliRpc;
use crate::rpc::RpcError;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub api: String,
    /// As cf returns it: `bearer <jwt>`.
    pub token: String,
    pub ssl_disabled: bool,
    pub logged_in: bool,
    pub org: (String, String),
    pub space: (String, String),
    pub user: String,
}

impl Target {
    pub async fn from_rpc(rpc: &CliRpc) -> Result<Target, RpcError> {
        let api = rpc.api_endpoint().await?;
        let logged_in = rpc.is_logged_in().await?;
        let token = if logged_in { rpc.access_token().await? } else { String::new() };
        Ok(Target {
            api,
            token,
            ssl_disabled: rpc.is_ssl_disabled().await?,
            logged_in,
            org: rpc.current_org().await?,
            space: rpc.current_space().await?,
            user: rpc.username().await?,
        })
    }
}
