//! The admin audit log: who changed what, with the old and new values, in the same transaction
//! as the change itself.

use crate::error::OrRaise;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use serde_json::Value;

/// The actor recorded when the caller names none: the caller's database role. Inside a
/// SECURITY DEFINER function `current_user` is the function's owner, so this is the role the
/// caller had outside it (`GetOuterUserId`, which follows SET ROLE).
pub fn actor_or_role(actor: Option<&str>) -> String {
    match actor {
        Some(a) if !a.trim().is_empty() => a.chars().take(255).collect(),
        _ => caller_role(),
    }
}

/// The name of the role that called into pg_quota (not the definer).
pub fn caller_role() -> String {
    // SAFETY: GetOuterUserId returns a valid role id; GetUserNameFromId with noerr = true returns
    // NULL (not an ERROR) for a dropped role, and a palloc'd C string otherwise.
    unsafe {
        let name = pg_sys::GetUserNameFromId(pg_sys::GetOuterUserId(), true);
        if name.is_null() {
            "unknown".into()
        } else {
            std::ffi::CStr::from_ptr(name)
                .to_string_lossy()
                .into_owned()
        }
    }
}

/// Whether the caller (outside SECURITY DEFINER) is a superuser: the test hooks need it.
pub fn caller_is_superuser() -> bool {
    // SAFETY: a catalog lookup of a valid role id.
    unsafe { pg_sys::superuser_arg(pg_sys::GetOuterUserId()) }
}

pub fn record(
    client: &mut SpiClient,
    actor: &str,
    action: &str,
    subject: &str,
    old_value: Option<Value>,
    new_value: Option<Value>,
) {
    client
        .update(
            "INSERT INTO quota.audit_log (actor, action, subject, old_value, new_value)
             VALUES ($1, $2, $3, $4, $5)",
            None,
            &[
                actor.into(),
                action.into(),
                subject.into(),
                old_value.map(JsonB).into(),
                new_value.map(JsonB).into(),
            ],
        )
        .or_raise();
}
