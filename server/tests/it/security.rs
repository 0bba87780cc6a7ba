//! Security against the real binary: the auth token on every RPC and admin POST, per-app secrets
//! (one app can never read, push to, commit, or delete another's data), TLS with a CA generated here.

use crate::common::*;
use bytes::Bytes;
use croupier_client::loadgen::{self, LoadSpec, VerifySpec};
use croupier_client::{proto as pb, Client, ClientError, ClientOptions};
use croupier_server::admin_client::AdminTarget;
use std::path::{Path, PathBuf};
use std::process::Command;
use tonic::Code;

const TOKEN: &str = "test-token-0123456789abcdef";

/// Writes the token file into `dir` and returns the TOML line that turns auth on.
fn token_toml(dir: &Path) -> (PathBuf, String) {
    let path = dir.join("token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    let toml = format!("auth_token_file = {:?}", path.display().to_string());
    (path, toml)
}

fn options(token: Option<&str>) -> ClientOptions {
    ClientOptions {
        token: token.map(str::to_string),
        ..ClientOptions::default()
    }
}

/// The verify spec of `load`, sharing its client options (token, TLS, learned app secret).
fn verify_of(load: &LoadSpec) -> VerifySpec {
    VerifySpec {
        options: load.options.clone(),
        ..verify_spec(load)
    }
}

async fn assert_intact(load: &LoadSpec) {
    let v = loadgen::verify(verify_of(load)).await.expect("verify");
    assert_eq!(v.partitions_failed, 0, "{:?}", v.failures);
    assert_eq!(v.partitions_ok, load.partitions);
    assert_eq!(v.bytes, load.bytes_per_map * u64::from(load.maps));
}

fn code_of<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Code {
    match r {
        Ok(v) => panic!("must be refused, got {v:?}"),
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("expected a status, got {e}")),
    }
}

/// Pushes one block and waits for its ack: the code of the refusal.
async fn push_code(client: &Client, app: &str, shuffle: u32, map: u32) -> Code {
    let mut p = client.pusher(app, shuffle, map, 99_999);
    let r = async {
        p.push(0, Bytes::from_static(b"intruder")).await?;
        p.finish().await
    }
    .await;
    code_of(r)
}

