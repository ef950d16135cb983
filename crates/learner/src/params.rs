//! Typed method parameters with their defaults written on the fields
//! (burn's `#[derive(Config)]` with `#[config(default = …)]`), and the help
//! `promptcl methods --params NAME` prints from them.

use crate::{LearnerError, Result};

/// A parameter's name, type and doc comment.
#[derive(Debug, Clone, Copy)]
pub struct FieldDoc {
    pub name: &'static str,
    pub ty: &'static str,
    pub doc: &'static str,
}

/// Parameters that know their fields' docs.
pub trait Documented {
    fn fields() -> &'static [FieldDoc];
}

/// Declares a parameter struct: serde (`deny_unknown_fields`, missing fields
/// from the defaults), `Default` from the `= value` on each field, and the
/// field docs for `methods --params`.
///
/// ```ignore
/// method_params! {
///     /// Defaults: the official config.
///     pub struct Params {
///         /// Prompt length.
///         pub length: i64 = 5,
///     }
/// }
/// ```
#[macro_export]
macro_rules! method_params {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[doc = $doc:literal])* pub $field:ident : $ty:ty = $default:expr ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl $crate::params::Documented for $name {
            fn fields() -> &'static [$crate::params::FieldDoc] {
                &[ $( $crate::params::FieldDoc { name: stringify!($field), ty: stringify!($ty), doc: concat!($($doc, "\n",)* "") }, )* ]
            }
        }
    };
}

/// Parses a method's `[method.params]` over `defaults`, rejecting unknown
/// keys with the method's name and a did-you-mean in the message. Tables
/// merge key by key (`lora = { rank = 8 }` over a method whose default `lora`
/// names targets keeps its targets); other values replace.
pub fn parse_over<T: serde::de::DeserializeOwned + serde::Serialize>(method: &str, defaults: &T, user: &toml::Table) -> Result<T> {
    let mut merged = match toml::Value::try_from(defaults) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    merge(&mut merged, user);
    T::deserialize(toml::Value::Table(merged))
        .map_err(|e| LearnerError::Params { method: method.into(), reason: crate::did_you_mean(&e.to_string()) })
}

fn merge(into: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (into.get_mut(k), v) {
            (Some(toml::Value::Table(base)), toml::Value::Table(t)) => merge(base, t),
            _ => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

/// One line per parameter: `name = default  (type)` and its doc, indented.
pub fn describe<T: Documented + serde::Serialize>(defaults: &T) -> String {
    let values = match toml::Value::try_from(defaults) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    let mut out = String::new();
    for f in T::fields() {
        let value = values.get(f.name).map_or_else(|| "(none)".to_string(), |v| v.to_string());
        out.push_str(&format!("{} = {value}  ({})\n", f.name, f.ty.replace(' ', "")));
        for line in f.doc.lines().map(str::trim).filter(|l| !l.is_empty()) {
            out.push_str(&format!("    {line}\n"));
        }
        // A table of its own (`prompt = { … }`, `lora = { … }`): its keys, each with its doc.
        for sub in nested(f.ty) {
            out.push_str(&format!("    {}.{}  ({})\n", f.name, sub.name, sub.ty.replace(' ', "")));
            for line in sub.doc.lines().map(str::trim).filter(|l| !l.is_empty()) {
                out.push_str(&format!("        {line}\n"));
            }
        }
    }
    out
}

/// The documented fields of a parameter type that is itself a table.
fn nested(ty: &str) -> &'static [FieldDoc] {
    match ty.replace(' ', "").as_str() {
        "PrefixExpert" => crate::parts::prompt_param::PrefixExpert::fields(),
        "Option<LoraSpec>" | "LoraSpec" => crate::parts::lora::LoraSpec::fields(),
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    crate::method_params! {
        /// A test struct.
        pub struct Demo {
            /// How long.
            /// Two lines.
            pub length: i64 = 5,
            pub name: Option<String> = None,
        }
    }

    #[test]
    fn defaults_docs_and_did_you_mean() {
        use super::*;
        assert_eq!(Demo::default().length, 5);
        let text = describe(&Demo::default());
        assert!(text.contains("length = 5  (i64)\n    How long.\n    Two lines.\n"), "{text}");
        assert!(text.contains("name = (none)"), "{text}");
        let over = Demo { length: 9, name: None };
        let p: Demo = parse_over("demo", &over, &toml::from_str("name = \"x\"").unwrap()).unwrap();
        assert_eq!((p.length, p.name.as_deref()), (9, Some("x")), "unset keys come from the given defaults");
        let e = parse_over("demo", &over, &toml::from_str("lenght = 3").unwrap()).unwrap_err().to_string();
        assert!(e.contains("demo") && e.contains("did you mean `length`"), "{e}");
    }

    crate::method_params! {
        /// A nested default.
        pub struct Outer {
            pub inner: Demo = Demo { length: 7, name: Some("kept".into()) },
            pub top: i64 = 1,
        }
    }

    #[test]
    fn nested_tables_merge_key_by_key() {
        use super::*;
        let p: Outer = parse_over("demo", &Outer::default(), &toml::from_str("inner = { length = 3 }").unwrap()).unwrap();
        assert_eq!((p.inner.length, p.inner.name.as_deref(), p.top), (3, Some("kept"), 1));
        let e = parse_over::<Outer>("demo", &Outer::default(), &toml::from_str("inner = { lenght = 3 }").unwrap()).unwrap_err().to_string();
        assert!(e.contains("did you mean `length`"), "{e}");
    }
}
