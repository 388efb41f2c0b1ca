//! Recharge strategy input (seed 000, SPEC 6.1): creation and partial update, validated here so
//! SQL and REST callers meet the same rules. The condition is parsed (and stored in canonical
//! form); the cron expression of a periodic strategy is checked by the caller with
//! `schedule::parse_schedule` (kept separate so this module has no time-zone dependency).

use crate::condition;
use crate::error::{QuotaError, Result};
use crate::ids::validate_free_text;
use crate::plan::from_json;
use crate::pricing::validate_credits;
use serde::Deserialize;

pub const NAME_LEN_MAX: usize = 255;
pub const MAX_EXEC_PER_USER_MAX: i32 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrategyType {
    Single,
    Periodic,
}

impl StrategyType {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "single" => Ok(StrategyType::Single),
            "periodic" => Ok(StrategyType::Periodic),
            other => Err(QuotaError::invalid(format!(
                "type must be 'single' or 'periodic', got '{}'",
                other.chars().take(64).collect::<String>()
            ))
            .with("field", "type")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StrategyType::Single => "single",
            StrategyType::Periodic => "periodic",
        }
    }
}

/// A new strategy, as given (JSON of seed 000 plus `max_exec_per_user`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategyInput {
    pub name: String,
    #[serde(default)]
    pub title: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub amount: i64,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub periodic_expr: String,
    pub condition: String,
    #[serde(default = "yes")]
    pub status: bool,
    #[serde(default)]
    pub max_exec_per_user: i32,
}

fn yes() -> bool {
    true
}

/// A partial update: absent fields are unchanged.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategyPatch {
    pub name: Option<String>,
    pub title: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub amount: Option<i64>,
    pub model: Option<String>,
    pub periodic_expr: Option<String>,
    pub condition: Option<String>,
    pub status: Option<bool>,
    pub max_exec_per_user: Option<i32>,
}

/// A strategy after validation: what is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Strategy {
    pub name: String,
    pub title: String,
    pub kind: StrategyType,
    pub amount: i64,
    pub model: String,
    pub periodic_expr: String,
    /// Canonical form (`quota.parse_condition`).
    pub condition: String,
    pub status: bool,
    pub max_exec_per_user: i32,
}

fn validate_name(name: &str) -> Result<()> {
    let n = name.trim().chars().count();
    if n == 0 || n > NAME_LEN_MAX {
        return Err(QuotaError::invalid(format!(
            "name must be 1 to {NAME_LEN_MAX} characters, got {n}"
        ))
        .with("field", "name"));
    }
    validate_free_text("name", name)
}

fn canonical_condition(text: &str) -> Result<String> {
    Ok(condition::parse(text)
        .map_err(QuotaError::from)?
        .normalize())
}

impl Strategy {
    /// Validates a creation; `check_cron` validates the periodic expression.
    pub fn create(
        value: serde_json::Value,
        check_cron: impl Fn(&str) -> Result<()>,
    ) -> Result<Self> {
        let i: StrategyInput = from_json("strategy", value)?;
        let s = Strategy {
            name: i.name,
            title: i.title,
            kind: StrategyType::parse(&i.kind)?,
            amount: i.amount,
            model: i.model,
            periodic_expr: i.periodic_expr.trim().to_string(),
            condition: canonical_condition(&i.condition)?,
            status: i.status,
            max_exec_per_user: i.max_exec_per_user,
        };
        s.validate(check_cron)?;
        Ok(s)
    }

    /// Applies a partial update to `self` (the stored strategy) and validates the result.
    pub fn apply(
        &self,
        value: serde_json::Value,
        check_cron: impl Fn(&str) -> Result<()>,
    ) -> Result<Self> {
        let p: StrategyPatch = from_json("strategy update", value)?;
        let mut s = self.clone();
        if let Some(v) = p.name {
            s.name = v;
        }
        if let Some(v) = p.title {
            s.title = v;
        }
        if let Some(v) = p.kind {
            s.kind = StrategyType::parse(&v)?;
        }
        if let Some(v) = p.amount {
            s.amount = v;
        }
        if let Some(v) = p.model {
            s.model = v;
        }
        if let Some(v) = p.periodic_expr {
            s.periodic_expr = v.trim().to_string();
        }
        if let Some(v) = p.condition {
            s.condition = canonical_condition(&v)?;
        }
        if let Some(v) = p.status {
            s.status = v;
        }
        if let Some(v) = p.max_exec_per_user {
            s.max_exec_per_user = v;
        }
        s.validate(check_cron)?;
        Ok(s)
    }

