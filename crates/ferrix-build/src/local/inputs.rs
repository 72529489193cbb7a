//! What a builder is given besides its environment: structured attributes
//! (`.attrs.json`, `.attrs.sh`) and `exportReferencesGraph` files.

use super::*;

impl LocalExecutor {
    /// Structured attributes as the builder gets them: with `outputs` (name to path) and
    /// each `exportReferencesGraph` entry replaced by the path info of that closure.
    pub(super) fn structured_json(
        &self,
        attrs: &serde_json::Map<String, serde_json::Value>,
        job: &Job,
        closure: &BTreeSet<StorePath>,
    ) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        use serde_json::Value;
        let mut json = attrs.clone();
        let outputs: serde_json::Map<String, Value> = job
            .outputs
            .iter()
            .map(|(name, p)| (name.clone(), Value::String(self.store.print(p))))
            .collect();
        json.insert("outputs".into(), Value::Object(outputs));
        if let Some(Value::Object(graphs)) = attrs.get("exportReferencesGraph") {
            for (key, roots) in graphs {
                let roots = roots
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| match r.as_str() {
                        Some(r) => self.store.parse_path(r).map_err(|e| e.to_string()),
                        None => Err(format!(
                            "exportReferencesGraph.{key} must be a list of store paths"
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let paths = export_closure(&self.store, &roots, closure)?;
                json.insert(key.clone(), path_info_json(&self.store, &paths)?);
            }
        }
        Ok(json)
    }

    /// `exportReferencesGraph = "name1 path1 name2 path2 …"`: write each closure into the
    /// build directory under its name.
    pub(super) fn export_graphs(
        &self,
        env: &BTreeMap<String, String>,
        build_dir: &std::path::Path,
        closure: &BTreeSet<StorePath>,
    ) -> Result<(), String> {
        let Some(spec) = env.get("exportReferencesGraph") else {
            return Ok(());
        };
        let words: Vec<&str> = spec.split_ascii_whitespace().collect();
        if !words.len().is_multiple_of(2) {
            return Err(format!(
                "odd number of tokens in 'exportReferencesGraph': '{spec}'"
            ));
        }
        for pair in words.chunks(2) {
            let (name, path) = (pair[0], pair[1]);
            let mut chars = name.chars();
            let good = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !good {
                return Err(format!(
                    "invalid file name '{name}' in 'exportReferencesGraph'"
                ));
            }
            let root = self
                .store
                .store_dir()
                .parse_path_with_subpath(path)
                .map(|(p, _)| p)
                .map_err(|_| {
                    format!("'exportReferencesGraph' contains a non-store path '{path}'")
                })?;
            let paths = export_closure(&self.store, &[root], closure)?;
            let text = registration(&self.store, &paths)?;
            fs::write(build_dir.join(name), text).map_err(|e| format!("writing '{name}': {e}"))?;
        }
        Ok(())
    }
}
