//! The `CliRpcCmd` methods a plugin calls on the cf CLI, typed. Like the Go plugin library,
//! every call uses a connection of its own.

use crate::gob::{Type, Value};
use crate::metadata::Metadata;
use crate::rpc::{Connection, RpcError};

/// The cf CLI's RPC server, on the port cf passed as the first argument.
#[derive(Debug, Clone, Copy)]
pub struct CliRpc {
    pub port: u16,
}

impl CliRpc {
    async fn call(&self, method: &str, ty: &Type, arg: &Value) -> Result<Value, RpcError> {
        Connection::connect(self.port).await?.call(method, ty, arg).await
    }

    /// The methods that take no argument get `""`, as the Go library sends.
    async fn call_noarg(&self, method: &str) -> Result<Value, RpcError> {
        self.call(method, &Type::String, &Value::string("")).await
    }

    async fn string(&self, method: &str) -> Result<String, RpcError> {
        match self.call_noarg(method).await? {
            Value::String(s) => Ok(s),
            _ => Err(RpcError::Reply { method: method.into() }),
        }
    }

    async fn boolean(&self, method: &str) -> Result<bool, RpcError> {
        match self.call_noarg(method).await? {
            Value::Bool(b) => Ok(b),
            _ => Err(RpcError::Reply { method: method.into() }),
        }
    }

    pub async fn set_plugin_metadata(&self, metadata: &Metadata) -> Result<bool, RpcError> {
        match self.call("SetPluginMetadata", &Metadata::gob_type(), &metadata.to_gob()).await? {
            Value::Bool(b) => Ok(b),
            _ => Err(RpcError::Reply { method: "SetPluginMetadata".into() }),
        }
    }

    pub async fn is_min_cli_version(&self, version: &str) -> Result<bool, RpcError> {
        match self.call("IsMinCliVersion", &Type::String, &Value::string(version)).await? {
            Value::Bool(b) => Ok(b),
            _ => Err(RpcError::Reply { method: "IsMinCliVersion".into() }),
        }
    }

    /// `"bearer <jwt>"`, refreshed by the CLI when it is about to expire.
    pub async fn access_token(&self) -> Result<String, RpcError> {
        self.string("AccessToken").await
    }

    pub async fn api_endpoint(&self) -> Result<String, RpcError> {
        self.string("ApiEndpoint").await
    }

    pub async fn is_ssl_disabled(&self) -> Result<bool, RpcError> {
        self.boolean("IsSSLDisabled").await
    }

    pub async fn is_logged_in(&self) -> Result<bool, RpcError> {
        self.boolean("IsLoggedIn").await
    }

    pub async fn username(&self) -> Result<String, RpcError> {
        self.string("Username").await
    }

    /// (guid, name) of the targeted org; empty strings when none.
    pub async fn current_org(&self) -> Result<(String, String), RpcError> {
        let v = self.call_noarg("GetCurrentOrg").await?;
        let fields = v.field("OrganizationFields").cloned().unwrap_or(Value::Struct(vec![]));
        Ok((fields.str_field("Guid"), fields.str_field("Name")))
    }

    /// (guid, name) of the targeted space; empty strings when none.
    pub async fn current_space(&self) -> Result<(String, String), RpcError> {
        let v = self.call_noarg("GetCurrentSpace").await?;
        let fields = v.field("SpaceFields").cloned().unwrap_or(Value::Struct(vec![]));
        Ok((fields.str_field("Guid"), fields.str_field("Name")))
    }
}
