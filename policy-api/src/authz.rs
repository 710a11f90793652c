//! What a non-admin may touch: policies whose source and destination apps both live in
//! spaces where the caller is a space developer (Cloud Controller v3 roles).
//!
//! Deviation from upstream, documented: an app Cloud Controller does not know is refused for
//! non-admins ("cannot be found or accessed" now means what it says); upstream let unknown
//! ids through and relied on the cleanup to remove them later.

use crate::auth::Identity;
use crate::cloud_controller::{CcError, CloudController};
use crate::policy::{Policy, apps_of};

/// Whether `caller` may create or delete all of `policies`.
pub async fn may_change(cc: &CloudController, caller: &Identity, policies: &[Policy]) -> Result<bool, CcError> {
    if caller.is_admin() {
        return Ok(true);
    }
    let apps = apps_of(policies);
    let spaces = cc.app_spaces(&apps, false).await?;
    let mine = cc.developer_spaces(&caller.subject_id).await?;
    // Membership of every requested id, never a count: an id Cloud Controller did not
    // return for exactly that id is not an app the caller may touch.
    Ok(apps.iter().all(|app| spaces.get(app).is_some_and(|space| mine.contains(space))))
}

/// For non-admins, the first requested id that cannot be a Cloud Controller app guid.
pub fn non_guid<'a>(caller: &Identity, policies: &'a [Policy]) -> Option<(&'static str, &'a str)> {
    if caller.is_admin() {
        return None;
    }
    policies.iter().find_map(|p| {
        [("source", p.source.as_str()), ("destination", p.destination.as_str())]
            .into_iter()
            .find(|(_, id)| !crate::ids::is_app_guid(id))
    })
}

/// The subset of `policies` that `caller` may see: both apps in the caller's developer
/// spaces. The lookups depend on the caller's spaces, not on how many apps the policies name.
pub async fn visible<T, F>(
    cc: &CloudController,
    caller: &Identity,
    policies: Vec<T>,
    policy_of: F,
) -> Result<Vec<T>, CcError>
where
    F: Fn(&T) -> &Policy,
{
    if caller.is_admin() || policies.is_empty() {
        return Ok(policies);
    }
    let mine = cc.developer_apps(&caller.subject_id).await?;
    Ok(policies
        .into_iter()
        .filter(|t| {
            let p = policy_of(t);
            mine.contains(&p.source) && mine.contains(&p.destination)
        })
        .collect())
}
