//! Resolving `settings:` — file values, CRM defaults, then overrides from the environment
//! (`COSELL_SETTING_<NAME>`) and the command line (`--set name=value`), in that order.

use serde_json::{Map, Value};

use super::model::{CrmKind, Scalar, Settings};

/// The type a setting's value must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingType {
    /// yes/no.
    Bool,
    /// A field name or other text.
    Text,
    /// Text or number (stage values: a Dynamics status reason code or a Salesforce stage name).
    Scalar,
}

/// The built-in settings, their types and what they mean.
pub const BUILT_IN: &[(&str, SettingType)] = &[
    ("checkmark_in_name", SettingType::Bool),
    ("sync_cosell_only", SettingType::Bool),
    ("deal_value_field", SettingType::Text),
    ("deal_currency_field", SettingType::Text),
    ("account_country_field", SettingType::Text),
    ("on_hold_stage", SettingType::Scalar),
    ("active_stage", SettingType::Scalar),
];

/// Prefix of environment variables that override settings.
pub const ENV_PREFIX: &str = "COSELL_SETTING_";

/// Where an override came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverrideSource {
    /// `COSELL_SETTING_<NAME>`.
    Env(String),
    /// `--set name=value`.
    Cli,
}

/// One override.
#[derive(Debug, Clone)]
pub struct Override {
    /// Setting name.
    pub name: String,
    /// Raw text value.
    pub value: String,
    /// Where it came from.
    pub source: OverrideSource,
}

impl Override {
    /// Parses `name=value` as given to `--set`.
    pub fn parse_cli(arg: &str) -> Result<Override, String> {
        let (name, value) = arg.split_once('=').ok_or_else(|| {
            format!("`--set {arg}`: expected name=value, e.g. --set deal_value_field=Amount")
        })?;
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("`--set {arg}`: the setting name is empty"));
        }
        Ok(Override {
            name: name.to_string(),
            value: value.to_string(),
            source: OverrideSource::Cli,
        })
    }

    /// Collects `COSELL_SETTING_*` variables from an environment listing.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Vec<Override> {
        let mut out: Vec<Override> = vars
            .into_iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
                (!name.is_empty()).then_some(Override {
                    name,
                    value: v,
                    source: OverrideSource::Env(k),
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn origin(&self) -> String {
        match &self.source {
            OverrideSource::Env(var) => format!("environment variable {var}"),
            OverrideSource::Cli => format!("--set {}", self.name),
        }
    }
}

/// The default of a built-in setting for a CRM.
pub fn default_for(name: &str, crm: CrmKind) -> Option<Value> {
    let dynamics = crm == CrmKind::Dynamics365;
    Some(match name {
        "checkmark_in_name" | "sync_cosell_only" => Value::Bool(true),
        "deal_value_field" => Value::from(if dynamics { "estimatedvalue" } else { "Amount" }),
        "deal_currency_field" => Value::from(if dynamics {
            "transactioncurrencyid"
        } else {
            "CurrencyIsoCode"
        }),
        "account_country_field" => Value::from(if dynamics {
            "address1_country"
        } else {
            "BillingCountry"
        }),
        "on_hold_stage" => {
            if dynamics {
                Value::from(2)
            } else {
                Value::from("On Hold")
            }
        }
        "active_stage" => {
            if dynamics {
                Value::from(1)
            } else {
                Value::from("Qualification")
            }
        }
        _ => return None,
    })
}

/// The settings' values as the file declares them (without defaults), by name.
pub fn declared(settings: &Settings) -> Vec<(&'static str, Option<Value>)> {
    vec![
        (
            "checkmark_in_name",
            settings.checkmark_in_name.map(Value::Bool),
        ),
        (
            "sync_cosell_only",
            settings.sync_cosell_only.map(Value::Bool),
        ),
        (
            "deal_value_field",
            settings.deal_value_field.clone().map(Value::String),
        ),
        (
            "deal_currency_field",
            settings.deal_currency_field.clone().map(Value::String),
        ),
        (
            "account_country_field",
            settings.account_country_field.clone().map(Value::String),
        ),
        (
            "on_hold_stage",
            settings.on_hold_stage.as_ref().map(Scalar::to_json),
        ),
        (
            "active_stage",
            settings.active_stage.as_ref().map(Scalar::to_json),
        ),
    ]
}

/// Resolves every setting to a value. Errors name the override and say what was expected.
pub fn resolve(
    settings: &Settings,
    crm: CrmKind,
    overrides: &[Override],
) -> Result<Map<String, Value>, Vec<String>> {
    let mut values = Map::new();
    for (name, value) in declared(settings) {
        let v = value
            .or_else(|| default_for(name, crm))
            .unwrap_or(Value::Null);
        values.insert(name.to_string(), v);
    }
    for (name, value) in &settings.custom {
        values.insert(name.clone(), value.to_json());
    }
    let mut errors = Vec::new();
    for o in overrides {
        let ty = BUILT_IN.iter().find(|(n, _)| *n == o.name).map(|(_, t)| *t);
        let parsed = match (ty, values.get(&o.name)) {
            (Some(t), _) => parse_typed(&o.value, t),
            (None, Some(existing)) => parse_like(&o.value, existing),
            (None, None) => {
                let known: Vec<&str> = values.keys().map(String::as_str).collect();
                let hint = super::diagnostic::did_you_mean(&o.name, known.iter().copied())
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_else(|| {
                        "; declare it under settings.custom in the mapping file first".to_string()
                    });
                errors.push(format!(
                    "{}: unknown setting `{}`{hint}",
                    o.origin(),
                    o.name
                ));
                continue;
            }
        };
        match parsed {
            Ok(v) => {
                values.insert(o.name.clone(), v);
            }
            Err(expected) => errors.push(format!(
                "{}: `{}` is not valid for setting `{}`; expected {expected}",
                o.origin(),
                o.value,
                o.name
            )),
        }
    }
    if errors.is_empty() {
        Ok(values)
    } else {
        Err(errors)
    }
}

/// Parses yes/no the way the connector's "environment variables" accept it.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "y" | "1" | "on" | "ja" => Some(true),
        "false" | "no" | "n" | "0" | "off" | "nee" => Some(false),
        _ => None,
    }
}

