//! The JSON form `nix show-derivation` prints.

use super::{Derivation, DerivationOutput};
use crate::json::Json;
use crate::store_path::StoreDir;

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
