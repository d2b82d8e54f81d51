//! Where the Hub is, who we are to it and where its files go, from the environment
//! huggingface_hub reads: `HF_ENDPOINT`, `HF_TOKEN` (else the token file `huggingface-cli
//! login` writes), `HF_HUB_CACHE` / `HF_HOME`, `HF_HUB_OFFLINE`.

use std::path::PathBuf;

/// The Hub's default address.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// How to reach the Hub and where to keep its files.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Base URL, without a trailing slash.
    pub endpoint: String,
    /// Bearer token for gated and private repositories.
    pub token: Option<String>,
    /// The cache folder downloads go to.
    pub cache: PathBuf,
    /// Why the network is off (`None`: downloads allowed).
    pub offline: Option<String>,
    /// Files downloaded side by side.
    pub parallel: usize,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Whether an environment switch such as `HF_HUB_OFFLINE` is on (`1`, `true`, `yes`, `on`).
pub fn env_flag(name: &str) -> bool {
    var(name)
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// The token file huggingface-cli writes: `HF_TOKEN_PATH`, else `$HF_HOME/token`, else
/// `~/.cache/huggingface/token`.
pub fn token_file() -> Option<PathBuf> {
    if let Some(p) = var("HF_TOKEN_PATH") {
        return Some(PathBuf::from(p));
    }
    if let Some(h) = var("HF_HOME") {
        return Some(PathBuf::from(h).join("token"));
    }
    var("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/token"))
}

impl HubConfig {
    /// Reads the environment; `offline` is the `--offline` flag.
    pub fn from_env(offline: bool) -> HubConfig {
        let endpoint = var("HF_ENDPOINT")
            .unwrap_or_else(|| DEFAULT_ENDPOINT.into())
            .trim_end_matches('/')
            .to_string();
        let token = var("HF_TOKEN").or_else(|| {
            let p = token_file()?;
            let t = std::fs::read_to_string(p).ok()?;
            let t = t.trim().to_string();
            (!t.is_empty()).then_some(t)
        });
        let cache = merge_core::checkpoint::hub::cache_dirs()
            .into_iter()
            .next()
            .unwrap_or_else(|| PathBuf::from(".cache/huggingface/hub"));
        let offline = if offline {
            Some("--offline".to_string())
        } else if env_flag("HF_HUB_OFFLINE") {
            Some("HF_HUB_OFFLINE is set".to_string())
        } else {
            None
        };
        HubConfig {
            endpoint,
            token,
            cache,
            offline,
            parallel: 4,
        }
    }
}
