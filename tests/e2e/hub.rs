//! Models from the Hub: a stand-in for the Hugging Face Hub, served from the test process on
//! 127.0.0.1, holds the tiny fixture models as `tiny/base`, `tiny/ft1`, `tiny/ft2` (and a
//! gated `gated/ft2`), with the endpoints smelt uses: `GET /api/models/{id}/revision/{rev}`,
//! `HEAD`/`GET /{id}/resolve/{rev}/{file}` (LFS files redirected to `/cdn/...`, with `ETag`,
//! `X-Repo-Commit`, `X-Linked-Etag`, `X-Linked-Size`, `Range` → 206). smelt runs with
//! `HF_ENDPOINT` pointing at it and `HF_HUB_CACHE` in a temporary folder.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::util::*;

const TOKEN: &str = "hf_test_token";

#[derive(Clone)]
struct Repo {
    commit: String,
    files: BTreeMap<String, Vec<u8>>,
    gated: bool,
    /// Files served with one byte changed (headers still those of the true content).
    corrupt: BTreeSet<String>,
    /// Earlier commits, still served by their sha.
    older: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

impl Repo {
    /// The commit a revision names and the files at it.
    fn at(&self, rev: &str) -> Option<(&str, &BTreeMap<String, Vec<u8>>)> {
        if rev == "main" || rev == self.commit {
            return Some((&self.commit, &self.files));
        }
        self.older.get_key_value(rev).map(|(c, f)| (c.as_str(), f))
    }
}

/// One request the stand-in received.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    range: Option<String>,
    auth: Option<String>,
}

struct FakeHub {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Req>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn is_lfs(name: &str) -> bool {
    name.ends_with(".safetensors")
}

/// A fixture model as a repository, with files a merge must not download beside it.
fn fixture_repo(name: &str, commit_seed: u8) -> Repo {
    let dir = fixtures().join("models/tiny-llama").join(name);
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        files.insert(
            p.file_name().unwrap().to_string_lossy().into_owned(),
            std::fs::read(&p).unwrap(),
        );
    }
    files.insert("original/consolidated.00.pth".into(), vec![1; 100]);
    files.insert("onnx/model.onnx".into(), vec![2; 100]);
    files.insert("model.gguf".into(), vec![3; 100]);
    files.insert("README.md".into(), b"# tiny".to_vec());
    Repo {
        commit: format!("{:02x}", commit_seed).repeat(20),
        files,
        gated: false,
        corrupt: BTreeSet::new(),
        older: BTreeMap::new(),
    }
}

fn hub_repos() -> BTreeMap<String, Repo> {
    let mut m = BTreeMap::new();
    m.insert("tiny/base".to_string(), fixture_repo("base", 0xa1));
    m.insert("tiny/ft1".to_string(), fixture_repo("ft1", 0xb2));
    m.insert("tiny/ft2".to_string(), fixture_repo("ft2", 0xc3));
    let mut gated = fixture_repo("ft2", 0xd4);
    gated.gated = true;
    m.insert("gated/ft2".to_string(), gated);
    m
}

fn respond(s: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8], head: bool) {
    let mut out = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let _ = s.write_all(out.as_bytes());
    if !head {
        let _ = s.write_all(body);
    }
    let _ = s.flush();
}

fn handle(stream: TcpStream, repos: &BTreeMap<String, Repo>, log: &Mutex<Vec<Req>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = match (parts.next(), parts.next()) {
            (Some(m), Some(p)) => (m.to_string(), p.to_string()),
            _ => return,
        };
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let req = Req {
            method: method.clone(),
            path: path.clone(),
            range: headers.get("range").cloned(),
            auth: headers.get("authorization").cloned(),
        };
        log.lock().unwrap().push(req.clone());
        serve(&mut w, &req, repos);
    }
}

