//! Authentication (a shared-secret token on every RPC) and per-app authorization (a secret per app,
//! issued at registration, required on every per-app RPC).
//!
//! - Token: `auth_token_file` holds one token; every gRPC call carries `authorization: Bearer <token>`
//!   and the admin POST endpoints carry the same HTTP header. Compared in constant time.
//! - App secrets: `secret(app) = hex(HMAC-SHA256(server key, "croupier app secret v1:" + app_id))`. The
//!   server key is 32 random bytes kept in `app_secret_key_file` (default: `croupier-server.key` in the
//!   first data dir), created on first start, so secrets survive restarts without any state besides
//!   that file. The first registration of an app that the server does not hold gets the secret back;
//!   any later call of that app must present it in `x-croupier-app-secret`.

use crate::config::Config;
use crate::ids::AppId;
use ring::hmac;
use std::io::Write;
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use tonic::Status;

/// gRPC metadata / HTTP header carrying `Bearer <token>`.
pub const TOKEN_HEADER: &str = "authorization";
/// gRPC metadata carrying the app's secret.
pub const APP_SECRET_HEADER: &str = "x-croupier-app-secret";
/// Name of the server key file in the first data dir, when `app_secret_key_file` is not set.
pub const KEY_FILE_NAME: &str = "croupier-server.key";

const KEY_BYTES: usize = 32;
const SECRET_CONTEXT: &[u8] = b"croupier app secret v1:";

/// Why a request was refused (also the `reason` label of `croupier_auth_failures_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    TokenMissing,
    TokenWrong,
    AppSecretMissing,
    AppSecretWrong,
}

impl AuthFailure {
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::TokenMissing => "token_missing",
            AuthFailure::TokenWrong => "token_wrong",
            AuthFailure::AppSecretMissing => "app_secret_missing",
            AuthFailure::AppSecretWrong => "app_secret_wrong",
        }
    }

    fn count(self) {
        metrics::counter!("croupier_auth_failures_total", "reason" => self.reason()).increment(1);
    }
}

pub struct Auth {
    /// SHA-256 of the token: comparing digests in constant time hides the token's length too.
    token_digest: Option<[u8; 32]>,
    app_key: Option<hmac::Key>,
}

impl Auth {
    /// No token, no app secrets.
    pub fn disabled() -> Auth {
        Auth {
            token_digest: None,
            app_key: None,
        }
    }

    /// Reads the token file and loads (or creates) the server key, as the configuration asks.
    pub fn from_config(config: &Config) -> Result<Auth, String> {
        let token_digest = match &config.auth_token_file {
            Some(path) => Some(digest(read_token(path)?.as_bytes())),
            None => None,
        };
        let app_key = if config.app_secrets_enforced() {
            let path = key_path(config);
            let key = load_or_create_key(&path)?;
            Some(hmac::Key::new(hmac::HMAC_SHA256, &key))
        } else {
            None
        };
        Ok(Auth {
            token_digest,
            app_key,
        })
    }

    pub fn token_required(&self) -> bool {
        self.token_digest.is_some()
    }

    pub fn app_secrets_enforced(&self) -> bool {
        self.app_key.is_some()
    }

    /// Checks an `authorization` value (`Bearer <token>`); `Ok` when no token is configured.
    pub fn check_bearer(&self, value: Option<&str>) -> Result<(), AuthFailure> {
        let Some(expected) = &self.token_digest else {
            return Ok(());
        };
        let result = match value.and_then(bearer_token) {
            None => Err(AuthFailure::TokenMissing),
            Some(t) if bool::from(digest(t.as_bytes()).ct_eq(expected)) => Ok(()),
            Some(_) => Err(AuthFailure::TokenWrong),
        };
        if let Err(f) = result {
            f.count();
        }
        result
    }

    /// The token check of every RPC (a tonic interceptor calls it).
    pub fn check_token(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let value = metadata.get(TOKEN_HEADER).and_then(|v| v.to_str().ok());
        self.check_bearer(value).map_err(|f| match f {
            AuthFailure::TokenMissing => Status::unauthenticated(
                "this server requires a token: send metadata `authorization: Bearer <token>`",
            ),
            _ => Status::unauthenticated(
                "the token in metadata `authorization` is not valid for this server",
            ),
        })
    }

    /// The app's secret, when app secrets are enforced.
    pub fn app_secret(&self, app: &AppId) -> Option<String> {
        let key = self.app_key.as_ref()?;
        let mut msg = SECRET_CONTEXT.to_vec();
        msg.extend_from_slice(app.as_str().as_bytes());
        Some(hex(hmac::sign(key, &msg).as_ref()))
    }

