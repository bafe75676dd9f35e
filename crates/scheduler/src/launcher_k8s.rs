//! The Kubernetes run launcher's keys (Dagster's `K8sRunLauncher`, seed 003): each run
//! executes as `trellis run-queued` in a Job's pod, made by the kubernetes step executor
//! with the `with:` built here. The pod reaches the same store as the scheduler: the
//! database by its URL, or a file store through a volume mounted at the same path
//! (`volumes`/`volume_mounts`).

use serde_json::{Value, json};

use crate::launcher::LauncherConfig;

impl LauncherConfig {
    /// The kubernetes executor's `with:` for a run's Job.
    pub fn k8s_with(&self) -> Result<Value, String> {
        let image = self
            .image
            .as_deref()
            .ok_or("run_launcher: config.job_image is required")?;
        let mut with = json!({
            "image": image,
            "namespace": self.job_namespace.clone().unwrap_or_else(|| "default".into()),
            "load_incluster_config": self.load_incluster_config.unwrap_or(false),
        });
        let mut env_from: Vec<Value> = self
            .env_config_maps
            .iter()
            .map(|name| json!({"config_map_ref": {"name": name}}))
            .collect();
        env_from.extend(
            self.env_secrets
                .iter()
                .map(|name| json!({"secret_ref": {"name": name}})),
        );
        if !env_from.is_empty() {
            with["env_from"] = Value::Array(env_from);
        }
        let optional = [
            ("kubeconfig", self.kubeconfig_file.clone().map(Value::from)),
            (
                "service_account",
                self.service_account_name.clone().map(Value::from),
            ),
            (
                "image_pull_policy",
                self.image_pull_policy.clone().map(Value::from),
            ),
            ("image_pull_secrets", self.image_pull_secrets.clone()),
            ("resources", self.resources.clone()),
            ("volumes", self.volumes.clone()),
            ("volume_mounts", self.volume_mounts.clone()),
            ("node_selector", self.node_selector.clone()),
            ("tolerations", self.tolerations.clone()),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                with[key] = value;
            }
        }
        for (key, map) in [("labels", &self.labels), ("annotations", &self.annotations)] {
            if !map.is_empty() {
                with[key] = json!(map);
            }
        }
        Ok(with)
    }

    /// Refuses Kubernetes keys under another launcher.
    pub fn refuse_k8s_keys(&self, launcher: &str) -> Result<(), String> {
        let set = [
            ("job_namespace", self.job_namespace.is_some()),
            (
                "load_incluster_config",
                self.load_incluster_config.is_some(),
            ),
            ("kubeconfig_file", self.kubeconfig_file.is_some()),
            ("service_account_name", self.service_account_name.is_some()),
            ("image_pull_policy", self.image_pull_policy.is_some()),
            ("image_pull_secrets", self.image_pull_secrets.is_some()),
            ("env_config_maps", !self.env_config_maps.is_empty()),
            ("env_secrets", !self.env_secrets.is_empty()),
            ("resources", self.resources.is_some()),
            ("labels", !self.labels.is_empty()),
            ("annotations", !self.annotations.is_empty()),
            ("volumes", self.volumes.is_some()),
            ("volume_mounts", self.volume_mounts.is_some()),
            ("node_selector", self.node_selector.is_some()),
            ("tolerations", self.tolerations.is_some()),
        ];
        match set.iter().find(|(_, on)| *on) {
            Some((key, _)) => Err(format!(
                "run_launcher: `{key}` is a k8s launcher option, not acted on by the {launcher} launcher"
            )),
            None => Ok(()),
        }
    }
}