fn serve(w: &mut TcpStream, req: &Req, repos: &BTreeMap<String, Repo>) {
    let head = req.method == "HEAD";
    let authorized = req.auth.as_deref() == Some(&format!("Bearer {TOKEN}"));
    let not_found = |w: &mut TcpStream| respond(w, "404 Not Found", &[], b"not found", head);
    let path = req.path.as_str();
    // a renamed repository: the Hub redirects (relative Location) to the new name
    for (from, to) in [
        ("/api/models/renamed/ft1/", "/api/models/tiny/ft1/"),
        ("/renamed/ft1/", "/tiny/ft1/"),
    ] {
        if let Some(rest) = path.strip_prefix(from) {
            let hs = [("Location".to_string(), format!("{to}{rest}"))];
            return respond(w, "307 Temporary Redirect", &hs, b"", head);
        }
    }
    // /cdn/{org}/{name}/{file}: the storage an LFS file is redirected to (no token needed)
    let (id, rest, api) = if let Some(p) = path.strip_prefix("/api/models/") {
        let mut it = p.splitn(3, '/');
        let (o, n, rest) = (
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
        );
        (format!("{o}/{n}"), rest.to_string(), true)
    } else if let Some(p) = path.strip_prefix("/cdn/") {
        let mut it = p.splitn(3, '/');
        let (o, n, file) = (
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
        );
        let Some(repo) = repos.get(&format!("{o}/{n}")) else {
            return not_found(w);
        };
        // `/cdn/{id}/{file}` at the current commit, `/cdn/{id}/{commit}/{file}` at an older one
        let (files, file) = match file.split_once('/') {
            Some((c, f)) if repo.older.contains_key(c) => (&repo.older[c], f),
            _ => (&repo.files, file),
        };
        let Some(body) = files.get(file) else {
            return not_found(w);
        };
        return serve_bytes(w, req, repo, file, body, &[]);
    } else {
        let mut it = path.trim_start_matches('/').splitn(3, '/');
        let (o, n, rest) = (
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
        );
        (format!("{o}/{n}"), rest.to_string(), false)
    };
    let Some(repo) = repos.get(&id) else {
        return not_found(w);
    };
    if repo.gated && !authorized {
        return respond(w, "401 Unauthorized", &[], b"gated", head);
    }
    if api {
        let Some(rev) = rest.strip_prefix("revision/") else {
            return not_found(w);
        };
        let Some((commit, files)) = repo.at(rev) else {
            return not_found(w);
        };
        let siblings: Vec<serde_json::Value> = files
            .keys()
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        let body = serde_json::json!({"id": id, "sha": commit, "siblings": siblings});
        return respond(
            w,
            "200 OK",
            &[("Content-Type".into(), "application/json".into())],
            body.to_string().as_bytes(),
            head,
        );
    }
    let Some(rest) = rest.strip_prefix("resolve/") else {
        return not_found(w);
    };
    let Some((rev, file)) = rest.split_once('/') else {
        return not_found(w);
    };
    let Some((commit, files)) = repo.at(rev) else {
        return not_found(w);
    };
    let Some(body) = files.get(file) else {
        return not_found(w);
    };
    let mut hs = vec![("X-Repo-Commit".to_string(), commit.to_string())];
    if is_lfs(file) {
        let sha = hex(body);
        hs.push(("ETag".into(), format!("\"{sha}\"")));
        hs.push(("X-Linked-Etag".into(), format!("\"{sha}\"")));
        hs.push(("X-Linked-Size".into(), body.len().to_string()));
        let at = if commit == repo.commit {
            String::new()
        } else {
            format!("{commit}/")
        };
        hs.push(("Location".into(), format!("/cdn/{id}/{at}{file}")));
        return respond(w, "302 Found", &hs, b"", head);
    }
    hs.push(("ETag".into(), format!("\"{}\"", &hex(body)[..40])));
    serve_bytes(w, req, repo, file, body, &hs)
}

