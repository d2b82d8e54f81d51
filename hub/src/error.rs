//! The hub client's error type: every variant names the repository (and file or URL) it is
//! about, and the ones a user can fix say how.

use std::path::PathBuf;

/// Every way finding or downloading a hub model can fail.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Models are missing and the network is off.
    #[error(
        "{} neither local nor in the Hugging Face cache ({}), and downloads are off ({}):\n  {}",
        count_models(.missing.len()),
        .cache.display(),
        .why,
        .missing.join("\n  ")
    )]
    Offline {
        /// One line per missing model (`model `x` not found: looked in ...`).
        missing: Vec<String>,
        /// The cache folder downloads would go to.
        cache: PathBuf,
        /// Which switch turned the network off.
        why: String,
    },
    /// The Hub wants a token (401), or refused the one given (403).
    #[error("{}", unauthorized(.repo, *.status, *.had_token))]
    Unauthorized {
        /// The repository.
        repo: String,
        /// 401 or 403.
        status: u16,
        /// Whether a token was sent.
        had_token: bool,
    },
    /// The repository, revision or file does not exist (404).
    #[error(
        "the Hub has no {} (404 from {url}){}",
        match .file { Some(f) => format!("file `{f}` in model `{}` at revision `{}`", .repo, .revision), None => format!("model `{}` at revision `{}`", .repo, .revision) },
        if .file.is_none() { "; check the spelling, or whether it is a local folder that does not exist" } else { "" }
    )]
    NotFound {
        /// The repository.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// The file, when a file was asked for.
        file: Option<String>,
        /// The URL asked.
        url: String,
    },
    /// Any other unexpected HTTP status.
    #[error("{url}: the Hub answered HTTP {status} for model `{repo}`")]
    Status {
        /// The repository.
        repo: String,
        /// The URL asked.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The network failed (no connection, reset, timeout, TLS).
    #[error(
        "could not reach {url} for model `{repo}`: {source} (HF_ENDPOINT chooses a mirror; --offline or HF_HUB_OFFLINE=1 uses only the local cache)"
    )]
    Network {
        /// The repository.
        repo: String,
        /// The URL asked.
        url: String,
        /// The client's error.
        #[source]
        source: Box<ureq::Error>,
    },
    /// The Hub answered something this client cannot read.
    #[error("{url}: unexpected answer for model `{repo}`: {reason}")]
    BadResponse {
        /// The repository.
        repo: String,
        /// The URL asked.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A downloaded file does not match its ETag (sha256) or its announced size.
    #[error(
        "file `{file}` of model `{repo}` was downloaded with {what}: refused, nothing entered the cache (the partial download was removed; run again to retry)"
    )]
    Corrupt {
        /// The repository.
        repo: String,
        /// The file.
        file: String,
        /// What differs (expected vs got).
        what: String,
    },
    /// A file of the cache could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A recipe could not be read.
    #[error(transparent)]
    Recipe(#[from] merge_core::Error),
    /// Several models failed; every failure, one per line.
    #[error("{} could not be fetched:\n  {}", models(.0.len()), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n  "))]
    Several(Vec<HubError>),
}

fn count_models(n: usize) -> String {
    if n == 1 {
        "1 model is".into()
    } else {
        format!("{n} models are")
    }
}

fn unauthorized(repo: &str, status: u16, had_token: bool) -> String {
    if had_token {
        format!(
            "the Hub refused access to model `{repo}` (HTTP {status}) with the token given: check that the token (HF_TOKEN, or the file `huggingface-cli login` writes) belongs to an account that has accepted the model's terms on its page, or that can read the private repository"
        )
    } else {
        format!(
            "model `{repo}` is gated or private: the Hub answered HTTP {status} without a token. Accept its terms on the model's page if it is gated, then give smelt a token: set HF_TOKEN=hf_... or run `huggingface-cli login`"
        )
    }
}

impl HubError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        HubError::Io {
            path: path.into(),
            source,
        }
    }
}

fn models(n: usize) -> String {
    if n == 1 {
        "1 model".into()
    } else {
        format!("{n} models")
    }
}
