//! The admin audit log: who changed what, with the old and new values, in the same transaction
//! as the change itself.

use crate::error::OrRaise;
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use serde_json::Value;

/// The actor recorded when the caller names none: the database role.
pub fn actor_or_role(actor: Option<&str>) -> String {
    match actor {
        Some(a) if !a.trim().is_empty() => a.chars().take(255).collect(),
        _ => pgrx::Spi::get_one::<String>("SELECT current_user::text")
            .ok()
            .flatten()
            .unwrap_or_else(|| "unknown".into()),
    }
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