    fn validate(&self, check_cron: impl Fn(&str) -> Result<()>) -> Result<()> {
        validate_name(&self.name)?;
        validate_free_text("title", &self.title)?;
        validate_free_text("model", &self.model)?;
        validate_credits("amount", self.amount, false)?;
        if !(0..=MAX_EXEC_PER_USER_MAX).contains(&self.max_exec_per_user) {
            return Err(QuotaError::invalid(format!(
                "max_exec_per_user must be between 0 (no cap) and {MAX_EXEC_PER_USER_MAX}, got {}",
                self.max_exec_per_user
            ))
            .with("field", "max_exec_per_user"));
        }
        match self.kind {
            StrategyType::Periodic => {
                if self.periodic_expr.is_empty() {
                    return Err(QuotaError::invalid(
                        "a periodic strategy needs periodic_expr (a cron expression)",
                    )
                    .with("field", "periodic_expr"));
                }
                check_cron(&self.periodic_expr)
            }
            StrategyType::Single => {
                if !self.periodic_expr.is_empty() {
                    return Err(
                        QuotaError::invalid("a single strategy takes no periodic_expr")
                            .with("field", "periodic_expr"),
                    );
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn any_cron(_: &str) -> Result<()> {
        Ok(())
    }

    #[test]
    fn the_seed_example_creates_an_enabled_single_strategy() {
        let s = Strategy::create(
            json!({"name":"test-strategy","title":"Test Strategy","type":"single","amount":10,
                   "model":"gpt-3.5-turbo","condition":"github-star(\"zgsm\")","status":true}),
            any_cron,
        )
        .unwrap();
        assert_eq!(s.kind, StrategyType::Single);
        assert_eq!(s.condition, r#"github-star("zgsm")"#);
        assert!(s.status);
    }

    #[test]
    fn status_false_on_create_is_honoured() {
        let s = Strategy::create(
            json!({"name":"n","type":"single","amount":1,"condition":"true()","status":false}),
            any_cron,
        )
        .unwrap();
        assert!(!s.status);
    }

    #[test]
    fn bad_strategies_are_rejected() {
        for bad in [
            json!({"name":"n","type":"weekly","amount":1,"condition":"true()"}),
            json!({"name":"n","type":"single","amount":0,"condition":"true()"}),
            json!({"name":"n","type":"single","amount":-5,"condition":"true()"}),
            json!({"name":"n","type":"single","amount":1,"condition":""}),
            json!({"name":"n","type":"single","amount":1,"condition":"and(is-vip(1)"}),
            json!({"name":"","type":"single","amount":1,"condition":"true()"}),
            json!({"name":"n","type":"periodic","amount":1,"condition":"true()"}),
            json!({"name":"n","type":"single","amount":1,"condition":"true()","periodic_expr":"* * * * *"}),
            json!({"name":"n","type":"single","amount":1,"condition":"true()","max_exec_per_user":-1}),
            json!({"name":"n","type":"single","amount":1,"condition":"true()","colour":"red"}),
            json!({"name":"n","type":"single","amount":"10","condition":"true()"}),
        ] {
            assert!(Strategy::create(bad.clone(), any_cron).is_err(), "{bad}");
        }
    }

    #[test]
    fn updates_are_partial_and_validated() {
        let s = Strategy::create(
            json!({"name":"n","type":"single","amount":1,"condition":"true()"}),
            any_cron,
        )
        .unwrap();
        let u = s
            .apply(json!({"status": false, "amount": 7}), any_cron)
            .unwrap();
        assert_eq!((u.status, u.amount, u.name.as_str()), (false, 7, "n"));
        assert!(s.apply(json!({"type": "periodic"}), any_cron).is_err());
        assert!(s
            .apply(
                json!({"type": "periodic", "periodic_expr": "0 0 8 * * *"}),
                any_cron
            )
            .is_ok());
        assert!(s.apply(json!({"nope": 1}), any_cron).is_err());
        let reject = |_: &str| Err(QuotaError::invalid("bad cron"));
        assert!(s
            .apply(json!({"type": "periodic", "periodic_expr": "x"}), reject)
            .is_err());
    }
}