fn serve_bytes(
    w: &mut TcpStream,
    req: &Req,
    repo: &Repo,
    file: &str,
    body: &[u8],
    hs: &[(String, String)],
) {
    let head = req.method == "HEAD";
    let mut body = body.to_vec();
    if repo.corrupt.contains(file) {
        let k = body.len() / 2;
        body[k] ^= 0xff;
    }
    let mut hs = hs.to_vec();
    if let Some(from) = req
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok())
    {
        if from >= body.len() {
            return respond(w, "416 Range Not Satisfiable", &hs, b"", head);
        }
        hs.push((
            "Content-Range".into(),
            format!("bytes {from}-{}/{}", body.len() - 1, body.len()),
        ));
        return respond(w, "206 Partial Content", &hs, &body[from..], head);
    }
    respond(w, "200 OK", &hs, &body, head)
}

impl FakeHub {
    fn start(repos: BTreeMap<String, Repo>) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2) = (log.clone(), stop.clone());
        let repos = Arc::new(repos);
        let thread = std::thread::spawn(move || {
            for s in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(s) = s else { continue };
                let (repos, log) = (repos.clone(), log2.clone());
                std::thread::spawn(move || handle(s, &repos, &log));
            }
        });
        FakeHub {
            addr,
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }

    fn clear(&self) {
        self.log.lock().unwrap().clear();
    }

    /// GETs of file contents (resolve or storage), by path.
    fn downloads(&self) -> Vec<Req> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "GET" && !r.path.starts_with("/api/"))
            .filter(|r| r.path.starts_with("/cdn/") || !is_lfs(&r.path))
            .collect()
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const RECIPE: &str = "merge_method: task_arithmetic
base_model: {B}
models:
  - model: {F1}
    parameters: {weight: 0.6}
  - model: {F2}
    parameters: {weight: 0.4}
dtype: float32
";

fn recipe_for(dir: &Path, name: &str, b: &str, f1: &str, f2: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(
        &p,
        RECIPE
            .replace("{B}", b)
            .replace("{F1}", f1)
            .replace("{F2}", f2),
    )
    .unwrap();
    p
}

/// smelt with the stand-in as endpoint and `cache` as the hub cache, online.
fn hub_smelt(hub: &FakeHub, cache: &Path, args: &[&str], token: Option<&str>) -> Output {
    let mut c = smelt();
    c.env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN")
        .env("HF_ENDPOINT", hub.endpoint())
        .env("HF_HUB_CACHE", cache)
        .env("HF_HOME", cache.join("hf-home"));
    if let Some(t) = token {
        c.env("HF_TOKEN", t);
    }
    c.args(args).output().unwrap()
}

fn merged_files(out: &Path) -> Vec<(String, String)> {
    dir_hashes(out)
        .into_iter()
        .filter(|(n, _)| {
            !matches!(
                n.as_str(),
                "README.md" | "mergekit_config.yml" | "smelt.lock"
            )
        })
        .collect()
}

