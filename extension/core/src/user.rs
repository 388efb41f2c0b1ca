//! User profile input (the seed 000 `user_info` fields, SPEC 6.1), for create, update and import.

use crate::error::{QuotaError, Result};
use crate::ids::{validate_free_text, validate_id, validate_user_id, ORG_ID_LEN_MAX};
use crate::plan::from_json;
use crate::time::{parse_timestamp, to_rfc3339};
use serde::{Deserialize, Deserializer};

pub const GITHUB_STARS_MAX: usize = 1000;
pub const IMPORT_BATCH_MAX: usize = 10_000;
pub const VIP_MAX: i32 = 1_000_000;

/// Profile fields. Absent = unchanged on update; `Some(None)` (explicit JSON null) clears a field.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserProfile {
    /// Only in imports (and ignored when equal to the path id on update).
    pub id: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub name: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub github_username: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub email: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub phone: Option<Option<String>>,
    #[serde(default, deserialize_with = "stars")]
    pub github_star: Option<Vec<String>>,
    pub vip: Option<i32>,
    /// The user's organization (an existing `quota.organizations` id), or null for none.
    #[serde(default, deserialize_with = "nullable")]
    pub org: Option<Option<String>>,
    /// Seed 003: an unlimited user's wallet is neither checked nor debited by reservations.
    /// When a user is created without it, it defaults to "has an organization".
    pub unlimited: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    pub register_time: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub access_time: Option<Option<String>>,
}

fn nullable<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Option<String>>, D::Error> {
    Ok(Some(Option::<String>::deserialize(d)?))
}

/// `github_star` is a set of project names: a JSON array, or the seed's comma-separated text.
fn stars<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stars {
        List(Vec<String>),
        Text(String),
    }
    let v: Option<Stars> = Option::deserialize(d)?;
    Ok(Some(match v {
        None => Vec::new(),
        Some(Stars::List(l)) => l,
        Some(Stars::Text(t)) => t.split(',').map(str::to_string).collect(),
    }))
}

impl UserProfile {
    pub fn parse(value: serde_json::Value) -> Result<Self> {
        let mut p: UserProfile = from_json("user", value)?;
        p.normalize()?;
        Ok(p)
    }

    fn normalize(&mut self) -> Result<()> {
        if let Some(id) = &self.id {
            validate_user_id(id)?;
        }
        for (field, v) in [
            ("name", &self.name),
            ("github_username", &self.github_username),
            ("email", &self.email),
            ("phone", &self.phone),
        ] {
            if let Some(Some(s)) = v {
                validate_free_text(field, s)?;
            }
        }
        if let Some(Some(org)) = &self.org {
            validate_id("org", org, ORG_ID_LEN_MAX)?;
        }
        if let Some(Some(email)) = &self.email {
            if !email.is_empty() && !email.contains('@') {
                return Err(
                    QuotaError::invalid(format!("email '{email}' is not an address"))
                        .with("field", "email"),
                );
            }
        }
        if let Some(stars) = &mut self.github_star {
            let mut clean: Vec<String> = stars
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            clean.sort();
            clean.dedup();
            if clean.len() > GITHUB_STARS_MAX {
                return Err(QuotaError::invalid(format!(
                    "github_star has {} projects, at most {GITHUB_STARS_MAX}",
                    clean.len()
                ))
                .with("field", "github_star"));
            }
            for s in &clean {
                validate_free_text("github_star", s)?;
            }
            *stars = clean;
        }
        if let Some(vip) = self.vip {
            if !(0..=VIP_MAX).contains(&vip) {
                return Err(QuotaError::invalid(format!(
                    "vip must be between 0 and {VIP_MAX}, got {vip}"
                ))
                .with("field", "vip"));
            }
        }
        for (field, v) in [
            ("register_time", &mut self.register_time),
            ("access_time", &mut self.access_time),
        ] {
            if let Some(Some(t)) = v {
                *t = to_rfc3339(&parse_timestamp(field, t)?);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stars_accept_a_list_or_the_seed_comma_text() {
        let a = UserProfile::parse(json!({"github_star": "zgsm, costrict,zgsm"})).unwrap();
        assert_eq!(
            a.github_star,
            Some(vec!["costrict".to_string(), "zgsm".to_string()])
        );
        let b = UserProfile::parse(json!({"github_star": ["zgsm"]})).unwrap();
        assert_eq!(b.github_star, Some(vec!["zgsm".to_string()]));
    }

    #[test]
    fn timestamps_are_normalized_and_null_clears() {
        let p = UserProfile::parse(json!({"register_time": "2023-01-01 00:00:00", "org": null}))
            .unwrap();
        assert_eq!(
            p.register_time,
            Some(Some("2023-01-01T00:00:00Z".to_string()))
        );
        assert_eq!(p.org, Some(None));
        assert_eq!(p.name, None);
    }

    #[test]
    fn bad_profiles_are_rejected() {
        assert!(UserProfile::parse(json!({"vip": -1})).is_err());
        assert!(UserProfile::parse(json!({"vip": "1"})).is_err());
        assert!(UserProfile::parse(json!({"email": "nope"})).is_err());
        assert!(UserProfile::parse(json!({"nickname": "x"})).is_err());
        assert!(UserProfile::parse(json!({"access_time": "soon"})).is_err());
        assert!(UserProfile::parse(json!({"org": " padded"})).is_err());
        assert!(UserProfile::parse(json!({"org": ""})).is_err());
        assert!(UserProfile::parse(json!({"unlimited": "yes"})).is_err());
        assert_eq!(
            UserProfile::parse(json!({"unlimited": false}))
                .unwrap()
                .unlimited,
            Some(false)
        );
    }
}
