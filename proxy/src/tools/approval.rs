//! The one place where a rule's `approve = "prompt"` is enforced for git
//! credentials, files and custom tools. This version has no prompt yet, so
//! an approval that cannot be asked for is a denial; the approval flow
//! replaces [`require`] without touching its callers.

use nexus_policy::{Approve, RuleRef};
use nexus_protocol::{ErrorCode, Reply};

/// `Ok` when the grant needs no approval (or, later, when it was approved);
/// otherwise the denial to send.
///
/// # Errors
/// The reply refusing the call.
pub fn require(approve: Option<Approve>, what: &str, rule: &RuleRef) -> Result<(), Reply> {
    match approve {
        None => Ok(()),
        Some(Approve::Prompt) => Err(Reply::error(
            ErrorCode::Denied,
            format!("{what} needs approval on the laptop ({rule}), and this proxy cannot ask yet"),
        )),
    }
}