    /// Checks the app secret a request presents: `Ok(true)` when it is right (or secrets are not
    /// enforced), `Ok(false)` when none is presented (the caller decides: the registration of an app
    /// the server does not hold may go without; anything else may not), an error when it is wrong.
    pub fn check_presented(&self, metadata: &MetadataMap, app: &AppId) -> Result<bool, Status> {
        let Some(expected) = self.app_secret(app) else {
            return Ok(true);
        };
        let Some(presented) = metadata.get(APP_SECRET_HEADER) else {
            return Ok(false);
        };
        let ok = presented
            .to_str()
            .map(|p| bool::from(p.trim().as_bytes().ct_eq(expected.as_bytes())))
            .unwrap_or(false);
        if ok {
            Ok(true)
        } else {
            AuthFailure::AppSecretWrong.count();
            Err(Status::permission_denied(format!(
                "app {app}: the secret in metadata `{APP_SECRET_HEADER}` is not this app's secret"
            )))
        }
    }

    /// The check of every per-app RPC but registration: the app's secret must be presented.
    pub fn check_app(&self, metadata: &MetadataMap, app: &AppId) -> Result<(), Status> {
        match self.check_presented(metadata, app)? {
            true => Ok(()),
            false => {
                AuthFailure::AppSecretMissing.count();
                Err(Status::unauthenticated(format!(
                    "app {app}: send the app secret returned by RegisterShuffle in metadata `{APP_SECRET_HEADER}`"
                )))
            }
        }
    }

    /// Counts a registration refused for a missing secret (the caller builds the status).
    pub fn note_missing_app_secret(&self) {
        AuthFailure::AppSecretMissing.count();
    }
}

/// `Bearer <token>` (scheme case-insensitive) -> token.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).ok().filter(|p| p.len() == 2)?;
            u8::from_str_radix(pair, 16).ok()
        })
        .collect()
}

/// Reads a token file: one token, surrounding whitespace ignored, visible ASCII only (it travels in
/// a header).
pub fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("auth token file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("auth token file {}: is empty", path.display()));
    }
    if let Some(bad) = token.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "auth token file {}: the token contains {bad:?}; use visible ASCII characters only",
            path.display()
        ));
    }
    Ok(token.to_string())
}

/// Where the server key lives.
pub fn key_path(config: &Config) -> PathBuf {
    config.app_secret_key_file.clone().unwrap_or_else(|| {
        config
            .data_dirs
            .first()
            .cloned()
            .unwrap_or_default()
            .join(KEY_FILE_NAME)
    })
}

/// Loads the server key (64 hex digits), creating it with 32 random bytes (mode 0600) if absent.
fn load_or_create_key(path: &Path) -> Result<Vec<u8>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            return unhex(text.trim())
                .filter(|k| k.len() == KEY_BYTES)
                .ok_or_else(|| {
                    format!(
                        "app secret key file {}: expected {} hex digits",
                        path.display(),
                        KEY_BYTES * 2
                    )
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("app secret key file {}: {e}", path.display())),
    }
    let mut key = vec![0u8; KEY_BYTES];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .map_err(|_| "no system randomness for the app secret key".to_string())?;
    let tmp = path.with_extension("key.tmp");
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(format!("{}\n", hex(&key)).as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| format!("creating app secret key file {}: {e}", path.display()))?;
    tracing::info!(path = %path.display(), "created the app secret key");
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_and_hex_round_trip() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(unhex(&hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn key_survives_reload_and_secrets_differ_per_app() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dirs: vec![dir.path().to_path_buf()],
            app_secrets: true,
            ..Config::default()
        };
        let a = Auth::from_config(&config).unwrap();
        let b = Auth::from_config(&config).unwrap();
        let x = AppId::parse("x").unwrap();
        let y = AppId::parse("y").unwrap();
        assert_eq!(a.app_secret(&x), b.app_secret(&x));
        assert_ne!(a.app_secret(&x), a.app_secret(&y));
        assert_eq!(a.app_secret(&x).unwrap().len(), 64);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(KEY_FILE_NAME))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o077, 0, "key file readable by others");
    }

    #[test]
    fn token_check_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let config = Config {
            data_dirs: vec![dir.path().to_path_buf()],
            auth_token_file: Some(path),
            ..Config::default()
        };
        let auth = Auth::from_config(&config).unwrap();
        assert!(auth.app_secrets_enforced());
        assert_eq!(auth.check_bearer(Some("Bearer s3cret")), Ok(()));
        assert_eq!(
            auth.check_bearer(Some("Bearer s3cre")),
            Err(AuthFailure::TokenWrong)
        );
        assert_eq!(auth.check_bearer(None), Err(AuthFailure::TokenMissing));
        assert_eq!(Auth::disabled().check_bearer(None), Ok(()));
    }
}
