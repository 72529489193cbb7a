//! The JSON form `nix show-derivation` prints, and reading it back (`derivation add`).

use std::collections::BTreeMap;

use super::{Derivation, DerivationOutput};
use crate::json::Json;
use crate::store_path::StoreDir;
use crate::FileIngestionMethod;

fn s(v: impl Into<String>) -> Json {
    Json::String(v.into())
}

impl Derivation {
    /// The object for one derivation, keys in Nix's order.
    pub fn to_json(&self, store_dir: &StoreDir) -> Json {
        let outputs = self
            .outputs
            .iter()
            .map(|(name, o)| {
                let fields = match o {
                    DerivationOutput::InputAddressed(p) => {
                        vec![("path".into(), s(store_dir.display(p)))]
                    }
                    DerivationOutput::CaFixed { method, hash, path } => vec![
                        ("path".into(), s(store_dir.display(path))),
                        (
                            "hashAlgo".into(),
                            s(format!("{}{}", method.prefix(), hash.algo())),
                        ),
                        ("hash".into(), s(hash.to_base16())),
                    ],
                    DerivationOutput::CaFloating { method, algo } => {
                        vec![("hashAlgo".into(), s(format!("{}{algo}", method.prefix())))]
                    }
                    DerivationOutput::Deferred => vec![],
                    DerivationOutput::Impure { method, algo } => vec![
                        ("hashAlgo".into(), s(format!("{}{algo}", method.prefix()))),
                        ("impure".into(), Json::Bool(true)),
                    ],
                };
                (name.clone(), Json::Object(fields))
            })
            .collect();
        Json::Object(vec![
            ("outputs".into(), Json::Object(outputs)),
            (
                "inputSrcs".into(),
                Json::Array(
                    self.input_srcs
                        .iter()
                        .map(|p| s(store_dir.display(p)))
                        .collect(),
                ),
            ),
            (
                "inputDrvs".into(),
                Json::Object(
                    self.input_drvs
                        .iter()
                        .map(|(p, outs)| {
                            (
                                store_dir.display(p),
                                Json::Array(outs.iter().map(|o| s(o.clone())).collect()),
                            )
                        })
                        .collect(),
                ),
            ),
            ("system".into(), s(self.platform.clone())),
            ("builder".into(), s(self.builder.clone())),
            (
                "args".into(),
                Json::Array(self.args.iter().map(|a| s(a.clone())).collect()),
            ),
            (
                "env".into(),
                Json::Object(
                    self.env
                        .iter()
                        .map(|(k, v)| (k.clone(), s(v.clone())))
                        .collect(),
                ),
            ),
        ])
    }
}

/// Why a derivation in JSON form was refused.
#[derive(Debug, thiserror::Error)]
pub enum DrvJsonError {
    #[error("invalid JSON: {0}")]
    Syntax(String),
    #[error("field '{0}' is missing or has the wrong type")]
    Field(String),
    #[error("'{0}' is not a valid store path")]
    Path(String),
    #[error("output '{output}': {msg}")]
    Output { output: String, msg: String },
}

/// A derivation read from its JSON form, and the name it gives (`name`, else `env.name`).
#[derive(Debug)]
pub struct ParsedDrv {
    pub drv: Derivation,
    pub name: Option<String>,
}

impl Derivation {
    /// Read the JSON form that [`Derivation::to_json`] writes (one derivation's object, as
    /// `nix derivation add` takes it). An output without `path` and `hashAlgo` is deferred:
    /// its path is filled in when the derivation is added.
    pub fn from_json(store_dir: &StoreDir, text: &str) -> Result<ParsedDrv, DrvJsonError> {
        use serde_json::Value;
        let v: Value =
            serde_json::from_str(text).map_err(|e| DrvJsonError::Syntax(e.to_string()))?;
        let field = |name: &str| v.get(name).ok_or_else(|| DrvJsonError::Field(name.into()));
        let string = |x: &Value, what: &str| {
            x.as_str()
                .map(str::to_owned)
                .ok_or_else(|| DrvJsonError::Field(what.into()))
        };
        let path = |s: &str| {
            store_dir
                .parse_path(s)
                .map_err(|_| DrvJsonError::Path(s.into()))
        };
        let object = |name: &str| {
            field(name)?
                .as_object()
                .ok_or_else(|| DrvJsonError::Field(name.into()))
        };
        let mut outputs = BTreeMap::new();
        for (name, o) in object("outputs")? {
            let bad = |msg: &str| DrvJsonError::Output {
                output: name.clone(),
                msg: msg.into(),
            };
            let p = o
                .get("path")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty());
            let algo = o.get("hashAlgo").and_then(Value::as_str);
            let out = match (p, algo) {
                (None, None) => DerivationOutput::Deferred,
                (Some(p), None) => DerivationOutput::InputAddressed(path(p)?),
                (p, Some(a)) => {
                    let (method, algo) = match a.strip_prefix("r:") {
                        Some(a) => (FileIngestionMethod::Recursive, a),
                        None => (FileIngestionMethod::Flat, a),
                    };
                    let algo: crate::HashAlgo =
                        algo.parse().map_err(|_| bad("unknown hash algorithm"))?;
                    match o.get("hash").and_then(Value::as_str) {
                        Some(h) => {
                            let hash = crate::Hash::parse(h, Some(algo))
                                .map_err(|e| bad(&e.to_string()))?;
                            let expected = store_dir
                                .make_fixed_output_path(
                                    v.get("env")
                                        .and_then(|e| e.get("name"))
                                        .and_then(Value::as_str)
                                        .or(v.get("name").and_then(Value::as_str))
                                        .unwrap_or_default(),
                                    method,
                                    &hash,
                                    [],
                                    false,
                                )
                                .map_err(|e| bad(&e.to_string()))?;
                            if let Some(p) = p {
                                if path(p)? != expected {
                                    return Err(bad("its path does not match its hash"));
                                }
                            }
                            DerivationOutput::CaFixed {
                                method,
                                hash,
                                path: expected,
                            }
                        }
                        None => DerivationOutput::CaFloating { method, algo },
                    }
                }
            };
            outputs.insert(name.clone(), out);
        }
        let mut input_drvs = BTreeMap::new();
        for (p, outs) in object("inputDrvs")? {
            let outs = outs
                .as_array()
                .ok_or_else(|| DrvJsonError::Field("inputDrvs".into()))?
                .iter()
                .map(|o| string(o, "inputDrvs"))
                .collect::<Result<_, _>>()?;
            input_drvs.insert(path(p)?, outs);
        }
        let input_srcs = field("inputSrcs")?
            .as_array()
            .ok_or_else(|| DrvJsonError::Field("inputSrcs".into()))?
            .iter()
            .map(|s| path(&string(s, "inputSrcs")?))
            .collect::<Result<_, _>>()?;
        let args = field("args")?
            .as_array()
            .ok_or_else(|| DrvJsonError::Field("args".into()))?
            .iter()
            .map(|a| string(a, "args"))
            .collect::<Result<_, _>>()?;
        let env = object("env")?
            .iter()
            .map(|(k, x)| Ok((k.clone(), string(x, "env")?)))
            .collect::<Result<_, DrvJsonError>>()?;
        let drv = Derivation {
            outputs,
            input_drvs,
            input_srcs,
            platform: string(field("system")?, "system")?,
            builder: string(field("builder")?, "builder")?,
            args,
            env,
        };
        let name = v
            .get("name")
            .and_then(Value::as_str)
            .or(drv.env.get("name").map(String::as_str))
            .map(str::to_owned);
        Ok(ParsedDrv { drv, name })
    }
}