fn shuffle_snapshot(server: &TestServer, app: &str) -> Vec<serde_json::Value> {
    server.status_json()["shuffles"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["app_id"] == app)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_the_token_or_with_a_wrong_one_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_, toml) = token_toml(dir.path());
    let server = TestServer::start(1, &toml);
    let mut victim = load_spec(&server.grpc, "victim", 1, 3, 4, 1 << 20, 64 << 10);
    victim.options = options(Some(TOKEN));
    loadgen::load(victim.clone()).await.unwrap();
    let before = shuffle_snapshot(&server, "victim");
    assert_eq!(before.len(), 1);

    for token in [
        None,
        Some("wrong-token"),
        Some("test-token-0123456789abcdeF"),
    ] {
        let c = Client::connect(&server.grpc, options(token)).await.unwrap();
        let what = format!("token {token:?}");
        assert_eq!(code_of(c.status().await), Code::Unauthenticated, "{what}");
        assert_eq!(
            code_of(c.register_shuffle("victim", 2, 1, 1).await),
            Code::Unauthenticated,
            "{what}"
        );
        assert_eq!(
            code_of(c.register_shuffle("other", 1, 1, 1).await),
            Code::Unauthenticated,
            "{what}"
        );
        assert_eq!(
            code_of(c.fetch(fetch_req("victim", 1, 0..1, 0..3)).await),
            Code::Unauthenticated,
            "{what}"
        );
        assert_eq!(
            push_code(&c, "victim", 1, 0).await,
            Code::Unauthenticated,
            "{what}"
        );
        assert_eq!(
            code_of(c.commit("victim", 1, 0, 5, vec![]).await),
            Code::Unauthenticated,
            "{what}"
        );
        assert_eq!(
            code_of(c.unregister_shuffle("victim", 1).await),
            Code::Unauthenticated,
            "{what}"
        );
        assert_eq!(
            code_of(c.unregister_app("victim").await),
            Code::Unauthenticated,
            "{what}"
        );
        assert_eq!(
            code_of(c.heartbeat("victim").await),
            Code::Unauthenticated,
            "{what}"
        );
        // The admin POST endpoints need the token too; GETs stay open for probes and scrapers.
        let admin = AdminTarget {
            addr: server.admin.clone(),
            token: token.map(str::to_string),
            ..Default::default()
        };
        assert_eq!(admin.post("/drain").unwrap().status, 401, "{what}");
        assert_eq!(admin.post("/undrain").unwrap().status, 401, "{what}");
        assert_eq!(server.admin_get("/readyz").0, 200, "{what}");
    }
    let metrics = server.admin_get("/metrics").1;
    assert!(metric(&metrics, "croupier_auth_failures_total") >= 27.0);

    // Nothing changed: same shuffle, same commits, same bytes.
    assert_eq!(shuffle_snapshot(&server, "victim"), before);
    assert!(server.status_json()["shuffles"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["app_id"] == "victim"));
    assert_intact(&victim).await;

    // With the token, the admin POST endpoints work.
    let admin = AdminTarget {
        addr: server.admin.clone(),
        token: Some(TOKEN.into()),
        ..Default::default()
    };
    assert_eq!(admin.post("/drain").unwrap().status, 200);
    assert_eq!(server.admin_get("/readyz").0, 503);
    assert_eq!(admin.post("/undrain").unwrap().status, 200);
    assert_eq!(server.admin_get("/readyz").0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_apps_secret_can_neither_read_push_commit_nor_delete_the_victims_data() {
    let dir = tempfile::tempdir().unwrap();
    let (_, toml) = token_toml(dir.path());
    let server = TestServer::start(1, &toml);
    let mut victim = load_spec(&server.grpc, "victim", 1, 3, 4, 1 << 20, 64 << 10);
    victim.options = options(Some(TOKEN));
    loadgen::load(victim.clone()).await.unwrap();
    let victim_secret = victim
        .options
        .app_secrets
        .get(&victim.server, "victim")
        .expect("learned");
    assert_eq!(victim_secret.len(), 64);
    // A second shuffle of the victim with an uncommitted map, which an intruder might try to commit.
    let vc = Client::connect(&server.grpc, victim.options.clone())
        .await
        .unwrap();
    vc.register_shuffle("victim", 2, 2, 2).await.unwrap();
    let mut p = vc.pusher("victim", 2, 0, 7);
    p.push(0, Bytes::from_static(b"pending")).await.unwrap();
    p.finish().await.unwrap();
    let pending_counts = p.partition_counts();
    let before = shuffle_snapshot(&server, "victim");

    // Mallory holds the token (she is a legitimate app) and her own app's secret.
    let mallory = Client::connect(&server.grpc, options(Some(TOKEN)))
        .await
        .unwrap();
    let r = mallory
        .register_shuffle_full("mallory", 1, 1, 1)
        .await
        .unwrap();
    assert!(r.created);
    assert_eq!(r.app_secret.len(), 64);
    assert_ne!(r.app_secret, victim_secret);

    // Without any secret for the victim: UNAUTHENTICATED everywhere, registration included.
    assert_eq!(
        code_of(mallory.register_shuffle("victim", 3, 1, 1).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code_of(mallory.fetch(fetch_req("victim", 1, 0..4, 0..3)).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code_of(mallory.unregister_app("victim").await),
        Code::Unauthenticated
    );

    // With her own secret presented for the victim: PERMISSION_DENIED everywhere.
    mallory.set_app_secret("victim", &r.app_secret);
    assert_eq!(
        code_of(mallory.register_shuffle("victim", 3, 1, 1).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code_of(mallory.register_shuffle("victim", 1, 3, 4).await),
        Code::PermissionDenied
    );
    for p in 0..4 {
        assert_eq!(
            code_of(mallory.fetch(fetch_req("victim", 1, p..p + 1, 0..3)).await),
            Code::PermissionDenied
        );
    }
    assert_eq!(
        push_code(&mallory, "victim", 1, 0).await,
        Code::PermissionDenied
    );
    assert_eq!(
        push_code(&mallory, "victim", 2, 1).await,
        Code::PermissionDenied
    );
    assert_eq!(
        code_of(
            mallory
                .commit("victim", 2, 0, 7, pending_counts.clone())
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code_of(mallory.unregister_shuffle("victim", 1).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code_of(mallory.unregister_app("victim").await),
        Code::PermissionDenied
    );
    assert_eq!(
        code_of(mallory.heartbeat("victim").await),
        Code::PermissionDenied
    );
    // A made-up secret fares no better.
    mallory.set_app_secret("victim", &"0".repeat(64));
    assert_eq!(
        code_of(mallory.fetch(fetch_req("victim", 1, 0..4, 0..3)).await),
        Code::PermissionDenied
    );
    // Raw requests with the victim's app id in the body but Mallory's secret in the metadata.
    let mut raw = mallory.raw();
    let mut req = tonic::Request::new(pb::UnregisterAppRequest {
        app_id: "victim".into(),
    });
    *req.metadata_mut() = mallory.auth_metadata(Some("mallory"));
    assert_eq!(
        raw.unregister_app(req).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // Nothing of the victim's changed: both shuffles there, the pending map uncommitted, every byte
    // of shuffle 1 as pushed. Then the victim itself commits its pending map.
    assert_eq!(shuffle_snapshot(&server, "victim"), before);
    assert_intact(&victim).await;
    let outcome = vc.commit("victim", 2, 0, 7, pending_counts).await.unwrap();
    assert!(outcome.committed);
    // A push naming an invalid app id is refused as bad input, and counted as such, not as an auth
    // failure.
    let rejected = |reason: &str| -> f64 {
        let prefix = format!("croupier_push_rejected_total{{reason=\"{reason}\"}} ");
        server
            .admin_get("/metrics")
            .1
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let (auth_before, invalid_before) = (rejected("auth"), rejected("invalid_argument"));
    assert_eq!(
        push_code(&mallory, "no such/app", 1, 0).await,
        Code::InvalidArgument
    );
    assert_eq!(rejected("invalid_argument"), invalid_before + 1.0);
    assert_eq!(rejected("auth"), auth_before);
    // Mallory can still delete what is hers.
    assert!(mallory.unregister_app("mallory").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_secrets_without_a_token_survive_a_restart() {
    let mut server = TestServer::start(1, "app_secrets = true");
    let mut spec = load_spec(&server.grpc, "durable", 1, 2, 3, 512 << 10, 64 << 10);
    loadgen::load(spec.clone()).await.unwrap();
    let secret = spec
        .options
        .app_secrets
        .get(&spec.server, "durable")
        .expect("learned");
    server.restart();
    spec.server = server.grpc.clone();
    // A fresh client that knows nothing is refused; the saved secret still opens the app.
    let stranger = Client::connect(&server.grpc, ClientOptions::default())
        .await
        .unwrap();
    assert_eq!(
        code_of(stranger.fetch(fetch_req("durable", 1, 0..1, 0..2)).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code_of(stranger.register_shuffle("durable", 2, 1, 1).await),
        Code::Unauthenticated
    );
    spec.options = ClientOptions::default();
    spec.options
        .app_secrets
        .set(&spec.server, "durable", &secret);
    assert_intact(&spec).await;
    let c = Client::connect(&server.grpc, spec.options.clone())
        .await
        .unwrap();
    let r = c.register_shuffle_full("durable", 2, 1, 1).await.unwrap();
    assert_eq!(
        r.app_secret, secret,
        "the secret changed across the restart"
    );
    // The key lives in the first data dir, readable by the owner only.
    let key = server.dirs[0].join("croupier-server.key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o077, 0);
}

/// A CA and a server certificate for 127.0.0.1 / localhost, as PEM files in `dir`:
/// (ca.pem, server.pem, server.key).
fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "croupier test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "croupier test server");
    let cert = params.signed_by(&key, &issuer).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// Another CA, unrelated to the server's.
fn other_ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_with_the_ca_connect_and_clients_without_it_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(dir.path());
    let (token_file, token_line) = token_toml(dir.path());
    let server = TestServer::start(
        1,
        &format!(
            "tls_cert = {:?}\ntls_key = {:?}\n{token_line}",
            cert.display().to_string(),
            key.display().to_string()
        ),
    );
    let ca_pem = std::fs::read(&ca).unwrap();
    let tls_options = ClientOptions {
        tls_ca_pem: Some(ca_pem.clone()),
        token: Some(TOKEN.into()),
        ..ClientOptions::default()
    };

    // The right CA: push, commit, fetch, byte for byte; by IP and by name.
    let mut spec = load_spec(&server.grpc, "secure", 1, 3, 4, 1 << 20, 64 << 10);
    spec.options = tls_options.clone();
    loadgen::load(spec.clone()).await.unwrap();
    assert_intact(&spec).await;
    let port = server.grpc.rsplit(':').next().unwrap();
    let by_name = Client::connect(&format!("localhost:{port}"), tls_options.clone())
        .await
        .unwrap();
    assert!(by_name.status().await.unwrap().accepting_pushes);

    // No CA, or another CA: the handshake fails, and the error says it is the certificate.
    for (what, ca) in [("no CA", None), ("another CA", Some(other_ca_pem()))] {
        let err = match ca {
            None => {
                Client::connect(&format!("https://{}", server.grpc), options(Some(TOKEN))).await
            }
            Some(pem) => {
                let o = ClientOptions {
                    tls_ca_pem: Some(pem.into_bytes()),
                    ..options(Some(TOKEN))
                };
                Client::connect(&server.grpc, o).await
            }
        }
        .err()
        .unwrap_or_else(|| panic!("{what}: connected"));
        let msg = err.to_string();
        assert!(
            msg.to_lowercase().contains("certificate"),
            "{what}: unclear error {msg}"
        );
    }
    // A plaintext client gets no service.
    let plain = async {
        let c = Client::connect(&server.grpc, options(Some(TOKEN))).await?;
        c.status().await
    }
    .await;
    assert!(plain.is_err(), "plaintext call succeeded against TLS");

    // Admin over TLS: with the CA it answers; without it (or in plaintext) it does not.
    let admin = AdminTarget {
        addr: server.admin.clone(),
        tls_ca_pem: Some(ca_pem.clone()),
        token: Some(TOKEN.into()),
        ..Default::default()
    };
    let r = admin.get("/healthz").unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    let st: serde_json::Value = serde_json::from_str(&admin.get("/status").unwrap().body).unwrap();
    assert_eq!(st["security"]["tls"], true);
    assert_eq!(st["security"]["token_required"], true);
    let other = AdminTarget {
        tls_ca_pem: Some(other_ca_pem().into_bytes()),
        ..admin.clone()
    };
    let e = other
        .get("/healthz")
        .err()
        .expect("untrusted admin answered");
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    let plain_admin = AdminTarget {
        addr: server.admin.clone(),
        ..Default::default()
    };
    assert!(
        plain_admin
            .get("/healthz")
            .map_or(true, |r| r.status != 200),
        "plaintext admin request answered"
    );

    // The CLI verbs: load learns and saves the app secret, verify reads it back.
    let bin = env!("CARGO_BIN_EXE_croupier");
    let secret_file = dir.path().join("cli.secret");
    let common = |verb: &str| {
        let mut c = Command::new(bin);
        c.arg(verb)
            .args(["--server", &server.grpc, "--app", "cli", "--shuffle", "1"])
            .args([
                "--maps",
                "2",
                "--partitions",
                "3",
                "--bytes-per-map",
                "300KiB",
            ])
            .arg("--token-file")
            .arg(&token_file)
            .arg("--tls-ca")
            .arg(&ca);
        c
    };
    let out = common("load")
        .arg("--app-secret-file")
        .arg(&secret_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&secret_file).unwrap().trim().len(),
        64
    );
    let out = common("verify")
        .arg("--app-secret-file")
        .arg(&secret_file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"partitions_failed\":0"), "{stdout}");
    // Without the secret, verify fails and says why.
    let out = common("verify").output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("x-croupier-app-secret"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