#[test]
fn download_then_merge_equals_local_and_second_run_downloads_nothing() {
    let hub = FakeHub::start(hub_repos());
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let models = fixtures().join("models/tiny-llama");
    let m = |n: &str| models.join(n).to_string_lossy().into_owned();
    let local = recipe_for(tmp.path(), "local.yml", &m("base"), &m("ft1"), &m("ft2"));
    let remote = recipe_for(tmp.path(), "hub.yml", "tiny/base", "tiny/ft1", "tiny/ft2");
    let (out_l, out_h) = (tmp.path().join("out-local"), tmp.path().join("out-hub"));
    assert_ok(&run(&[
        "run",
        "-q",
        local.to_str().unwrap(),
        out_l.to_str().unwrap(),
    ]));
    let o = hub_smelt(
        &hub,
        &cache,
        &["run", remote.to_str().unwrap(), out_h.to_str().unwrap()],
        None,
    );
    let e = assert_ok(&o);
    assert!(
        e.contains("3 models are not in the Hugging Face cache"),
        "{e}"
    );
    assert!(e.contains("tiny/ft1 (commit b2b2b2b2b2b2"), "{e}");
    assert_eq!(merged_files(&out_l), merged_files(&out_h));
    // only what a merge needs was downloaded
    let got: BTreeSet<String> = hub.downloads().iter().map(|r| r.path.clone()).collect();
    for bad in ["original/", "onnx/", ".gguf", "README.md"] {
        assert!(
            !got.iter().any(|p| p.contains(bad)),
            "downloaded {bad}: {got:?}"
        );
    }
    assert!(got.contains("/cdn/tiny/ft1/model.safetensors"), "{got:?}");
    assert!(
        got.contains("/tiny/ft1/resolve/b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2/config.json"),
        "{got:?}"
    );
    // the standard cache layout
    let repo = cache.join("models--tiny--ft1");
    let commit = "b2".repeat(20);
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        commit
    );
    let snap = repo.join("snapshots").join(&commit);
    let link = std::fs::read_link(snap.join("model.safetensors")).unwrap();
    let sha = sha256_file(&models.join("ft1/model.safetensors"));
    assert_eq!(link, Path::new("../../blobs").join(&sha));
    assert!(!snap.join("README.md").exists());
    // a second run (and fetch, and plan) asks nothing of the Hub
    hub.clear();
    let out2 = tmp.path().join("out-hub2");
    assert_ok(&hub_smelt(
        &hub,
        &cache,
        &[
            "run",
            "-q",
            remote.to_str().unwrap(),
            out2.to_str().unwrap(),
        ],
        None,
    ));
    assert_ok(&hub_smelt(
        &hub,
        &cache,
        &["fetch", remote.to_str().unwrap()],
        None,
    ));
    assert_ok(&hub_smelt(
        &hub,
        &cache,
        &["plan", remote.to_str().unwrap()],
        None,
    ));
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
    assert_eq!(merged_files(&out_l), merged_files(&out2));
    // and offline works from the cache
    let mut c = smelt();
    let o = c
        .env("HF_HUB_CACHE", &cache)
        .args([
            "run",
            "-q",
            remote.to_str().unwrap(),
            tmp.path().join("out3").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_ok(&o);
}

#[test]
fn offline_names_every_missing_model_and_check_warns() {
    let hub = FakeHub::start(hub_repos());
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let r = recipe_for(
        tmp.path(),
        "hub.yml",
        "tiny/base",
        "tiny/ft1",
        "tiny/ft2@v2",
    );
    let out = tmp.path().join("out");
    for args in [
        vec![
            "run",
            "--offline",
            r.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
        vec!["fetch", "--offline", r.to_str().unwrap()],
        vec!["plan", r.to_str().unwrap(), "--offline"],
    ] {
        let o = hub_smelt(&hub, &cache, &args, None);
        assert_fails(
            &o,
            &[
                "3 models are neither local nor in the Hugging Face cache",
                "--offline",
                "model `tiny/base` not found: looked in",
                "model `tiny/ft1` not found",
                "model `tiny/ft2@v2` not found",
            ],
        );
    }
    assert_no_output(tmp.path(), "out");
    // HF_HUB_OFFLINE=1 as well
    let o = smelt()
        .env("HF_ENDPOINT", hub.endpoint())
        .env("HF_HUB_CACHE", &cache)
        .args(["fetch", r.to_str().unwrap()])
        .output()
        .unwrap();
    assert_fails(&o, &["HF_HUB_OFFLINE", "model `tiny/ft2@v2` not found"]);
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
    // check lints without the network and only warns
    let o = hub_smelt(&hub, &cache, &["check", r.to_str().unwrap()], None);
    let e = assert_ok(&o);
    assert!(
        e.contains(
            "warning: model `tiny/ft1` is neither a local path nor in the Hugging Face cache"
        ),
        "{e}"
    );
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
}

#[test]
fn unknown_model_or_revision_is_named() {
    let hub = FakeHub::start(hub_repos());
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let r = recipe_for(
        tmp.path(),
        "hub.yml",
        "tiny/base",
        "nobody/nothing",
        "tiny/ft2@v9",
    );
    let o = hub_smelt(&hub, &cache, &["fetch", r.to_str().unwrap()], None);
    assert_fails(
        &o,
        &[
            "2 models could not be fetched",
            "the Hub has no model `nobody/nothing` at revision `main`",
            "the Hub has no model `tiny/ft2` at revision `v9`",
        ],
    );
    // nothing was downloaded before the failure was known
    assert!(hub.downloads().is_empty(), "{:?}", hub.downloads());
}

#[test]
fn gated_repo_needs_a_token() {
    let hub = FakeHub::start(hub_repos());
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let r = recipe_for(tmp.path(), "hub.yml", "tiny/base", "tiny/ft1", "gated/ft2");
    let o = hub_smelt(&hub, &cache, &["fetch", r.to_str().unwrap()], None);
    assert_fails(
        &o,
        &[
            "model `gated/ft2` is gated or private",
            "HTTP 401",
            "HF_TOKEN",
            "huggingface-cli login",
        ],
    );
    let o = hub_smelt(
        &hub,
        &cache,
        &["fetch", r.to_str().unwrap()],
        Some("hf_wrong"),
    );
    assert_fails(
        &o,
        &[
            "refused access to model `gated/ft2`",
            "with the token given",
        ],
    );
    // the token file huggingface-cli writes is read when HF_TOKEN is not set
    std::fs::create_dir_all(cache.join("hf-home")).unwrap();
    std::fs::write(cache.join("hf-home/token"), format!("{TOKEN}\n")).unwrap();
    hub.clear();
    assert_ok(&hub_smelt(
        &hub,
        &cache,
        &["fetch", "-q", r.to_str().unwrap()],
        None,
    ));
    assert!(cache.join("models--gated--ft2/refs/main").is_file());
    // the token went to the Hub, never to the storage an LFS file is redirected to
    let reqs = hub.requests();
    assert!(
        reqs.iter()
            .any(|q| q.path.starts_with("/gated/") && q.auth.is_some())
    );
    assert!(
        reqs.iter()
            .filter(|q| q.path.starts_with("/cdn/"))
            .all(|q| q.auth.is_none()),
        "{reqs:?}"
    );
    // and with HF_TOKEN, a fresh cache
    let cache2 = tmp.path().join("cache2");
    assert_ok(&hub_smelt(
        &hub,
        &cache2,
        &["fetch", "-q", r.to_str().unwrap()],
        Some(TOKEN),
    ));
}

#[test]
fn interrupted_download_resumes_with_range() {
    let hub = FakeHub::start(hub_repos());
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let file = fixtures().join("models/tiny-llama/ft1/model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let sha = sha256_file(&file);
    let blobs = cache.join("models--tiny--ft1/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let half = bytes.len() / 2;
    std::fs::write(blobs.join(format!("{sha}.incomplete")), &bytes[..half]).unwrap();
    let r = recipe_for(tmp.path(), "hub.yml", "tiny/base", "tiny/ft1", "tiny/ft2");
    assert_ok(&hub_smelt(
        &hub,
        &cache,
        &["fetch", "-q", r.to_str().unwrap()],
        None,
    ));
    let reqs = hub.requests();
    let get = reqs
        .iter()
        .find(|q| q.method == "GET" && q.path == "/cdn/tiny/ft1/model.safetensors")
        .expect("downloaded ft1's weights");
    assert_eq!(
        get.range.as_deref(),
        Some(format!("bytes={half}-").as_str())
    );
    assert_eq!(std::fs::read(blobs.join(&sha)).unwrap(), bytes);
    assert!(!blobs.join(format!("{sha}.incomplete")).exists());
}

#[test]
fn corrupt_download_is_refused() {
    let mut repos = hub_repos();
    repos
        .get_mut("tiny/ft1")
        .unwrap()
        .corrupt
        .insert("model.safetensors".into());
    let hub = FakeHub::start(repos);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let r = recipe_for(tmp.path(), "hub.yml", "tiny/base", "tiny/ft1", "tiny/ft2");
    let out = tmp.path().join("out");
    let o = hub_smelt(
        &hub,
        &cache,
        &["run", "-q", r.to_str().unwrap(), out.to_str().unwrap()],
        None,
    );
    let sha = sha256_file(&fixtures().join("models/tiny-llama/ft1/model.safetensors"));
    assert_fails(
        &o,
        &[
            "file `model.safetensors` of model `tiny/ft1`",
            &format!("its ETag says {sha}"),
            "refused",
        ],
    );
    assert_no_output(tmp.path(), "out");
    let blobs = cache.join("models--tiny--ft1/blobs");
    assert!(!blobs.join(&sha).exists());
    assert!(!blobs.join(format!("{sha}.incomplete")).exists());
    assert!(!cache.join("models--tiny--ft1/snapshots").exists());
}

#[test]
fn stages_of_a_multi_recipe_file_are_not_hub_ids() {
    let hub = FakeHub::start(hub_repos());
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let file = tmp.path().join("stages.yml");
    std::fs::write(
        &file,
        "name: s1\nmerge_method: slerp\nbase_model: tiny/ft1\nmodels:\n  - model: tiny/ft1\n  - model: tiny/ft2\nparameters: {t: 0.5}\ndtype: float32\n---\nmerge_method: linear\nmodels:\n  - model: s1\n    parameters: {weight: 0.5}\n  - model: tiny/base@main\n    parameters: {weight: 0.5}\ndtype: float32\n",
    )
    .unwrap();
    // check only warns about the hub models, never about the stage
    let e = assert_ok(&hub_smelt(
        &hub,
        &cache,
        &["check", file.to_str().unwrap()],
        None,
    ));
    assert!(e.contains("model `tiny/ft2` is neither"), "{e}");
    assert!(!e.contains("`s1`"), "{e}");
    // fetch takes the hub models of every document, and asks nothing about `s1`
    let e = assert_ok(&hub_smelt(
        &hub,
        &cache,
        &["fetch", file.to_str().unwrap()],
        None,
    ));
    assert!(
        e.contains("3 models are not in the Hugging Face cache"),
        "{e}"
    );
    assert!(
        !hub.requests().iter().any(|q| q.path.contains("s1")),
        "{:?}",
        hub.requests()
    );
    // then the batch runs offline, from the cache
    let o = smelt()
        .env("HF_HUB_CACHE", &cache)
        .args(["batch", "-q", file.to_str().unwrap()])
        .arg("--intermediate-dir")
        .arg(tmp.path().join("int"))
        .arg("--out-path")
        .arg(tmp.path().join("final"))
        .output()
        .unwrap();
    assert_ok(&o);
    assert!(tmp.path().join("final/model.safetensors").is_file());
}

#[test]
fn lock_records_commits_and_locked_fetches_exactly_them() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let r = recipe_for(tmp.path(), "hub.yml", "tiny/base", "tiny/ft1", "tiny/ft2");
    let lock = tmp.path().join("hub.lock");
    let out1 = tmp.path().join("out1");
    {
        let hub = FakeHub::start(hub_repos());
        let o = hub_smelt(
            &hub,
            &cache,
            &[
                "run",
                "-q",
                r.to_str().unwrap(),
                out1.to_str().unwrap(),
                "--lock",
                lock.to_str().unwrap(),
            ],
            None,
        );
        assert_ok(&o);
    }
    let l: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&lock).unwrap()).unwrap();
    let commit_of = |reference: &str| {
        l["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["reference"] == reference)
            .and_then(|i| i["commit"].as_str())
            .map(String::from)
    };
    let old = "b2".repeat(20);
    assert_eq!(commit_of("tiny/ft1").as_deref(), Some(old.as_str()));
    assert_eq!(commit_of("tiny/base"), Some("a1".repeat(20)));
    // ft1's main moves on (ft3's weights); the old commit is still on the Hub
    let mut repos = hub_repos();
    let ft1 = repos.get_mut("tiny/ft1").unwrap();
    let before = ft1.files.clone();
    ft1.older.insert(old.clone(), before);
    ft1.commit = "e5".repeat(20);
    ft1.files = fixture_repo("ft3", 0xe5).files;
    let hub = FakeHub::start(repos);
    // with a fresh cache, --locked downloads exactly the locked commits and rebuilds the merge
    let cache2 = tmp.path().join("cache2");
    let out2 = tmp.path().join("out2");
    let o = hub_smelt(
        &hub,
        &cache2,
        &[
            "run",
            r.to_str().unwrap(),
            out2.to_str().unwrap(),
            "--locked",
            lock.to_str().unwrap(),
        ],
        None,
    );
    let e = assert_ok(&o);
    assert!(e.contains(&format!("tiny/ft1@{old}")), "{e}");
    assert!(
        hub.requests()
            .iter()
            .any(|q| q.path == format!("/api/models/tiny/ft1/revision/{old}"))
    );
    assert!(
        !hub.requests()
            .iter()
            .any(|q| q.path.ends_with("/revision/main")),
        "{:?}",
        hub.requests()
    );
    assert_eq!(merged_files(&out1), merged_files(&out2));
    // the locked commit is cached without moving refs/main
    assert!(!cache2.join("models--tiny--ft1/refs/main").exists());
    // without --locked, main is what it is now: a different merge
    let out3 = tmp.path().join("out3");
    assert_ok(&hub_smelt(
        &hub,
        &cache2,
        &["run", "-q", r.to_str().unwrap(), out3.to_str().unwrap()],
        None,
    ));
    assert_ne!(merged_files(&out1), merged_files(&out3));
    // and --locked still uses the locked commit from the cache when main has moved in it
    let out4 = tmp.path().join("out4");
    hub.clear();
    assert_ok(&hub_smelt(
        &hub,
        &cache2,
        &[
            "run",
            "-q",
            r.to_str().unwrap(),
            out4.to_str().unwrap(),
            "--locked",
            lock.to_str().unwrap(),
        ],
        None,
    ));
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
    assert_eq!(merged_files(&out1), merged_files(&out4));
}

#[test]
fn a_renamed_repository_is_followed() {
    let hub = FakeHub::start(hub_repos());
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let r = recipe_for(
        tmp.path(),
        "hub.yml",
        "tiny/base",
        "renamed/ft1",
        "tiny/ft2",
    );
    assert_ok(&hub_smelt(
        &hub,
        &cache,
        &["fetch", "-q", r.to_str().unwrap()],
        None,
    ));
    let snap = cache
        .join("models--renamed--ft1/snapshots")
        .join("b2".repeat(20));
    assert_eq!(
        std::fs::read(snap.join("model.safetensors")).unwrap(),
        std::fs::read(fixtures().join("models/tiny-llama/ft1/model.safetensors")).unwrap()
    );
    // the lock files huggingface_hub also takes, one per blob
    assert!(cache.join(".locks/models--renamed--ft1").is_dir());
}

#[test]
fn a_snapshot_without_weights_is_completed() {
    let hub = FakeHub::start(hub_repos());
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    // what transformers' AutoConfig leaves: the commit, refs/main and config.json only
    let repo = cache.join("models--tiny--ft1");
    let snap = repo.join("snapshots").join("b2".repeat(20));
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "b2".repeat(20)).unwrap();
    std::fs::copy(
        fixtures().join("models/tiny-llama/ft1/config.json"),
        snap.join("config.json"),
    )
    .unwrap();
    let r = recipe_for(tmp.path(), "hub.yml", "tiny/base", "tiny/ft1", "tiny/ft2");
    let e = assert_ok(&hub_smelt(
        &hub,
        &cache,
        &["fetch", r.to_str().unwrap()],
        None,
    ));
    assert!(
        e.contains("3 models are not in the Hugging Face cache"),
        "{e}"
    );
    assert!(snap.join("model.safetensors").is_file());
}
