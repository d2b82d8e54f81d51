//! The Hub's HTTP API, as much of it as a download needs:
//!
//! - `GET  /api/models/{id}/revision/{rev}` → the commit (`sha`) and the file list
//!   (`siblings[].rfilename`);
//! - `HEAD /{id}/resolve/{rev}/{file}` (redirects not followed) → `ETag`, `X-Repo-Commit`, and
//!   for LFS files `X-Linked-Etag` (the sha256) and `X-Linked-Size`;
//! - `GET  /{id}/resolve/{commit}/{file}` with `Range: bytes=N-` to resume (206).
//!
//! The token goes in `Authorization: Bearer` to the Hub only: never to the storage a
//! redirect points at.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use ureq::Agent;
use ureq::http::Response;

use crate::config::HubConfig;
use crate::error::HubError;

/// A repository at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoInfo {
    /// The commit the revision resolves to.
    pub sha: String,
    /// Every file of the repository (paths relative to its root).
    pub files: Vec<String>,
}

/// What a `HEAD` says about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// The blob name: `X-Linked-Etag` for LFS files, else `ETag` (quotes removed).
    pub etag: String,
    /// The size in bytes, when announced.
    pub size: Option<u64>,
    /// The sha256 the content must have (LFS files: the linked ETag).
    pub sha256: Option<String>,
    /// `X-Repo-Commit`.
    pub commit: Option<String>,
}

/// A blocking client for one Hub endpoint.
#[derive(Debug, Clone)]
pub struct Client {
    agent: Agent,
    head_agent: Agent,
    endpoint: String,
    token: Option<String>,
}