fn parse_typed(text: &str, ty: SettingType) -> Result<Value, &'static str> {
    match ty {
        SettingType::Bool => parse_bool(text)
            .map(Value::Bool)
            .ok_or("true or false (yes/no)"),
        SettingType::Text => {
            let t = text.trim();
            if t.is_empty() {
                Err("a non-empty field name")
            } else {
                Ok(Value::from(t))
            }
        }
        SettingType::Scalar => Ok(scalar_from_text(text)),
    }
}

fn parse_like(text: &str, existing: &Value) -> Result<Value, &'static str> {
    match existing {
        Value::Bool(_) => parse_typed(text, SettingType::Bool),
        Value::Number(_) => {
            let t = text.trim();
            t.parse::<i64>()
                .map(Value::from)
                .ok()
                .or_else(|| {
                    t.parse::<f64>()
                        .ok()
                        .and_then(serde_json::Number::from_f64)
                        .map(Value::Number)
                })
                .ok_or("a number")
        }
        _ => Ok(Value::from(text)),
    }
}

fn scalar_from_text(text: &str) -> Value {
    let t = text.trim();
    match t.parse::<i64>() {
        Ok(i) => Value::from(i),
        Err(_) => Value::from(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_depend_on_the_crm() {
        let d = resolve(&Settings::default(), CrmKind::Dynamics365, &[]).unwrap();
        assert_eq!(d["deal_value_field"], json!("estimatedvalue"));
        assert_eq!(d["on_hold_stage"], json!(2));
        let s = resolve(&Settings::default(), CrmKind::Salesforce, &[]).unwrap();
        assert_eq!(s["deal_value_field"], json!("Amount"));
        assert_eq!(s["deal_currency_field"], json!("CurrencyIsoCode"));
    }

    #[test]
    fn overrides_apply_in_order_with_types() {
        let mut settings = Settings::default();
        settings
            .custom
            .insert("region".into(), Scalar::String("EMEA".into()));
        settings
            .custom
            .insert("max_value".into(), Scalar::Number(10.into()));
        let overrides = vec![
            Override::from_env([(
                "COSELL_SETTING_CHECKMARK_IN_NAME".to_string(),
                "nee".to_string(),
            )])
            .remove(0),
            Override::parse_cli("deal_value_field=new_dealvalue").unwrap(),
            Override::parse_cli("max_value=25").unwrap(),
            Override::parse_cli("on_hold_stage=On Hold").unwrap(),
        ];
        let v = resolve(&settings, CrmKind::Dynamics365, &overrides).unwrap();
        assert_eq!(v["checkmark_in_name"], json!(false));
        assert_eq!(v["deal_value_field"], json!("new_dealvalue"));
        assert_eq!(v["max_value"], json!(25));
        assert_eq!(v["on_hold_stage"], json!("On Hold"));
        assert_eq!(v["region"], json!("EMEA"));
    }

    #[test]
    fn bad_overrides_are_explained() {
        let errs = resolve(
            &Settings::default(),
            CrmKind::Salesforce,
            &[
                Override::parse_cli("checkmark_in_name=maybe").unwrap(),
                Override::parse_cli("deal_value_feild=Amount__c").unwrap(),
            ],
        )
        .unwrap_err();
        assert!(errs[0].contains("expected true or false"), "{errs:?}");
        assert!(
            errs[1].contains("did you mean `deal_value_field`"),
            "{errs:?}"
        );
        assert!(Override::parse_cli("novalue").is_err());
    }
}