fn unquote(s: &str) -> String {
    s.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

fn enc_rev(rev: &str) -> String {
    rev.replace('/', "%2F")
}

fn header(resp: &Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

impl Client {
    /// A client for `cfg.endpoint` with `cfg.token`.
    pub fn new(cfg: &HubConfig) -> Client {
        let base = || {
            Agent::config_builder()
                .http_status_as_error(false)
                .timeout_connect(Some(Duration::from_secs(30)))
                .timeout_recv_response(Some(Duration::from_secs(120)))
                .user_agent(concat!("smelt/", env!("CARGO_PKG_VERSION")))
        };
        Client {
            agent: base().build().into(),
            head_agent: base()
                .max_redirects(0)
                .max_redirects_will_error(false)
                .build()
                .into(),
            endpoint: cfg.endpoint.clone(),
            token: cfg.token.clone(),
        }
    }

    /// Whether a token is sent.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    fn auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => req.header("Authorization", format!("Bearer {t}")),
            None => req,
        }
    }

    /// The URL of a file at a revision.
    pub fn resolve_url(&self, id: &str, rev: &str, file: &str) -> String {
        format!("{}/{id}/resolve/{}/{file}", self.endpoint, enc_rev(rev))
    }

    fn status_error(
        &self,
        id: &str,
        rev: &str,
        file: Option<&str>,
        url: &str,
        status: u16,
    ) -> HubError {
        match status {
            401 | 403 => HubError::Unauthorized {
                repo: id.into(),
                status,
                had_token: self.has_token(),
            },
            404 => HubError::NotFound {
                repo: id.into(),
                revision: rev.into(),
                file: file.map(String::from),
                url: url.into(),
            },
            _ => HubError::Status {
                repo: id.into(),
                url: url.into(),
                status,
            },
        }
    }

    fn net(id: &str, url: &str, e: ureq::Error) -> HubError {
        HubError::Network {
            repo: id.into(),
            url: url.into(),
            source: Box::new(e),
        }
    }

    /// `GET /api/models/{id}/revision/{rev}`: the commit and the file list.
    pub fn repo_info(&self, id: &str, rev: &str) -> Result<RepoInfo, HubError> {
        let url = format!(
            "{}/api/models/{id}/revision/{}",
            self.endpoint,
            enc_rev(rev)
        );
        let mut resp = self
            .auth(self.agent.get(&url))
            .call()
            .map_err(|e| Self::net(id, &url, e))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(self.status_error(id, rev, None, &url, status));
        }
        let bad = |reason: String| HubError::BadResponse {
            repo: id.into(),
            url: url.clone(),
            reason,
        };
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| Self::net(id, &url, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let sha = v
            .get("sha")
            .and_then(|s| s.as_str())
            .filter(|s| crate::cache::is_commit(s))
            .ok_or_else(|| bad("no commit `sha`".into()))?
            .to_string();
        let files = v
            .get("siblings")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("no `siblings` list".into()))?
            .iter()
            .filter_map(|s| s.get("rfilename").and_then(|f| f.as_str()))
            .map(String::from)
            .collect();
        Ok(RepoInfo { sha, files })
    }

    /// `scheme://host[:port]` of the endpoint.
    fn origin(&self) -> &str {
        let after = self.endpoint.find("://").map_or(0, |i| i + 3);
        match self.endpoint[after..].find('/') {
            Some(i) => &self.endpoint[..after + i],
            None => &self.endpoint,
        }
    }

    /// `HEAD` of a file. Redirects to the storage are not followed (the Hub's own answer
    /// carries the linked ETag and size); redirects within the Hub (a renamed repository, a
    /// file served from elsewhere on the Hub: a relative `Location`) are, as
    /// huggingface_hub does.
    pub fn file_meta(&self, id: &str, rev: &str, file: &str) -> Result<FileMeta, HubError> {
        let mut url = self.resolve_url(id, rev, file);
        let mut hops = 0;
        let resp = loop {
            let resp = self
                .auth(self.head_agent.head(&url))
                .call()
                .map_err(|e| Self::net(id, &url, e))?;
            let relative = header(&resp, "location").filter(|l| l.starts_with('/'));
            match relative {
                Some(loc)
                    if resp.status().is_redirection()
                        && header(&resp, "x-linked-etag").is_none()
                        && hops < 5 =>
                {
                    hops += 1;
                    url = format!("{}{loc}", self.origin());
                }
                _ => break resp,
            }
        };
        let status = resp.status().as_u16();
        if !(200..400).contains(&status) {
            return Err(self.status_error(id, rev, Some(file), &url, status));
        }
        let linked = header(&resp, "x-linked-etag").map(|s| unquote(&s));
        let etag = linked
            .clone()
            .or_else(|| header(&resp, "etag").map(|s| unquote(&s)))
            .filter(|e| !e.is_empty() && !e.contains('/') && !e.contains(".."))
            .ok_or_else(|| HubError::BadResponse {
                repo: id.into(),
                url: url.clone(),
                reason: format!("no usable ETag for `{file}`"),
            })?;
        let size = header(&resp, "x-linked-size")
            .or_else(|| {
                (status == 200)
                    .then(|| header(&resp, "content-length"))
                    .flatten()
            })
            .and_then(|s| s.trim().parse().ok());
        let sha256 = linked.filter(|e| e.len() == 64 && e.chars().all(|c| c.is_ascii_hexdigit()));
        Ok(FileMeta {
            etag,
            size,
            sha256,
            commit: header(&resp, "x-repo-commit"),
        })
    }

    /// Downloads `file` at `commit` into `part`, resuming from the bytes already there with a
    /// `Range` request; returns the sha256 (hex) of the whole file. `progress` gets every
    /// number of bytes added (resumed bytes included, at the start).
    pub fn download(
        &self,
        id: &str,
        commit: &str,
        file: &str,
        part: &Path,
        progress: &dyn Fn(u64),
    ) -> Result<String, HubError> {
        let url = self.resolve_url(id, commit, file);
        let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        let mut req = self.auth(self.agent.get(&url));
        if have > 0 {
            req = req.header("Range", format!("bytes={have}-"));
        }
        let resp = req.call().map_err(|e| Self::net(id, &url, e))?;
        let status = resp.status().as_u16();
        let mut hasher = Sha256::new();
        let mut out = match status {
            206 if have > 0 => {
                // hash what is already there, then append
                let mut f = std::fs::File::open(part).map_err(|e| HubError::io(part, e))?;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf).map_err(|e| HubError::io(part, e))?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                }
                progress(have);
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(part)
                    .map_err(|e| HubError::io(part, e))?
            }
            200 => std::fs::File::create(part).map_err(|e| HubError::io(part, e))?,
            416 if have > 0 => {
                // the partial file is not a prefix the server can continue: start again
                std::fs::remove_file(part).map_err(|e| HubError::io(part, e))?;
                return self.download(id, commit, file, part, progress);
            }
            _ => return Err(self.status_error(id, commit, Some(file), &url, status)),
        };
        let mut body = resp.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(HubError::Network {
                        repo: id.into(),
                        url,
                        source: Box::new(ureq::Error::Io(e)),
                    });
                }
            };
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| HubError::io(part, e))?;
            progress(n as u64);
        }
        out.sync_all().map_err(|e| HubError::io(part, e))?;
        Ok(hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_and_revisions() {
        assert_eq!(unquote("\"abc\""), "abc");
        assert_eq!(unquote("W/\"abc\""), "abc");
        assert_eq!(enc_rev("refs/pr/1"), "refs%2Fpr%2F1");
    }
}
